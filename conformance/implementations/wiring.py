"""Namespaces, links, addresses, routes, sysctls and listeners.

The topology every implementation shares: an underlay bridge standing for
the cluster network (with a dead-end gateway), one namespace per node with a
`cni0` bridge, one namespace per pod, and an external client on the underlay.
"""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from conformance.dataplane import Link, Listener, NetnsConfig, Route
from conformance.implementations.options import Options
from conformance.model import Node, Pod, Scenario

UNDERLAY = "underlay"
EXTERNAL = "external"
EXTERNAL_SOURCE = "external"
DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")


def node_netns(node: Node) -> str:
    return f"node-{node.name}"


def pod_netns(pod: Pod) -> str:
    return f"pod-{pod.namespace}-{pod.name}"


def gateway(scenario: Scenario) -> IPv4Address:
    """The underlay's first host: the cluster's gateway (a dead end)."""
    return scenario.node_cidr.network_address + 1


def external_ip(scenario: Scenario) -> IPv4Address:
    return scenario.node_cidr.network_address + 250


def cni0_ip(node: Node) -> IPv4Address:
    return node.pod_cidr.network_address + 1


def host_veth(pod: Pod) -> str:
    """Host end of a pod's veth: stable, unique per pod, within IFNAMSIZ."""
    return "veth" + hashlib.sha256(pod.ref.encode()).hexdigest()[:8]


def underlay(scenario: Scenario) -> NetnsConfig:
    links = [Link("br0", "bridge")]
    for idx, node in enumerate(scenario.nodes):
        links.append(Link(f"u-{idx}", "veth", node_netns(node), "eth0", master="br0"))
    links.append(Link("u-ext", "veth", EXTERNAL, "eth0", master="br0"))
    address = IPv4Interface(f"{gateway(scenario)}/{scenario.node_cidr.prefixlen}")
    return NetnsConfig(
        name=UNDERLAY,
        role="underlay",
        links=tuple(links),
        addresses=(("br0", address),),
        # A dead end: no forwarding and no routes beyond its own subnet, so
        # traffic to anywhere else is dropped silently and never leaves the
        # test bed. (Measured: an ICMP unreachable from a routing failure is
        # rate-limited per source host whatever icmp_ratelimit says, so a
        # "refusal" from here would be flaky; silence is deterministic.)
        routes=(),
        sysctls=(
            ("net.ipv4.ip_forward", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.icmp_ratelimit", "0"),
        ),
    )


def external(scenario: Scenario) -> NetnsConfig:
    address = IPv4Interface(f"{external_ip(scenario)}/{scenario.node_cidr.prefixlen}")
    return NetnsConfig(
        name=EXTERNAL,
        role="client",
        addresses=(("eth0", address),),
        routes=(Route(DEFAULT_ROUTE, "eth0", via=gateway(scenario)),),
        sysctls=(
            ("net.ipv4.ip_forward", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.icmp_ratelimit", "0"),
        ),
    )


def node(scenario: Scenario, node: Node, options: Options, iptables: str) -> NetnsConfig:
    hairpin = node.hairpin_mode and options.hairpin_mode
    links = [Link("cni0", "bridge")]
    for pod in scenario.pods_on(node.name):
        links.append(Link(host_veth(pod), "veth", pod_netns(pod), "eth0", master="cni0", hairpin=hairpin))
    addresses = (
        ("eth0", IPv4Interface(f"{node.ip}/{scenario.node_cidr.prefixlen}")),
        ("cni0", IPv4Interface(f"{cni0_ip(node)}/{node.pod_cidr.prefixlen}")),
    )
    # Connected routes (eth0, cni0) come with the addresses; list only the rest.
    routes = [Route(DEFAULT_ROUTE, "eth0", via=gateway(scenario))]
    for other in scenario.nodes:
        if other.name != node.name:
            routes.append(Route(other.pod_cidr, "eth0", via=other.ip))
    bridge_nf = node.bridge_nf_call_iptables and options.bridge_nf_call_iptables
    return NetnsConfig(
        name=node_netns(node),
        role="node",
        links=tuple(links),
        addresses=addresses,
        routes=tuple(routes),
        # Explicit: a new namespace would otherwise inherit the root's values.
        sysctls=(
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
            ("net.ipv4.conf.all.accept_local", "0"),
            ("net.ipv4.conf.all.route_localnet", "0"),
            ("net.ipv4.icmp_ratelimit", "0"),
            ("net.bridge.bridge-nf-call-iptables", "1" if bridge_nf else "0"),
        ),
        iptables=iptables,
    )


def pod(scenario: Scenario, pod: Pod, options: Options) -> NetnsConfig:
    host = scenario.node(pod.node)
    accept_local = "1" if pod.accept_local and options.accept_local else "0"
    return NetnsConfig(
        name=pod_netns(pod),
        role="pod",
        addresses=(("eth0", IPv4Interface(f"{pod.ip}/{host.pod_cidr.prefixlen}")),),
        routes=(Route(DEFAULT_ROUTE, "eth0", via=cni0_ip(host)),),
        sysctls=(
            ("net.ipv4.ip_forward", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.all.accept_local", accept_local),
            ("net.ipv4.conf.eth0.accept_local", accept_local),
            ("net.ipv4.icmp_ratelimit", "0"),
        ),
        listeners=tuple(Listener(p.protocol, p.port, pod.ref) for p in pod.ports),
    )


def sources(scenario: Scenario) -> tuple[tuple[str, str], ...]:
    """Probe source -> namespace."""
    out = [(EXTERNAL_SOURCE, EXTERNAL)]
    out.extend((f"node:{n.name}", node_netns(n)) for n in scenario.nodes)
    out.extend((f"pod:{p.ref}", pod_netns(p)) for p in scenario.pods)
    return tuple(out)
