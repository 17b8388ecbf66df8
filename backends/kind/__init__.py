"""The kind backend: the specs against a live Kubernetes cluster.

The cluster's own kube-proxy and CNI are the implementation under test: a
scenario becomes Namespaces, Pods running a probe server (agent.py, in a
configurable image), Services and NetworkPolicies (manifests.py); the
backend waits until the cluster says the dataplane is programmed, runs the
probes from the source pods by exec (probe_output.py), and maps the
cluster's addresses back to the scenario's (addresses.py). See README.md
beside this file for how to run it.

It realises intent, not a rendered `Dataplane`: the runner calls
`deploy_scenario` for backends with ``takes_intent = True``. Knobs a real
cluster fixes (`fixed_knobs`) are never ignored: `supports(scenario)` names
them, and the runner skips such cases with that reason.

"Programmed" is polled, with deadlines, never slept for:
- pods: Running, with an IP, and Ready (the probe server's listeners are bound);
- Services: their EndpointSlices list exactly the scenario's endpoints, then
  a fence Service created after them answers from every node (the proxy
  reads Services and EndpointSlices in order, so once it has programmed the
  fence it has programmed everything created before it);
- NetworkPolicies: created before the pods they select, so the CNI enforces
  them from the pod's start (there is no API signal for policy programming).
"""

from __future__ import annotations

import atexit
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Protocol

from backends import Backend
from backends.kind import manifests as m
from backends.kind.addresses import AddressMap
from backends.kind.cluster import KindCli, Kube, Settings, check_tools, connect, docker_network_cidr, profile_path
from backends.kind.probe_output import ProbeOutputError, parse_probe_output, probe_args, probe_command
from backends.kind.snapshot import PodInfo, assemble, docker_exec, read_node
from conformance.dataplane import Dataplane, Listener
from conformance.model import Protocol as Proto
from conformance.model import Scenario
from conformance.probes import Observation, Outcome, Probe

__all__ = ["FIXED_KNOBS", "KindBackend", "cleanup"]

FIXED_KNOBS = m.FIXED_KNOBS
EXEC_SLACK = 30.0  # on top of the probe timeout: starting an exec and an interpreter in a pod


class _Predictor(Protocol):
    def deploy(self, dataplane: Dataplane) -> None: ...

    def observe(self, probes: Sequence[Probe]) -> list[Observation]: ...


@dataclass
class _Deployment:
    scenario: Scenario
    target: m.Target
    addresses: AddressMap
    namespaces: dict[str, str]  # scenario namespace -> real namespace
    pod_ips: dict[str, IPv4Address]  # scenario pod ref -> real IP
    nodes: dict[str, m.RealNode]  # scenario node -> real node


