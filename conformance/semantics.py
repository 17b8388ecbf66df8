"""What Kubernetes promises about a scenario, computed from intent alone.

Nothing here looks at a dataplane: these functions are the oracle that
observed probe outcomes are judged against.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Literal

from conformance.model import (
    NetworkPolicy,
    Pod,
    PolicyPeer,
    PolicyRule,
    Protocol,
    Scenario,
    Service,
    ServicePort,
)

__all__ = [
    "expected_backends",
    "isolating_policies",
    "nodeport_for",
    "policy_allows",
    "service_for",
]

Direction = Literal["Ingress", "Egress"]


def isolating_policies(s: Scenario, pod: Pod, direction: Direction) -> tuple[NetworkPolicy, ...]:
    """Policies that isolate `pod` for `direction`; empty means not isolated.

    Only policies in the pod's own namespace can select it, and only those
    whose policyTypes name the direction isolate it (rules alone do not).
    """
    return tuple(
        p
        for p in s.policies
        if p.namespace == pod.namespace and direction in p.policy_types and p.pod_selector.matches(pod.labels)
    )


def _peer_matches_pod(s: Scenario, policy: NetworkPolicy, peer: PolicyPeer, pod: Pod) -> bool:
    if peer.ip_block is not None:
        return peer.ip_block.contains(pod.ip)
    if peer.pod_selector is None and peer.namespace_selector is None:
        return False  # not a valid peer; the loader rejects it
    if peer.namespace_selector is None:
        # podSelector alone: pods in the policy's own namespace.
        in_namespace = pod.namespace == policy.namespace
    else:
        in_namespace = peer.namespace_selector.matches(s.namespace_labels(pod.namespace))
    pod_ok = peer.pod_selector is None or peer.pod_selector.matches(pod.labels)
    return in_namespace and pod_ok


def _peer_matches(s: Scenario, policy: NetworkPolicy, peer: PolicyPeer, other: Pod | IPv4Address) -> bool:
    if isinstance(other, Pod):
        return _peer_matches_pod(s, policy, peer, other)
    # Selectors only ever match pods; an address is matched by ipBlocks alone.
    return peer.ip_block is not None and peer.ip_block.contains(other)


def _rule_allows(
    s: Scenario,
    policy: NetworkPolicy,
    rule: PolicyRule,
    other: Pod | IPv4Address,
    port: int,
    protocol: Protocol,
) -> bool:
    peers_ok = not rule.peers or any(_peer_matches(s, policy, p, other) for p in rule.peers)
    ports_ok = not rule.ports or any(p.matches(port, protocol) for p in rule.ports)
    return peers_ok and ports_ok


def _ingress_allows(s: Scenario, src: Pod | IPv4Address, dst: Pod, port: int, protocol: Protocol) -> bool:
    if isinstance(src, IPv4Address) and src == s.node(dst.node).ip:
        # "Traffic to and from the node where a Pod is running is always allowed."
        return True
    policies = isolating_policies(s, dst, "Ingress")
    if not policies:
        return True
    return any(_rule_allows(s, p, rule, src, port, protocol) for p in policies for rule in p.ingress)


def _egress_allows(s: Scenario, src: Pod, dst: Pod, port: int, protocol: Protocol) -> bool:
    policies = isolating_policies(s, src, "Egress")
    if not policies:
        return True
    return any(_rule_allows(s, p, rule, dst, port, protocol) for p in policies for rule in p.egress)


def policy_allows(s: Scenario, src: Pod | IPv4Address, dst: Pod, port: int, protocol: Protocol) -> bool:
    """Do NetworkPolicies allow a new connection from `src` to `dst` pod?

    `port` is the port the destination pod receives on (a Service's
    targetPort, after DNAT). A Pod source must be allowed by its own egress
    policies and by the destination's ingress policies. An address source
    (a node, or outside the cluster) is only subject to the destination's
    ingress policies, where only ipBlock peers (or rules without peers) can
    match it. Kubernetes' two exceptions hold: a pod can always reach itself,
    and a pod's own node can always reach it.
    """
    if isinstance(src, Pod):
        if src.ref == dst.ref:
            return True  # "a pod cannot block access to itself"
        if not _egress_allows(s, src, dst, port, protocol):
            return False
    return _ingress_allows(s, src, dst, port, protocol)


def service_for(s: Scenario, ip: IPv4Address, port: int, protocol: Protocol) -> tuple[Service, ServicePort] | None:
    """The Service port a ClusterIP:port/protocol belongs to, if any."""
    for svc in s.services:
        if svc.cluster_ip != ip:
            continue
        for sp in svc.ports:
            if sp.port == port and sp.protocol == protocol:
                return svc, sp
    return None


def nodeport_for(s: Scenario, port: int, protocol: Protocol) -> tuple[Service, ServicePort] | None:
    """The Service port a NodePort (on any node address) belongs to, if any."""
    for svc in s.services:
        if svc.type != "NodePort":
            continue
        for sp in svc.ports:
            if sp.node_port == port and sp.protocol == protocol:
                return svc, sp
    return None


def hostport_for(s: Scenario, node: str, port: int, protocol: Protocol) -> tuple[Pod, int] | None:
    """The pod on `node` whose hostPort is port/protocol, and its containerPort; None if none.

    A hostPort answers on the node's own addresses only; a NodePort on the
    same port/protocol would make the outcome depend on rule order, so the
    scenarios never have both (and then this says None).
    """
    if nodeport_for(s, port, protocol) is not None:
        return None
    for pod in s.pods_on(node):
        for c in pod.ports:
            if c.host_port == port and c.protocol == protocol:
                return pod, c.port
    return None


def expected_backends(
    s: Scenario,
    service: Service,
    service_port: ServicePort,
    *,
    client_node: str | None,
    via_nodeport: bool,
) -> tuple[Pod, ...]:
    """The pods a connection to `service_port` may be served by.

    Through a NodePort with externalTrafficPolicy Local, only endpoints on
    the node whose address was dialled (`client_node`) qualify; an empty
    result then means the connection must not be served at all.
    """
    if service_port not in service.ports:
        raise ValueError(f"{service_port} is not a port of Service {service.ref}")
    endpoints = s.endpoints(service)
    if via_nodeport and service.external_traffic_policy == "Local":
        if client_node is None:
            raise ValueError(
                f"Service {service.ref} has externalTrafficPolicy Local: "
                "a NodePort connection needs client_node (the node dialled)"
            )
        return tuple(p for p in endpoints if p.node == client_node)
    return endpoints
