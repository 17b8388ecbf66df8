"""What crosses between the backend and the agents: dataplane parts, probes and outcomes as JSON.

Exact round trips (tests check `decode(encode(x)) == x`), plain JSON types
only, so a message is one line of a JSON-lines stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, cast

from conformance.dataplane import Dataplane, NetnsConfig
from conformance.model import Protocol
from conformance.probes import Outcome, Probe, Verdict
from conformance.snapshot import dump_dataplane, load_dataplane

Json = dict[str, Any]


@dataclass(frozen=True)
class Uplink:
    """The container's Docker interface, standing in for one link of the dataplane's underlay.

    In a node container it is the node end of the underlay's veth (renamed
    to `name`, eth0 as a rule); in the underlay container it is a port of
    the underlay's bridge `master`. None of the Docker addresses or routes
    survive: the agent gives the interface exactly what the dataplane says.
    """

    name: str
    master: str | None = None


@dataclass(frozen=True)
class Part:
    """One container's share of a dataplane: its own namespace and the ones inside it."""

    own: NetnsConfig  # realised by the container's own network namespace
    inner: tuple[NetnsConfig, ...]  # pods (and clients): namespaces created inside the container
    uplink: Uplink | None  # None: the Docker interface stays down and without addresses


def encode_part(part: Part) -> Json:
    """The namespaces in the project's own Dataplane format (`conformance.snapshot`), which
    follows every field a NetnsConfig has; the container's own namespace first."""
    plane = Dataplane(namespaces=(part.own, *part.inner))
    uplink = None if part.uplink is None else {"name": part.uplink.name, "master": part.uplink.master}
    return {"dataplane": dump_dataplane(plane), "uplink": uplink}


def decode_part(d: Json) -> Part:
    plane = load_dataplane(str(d["dataplane"]), "<part>")
    up = d["uplink"]
    return Part(
        own=plane.namespaces[0],
        inner=plane.namespaces[1:],
        uplink=None if up is None else Uplink(str(up["name"]), up["master"]),
    )


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