class KindBackend:
    """A real cluster; samples, not distributions."""

    name = "kind"
    exact = False
    takes_intent = True
    fixed_knobs = FIXED_KNOBS

    def __init__(self, settings: Settings | None = None, *, kube: Kube | None = None, run_id: str | None = None):
        self.settings = settings if settings is not None else Settings.from_env()
        self.run_id = run_id or secrets.token_hex(4)
        self._kube = kube
        self._facts: m.ClusterFacts | None = None
        self._agents_ready = False
        self._created_cluster = False
        self._generation = 0
        self._deployment: _Deployment | None = None
        self._atexit = False

    # -- the Backend protocol ------------------------------------------------

    def preflight(self) -> None:
        if self._kube is not None:
            return
        check_tools(self.settings)
        if self.settings.uses_kind and self.settings.cluster not in KindCli().clusters():
            return  # NETCONFORMANCE_KIND_CONFIG is set (check_tools said so): deploy creates it
        self._kube = connect(self.settings)

    def fixed_knob_reason(self, knobs: Iterable[str]) -> str | None:
        """None, or why a spec that varies `knobs` cannot run here (the runner skips the spec with it)."""
        fixed = sorted(set(knobs) & set(self.fixed_knobs))
        if not fixed:
            return None
        values = ", ".join(f"{k}={self.fixed_knobs[k]}" for k in fixed)
        return f"kind backend: a real cluster fixes {values}; a spec varying them cannot run here"

    def supports(self, scenario: Scenario) -> str | None:
        """None, or why this cluster cannot realise `scenario` (the runner skips it with that reason)."""
        return m.unrealisable(scenario, self._cluster_facts())

    def deploy(self, dataplane: Dataplane) -> None:
        raise TypeError(
            "kind backend: the cluster's own kube-proxy and CNI are the implementation under test, so it deploys "
            "a Scenario (deploy_scenario), not a rendered Dataplane; the runner does so for backends with takes_intent"
        )

    def deploy_scenario(self, scenario: Scenario) -> None:
        if self._deployment is not None and self._deployment.scenario == scenario:
            return  # the same intent: the cluster already holds it
        kube = self._connect()
        facts = self._cluster_facts()
        reason = m.unrealisable(scenario, facts)
        if reason is not None:
            raise m.Unrealisable(reason)
        self._ensure_agents(kube, facts)
        self._generation += 1
        target = m.Target(self.run_id, self._generation, self.settings.image)
        deadline = time.monotonic() + self.settings.ready_timeout
        previous, self._deployment = self._deployment, None
        self._deployment = self._create(kube, scenario, target, facts, deadline)
        if previous is not None:
            self._retire(kube, previous)
        if scenario.services:
            self._fence(kube, facts, deadline)

    def observe(self, probes: Sequence[Probe]) -> list[Observation]:
        dep = self._deployment
        if dep is None:
            raise RuntimeError("kind backend: observe() before deploy_scenario()")
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(probes):
            if p.protocol not in ("TCP", "UDP"):
                raise NotImplementedError(f"{p.protocol} probes are not supported by the kind backend")
            groups.setdefault(p.source, []).append(i)
        outcomes: dict[int, Outcome] = {}

        def run(source: str) -> None:
            indices = groups[source]
            targets = [dep.addresses.real_target(probes[i]) for i in indices]
            for i, o in zip(indices, self._probe_from(dep, source, targets), strict=True):
                outcomes[i] = dep.addresses.to_scenario_outcome(o)

        with ThreadPoolExecutor(max_workers=max(1, min(16, len(groups)))) as pool:
            for future in [pool.submit(run, source) for source in groups]:
                future.result()
        return [Observation(p, ((outcomes[i], 1.0),), exact=False) for i, p in enumerate(probes)]

    def reset(self) -> None:
        # Every probe is a new connection from a fresh ephemeral port, so no
        # conntrack entry is ever reused; the cluster's conntrack is not ours to flush.
        return None

    def teardown(self) -> None:
        kube = self._kube
        if kube is not None:
            delete_run(kube, self.run_id, deadline=time.monotonic() + self.settings.ready_timeout)
        self._deployment = None
        self._agents_ready = False
        if self._created_cluster and self.settings.delete_cluster:
            KindCli().delete(self.settings.cluster)
            self._created_cluster = False
            self._kube = None
            self._facts = None

    # -- prediction: the simulator on the cluster's own state -----------------

    def snapshot(self) -> Dataplane:
        """The nodes' real state (rules, links, routes, sysctls) as a Dataplane for the simulator."""
        dep = self._deployment
        if dep is None:
            raise RuntimeError("kind backend: snapshot() before deploy_scenario()")
        pods_by_ip: dict[IPv4Address, PodInfo] = {}
        for pod in dep.scenario.pods:
            listeners = tuple(Listener(c.protocol, c.port, pod.ref) for c in pod.ports)
            netns = f"pod-{pod.namespace}-{pod.name}"
            pods_by_ip[dep.pod_ips[pod.ref]] = PodInfo(netns, listeners, f"pod:{pod.ref}")
        snaps = [read_node(docker_exec(node.name), node.name) for node in self._cluster_facts().nodes]
        node_sources = {f"node:{n}": real.name for n, real in dep.nodes.items()}
        return assemble(snaps, pods_by_ip, node_sources)

    def predict(self, predictor: _Predictor, probes: Sequence[Probe]) -> list[Observation]:
        """What `predictor` (the simulator) says of `probes`, run on this cluster's own state."""
        dep = self._deployment
        if dep is None:
            raise RuntimeError("kind backend: predict() before deploy_scenario()")
        predictor.deploy(self.snapshot())
        real = [Probe(p.source, *dep.addresses.real_target(p)) for p in probes]
        out = []
        for p, obs in zip(probes, predictor.observe(real), strict=True):
            mapped = tuple((dep.addresses.to_scenario_outcome(o), w) for o, w in obs.outcomes)
            out.append(Observation(p, mapped, exact=obs.exact))
        return out

    # -- internals -------------------------------------------------------------

    def _connect(self) -> Kube:
        if self._kube is not None:
            return self._kube
        check_tools(self.settings)
        s = self.settings
        if s.uses_kind and s.cluster not in KindCli().clusters():
            assert s.config is not None  # check_tools insists
            KindCli().create(s.cluster, profile_path(s.config), s.ready_timeout)
            self._created_cluster = True
        self._kube = connect(s)
        if not self._atexit:
            atexit.register(self.teardown)
            self._atexit = True
        return self._kube

    def _cluster_facts(self) -> m.ClusterFacts:
        if self._facts is None:
            self._facts = cluster_facts(self._connect(), self.settings)
        return self._facts

    def _ensure_agents(self, kube: Kube, facts: m.ClusterFacts) -> None:
        """Once per run: a host-network agent per node ("node:" probes) and the fence pod."""
        if self._agents_ready:
            return
        ns = m.agents_namespace(self.run_id)
        if not kube.list("Namespace", label_selector=f"{m.RUN_LABEL}={self.run_id},{m.ROLE_LABEL}=agents"):
            kube.create(m.agents_namespace_manifest(self.run_id))
            for node in facts.nodes:
                kube.create(m.node_agent_manifest(self.run_id, self.settings.image, node))
            kube.create(m.fence_pod_manifest(self.run_id, self.settings.image, sorted(facts.nodes, key=_order)[0]))
        deadline = time.monotonic() + self.settings.ready_timeout
        _wait_pods_ready(kube, {ns: {_name(x) for x in self._agent_manifests(facts)}}, deadline)
        self._agents_ready = True

    def _agent_manifests(self, facts: m.ClusterFacts) -> list[m.Manifest]:
        image = self.settings.image
        nodes = [m.node_agent_manifest(self.run_id, image, n) for n in facts.nodes]
        return [*nodes, m.fence_pod_manifest(self.run_id, image, sorted(facts.nodes, key=_order)[0])]

    def _create(self, kube: Kube, s: Scenario, target: m.Target, facts: m.ClusterFacts, deadline: float) -> _Deployment:
        plan = m.plan(s, target, facts)
        nodes = m.node_mapping(s, facts)
        names = {ns: m.namespace_name(target, ns) for ns in m.scenario_namespaces(s)}
        amap = AddressMap(s)
        # Every namespace carries the run label: a failure below is still cleaned up by teardown.
        for manifest in plan.namespaces:
            kube.create(manifest)
        cluster_ips: dict[IPv4Address, IPv4Address] = {}
        for svc, manifest in zip(s.services, plan.services, strict=True):
            made = kube.create(manifest)
            real_ip = IPv4Address(made["spec"]["clusterIP"])
            cluster_ips[svc.cluster_ip] = real_ip
            amap.add(svc.cluster_ip, real_ip)
            for sp, real_port in zip(svc.ports, made["spec"]["ports"], strict=True):
                if sp.node_port is not None:
                    amap.node_ports[(sp.node_port, sp.protocol)] = int(real_port["nodePort"])
        # Policies before the pods they select: enforced from the pods' start.
        for pol in s.policies:
            kube.create(m.policy_manifest(pol, s, target, facts, cluster_ips))
        for manifest in plan.pods:
            kube.create(manifest)
        wanted: dict[str, set[str]] = {}
        for p in s.pods:
            wanted.setdefault(names[p.namespace], set()).add(p.name)
        ready = _wait_pods_ready(kube, wanted, deadline)
        pod_ips = {p.ref: ready[(names[p.namespace], p.name)] for p in s.pods}
        for p in s.pods:
            amap.add(p.ip, pod_ips[p.ref])
        for n in s.nodes:
            amap.add(n.ip, nodes[n.name].ip)
        if self.settings.uses_kind and facts.nodes:
            amap.add(m_external_ip(s), _local_source_address(facts.nodes[0].ip))
        self._wait_endpoints(kube, s, names, pod_ips, deadline)
        return _Deployment(s, target, amap, names, pod_ips, nodes)

    def _wait_endpoints(
        self, kube: Kube, s: Scenario, names: dict[str, str], pod_ips: dict[str, IPv4Address], deadline: float
    ) -> None:
        for svc in s.services:
            if not svc.selector:
                continue
            want = {pod_ips[p.ref] for p in s.endpoints(svc)}
            ns = names[svc.namespace]

            def current(ns: str = ns, name: str = svc.name) -> set[IPv4Address]:
                return _ready_endpoints(kube.list("EndpointSlice", ns, f"kubernetes.io/service-name={name}"))

            def done(want: set[IPv4Address] = want, current: Any = current) -> bool:
                return bool(current() == want)

            _poll(f"the EndpointSlices of {svc.ref} to list {sorted(map(str, want))}", deadline, done)

    def _fence(self, kube: Kube, facts: m.ClusterFacts, deadline: float) -> None:
        """Wait until the proxy on every node has programmed a Service created after the scenario's."""
        ns = m.agents_namespace(self.run_id)
        made = kube.create(m.fence_service_manifest(self.run_id, self._generation))
        name = made["metadata"]["name"]
        ip = IPv4Address(made["spec"]["clusterIP"])
        try:
            _poll(
                f"the EndpointSlice of fence Service {name}",
                deadline,
                lambda: bool(_ready_endpoints(kube.list("EndpointSlice", ns, f"kubernetes.io/service-name={name}"))),
            )
            for node in facts.nodes:
                agent = _name(m.node_agent_manifest(self.run_id, self.settings.image, node))

                def served(agent: str = agent) -> bool:
                    out = _exec_probes(kube, ns, agent, [(ip, 80, "TCP")], self.settings.probe_timeout)
                    return out[0].verdict == "delivered"

                _poll(f"kube-proxy on {node.name} to program fence Service {name} ({ip})", deadline, served)
        finally:
            kube.delete("Service", name, ns)

    def _retire(self, kube: Kube, previous: _Deployment) -> None:
        for ns in previous.namespaces.values():
            kube.delete("Namespace", ns)

    def _probe_from(
        self, dep: _Deployment, source: str, targets: list[tuple[IPv4Address, int, Proto]]
    ) -> list[Outcome]:
        timeout = self.settings.probe_timeout
        kube = self._kube
        assert kube is not None
        if source.startswith("pod:"):
            ref = source[4:]
            pod = dep.scenario.pod(ref)
            return _exec_probes(kube, dep.namespaces[pod.namespace], pod.name, targets, timeout)
        if source.startswith("node:"):
            real = dep.nodes[source[5:]]
            agent = _name(m.node_agent_manifest(self.run_id, self.settings.image, real))
            return _exec_probes(kube, m.agents_namespace(self.run_id), agent, targets, timeout)
        if source == "external":
            if not self.settings.uses_kind:
                raise NotImplementedError("kind backend: external probes need a kind cluster (nodes on this machine)")
            return _local_probes(targets, timeout)
        raise ValueError(f"kind backend: unknown probe source {source!r}")


