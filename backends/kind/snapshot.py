"""Read a node's real network state into `conformance.dataplane` terms.

For a kind node this is `docker exec <node> ...`; the same commands run in
every pod's network namespace on the node (``ip netns exec cni-...``):

    ip -j -d link show      links, their kind (veth, bridge), bridge port and hairpin flag,
                            and a veth's peer (link_netnsid + link_index)
    ip -j addr show         IPv4 addresses
    ip -j route show table main
    ip -j netns list        the pods' namespaces and their ids as the node sees them
    sysctl -a               the subset the simulator models
    iptables-save           the rules, exactly as iptables-restore would take them

The result is a `Dataplane` the simulator can load: one namespace per node
and per pod, veth pairs joined by (netnsid, ifindex), and an "underlay"
bridge joining the nodes' eth0 (the kind network; its address is the
nodes' gateway, which is also where "external" probes come from).
Anything the simulator does not model (a link kind, a route type) is an
error naming it, as the simulator itself does.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from conformance.dataplane import Dataplane, Link, Listener, NetnsConfig, Route

# Runs a command on the node (or in one of its namespaces) and returns stdout.
Exec = Callable[[Sequence[str]], str]

UNDERLAY = "underlay"
# The sysctls the simulator models (backends/sim/kernel.py), per device where they are per device.
_NS_SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.icmp_ratelimit", "net.bridge.bridge-nf-call-iptables")
_CONF = re.compile(r"^net\.ipv4\.conf\.([^.]+)\.(rp_filter|accept_local|route_localnet|send_redirects|forwarding)$")


class SnapshotError(RuntimeError):
    """Node state the snapshot (or the simulator) cannot represent; names what and where."""


def docker_exec(container: str, *, timeout: float = 30.0) -> Exec:
    """An Exec that runs commands in a docker container (a kind node)."""

    def run(cmd: Sequence[str]) -> str:
        return _run(["docker", "exec", container, *cmd], timeout)

    return run


def netns_exec(netns: str, *, timeout: float = 30.0) -> Exec:
    """An Exec for a named network namespace on this machine (tests, and nodes that are namespaces)."""

    def run(cmd: Sequence[str]) -> str:
        return _run(["ip", "netns", "exec", netns, *cmd], timeout)

    return run


def _run(cmd: Sequence[str], timeout: float) -> str:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SnapshotError(f"{' '.join(cmd[:6])}...: exit {done.returncode}: {done.stderr.strip()[:500]}")
    return done.stdout


def inside(run: Exec, netns: str) -> Exec:
    """The same Exec, one named network namespace further in."""
    return lambda cmd: run(["ip", "netns", "exec", netns, *cmd])


# -- one namespace, as read ----------------------------------------------------------


@dataclass(frozen=True)
class RawLink:
    name: str
    ifindex: int
    kind: str  # "veth", "bridge", "loopback", or another kind the simulator lacks
    up: bool
    master: str | None = None
    hairpin: bool = False
    peer_netnsid: int | None = None  # None: the peer is in this namespace (or none)
    peer_ifindex: int | None = None
    peer_name: str | None = None  # when the peer is in this namespace


@dataclass(frozen=True)
class RawNetns:
    name: str  # as the node names it ("" for the node itself)
    links: tuple[RawLink, ...]
    addresses: tuple[tuple[str, IPv4Interface], ...]
    routes: tuple[Route, ...]
    sysctls: tuple[tuple[str, str], ...]
    iptables: str
    netns_ids: Mapping[str, int] = field(default_factory=dict)  # name -> id, as this namespace sees them


def parse_links(text: str) -> tuple[RawLink, ...]:
    out = []
    for item in _json_list(text, "ip -j -d link show"):
        info = item.get("linkinfo") or {}
        kind = str(info.get("info_kind") or ("loopback" if item.get("link_type") == "loopback" else "unknown"))
        slave = info.get("info_slave_data") or {}
        flags = item.get("flags") or []
        out.append(
            RawLink(
                name=str(item["ifname"]),
                ifindex=int(item["ifindex"]),
                kind=kind,
                up="UP" in flags,
                master=item.get("master"),
                hairpin=bool(slave.get("hairpin", False)) if info.get("info_slave_kind") == "bridge" else False,
                peer_netnsid=item.get("link_netnsid"),
                peer_ifindex=item.get("link_index"),
                peer_name=item.get("link") if item.get("link_netnsid") is None else None,
            )
        )
    return tuple(out)


def parse_addresses(text: str) -> tuple[tuple[str, IPv4Interface], ...]:
    out = []
    for item in _json_list(text, "ip -j addr show"):
        for a in item.get("addr_info") or []:
            if a.get("family") == "inet" and item.get("ifname") != "lo":
                out.append((str(item["ifname"]), IPv4Interface(f"{a['local']}/{a['prefixlen']}")))
    return tuple(out)


def parse_routes(text: str, addresses: Sequence[tuple[str, IPv4Interface]]) -> tuple[Route, ...]:
    """Main-table routes, minus the connected ones (the dataplane derives those from addresses)."""
    connected = {(dev, a.network) for dev, a in addresses}
    out = []
    for item in _json_list(text, "ip -j route show table main"):
        kind = item.get("type", "unicast")
        dst = IPv4Network("0.0.0.0/0" if item["dst"] == "default" else item["dst"])
        if kind != "unicast":
            raise SnapshotError(f"route {kind} {dst}: only unicast routes are modelled by the simulator")
        dev = str(item["dev"])
        if item.get("protocol") == "kernel" and (dev, dst) in connected:
            continue
        via = IPv4Address(item["gateway"]) if "gateway" in item else None
        src = IPv4Address(item["prefsrc"]) if "prefsrc" in item else None
        out.append(Route(dst, dev, via=via, src=src))
    return tuple(out)


def parse_sysctls(text: str, devices: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The modelled subset, namespace-wide keys first (the order NetnsConfig asks for)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            values[key.strip()] = value.strip()
    wide = [(k, values[k]) for k in _NS_SYSCTLS if k in values]
    per_dev: list[tuple[str, str]] = []
    for key, value in values.items():
        m = _CONF.match(key)
        if m is None:
            continue
        which, name = m.group(1), m.group(2)
        if which in ("all", "default"):
            if name != "forwarding":  # all.forwarding is ip_forward, already read
                wide.append((key, value))
        elif which in devices:
            per_dev.append((key, value))
    return tuple(wide + per_dev)


def parse_netns_list(text: str) -> dict[str, int]:
    out = {}
    for item in _json_list(text, "ip -j netns list"):
        if "id" in item:
            out[str(item["name"])] = int(item["id"])
    return out


def _json_list(text: str, what: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as e:
        raise SnapshotError(f"{what}: not JSON: {e}") from None
    if not isinstance(data, list):
        raise SnapshotError(f"{what}: expected a JSON list")
    return [d for d in data if isinstance(d, dict)]


def read_netns(run: Exec, name: str = "") -> RawNetns:
    links = parse_links(run(["ip", "-j", "-d", "link", "show"]))
    addresses = parse_addresses(run(["ip", "-j", "addr", "show"]))
    routes = parse_routes(run(["ip", "-j", "route", "show", "table", "main"]), addresses)
    sysctls = parse_sysctls(run(["sh", "-c", "sysctl -a 2>/dev/null || true"]), [link.name for link in links])
    iptables = run(["iptables-save"])
    ids = parse_netns_list(run(["ip", "-j", "netns", "list"])) if name == "" else {}
    return RawNetns(name, links, addresses, routes, sysctls, iptables, ids)


@dataclass(frozen=True)
class NodeSnapshot:
    node: str  # the cluster's node name
    root: RawNetns
    pods: tuple[RawNetns, ...]


def read_node(run: Exec, node: str) -> NodeSnapshot:
    """The node's own namespace and every named namespace on it (the pods')."""
    root = read_netns(run)
    pods = tuple(read_netns(inside(run, ns), ns) for ns in sorted(root.netns_ids))
    return NodeSnapshot(node, root, pods)


# -- assembling a dataplane ----------------------------------------------------------


@dataclass(frozen=True)
class PodInfo:
    """What the backend knows about a pod found on a node: its logical name and its servers."""

    netns: str
    listeners: tuple[Listener, ...] = ()
    source: str | None = None  # "pod:<ns>/<name>" when it is a scenario pod


def _check_kind(ns: str, link: RawLink) -> None:
    if link.kind not in ("veth", "bridge", "loopback") and link.up:
        raise SnapshotError(f"{ns}: link {link.name} of kind {link.kind} is not modelled by the simulator")


def assemble(
    nodes: Sequence[NodeSnapshot],
    pods_by_ip: Mapping[IPv4Address, PodInfo],
    node_sources: Mapping[str, str] | None = None,
) -> Dataplane:
    """One Dataplane from node snapshots.

    `pods_by_ip` names the pods the backend created (by their real IP);
    other pods on the node (CoreDNS, ...) keep a name derived from their
    namespace. `node_sources` maps probe sources ("node:node-1") to real
    node names.
    """
    configs: list[NetnsConfig] = []
    sources: list[tuple[str, str]] = [("external", UNDERLAY)]
    underlay_links = [Link("br0", "bridge")]
    gateway: IPv4Interface | None = None
    for index, snap in enumerate(nodes):
        node_ns = f"node-{snap.node}"
        logical: dict[str, str] = {}  # the node's name for a pod namespace -> logical name
        pod_configs: dict[str, NetnsConfig] = {}
        for raw in snap.pods:
            ips = [a.ip for dev, a in raw.addresses]
            info = next((pods_by_ip[ip] for ip in ips if ip in pods_by_ip), None)
            name = info.netns if info is not None else f"netns-{snap.node}-{raw.name}"
            logical[raw.name] = name
            if info is not None and info.source is not None:
                sources.append((info.source, name))
            for link in raw.links:
                _check_kind(name, link)
            pod_configs[raw.name] = NetnsConfig(
                name=name,
                role="pod",
                addresses=raw.addresses,
                routes=raw.routes,
                sysctls=raw.sysctls,
                iptables=_rules(raw.iptables),
                listeners=info.listeners if info is not None else (),
            )
        by_id = {nsid: name for name, nsid in snap.root.netns_ids.items()}
        links: list[Link] = []
        for link in snap.root.links:
            _check_kind(node_ns, link)
            if link.kind == "bridge":
                links.append(Link(link.name, "bridge"))
            elif link.kind != "veth":
                continue
            elif link.peer_netnsid is None:
                # A veth pair inside the node: declare it once, from the lower ifindex.
                peer = next((p for p in snap.root.links if p.name == link.peer_name), None)
                if peer is not None and link.ifindex < peer.ifindex:
                    links.append(Link(link.name, "veth", node_ns, peer.name, link.master, link.hairpin))
            elif link.peer_netnsid in by_id:
                pod_ns = by_id[link.peer_netnsid]
                raw_pod = next(p for p in snap.pods if p.name == pod_ns)
                peer = next((p for p in raw_pod.links if p.ifindex == link.peer_ifindex), None)
                if peer is None:
                    raise SnapshotError(f"{node_ns}: {link.name}: no ifindex {link.peer_ifindex} in {pod_ns}")
                links.append(Link(link.name, "veth", logical[pod_ns], peer.name, link.master, link.hairpin))
            else:
                # The node's uplink: its peer is on the host (docker's bridge), the underlay here.
                underlay_links.append(Link(f"u-{index}", "veth", node_ns, link.name, master="br0"))
                route = next((r for r in snap.root.routes if r.dst.prefixlen == 0 and r.dev == link.name), None)
                mine = next((a for dev, a in snap.root.addresses if dev == link.name), None)
                if route is not None and route.via is not None and mine is not None and gateway is None:
                    gateway = IPv4Interface(f"{route.via}/{mine.network.prefixlen}")
        configs.append(
            NetnsConfig(
                name=node_ns,
                role="node",
                links=tuple(links),
                addresses=snap.root.addresses,
                routes=snap.root.routes,
                sysctls=snap.root.sysctls,
                iptables=_rules(snap.root.iptables),
            )
        )
        configs += pod_configs.values()
    for source, real_node in (node_sources or {}).items():
        sources.append((source, f"node-{real_node}"))
    underlay = NetnsConfig(
        name=UNDERLAY,
        role="underlay",
        links=tuple(underlay_links),
        addresses=(("br0", gateway),) if gateway is not None else (),
        sysctls=(("net.ipv4.ip_forward", "0"), ("net.ipv4.conf.all.rp_filter", "0")),
    )
    return Dataplane(namespaces=(underlay, *configs), sources=tuple(sources), implementation="snapshot")


def _rules(text: str) -> str:
    """iptables-save output without its comment lines (the parser takes exactly iptables-restore's input)."""
    return "".join(line + "\n" for line in text.splitlines() if line.strip() and not line.startswith("#"))
