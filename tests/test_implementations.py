"""Behaviour of the implementations: what the reference renders, exactly,
and that each broken variant differs from it in exactly the intended place."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
from collections import Counter
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings

from conformance.dataplane import Dataplane, Link, Listener, NetnsConfig, Route
from conformance.implementations import (
    IMPLEMENTATIONS,
    REFERENCE,
    broken_implementations,
    get_implementation,
)
from conformance.implementations.netpol import subtract
from conformance.model import (
    ContainerPort,
    IPBlock,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    Scenario,
    Service,
    ServicePort,
    labels,
)
from conformance.strategies import scenarios

A = IPv4Address
N = IPv4Network
BOTH = (ContainerPort(8080, "TCP"), ContainerPort(8080, "UDP"))
NODE_1 = Node("node-1", A("172.18.0.2"), N("10.244.1.0/24"))
NODE_2 = Node("node-2", A("172.18.0.3"), N("10.244.2.0/24"))
POD_A = Pod("default", "pod-a", "node-1", A("10.244.1.10"), labels({"app": "a"}), BOTH)
POD_B = Pod("default", "pod-b", "node-1", A("10.244.1.11"), labels({"app": "b"}), BOTH)
SVC_B = Service(
    "default",
    "svc-b",
    A("10.96.0.100"),
    ports=(ServicePort(80, 8080, "TCP", name="tcp"), ServicePort(80, 8080, "UDP", name="udp")),
    selector=labels({"app": "b"}),
)
CLASSIC = Scenario(nodes=(NODE_1,), pods=(POD_A, POD_B), services=(SVC_B,), name="classic")

BROKEN_NAMES = (
    "hairpin-mode-off",
    "no-hairpin-masquerade",
    "dnat-ip-only",
    "policy-before-dnat",
    "bridge-nf-off",
    "cni-masquerade-first",
    "no-endpoints-drop",
    "etp-local-masquerade",
    "accept-local-ignored",
)


# -- helpers -----------------------------------------------------------------


def render(scenario: Scenario, name: str = REFERENCE) -> Dataplane:
    return get_implementation(name).render(scenario)


def iptables(scenario: Scenario, name: str = REFERENCE, node: str = "node-1") -> str:
    return render(scenario, name).netns(f"node-{node}").iptables


def tables(text: str) -> dict[str, dict[str, list[str]]]:
    """iptables-save text -> table -> chain -> rule specs (without `-A chain`)."""
    out: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            current = out.setdefault(line[1:], {})
        elif line.startswith(":"):
            current[line[1:].split()[0]] = []
        elif line.startswith("-A "):
            chain, spec = line[3:].split(" ", 1)
            current[chain].append(spec)
    return out


def kube_hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def diff(before: str, after: str) -> tuple[list[str], list[str]]:
    """Lines removed and added (as multisets, in order of appearance)."""
    old, new = Counter(before.splitlines()), Counter(after.splitlines())
    removed = [line for line in before.splitlines() if (old - new)[line] > 0]
    added = [line for line in after.splitlines() if (new - old)[line] > 0]
    return removed, added


def without_iptables(dp: Dataplane) -> tuple[NetnsConfig, ...]:
    return tuple(replace(ns, iptables="") for ns in dp.namespaces)


def pods_b(n: int, *, node: str = "node-1") -> tuple[Pod, ...]:
    """n endpoints of svc-b (app=b), 10.244.1.11 upwards."""
    return tuple(
        Pod("default", f"pod-b{i}", node, A(f"10.244.1.{11 + i}"), labels({"app": "b"}), BOTH) for i in range(n)
    )


def two_nodes(
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster",
    selector: Labels = (("app", "b"),),
) -> Scenario:
    """svc-b as a NodePort (30080/tcp) selecting pod-b, which runs on node-1."""
    svc = Service(
        "default",
        "svc-b",
        A("10.96.0.100"),
        ports=(ServicePort(80, 8080, "TCP", name="tcp", node_port=30080),),
        selector=selector,
        type="NodePort",
        external_traffic_policy=external_traffic_policy,
    )
    pod_c = Pod("default", "pod-c", "node-2", A("10.244.2.10"), labels({"app": "c"}), BOTH)
    return Scenario(nodes=(NODE_1, NODE_2), pods=(POD_A, POD_B, pod_c), services=(svc,))


# -- registry ----------------------------------------------------------------


def test_registry_lists_reference_and_the_broken_variants() -> None:
    assert list(IMPLEMENTATIONS) == [REFERENCE, *BROKEN_NAMES]
    assert not get_implementation(REFERENCE).broken
    assert [i.name for i in broken_implementations()] == list(BROKEN_NAMES)
    for name, impl in IMPLEMENTATIONS.items():
        assert impl.name == name
        assert impl.description and "\n" not in impl.description


def test_unknown_implementation_names_the_valid_ones() -> None:
    with pytest.raises(KeyError) as err:
        get_implementation("nope")
    assert "nope" in str(err.value)
    for name in IMPLEMENTATIONS:
        assert name in str(err.value)


# -- wiring ------------------------------------------------------------------


def test_namespaces_and_probe_sources() -> None:
    dp = render(CLASSIC)
    assert dp.implementation == REFERENCE
    assert [(ns.name, ns.role) for ns in dp.namespaces] == [
        ("underlay", "underlay"),
        ("external", "client"),
        ("node-node-1", "node"),
        ("pod-default-pod-a", "pod"),
        ("pod-default-pod-b", "pod"),
    ]
    assert dp.sources == (
        ("external", "external"),
        ("node:node-1", "node-node-1"),
        ("pod:default/pod-a", "pod-default-pod-a"),
        ("pod:default/pod-b", "pod-default-pod-b"),
    )


def test_underlay_is_a_dead_end_gateway() -> None:
    scenario = replace(CLASSIC, nodes=(NODE_1, NODE_2))
    u = render(scenario).netns("underlay")
    assert u.links == (
        Link("br0", "bridge"),
        Link("u-0", "veth", "node-node-1", "eth0", master="br0"),
        Link("u-1", "veth", "node-node-2", "eth0", master="br0"),
        Link("u-ext", "veth", "external", "eth0", master="br0"),
    )
    assert u.addresses == (("br0", IPv4Interface("172.18.0.1/24")),)
    assert u.routes == ()
    assert u.sysctl("net.ipv4.ip_forward") == "0"  # a dead end: silent, never a flaky ICMP
    assert u.iptables == ""


def test_external_client() -> None:
    ext = render(CLASSIC).netns("external")
    assert ext.links == ()
    assert ext.addresses == (("eth0", IPv4Interface("172.18.0.250/24")),)
    assert ext.routes == (Route(N("0.0.0.0/0"), "eth0", via=A("172.18.0.1")),)


def test_node_namespace() -> None:
    node = render(CLASSIC).netns("node-node-1")
    veth_a, veth_b = (
        "veth" + hashlib.sha256(ref.encode()).hexdigest()[:8] for ref in ("default/pod-a", "default/pod-b")
    )
    assert node.links == (
        Link("cni0", "bridge"),
        Link(veth_a, "veth", "pod-default-pod-a", "eth0", master="cni0", hairpin=True),
        Link(veth_b, "veth", "pod-default-pod-b", "eth0", master="cni0", hairpin=True),
    )
    assert node.addresses == (
        ("eth0", IPv4Interface("172.18.0.2/24")),
        ("cni0", IPv4Interface("10.244.1.1/24")),
    )
    assert node.routes == (Route(N("0.0.0.0/0"), "eth0", via=A("172.18.0.1")),)
    assert node.sysctls == (
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
        ("net.ipv4.conf.all.accept_local", "0"),
        ("net.ipv4.conf.all.route_localnet", "0"),
        ("net.ipv4.icmp_ratelimit", "0"),
        ("net.bridge.bridge-nf-call-iptables", "1"),
    )


def test_nodes_route_each_others_pod_cidrs() -> None:
    dp = render(replace(CLASSIC, nodes=(NODE_1, NODE_2)))
    assert dp.netns("node-node-2").routes == (
        Route(N("0.0.0.0/0"), "eth0", via=A("172.18.0.1")),
        Route(N("10.244.1.0/24"), "eth0", via=A("172.18.0.2")),
    )
    assert dp.netns("node-node-2").addresses_of("cni0") == (IPv4Interface("10.244.2.1/24"),)


def test_node_knobs_follow_the_scenario() -> None:
    node = replace(NODE_1, hairpin_mode=False, bridge_nf_call_iptables=False)
    ns = render(replace(CLASSIC, nodes=(node,))).netns("node-node-1")
    assert not any(link.hairpin for link in ns.links)
    assert ns.sysctl("net.bridge.bridge-nf-call-iptables") == "0"


def test_pod_namespace() -> None:
    pod = render(CLASSIC).netns("pod-default-pod-b")
    assert pod.links == ()
    assert pod.addresses == (("eth0", IPv4Interface("10.244.1.11/24")),)
    assert pod.routes == (Route(N("0.0.0.0/0"), "eth0", via=A("10.244.1.1")),)
    assert pod.sysctls == (
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv4.conf.all.accept_local", "0"),
        ("net.ipv4.conf.eth0.accept_local", "0"),
        ("net.ipv4.icmp_ratelimit", "0"),
    )
    assert pod.listeners == (
        Listener("TCP", 8080, "default/pod-b"),
        Listener("UDP", 8080, "default/pod-b"),
    )
    assert pod.iptables == ""


def test_pod_accept_local_knob() -> None:
    scenario = replace(CLASSIC, pods=(POD_A, replace(POD_B, accept_local=True)))
    pod = render(scenario).netns("pod-default-pod-b")
    assert pod.sysctl("net.ipv4.conf.all.accept_local") == "1"
    assert pod.sysctl("net.ipv4.conf.eth0.accept_local") == "1"


# -- kube-proxy layout -------------------------------------------------------

TCP_SVC = "KUBE-SVC-" + kube_hash("default/svc-b:tcptcp")
UDP_SVC = "KUBE-SVC-" + kube_hash("default/svc-b:udpudp")
TCP_SEP_B = "KUBE-SEP-" + kube_hash("default/svc-b:tcptcp10.244.1.11:8080")


def test_jumps_at_the_top_of_builtin_chains() -> None:
    t = tables(iptables(CLASSIC))
    assert list(t) == ["nat", "filter"]
    portals = '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    assert t["nat"]["PREROUTING"] == [portals]
    assert t["nat"]["OUTPUT"] == [portals]
    assert t["nat"]["POSTROUTING"] == ['-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING']
    new = "-m conntrack --ctstate NEW"
    external = f'-m comment --comment "kubernetes externally-visible service portals" {new}'
    assert t["filter"]["INPUT"] == [f"{external} -j KUBE-EXTERNAL-SERVICES"]
    assert t["filter"]["FORWARD"] == [
        '-m comment --comment "network policy" -j NETPOL-FORWARD',
        '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        f"{portals.removesuffix(' -j KUBE-SERVICES')} {new} -j KUBE-SERVICES",
        f"{external} -j KUBE-EXTERNAL-SERVICES",
    ]
    assert t["filter"]["OUTPUT"] == [
        '-m comment --comment "network policy" -j NETPOL-FORWARD',
        f'-m comment --comment "kubernetes service portals" {new} -j KUBE-SERVICES',
    ]


def test_masquerade_and_forward_chains() -> None:
    t = tables(iptables(CLASSIC))
    assert t["nat"]["KUBE-MARK-MASQ"] == ['-m comment --comment "mark for kubernetes SNAT" -j MARK --or-mark 0x4000']
    assert t["nat"]["KUBE-POSTROUTING"] == [
        '-m comment --comment "not marked for kubernetes SNAT" -m mark ! --mark 0x4000/0x4000 -j RETURN',
        '-m comment --comment "clear the kubernetes SNAT mark" -j MARK --xor-mark 0x4000',
        '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    ]
    assert t["filter"]["KUBE-FORWARD"] == [
        '-m comment --comment "kubernetes forwarding invalid packets" -m conntrack --ctstate INVALID -j DROP',
        '-m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]


def test_cluster_ip_chains() -> None:
    nat = tables(iptables(CLASSIC))["nat"]
    assert nat["KUBE-SERVICES"] == [
        f'-d 10.96.0.100/32 -p tcp -m comment --comment "default/svc-b:tcp cluster IP" -m tcp --dport 80 -j {TCP_SVC}',
        f'-d 10.96.0.100/32 -p udp -m comment --comment "default/svc-b:udp cluster IP" -m udp --dport 80 -j {UDP_SVC}',
        '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule '
        'in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
    ]
    assert nat[TCP_SVC] == [
        '! -s 10.244.0.0/16 -d 10.96.0.100/32 -p tcp -m comment --comment "default/svc-b:tcp '
        'cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ',
        f'-m comment --comment "default/svc-b:tcp -> 10.244.1.11:8080" -j {TCP_SEP_B}',
    ]
    assert nat[TCP_SEP_B] == [
        '-s 10.244.1.11/32 -m comment --comment "default/svc-b:tcp" -j KUBE-MARK-MASQ',
        '-p tcp -m comment --comment "default/svc-b:tcp" -m tcp -j DNAT --to-destination 10.244.1.11:8080',
    ]
    assert nat["KUBE-NODEPORTS"] == []


def test_hairpin_masquerade_follows_the_scenario() -> None:
    nat = tables(iptables(replace(CLASSIC, masquerade_hairpin=False)))["nat"]
    assert nat[TCP_SEP_B] == [
        '-p tcp -m comment --comment "default/svc-b:tcp" -m tcp -j DNAT --to-destination 10.244.1.11:8080',
    ]


def test_unnamed_ports_are_named_by_number() -> None:
    svc = replace(SVC_B, ports=(ServicePort(80, 8080), ServicePort(81, 8080)))
    nat = tables(iptables(replace(CLASSIC, services=(svc,))))["nat"]
    assert "KUBE-SVC-" + kube_hash("default/svc-b:80tcp") in nat
    assert "KUBE-SVC-" + kube_hash("default/svc-b:81tcp") in nat


def test_endpoints_are_picked_uniformly() -> None:
    scenario = replace(CLASSIC, pods=(POD_A, *reversed(pods_b(3))))
    rules = tables(iptables(scenario))["nat"][TCP_SVC][1:]
    probabilities = [r.split("--probability ")[1].split()[0] for r in rules if "statistic" in r]
    assert probabilities == ["0.3333333333", "0.5000000000"]
    assert len(rules) == 3 and "statistic" not in rules[2]
    # sorted by IP, whatever the scenario's order
    assert [r.split("-> ")[1].split('"')[0] for r in rules] == [
        "10.244.1.11:8080",
        "10.244.1.12:8080",
        "10.244.1.13:8080",
    ]


def test_service_without_endpoints_is_rejected() -> None:
    svc = replace(SVC_B, selector=labels({"app": "nobody"}))
    t = tables(iptables(replace(CLASSIC, services=(svc,))))
    assert t["filter"]["KUBE-SERVICES"] == [
        '-d 10.96.0.100/32 -p tcp -m comment --comment "default/svc-b:tcp has no endpoints" '
        "-m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable",
        '-d 10.96.0.100/32 -p udp -m comment --comment "default/svc-b:udp has no endpoints" '
        "-m udp --dport 80 -j REJECT --reject-with icmp-port-unreachable",
    ]
    assert len(t["nat"]["KUBE-SERVICES"]) == 1  # only the nodeports rule
    assert not any(chain.startswith("KUBE-SVC-") for chain in t["nat"])


def test_node_port_cluster_policy() -> None:
    for node in ("node-1", "node-2"):
        nat = tables(iptables(two_nodes(), node=node))["nat"]
        ext = TCP_SVC.replace("KUBE-SVC-", "KUBE-EXT-")
        assert nat["KUBE-NODEPORTS"] == [
            f'-p tcp -m comment --comment "default/svc-b:tcp" -m tcp --dport 30080 -j {ext}'
        ]
        assert nat[ext] == [
            '-m comment --comment "masquerade traffic for default/svc-b:tcp external destinations" -j KUBE-MARK-MASQ',
            f'-m comment --comment "route traffic for default/svc-b:tcp external destinations" -j {TCP_SVC}',
        ]


def test_node_port_local_policy() -> None:
    scenario = two_nodes(external_traffic_policy="Local")
    ext = TCP_SVC.replace("KUBE-SVC-", "KUBE-EXT-")
    svl = TCP_SVC.replace("KUBE-SVC-", "KUBE-SVL-")
    shared = [
        f'-s 10.244.0.0/16 -m comment --comment "pod traffic for default/svc-b:tcp external destinations" -j {TCP_SVC}',
        '-m comment --comment "masquerade LOCAL traffic for default/svc-b:tcp external '
        'destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
        '-m comment --comment "route LOCAL traffic for default/svc-b:tcp external '
        f'destinations" -m addrtype --src-type LOCAL -j {TCP_SVC}',
    ]
    # node-1 hosts the endpoint: others keep their source and reach it via SVL.
    t1 = tables(iptables(scenario, node="node-1"))
    assert t1["nat"][ext] == [
        *shared,
        f'-m comment --comment "local endpoints for default/svc-b:tcp external destinations" -j {svl}',
    ]
    assert t1["nat"][svl] == [f'-m comment --comment "default/svc-b:tcp -> 10.244.1.11:8080" -j {TCP_SEP_B}']
    assert t1["filter"]["KUBE-EXTERNAL-SERVICES"] == []
    # node-2 has no local endpoint: external clients are dropped.
    t2 = tables(iptables(scenario, node="node-2"))
    assert t2["nat"][ext] == shared
    assert svl not in t2["nat"]
    assert t2["filter"]["KUBE-EXTERNAL-SERVICES"] == [
        '-p tcp -m comment --comment "default/svc-b:tcp has no local endpoints" '
        "-m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP"
    ]


def test_node_port_without_endpoints_is_rejected() -> None:
    scenario = two_nodes(selector=labels({"app": "nobody"}))
    t = tables(iptables(scenario))
    assert t["nat"]["KUBE-NODEPORTS"] == []
    assert t["filter"]["KUBE-EXTERNAL-SERVICES"] == [
        '-p tcp -m comment --comment "default/svc-b:tcp has no endpoints" '
        "-m addrtype --dst-type LOCAL -m tcp --dport 30080 "
        "-j REJECT --reject-with icmp-port-unreachable"
    ]


# -- NetworkPolicy -----------------------------------------------------------

DENY_ALL = NetworkPolicy("default", "deny-all", policy_types=("Ingress", "Egress"))
ALLOW_A_TO_B = NetworkPolicy(
    "default",
    "allow-a-to-b",
    pod_selector=LabelSelector(labels({"app": "b"})),
    ingress=(
        PolicyRule(
            peers=(PolicyPeer(pod_selector=LabelSelector(labels({"app": "a"}))),),
            ports=(PolicyPort("TCP", 8080),),
        ),
    ),
)
IN_A = "NETPOL-IN-" + kube_hash("default/pod-a")
IN_B = "NETPOL-IN-" + kube_hash("default/pod-b")
EG_A = "NETPOL-EG-" + kube_hash("default/pod-a")
EG_B = "NETPOL-EG-" + kube_hash("default/pod-b")


def exceptions(pod: Pod, direction: str) -> list[str]:
    """The rules every per-pod chain opens with: a pod may always reach itself,
    and (ingress) its own node may always reach it."""
    if direction == "egress":
        return [f'-d {pod.ip}/32 -m comment --comment "{pod.ref} may always reach itself" -j RETURN']
    return [
        f'-s {pod.ip}/32 -m comment --comment "{pod.ref} may always reach itself" -j RETURN',
        f'-m comment --comment "the node of {pod.ref} may always reach it" -m addrtype --src-type LOCAL -j RETURN',
    ]


def without_exceptions(rules: list[str], pod: Pod, direction: str) -> list[str]:
    head = exceptions(pod, direction)
    assert rules[: len(head)] == head
    return rules[len(head) :]


def test_no_policy_isolates_nobody() -> None:
    f = tables(iptables(CLASSIC))["filter"]
    assert f["NETPOL-FORWARD"] == [
        '-m comment --comment "replies of allowed connections" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT'
    ]
    assert not any(c.startswith(("NETPOL-IN-", "NETPOL-EG-")) for c in f)


def test_default_deny_plus_allow() -> None:
    f = tables(iptables(replace(CLASSIC, policies=(DENY_ALL, ALLOW_A_TO_B))))["filter"]
    assert f["NETPOL-FORWARD"] == [
        '-m comment --comment "replies of allowed connections" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
        f'-s 10.244.1.10/32 -m comment --comment "default/pod-a is isolated for egress" -j {EG_A}',
        f'-s 10.244.1.11/32 -m comment --comment "default/pod-b is isolated for egress" -j {EG_B}',
        f'-d 10.244.1.10/32 -m comment --comment "default/pod-a is isolated for ingress" -j {IN_A}',
        f'-d 10.244.1.11/32 -m comment --comment "default/pod-b is isolated for ingress" -j {IN_B}',
    ]
    assert f[IN_A] == [
        *exceptions(POD_A, "ingress"),
        '-m comment --comment "default/pod-a: default deny ingress" -j DROP',
    ]
    assert f[EG_A] == [
        *exceptions(POD_A, "egress"),
        '-m comment --comment "default/pod-a: default deny egress" -j DROP',
    ]
    assert without_exceptions(f[IN_B], POD_B, "ingress") == [
        '-s 10.244.1.10/32 -p tcp -m comment --comment "default/allow-a-to-b ingress rule 0: '
        'pod default/pod-a, tcp 8080" -m tcp --dport 8080 -j RETURN',
        '-m comment --comment "default/pod-b: default deny ingress" -j DROP',
    ]


def test_policies_only_chain_local_pods() -> None:
    pod_b2 = replace(POD_B, node="node-2", ip=A("10.244.2.11"))
    scenario = Scenario(nodes=(NODE_1, NODE_2), pods=(POD_A, pod_b2), policies=(ALLOW_A_TO_B,))
    f1 = tables(iptables(scenario, node="node-1"))["filter"]
    f2 = tables(iptables(scenario, node="node-2"))["filter"]
    assert IN_B not in f1 and len(f1["NETPOL-FORWARD"]) == 1
    assert without_exceptions(f2[IN_B], pod_b2, "ingress")[0].startswith("-s 10.244.1.10/32 -p tcp")


def test_policy_peers_ports_and_egress() -> None:
    other = Pod("other", "pod-o", "node-1", A("10.244.1.20"), labels({"app": "a"}), BOTH)
    policy = NetworkPolicy(
        "default",
        "mixed",
        pod_selector=LabelSelector(labels({"app": "b"})),
        policy_types=("Egress",),
        egress=(
            PolicyRule(
                peers=(
                    # namespaceSelector alone: every pod of namespaces labelled team=blue
                    PolicyPeer(namespace_selector=LabelSelector(labels({"team": "blue"}))),
                    # both: app=a pods in team=blue namespaces (pod-o again, not pod-a)
                    PolicyPeer(
                        pod_selector=LabelSelector(labels({"app": "a"})),
                        namespace_selector=LabelSelector(labels({"team": "blue"})),
                    ),
                ),
                ports=(PolicyPort("UDP", 8000, 8100), PolicyPort("TCP", None)),
            ),
            PolicyRule(),  # everyone, every port
        ),
    )
    scenario = Scenario(
        nodes=(NODE_1,),
        pods=(POD_A, POD_B, other),
        policies=(policy,),
        namespaces=(Namespace("other", labels({"team": "blue"})),),
    )
    f = tables(iptables(scenario))["filter"]
    assert without_exceptions(f[EG_B], POD_B, "egress") == [
        '-d 10.244.1.20/32 -p udp -m comment --comment "default/mixed egress rule 0: '
        'pod other/pod-o, udp 8000:8100" -m udp --dport 8000:8100 -j RETURN',
        '-d 10.244.1.20/32 -p tcp -m comment --comment "default/mixed egress rule 0: '
        'pod other/pod-o, all tcp ports" -j RETURN',
        '-d 10.244.1.20/32 -p udp -m comment --comment "default/mixed egress rule 0: '
        'pod other/pod-o, udp 8000:8100" -m udp --dport 8000:8100 -j RETURN',
        '-d 10.244.1.20/32 -p tcp -m comment --comment "default/mixed egress rule 0: '
        'pod other/pod-o, all tcp ports" -j RETURN',
        '-m comment --comment "default/mixed egress rule 1: anywhere, all ports" -j RETURN',
        '-m comment --comment "default/pod-b: default deny egress" -j DROP',
    ]
    assert EG_A not in f and IN_B not in f  # pod-a not selected; Egress only


def test_ip_block_except_is_exact() -> None:
    cidr = N("172.18.0.0/24")
    excepts = (N("172.18.0.250/32"), N("172.18.0.64/26"))
    parts = subtract(cidr, excepts)
    allowed = {ip for net in parts for ip in net}
    assert allowed == {ip for ip in cidr if not any(ip in e for e in excepts)}
    assert sum(net.num_addresses for net in parts) == len(allowed)  # disjoint
    assert subtract(cidr, (N("172.0.0.0/8"),)) == []
    assert subtract(cidr, (N("10.0.0.0/8"),)) == [cidr]

    policy = replace(
        ALLOW_A_TO_B,
        ingress=(PolicyRule(peers=(PolicyPeer(ip_block=IPBlock(cidr, excepts)),)),),
    )
    f = tables(iptables(replace(CLASSIC, policies=(policy,))))["filter"]
    rules = without_exceptions(f[IN_B], POD_B, "ingress")[:-1]
    sources = [r.split()[1] for r in rules]
    assert sources == [str(net) for net in parts]
    assert all("ipBlock 172.18.0.0/24 except 172.18.0.250/32,172.18.0.64/26, all ports" in r for r in rules)


# -- whole-ruleset properties ------------------------------------------------


def full_scenario() -> Scenario:
    """Something of everything, to exercise every renderer path."""
    lonely = replace(SVC_B, name="svc-none", cluster_ip=A("10.96.0.101"), selector=labels({}))
    local = replace(
        two_nodes(external_traffic_policy="Local").services[0],
        name="svc-local",
        cluster_ip=A("10.96.0.102"),
    )
    base = two_nodes()
    return replace(
        base,
        services=(*base.services, lonely, local),
        policies=(DENY_ALL, ALLOW_A_TO_B),
    )


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_every_rule_has_a_comment(name: str) -> None:
    for ns in render(full_scenario(), name).namespaces:
        for line in ns.iptables.splitlines():
            if line.startswith("-A "):
                assert " -m comment --comment " in line, line


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_every_ruleset_is_well_formed(name: str) -> None:
    for ns in render(full_scenario(), name).namespaces:
        if not ns.iptables:
            continue
        for table, chains in tables(ns.iptables).items():
            for chain, rules in chains.items():
                assert len(chain) <= 28, chain  # XT_EXTENSION_MAXNAMELEN - 1
                for rule in rules:
                    target = rule.split(" -j ")[1].split()[0]
                    builtin = target in ("ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "MARK")
                    assert builtin or target in chains or target == "MASQUERADE", (table, rule)
        assert ns.iptables.count("COMMIT") == ns.iptables.count("\n*") + 1


def test_renders_are_deterministic() -> None:
    scenario = full_scenario()
    shuffled = replace(
        scenario,
        services=tuple(reversed(scenario.services)),
        policies=tuple(reversed(scenario.policies)),
    )
    assert render(scenario) == render(scenario)
    for node in ("node-1", "node-2"):
        assert iptables(scenario, node=node) == iptables(shuffled, node=node)


_HAVE_SIM_PARSER = importlib.util.find_spec("backends.sim.iptables") is not None and hasattr(
    importlib.import_module("backends.sim.iptables"), "parse_iptables_save"
)


@pytest.mark.skipif(not _HAVE_SIM_PARSER, reason="backends.sim.iptables not available")
@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_the_simulator_parses_every_ruleset(name: str) -> None:
    from backends.sim.iptables import parse_iptables_save

    for ns in render(full_scenario(), name).namespaces:
        if ns.iptables:
            parse_iptables_save(ns.iptables, source=f"{name}:{ns.name}")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(knobs=True))
def test_any_scenario_renders(scenario: Scenario) -> None:
    for impl in IMPLEMENTATIONS.values():
        dp = impl.render(scenario)
        assert {s for s, _ in dp.sources} >= {f"pod:{p.ref}" for p in scenario.pods}
        for ns in dp.namespaces:
            for line in ns.iptables.splitlines():
                if line.startswith(":"):
                    assert len(line[1:].split()[0]) <= 28, line
                if line.startswith("-A "):
                    assert " -m comment --comment " in line, line


# -- broken variants: each differs from the reference exactly where intended --


def test_hairpin_mode_off_only_clears_the_bridge_port_flag() -> None:
    ref, broken = render(CLASSIC), render(CLASSIC, "hairpin-mode-off")
    unhairpinned = tuple(
        replace(ns, links=tuple(replace(link, hairpin=False) for link in ns.links)) for ns in ref.namespaces
    )
    assert any(link.hairpin for ns in ref.namespaces for link in ns.links)
    assert broken.namespaces == unhairpinned


def test_bridge_nf_off_only_changes_the_sysctl() -> None:
    ref, broken = render(CLASSIC), render(CLASSIC, "bridge-nf-off")
    key = "net.bridge.bridge-nf-call-iptables"
    for a, b in zip(ref.namespaces, broken.namespaces, strict=True):
        if a.role == "node":
            assert (a.sysctl(key), b.sysctl(key)) == ("1", "0")
            assert [k for k, _ in a.sysctls] == [k for k, _ in b.sysctls]
            assert replace(a, sysctls=()) == replace(b, sysctls=())
        else:
            assert a == b


def assert_only_iptables_differ(scenario: Scenario, name: str) -> None:
    assert without_iptables(render(scenario)) == without_iptables(render(scenario, name))


def test_no_hairpin_masquerade_drops_only_the_sep_masquerade() -> None:
    assert_only_iptables_differ(CLASSIC, "no-hairpin-masquerade")
    removed, added = diff(iptables(CLASSIC), iptables(CLASSIC, "no-hairpin-masquerade"))
    assert added == []
    assert removed == [
        f'-A {TCP_SEP_B} -s 10.244.1.11/32 -m comment --comment "default/svc-b:tcp" -j KUBE-MARK-MASQ',
        f"-A KUBE-SEP-{kube_hash('default/svc-b:udpudp10.244.1.11:8080')} -s 10.244.1.11/32 "
        '-m comment --comment "default/svc-b:udp" -j KUBE-MARK-MASQ',
    ]


def test_dnat_ip_only_matches_the_cluster_ip_alone() -> None:
    assert_only_iptables_differ(CLASSIC, "dnat-ip-only")
    removed, added = diff(iptables(CLASSIC), iptables(CLASSIC, "dnat-ip-only"))
    assert removed == [
        '-A KUBE-SERVICES -d 10.96.0.100/32 -p tcp -m comment --comment "default/svc-b:tcp '
        f'cluster IP" -m tcp --dport 80 -j {TCP_SVC}',
        '-A KUBE-SERVICES -d 10.96.0.100/32 -p udp -m comment --comment "default/svc-b:udp '
        f'cluster IP" -m udp --dport 80 -j {UDP_SVC}',
    ]
    assert added == [
        f'-A KUBE-SERVICES -d 10.96.0.100/32 -m comment --comment "default/svc-b:tcp cluster IP" -j {TCP_SVC}',
        f'-A KUBE-SERVICES -d 10.96.0.100/32 -m comment --comment "default/svc-b:udp cluster IP" -j {UDP_SVC}',
    ]


def test_policy_before_dnat_moves_policy_to_mangle() -> None:
    scenario = replace(CLASSIC, policies=(DENY_ALL, ALLOW_A_TO_B))
    assert_only_iptables_differ(scenario, "policy-before-dnat")
    ref, broken = tables(iptables(scenario)), tables(iptables(scenario, "policy-before-dnat"))
    assert list(broken) == ["mangle", "nat", "filter"]
    assert broken["nat"] == ref["nat"]
    netpol = {c: r for c, r in ref["filter"].items() if c.startswith("NETPOL-")}
    hook = ['-m comment --comment "network policy" -j NETPOL-FORWARD']
    assert broken["filter"] == {
        c: [r for r in rules if r not in hook] for c, rules in ref["filter"].items() if c not in netpol
    }
    assert broken["mangle"] == {
        "PREROUTING": hook,
        "INPUT": [],
        "FORWARD": [],
        "OUTPUT": hook,
        "POSTROUTING": [],
        **netpol,
    }


def test_cni_masquerade_first_puts_ip_masq_ahead_of_kube_postrouting() -> None:
    assert_only_iptables_differ(CLASSIC, "cni-masquerade-first")
    ref, broken = tables(iptables(CLASSIC)), tables(iptables(CLASSIC, "cni-masquerade-first"))
    assert broken["filter"] == ref["filter"]
    cni = [c for c in broken["nat"] if c not in ref["nat"]]
    assert len(cni) == 2 and all(c.startswith("CNI-") and len(c) == 28 for c in cni)
    assert {c: r for c, r in broken["nat"].items() if c not in cni and c != "POSTROUTING"} == {
        c: r for c, r in ref["nat"].items() if c != "POSTROUTING"
    }
    postrouting = broken["nat"]["POSTROUTING"]
    assert postrouting[-1] == ref["nat"]["POSTROUTING"][0]  # KUBE-POSTROUTING comes last
    for pod, chain, rule in zip((POD_A, POD_B), cni, postrouting, strict=False):
        cid = hashlib.sha256(pod.ref.encode()).hexdigest()
        comment = f'-m comment --comment "name: \\"cbr0\\" id: \\"{cid}\\""'
        assert rule == f"-s {pod.ip}/32 {comment} -j {chain}"
        assert broken["nat"][chain] == [
            f"-d 10.244.1.0/24 {comment} -j ACCEPT",
            f"! -d 224.0.0.0/4 {comment} -j MASQUERADE",
        ]


def test_no_endpoints_drop_drops_instead_of_rejecting() -> None:
    scenario = two_nodes(selector=labels({"app": "nobody"}))
    assert_only_iptables_differ(scenario, "no-endpoints-drop")
    removed, added = diff(iptables(scenario), iptables(scenario, "no-endpoints-drop"))
    reject = "-j REJECT --reject-with icmp-port-unreachable"
    assert len(removed) == 2 and all(line.endswith(reject) for line in removed)
    assert added == [line.removesuffix(reject) + "-j DROP" for line in removed]
    # with endpoints, nothing changes
    assert iptables(CLASSIC) == iptables(CLASSIC, "no-endpoints-drop")


def test_etp_local_masquerade_treats_local_as_cluster() -> None:
    local, cluster = two_nodes(external_traffic_policy="Local"), two_nodes()
    assert_only_iptables_differ(local, "etp-local-masquerade")
    for node in ("node-1", "node-2"):
        # exactly what the reference renders for externalTrafficPolicy: Cluster
        assert iptables(local, "etp-local-masquerade", node) == iptables(cluster, node=node)
        assert iptables(local, node=node) != iptables(cluster, node=node)
    # ClusterIP-only scenarios are unaffected
    assert iptables(CLASSIC) == iptables(CLASSIC, "etp-local-masquerade")


def test_accept_local_ignored_never_sets_the_sysctl() -> None:
    wants = replace(CLASSIC, pods=tuple(replace(p, accept_local=True) for p in CLASSIC.pods))
    ref = get_implementation(REFERENCE).render(wants)
    broken = get_implementation("accept-local-ignored").render(wants)
    for pod in wants.pods:
        name = f"pod-{pod.namespace}-{pod.name}"
        assert ref.netns(name).sysctl("net.ipv4.conf.eth0.accept_local") == "1"
        assert broken.netns(name).sysctl("net.ipv4.conf.eth0.accept_local") == "0"
        assert broken.netns(name).sysctl("net.ipv4.conf.all.accept_local") == "0"
    assert [ns.iptables for ns in ref.namespaces] == [ns.iptables for ns in broken.namespaces]
