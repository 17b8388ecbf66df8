"""A case: one scenario plus the probes run against it, as data and as a file.

A case file is a scenario file (see `conformance.loader`) with one extra
document, ``kind: ProbeList``, so every failure can be saved and replayed on
any backend with one command.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address
from pathlib import Path

import yaml

from conformance.loader import ScenarioError, dump_scenario, parse_scenario
from conformance.model import PROTOCOLS, Scenario
from conformance.probes import Probe

PROBES_API = "netconformance.io/v1"


@dataclass(frozen=True)
class Case:
    scenario: Scenario
    probes: tuple[Probe, ...]


@lru_cache(maxsize=4096)
def dump_case(case: Case) -> str:
    """The case as a file; cached, since reports write the same case several times."""
    probes = [
        {"source": p.source, "destination": str(p.dst), "port": p.port, "protocol": p.protocol} for p in case.probes
    ]
    doc = {"apiVersion": PROBES_API, "kind": "ProbeList", "probes": probes}
    return dump_scenario(case.scenario) + yaml.safe_dump(doc, explicit_start=True, sort_keys=False)


def parse_case(text: str, *, source: str) -> Case:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ScenarioError(f"{source}: not valid YAML: {e}") from None
    probe_docs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ProbeList"]
    # Corpus files carry a CorpusEntry document about the case: not part of it.
    rest = [d for d in docs if not (isinstance(d, dict) and d.get("kind") in ("ProbeList", "CorpusEntry"))]
    scenario = parse_scenario(yaml.safe_dump_all(rest, sort_keys=False), source=source)
    probes: list[Probe] = []
    for doc in probe_docs:
        items = doc.get("probes")
        if not isinstance(items, list):
            raise ScenarioError(f"{source}: ProbeList: probes: expected a list of probes")
        for i, item in enumerate(items):
            probes.append(_probe(item, f"{source}: ProbeList: probes[{i}]"))
    return Case(scenario, tuple(probes))


def _probe(item: object, where: str) -> Probe:
    if not isinstance(item, dict) or set(item) - {"source", "destination", "port", "protocol"}:
        raise ScenarioError(f"{where}: expected a mapping with source, destination, port, protocol")
    source = item.get("source")
    if not isinstance(source, str) or not (source.startswith(("pod:", "node:")) or source == "external"):
        raise ScenarioError(f"{where}.source: expected 'pod:<ns>/<name>', 'node:<name>' or 'external', got {source!r}")
    try:
        dst = IPv4Address(str(item.get("destination")))
    except ValueError:
        raise ScenarioError(f"{where}.destination: expected an IPv4 address, got {item.get('destination')!r}") from None
    port = item.get("port")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ScenarioError(f"{where}.port: expected an integer 1-65535, got {port!r}")
    protocol = item.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise ScenarioError(f"{where}.protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return Probe(source, dst, port, protocol)


def load_case(path: str | Path) -> Case:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_case(text, source=str(path))
