"""Connectivity: every pod reaches every pod at its IP, without NAT.

Kubernetes' network model: pods can talk to all pods on any node without
NAT, and agents on a node can talk to all pods. So a probe to a pod IP at a
port the pod listens on is served by that pod, which sees the client pod's
own IP; a port nobody listens on is refused at once (RST or ICMP port
unreachable), not silently dropped. No NetworkPolicy is in play here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address

from hypothesis import strategies as st

from conformance import strategies
from conformance.cases import Case
from conformance.probes import Observation, Probe
from conformance.specs import Spec
from conformance.specs.common import cases_of, each_outcome, second_node, source_pod, violation
from conformance.strategies import classic_scenario


def cases() -> st.SearchStrategy[Case]:
    return cases_of(
        strategies.scenarios(max_policies=0),
        lambda s: strategies.probes(s, kinds=("pod",)),
    )


def check(case: Case, observations: Sequence[Observation], exact: bool) -> list[str]:
    s = case.scenario
    out: list[str] = []
    for obs in observations:
        probe = obs.probe
        dst = s.pod_by_ip(probe.dst)
        if dst is None:
            continue
        client = source_pod(s, probe)
        listens = dst.listens(probe.port, probe.protocol)
        for o, p in each_outcome(obs):
            if not listens:
                if o.verdict != "refused":
                    out.append(violation(probe, f"refused ({dst.ref} does not listen there)", o, p=p))
                continue
            ok = o.verdict == "delivered" and o.served_by == dst.ref and o.client_saw == probe.dst
            if ok and client is not None and o.server_saw != client.ip:
                ok = False
            want = f"served by {dst.ref}, reply from {probe.dst}"
            if client is not None:
                want += f", server sees the client's own IP {client.ip} (no NAT between pods)"
            if not ok:
                out.append(violation(probe, want, o, p=p))
    return out


def _two_nodes() -> Case:
    """Classic plus pod-c on a second node: pod traffic across nodes keeps its source."""
    s = classic_scenario()
    node2 = second_node(s)
    c = replace(
        s.pod("default/pod-a"), name="pod-c", node="node-2", ip=IPv4Address("10.244.2.10"), labels=(("app", "c"),)
    )
    s = replace(s, nodes=(*s.nodes, node2), pods=(*s.pods, c))
    return Case(
        s,
        (
            Probe("pod:default/pod-a", c.ip, 8080, "TCP"),
            Probe("pod:default/pod-c", s.pod("default/pod-b").ip, 8080, "UDP"),
            Probe("node:node-2", s.pod("default/pod-a").ip, 8080, "TCP"),
        ),
    )


def _classic() -> tuple[Case, ...]:
    s = classic_scenario()
    a, b = s.pod("default/pod-a"), s.pod("default/pod-b")
    return (
        _two_nodes(),
        Case(
            s,
            (
                Probe("pod:default/pod-a", b.ip, 8080, "TCP"),
                Probe("pod:default/pod-a", b.ip, 8080, "UDP"),
                Probe("pod:default/pod-b", a.ip, 9999, "TCP"),
                Probe("node:node-1", a.ip, 8080, "TCP"),
            ),
        ),
    )


SPEC = Spec(
    name="connectivity",
    summary="pods reach pods (and nodes reach pods) at pod IPs without NAT; closed ports refuse",
    cases=cases,
    check=check,
    examples=_classic(),
)
