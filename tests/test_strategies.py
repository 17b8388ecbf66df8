"""The strategies: valid, varied scenarios that shrink to small ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument, NoSuchExample

from conformance.loader import dump_scenario
from conformance.model import ContainerPort, Node, Scenario
from conformance.probes import Probe
from conformance.semantics import nodeport_for, service_for
from conformance.strategies import (
    classic_scenario,
    hairpin_probes,
    hairpin_scenarios,
    probes,
    scenarios,
)


def minimal(strategy: st.SearchStrategy[Scenario], condition: Callable[[Scenario], bool]) -> Scenario:
    # No explain phase: its tracer (sys.settrace) made each of these tests about
    # a hundred times slower (9 s against 0.1 s), and a found example needs no explaining.
    return find(
        strategy, condition, settings=settings(max_examples=2000, database=None, phases=[Phase.generate, Phase.shrink])
    )


def generates(strategy: st.SearchStrategy[Scenario], condition: Callable[[Scenario], bool]) -> None:
    """Some scenario meets `condition` (found without shrinking, which is slow)."""
    find(
        strategy,
        condition,
        settings=settings(max_examples=1000, database=None, phases=[Phase.generate]),
    )


# -- shrinking -------------------------------------------------------------------------


def test_shrinks_to_one_node_one_pod() -> None:
    s = minimal(scenarios(), lambda s: len(s.pods) >= 1)
    assert len(s.nodes) == 1
    assert len(s.pods) == 1
    assert (s.services, s.policies, s.namespaces) == ((), (), ())
    pod = s.pods[0]
    assert (pod.namespace, pod.name, pod.node, pod.ip) == (
        "default",
        "pod-1",
        "node-1",
        IPv4Address("10.244.1.10"),
    )


def test_shrinks_services_and_policies_too() -> None:
    s = minimal(scenarios(), lambda s: bool(s.services) and bool(s.policies))
    assert (len(s.nodes), len(s.pods), len(s.services), len(s.policies)) == (1, 0, 1, 1)
    assert len(s.services[0].ports) == 1
    assert s.services[0].type == "ClusterIP"
    assert s.policies[0].ingress == ()


def test_hairpin_scenarios_shrink_to_the_pair() -> None:
    s = minimal(hairpin_scenarios(), lambda s: True)
    assert (len(s.nodes), len(s.pods), len(s.services), len(s.policies)) == (1, 1, 1, 0)
    assert s.endpoints(s.services[0]) == s.pods


# -- validity and invariants -------------------------------------------------------------


@settings(max_examples=200)
@given(scenarios(knobs=True, max_policies=3))
def test_generated_scenarios_follow_the_address_plan(s: Scenario) -> None:
    for i, node in enumerate(s.nodes, start=1):
        assert node.name == f"node-{i}"
        assert node.ip == IPv4Address(f"172.18.0.{i + 1}")
        assert node.pod_cidr == IPv4Network(f"10.244.{i}.0/24")
    for pod in s.pods:
        assert pod.ip in s.node(pod.node).pod_cidr
        assert int(pod.ip) - int(s.node(pod.node).pod_cidr.network_address) >= 10
        assert pod.ports
    assert len({p.ip for p in s.pods}) == len(s.pods)
    cluster_ips = [svc.cluster_ip for svc in s.services]
    assert len(set(cluster_ips)) == len(cluster_ips)
    assert all(int(ip) >= int(IPv4Address("10.96.0.10")) for ip in cluster_ips)
    node_ports = [sp.node_port for svc in s.services for sp in svc.ports if sp.node_port]
    assert len(set(node_ports)) == len(node_ports)
    assert all(30000 <= p <= 32767 for p in node_ports)
    for svc in s.services:
        pairs = [(sp.port, sp.protocol) for sp in svc.ports]
        assert 1 <= len(pairs) <= 2
        assert len(set(pairs)) == len(pairs)
        assert (svc.type == "NodePort") == all(sp.node_port is not None for sp in svc.ports)
    # The loader agrees the scenario is valid (dump checks the round trip).
    dump_scenario(s)


@settings(max_examples=200)
@given(st.one_of(scenarios(max_services=4), hairpin_scenarios(knobs=True)))
def test_every_endpoint_listens_on_its_services_target_ports(s: Scenario) -> None:
    for svc in s.services:
        for pod in s.endpoints(svc):
            for sp in svc.ports:
                assert pod.listens(sp.target_port, sp.protocol), (svc.ref, pod.ref, sp)


@settings(max_examples=100)
@given(scenarios(min_nodes=2, max_nodes=4, max_pods_per_node=1, max_services=0, max_policies=0))
def test_options_bound_the_scenario(s: Scenario) -> None:
    assert 2 <= len(s.nodes) <= 4
    assert all(len(s.pods_on(n.name)) <= 1 for n in s.nodes)
    assert s.services == () and s.policies == ()


@settings(max_examples=100)
@given(scenarios(node_ports=False, max_services=4))
def test_node_ports_false_means_cluster_ip_only(s: Scenario) -> None:
    assert all(svc.type == "ClusterIP" for svc in s.services)


@settings(max_examples=100)
@given(scenarios(knobs=False, max_pods_per_node=4))
def test_without_knobs_everything_has_the_defaults(s: Scenario) -> None:
    assert s.masquerade_hairpin
    assert all(n.hairpin_mode and n.bridge_nf_call_iptables for n in s.nodes)
    assert not any(p.accept_local for p in s.pods)


@pytest.mark.parametrize(
    "feature",
    [
        lambda s: not s.masquerade_hairpin,
        lambda s: any(not n.hairpin_mode for n in s.nodes),
        lambda s: any(not n.bridge_nf_call_iptables for n in s.nodes),
        lambda s: any(p.accept_local for p in s.pods),
    ],
    ids=["masquerade_hairpin", "hairpin_mode", "bridge_nf_call_iptables", "accept_local"],
)
def test_knobs_vary(feature: Callable[[Scenario], bool]) -> None:
    generates(scenarios(knobs=True), feature)


def _covers_cluster_ip(s: Scenario) -> bool:
    return any(
        peer.ip_block is not None and peer.ip_block.contains(svc.cluster_ip)
        for pol in s.policies
        for rule in (*pol.ingress, *pol.egress)
        for peer in rule.peers
        for svc in s.services
    )


FEATURES: dict[str, Callable[[Scenario], bool]] = {
    "service-without-endpoints": lambda s: any(not s.endpoints(svc) for svc in s.services),
    "service-with-two-endpoints": lambda s: any(len(s.endpoints(svc)) >= 2 for svc in s.services),
    "local-traffic-policy": lambda s: any(svc.external_traffic_policy == "Local" for svc in s.services),
    "other-namespace": lambda s: any(p.namespace == "other" for p in s.pods),
    "egress-rules": lambda s: any("Egress" in p.policy_types and p.egress for p in s.policies),
    "pod-and-namespace-selector": lambda s: any(
        peer.namespace_selector is not None and peer.pod_selector is not None
        for pol in s.policies
        for rule in pol.ingress
        for peer in rule.peers
    ),
    "port-range": lambda s: any(pp.end_port is not None for pol in s.policies for r in pol.ingress for pp in r.ports),
    "ip-block-covering-cluster-ip": _covers_cluster_ip,
}


def test_every_feature_is_generated() -> None:
    # One stream of scenarios for all features (each on its own stream cost
    # the sum of the waits, not the longest one).
    missing = set(FEATURES)

    def all_seen(s: Scenario) -> bool:
        missing.difference_update({name for name in missing if FEATURES[name](s)})
        return not missing

    try:
        generates(scenarios(max_policies=3), all_seen)
    except NoSuchExample:
        pytest.fail(f"never generated in 1000 scenarios: {', '.join(sorted(missing))}")


def test_classic_scenario() -> None:
    s = classic_scenario()
    assert [p.ref for p in s.pods] == ["default/pod-a", "default/pod-b"]
    assert s.nodes == (Node("node-1", IPv4Address("172.18.0.2"), IPv4Network("10.244.1.0/24")),)
    svc = s.services[0]
    assert (svc.ref, svc.cluster_ip) == ("default/svc-b", IPv4Address("10.96.0.100"))
    assert [(sp.port, sp.target_port, sp.protocol) for sp in svc.ports] == [
        (80, 8080, "TCP"),
        (80, 8080, "UDP"),
    ]
    assert s.endpoints(svc) == (s.pod("default/pod-b"),)
    assert s.pods[0].ports == (ContainerPort(8080, "TCP"), ContainerPort(8080, "UDP"))


# -- argument checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_nodes": 3, "max_nodes": 2}, "max_nodes=2 must be at least min_nodes=3"),
        ({"min_nodes": 0}, "min_nodes=0 must be between 1 and 250"),
        ({"max_nodes": 300}, "max_nodes=300 must be between 1 and 250"),
        ({"max_pods_per_node": -1}, "max_pods_per_node=-1 must be between 0 and 245"),
        ({"max_services": 1.5}, "max_services=1.5 must be an integer"),
        ({"max_policies": True}, "max_policies=True must be an integer"),
        ({"knobs": 1}, "knobs=1 must be True or False"),
        ({"node_ports": "yes"}, "node_ports='yes' must be True or False"),
    ],
)
def test_scenarios_argument_checks(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")):
        scenarios(**kwargs)


def test_hairpin_scenarios_argument_checks() -> None:
    with pytest.raises(InvalidArgument, match="max_services >= 1"):
        hairpin_scenarios(max_services=0)
    with pytest.raises(InvalidArgument, match="max_pods_per_node >= 1"):
        hairpin_scenarios(max_pods_per_node=0)


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        ((), "kinds must not be empty"),
        (("pod", "pod"), "has duplicates"),
        (("tcp",), "unknown probe kind 'tcp'"),
        ("pod", "must be a sequence of probe kinds"),
    ],
)
def test_probes_argument_checks(kinds: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        probes(classic_scenario(), kinds=kinds)


# -- probes ---------------------------------------------------------------------------------


def _source_ok(s: Scenario, probe: Probe, *, external: bool) -> bool:
    refs = {f"pod:{p.ref}" for p in s.pods} | {f"node:{n.name}" for n in s.nodes}
    return probe.source in refs or (external and probe.source == "external")


@settings(max_examples=200)
@given(scenarios(), st.data())
def test_probes_of_each_kind(s: Scenario, data: st.DataObject) -> None:
    for kind in ("pod", "service", "nodeport", "wrong-port"):
        strategy = probes(s, kinds=(kind,))
        if strategy.is_empty:
            continue
        probe = data.draw(strategy, label=kind)
        assert probe.protocol in ("TCP", "UDP")
        assert _source_ok(s, probe, external=kind == "nodeport")
        if kind == "pod":
            assert s.pod_by_ip(probe.dst) is not None
        elif kind == "service":
            assert service_for(s, probe.dst, probe.port, probe.protocol) is not None
        elif kind == "nodeport":
            assert probe.dst in {n.ip for n in s.nodes}
            assert nodeport_for(s, probe.port, probe.protocol) is not None
        else:
            assert s.service_by_ip(probe.dst) is not None
            assert service_for(s, probe.dst, probe.port, probe.protocol) is None


def test_probe_kinds_are_skipped_when_impossible() -> None:
    bare = Scenario(nodes=classic_scenario().nodes)
    assert probes(bare).is_empty
    assert probes(bare, kinds=("service", "nodeport")).is_empty
    assert not probes(classic_scenario(), kinds=("service",)).is_empty
    assert probes(classic_scenario(), kinds=("nodeport",)).is_empty


def test_wrong_port_probes_include_the_other_protocol() -> None:
    s = classic_scenario()
    tcp_only = replace(s.services[0], ports=s.services[0].ports[:1])
    s = replace(s, services=(tcp_only,))
    found = find(
        probes(s, kinds=("wrong-port",)),
        lambda p: p.port == 80,
        settings=settings(database=None),
    )
    assert (found.dst, found.port, found.protocol) == (tcp_only.cluster_ip, 80, "UDP")


@settings(max_examples=100)
@given(hairpin_scenarios(knobs=True), st.data())
def test_hairpin_probes(s: Scenario, data: st.DataObject) -> None:
    probe = data.draw(hairpin_probes(s))
    found = service_for(s, probe.dst, probe.port, probe.protocol)
    assert found is not None
    pod = s.pod(probe.source.removeprefix("pod:"))
    assert pod in s.endpoints(found[0])


def test_hairpin_probes_empty_without_a_pair() -> None:
    s = classic_scenario()
    assert not hairpin_probes(s).is_empty  # pod-b is behind svc-b
    no_service = Scenario(nodes=s.nodes, pods=s.pods)
    assert hairpin_probes(no_service).is_empty
