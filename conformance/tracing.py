"""`netconformance trace`: one new connection through one node's ruleset.

The node is built around any iptables-save file (for example one saved on a
real kube-proxy node): its addresses are the given local IPs on eth0 (one
inside the pod CIDR is cni0's), pods live in the pod CIDR behind bridge cni0
(br_netfilter on), and everything else is outside: on-link neighbours on
eth0's network, the rest behind a default gateway. The first packet of the
connection is walked through the simulator; every random branch is
followed, so the result lists every possible fate with its probability.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

from backends.sim.iptables import NatTarget, Ruleset, parse_iptables_save
from backends.sim.kernel import Arrived, Kernel, Lost, SendError, Walk
from backends.sim.packet import Addr, Packet
from backends.sim.probing import CLIENT_PORT, ScriptedChooser
from conformance.dataplane import Dataplane, Link, NetnsConfig, Route

From = Literal["pod", "node", "external"]
NODE, OUTSIDE, SOURCE_POD = "node", "outside", "source-pod"
MAX_PATHS = 4096


class TraceError(ValueError):
    """Bad trace input; the message says which argument and why."""


@dataclass(frozen=True)
class Query:
    rules: str
    rules_name: str
    local_ips: tuple[IPv4Address, ...]
    pod_cidr: IPv4Network
    origin: From
    src: IPv4Address
    dst: IPv4Address
    dport: int
    proto: Literal["tcp", "udp", "sctp"]


@dataclass
class Result:
    probability: float
    verdict: Literal["forwarded", "local", "dropped", "rejected"]
    summary: str
    destination: str | None = None  # address:port after DNAT, where it arrived
    source: str | None = None  # source address after SNAT/MASQUERADE
    nat: list[str] = field(default_factory=list)  # DNAT / MASQUERADE / SNAT decisions
    rule: str | None = None  # the rule that dropped or rejected it
    trace: list[str] = field(default_factory=list)

    def key(self) -> tuple[object, ...]:
        return (self.verdict, self.summary, self.destination, self.source, tuple(self.nat), self.rule)

    def as_json(self) -> dict[str, object]:
        return {
            "probability": round(self.probability, 10),
            "verdict": self.verdict,
            "summary": self.summary,
            "destination": self.destination,
            "source": self.source,
            "nat": self.nat,
            "rule": self.rule,
            "trace": self.trace,
        }


@dataclass
class Report:
    query: Query
    warnings: list[str]
    results: list[Result]

    def as_json(self) -> dict[str, object]:
        q = self.query
        return {
            "query": {
                "rules": q.rules_name,
                "local_ips": [str(i) for i in q.local_ips],
                "pod_cidr": str(q.pod_cidr),
                "from": q.origin,
                "src": str(q.src),
                "dst": str(q.dst),
                "dport": q.dport,
                "proto": q.proto,
            },
            "warnings": self.warnings,
            "results": [r.as_json() for r in self.results],
        }

    def render(self) -> str:
        q = self.query
        lines = [f"{q.proto} {q.src}:{CLIENT_PORT} -> {q.dst}:{q.dport} from {q.origin}, rules {q.rules_name}"]
        lines += [f"warning: {w}" for w in self.warnings]
        for r in self.results:
            lines.append("")
            lines.append(f"p={r.probability:.4f}  {r.verdict.upper()}: {r.summary}")
            for n in r.nat:
                lines.append(f"  nat: {n}")
            if r.rule:
                lines.append(f"  rule: {r.rule}")
            lines.append("  trace:")
            lines += [f"    {t}" for t in r.trace]
        return "\n".join(lines)


def _missing_jumps(ruleset: Ruleset, origin: From) -> list[str]:
    out: list[str] = []
    nat = ruleset.tables.get("nat")
    if nat is None:
        return out
    entry = "OUTPUT" if origin == "node" else "PREROUTING"
    if "KUBE-SERVICES" in nat.chains and not ruleset.jumps_to("nat", entry, "KUBE-SERVICES"):
        out.append(
            f"nat {entry} has no jump to KUBE-SERVICES (a partial dump?): Services are not reached by this "
            "connection; the walk follows the rules as given"
        )
    if "KUBE-POSTROUTING" in nat.chains and not ruleset.jumps_to("nat", "POSTROUTING", "KUBE-POSTROUTING"):
        out.append(
            "nat POSTROUTING has no jump to KUBE-POSTROUTING (a partial dump?): nothing is masqueraded by "
            "kube-proxy; the walk follows the rules as given"
        )
    return out


def _eth0_ip(q: Query) -> IPv4Address:
    """eth0's (primary) address: the first --local-ip outside the pod CIDR (_check_node makes sure there is one)."""
    return next(ip for ip in q.local_ips if ip not in q.pod_cidr)


