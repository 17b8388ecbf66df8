"""Hypothesis strategies for scenarios and the probes to send through them.

Generated scenarios follow fixed, readable address plans (node-<i> is
172.18.0.<i+1> with pods in 10.244.<i>.0/24; Services from 10.96.0.10), draw
from small label and port alphabets so selectors overlap, and shrink toward
one node, one pod, no Services and no policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

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
            Pod(
                "default", "pod-a", "node-1", IPv4Address("10.244.1.10"), labels({"app": "a"}), both
            ),
            Pod(
                "default", "pod-b", "node-1", IPv4Address("10.244.1.11"), labels({"app": "b"}), both
            ),
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


def _pod_labels() -> st.SearchStrategy[Labels]:
    # Shrinks to {app: a}: every pod has an app, some have a role.
    return st.builds(
        lambda app, role: labels({"app": app} | ({"role": role} if role else {})),
        st.sampled_from(APPS),
        st.one_of(st.none(), st.sampled_from(ROLES)),
    )


def _selectors() -> st.SearchStrategy[LabelSelector]:
    """Pod selectors over the label alphabet; "z" matches no pod."""
    match_labels = st.builds(
        lambda app, role: labels(({"app": app} if app else {}) | ({"role": role} if role else {})),
        st.one_of(st.none(), st.sampled_from((*APPS, "z"))),
        st.one_of(st.none(), st.sampled_from(ROLES)),
    )
    expressions = st.lists(
        st.one_of(
            st.builds(
                Requirement,
                st.just("app"),
                st.sampled_from(("In", "NotIn")),
                st.lists(st.sampled_from(APPS), min_size=1, max_size=2, unique=True).map(tuple),
            ),
            st.builds(
                Requirement,
                st.just("role"),
                st.sampled_from(("Exists", "DoesNotExist")),
            ),
        ),
        max_size=1,
    ).map(tuple)
    return st.builds(LabelSelector, match_labels, expressions)


def _namespace_selectors() -> st.SearchStrategy[LabelSelector]:
    return st.sampled_from(
        (
            LabelSelector(),  # every namespace
            LabelSelector(labels({"kubernetes.io/metadata.name": "default"})),
            LabelSelector(labels({"kubernetes.io/metadata.name": "other"})),
            LabelSelector(labels({"team": "blue"})),
            LabelSelector(match_expressions=(Requirement("team", "DoesNotExist"),)),
        )
    )


def _ip_blocks(
    nodes: Sequence[Node], pods: Sequence[Pod], services: Sequence[Service]
) -> st.SearchStrategy[IPBlock]:
    cluster = IPv4Network("10.244.0.0/16")
    blocks = [
        IPBlock(cluster),
        IPBlock(IPv4Network("0.0.0.0/0"), (cluster,)),
        IPBlock(IPv4Network("172.18.0.0/24")),  # the nodes
        IPBlock(IPv4Network("10.96.0.0/12")),  # every ClusterIP
    ]
    blocks += [IPBlock(n.pod_cidr) for n in nodes]
    blocks += [IPBlock(cluster, (n.pod_cidr,)) for n in nodes]
    blocks += [IPBlock(IPv4Network(f"{p.ip}/32")) for p in pods]
    blocks += [IPBlock(IPv4Network(f"{n.ip}/32")) for n in nodes]
    blocks += [IPBlock(IPv4Network(f"{s.cluster_ip}/32")) for s in services]
    return st.sampled_from(blocks)


def _policy_ports() -> st.SearchStrategy[PolicyPort]:
    protocols: st.SearchStrategy[Protocol] = st.sampled_from(("TCP", "UDP"))
    return st.one_of(
        st.builds(PolicyPort, protocols, st.sampled_from((8080, 9090, 80))),
        st.builds(PolicyPort, protocols),  # every port of the protocol
        st.builds(PolicyPort, protocols, st.just(8000), st.sampled_from((8080, 9000, 9090))),
    )


def _rules(peers: st.SearchStrategy[PolicyPeer]) -> st.SearchStrategy[PolicyRule]:
    return st.builds(
        PolicyRule,
        st.lists(peers, max_size=2).map(tuple),
        st.lists(_policy_ports(), max_size=2, unique=True).map(tuple),
    )


@st.composite
def _scenarios(
    draw: st.DrawFn,
    *,
    min_nodes: int,
    max_nodes: int,
    max_pods_per_node: int,
    max_services: int,
    max_policies: int,
    knobs: bool,
    node_ports: bool,
    hairpin: bool,
) -> Scenario:
    # Counts come first and shrink toward their minimums; everything after
    # them is drawn per object, so deleting an object shrinks cleanly.
    n_nodes = draw(st.integers(min_nodes, max_nodes))
    nodes: list[Node] = []
    for i in range(1, n_nodes + 1):
        nodes.append(
            Node(
                name=f"node-{i}",
                ip=IPv4Address("172.18.0.1") + i,
                pod_cidr=IPv4Network(f"10.244.{i}.0/24"),
                # Knobs are drawn as "deviates from the default", which shrinks to False.
                hairpin_mode=not draw(st.booleans()) if knobs else True,
                bridge_nf_call_iptables=not draw(st.booleans()) if knobs else True,
            )
        )

    # A hairpin scenario always has pod-1 (default, app=a) on node-1 and
    # svc-1 (default, selecting app=a): a pod behind a Service it can call.
    base_ports: list[tuple[ContainerPort, ...]] = []
    raw_pods: list[Pod] = []
    for i, node in enumerate(nodes):
        min_here = 1 if hairpin and i == 0 else 0
        for j in range(draw(st.integers(min_here, max_pods_per_node))):
            forced = hairpin and not raw_pods
            raw_pods.append(
                Pod(
                    namespace="default" if forced else draw(st.sampled_from(NAMESPACES)),
                    name=f"pod-{len(raw_pods) + 1}",
                    node=node.name,
                    ip=node.pod_cidr.network_address + 10 + j,
                    labels=draw(_pod_labels()) if not forced else labels({"app": "a"}),
                    accept_local=draw(st.booleans()) if knobs else False,
                )
            )
            own_ports = draw(
                st.lists(st.sampled_from(POD_PORTS), min_size=1, max_size=3, unique=True)
            )
            base_ports.append(tuple(own_ports))

    services: list[Service] = []
    used_node_ports: set[int] = set()
    for k in range(draw(st.integers(1 if hairpin else 0, max_services))):
        forced = hairpin and k == 0
        namespace = "default" if forced else draw(st.sampled_from(NAMESPACES))
        if forced:
            selector = labels({"app": "a"})
        else:
            selector = draw(_selectors()).match_labels
        pairs = draw(st.lists(st.sampled_from(SERVICE_PORTS), min_size=1, max_size=2, unique=True))
        is_node_port = node_ports and draw(st.booleans())
        sports: list[ServicePort] = []
        for port, protocol in pairs:
            node_port: int | None = None
            if is_node_port:
                node_port = draw(
                    st.integers(30000, 32767).filter(lambda p: p not in used_node_ports)
                )
                used_node_ports.add(node_port)
            sports.append(
                ServicePort(
                    port=port,
                    target_port=draw(st.sampled_from(TARGET_PORTS)),
                    protocol=protocol,
                    name=f"{protocol.lower()}-{port}",
                    node_port=node_port,
                )
            )
        services.append(
            Service(
                namespace=namespace,
                name=f"svc-{k + 1}",
                cluster_ip=IPv4Address("10.96.0.10") + k,
                ports=tuple(sports),
                selector=selector,
                type="NodePort" if is_node_port else "ClusterIP",
                external_traffic_policy=(
                    draw(st.sampled_from(("Cluster", "Local"))) if is_node_port else "Cluster"
                ),
            )
        )

    # The invariant specs rely on: an endpoint listens on every targetPort of
    # its Services. Ports follow from membership, so they shrink with it.
    probe_scenario = Scenario(nodes=tuple(nodes), pods=tuple(raw_pods), services=tuple(services))
    pods: list[Pod] = []
    for pod, own in zip(raw_pods, base_ports, strict=True):
        wanted = set(own)
        for svc in services:
            if pod in probe_scenario.endpoints(svc):
                wanted.update(ContainerPort(sp.target_port, sp.protocol) for sp in svc.ports)
        ports = tuple(sorted(wanted, key=lambda c: (c.port, c.protocol)))
        pods.append(
            Pod(pod.namespace, pod.name, pod.node, pod.ip, pod.labels, ports, pod.accept_local)
        )

    policies: list[NetworkPolicy] = []
    peers = st.one_of(
        st.builds(PolicyPeer, pod_selector=_selectors()),
        st.builds(PolicyPeer, namespace_selector=_namespace_selectors()),
        st.builds(
            PolicyPeer,
            pod_selector=_selectors(),
            namespace_selector=_namespace_selectors(),
        ),
        st.builds(PolicyPeer, ip_block=_ip_blocks(nodes, pods, services)),
    )
    for k in range(draw(st.integers(0, max_policies))):
        types: tuple[Literal["Ingress", "Egress"], ...] = draw(
            st.sampled_from((("Ingress",), ("Egress",), ("Ingress", "Egress")))
        )
        policies.append(
            NetworkPolicy(
                namespace=draw(st.sampled_from(NAMESPACES)),
                name=f"policy-{k + 1}",
                pod_selector=draw(_selectors()),
                policy_types=types,
                # No rules for a direction is "deny all" for it.
                ingress=tuple(draw(st.lists(_rules(peers), max_size=2)))
                if "Ingress" in types
                else (),
                egress=tuple(draw(st.lists(_rules(peers), max_size=2)))
                if "Egress" in types
                else (),
            )
        )

    # Declare "other" only when used; sometimes label "default" too.
    used = (
        {p.namespace for p in pods}
        | {s.namespace for s in services}
        | {p.namespace for p in policies}
    )
    namespaces: list[Namespace] = []
    if draw(st.booleans()):
        namespaces.append(Namespace("default", labels({"team": "red"})))
    if "other" in used:
        namespaces.append(Namespace("other", NAMESPACE_LABELS["other"]))

    return Scenario(
        nodes=tuple(nodes),
        pods=tuple(pods),
        services=tuple(services),
        policies=tuple(policies),
        namespaces=tuple(namespaces),
        masquerade_hairpin=not draw(st.booleans()) if knobs else True,
        name="generated",
    )


def _check_scenario_args(
    min_nodes: int,
    max_nodes: int,
    max_pods_per_node: int,
    max_services: int,
    max_policies: int,
    knobs: bool,
    node_ports: bool,
) -> None:
    _check_int("min_nodes", min_nodes, 1, MAX_NODES)
    _check_int("max_nodes", max_nodes, 1, MAX_NODES)
    if max_nodes < min_nodes:
        raise InvalidArgument(f"max_nodes={max_nodes} must be at least min_nodes={min_nodes}")
    _check_int("max_pods_per_node", max_pods_per_node, 0, MAX_PODS_PER_NODE)
    _check_int("max_services", max_services, 0, 1000)
    _check_int("max_policies", max_policies, 0, 1000)
    _check_bool("knobs", knobs)
    _check_bool("node_ports", node_ports)


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
    _check_scenario_args(
        min_nodes, max_nodes, max_pods_per_node, max_services, max_policies, knobs, node_ports
    )
    return _scenarios(
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
    """Like `scenarios`, but always with a pod behind a Service (pod-1, svc-1)."""
    _check_scenario_args(
        min_nodes, max_nodes, max_pods_per_node, max_services, max_policies, knobs, node_ports
    )
    if max_pods_per_node < 1:
        raise InvalidArgument("hairpin_scenarios needs max_pods_per_node >= 1")
    if max_services < 1:
        raise InvalidArgument("hairpin_scenarios needs max_services >= 1")
    return _scenarios(
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


def probes(
    scenario: Scenario, *, kinds: Sequence[ProbeKind] = PROBE_KINDS
) -> st.SearchStrategy[Probe]:
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
                options.append(
                    st.builds(
                        lambda src, t: Probe(src, t[0], t[1], t[2]), sources, st.sampled_from(wrong)
                    )
                )
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
