"""A scenario as Kubernetes objects: Namespaces, Pods, Services, NetworkPolicies.

Plain dicts (what `kubectl apply` would take), validated in the tests
against the official client's generated API models. What a real cluster
decides is not asked for: it assigns pod IPs, ClusterIPs and NodePorts, and
`backends.kind.addresses` maps them to the scenario's afterwards. What a
real cluster cannot realise at all is reported by `unrealisable` with the
reason, never silently ignored.

Every namespace of a run is named ``nc-<run>-<generation>-<scenario ns>``
and labelled with the run id, so cleanup deletes exactly a run's objects.
A deployment is one generation: a new scenario gets fresh namespaces, and
the old generation is deleted in the background.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from conformance.model import (
    IPBlock,
    LabelSelector,
    NetworkPolicy,
    Pod,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    Scenario,
    Service,
)

Manifest = dict[str, Any]

RUN_LABEL = "netconformance.io/run"
GENERATION_LABEL = "netconformance.io/generation"
SCENARIO_NS_LABEL = "netconformance.io/namespace"
ROLE_LABEL = "netconformance.io/role"
IDENTITY_ANNOTATION = "netconformance.io/identity"
NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server to the real name
DEFAULT_IMAGE = "python:3.12-alpine"
CONTAINER = "probe"
FENCE_PORT = 8080  # the fence pod's TCP port (see backends.kind.__init__)

AGENT_SOURCE = (Path(__file__).parent / "agent.py").read_text(encoding="utf-8")
READY_FILE = "/tmp/netconformance-ready"
# Readiness means "every listener is bound" (agent.serve writes the file after binding).
READY_CHECK = f"import os,sys; sys.exit(0 if os.path.exists({READY_FILE!r}) else 1)"

# The knobs a real cluster fixes: its CNI and kube-proxy decide them, the
# scenario cannot. Values are what Kubernetes needs (what the specs assume
# by default); a scenario asking for anything else is not realisable here.
FIXED_KNOBS: dict[str, bool] = {
    "hairpin_mode": True,
    "bridge_nf_call_iptables": True,
    "accept_local": False,
    "masquerade_hairpin": True,
}


class Unrealisable(ValueError):
    """A scenario (or a part of it) a real cluster cannot be asked for; the message says why."""


@dataclass(frozen=True)
class RealNode:
    name: str
    ip: IPv4Address
    pod_cidr: IPv4Network | None = None
    control_plane: bool = False


@dataclass(frozen=True)
class ClusterFacts:
    """What the backend learned about the cluster (nodes, networks) before deploying."""

    nodes: tuple[RealNode, ...]
    cluster_cidr: IPv4Network = IPv4Network("10.244.0.0/16")
    service_cidr: IPv4Network = IPv4Network("10.96.0.0/12")
    node_cidr: IPv4Network | None = None  # the nodes' network, when known (kind: docker's network)


@dataclass(frozen=True)
class Target:
    run_id: str
    generation: int
    image: str = DEFAULT_IMAGE


# -- what a cluster cannot realise ---------------------------------------------------


def fixed_knob_violations(s: Scenario) -> list[str]:
    out: list[str] = []
    for n in s.nodes:
        if n.hairpin_mode != FIXED_KNOBS["hairpin_mode"]:
            out.append(f"node {n.name} asks hairpin_mode={n.hairpin_mode} (the CNI decides it)")
        if n.bridge_nf_call_iptables != FIXED_KNOBS["bridge_nf_call_iptables"]:
            out.append(
                f"node {n.name} asks bridge_nf_call_iptables={n.bridge_nf_call_iptables} (the node's kernel decides it)"
            )
    for p in s.pods:
        if p.accept_local != FIXED_KNOBS["accept_local"]:
            out.append(f"pod {p.ref} asks accept_local={p.accept_local} (an unsafe sysctl kubelet does not allow)")
    if s.masquerade_hairpin != FIXED_KNOBS["masquerade_hairpin"]:
        out.append(f"the scenario asks masquerade_hairpin={s.masquerade_hairpin} (kube-proxy always masquerades it)")
    return out


def unrealisable(s: Scenario, facts: ClusterFacts) -> str | None:
    """None, or why this cluster cannot realise `s` (fixed knobs, too few nodes, ipBlocks)."""
    problems = fixed_knob_violations(s)
    try:
        nodes = node_mapping(s, facts)
        fake_ips = {svc.cluster_ip: svc.cluster_ip for svc in s.services}  # ClusterIPs map 1:1 later
        for pol in s.policies:
            for rule in (*pol.ingress, *pol.egress):
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        translate_block(peer.ip_block, s, facts, nodes, fake_ips)
    except Unrealisable as e:
        problems.append(str(e))
    if not problems:
        return None
    return "kind backend: fixed by the cluster: " + "; ".join(problems)


# -- names ---------------------------------------------------------------------------


def _dns_label(text: str, limit: int = 63) -> str:
    clean = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-") or "x"
    if len(clean) <= limit:
        return clean
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return clean[: limit - 9].rstrip("-") + "-" + digest


def namespace_name(target: Target, scenario_ns: str) -> str:
    return _dns_label(f"nc-{target.run_id}-{target.generation}-{scenario_ns}")


def agents_namespace(run_id: str) -> str:
    return _dns_label(f"nc-{run_id}-agents")


def scenario_namespaces(s: Scenario) -> list[str]:
    names = [ns.name for ns in s.namespaces]
    names += [p.namespace for p in s.pods] + [v.namespace for v in s.services] + [n.namespace for n in s.policies]
    return list(dict.fromkeys(names))


def node_mapping(s: Scenario, facts: ClusterFacts) -> dict[str, RealNode]:
    """Scenario node -> real node, in order: workers first (by name), then control planes."""
    real = sorted(facts.nodes, key=lambda n: (n.control_plane, n.name))
    if len(s.nodes) > len(real):
        raise Unrealisable(f"the scenario has {len(s.nodes)} nodes, the cluster {len(real)}")
    return {n.name: r for n, r in zip(s.nodes, real, strict=False)}


# -- objects -------------------------------------------------------------------------


def namespace_manifest(s: Scenario, target: Target, scenario_ns: str) -> Manifest:
    own = {k: v for k, v in s.namespace_labels(scenario_ns) if k != NAME_LABEL}
    own |= {RUN_LABEL: target.run_id, GENERATION_LABEL: str(target.generation), SCENARIO_NS_LABEL: scenario_ns}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace_name(target, scenario_ns), "labels": own},
    }


def _agent_container(image: str, args: list[str], ports: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", AGENT_SOURCE],
        "args": args,
        "readinessProbe": {
            "exec": {"command": ["python3", "-c", READY_CHECK]},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    if ports:
        container["ports"] = ports
    return container


def _pod_spec(node: str, container: dict[str, Any], *, host_network: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # nodeName places the pod without the scheduler; tolerating every
        # taint lets scenario nodes map onto control-plane nodes too.
        "nodeName": node,
        "tolerations": [{"operator": "Exists"}],
        "restartPolicy": "Never",  # a crashed probe server is an error to see, not to hide
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
    }
    if host_network:
        spec["hostNetwork"] = True
    return spec


def pod_manifest(pod: Pod, target: Target, node: RealNode) -> Manifest:
    ports = [{"containerPort": c.port, "protocol": c.protocol} for c in pod.ports]
    args = ["serve", pod.ref, *(f"{c.port}/{c.protocol}" for c in pod.ports)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": namespace_name(target, pod.namespace),
            "labels": dict(pod.labels),
            "annotations": {IDENTITY_ANNOTATION: pod.ref},
        },
        "spec": _pod_spec(node.name, _agent_container(target.image, args, ports)),
    }


def node_agent_manifest(run_id: str, image: str, node: RealNode) -> Manifest:
    """A host-network pod on `node`: the source of "node:<name>" probes."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": _dns_label(f"node-{node.name}"),
            "namespace": agents_namespace(run_id),
            "labels": {ROLE_LABEL: "node-agent"},
        },
        "spec": _pod_spec(node.name, _agent_container(image, ["serve", f"node:{node.name}"], []), host_network=True),
    }


