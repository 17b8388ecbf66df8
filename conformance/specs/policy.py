"""NetworkPolicy after NAT: policy only ever sees pod IPs.

DNAT happens in PREROUTING/OUTPUT, before the filter table, so a policy
engine that filters in FORWARD sees the endpoint, not the ClusterIP. Hence:

- reaching an endpoint through its ClusterIP is allowed exactly when
  reaching it directly at its pod IP and targetPort is;
- direct reachability follows the policies (Kubernetes semantics,
  `conformance.semantics.policy_allows`);
- an ipBlock that covers only a ClusterIP allows nothing.

Each ClusterIP probe is paired with direct probes to every endpoint, and the
two are compared on the same backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Network

from hypothesis import strategies as st

from conformance import semantics, strategies
from conformance.cases import Case
from conformance.model import IPBlock, LabelSelector, NetworkPolicy, PolicyPeer, PolicyRule, Scenario
from conformance.probes import Observation, Probe
from conformance.specs import Spec
from conformance.specs.common import each_outcome, source_pod, violation
from conformance.strategies import classic_scenario


def _with_direct(s: Scenario, service_probes: list[Probe]) -> Case:
    probes: list[Probe] = []
    for probe in service_probes:
        probes.append(probe)
        hit = semantics.service_for(s, probe.dst, probe.port, probe.protocol)
        if hit is None:
            continue
        svc, sp = hit
        for ep in s.endpoints(svc):
            direct = Probe(probe.source, ep.ip, sp.target_port, sp.protocol)
            if direct not in probes:
                probes.append(direct)
    return Case(s, tuple(probes))


def cases() -> st.SearchStrategy[Case]:
    def for_scenario(s: Scenario) -> st.SearchStrategy[Case]:
        pod_sources = [f"pod:{p.ref}" for p in s.pods]
        if strategies.probes(s, kinds=("service",)).is_empty:
            return st.nothing()
        service_probes = strategies.probes(s, kinds=("service",)).filter(lambda p: p.source in pod_sources)
        return st.lists(service_probes, min_size=1, max_size=2, unique=True).map(lambda ps: _with_direct(s, ps))

    scenarios = strategies.scenarios(max_policies=3, node_ports=False).filter(
        lambda s: bool(s.pods) and any(s.endpoints(svc) for svc in s.services)
    )
    return scenarios.flatmap(for_scenario)


def check(case: Case, observations: Sequence[Observation], exact: bool) -> list[str]:
    s = case.scenario
    out: list[str] = []
    direct: dict[tuple[str, str, int, str], bool] = {}
    # Direct probes first: they must follow the policies.
    for obs in observations:
        probe = obs.probe
        dst = s.pod_by_ip(probe.dst)
        client = source_pod(s, probe)
        if dst is None or client is None:
            continue
        permitted = semantics.policy_allows(s, client, dst, probe.port, probe.protocol)
        delivered = all(o.verdict == "delivered" for o, _ in each_outcome(obs))
        direct[(probe.source, dst.ref, probe.port, probe.protocol)] = delivered
        for o, p in each_outcome(obs):
            if permitted and o.verdict != "delivered":
                out.append(violation(probe, f"served (policies allow {client.ref} -> {dst.ref}:{probe.port})", o, p=p))
            if not permitted and o.verdict == "delivered":
                out.append(
                    violation(probe, f"not served (policies deny {client.ref} -> {dst.ref}:{probe.port})", o, p=p)
                )
    for obs in observations:
        probe = obs.probe
        client = source_pod(s, probe)
        hit = semantics.service_for(s, probe.dst, probe.port, probe.protocol)
        if hit is None or client is None:
            continue
        svc, sp = hit
        eps = s.endpoints(svc)
        allowed = {ep.ref for ep in eps if semantics.policy_allows(s, client, ep, sp.target_port, sp.protocol)}
        for o, p in each_outcome(obs):
            if o.verdict == "delivered":
                if o.served_by not in allowed:
                    out.append(violation(probe, f"served only by endpoints policy allows ({sorted(allowed)})", o, p=p))
                key = (probe.source, o.served_by or "", sp.target_port, sp.protocol)
                if direct.get(key) is False:
                    out.append(violation(probe, f"not served by {o.served_by}: reaching it directly is denied", o, p=p))
            elif eps and len(allowed) == len(eps):
                out.append(violation(probe, f"served (policies allow every endpoint: {sorted(allowed)})", o, p=p))
        if exact:
            served = {o.served_by for o, _ in each_outcome(obs) if o.verdict == "delivered"}
            if served != allowed:
                out.append(
                    f"{probe}: expected the possible servers to be exactly the allowed endpoints {sorted(allowed)}; got {sorted(str(x) for x in served)}"
                )
    return out


def _examples() -> tuple[Case, ...]:
    s = classic_scenario()
    svc = s.services[0]
    a = LabelSelector((("app", "a"),))
    b = LabelSelector((("app", "b"),))
    # pod-a may only talk to the ClusterIP's /32: after DNAT that allows nothing.
    egress_to_cluster_ip = NetworkPolicy(
        "default",
        "egress-to-clusterip-only",
        pod_selector=a,
        policy_types=("Egress",),
        egress=(PolicyRule(peers=(PolicyPeer(ip_block=IPBlock(IPv4Network(f"{svc.cluster_ip}/32"))),)),),
    )
    # pod-b admits nobody: the ClusterIP must not be a way around that.
    deny_b = NetworkPolicy("default", "deny-b", pod_selector=b, policy_types=("Ingress",))
    # pod-b admits pod-a: through the ClusterIP too.
    allow_a = NetworkPolicy(
        "default",
        "allow-a",
        pod_selector=b,
        policy_types=("Ingress",),
        ingress=(PolicyRule(peers=(PolicyPeer(pod_selector=a),)),),
    )
    probes = [
        Probe("pod:default/pod-a", svc.cluster_ip, 80, "TCP"),
        Probe("pod:default/pod-a", svc.cluster_ip, 80, "UDP"),
    ]
    return tuple(_with_direct(replace(s, policies=(pol,)), probes) for pol in (egress_to_cluster_ip, deny_b, allow_a))


SPEC = Spec(
    name="policy",
    summary="NetworkPolicy sees pod IPs: via the ClusterIP exactly when direct; a ClusterIP ipBlock allows nothing",
    cases=cases,
    check=check,
    examples=_examples(),
)
