"""NetworkPolicy and Service semantics against hand-worked examples."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.model import (
    ContainerPort,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    Protocol,
    Requirement,
    Scenario,
    Service,
    ServicePort,
    labels,
)
from conformance.semantics import (
    expected_backends,
    isolating_policies,
    nodeport_for,
    policy_allows,
    service_for,
)
from conformance.strategies import classic_scenario, scenarios

IP = IPv4Address
EXTERNAL = IP("203.0.113.5")
NODE_1 = IP("172.18.0.2")
NODE_2 = IP("172.18.0.3")


def _pod(ns: str, name: str, node: str, ip: str, **lbl: str) -> Pod:
    ports = (ContainerPort(8080, "TCP"), ContainerPort(8080, "UDP"), ContainerPort(9090, "TCP"))
    return Pod(ns, name, node, IP(ip), labels(lbl), ports)


# default/a1 (app=a) and default/b1 (app=b) on node-1; default/b2 (app=b),
# other/c1 (app=a) and other/c2 (app=b) on node-2. "other" has team=blue.
BASE = Scenario(
    nodes=(
        Node("node-1", NODE_1, IPv4Network("10.244.1.0/24")),
        Node("node-2", NODE_2, IPv4Network("10.244.2.0/24")),
    ),
    pods=(
        _pod("default", "a1", "node-1", "10.244.1.10", app="a"),
        _pod("default", "b1", "node-1", "10.244.1.11", app="b"),
        _pod("default", "b2", "node-2", "10.244.2.10", app="b"),
        _pod("other", "c1", "node-2", "10.244.2.11", app="a"),
        _pod("other", "c2", "node-2", "10.244.2.12", app="b"),
    ),
    namespaces=(Namespace("other", labels({"team": "blue"})),),
)
A1, B1, B2, C1, C2 = BASE.pods


def sel(**lbl: str) -> LabelSelector:
    return LabelSelector(labels(lbl))


def with_policies(*policies: NetworkPolicy) -> Scenario:
    return replace(BASE, policies=policies)


def ingress(name: str, selector: LabelSelector, *rules: PolicyRule, ns: str = "default") -> NetworkPolicy:
    return NetworkPolicy(ns, name, selector, ("Ingress",), ingress=rules)


def egress(name: str, selector: LabelSelector, *rules: PolicyRule, ns: str = "default") -> NetworkPolicy:
    return NetworkPolicy(ns, name, selector, ("Egress",), egress=rules)


def allowed(s: Scenario, src: Pod | IPv4Address, dst: Pod, port: int = 8080, proto: Protocol = "TCP") -> bool:
    return policy_allows(s, src, dst, port, proto)


def test_no_policies_allow_everything() -> None:
    sources: list[Pod | IPv4Address] = [*BASE.pods, EXTERNAL, NODE_2]
    for src in sources:
        for dst in BASE.pods:
            assert allowed(BASE, src, dst, 1234, "UDP")


def test_default_deny_ingress() -> None:
    s = with_policies(ingress("deny", LabelSelector()))
    assert not allowed(s, A1, B1)
    assert not allowed(s, B1, A1)
    assert not allowed(s, C1, B1)  # from another namespace too
    assert not allowed(s, EXTERNAL, B1)
    # Pods elsewhere are not isolated, and egress is untouched.
    assert allowed(s, A1, C1)
    assert allowed(s, EXTERNAL, C2)


def test_policies_in_other_namespaces_do_not_apply() -> None:
    s = with_policies(ingress("deny", LabelSelector(), ns="other"))
    assert allowed(s, A1, B1)
    assert allowed(s, C1, B1)
    assert not allowed(s, A1, C1)
    assert isolating_policies(s, B1, "Ingress") == ()


def test_allow_by_pod_selector_is_namespace_local() -> None:
    s = with_policies(ingress("b-from-a", sel(app="b"), PolicyRule(peers=(PolicyPeer(sel(app="a")),))))
    assert allowed(s, A1, B1)
    assert allowed(s, A1, B2)
    assert not allowed(s, C1, B1)  # app=a, but in namespace other
    assert not allowed(s, B2, B1)
    assert not allowed(s, EXTERNAL, B1)  # selectors never match addresses
    assert allowed(s, B1, A1)  # a1 is not selected


def test_allow_by_namespace_selector() -> None:
    peer = PolicyPeer(namespace_selector=sel(team="blue"))
    s = with_policies(ingress("from-blue", sel(app="b"), PolicyRule(peers=(peer,))))
    assert allowed(s, C1, B1)
    assert allowed(s, C2, B1)
    assert not allowed(s, A1, B1)
    # Every namespace carries its name label.
    by_name = PolicyPeer(namespace_selector=sel(**{"kubernetes.io/metadata.name": "default"}))
    s = with_policies(ingress("from-default", sel(app="b"), PolicyRule(peers=(by_name,))))
    assert allowed(s, A1, B1)
    assert not allowed(s, C1, B1)


def test_pod_and_namespace_selector_in_one_peer_is_and() -> None:
    both = PolicyPeer(pod_selector=sel(app="a"), namespace_selector=sel(team="blue"))
    s = with_policies(ingress("and", sel(app="b"), PolicyRule(peers=(both,))))
    assert allowed(s, C1, B1)
    assert not allowed(s, C2, B1)  # right namespace, wrong pod
    assert not allowed(s, A1, B1)  # right pod, wrong namespace


def test_two_peers_are_or() -> None:
    peers = (PolicyPeer(pod_selector=sel(app="a")), PolicyPeer(namespace_selector=sel(team="blue")))
    s = with_policies(ingress("or", sel(app="b"), PolicyRule(peers=peers)))
    assert allowed(s, A1, B1)
    assert allowed(s, C1, B1)
    assert allowed(s, C2, B1)
    assert not allowed(s, B2, B1)


def test_match_expressions() -> None:
    not_a = LabelSelector(match_expressions=(Requirement("app", "NotIn", ("a",)),))
    s = with_policies(ingress("not-a", LabelSelector(), PolicyRule(peers=(PolicyPeer(not_a),))))
    assert allowed(s, B2, B1)
    assert not allowed(s, A1, B1)


def test_ip_block_with_except() -> None:
    block = IPBlock(IPv4Network("10.244.0.0/16"), (IPv4Network("10.244.2.0/24"),))
    s = with_policies(ingress("cidr", sel(app="b"), PolicyRule(peers=(PolicyPeer(ip_block=block),))))
    assert allowed(s, A1, B1)  # 10.244.1.10
    assert not allowed(s, B2, B1)  # 10.244.2.10 is excepted
    assert not allowed(s, EXTERNAL, B1)
    assert allowed(s, IP("10.244.7.7"), B1)
    world = IPBlock(IPv4Network("0.0.0.0/0"), (IPv4Network("10.0.0.0/8"),))
    s = with_policies(ingress("world", sel(app="b"), PolicyRule(peers=(PolicyPeer(ip_block=world),))))
    assert allowed(s, EXTERNAL, B1)
    assert not allowed(s, A1, B1)


def test_ports_and_port_ranges() -> None:
    rule = PolicyRule(ports=(PolicyPort("TCP", 8080),))
    s = with_policies(ingress("tcp-8080", sel(app="b"), rule))
    assert allowed(s, A1, B1, 8080, "TCP")
    assert allowed(s, EXTERNAL, B1, 8080, "TCP")  # no peers: every source
    assert not allowed(s, A1, B1, 8080, "UDP")
    assert not allowed(s, A1, B1, 9090, "TCP")

    ranged = PolicyRule(ports=(PolicyPort("TCP", 8000, 8100),))
    s = with_policies(ingress("range", sel(app="b"), ranged))
    assert allowed(s, A1, B1, 8000)
    assert allowed(s, A1, B1, 8100)
    assert not allowed(s, A1, B1, 8101)
    assert not allowed(s, A1, B1, 9090)

    any_udp = PolicyRule(ports=(PolicyPort("UDP"),))
    s = with_policies(ingress("udp", sel(app="b"), any_udp))
    assert allowed(s, A1, B1, 1, "UDP")
    assert not allowed(s, A1, B1, 8080, "TCP")


def test_peers_and_ports_must_both_match() -> None:
    rule = PolicyRule(peers=(PolicyPeer(sel(app="a")),), ports=(PolicyPort("TCP", 9090),))
    s = with_policies(ingress("both", sel(app="b"), rule))
    assert allowed(s, A1, B1, 9090)
    assert not allowed(s, A1, B1, 8080)
    assert not allowed(s, B2, B1, 9090)


def test_rules_and_policies_are_unions() -> None:
    s = with_policies(
        ingress("p1", sel(app="b"), PolicyRule(peers=(PolicyPeer(sel(app="a")),))),
        ingress("p2", sel(app="b"), PolicyRule(peers=(PolicyPeer(sel(app="b")),))),
    )
    assert allowed(s, A1, B1)
    assert allowed(s, B2, B1)
    assert not allowed(s, C1, B1)


def test_egress_and_ingress_combined() -> None:
    s = with_policies(
        egress(
            "a-to-b",
            sel(app="a"),
            PolicyRule(peers=(PolicyPeer(sel(app="b")),), ports=(PolicyPort("TCP", 8080),)),
        ),
        ingress("b-from-a-and-blue", sel(app="b"), PolicyRule(peers=(PolicyPeer(sel(app="a")),))),
    )
    assert allowed(s, A1, B1, 8080)  # both directions allow
    assert not allowed(s, A1, B1, 9090)  # egress denies the port
    assert not allowed(s, A1, C2)  # egress: c2 is not in a1's namespace
    assert not allowed(s, B2, B1)  # ingress denies b2
    assert allowed(s, B1, A1)  # a1 is only isolated for egress
    assert allowed(s, EXTERNAL, A1)  # egress policies never apply to addresses


def test_egress_ip_block_matches_the_destination_pod() -> None:
    block = IPBlock(IPv4Network("10.244.2.0/24"))
    s = with_policies(egress("to-node-2", LabelSelector(), PolicyRule(peers=(PolicyPeer(ip_block=block),))))
    assert allowed(s, A1, B2)
    assert not allowed(s, A1, B1)


def test_policy_types_not_rules_decide_isolation() -> None:
    egress_only = NetworkPolicy("default", "e", sel(app="b"), ("Egress",))
    s = with_policies(egress_only)
    assert allowed(s, A1, B1)  # b1 is not isolated for ingress
    assert not allowed(s, B1, A1)  # and denies all egress
    # Ingress rules in an egress-only policy are ignored.
    ignored = NetworkPolicy("default", "i", sel(app="b"), ("Egress",), ingress=(PolicyRule(),), egress=(PolicyRule(),))
    assert isolating_policies(with_policies(ignored), B1, "Ingress") == ()


def test_a_pod_always_reaches_itself_and_its_node_reaches_it() -> None:
    deny_all = NetworkPolicy("default", "deny", LabelSelector(), ("Ingress", "Egress"))
    s = with_policies(deny_all)
    assert allowed(s, A1, A1)
    assert not allowed(s, A1, B1)
    assert allowed(s, NODE_1, B1)  # b1's own node
    assert not allowed(s, NODE_2, B1)  # another node is an ordinary address


def test_service_lookups() -> None:
    s = classic_scenario()
    svc = s.services[0]
    assert service_for(s, IP("10.96.0.100"), 80, "TCP") == (svc, svc.ports[0])
    assert service_for(s, IP("10.96.0.100"), 80, "UDP") == (svc, svc.ports[1])
    assert service_for(s, IP("10.96.0.100"), 80, "SCTP") is None
    assert service_for(s, IP("10.96.0.100"), 8080, "TCP") is None
    assert service_for(s, IP("10.96.0.101"), 80, "TCP") is None
    assert nodeport_for(s, 80, "TCP") is None


def _nodeport_scenario(policy: str) -> Scenario:
    svc = Service(
        "default",
        "web",
        IP("10.96.0.10"),
        (ServicePort(80, 8080, "TCP", "http", node_port=30080),),
        selector=labels({"app": "b"}),
        type="NodePort",
        external_traffic_policy="Local" if policy == "Local" else "Cluster",
    )
    return replace(BASE, services=(svc,))


def test_nodeport_and_backends() -> None:
    local = _nodeport_scenario("Local")
    svc = local.services[0]
    sp = svc.ports[0]
    assert nodeport_for(local, 30080, "TCP") == (svc, sp)
    assert nodeport_for(local, 30080, "UDP") is None
    assert nodeport_for(local, 30081, "TCP") is None
    # Selector is namespace-scoped: c2 (app=b, other) is not an endpoint.
    assert expected_backends(local, svc, sp, client_node=None, via_nodeport=False) == (B1, B2)
    assert expected_backends(local, svc, sp, client_node="node-2", via_nodeport=True) == (B2,)
    assert expected_backends(local, svc, sp, client_node="node-1", via_nodeport=True) == (B1,)
    with pytest.raises(ValueError, match="client_node"):
        expected_backends(local, svc, sp, client_node=None, via_nodeport=True)

    cluster = _nodeport_scenario("Cluster")
    csvc = cluster.services[0]
    assert expected_backends(cluster, csvc, csvc.ports[0], client_node="node-2", via_nodeport=True) == (B1, B2)


def test_expected_backends_rejects_a_foreign_port() -> None:
    s = classic_scenario()
    with pytest.raises(ValueError, match="not a port"):
        expected_backends(s, s.services[0], ServicePort(1, 1), client_node=None, via_nodeport=False)


@settings(max_examples=100)
@given(scenarios(max_policies=4), st.data())
def test_only_the_two_endpoints_namespaces_matter(s: Scenario, data: st.DataObject) -> None:
    if not s.pods:
        return
    src = data.draw(st.sampled_from(s.pods))
    dst = data.draw(st.sampled_from(s.pods))
    choices: list[tuple[int, Protocol]] = [(8080, "TCP"), (8080, "UDP"), (9090, "TCP")]
    port, proto = data.draw(st.sampled_from(choices))
    kept = tuple(p for p in s.policies if p.namespace in (src.namespace, dst.namespace))
    assert policy_allows(s, src, dst, port, proto) == policy_allows(replace(s, policies=kept), src, dst, port, proto)
    # Without policies, everything is allowed.
    assert policy_allows(replace(s, policies=()), src, dst, port, proto)
