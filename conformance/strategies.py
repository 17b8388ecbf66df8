"""Hypothesis strategies for scenarios and the probes to send through them.

Generated scenarios follow fixed, readable address plans (node-<i> is
172.18.0.<i+1> with pods in 10.244.<i>.0/24; Services from 10.96.0.10), draw
from small label and port alphabets so selectors overlap, and shrink toward
one node, one pod, no Services and no policies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from typing import Literal, TypeVar

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

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
    Protocol,
    Requirement,
    Scenario,
    Service,
    ServicePort,
    labels,
)
from conformance.probes import Probe

T = TypeVar("T")

__all__ = [
    "PROBE_KINDS",
    "classic_scenario",
    "hairpin_probes",
    "hairpin_scenarios",
    "probes",
    "scenarios",
]

ProbeKind = Literal["pod", "service", "nodeport", "wrong-port"]
PROBE_KINDS: tuple[ProbeKind, ...] = ("pod", "service", "nodeport", "wrong-port")

# Address plan limits: node IPs 172.18.0.2-254, pod IPs 10.244.<i>.10-254.
MAX_NODES = 250
MAX_PODS_PER_NODE = 245
# ClusterIPs count up from 10.96.0.10; nodePorts must stay unique.
MAX_SERVICES = 1000
MAX_POLICIES = 1000

# Small alphabets, so that selectors overlap and collide often.
NAMESPACES = ("default", "other")
NAMESPACE_LABELS: dict[str, Labels] = {"other": labels({"team": "blue"})}
APPS = ("a", "b", "c")
ROLES = ("web", "db")  # not "y"/"n": YAML 1.1 tools read those as booleans
POD_PORTS = (ContainerPort(8080, "TCP"), ContainerPort(8080, "UDP"), ContainerPort(9090, "TCP"))
SERVICE_PORTS: tuple[tuple[int, Protocol], ...] = (
    (80, "TCP"),
    (80, "UDP"),
    (53, "UDP"),
    (53, "TCP"),
    (443, "TCP"),
)
TARGET_PORTS = (8080, 9090)
# Ports probed at a pod: some it listens on, some (probably) not.
PROBE_PORTS: tuple[tuple[int, Protocol], ...] = (
    (8080, "TCP"),
    (8080, "UDP"),
    (9090, "TCP"),
    (9090, "UDP"),
    (7777, "TCP"),
)
# Ports tried at a ClusterIP for "wrong-port" probes.
WRONG_PORTS = (80, 53, 443, 8080, 1)


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{name}={value!r} must be an integer")
    if not lo <= value <= hi:
        raise InvalidArgument(f"{name}={value!r} must be between {lo} and {hi}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}={value!r} must be True or False")
    return value


# -- scenarios ---------------------------------------------------------------------


def classic_scenario() -> Scenario:
    """One node, pod-a (app=a) and pod-b (app=b), and svc-b selecting pod-b.

    The bridge on node-1 is cni0 with 10.244.1.1/24.
    """
    both = (ContainerPort(8080, "TCP"), ContainerPort(8080, "UDP"))
    return Scenario(
        nodes=(Node("node-1", IPv4Address("172.18.0.2"), IPv4Network("10.244.1.0/24")),),
        pods=(
            Pod("default", "pod-a", "node-1", IPv4Address("10.244.1.10"), labels({"app": "a"}), both),
            Pod("default", "pod-b", "node-1", IPv4Address("10.244.1.11"), labels({"app": "b"}), both),
        ),
        services=(
            Service(
                "default",
                "svc-b",
                IPv4Address("10.96.0.100"),
                ports=(
                    ServicePort(80, 8080, "TCP", name="tcp"),
                    ServicePort(80, 8080, "UDP", name="udp"),
                ),
                selector=labels({"app": "b"}),
            ),
        ),
        name="classic",
    )


# Generation goes in two steps: draw plain "specs" (lists of per-object
# choices, which Hypothesis shrinks by deleting whole elements), then
# assemble them into a Scenario with names and addresses from the plan.


@dataclass(frozen=True)
class _PodSpec:
    namespace: str
    labels: Labels
    ports: tuple[ContainerPort, ...]  # before the ports its Services need
    accept_local: bool


@dataclass(frozen=True)
class _NodeSpec:
    # Knobs are drawn as "deviates from the default", which shrinks to False.
    no_hairpin: bool
    no_bridge_nf: bool
    pods: tuple[_PodSpec, ...]


@dataclass(frozen=True)
class _ServicePortSpec:
    port: int
    protocol: Protocol
    target_port: int
    node_port: int  # a wish: moved to the next free port on collision


@dataclass(frozen=True)
class _ServiceSpec:
    namespace: str
    selector: Labels
    ports: tuple[_ServicePortSpec, ...]
    node_port: bool
    local: bool


# An ipBlock is drawn as a reference (kind, index), resolved once the
# addresses exist, so that policy strategies need not know the scenario.
_BlockRef = tuple[str, int]
_BLOCK_KINDS = (
    "cluster",
    "world-except-cluster",
    "nodes",
    "services",
    "pod-cidr",
    "cluster-except-pod-cidr",
    "pod",
    "node",
    "cluster-ip",
)


@dataclass(frozen=True)
class _RuleSpec:
    peers: tuple[PolicyPeer | _BlockRef, ...]
    ports: tuple[PolicyPort, ...]


@dataclass(frozen=True)
class _PolicySpec:
    namespace: str
    pod_selector: LabelSelector
    policy_types: tuple[Literal["Ingress", "Egress"], ...]
    ingress: tuple[_RuleSpec, ...]
    egress: tuple[_RuleSpec, ...]


def _label_map(app: str | None, role: str | None) -> Labels:
    return labels(({"app": app} if app else {}) | ({"role": role} if role else {}))


def _flat(*branches: Sequence[T]) -> st.SearchStrategy[T]:
    """One draw over the values of every branch, each branch equally likely.

    What `one_of(sampled_from(b1), sampled_from(b2), ...)` and nested
    `builds` over small sets generate, in one choice instead of several:
    Hypothesis' cost is per draw, and scenarios take hundreds. Values shrink
    toward the start of the first branch; a branch's values are repeated so
    that every branch keeps an equal share.
    """
    size = math.lcm(*(len(b) for b in branches))
    return st.sampled_from(tuple(v for b in branches for v in b for _ in range(size // len(b))))


# Every pod has an app; shrinks to {app: a}. Half the pods have a role.
_POD_LABELS = _flat(*([_label_map(app, None) for app in APPS], [_label_map(app, r) for app in APPS for r in ROLES]))
# Selector labels; "z" matches no pod, and {} shrinks to "everything". Half
# the selectors name an app, half a role, independently.
_MATCH_LABELS = _flat(
    [_label_map(None, None)],
    [_label_map(None, r) for r in ROLES],
    [_label_map(a, None) for a in (*APPS, "z")],
    [_label_map(a, r) for a in (*APPS, "z") for r in ROLES],
)
_REQUIREMENTS = _flat(
    [
        Requirement("app", op, values)
        for op in ("In", "NotIn")
        for values in [(a,) for a in APPS] + [(a, b) for a in APPS for b in APPS if a != b]
    ],
    [Requirement("role", op) for op in ("Exists", "DoesNotExist")],
)
_SELECTORS = st.builds(LabelSelector, _MATCH_LABELS, st.lists(_REQUIREMENTS, max_size=1).map(tuple))
_NAMESPACE_SELECTORS = st.sampled_from(
    (
        LabelSelector(),  # every namespace
        LabelSelector(labels({"kubernetes.io/metadata.name": "default"})),
        LabelSelector(labels({"kubernetes.io/metadata.name": "other"})),
        LabelSelector(labels({"team": "blue"})),
        LabelSelector(match_expressions=(Requirement("team", "DoesNotExist"),)),
    )
)
_POLICY_PORTS = _flat(
    [PolicyPort(proto, port) for port in (8080, 9090, 80) for proto in ("TCP", "UDP")],
    [PolicyPort(proto) for proto in ("TCP", "UDP")],  # every port of the protocol
    [PolicyPort(proto, 8000, end) for end in (8080, 9000, 9090) for proto in ("TCP", "UDP")],
)
_PEERS: st.SearchStrategy[PolicyPeer | _BlockRef] = st.one_of(
    st.builds(PolicyPeer, pod_selector=_SELECTORS),
    st.builds(PolicyPeer, namespace_selector=_NAMESPACE_SELECTORS),
    st.builds(PolicyPeer, pod_selector=_SELECTORS, namespace_selector=_NAMESPACE_SELECTORS),
    st.tuples(st.sampled_from(_BLOCK_KINDS), st.integers(0, 15)),
)
_RULES = st.builds(
    _RuleSpec,
    st.lists(_PEERS, max_size=2).map(tuple),
    st.lists(_POLICY_PORTS, max_size=2, unique=True).map(tuple),
)
_POLICY_TYPES: tuple[tuple[Literal["Ingress", "Egress"], ...], ...] = (
    ("Ingress",),
    ("Egress",),
    ("Ingress", "Egress"),
)

# Built once: a strategy built inside a draw goes through Hypothesis' strategy
# cache (hashing its arguments) on every example.
_TYPE_CHOICES = st.sampled_from(_POLICY_TYPES)
_NAMESPACE_CHOICES = st.sampled_from(NAMESPACES)
_RULE_LISTS = st.lists(_RULES, max_size=2)


@st.composite
def _policy_specs(draw: st.DrawFn) -> _PolicySpec:
    types = draw(_TYPE_CHOICES)
    return _PolicySpec(
        namespace=draw(_NAMESPACE_CHOICES),
        pod_selector=draw(_SELECTORS),
        policy_types=types,
        # No rules for an isolated direction is "deny all" for it.
        ingress=tuple(draw(_RULE_LISTS)) if "Ingress" in types else (),
        egress=tuple(draw(_RULE_LISTS)) if "Egress" in types else (),
    )


def _resolve_block(ref: _BlockRef, nodes: Sequence[Node], pods: Sequence[Pod], services: Sequence[Service]) -> IPBlock:
    kind, index = ref
    cluster = Scenario.cluster_cidr
    node = nodes[index % len(nodes)]
    if kind == "world-except-cluster":
        return IPBlock(IPv4Network("0.0.0.0/0"), (cluster,))
    if kind == "nodes":
        return IPBlock(Scenario.node_cidr)
    if kind == "services":
        return IPBlock(Scenario.service_cidr)
    if kind == "pod-cidr":
        return IPBlock(node.pod_cidr)
    if kind == "cluster-except-pod-cidr":
        return IPBlock(cluster, (node.pod_cidr,))
    if kind == "node":
        return IPBlock(IPv4Network(node.ip))
    if kind == "pod" and pods:
        return IPBlock(IPv4Network(pods[index % len(pods)].ip))
    if kind == "cluster-ip" and services:
        return IPBlock(IPv4Network(services[index % len(services)].cluster_ip))
    return IPBlock(cluster)


def _rule(spec: _RuleSpec, nodes: Sequence[Node], pods: Sequence[Pod], services: Sequence[Service]) -> PolicyRule:
    peers = tuple(
        p if isinstance(p, PolicyPeer) else PolicyPeer(ip_block=_resolve_block(p, nodes, pods, services))
        for p in spec.peers
    )
    return PolicyRule(peers, spec.ports)


def _assemble(
    node_specs: Sequence[_NodeSpec],
    service_specs: Sequence[_ServiceSpec],
    policy_specs: Sequence[_PolicySpec],
    label_default: bool,
    no_masquerade_hairpin: bool,
    *,
    hairpin: bool,
) -> Scenario:
    nodes: list[Node] = []
    pods: list[Pod] = []
    for i, ns in enumerate(node_specs, start=1):
        node = Node(
            name=f"node-{i}",
            ip=Scenario.node_cidr.network_address + 1 + i,
            pod_cidr=IPv4Network(f"10.244.{i}.0/24"),
            hairpin_mode=not ns.no_hairpin,
            bridge_nf_call_iptables=not ns.no_bridge_nf,
        )
        nodes.append(node)
        for j, ps in enumerate(ns.pods):
            pods.append(
                Pod(
                    namespace=ps.namespace,
                    name=f"pod-{len(pods) + 1}",
                    node=node.name,
                    ip=node.pod_cidr.network_address + 10 + j,
                    labels=ps.labels,
                    ports=ps.ports,
                    accept_local=ps.accept_local,
                )
            )
    if hairpin:
        # pod-1 (on node-1) behind svc-1: both in default, matched by app=a.
        pods[0] = replace(pods[0], namespace="default", labels=labels({"app": "a"}))
        service_specs = [
            replace(service_specs[0], namespace="default", selector=labels({"app": "a"})),
            *service_specs[1:],
        ]

    services: list[Service] = []
    used_node_ports: set[int] = set()
    for k, ss in enumerate(service_specs):
        ports: list[ServicePort] = []
        for sp in ss.ports:
            node_port: int | None = None
            if ss.node_port:
                node_port = sp.node_port
                while node_port in used_node_ports:
                    node_port = 30000 + (node_port - 30000 + 1) % 2768
                used_node_ports.add(node_port)
            ports.append(
                ServicePort(
                    port=sp.port,
                    target_port=sp.target_port,
                    protocol=sp.protocol,
                    name=f"{sp.protocol.lower()}-{sp.port}",
                    node_port=node_port,
                )
            )
        services.append(
            Service(
                namespace=ss.namespace,
                name=f"svc-{k + 1}",
                cluster_ip=IPv4Address("10.96.0.10") + k,
                ports=tuple(ports),
                selector=ss.selector,
                type="NodePort" if ss.node_port else "ClusterIP",
                external_traffic_policy="Local" if ss.node_port and ss.local else "Cluster",
            )
        )

    # The invariant specs rely on: an endpoint listens on every targetPort of
    # its Services. Ports follow from membership, so they shrink with it.
    membership = Scenario(nodes=tuple(nodes), pods=tuple(pods), services=tuple(services))
    for i, pod in enumerate(pods):
        wanted = set(pod.ports)
        for svc in services:
            if pod in membership.endpoints(svc):
                wanted.update(ContainerPort(sp.target_port, sp.protocol) for sp in svc.ports)
        pods[i] = replace(pod, ports=tuple(sorted(wanted, key=lambda c: (c.port, c.protocol))))

    policies = [
        NetworkPolicy(
            namespace=ps.namespace,
            name=f"policy-{k + 1}",
            pod_selector=ps.pod_selector,
            policy_types=ps.policy_types,
            ingress=tuple(_rule(r, nodes, pods, services) for r in ps.ingress),
            egress=tuple(_rule(r, nodes, pods, services) for r in ps.egress),
        )
        for k, ps in enumerate(policy_specs)
    ]

    # "other" is declared when used; "default" sometimes gets a label too.
    used = {p.namespace for p in pods} | {s.namespace for s in services}
    used |= {p.namespace for p in policies}
    namespaces: list[Namespace] = []
    if label_default:
        namespaces.append(Namespace("default", labels({"team": "red"})))
    if "other" in used:
        namespaces.append(Namespace("other", NAMESPACE_LABELS["other"]))

    return Scenario(
        nodes=tuple(nodes),
        pods=tuple(pods),
        services=tuple(services),
        policies=tuple(policies),
        namespaces=tuple(namespaces),
        masquerade_hairpin=not no_masquerade_hairpin,
        name="generated",
    )


def _scenario_strategy(
    *,
    min_nodes: int,
    max_nodes: int,
    max_pods_per_node: int,
    max_services: int,
    max_policies: int,
    knobs: bool,
    node_ports: bool,
    hairpin: bool,
) -> st.SearchStrategy[Scenario]:
    _check_int("min_nodes", min_nodes, 1, MAX_NODES)
    _check_int("max_nodes", max_nodes, 1, MAX_NODES)
    if max_nodes < min_nodes:
        raise InvalidArgument(f"max_nodes={max_nodes} must be at least min_nodes={min_nodes}")
    _check_int("max_pods_per_node", max_pods_per_node, 0, MAX_PODS_PER_NODE)
    _check_int("max_services", max_services, 0, MAX_SERVICES)
    _check_int("max_policies", max_policies, 0, MAX_POLICIES)
    _check_bool("knobs", knobs)
    _check_bool("node_ports", node_ports)
    if hairpin and max_pods_per_node < 1:
        raise InvalidArgument("hairpin_scenarios needs max_pods_per_node >= 1")
    if hairpin and max_services < 1:
        raise InvalidArgument("hairpin_scenarios needs max_services >= 1")

    knob = st.booleans() if knobs else st.just(False)
    pod_specs = st.builds(
        _PodSpec,
        namespace=st.sampled_from(NAMESPACES),
        labels=_POD_LABELS,
        ports=st.lists(st.sampled_from(POD_PORTS), min_size=1, max_size=3, unique=True).map(tuple),
        accept_local=knob,
    )

    def node_specs(min_pods: int) -> st.SearchStrategy[_NodeSpec]:
        pods = st.lists(pod_specs, min_size=min_pods, max_size=max_pods_per_node).map(tuple)
        return st.builds(_NodeSpec, knob, knob, pods)

    if hairpin:
        # node-1 always has a pod, to put behind svc-1.
        nodes = st.builds(
            lambda first, rest: [first, *rest],
            node_specs(1),
            st.lists(node_specs(0), min_size=min_nodes - 1, max_size=max_nodes - 1),
        )
    else:
        nodes = st.lists(node_specs(0), min_size=min_nodes, max_size=max_nodes)

    service_port_specs = st.builds(
        lambda pair, target, node_port: _ServicePortSpec(pair[0], pair[1], target, node_port),
        st.sampled_from(SERVICE_PORTS),
        st.sampled_from(TARGET_PORTS),
        st.integers(30000, 32767),
    )
    service_specs = st.builds(
        _ServiceSpec,
        namespace=st.sampled_from(NAMESPACES),
        selector=_MATCH_LABELS,
        ports=st.lists(
            service_port_specs,
            min_size=1,
            max_size=2,
            unique_by=lambda p: (p.port, p.protocol),
        ).map(tuple),
        node_port=st.booleans() if node_ports else st.just(False),
        local=st.booleans(),
    )
    return st.builds(
        partial(_assemble, hairpin=hairpin),
        nodes,
        st.lists(service_specs, min_size=1 if hairpin else 0, max_size=max_services),
        st.lists(_policy_specs(), max_size=max_policies),
        st.booleans(),
        knob,
    )


def scenarios(
    *,
    min_nodes: int = 1,
    max_nodes: int = 3,
    max_pods_per_node: int = 3,
    max_services: int = 3,
    max_policies: int = 2,
    knobs: bool = False,
    node_ports: bool = True,
) -> st.SearchStrategy[Scenario]:
    """Valid scenarios; shrink toward one node, one pod, nothing else.

    With `knobs` the dataplane knobs (hairpin mode, bridge-nf-call-iptables,
    accept_local, masquerade_hairpin) vary; without, they keep the defaults
    Kubernetes needs. With `node_ports=False` every Service is ClusterIP.
    Every pod a Service selects listens on each of its targetPort/protocols.
    """
    return _scenario_strategy(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        max_pods_per_node=max_pods_per_node,
        max_services=max_services,
        max_policies=max_policies,
        knobs=knobs,
        node_ports=node_ports,
        hairpin=False,
    )


def hairpin_scenarios(
    *,
    min_nodes: int = 1,
    max_nodes: int = 3,
    max_pods_per_node: int = 3,
    max_services: int = 3,
    max_policies: int = 2,
    knobs: bool = False,
    node_ports: bool = True,
) -> st.SearchStrategy[Scenario]:
    """Like `scenarios`, but pod-1 (default, app=a, on node-1) is always an
    endpoint of svc-1, so `hairpin_probes` always has something to send."""
    return _scenario_strategy(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        max_pods_per_node=max_pods_per_node,
        max_services=max_services,
        max_policies=max_policies,
        knobs=knobs,
        node_ports=node_ports,
        hairpin=True,
    )


# -- probes ------------------------------------------------------------------------


def _probe_protocol(protocol: Protocol) -> bool:
    return protocol in ("TCP", "UDP")


def probes(scenario: Scenario, *, kinds: Sequence[ProbeKind] = PROBE_KINDS) -> st.SearchStrategy[Probe]:
    """New connections within `scenario`, of the given kinds.

    - "pod": from a pod or node to a pod IP, at a port it listens on or not;
    - "service": to a ClusterIP at one of its ports;
    - "nodeport": from a pod, a node or "external" to a node IP at a NodePort;
    - "wrong-port": to a ClusterIP at a port/protocol its Service lacks.

    Kinds the scenario cannot provide (no pods, no Services, ...) are
    skipped; with none left the strategy is empty, so a draw from it is
    rejected like a failed `assume`.
    """
    if isinstance(kinds, str) or not isinstance(kinds, Sequence):
        raise InvalidArgument(f"kinds={kinds!r} must be a sequence of probe kinds")
    if not kinds:
        raise InvalidArgument("kinds must not be empty")
    for kind in kinds:
        if kind not in PROBE_KINDS:
            raise InvalidArgument(f"unknown probe kind {kind!r} (expected some of {PROBE_KINDS})")
    if len(set(kinds)) != len(kinds):
        raise InvalidArgument(f"kinds={tuple(kinds)!r} has duplicates")

    inside = [f"pod:{p.ref}" for p in scenario.pods] + [f"node:{n.name}" for n in scenario.nodes]
    sources = st.sampled_from(inside)
    options: list[st.SearchStrategy[Probe]] = []
    for kind in kinds:
        if kind == "pod" and scenario.pods:
            options.append(_pod_probes(sources, scenario.pods))
        elif kind == "service":
            targets = [
                (svc.cluster_ip, sp.port, sp.protocol)
                for svc in scenario.services
                for sp in svc.ports
                if _probe_protocol(sp.protocol)
            ]
            if targets:
                options.append(
                    st.builds(
                        lambda src, t: Probe(src, t[0], t[1], t[2]),
                        sources,
                        st.sampled_from(targets),
                    )
                )
        elif kind == "nodeport":
            node_ports = [
                (sp.node_port, sp.protocol)
                for svc in scenario.services
                for sp in svc.ports
                if sp.node_port is not None and _probe_protocol(sp.protocol)
            ]
            if node_ports:
                options.append(
                    st.builds(
                        lambda src, node, t: Probe(src, node.ip, t[0], t[1]),
                        st.sampled_from([*inside, "external"]),
                        st.sampled_from(scenario.nodes),
                        st.sampled_from(node_ports),
                    )
                )
        elif kind == "wrong-port":
            wrong: list[tuple[IPv4Address, int, Protocol]] = []
            for svc in scenario.services:
                exposed = {(sp.port, sp.protocol) for sp in svc.ports}
                candidates: list[tuple[int, Protocol]] = [
                    (sp.port, "UDP" if sp.protocol == "TCP" else "TCP") for sp in svc.ports
                ]
                candidates += [(p, "TCP") for p in WRONG_PORTS]
                for pair in dict.fromkeys(candidates):  # dedupe, keep order
                    if pair not in exposed:
                        wrong.append((svc.cluster_ip, pair[0], pair[1]))
            if wrong:
                options.append(st.builds(lambda src, t: Probe(src, t[0], t[1], t[2]), sources, st.sampled_from(wrong)))
    if not options:
        return st.nothing()
    return st.one_of(options)


@st.composite
def _pod_probes(draw: st.DrawFn, sources: st.SearchStrategy[str], pods: Sequence[Pod]) -> Probe:
    source = draw(sources)
    pod = draw(st.sampled_from(pods))
    listening = [(c.port, c.protocol) for c in pod.ports if _probe_protocol(c.protocol)]
    # A port the pod listens on first, so failures shrink toward served ports.
    port, protocol = draw(
        st.one_of(st.sampled_from(listening), st.sampled_from(PROBE_PORTS))
        if listening
        else st.sampled_from(PROBE_PORTS)
    )
    return Probe(source, pod.ip, port, protocol)


def hairpin_probes(scenario: Scenario) -> st.SearchStrategy[Probe]:
    """A pod connecting to a ClusterIP port of a Service that selects it.

    Empty (a draw is rejected, like a failed `assume`) when the scenario has
    no such pod; use `hairpin_scenarios()` to always have one.
    """
    targets = [
        Probe(f"pod:{pod.ref}", svc.cluster_ip, sp.port, sp.protocol)
        for svc in scenario.services
        for pod in scenario.endpoints(svc)
        for sp in svc.ports
        if _probe_protocol(sp.protocol)
    ]
    if not targets:
        return st.nothing()
    return st.sampled_from(targets)