# -- helpers ---------------------------------------------------------------------------


def m_external_ip(s: Scenario) -> IPv4Address:
    """The scenario's external client (conformance.specs.common.external_ip)."""
    return s.node_cidr.network_address + 250


def _order(n: m.RealNode) -> tuple[bool, str]:
    return (n.control_plane, n.name)


def _name(manifest: m.Manifest) -> str:
    return str(manifest["metadata"]["name"])


def _poll(what: str, deadline: float, check: Any, interval: float = 0.25) -> None:
    while not check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"kind backend: timed out waiting for {what}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _ready_endpoints(slices: list[m.Manifest]) -> set[IPv4Address]:
    out: set[IPv4Address] = set()
    for sl in slices:
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is True:
                out.update(IPv4Address(a) for a in ep.get("addresses") or [])
    return out


def _pod_problem(pod: m.Manifest) -> str | None:
    """Why a pod will never become ready, if it is clear already."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"phase {status['phase']}: {status.get('reason', '')} {status.get('message', '')}".strip()
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerError"):
            return (
                f"{waiting['reason']}: {waiting.get('message', '')} (the image must be pullable by the nodes, "
                f"or loaded with `kind load docker-image IMAGE --name CLUSTER`)"
            )
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return f"container exited with {terminated.get('exitCode')}: {terminated.get('reason', '')}"
    return None


def _wait_pods_ready(kube: Kube, wanted: dict[str, set[str]], deadline: float) -> dict[tuple[str, str], IPv4Address]:
    """Poll until every wanted pod is Ready with an IP; its IP by (namespace, name)."""
    ips: dict[tuple[str, str], IPv4Address] = {}
    missing: list[str] = []

    def check() -> bool:
        missing.clear()
        for ns, names in wanted.items():
            by_name = {_name(p): p for p in kube.list("Pod", ns)}
            for name in sorted(names):
                pod = by_name.get(name)
                if pod is None:
                    missing.append(f"{ns}/{name} (not found)")
                    continue
                problem = _pod_problem(pod)
                if problem is not None:
                    raise RuntimeError(f"kind backend: pod {ns}/{name} cannot run: {problem}")
                status = pod.get("status") or {}
                ready = any(
                    c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
                )
                if not ready or not status.get("podIP"):
                    missing.append(f"{ns}/{name} ({status.get('phase', 'unknown')})")
                    continue
                ips[(ns, name)] = IPv4Address(status["podIP"])
        return not missing

    while not check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"kind backend: timed out waiting for pods to be ready: {', '.join(missing)}")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return ips


def _exec_probes(
    kube: Kube, namespace: str, pod: str, targets: Sequence[tuple[IPv4Address, int, Proto]], timeout: float
) -> list[Outcome]:
    result = kube.exec(namespace, pod, probe_command(timeout, targets), timeout + EXEC_SLACK)
    if result.returncode not in (0, None):
        raise ProbeOutputError(
            f"probe client in {namespace}/{pod} exited with {result.returncode}: {result.stderr.strip()[:1000]}"
        )
    return parse_probe_output(result.stdout, len(targets))


def _local_probes(targets: Sequence[tuple[IPv4Address, int, Proto]], timeout: float) -> list[Outcome]:
    """An "external" client: this machine, on kind's docker network, outside the cluster."""
    agent = Path(__file__).parent / "agent.py"
    done = subprocess.run(
        [sys.executable, str(agent), *probe_args(timeout, targets)],
        capture_output=True,
        text=True,
        timeout=timeout + EXEC_SLACK,
        check=False,
    )
    if done.returncode != 0:
        raise ProbeOutputError(f"local probe client exited with {done.returncode}: {done.stderr.strip()[:1000]}")
    return parse_probe_output(done.stdout, len(targets))