def _underlay(q: Query, met: set[IPv4Address]) -> tuple[IPv4Network, IPv4Address]:
    """eth0's network in the model, and the default gateway on it.

    The node's real network is not given, so the model takes the /24 of eth0's
    address. The simulator, like Linux, treats a network's broadcast address
    as no host's (addrtype BROADCAST, a packet to it delivered locally), so no
    address the walk meets (`met`) may be it: 10.0.1.255 is an ordinary host
    in a /16. Then the prefix nearest /24 whose broadcast is none of them is
    taken instead, narrower ones first (inside the /24 that _check_node kept
    clear of the pod CIDR; a /31 has no broadcast address). The lowest
    address needs no such care: the simulator, like current Linux, treats it
    as a unicast one.
    """
    eth0 = _eth0_ip(q)
    for prefixlen in (*range(24, 32), *range(23, 0, -1)):
        net = IPv4Network(f"{eth0}/{prefixlen}", strict=False)
        if net.overlaps(q.pod_cidr) or (prefixlen < 31 and net.broadcast_address in met):
            continue
        gateway = next((h for h in net.hosts() if h not in q.local_ips and h != q.src), None)
        if gateway is not None:
            return net, gateway
    raise TraceError(
        f"--local-ip {eth0}: the trace cannot model eth0's network around it: each prefix of it overlaps "
        f"--pod-cidr {q.pod_cidr}, leaves no address for a gateway or has a given address as its broadcast "
        "address; expected an eth0 address farther from the pod CIDR and the other addresses given"
    )


def _bridge_ip(q: Query) -> IPv4Address:
    """cni0's address: the --local-ip inside the pod CIDR if one is given, else the CIDR's first host."""
    inside = [ip for ip in q.local_ips if ip in q.pod_cidr]
    return inside[0] if inside else next(iter(q.pod_cidr.hosts()))


