"""The docker backend: against the simulator, inspected with testinfra, and its promise to leave nothing behind.

The live tests need a Docker daemon and the node image (`netconformance image
build`); they run when --backend names docker (or NETCONFORMANCE_REQUIRE_BACKENDS
does), are skipped with the preflight's exact reason when they cannot run,
and fail instead when NETCONFORMANCE_REQUIRE_BACKENDS names "docker". The unit
tests at the end need no daemon.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from backends import BackendUnavailable, get_backend
from backends.docker import common, daemon, image
from backends.docker.backend import DockerBackend, cleanup
from backends.docker.daemon import AgentChannel, AgentError
from backends.docker.placement import UNDERLAY_CONTAINER, PlacementError, place
from backends.docker.wire import decode_outcome, decode_part, decode_probe, encode_outcome, encode_part, encode_probe
from conformance.dataplane import Link
from conformance.implementations import CNI_PLUGIN_IMPLEMENTATIONS, get_implementation
from conformance.loader import load_scenario
from conformance.probes import Outcome, Probe
from conformance.pytest_plugin import usable_backend
from conformance.strategies import classic_scenario

from live import (
    CLASSIC_PROBES,
    NODE,
    POLICIES,
    REPO,
    SVC,
    assert_like_sim,
    assert_reset_empties_recent_lists,
    classic_with_node_port,
    live_or_skip,
    sampled,
    simulated,
    terminate_once_started,
)


@pytest.fixture(scope="module")
def available(request: pytest.FixtureRequest) -> None:
    live_or_skip(request, "docker", DockerBackend().preflight)


@pytest.fixture(scope="module")
def backend(available: None) -> Iterator[DockerBackend]:
    b = DockerBackend()
    yield b
    b.teardown()


def _policy_probes() -> list[Probe]:
    web, db, svc, node1, node2 = (
        IPv4Address(a) for a in ("10.244.1.10", "10.244.2.10", "10.96.0.10", "172.18.0.2", "172.18.0.3")
    )
    return [
        Probe("pod:other/client", web, 8080, "TCP"),  # across nodes, over the Docker network
        Probe("pod:other/client", svc, 80, "TCP"),
        Probe("pod:default/web", db, 5432, "TCP"),
        Probe("pod:default/db", web, 8080, "TCP"),
        Probe("external", node1, 30080, "TCP"),
        Probe("external", node2, 30080, "TCP"),
        Probe("node:node-2", svc, 80, "TCP"),
        Probe("pod:default/web", svc, 80, "TCP"),
    ]


# -- live: a Docker daemon and the node image ------------------------------------------------


@pytest.mark.parametrize("implementation", ["reference", "hairpin-mode-off", "bridge-nf-off"])
def test_classic_matches_simulator(backend: DockerBackend, implementation: str) -> None:
    dataplane = get_implementation(implementation).render(classic_with_node_port())
    samples = sampled(backend, dataplane, CLASSIC_PROBES)
    assert_like_sim(dataplane, CLASSIC_PROBES, samples, who="docker")
    if implementation == "reference":
        assert {o.verdict for o in samples[:6] + samples[8:12]} == {"delivered"}, samples
        hairpin = samples[4]
        assert hairpin.served_by == "default/pod-b" and hairpin.server_saw == IPv4Address("10.244.1.1")
        assert samples[6].verdict == "refused" and samples[7].verdict == "refused"
        # The external client (172.18.0.250, in the underlay container) crossed the Docker network:
        # answered from the node address it dialled, the endpoint saw the masquerade.
        assert samples[10].client_saw == NODE and samples[10].server_saw == IPv4Address("10.244.1.1")


@pytest.mark.parametrize("broken", ["hairpin-mode-off", "bridge-nf-off"])
def test_broken_differs_where_simulator_says(backend: DockerBackend, broken: str) -> None:
    scenario = classic_with_node_port()
    good, bad = (get_implementation(name).render(scenario) for name in ("reference", broken))
    sim_good, sim_bad = simulated(good, CLASSIC_PROBES), simulated(bad, CLASSIC_PROBES)
    real_good, real_bad = sampled(backend, good, CLASSIC_PROBES), sampled(backend, bad, CLASSIC_PROBES)
    differing = 0
    for sg, sb, kg, kb in zip(sim_good, sim_bad, real_good, real_bad, strict=True):
        if not set(sg.possible) & set(sb.possible):  # the sim says: always different
            assert kg != kb, f"{sg.probe}: {broken} should differ from reference"
            differing += 1
        elif set(sg.possible) == set(sb.possible) and len(sg.possible) == 1:
            assert kg == kb, f"{sg.probe}: {broken} should behave like reference"
    assert differing, f"the simulator predicts no difference for {broken}"


def test_two_nodes_and_swaps_match_simulator(backend: DockerBackend) -> None:
    """Two node containers, rules swapped in place between examples, each step as the simulator says."""
    scenario = load_scenario(POLICIES)
    sequence = [
        get_implementation("reference").render(scenario),
        get_implementation("policy-before-dnat").render(scenario),  # adds a mangle table
        get_implementation("reference").render(scenario),  # ... which must go again
        get_implementation("reference").render(dataclasses.replace(scenario, policies=())),
        get_implementation("etp-local-masquerade").render(scenario),
    ]
    probes = _policy_probes()
    backend.deploy(sequence[0])
    swaps = backend.swaps
    seen = []
    for dataplane in sequence:
        samples = sampled(backend, dataplane, probes)
        assert_like_sim(dataplane, probes, samples, who="docker")
        seen.append(samples)
    assert backend.swaps > swaps  # nodes whose structure did not change only swapped rules
    assert seen[0] == seen[2]  # back to the reference: the mangle table really went
    assert seen[0][0].verdict == "delivered" and seen[0][0].served_by == "default/web"


def test_reset_empties_recent_lists_in_containers(backend: DockerBackend) -> None:
    assert_reset_empties_recent_lists(backend, who="docker")


def test_node_containers_inspected_with_testinfra(backend: DockerBackend) -> None:
    backend.deploy(get_implementation("reference").render(classic_with_node_port()))
    node = backend.host("node-node-1")
    rules = node.check_output("iptables-save -t nat")
    assert "-A KUBE-SERVICES -d 10.96.0.100/32 -p tcp" in rules
    assert node.check_output("cat /proc/sys/net/ipv4/ip_forward") == "1"
    assert node.check_output("cat /proc/sys/net/bridge/bridge-nf-call-iptables") == "1"
    assert set(node.check_output("ip netns list | cut -d' ' -f1").split()) == {"pod-default-pod-a", "pod-default-pod-b"}
    # Docker's address and default route are gone: eth0 is exactly what the dataplane says.
    eth0 = json.loads(node.check_output("ip -j -4 addr show dev eth0"))[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in eth0] == [("172.18.0.2", 24)]
    assert node.check_output("ip route show default").startswith("default via 172.18.0.1 dev eth0 ")
    assert "127.0.0.11" not in node.check_output("iptables-save; nft list ruleset")  # Docker's DNS rules
    pod = node.check_output("ip netns exec pod-default-pod-b ip -j -4 addr show dev eth0")
    assert json.loads(pod)[0]["addr_info"][0]["local"] == "10.244.1.11"
    hairpin = node.check_output("ip -j -d link show master cni0")
    assert all(port["linkinfo"]["info_slave_data"]["hairpin"] for port in json.loads(hairpin))
    underlay = backend.host(UNDERLAY_CONTAINER)
    assert "172.18.0.1/24" in underlay.check_output("ip -4 addr show dev br0")
    assert "master br0" in underlay.check_output("ip link show wire0")
    assert underlay.check_output("cat /proc/sys/net/ipv4/ip_forward") == "0"
    assert underlay.check_output("ip netns list | cut -d' ' -f1") == "external"


def test_snapshot_from_inside_containers_predicts_them(backend: DockerBackend) -> None:
    """Read back from inside the containers, the dataplane predicts what the containers did."""
    for scenario, probes in ((classic_with_node_port(), CLASSIC_PROBES), (load_scenario(POLICIES), _policy_probes())):
        dataplane = get_implementation("reference").render(scenario)
        samples = sampled(backend, dataplane, probes)
        snap = backend.snapshot()
        assert {ns.name for ns in snap.namespaces} == {ns.name for ns in dataplane.namespaces}
        assert snap.netns("underlay").addresses == dataplane.netns("underlay").addresses  # the gateway, as read
        assert snap.netns("node-node-1").iptables.count("-A KUBE-") == dataplane.netns("node-node-1").iptables.count(
            "-A KUBE-"
        )
        for expected, sample in zip(simulated(snap, probes), samples, strict=True):
            assert sample in expected.possible, f"{expected.probe}: {sample.summary()} vs {expected.describe()}"


@pytest.mark.parametrize("implementation", sorted(CNI_PLUGIN_IMPLEMENTATIONS))
def test_cni_plugins_in_containers_are_predicted_from_snapshots(backend: DockerBackend, implementation: str) -> None:
    """Real CNI plugins run inside the node containers; read back, the simulator predicts what they built."""
    dataplane = CNI_PLUGIN_IMPLEMENTATIONS[implementation].render(classic_with_node_port())
    samples = sampled(backend, dataplane, CLASSIC_PROBES)
    assert samples[0].verdict == "delivered" and samples[0].served_by == "default/pod-b"
    snap = backend.snapshot()
    for expected, sample in zip(simulated(snap, CLASSIC_PROBES), samples, strict=True):
        assert sample in expected.possible, f"{expected.probe}: {sample.summary()} vs {expected.describe()}"


def test_privilege_mode_is_detected_and_said(available: None, monkeypatch: pytest.MonkeyPatch) -> None:
    b = DockerBackend()
    b.preflight()
    assert b.privilege is not None and b.privilege.mode in daemon.PRIVILEGE_MODES
    assert b.privilege.note in b.describe()
    if b.privilege.mode == "caps":
        # --privileged was tried first and failed; the note says why.
        assert "privileged:" in b.privilege.note
        daemon._privilege_cache.clear()
        monkeypatch.setenv("NETCONFORMANCE_DOCKER_PRIVILEGE", "privileged")
        with pytest.raises(BackendUnavailable, match=r"no privilege mode works for node containers: privileged: "):
            DockerBackend().preflight()
    daemon._privilege_cache.clear()
    monkeypatch.setenv("NETCONFORMANCE_DOCKER_PRIVILEGE", b.privilege.mode)
    forced = DockerBackend()
    forced.preflight()
    assert forced.privilege is not None and forced.privilege.mode == b.privilege.mode


def _ours(client: Any, run_id: str) -> list[str]:
    flt = {"label": f"{common.RUN_LABEL}={run_id}"}
    return [c.name for c in client.containers.list(all=True, filters=flt)] + [
        n.name for n in client.networks.list(filters=flt)
    ]


def _host_state(run_id: str) -> dict[str, str]:
    """What a run could change on the host. Other runs come and go meanwhile: namespaces are judged by run id."""

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout

    return {
        "netns": "\n".join(line for line in run("ip", "netns", "list").splitlines() if run_id in line),
        "addresses": run("ip", "-o", "-4", "addr", "show"),
        "iptables-legacy": "\n".join(
            line.split(" [")[0] for line in run("iptables-legacy-save").splitlines() if not line.startswith("#")
        ),
    }


def test_teardown_leaves_nothing(available: None) -> None:
    b = DockerBackend()
    b.preflight()
    before = _host_state(b.run_id)
    try:
        sampled(b, get_implementation("reference").render(load_scenario(POLICIES)), _policy_probes()[:2])
        names = _ours(b.client, b.run_id)
        assert sorted(names) == sorted(
            f"nc-{b.run_id}-{n}" for n in ("node-node-1", "node-node-2", "underlay", "wire")
        ), names
        # The host's side of the wire has no address: the host is no router for the dataplane.
        assert b.network is not None
        bridge = f"br-{b.network[:12]}"
        shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", bridge], capture_output=True, text=True)
        assert shown.returncode == 0 and shown.stdout == "", shown
    finally:
        b.teardown()
    b.teardown()  # safe twice
    assert _ours(b.client, b.run_id) == []
    assert _host_state(b.run_id) == before  # no namespace, address or legacy rule left on the host


CHILD = """
import os, signal
from backends.docker.backend import DockerBackend
from conformance.implementations import CNI_PLUGIN_IMPLEMENTATIONS, get_implementation
from conformance.strategies import classic_scenario
b = DockerBackend()
b.deploy(get_implementation("reference").render(classic_scenario()))
print(b.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_cleanup_after_sigkill(available: None) -> None:
    client = daemon.connect()
    child = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    run_id = child.stdout.strip()
    left = _ours(client, run_id)  # atexit never ran
    assert sorted(left) == sorted(f"nc-{run_id}-{n}" for n in ("node-node-1", "underlay", "wire")), left
    # The agents saw their stdin close and stopped their containers by themselves.
    deadline = time.monotonic() + 10
    while client.containers.list(filters={"label": f"{common.RUN_LABEL}={run_id}"}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.containers.list(filters={"label": f"{common.RUN_LABEL}={run_id}"}) == []  # none running
    removed = cleanup()
    # All three, unless a concurrent cleanup() got to this dead run first.
    assert sorted(r for r in removed if run_id in r) in (
        [],
        [f"container nc-{run_id}-node-node-1", f"container nc-{run_id}-underlay", f"network nc-{run_id}-wire"],
    )
    assert _ours(client, run_id) == []
    assert cleanup(run_id) == []


def test_sigterm_mid_run_tears_down(available: None, tmp_path: Path) -> None:
    """A cancelled CI job's SIGTERM: the CLI unwinds and removes exactly its run's containers and network."""
    client = daemon.connect()
    flt = {"label": common.RUN_LABEL}
    before = {c.labels.get(common.RUN_LABEL) for c in client.containers.list(all=True, filters=flt)}

    def started(_pid: int) -> str | None:
        # A node or the underlay, not the preflight's trial container: the run is building its dataplane.
        running = client.containers.list(filters=flt)
        new = {c.labels[common.RUN_LABEL] for c in running if c.labels.get(common.ROLE_LABEL) != "preflight"}
        new -= before
        return next(iter(new)) if len(new) == 1 else None

    argv = [
        "run",
        "--backend",
        "docker",
        "--spec",
        "connectivity",
        "--examples",
        "100000",
        "--report-dir",
        str(tmp_path),
    ]
    done = terminate_once_started(["-m", "conformance.cli", *argv], started)
    assert done.returncode == 128 + signal.SIGTERM, done.output
    assert "netconformance: terminated by SIGTERM; tearing down what this run built" in done.output
    assert "Traceback" not in done.output
    assert _ours(client, done.run_id) == [], done.output


def test_cleanup_leaves_live_runs_alone(backend: DockerBackend) -> None:
    backend.deploy(get_implementation("reference").render(classic_scenario()))
    before = _ours(backend.client, backend.run_id)
    assert len(before) >= 3  # node(s), underlay, network
    removed = cleanup()
    assert not [r for r in removed if backend.run_id in r]
    assert _ours(backend.client, backend.run_id) == before


# -- no daemon needed ---------------------------------------------------------------------


def test_registered_by_name() -> None:
    assert isinstance(get_backend("docker"), DockerBackend)


def test_wire_round_trips() -> None:
    implementations = [get_implementation(n) for n in ("reference", "policy-before-dnat", "hairpin-mode-off")]
    implementations += CNI_PLUGIN_IMPLEMENTATIONS.values()  # CNI attachments, --noflush rules
    for scenario in (classic_with_node_port(), load_scenario(POLICIES)):
        for impl in implementations:
            for part in place(impl.render(scenario)).parts.values():
                assert decode_part(json.loads(json.dumps(encode_part(part)))) == part
    for p in CLASSIC_PROBES:
        assert decode_probe(encode_probe(p, "pod-x")) == (p, "pod-x")
    o = Outcome("delivered", "default/pod-b", 8080, IPv4Address("10.244.1.1"), SVC, reason="why")
    assert decode_outcome(encode_outcome(o)) == o and decode_outcome(encode_outcome(o)).reason == "why"


def test_placement_of_classic_and_two_nodes() -> None:
    plan = place(get_implementation("reference").render(classic_with_node_port()))
    assert set(plan.parts) == {"node-node-1", UNDERLAY_CONTAINER}
    node = plan.parts["node-node-1"]
    assert [ns.name for ns in node.inner] == ["pod-default-pod-a", "pod-default-pod-b"]
    assert node.uplink is not None and node.uplink.name == "eth0" and node.uplink.master is None
    underlay = plan.parts[UNDERLAY_CONTAINER]
    assert [ns.name for ns in underlay.inner] == ["external"]
    assert underlay.uplink is not None and underlay.uplink.master == "br0"
    # The port toward the node is the Docker network now; the one toward the client stays a veth.
    assert [link.name for link in underlay.own.links] == ["br0", "u-ext"]
    plan = place(get_implementation("reference").render(load_scenario(POLICIES)))
    assert set(plan.parts) == {"node-node-1", "node-node-2", UNDERLAY_CONTAINER}
    assert plan.hosts["pod-other-client"] == "node-node-2"


def test_placement_refuses_what_a_docker_network_cannot_be() -> None:
    dataplane = get_implementation("reference").render(classic_scenario())
    underlay = dataplane.netns("underlay")
    hairpin = tuple(dataclasses.replace(link, hairpin=True) if link.name == "u-0" else link for link in underlay.links)
    bad = dataclasses.replace(
        dataplane,
        namespaces=tuple(
            dataclasses.replace(ns, links=hairpin) if ns is underlay else ns for ns in dataplane.namespaces
        ),
    )
    with pytest.raises(PlacementError, match="hairpin on u-0"):
        place(bad)
    node = dataplane.netns("node-node-1")
    cross = dataclasses.replace(node, links=(*node.links, Link("x0", "veth", "external", "x1")))
    bad = dataclasses.replace(dataplane, namespaces=tuple(cross if ns is node else ns for ns in dataplane.namespaces))
    with pytest.raises(PlacementError, match="would join two containers"):
        place(bad)


def test_no_daemon_is_a_skip_that_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NETCONFORMANCE_REQUIRE_BACKENDS", raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    with pytest.raises(BackendUnavailable, match=r"no Docker daemon answers at unix://.*apt-get install docker.io"):
        DockerBackend().preflight()
    with pytest.raises(pytest.skip.Exception, match="backend docker cannot run here: docker backend: no Docker daemon"):
        usable_backend("docker")
    monkeypatch.setenv("NETCONFORMANCE_REQUIRE_BACKENDS", "netns,docker")
    with pytest.raises(pytest.fail.Exception, match="NETCONFORMANCE_REQUIRE_BACKENDS requires it"):
        usable_backend("docker")


def test_no_permission_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = tmp_path / "docker.sock"
    sock.bind(str(path))
    sock.listen(1)
    try:
        os.chmod(path, 0)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        if os.geteuid() == 0:  # root ignores the mode: judge the message on the error itself
            message = daemon._explain(RuntimeError("x").with_traceback(None))
            assert "does not answer" in message
            e = RuntimeError("Error while fetching server API version")
            e.__context__ = PermissionError(errno.EACCES, "Permission denied")
            assert "add your user to the 'docker' group" in daemon._explain(e)
        else:
            with pytest.raises(BackendUnavailable, match="add your user to the 'docker' group"):
                DockerBackend().preflight()
    finally:
        sock.close()


def test_missing_image_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch) -> None:
    class Images:
        def get(self, name: str) -> None:
            import docker.errors

            raise docker.errors.ImageNotFound(name)

    class Client:
        images = Images()

    with pytest.raises(
        BackendUnavailable, match=r"no node image netconformance-node-base:\w+ .*netconformance image build"
    ):
        image.ensure_image(Client())
    monkeypatch.setenv("NETCONFORMANCE_DOCKER_IMAGE", "mine:1")
    with pytest.raises(BackendUnavailable, match="NETCONFORMANCE_DOCKER_IMAGE=mine:1 is not an image"):
        image.ensure_image(Client())


def test_image_hash_follows_the_code() -> None:
    names = [name for name, _ in image.code_files()]
    assert "backends/docker/agent.py" in names and "backends/netns/build.py" in names
    assert any(name.startswith("pyroute2/") for name in names)
    assert image.image_hash() == image.image_hash()
    assert image.image_name().startswith(f"{common.IMAGE_REPOSITORY}:")


def _frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(data)) + data


