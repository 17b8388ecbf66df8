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
import dataclasses
import re
import secrets
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from backends import BackendUnavailable, env_seconds
from backends.docker import daemon, image
from backends.docker.common import kernel_name
from backends.docker.daemon import AgentError, NodeContainer, Privilege
from backends.docker.placement import UNDERLAY_CONTAINER, Plan, place
from backends.docker.wire import decode_outcome, encode_part, encode_probe
from conformance.dataplane import Dataplane, NetnsConfig
from conformance.probes import Observation, Probe
from conformance.termination import deferred

if TYPE_CHECKING:
    from conformance.snapshot import NamespaceRead

__all__ = ["ContainerAccess", "DockerBackend", "cleanup"]

SAVE = "iptables-legacy-save"  # the variant the agents restore with (the image selects legacy too)

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


class ContainerAccess:
    """One namespace of a container, for the snapshot reader: testinfra's docker:// plus `ip netns exec`."""

    def __init__(self, host: Any, logical: str, netns: str | None) -> None:
        self.host = host
        self.logical = logical
        self.netns = netns  # None: the container's own namespace

    def run(self, argv: Sequence[str]) -> str:
        from conformance.snapshot import SnapshotError

        cmd = list(argv) if self.netns is None else ["ip", "netns", "exec", self.netns, *argv]
        result = self.host.run(shlex.join(cmd))
        if result.rc != 0:
            raise SnapshotError(
                f"{self.logical}: {' '.join(argv[:2])}: exit {result.rc}: {result.stderr.strip()[:300]}"
            )
        return str(result.stdout)


def _docker_name(logical: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", logical)


class DockerBackend:
    """Real kernels in containers; samples, not distributions."""

    name = "docker"
    exact = False

    def __init__(self, *, probe_timeout: float | None = None, run_id: str | None = None) -> None:
        if probe_timeout is None:
            probe_timeout = env_seconds("NETCONFORMANCE_PROBE_TIMEOUT", DEFAULT_PROBE_TIMEOUT)
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
            # Removed (killed) first, then the channel closed: closing first would let
            # the agents start an orderly teardown that the removal only interrupts.
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda c: daemon.remove_container(self.client, c.id), containers))
            for c in containers:
                c.channel.close()
        # Then everything else labelled with this run, the network last: an interrupt (SIGTERM) during
        # _ensure_containers can leave containers started but never recorded, still attached to the network.
        daemon.cleanup(self.client, self.run_id)
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

    def access(self, logical: str) -> ContainerAccess:
        """A `NodeAccess` (conformance.snapshot) into namespace `logical`, wherever it lives, through testinfra."""
        plan = self._plan
        if plan is None or logical not in plan.hosts:
            raise KeyError(f"docker backend: no namespace {logical!r} deployed")
        container = plan.hosts[logical]
        inner = None if container == logical or plan.parts[container].own.name == logical else kernel_name(logical)
        return ContainerAccess(self.host(container), logical, inner)

    def snapshot(self) -> Dataplane:
        """Every container read from inside, as a plain Dataplane the simulator predicts.

        The general reader (`conformance.snapshot`), one exec per namespace.
        Nodes are read as containers (their uplink's peer is on the host);
        the underlay container is read too, its Docker interface standing for
        the ports toward the nodes, so the gateway and the external client
        are what the kernel has, not assumptions. Listeners and probe sources
        come from the deployed dataplane (they are not kernel state).
        """
        from conformance.snapshot import assemble, carry_over, read_namespace

        intent, plan = self._dataplane, self._plan
        if intent is None or plan is None:
            raise RuntimeError("docker backend: snapshot() before deploy()")
        names = {kernel_name(ns.name): ns.name for ns in intent.namespaces}

        def read(ns: NetnsConfig) -> NamespaceRead:
            return read_namespace(self.access(ns.name), ns.name, ns.role, iptables_save=SAVE)

        under = plan.parts.get(UNDERLAY_CONTAINER)
        beyond = set() if under is None else {under.own.name, *(ns.name for ns in under.inner)}
        nodes = assemble(
            [read(ns) for ns in intent.namespaces if ns.name not in beyond],
            names,
            outside="underlay",
            implementation=f"snapshot of {intent.implementation or 'a deployment'}",
        )
        if under is None:
            return carry_over(nodes, intent)
        wire = under.uplink.name if under.uplink is not None else None
        reads = [read(under.own), *(read(ns) for ns in under.inner)]
        own = reads[0]
        reads[0] = dataclasses.replace(
            own, raw=dataclasses.replace(own.raw, links=tuple(lk for lk in own.raw.links if lk.name != wire))
        )
        outside = assemble(reads, names, outside="error")
        # The ports the node reads synthesized stand for the Docker network: they join the read bridge.
        master = under.uplink.master if under.uplink is not None else None
        ports = tuple(
            dataclasses.replace(lk, master=master)
            for ns in nodes.namespaces
            if ns.role == "underlay"
            for lk in ns.links
            if lk.kind == "veth"
        )
        underlay = outside.netns(under.own.name)
        merged = (
            dataclasses.replace(underlay, links=(*underlay.links, *ports)),
            *(ns for ns in outside.namespaces if ns.name != underlay.name),
            *(ns for ns in nodes.namespaces if ns.role != "underlay"),
        )
        return carry_over(dataclasses.replace(nodes, namespaces=merged), intent)

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
        with deferred():  # an interrupt waits until what is being created is recorded, for teardown
            self._create_containers(missing)

    def _create_containers(self, missing: list[str]) -> None:
        assert self.privilege is not None and self.image is not None
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
