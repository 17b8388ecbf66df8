"""Hairpin SNAT: a pod reaching itself through its own Service.

The connection must be served, and when the pod serves itself it must see
a source other than its own IP: without the rewrite (kube-proxy's
MASQUERADE on the 0x4000 mark) a packet whose source is the receiver's own
address is a martian and is dropped. With a bridge and br_netfilter, the
frame also has to leave the bridge by the port it came in on (hairpin mode).
The reply must come from the ClusterIP. The same holds for a pod reaching
itself through its own hostPort on its node's address (portmap's hairpin
masquerade): served by itself, a rewritten source, the reply from the node.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from conformance import semantics, strategies
from conformance.cases import Case
from conformance.probes import Observation, Probe
from conformance.specs import Spec
from conformance.specs.common import cases_of, each_outcome, served_set, source_pod, violation
from conformance.specs.dnat import host_port_scenario
from conformance.strategies import classic_scenario


def cases() -> st.SearchStrategy[Case]:
    return cases_of(strategies.hairpin_scenarios(max_policies=0), strategies.hairpin_probes, max_probes=2)


def check(case: Case, observations: Sequence[Observation], exact: bool) -> list[str]:
    s = case.scenario
    out: list[str] = []
    for obs in observations:
        probe = obs.probe
        me = source_pod(s, probe)
        if me is None:
            continue
        svc = s.service_by_ip(probe.dst)
        hp = semantics.hostport_for(s, me.node, probe.port, probe.protocol)
        if svc is not None:
            refs = {p.ref for p in s.endpoints(svc)}
        elif hp is not None and hp[0].ref == me.ref and probe.dst == s.node(me.node).ip:
            refs = {me.ref}
        else:
            continue
        for o, p in each_outcome(obs):
            if o.verdict != "delivered" or o.served_by not in refs or o.client_saw != probe.dst:
                out.append(violation(probe, f"served by one of {sorted(refs)}, reply from {probe.dst}", o, p=p))
            elif o.served_by == me.ref and o.server_saw == me.ip:
                out.append(violation(probe, f"{me.ref} serving itself sees a source other than its own IP", o, p=p))
        if exact and me.ref in refs and me.ref not in served_set(obs):
            out.append(f"{probe}: expected {me.ref} itself among the possible servers; got {sorted(served_set(obs))}")
    return out


def _classic() -> tuple[Case, ...]:
    s = classic_scenario()
    ip = s.services[0].cluster_ip
    hp = host_port_scenario()
    return (
        Case(s, (Probe("pod:default/pod-b", ip, 80, "TCP"), Probe("pod:default/pod-b", ip, 80, "UDP"))),
        Case(hp, (Probe("pod:default/pod-b", hp.nodes[0].ip, 8443, "TCP"),)),
    )


SPEC = Spec(
    name="hairpin",
    summary="a pod reaching itself via its own Service is served, sees a rewritten source, reply from the ClusterIP",
    cases=cases,
    check=check,
    examples=_classic(),
)
