"""DockerBackend: the Backend protocol over node containers and their agents.

Per run: one Docker network (``nc-<run>-wire``) and the containers a
dataplane needs (``nc-<run>-<namespace>``), all labelled with the project,
the run and the owning process. Containers are made when a dataplane first
needs them and kept for the next examples (a container with nothing to do
is cleared: its interface down, no addresses); each example is built by the
agents inside them, so an example costs what the netns backend pays plus a
round trip per container, not a container start.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from typing import Any

from backends import BackendUnavailable
from backends.docker import daemon, image
from backends.docker.daemon import AgentError, NodeContainer, Privilege
from backends.docker.placement import Plan, place
from backends.docker.wire import decode_outcome, encode_part, encode_probe
from conformance.dataplane import Dataplane
from conformance.probes import Observation, Probe

__all__ = ["DockerBackend", "cleanup"]

DEFAULT_PROBE_TIMEOUT = 0.5
DEPLOY_TIMEOUT = 60.0
RPC_SLACK = 10.0  # on top of the probe timeout: the agents' own work and the round trip


def cleanup(run_id: str | None = None) -> list[str]:
    """Remove the containers and networks of one run, or of every run whose process is gone.

    Only objects with the project label are considered; an object is removed
    when its run label is `run_id`, or (without `run_id`) when the process
    named by its owner label is no longer running on this host.
    """
    return daemon.cleanup(daemon.connect(), run_id)


def _docker_name(logical: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", logical)


class DockerBackend:
    """Real kernels in containers; samples, not distributions."""

    name = "docker"
    exact = False

    def __init__(self, *, probe_timeout: float | None = None, run_id: str | None = None) -> None:
        if probe_timeout is None:
            probe_timeout = float(os.environ.get("NETCONFORMANCE_PROBE_TIMEOUT", DEFAULT_PROBE_TIMEOUT))
        self.probe_timeout = probe_timeout
        self.run_id = run_id or secrets.token_hex(4)
        self.client: Any = None
        self.image: str | None = None
        self.privilege: Privilege | None = None
        self.network: str | None = None  # its id
        self.containers: dict[str, NodeContainer] = {}  # logical name -> container
        self.builds = 0  # agent builds (one per container and example that changed structure)
        self.swaps = 0  # agent deploys that only swapped rules
        self._dataplane: Dataplane | None = None
        self._plan: Plan | None = None
        self._checked_addresses: frozenset[str] = frozenset()
        self._atexit = False

    # -- the Backend protocol ------------------------------------------------

    def preflight(self) -> None:
        if self.privilege is not None:
            return
        client = daemon.connect()
        name = image.ensure_image(client)
        self.privilege = daemon.detect_privilege(client, name, self.run_id)
        self.client, self.image = client, name

    def describe(self) -> str:
        """Which image and privilege mode this backend runs with (after preflight)."""
        if self.privilege is None:
            return "docker backend (not checked yet)"
        return f"docker backend: image {self.image}; {self.privilege.note}"

    def deploy(self, dataplane: Dataplane) -> None:
        self.preflight()
        plan = place(dataplane)
        self._check_addresses(dataplane)
        self._dataplane = None
        self._ensure_containers(plan)
        targets = [self.containers[name] for name in plan.parts]
        idle = [c for name, c in self.containers.items() if name not in plan.parts]
        sent = [(c, c.channel.send({"op": "deploy", "part": encode_part(plan.parts[c.logical])})) for c in targets]
        sent += [(c, c.channel.send({"op": "clear"})) for c in idle]
        modes = self._answers(sent, DEPLOY_TIMEOUT)
        self.builds += sum(m.get("mode") == "build" for m in modes)
        self.swaps += sum(m.get("mode") == "swap" for m in modes)
        self._dataplane, self._plan = dataplane, plan

    def observe(self, probes: Sequence[Probe]) -> list[Observation]:
        dataplane, plan = self._dataplane, self._plan
        if dataplane is None or plan is None:
            raise RuntimeError("docker backend: observe() before deploy()")
        for p in probes:
            if p.protocol not in ("TCP", "UDP"):
                raise NotImplementedError(f"{p.protocol} probes are not supported by the docker backend")
        by_container: dict[str, list[int]] = {}
        wire: dict[str, list[dict[str, Any]]] = {}
        for i, p in enumerate(probes):
            container, netns = plan.container_of_source(dataplane, p.source)
            by_container.setdefault(container, []).append(i)
            wire.setdefault(container, []).append(encode_probe(p, netns))
        # Every source container starts its probes at once; servers answer all the time.
        sent = [
            (
                self.containers[name],
                self.containers[name].channel.send({"op": "probe", "probes": items, "timeout": self.probe_timeout}),
            )
            for name, items in wire.items()
        ]
        answers = self._answers(sent, self.probe_timeout + RPC_SLACK)
        outcomes: dict[int, Observation] = {}
        for indexes, answer in zip(by_container.values(), answers, strict=True):
            for i, raw in zip(indexes, answer["outcomes"], strict=True):
                outcomes[i] = Observation(probes[i], ((decode_outcome(raw), 1.0),), exact=False)
        return [outcomes[i] for i in range(len(probes))]

    def reset(self) -> None:
        if self._plan is None:
            return
        targets = [self.containers[name] for name in self._plan.parts]
        self._answers([(c, c.channel.send({"op": "reset"})) for c in targets], DEPLOY_TIMEOUT)

    def teardown(self) -> None:
        """Remove this run's containers and network; safe to call twice."""
        containers, self.containers = list(self.containers.values()), {}
        self._dataplane, self._plan = None, None
        if self.client is None:
            return
        if containers:
            # Killed and removed first, then the channel closed: the agent gets no
            # chance to exit on its own and race the removal through auto-remove.
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda c: daemon.remove_container(self.client, c.id), containers))
            for c in containers:
                c.channel.close()
        if self.network is not None:
            daemon.remove_network(self.client, self.network)
            self.network = None

    # -- inspection ----------------------------------------------------------------

    def container_name(self, logical: str) -> str:
        """The Docker name of the container realising namespace `logical` (a node, or the underlay)."""
        return f"nc-{self.run_id}-{_docker_name(logical)}"

    def host(self, logical: str) -> Any:
        """A testinfra Host for the container of namespace `logical` (``docker://`` backend)."""
        import testinfra

        if self._plan is not None and logical in self._plan.hosts:
            logical = self._plan.hosts[logical]
        return testinfra.get_host(f"docker://{self.container_name(logical)}")

    def exec_in(self, logical: str) -> Any:
        """An Exec (argv -> stdout) in the container of `logical`, through testinfra, for node snapshots."""
        host = self.host(logical)

        def run(cmd: Sequence[str]) -> str:
            from backends.kind.snapshot import SnapshotError

            result = host.run(shlex.join(cmd))
            if result.rc != 0:
                raise SnapshotError(
                    f"{shlex.join(cmd)[:80]} in {logical}: exit {result.rc}: {result.stderr.strip()[:300]}"
                )
            return str(result.stdout)

        return run

    def snapshot(self) -> Dataplane:
        """The nodes as they really are, read from inside their containers, as a Dataplane for the simulator.

        The same reader as for kind nodes (`backends.kind.snapshot`): links,
        addresses, routes, sysctls and iptables-save of each node container
        and of every pod namespace in it. As for kind, the underlay is
        assembled from the nodes' uplinks, and "external" probes come from
        its gateway address.
        """
        from backends.kind.snapshot import PodInfo, assemble, read_node

        dataplane, plan = self._dataplane, self._plan
        if dataplane is None or plan is None:
            raise RuntimeError("docker backend: snapshot() before deploy()")
        nodes = [ns for ns in dataplane.namespaces if ns.role == "node"]
        snaps = [read_node(self.exec_in(ns.name), ns.name.removeprefix("node-")) for ns in nodes]
        sources = dict((netns, source) for source, netns in dataplane.sources)
        pods_by_ip: dict[IPv4Address, PodInfo] = {}
        for ns in dataplane.namespaces:
            if ns.role == "pod":
                for _, addr in ns.addresses:
                    pods_by_ip[addr.ip] = PodInfo(ns.name, ns.listeners, sources.get(ns.name))
        node_sources = {
            source: netns.removeprefix("node-") for source, netns in dataplane.sources if source.startswith("node:")
        }
        return assemble(snaps, pods_by_ip, node_sources)

    # -- internals -----------------------------------------------------------------

    def _answers(self, sent: Sequence[tuple[NodeContainer, int]], timeout: float) -> list[dict[str, Any]]:
        """Every answer, in order; the first failure is raised after all were read (channels stay in step)."""
        answers: list[dict[str, Any]] = []
        failures: list[str] = []
        for c, request_id in sent:
            try:
                answers.append(c.channel.answer(request_id, timeout))
            except AgentError as e:
                failures.append(str(e))
                answers.append({})
        if failures:
            raise AgentError("; ".join(failures))
        return answers

    def _check_addresses(self, dataplane: Dataplane) -> None:
        """Refuse scenario addresses the Docker host answers to (they would be reachable outside)."""
        ours = frozenset(str(a.ip) for ns in dataplane.namespaces for _, a in ns.addresses)
        if ours <= self._checked_addresses:
            return
        clash = sorted(ours & daemon.host_addresses(self.client))
        if clash:
            raise BackendUnavailable(
                f"docker backend: scenario address(es) {', '.join(clash)} are also addresses of the Docker host "
                f"(a Docker network's gateway or an interface): the host would answer for them and could route "
                f"packets out; remove that network or use a scenario with other node addresses"
            )
        self._checked_addresses |= ours

    def _ensure_containers(self, plan: Plan) -> None:
        missing = [name for name in plan.parts if name not in self.containers]
        if not missing:
            return
        assert self.privilege is not None and self.image is not None
        if not self._atexit:
            atexit.register(self.teardown)
            self._atexit = True
        if self.network is None:
            self.network = daemon.create_network(self.client, f"nc-{self.run_id}-wire", self.run_id)
        privilege, image_name, network = self.privilege, self.image, self.network

        def start(logical: str) -> NodeContainer:
            return daemon.start_container(
                self.client,
                image=image_name,
                name=self.container_name(logical),
                logical=logical,
                network=network,
                privilege=privilege,
                run_id=self.run_id,
                role="underlay" if logical == "underlay" else "node",
            )

        with ThreadPoolExecutor(max_workers=len(missing)) as pool:
            futures = {name: pool.submit(start, name) for name in missing}
            errors = []
            for name, future in futures.items():
                try:
                    self.containers[name] = future.result()
                except Exception as e:
                    errors.append(f"{name}: {e}")
        if errors:
            raise AgentError("docker backend: starting node containers failed: " + "; ".join(errors))
