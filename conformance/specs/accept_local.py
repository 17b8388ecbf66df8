"""accept_local: what becomes of a packet whose source is the receiver's own IP.

When a pod reaches itself through its Service and nobody rewrites the
source, the packet arrives with the pod's own IP as source. The popular
explanation says `net.ipv4.conf.<if>.accept_local=1` makes that work. It is
half true, as measured on the real kernel (Linux 6.18, README "Kernel
facts"):

- accept_local=0: the packet is a martian (fib_validate_source) and is
  dropped, for every protocol.
- accept_local=1: the packet is delivered, but the answer is addressed to
  the pod's own IP and so is routed over `lo` inside the pod; it never passes
  the node's conntrack and is never un-DNATed. UDP "works" with the wrong
  source (the server sees its own IP, the client gets the answer from the
  pod IP, not the ClusterIP); TCP fails: the SYN-ACK does not match the
  socket connected to the ClusterIP, the client answers RST, and the
  connection times out.
- With the rewrite (hairpin masquerade), accept_local does not matter.

Cases are single-endpoint Services (the pod itself), so every probe is a
hairpin; the knobs vary: masquerade_hairpin and the pod's accept_local.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hypothesis import strategies as st

from conformance import strategies
from conformance.cases import Case
from conformance.model import Scenario
from conformance.probes import Observation, Probe
from conformance.specs import Spec
from conformance.specs.common import each_outcome, source_pod, violation
from conformance.strategies import classic_scenario

SELF = ("hairpin", "self")


def _isolate(s: Scenario, pod_ref: str, service_ref: str, *, accept_local: bool, masquerade: bool) -> Scenario:
    """Make `service_ref` select exactly `pod_ref`, and set the knobs."""
    pods = tuple(
        replace(p, labels=tuple(sorted((*p.labels, SELF))), accept_local=accept_local) if p.ref == pod_ref else p
        for p in s.pods
    )
    services = tuple(replace(v, selector=(SELF,)) if v.ref == service_ref else v for v in s.services)
    return replace(s, pods=pods, services=services, masquerade_hairpin=masquerade)


def cases() -> st.SearchStrategy[Case]:
    @st.composite
    def build(draw: st.DrawFn) -> Case:
        s = draw(strategies.hairpin_scenarios(max_policies=0, node_ports=False))
        pairs = [(p, v) for v in s.services for p in s.endpoints(v)]
        pod, svc = draw(st.sampled_from(pairs))
        s = _isolate(s, pod.ref, svc.ref, accept_local=draw(st.booleans()), masquerade=draw(st.booleans()))
        probes = [
            Probe(f"pod:{pod.ref}", svc.cluster_ip, sp.port, sp.protocol)
            for sp in svc.ports
            if sp.protocol in ("TCP", "UDP")
        ]
        return Case(s, tuple(probes))

    return build()


def check(case: Case, observations: Sequence[Observation], exact: bool) -> list[str]:
    s = case.scenario
    out: list[str] = []
    for obs in observations:
        probe = obs.probe
        me = source_pod(s, probe)
        if me is None or s.service_by_ip(probe.dst) is None:
            continue
        for o, p in each_outcome(obs):
            if s.masquerade_hairpin:
                if o.verdict != "delivered" or o.server_saw == me.ip or o.client_saw != probe.dst:
                    want = f"served, source rewritten (not {me.ip}), reply from {probe.dst}"
                    out.append(violation(probe, want, o, p=p))
            elif not me.accept_local:
                if o.verdict == "delivered":
                    out.append(
                        violation(probe, f"dropped: source {me.ip} is {me.ref}'s own address, accept_local=0", o, p=p)
                    )
            elif probe.protocol == "TCP":
                if o.verdict == "delivered":
                    out.append(
                        violation(
                            probe,
                            "not delivered: with accept_local=1 the SYN-ACK stays inside the pod and the handshake fails",
                            o,
                            p=p,
                        )
                    )
            else:
                if not (o.verdict == "delivered" and o.server_saw == me.ip and o.client_saw == me.ip):
                    want = (
                        f"delivered with server and client both seeing {me.ip} (the answer bypasses the node's un-DNAT)"
                    )
                    out.append(violation(probe, want, o, p=p))
    return out


def _examples() -> tuple[Case, ...]:
    s = classic_scenario()
    ip = s.services[0].cluster_ip
    probes = (Probe("pod:default/pod-b", ip, 80, "TCP"), Probe("pod:default/pod-b", ip, 80, "UDP"))
    out = []
    for masquerade in (False, True):
        for accept_local in (False, True):
            pods = tuple(replace(p, accept_local=accept_local) if p.name == "pod-b" else p for p in s.pods)
            out.append(Case(replace(s, pods=pods, masquerade_hairpin=masquerade), probes))
    return tuple(out)


SPEC = Spec(
    name="accept-local",
    summary="an unrewritten hairpin packet: martian with accept_local=0; with 1, UDP answers from the pod IP, TCP fails",
    cases=cases,
    check=check,
    examples=_examples(),
    knobs=("masquerade_hairpin", "accept_local"),
)