def _dataplane(q: Query, ruleset: Ruleset) -> Dataplane:
    eth0 = _eth0_ip(q)
    bridge_ip = _bridge_ip(q)
    targets = {
        r.target.ip
        for r in ruleset.rules()
        if isinstance(r.target, NatTarget) and r.target.kind == "DNAT" and r.target.ip is not None
    }
    underlay, gateway = _underlay(q, {*q.local_ips, q.src, q.dst, *targets})
    node_addrs: list[tuple[str, IPv4Interface]] = [("eth0", IPv4Interface(f"{eth0}/{underlay.prefixlen}"))]
    node_addrs += [("eth0", IPv4Interface(f"{ip}/32")) for ip in q.local_ips if ip != eth0 and ip not in q.pod_cidr]
    node_addrs.append(("cni0", IPv4Interface(f"{bridge_ip}/{q.pod_cidr.prefixlen}")))
    links = [Link("cni0", "bridge"), Link("eth0", "veth", OUTSIDE, "eth0")]
    namespaces: list[NetnsConfig] = []

    def pod(name: str, ip: IPv4Address) -> None:
        veth = f"veth{len(links)}"
        links.append(Link(veth, "veth", name, "eth0", master="cni0", hairpin=True))
        namespaces.append(
            NetnsConfig(
                name,
                "pod",
                addresses=(("eth0", IPv4Interface(f"{ip}/{q.pod_cidr.prefixlen}")),),
                routes=(Route(IPv4Network("0.0.0.0/0"), "eth0", via=bridge_ip),),
                sysctls=(("net.ipv4.conf.all.accept_local", "1"),),  # show hairpin arrivals, whatever they are
            )
        )

    if q.origin == "pod":
        pod(SOURCE_POD, q.src)
    for ip in sorted(targets | {q.dst}):
        if ip in q.pod_cidr and ip != bridge_ip and not (q.origin == "pod" and ip == q.src):
            pod(f"pod-{ip}", ip)
    # OUTSIDE is every host that is neither the node nor a pod. On eth0's
    # network it owns, besides the gateway, each neighbour the walk meets (an
    # external --src, the --dst, a DNAT target) with that prefix, so the node
    # reaches it directly, answered by ARP, with no gateway hop; an external
    # --src off that network sits behind the gateway.
    others = {q.dst, *targets} | ({q.src} if q.origin == "external" else set())
    neighbours = sorted(ip for ip in others if ip in underlay and ip != gateway and ip not in q.local_ips)
    outside_addrs = [("eth0", IPv4Interface(f"{ip}/{underlay.prefixlen}")) for ip in (gateway, *neighbours)]
    if q.origin == "external" and q.src not in underlay:
        outside_addrs.append(("eth0", IPv4Interface(f"{q.src}/32")))
    node = NetnsConfig(
        NODE,
        "node",
        links=tuple(links),
        addresses=tuple(node_addrs),
        routes=(Route(IPv4Network("0.0.0.0/0"), "eth0", via=gateway),),
        sysctls=(
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
            ("net.bridge.bridge-nf-call-iptables", "1"),
        ),
        iptables=q.rules,
    )
    outside = NetnsConfig(
        OUTSIDE,
        "sink",
        addresses=tuple(outside_addrs),
        routes=(Route(IPv4Network("0.0.0.0/0"), "eth0", via=eth0),),
    )
    return Dataplane((node, outside, *namespaces))


# Addresses no one host can have: Linux's martian source classes
# (ipv4_is_zeronet, _loopback, _multicast, _lbcast). A connection's --dst is
# one host too, so they are refused there as well (loopback apart, see _check).
_NOT_UNICAST = (
    (IPv4Network("0.0.0.0/8"), '"this network" 0.0.0.0/8'),
    (IPv4Network("127.0.0.0/8"), "loopback 127.0.0.0/8"),
    (IPv4Network("224.0.0.0/4"), "multicast 224.0.0.0/4"),
    (IPv4Network("255.255.255.255/32"), "the limited broadcast address"),
)


def _not_unicast(ip: IPv4Address) -> str | None:
    return next((what for net, what in _NOT_UNICAST if ip in net), None)


def _edge(ip: IPv4Address, net: IPv4Network, name: str) -> str | None:
    """What ip is if it is the network or broadcast address of net (which no host may have)."""
    if net.prefixlen <= 30 and ip == net.network_address:
        return f"the network address of {name} {net}"
    if net.prefixlen <= 30 and ip == net.broadcast_address:
        return f"the broadcast address of {name} {net}"
    return None


