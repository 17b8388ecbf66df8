"""The probe client's command line, and its output read back as outcomes.

The client is `backends.kind.agent` in probe mode, run by exec in a pod
(or on this machine for "external" probes). It prints one ``NCPROBE
{json}`` line per probe; anything else on stdout (a shell's or runtime's
noise) is ignored. Outcomes come back in the cluster's addresses;
`backends.kind.addresses` maps them to the scenario's.

A missing, duplicated or malformed result line is the backend's failure,
not the dataplane's: it raises `ProbeOutputError` with the output, so a
broken exec never reads as "dropped".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

from backends.kind.agent import RESULT_PREFIX
from backends.kind.manifests import AGENT_SOURCE
from conformance.model import Protocol
from conformance.probes import Outcome, Verdict

VERDICTS: tuple[Verdict, ...] = ("delivered", "refused", "dropped")


class ProbeOutputError(RuntimeError):
    """The client's output cannot be read as one result per probe."""


def probe_args(timeout: float, targets: Sequence[tuple[IPv4Address, int, Protocol]]) -> list[str]:
    """The agent's arguments for `targets` (without the interpreter)."""
    return ["probe", f"{timeout:g}", *(f"{ip}:{port}/{proto}" for ip, port, proto in targets)]


def probe_command(timeout: float, targets: Sequence[tuple[IPv4Address, int, Protocol]]) -> list[str]:
    """The exec command run inside a source pod (any image with python3)."""
    return ["python3", "-c", AGENT_SOURCE, *probe_args(timeout, targets)]


def parse_answer(line: str) -> tuple[str, int, IPv4Address] | None:
    """The server's "<identity> <port> <peer ip>" line, or None."""
    try:
        identity, port, peer = line.strip().rsplit(" ", 2)
        return identity, int(port), IPv4Address(peer)
    except ValueError:
        return None


def _outcome(record: dict[str, Any], where: str) -> Outcome:
    verdict = record.get("verdict")
    if verdict not in VERDICTS:
        raise ProbeOutputError(f"{where}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    reason = record.get("reason")
    reason = reason if isinstance(reason, str) else ""
    code = record.get("errno")
    if code is not None and not isinstance(code, str):
        raise ProbeOutputError(f"{where}: errno {code!r} is not a name")
    if verdict != "delivered":
        return Outcome(verdict, reason=reason or (code or ""))
    answer, src = record.get("answer"), record.get("reply_from")
    parsed = parse_answer(answer) if isinstance(answer, str) else None
    if parsed is None:
        # As the netns backend: connected, but what came back is no probe server's answer.
        return Outcome("dropped", reason=f"connected, but no answer line (got {answer!r})")
    try:
        client_saw = IPv4Address(str(src))
    except ValueError:
        raise ProbeOutputError(f"{where}: reply_from {src!r} is not an IPv4 address") from None
    identity, port, peer = parsed
    return Outcome("delivered", served_by=identity, served_port=port, server_saw=peer, client_saw=client_saw)


def parse_probe_output(text: str, count: int) -> list[Outcome]:
    """One outcome per probe, in order, from the client's stdout."""
    found: dict[int, Outcome] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.startswith(RESULT_PREFIX):
            continue
        where = f"probe output line {n}"
        try:
            record = json.loads(line[len(RESULT_PREFIX) :])
        except json.JSONDecodeError as e:
            raise ProbeOutputError(f"{where}: not JSON ({e}): {line!r}") from None
        if not isinstance(record, dict):
            raise ProbeOutputError(f"{where}: expected an object: {line!r}")
        index = record.get("i")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            raise ProbeOutputError(f"{where}: probe index {index!r} is not one of 0..{count - 1}")
        if index in found:
            raise ProbeOutputError(f"{where}: a second result for probe {index}")
        found[index] = _outcome(record, where)
    missing = [i for i in range(count) if i not in found]
    if missing:
        shown = text if len(text) <= 2000 else text[:2000] + "..."
        raise ProbeOutputError(f"no result for probes {missing} in the client's output: {shown!r}")
    return [found[i] for i in range(count)]
