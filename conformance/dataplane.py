"""A dataplane configuration: topology as data, the contract between layers.

An implementation renders a `Scenario` into a `Dataplane`; every backend
executes exactly this: the simulator models it, the netns backend applies it
to the real kernel (links and routes over netlink, rules with
`iptables-restore`). Everything here is readable and could be applied by hand.

Namespace names are logical (``node-1``, ``pod-default-pod-a``, ``underlay``);
a real backend maps them to run-scoped kernel names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

from conformance.model import Protocol

# "sink": a test namespace that accepts every packet (used by `trace`).
Role = Literal["node", "pod", "underlay", "client", "sink"]


@dataclass(frozen=True)
class Link:
    """A link created in its namespace. A veth's peer end lives in `peer_netns`.

    The peer end is plain (no master, no flags); loopback exists implicitly
    in every namespace and is always up with 127.0.0.1/8.
    """

    name: str
    kind: Literal["veth", "bridge"]
    peer_netns: str | None = None
    peer_name: str | None = None
    master: str | None = None  # the bridge this link is a port of
    hairpin: bool = False  # bridge port flag (IFLA_BRPORT_MODE)


@dataclass(frozen=True)
class Route:
    dst: IPv4Network
    dev: str
    via: IPv4Address | None = None
    src: IPv4Address | None = None


@dataclass(frozen=True)
class Listener:
    """A probe server: answers with `identity` and the peer address it saw."""

    protocol: Protocol
    port: int
    identity: str  # the pod's "namespace/name"


@dataclass(frozen=True)
class NetnsConfig:
    name: str
    role: Role
    links: tuple[Link, ...] = ()
    addresses: tuple[tuple[str, IPv4Interface], ...] = ()  # (dev, address/prefix)
    routes: tuple[Route, ...] = ()
    # Keys as in `sysctl` (net.ipv4.conf.eth0.accept_local). Namespace-wide
    # keys (anything not naming a device) are applied in order BEFORE the
    # namespace's links exist, so `default` values reach every device; keys
    # naming a device are applied in order after the links exist. Backends
    # follow this order; the simulator models exactly it.
    sysctls: tuple[tuple[str, str], ...] = ()
    iptables: str = ""  # iptables-save text, applied with iptables-restore
    listeners: tuple[Listener, ...] = ()

    def sysctl(self, key: str, default: str | None = None) -> str | None:
        value = default
        for k, v in self.sysctls:
            if k == key:
                value = v
        return value

    def addresses_of(self, dev: str) -> tuple[IPv4Interface, ...]:
        return tuple(a for d, a in self.addresses if d == dev)


@dataclass(frozen=True)
class Dataplane:
    """All namespaces of one deployment, plus how probe sources map to them."""

    namespaces: tuple[NetnsConfig, ...]
    # Probe source ("pod:ns/name" or "node:name") -> namespace name.
    sources: tuple[tuple[str, str], ...] = ()
    implementation: str = field(default="", compare=False)

    def netns(self, name: str) -> NetnsConfig:
        for ns in self.namespaces:
            if ns.name == name:
                return ns
        raise KeyError(f"no namespace {name!r} in dataplane")

    def source_netns(self, source: str) -> str:
        for s, ns in self.sources:
            if s == source:
                return ns
        raise KeyError(f"no probe source {source!r} in dataplane")

    def describe(self) -> str:
        """The whole configuration as text a person can read and apply."""
        out: list[str] = []
        for ns in self.namespaces:
            out.append(f"# netns {ns.name} ({ns.role})")
            for link in ns.links:
                extra = ""
                if link.kind == "veth":
                    extra = f" peer {link.peer_name}@{link.peer_netns}"
                if link.master:
                    extra += f" master {link.master}"
                if link.hairpin:
                    extra += " hairpin on"
                out.append(f"link {link.kind} {link.name}{extra}")
            for dev, addr in ns.addresses:
                out.append(f"addr {addr} dev {dev}")
            for r in ns.routes:
                via = f" via {r.via}" if r.via else ""
                src = f" src {r.src}" if r.src else ""
                out.append(f"route {r.dst}{via} dev {r.dev}{src}")
            for k, v in ns.sysctls:
                out.append(f"sysctl {k}={v}")
            for li in ns.listeners:
                out.append(f"listen {li.protocol.lower()} {li.port} as {li.identity}")
            if ns.iptables:
                out.append(ns.iptables.rstrip("\n"))
            out.append("")
        return "\n".join(out)