def _check_node(q: Query) -> None:
    """--local-ip and --pod-cidr against the node _dataplane builds from them."""
    if not q.local_ips:
        raise TraceError("--local-ip: give at least one address of the node")
    for i, ip in enumerate(q.local_ips):
        if ip in q.local_ips[:i]:
            raise TraceError(f"--local-ip {ip}: given twice")
        if (what := _not_unicast(ip)) is not None:
            raise TraceError(f"--local-ip {ip}: is {what}; expected a unicast address of the node")
    cidr = q.pod_cidr
    if cidr.prefixlen == 0:
        raise TraceError(f"--pod-cidr {cidr}: covers every address; expected the node's pod range, e.g. 10.244.1.0/24")
    if cidr.prefixlen > 30:
        raise TraceError(
            f"--pod-cidr {cidr}: no room for the bridge cni0 and a pod; expected a prefix of /30 or shorter"
        )
    for net, what in _NOT_UNICAST:
        if cidr.overlaps(net):
            raise TraceError(f"--pod-cidr {cidr}: overlaps {what}; expected a range of unicast addresses")
    # A --local-ip inside the pod CIDR is not an error: _dataplane takes it as
    # cni0's address (the node does own its bridge's address, and a user may
    # list every address of the node). Only one can be that, and it must be a host.
    inside = [ip for ip in q.local_ips if ip in cidr]
    if len(inside) > 1:
        raise TraceError(
            f"--local-ip {inside[1]}: a second address inside --pod-cidr {cidr} (after {inside[0]}); "
            "expected at most one, the bridge cni0's address: the rest of the pod CIDR belongs to pods"
        )
    for ip in inside:
        if (what := _edge(ip, cidr, "--pod-cidr")) is not None:
            raise TraceError(f"--local-ip {ip}: is {what}; expected a host address for the bridge cni0")
    if inside == list(q.local_ips):
        raise TraceError(
            f"--local-ip {inside[0]}: inside --pod-cidr {cidr}, so it is the bridge cni0's address; "
            "expected also the node's own address on eth0, outside the pod CIDR"
        )
    # Whatever order the addresses come in, eth0's is the first outside the pod
    # CIDR. Its /24 is the network the model prefers (see _underlay); a pod
    # CIDR overlapping it is refused rather than modelled.
    eth0 = _eth0_ip(q)
    if cidr.overlaps(modelled := IPv4Network(f"{eth0}/24", strict=False)):
        raise TraceError(
            f"--pod-cidr {cidr}: overlaps {modelled}, the node's network on eth0 as the trace models it (the /24 of "
            f"{eth0}, the first --local-ip outside the pod CIDR); expected a pod range apart from it"
        )


def _check(q: Query) -> None:
    _check_node(q)
    bridge = _bridge_ip(q)
    local_ips = ", ".join(map(str, q.local_ips))
    if q.origin == "pod":
        if q.src not in q.pod_cidr:
            raise TraceError(f"--src {q.src}: a pod source must be inside --pod-cidr {q.pod_cidr}")
        if q.src == bridge:
            how = "given as --local-ip" if bridge in q.local_ips else "the first host of --pod-cidr"
            raise TraceError(
                f"--src {q.src}: is the bridge cni0's address ({how}), the pods' gateway, not a pod's; "
                f"expected another host of --pod-cidr {q.pod_cidr}"
            )
        if (what := _edge(q.src, q.pod_cidr, "--pod-cidr")) is not None:
            raise TraceError(f"--src {q.src}: is {what}, not a pod's; expected a host address")
    # The node owns cni0's address as well as its --local-ip addresses: it is
    # the source the kernel picks for the node's own connections to its pods,
    # and kube-proxy's rules treat it differently (it is inside the cluster
    # CIDR, so not masqueraded). Any other pod-CIDR address is a pod's.
    if q.origin == "node" and q.src not in q.local_ips and q.src != bridge:
        raise TraceError(
            f"--src {q.src}: a node source must be one of --local-ip ({local_ips}) "
            f"or the bridge cni0's address {bridge}"
        )
    if q.origin == "external":
        if q.src in q.local_ips or q.src in q.pod_cidr:
            raise TraceError(f"--src {q.src}: an external source must be outside the node and the pod CIDR")
        if (what := _not_unicast(q.src)) is not None:
            raise TraceError(f"--src {q.src}: is {what}; expected a unicast address of a host outside the node")
    # Loopback is a destination one can dial: from the node it reaches kube-proxy's
    # localhost NodePorts; from a pod or outside it stays there (see _result).
    # Only the pod CIDR's edges are refused: the user gave that prefix, while
    # eth0's network is the model's guess (see _underlay).
    dst_what = (None if q.dst.is_loopback else _not_unicast(q.dst)) or _edge(q.dst, q.pod_cidr, "--pod-cidr")
    if dst_what is not None:
        raise TraceError(f"--dst {q.dst}: is {dst_what}; expected the unicast address of one host")
    if not 1 <= q.dport <= 65535:
        raise TraceError(f"--dport {q.dport}: expected 1-65535")


