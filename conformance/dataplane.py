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
class CniAttachment:
    """A pod attached by real CNI plugin binaries, as the CNI specification runs them.

    Listed on the node namespace that plays the CNI "host": the backend runs
    each plugin of `conflist` in order there (CNI_COMMAND=ADD, CNI_CONTAINERID,
    CNI_NETNS = the pod namespace, which exists and is empty, CNI_IFNAME,
    CNI_ARGS, CNI_PATH, the plugin's configuration on stdin with the previous
    plugin's result as prevResult), before the node's rules are applied.
    """

    conflist: str  # a network configuration list (.conflist), JSON text
    container_id: str
    netns: str  # the pod's logical namespace name
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()  # CNI_ARGS, e.g. (("IP", "10.244.1.11"),)
    # runtimeConfig per capability, JSON text, e.g. {"portMappings": [...]}; a
    # plugin gets the capabilities its configuration declares.
    capability_args: str = "{}"


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
    # Additive, for real CNI plugins and node snapshots:
    # pods attached by CNI plugins run in this namespace (before the rules).
    cni: tuple[CniAttachment, ...] = ()
    # True: `iptables` goes to `iptables-restore --noflush`, on top of the rules
    # already there (a CNI plugin's); it then may use -I, and must declare
    # only its own user chains (a declared chain is flushed).
    iptables_noflush: bool = False
    # Addresses (also in `addresses`) without their connected route: added
    # with IFA_F_NOPREFIXROUTE, or the route was deleted (the ptp plugin does).
    no_prefix_route: tuple[tuple[str, IPv4Interface], ...] = ()

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
                flag = " noprefixroute" if (dev, addr) in ns.no_prefix_route else ""
                out.append(f"addr {addr} dev {dev}{flag}")
            for r in ns.routes:
                via = f" via {r.via}" if r.via else ""
                src = f" src {r.src}" if r.src else ""
                out.append(f"route {r.dst}{via} dev {r.dev}{src}")
            for k, v in ns.sysctls:
                out.append(f"sysctl {k}={v}")
            for li in ns.listeners:
                out.append(f"listen {li.protocol.lower()} {li.port} as {li.identity}")
            for att in ns.cni:
                args = ";".join(f"{k}={v}" for k, v in att.args)
                out.append(f"cni add {att.container_id[:12]} netns {att.netns} ifname {att.ifname} args {args!r}")
                out.append(f"  conflist {att.conflist}")
                if att.capability_args != "{}":
                    out.append(f"  runtimeConfig {att.capability_args}")
            if ns.iptables:
                if ns.iptables_noflush:
                    out.append("# iptables-restore --noflush")
                out.append(ns.iptables.rstrip("\n"))
            out.append("")
        return "\n".join(out)