def test_channel_demultiplexes_docker_frames() -> None:
    ours, theirs = socket.socketpair()
    try:
        channel = AgentChannel(ours, "c")
        stream = _frame(2, b"a warning\n") + _frame(1, b'{"id": 1, "ok": true, "x"') + _frame(1, b": 2}\n")
        for i in range(0, len(stream), 5):  # frames split across reads
            theirs.sendall(stream[i : i + 5])
        assert channel.answer(1, 5) == {"id": 1, "ok": True, "x": 2}
        assert channel.stderr == b"a warning\n"
        theirs.sendall(_frame(1, b'{"id": 2, "ok": false, "error": "boom"}\n'))
        with pytest.raises(AgentError, match="boom"):
            channel.answer(2, 5)
        theirs.sendall(_frame(2, b"Traceback: it broke\n"))
        theirs.close()
        with pytest.raises(AgentError, match=r"(?s)exited; its stderr ends: .*it broke"):
            channel.receive(5)
    finally:
        ours.close()


def test_owner_labels_tell_dead_runs() -> None:
    assert common.owner_alive(common.owner_label())
    host = socket.gethostname()
    assert not common.owner_alive(f"{host}:{2**22 + 7}:1")  # no such pid
    assert not common.owner_alive(f"{host}:{os.getpid()}:1")  # the pid, but another process
    assert common.owner_alive("another-host:1:1")  # cannot tell: left alone