def _local_source_address(toward: IPv4Address) -> IPv4Address:
    """The address this machine sends from toward `toward` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((str(toward), 9))
        return IPv4Address(s.getsockname()[0])


def cluster_facts(kube: Kube, settings: Settings) -> m.ClusterFacts:
    nodes = []
    for node in kube.list("Node"):
        meta, spec, status = node["metadata"], node.get("spec") or {}, node.get("status") or {}
        internal = [a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"]
        ipv4 = [a for a in internal if ":" not in a]
        if not ipv4:
            continue  # an IPv6-only node: the scenarios are IPv4
        labels = meta.get("labels") or {}
        cidr = spec.get("podCIDR")
        nodes.append(
            m.RealNode(
                name=meta["name"],
                ip=IPv4Address(ipv4[0]),
                pod_cidr=IPv4Network(cidr) if cidr and ":" not in cidr else None,
                control_plane="node-role.kubernetes.io/control-plane" in labels,
            )
        )
    node_cidr = settings.node_cidr
    if node_cidr is None and settings.uses_kind:
        node_cidr = docker_network_cidr()
    return m.ClusterFacts(tuple(nodes), settings.cluster_cidr, settings.service_cidr, node_cidr)


def delete_run(kube: Kube, run_id: str | None, *, deadline: float) -> list[str]:
    """Delete the namespaces labelled with `run_id` (every run's, with None) and wait until they are gone."""
    selector = f"{m.RUN_LABEL}={run_id}" if run_id else m.RUN_LABEL
    names = [_name(ns) for ns in kube.list("Namespace", label_selector=selector)]
    for name in names:
        kube.delete("Namespace", name)
    _poll(
        f"namespaces {', '.join(names)} to be deleted",
        deadline,
        lambda: not kube.list("Namespace", label_selector=selector),
        interval=1.0,
    )
    return names


def cleanup(run_id: str | None = None) -> list[str]:
    """Delete what kind-backend runs left behind (one run, or all): namespaces labelled with a run id."""
    settings = Settings.from_env()
    check_tools(settings)
    return delete_run(connect(settings), run_id, deadline=time.monotonic() + settings.ready_timeout)


def _is_backend(b: KindBackend) -> Backend:
    return b  # mypy checks here that KindBackend satisfies the Backend protocol