def fence_pod_manifest(run_id: str, image: str, node: RealNode) -> Manifest:
    """The endpoint of the fence Services (see KindBackend._fence)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fence", "namespace": agents_namespace(run_id), "labels": {ROLE_LABEL: "fence"}},
        "spec": _pod_spec(
            node.name,
            _agent_container(
                image, ["serve", "fence", f"{FENCE_PORT}/TCP"], [{"containerPort": FENCE_PORT, "protocol": "TCP"}]
            ),
        ),
    }


def fence_service_manifest(run_id: str, generation: int) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"fence-{generation}", "namespace": agents_namespace(run_id)},
        "spec": {
            "selector": {ROLE_LABEL: "fence"},
            "ports": [{"name": "tcp", "port": 80, "targetPort": FENCE_PORT, "protocol": "TCP"}],
        },
    }


def agents_namespace_manifest(run_id: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": agents_namespace(run_id), "labels": {RUN_LABEL: run_id, ROLE_LABEL: "agents"}},
    }


def service_manifest(svc: Service, target: Target) -> Manifest:
    """ClusterIP and NodePorts are left to the cluster (requested ones collide); mapped afterwards."""
    ports = []
    for i, sp in enumerate(svc.ports):
        ports.append(
            {
                "name": _dns_label(sp.name) if sp.name else f"p{i}-{sp.protocol.lower()}",
                "port": sp.port,
                "targetPort": sp.target_port,
                "protocol": sp.protocol,
            }
        )
    spec: dict[str, Any] = {"type": svc.type, "ports": ports}
    if svc.selector:  # no selector: no automatic endpoints, as in the scenario
        spec["selector"] = dict(svc.selector)
    if svc.type == "NodePort":
        spec["externalTrafficPolicy"] = svc.external_traffic_policy
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "namespace": namespace_name(target, svc.namespace)},
        "spec": spec,
    }


# -- NetworkPolicy -------------------------------------------------------------------


def _selector(sel: LabelSelector, target: Target | None = None) -> dict[str, Any]:
    """A label selector; with `target`, values of kubernetes.io/metadata.name become the run's names.

    Every name is renamed, also of namespaces the scenario does not use: in
    the scenario those select no pod, and so must they in the cluster (a
    real namespace of that name may exist).
    """

    def value(key: str, v: str) -> str:
        return namespace_name(target, v) if target is not None and key == NAME_LABEL else v

    out: dict[str, Any] = {}
    if sel.match_labels:
        out["matchLabels"] = {k: value(k, v) for k, v in sel.match_labels}
    if sel.match_expressions:
        exprs = []
        for r in sel.match_expressions:
            e: dict[str, Any] = {"key": r.key, "operator": r.operator}
            if r.operator in ("In", "NotIn"):
                e["values"] = [value(r.key, v) for v in r.values]
            exprs.append(e)
        out["matchExpressions"] = exprs
    return out


def translate_block(
    block: IPBlock,
    s: Scenario,
    facts: ClusterFacts,
    nodes: Mapping[str, RealNode],
    cluster_ips: Mapping[IPv4Address, IPv4Address],
) -> dict[str, Any]:
    """An ipBlock over scenario networks as the same block over the cluster's.

    Only networks and addresses with a real counterpart translate: the
    cluster, service and node networks, a node's pod CIDR, a node IP, a
    ClusterIP, and 0.0.0.0/0. A single pod IP does not: the cluster assigns
    pod IPs after the policy must exist (policies are created before pods).
    """

    def net(n: IPv4Network) -> IPv4Network:
        if n.prefixlen == 0:
            return n
        if n == s.cluster_cidr:
            return facts.cluster_cidr
        if n == s.service_cidr:
            return facts.service_cidr
        if n == s.node_cidr:
            if facts.node_cidr is None:
                raise Unrealisable(f"ipBlock {n} (the node network): the cluster's node network is not known")
            return facts.node_cidr
        for node in s.nodes:
            real = nodes.get(node.name)
            if real is None:
                continue
            if n == node.pod_cidr:
                if real.pod_cidr is None:
                    raise Unrealisable(f"ipBlock {n}: node {real.name} has no spec.podCIDR")
                return real.pod_cidr
            if n.prefixlen == 32 and n.network_address == node.ip:
                return IPv4Network(real.ip)
        if n.prefixlen == 32 and n.network_address in cluster_ips:
            return IPv4Network(cluster_ips[n.network_address])
        if n.prefixlen == 32 and s.pod_by_ip(n.network_address) is not None:
            raise Unrealisable(f"ipBlock {n} is a pod IP: the cluster assigns pod IPs after policies exist")
        raise Unrealisable(f"ipBlock {n} has no counterpart in the cluster")

    out: dict[str, Any] = {"cidr": str(net(block.cidr))}
    if block.except_:
        out["except"] = [str(net(e)) for e in block.except_]
    return out


def _peer(
    peer: PolicyPeer,
    s: Scenario,
    facts: ClusterFacts,
    nodes: Mapping[str, RealNode],
    cluster_ips: Mapping[IPv4Address, IPv4Address],
    target: Target,
) -> dict[str, Any]:
    if peer.ip_block is not None:
        return {"ipBlock": translate_block(peer.ip_block, s, facts, nodes, cluster_ips)}
    out: dict[str, Any] = {}
    if peer.pod_selector is not None:
        out["podSelector"] = _selector(peer.pod_selector)
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = _selector(peer.namespace_selector, target)
    return out


def _ports(ports: Sequence[PolicyPort]) -> list[dict[str, Any]]:
    out = []
    for p in ports:
        entry: dict[str, Any] = {"protocol": p.protocol}
        if p.port is not None:
            entry["port"] = p.port
            if p.end_port is not None:
                entry["endPort"] = p.end_port
        out.append(entry)
    return out


def policy_manifest(
    pol: NetworkPolicy,
    s: Scenario,
    target: Target,
    facts: ClusterFacts,
    cluster_ips: Mapping[IPv4Address, IPv4Address],
) -> Manifest:
    nodes = node_mapping(s, facts)

    def rule(r: PolicyRule, key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if r.peers:
            out[key] = [_peer(p, s, facts, nodes, cluster_ips, target) for p in r.peers]
        if r.ports:
            out["ports"] = _ports(r.ports)
        return out

    spec: dict[str, Any] = {"podSelector": _selector(pol.pod_selector), "policyTypes": list(pol.policy_types)}
    if "Ingress" in pol.policy_types:
        spec["ingress"] = [rule(r, "from") for r in pol.ingress]
    if "Egress" in pol.policy_types:
        spec["egress"] = [rule(r, "to") for r in pol.egress]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": pol.name, "namespace": namespace_name(target, pol.namespace)},
        "spec": spec,
    }


@dataclass(frozen=True)
class Plan:
    """A scenario's objects in creation order (policies before the pods they select)."""

    namespaces: tuple[Manifest, ...]
    services: tuple[Manifest, ...]
    pods: tuple[Manifest, ...]


def plan(s: Scenario, target: Target, facts: ClusterFacts) -> Plan:
    """Everything but the policies, which need the ClusterIPs the cluster assigns (see `policy_manifest`)."""
    reason = unrealisable(s, facts)
    if reason is not None:
        raise Unrealisable(reason)
    nodes = node_mapping(s, facts)
    return Plan(
        namespaces=tuple(namespace_manifest(s, target, ns) for ns in scenario_namespaces(s)),
        services=tuple(service_manifest(v, target) for v in s.services),
        pods=tuple(pod_manifest(p, target, nodes[p.node]) for p in s.pods),
    )
