"""What crosses between the backend and the agents: dataplane parts, probes and outcomes as JSON.

Exact round trips (tests check `decode(encode(x)) == x`), plain JSON types
only, so a message is one line of a JSON-lines stream.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, cast

from conformance.dataplane import NetnsConfig
from conformance.model import Protocol
from conformance.probes import Outcome, Probe, Verdict

Json = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Uplink:
    """The container's Docker interface, standing in for one link of the dataplane's underlay.

    In a node container it is the node end of the underlay's veth (renamed
    to `name`, eth0 as a rule); in the underlay container it is a port of
    the underlay's bridge `master`. None of the Docker addresses or routes
    survive: the agent gives the interface exactly what the dataplane says.
    """

    name: str
    master: str | None = None


@dataclasses.dataclass(frozen=True)
class Part:
    """One container's share of a dataplane: its own namespace and the ones inside it."""

    own: NetnsConfig  # realised by the container's own network namespace
    inner: tuple[NetnsConfig, ...]  # pods (and clients): namespaces created inside the container
    uplink: Uplink | None  # None: the Docker interface stays down and without addresses


def to_json(value: Any) -> Any:
    """A frozen dataclass tree (NetnsConfig and everything in it) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, IPv4Address | IPv4Interface | IPv4Network):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot send a {type(value).__name__} to an agent")


def from_json(tp: Any, data: Any) -> Any:
    """The inverse of `to_json`, driven by the type annotations, so new fields need no code here."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json(args[0], x) for x in data)
        return tuple(from_json(a, x) for a, x in zip(args, data, strict=True))
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return from_json(inner, data)
    if origin is typing.Literal or tp in (str, int, float, bool):
        return data
    if tp in (IPv4Address, IPv4Interface, IPv4Network):
        return tp(data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{name: from_json(hints[name], value) for name, value in data.items()})
    raise TypeError(f"cannot read a {tp!r} from an agent message")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def encode_part(part: Part) -> Json:
    """The container's share as JSON (the own namespace first).

    Generic over the dataclasses rather than `conformance.snapshot`'s file
    format: that one is read with YAML, 25-30 ms per node here, a third of
    an example's cost; this is under 2 ms.
    """
    uplink = None if part.uplink is None else {"name": part.uplink.name, "master": part.uplink.master}
    return {"namespaces": [to_json(ns) for ns in (part.own, *part.inner)], "uplink": uplink}


def decode_part(d: Json) -> Part:
    own, *inner = (from_json(NetnsConfig, ns) for ns in d["namespaces"])
    up = d["uplink"]
    return Part(own=own, inner=tuple(inner), uplink=None if up is None else Uplink(str(up["name"]), up["master"]))


def encode_probe(p: Probe, netns: str) -> Json:
    """A probe and the namespace (as the agent names it: logical) it starts in."""
    return {"netns": netns, "source": p.source, "dst": str(p.dst), "port": p.port, "protocol": p.protocol}


def decode_probe(d: Json) -> tuple[Probe, str]:
    return Probe(str(d["source"]), IPv4Address(d["dst"]), int(d["port"]), cast(Protocol, d["protocol"])), str(
        d["netns"]
    )


def _addr(a: IPv4Address | None) -> str | None:
    return None if a is None else str(a)


def encode_outcome(o: Outcome) -> Json:
    return {
        "verdict": o.verdict,
        "served_by": o.served_by,
        "served_port": o.served_port,
        "server_saw": _addr(o.server_saw),
        "client_saw": _addr(o.client_saw),
        "reason": o.reason,
    }


def decode_outcome(d: Json) -> Outcome:
    def addr(key: str) -> IPv4Address | None:
        return None if d.get(key) is None else IPv4Address(d[key])

    return Outcome(
        verdict=cast(Verdict, d["verdict"]),
        served_by=d.get("served_by"),
        served_port=None if d.get("served_port") is None else int(d["served_port"]),
        server_saw=addr("server_saw"),
        client_saw=addr("client_saw"),
        reason=str(d.get("reason", "")),
    )
