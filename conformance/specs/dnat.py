"""DNAT correctness: Services land on an endpoint at its targetPort.

- A ClusterIP is matched on IP + port + protocol: a probe at an exposed
  port is served by one of the Service's endpoints at the targetPort; any
  other port or protocol at that IP is never served.
- A NodePort answers on every node's address. With externalTrafficPolicy
  Local, a client outside the cluster is served only by endpoints on the
  node it dialled, and the server sees the client's own address.
- A hostPort answers on its node's address: served by that pod at its
  containerPort (from pods, nodes and outside alike).
- A Service without endpoints refuses at once (kube-proxy's REJECT).
- Replies are un-NATed: the client sees the reply come from the address it
  dialled, never from the pod IP behind it.
On an exact backend (the simulator) every endpoint must be a possible
server, so load balancing reaches all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address

from hypothesis import strategies as st

from conformance import semantics, strategies
from conformance.cases import Case
from conformance.model import Pod, Scenario, Service
from conformance.probes import Observation, Probe
from conformance.specs import Spec
from conformance.specs.common import (
    cases_of,
    each_outcome,
    external_ip,
    node_with_ip,
    second_node,
    served_set,
    source_node,
    source_pod,
    violation,
)
from conformance.strategies import classic_scenario


def cases() -> st.SearchStrategy[Case]:
    return cases_of(
        strategies.scenarios(max_policies=0),
        lambda s: strategies.probes(s, kinds=("service", "nodeport", "wrong-port")),
    )


def _backends(s: Scenario, probe: Probe) -> tuple[Service | None, str, tuple[Pod, ...], int, bool] | None:
    """(Service or None for a hostPort, what was dialled, possible servers, target port, source kept?).

    None: neither a Service port nor a hostPort.
    """
    hit = semantics.service_for(s, probe.dst, probe.port, probe.protocol)
    if hit is not None:
        svc, sp = hit
        return svc, f"{svc.ref} ClusterIP", s.endpoints(svc), sp.target_port, False
    node = node_with_ip(s, probe.dst)
    np = semantics.nodeport_for(s, probe.port, probe.protocol) if node else None
    if node is not None and np is not None:
        svc, sp = np
        # To the dialled node, traffic from outside or from another node's own
        # address is external (kube-proxy only short-circuits pod sources).
        other = source_node(s, probe)
        external = probe.source == "external" or (other is not None and other != node)
        pods = semantics.expected_backends(s, svc, sp, client_node=node, via_nodeport=external)
        keeps_source = external and svc.external_traffic_policy == "Local"
        return svc, f"{svc.ref} NodePort on {node}", pods, sp.target_port, keeps_source
    hp = semantics.hostport_for(s, node, probe.port, probe.protocol) if node else None
    if node is not None and hp is not None:
        pod, container_port = hp
        return None, f"{pod.ref} hostPort on {node}", (pod,), container_port, False
    return None


def _pod_ip(s: Scenario, ref: str | None) -> IPv4Address | None:
    return s.pod(ref).ip if ref else None


def _client_address(s: Scenario, probe: Probe) -> IPv4Address:
    node = source_node(s, probe)
    return s.node(node).ip if node is not None else external_ip(s)


def _known_asymmetry(s: Scenario, probe: Probe) -> bool:
    """kubernetes/kubernetes#74383, reproduced by this suite: a pod dialling a
    NodePort with externalTrafficPolicy Local on another node is DNAT'ed there
    without SNAT (kube-proxy's "pod traffic for external destinations"); an
    endpoint on the client's own node then answers it directly, the reply
    bypasses the dialled node's conntrack, and the connection fails. Such a
    probe may fail (TCP), or be answered straight from the pod (UDP); it must
    never be served by anything but an eligible endpoint."""
    client = source_pod(s, probe)
    node = node_with_ip(s, probe.dst)
    np = semantics.nodeport_for(s, probe.port, probe.protocol)
    return (
        client is not None
        and node is not None
        and node != client.node
        and np is not None
        and np[0].external_traffic_policy == "Local"
    )


def check(case: Case, observations: Sequence[Observation], exact: bool) -> list[str]:
    s = case.scenario
    out: list[str] = []
    for obs in observations:
        probe = obs.probe
        target = _backends(s, probe)
        if target is None:
            # Only ClusterIPs are judged here: a wrong port/protocol is never served.
            if s.service_by_ip(probe.dst) is not None:
                for o, p in each_outcome(obs):
                    if o.verdict == "delivered":
                        out.append(
                            violation(probe, "not served (the Service does not expose this port/protocol)", o, p=p)
                        )
            continue
        svc, what, pods, target_port, keeps_source = target
        refs = {pod.ref for pod in pods}
        for o, p in each_outcome(obs):
            if not pods:
                if o.verdict == "delivered":
                    out.append(violation(probe, f"not served ({what} has no eligible endpoint)", o, p=p))
                elif svc is not None and not s.endpoints(svc) and o.verdict != "refused":
                    out.append(violation(probe, f"refused at once ({what} has no endpoints)", o, p=p))
                continue
            if _known_asymmetry(s, probe) and (
                o.verdict != "delivered"
                # The UDP form: the answer reaches the client straight from the pod.
                or (o.served_by in refs and o.client_saw == _pod_ip(s, o.served_by))
            ):
                continue
            want = f"served by one of {sorted(refs)} at port {target_port}, reply from {probe.dst}"
            ok = (
                o.verdict == "delivered"
                and o.served_by in refs
                and o.served_port == target_port
                and o.client_saw == probe.dst
            )
            if keeps_source:
                client_ip = _client_address(s, probe)
                want += f", server sees the client's address {client_ip}"
                ok = ok and o.server_saw == client_ip
            if not ok:
                out.append(violation(probe, want, o, p=p))
        if exact and pods and served_set(obs) != refs and not _known_asymmetry(s, probe):
            out.append(
                f"{probe}: expected every endpoint {sorted(refs)} to be a possible server; got {sorted(served_set(obs))}"
            )
    return out


def _local_nodeport() -> Case:
    """Classic plus an empty second node; svc-b is a NodePort with externalTrafficPolicy Local."""
    s = classic_scenario()
    node2 = second_node(s)
    svc = s.services[0]
    ports = tuple(replace(sp, node_port=30080 + i) for i, sp in enumerate(svc.ports))
    svc = replace(svc, type="NodePort", external_traffic_policy="Local", ports=ports)
    s = replace(s, nodes=(*s.nodes, node2), services=(svc,))
    return Case(
        s,
        (
            Probe("external", s.nodes[0].ip, 30080, "TCP"),  # local endpoint: served, source kept
            Probe("external", node2.ip, 30080, "TCP"),  # no local endpoint: not served
            Probe("pod:default/pod-a", node2.ip, 30080, "TCP"),  # kubernetes#74383: may fail, never wrongly
        ),
    )


def host_port_scenario() -> Scenario:
    """Classic, with pod-b's TCP 8080 published as hostPort 8443 on node-1."""
    s = classic_scenario()
    pod_b = s.pod("default/pod-b")
    ports = tuple(replace(c, host_port=8443) if (c.port, c.protocol) == (8080, "TCP") else c for c in pod_b.ports)
    return replace(s, pods=tuple(replace(p, ports=ports) if p is pod_b else p for p in s.pods))


def _host_port() -> Case:
    s = host_port_scenario()
    node = s.nodes[0].ip
    return Case(
        s,
        (
            Probe("external", node, 8443, "TCP"),
            Probe("pod:default/pod-a", node, 8443, "TCP"),
            Probe("node:node-1", node, 8443, "TCP"),
        ),
    )


def _classic() -> tuple[Case, ...]:
    s = classic_scenario()
    svc = s.services[0]
    return (
        _local_nodeport(),
        _host_port(),
        Case(
            s,
            (
                Probe("pod:default/pod-a", svc.cluster_ip, 80, "TCP"),
                Probe("pod:default/pod-a", svc.cluster_ip, 80, "UDP"),
                Probe("pod:default/pod-a", svc.cluster_ip, 8080, "TCP"),
                Probe("node:node-1", svc.cluster_ip, 80, "TCP"),
            ),
        ),
    )


SPEC = Spec(
    name="dnat",
    summary="ClusterIP/NodePort land on an endpoint at targetPort, matched on IP+port+protocol; replies un-NATed",
    cases=cases,
    check=check,
    examples=_classic(),
)