def trace(q: Query) -> Report:
    """Walk the connection's first packet; RulesetError/SimError/TraceError on bad input."""
    _check(q)
    ruleset = parse_iptables_save(q.rules, source=q.rules_name)
    if not ruleset.tables:
        # Every iptables-save dump has a table; an empty or comment-only file
        # is almost certainly the wrong file, and tracing it would look fine.
        raise TraceError(
            f"--rules {q.rules_name}: no *table in it (empty or only comments); expected iptables-save output"
        )
    kernel = Kernel(_dataplane(q, ruleset))
    src_ns = kernel.namespaces[{"pod": SOURCE_POD, "node": NODE, "external": OUTSIDE}[q.origin]]
    baseline = {n: (ns.conntrack.copy(), copy.deepcopy(ns.nf_state)) for n, ns in kernel.namespaces.items()}
    found: dict[tuple[object, ...], Result] = {}
    script: list[bool] | None = []
    paths = 0
    while script is not None:
        for n, ns in kernel.namespaces.items():
            ns.conntrack = baseline[n][0].copy()
            ns.nf_state = copy.deepcopy(baseline[n][1])
        chooser = ScriptedChooser(script)
        walk = Walk(chooser, [])
        flags = frozenset({"SYN"}) if q.proto == "tcp" else frozenset()
        pkt = Packet(Addr.of(q.src), Addr.of(q.dst), q.proto, CLIENT_PORT, q.dport, flags)
        result = _result(kernel, src_ns.name, q, kernel.send(walk, src_ns, pkt), walk)
        result.probability = chooser.weight()
        if result.key() in found:
            found[result.key()].probability += result.probability
        else:
            found[result.key()] = result
        paths += 1
        if paths > MAX_PATHS:
            raise TraceError(f"more than {MAX_PATHS} random paths through the ruleset")
        script = chooser.next_script()
    results = sorted(found.values(), key=lambda r: -r.probability)
    return Report(q, _missing_jumps(ruleset, q.origin), results)


def _result(kernel: Kernel, src_ns: str, q: Query, landing: Arrived | Lost | SendError, walk: Walk) -> Result:
    nat = [
        line.split("nat: ", 1)[1].split(" (", 1)[0]
        for line in walk.trace
        if " nat: " in line and " to " in line and "replies" in line
    ]
    rejects = [line for line in walk.trace if "rejected with" in line]
    if isinstance(landing, Lost | SendError):
        rule = landing.reason.split(" by ", 1)[1] if " by " in landing.reason else None
        return Result(0.0, "dropped", landing.reason, nat=nat, rule=rule, trace=walk.trace)
    at, p = landing.netns, landing.pkt
    if at.name == src_ns and (p.proto == "icmp" or "RST" in p.tcp_flags) and rejects:
        how, rule = rejects[-1].split("rejected with ", 1)[1].split(" by ", 1)
        return Result(0.0, "rejected", f"rejected with {how}", nat=nat, rule=rule, trace=walk.trace)
    where = f"{p.dst}:{p.dport}"
    sender = kernel.namespaces[src_ns]
    if q.origin != "node" and at is sender and kernel.route_output(sender, Addr.of(q.dst)).kind == "local":
        # Its own address or loopback: the sender delivers it over lo, and the
        # node (and its ruleset) never sees it. A hairpin back to the source
        # pod crossed the node and is described below, as forwarded.
        host = "source pod" if q.origin == "pod" else "outside host"
        summary = f"stays in the {host}: delivered over its lo at {where}, never reaching the node"
        return Result(0.0, "local", summary, destination=where, source=str(p.src), nat=nat, trace=walk.trace)
    if at.name == NODE or (at.name == src_ns and q.origin == "node"):
        summary = f"delivered to the node itself at {where}, source {p.src}"
        verdict: Literal["forwarded", "local"] = "local"
    elif at.role == "sink":
        summary = f"leaves the node via eth0 to {where}, source {p.src}"
        verdict = "forwarded"
    else:
        summary = f"leaves the node via cni0 to pod {where}, source {p.src}"
        verdict = "forwarded"
    return Result(0.0, verdict, summary, destination=where, source=str(p.src), nat=nat, trace=walk.trace)
