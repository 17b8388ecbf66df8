"""The intent model: what Kubernetes asks of a dataplane, as plain immutable data.

Nothing here knows how a dataplane is built; `conformance.implementations`
turns a `Scenario` into a `Dataplane`, and `conformance.semantics` says what
Kubernetes promises about it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

Protocol = Literal["TCP", "UDP", "SCTP"]
PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")

Labels = tuple[tuple[str, str], ...]


def labels(mapping: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> Labels:
    """Canonical, hashable form of a label map (sorted pairs)."""
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    return tuple(sorted((str(k), str(v)) for k, v in items))


@dataclass(frozen=True)
class Requirement:
    """One `matchExpressions` entry of a label selector."""

    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()

    def matches(self, have: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return have.get(self.key) in self.values
        if self.operator == "NotIn":
            return self.key not in have or have[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in have
        return self.key not in have


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; the empty selector selects everything."""

    match_labels: Labels = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, have: Labels) -> bool:
        got = dict(have)
        return all(got.get(k) == v for k, v in self.match_labels) and all(
            r.matches(got) for r in self.match_expressions
        )


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Labels = ()


@dataclass(frozen=True)
class Node:
    name: str
    ip: IPv4Address
    pod_cidr: IPv4Network
    # Knobs real dataplanes differ on (defaults are what Kubernetes needs).
    hairpin_mode: bool = True
    bridge_nf_call_iptables: bool = True


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: Protocol = "TCP"
    # hostPort: the port on every local address of the pod's node that DNATs here.
    host_port: int | None = None


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    node: str
    ip: IPv4Address
    labels: Labels = ()
    ports: tuple[ContainerPort, ...] = ()
    # Knob: net.ipv4.conf.{all,eth0}.accept_local inside the pod.
    accept_local: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def listens(self, port: int, protocol: Protocol) -> bool:
        return any(p.port == port and p.protocol == protocol for p in self.ports)


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int
    protocol: Protocol = "TCP"
    name: str = ""
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    cluster_ip: IPv4Address
    ports: tuple[ServicePort, ...]
    selector: Labels = ()
    type: Literal["ClusterIP", "NodePort"] = "ClusterIP"
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class IPBlock:
    cidr: IPv4Network
    except_: tuple[IPv4Network, ...] = ()

    def contains(self, ip: IPv4Address) -> bool:
        return ip in self.cidr and not any(ip in e for e in self.except_)


@dataclass(frozen=True)
class PolicyPeer:
    """Exactly one of: pod/namespace selectors (either or both), or an ipBlock."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    protocol: Protocol = "TCP"
    port: int | None = None  # None: every port of that protocol
    end_port: int | None = None

    def matches(self, port: int, protocol: Protocol) -> bool:
        if protocol != self.protocol:
            return False
        if self.port is None:
            return True
        return self.port <= port <= (self.end_port or self.port)


@dataclass(frozen=True)
class PolicyRule:
    """An ingress `from` / egress `to` rule. Empty peers or ports mean 'all'."""

    peers: tuple[PolicyPeer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector = LabelSelector()
    policy_types: tuple[Literal["Ingress", "Egress"], ...] = ("Ingress",)
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Scenario:
    """Everything a dataplane is asked to realise, plus the knobs it may vary."""

    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...] = ()
    services: tuple[Service, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    cluster_cidr: IPv4Network = IPv4Network("10.244.0.0/16")
    service_cidr: IPv4Network = IPv4Network("10.96.0.0/12")
    # The network the nodes' own addresses live in (the underlay).
    node_cidr: IPv4Network = IPv4Network("172.18.0.0/24")
    # Knob: does the proxy masquerade an endpoint reaching itself (hairpin)?
    masquerade_hairpin: bool = True
    name: str = field(default="scenario", compare=False)

    # -- lookups -----------------------------------------------------------
    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r}")

    def pod(self, ref: str) -> Pod:
        for p in self.pods:
            if p.ref == ref:
                return p
        raise KeyError(f"no pod {ref!r}")

    def pods_on(self, node: str) -> tuple[Pod, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def namespace_labels(self, name: str) -> Labels:
        # Namespaces always carry their name label (Kubernetes >= 1.21).
        own = dict(next((ns.labels for ns in self.namespaces if ns.name == name), ()))
        own["kubernetes.io/metadata.name"] = name
        return labels(own)

    def endpoints(self, service: Service) -> tuple[Pod, ...]:
        """Pods selected by a Service: same namespace, selector matches.

        A Service with an empty selector has no automatic endpoints.
        """
        if not service.selector:
            return ()
        sel = LabelSelector(service.selector)
        return tuple(p for p in self.pods if p.namespace == service.namespace and sel.matches(p.labels))

    def pod_by_ip(self, ip: IPv4Address) -> Pod | None:
        for p in self.pods:
            if p.ip == ip:
                return p
        return None

    def service_by_ip(self, ip: IPv4Address) -> Service | None:
        for s in self.services:
            if s.cluster_ip == ip:
                return s
        return None
