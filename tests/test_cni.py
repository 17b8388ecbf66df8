"""Real CNI plugins as the wiring, on the real kernel and on the simulator through snapshots.

The end-to-end tests need root and the plugins (Debian's
containernetworking-plugins); they are skipped with the reason otherwise,
and fail instead when NETCONFORMANCE_REQUIRE_BACKENDS names "netns". The
unit tests at the end need neither.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from backends import BackendUnavailable
from backends.netns import NetnsBackend
from backends.netns.build import BuildError
from backends.netns.cni import _error_text, _plugin_config, find_plugin, missing_plugins, missing_plugins_message
from backends.sim import SimBackend, SimError
from backends.sim_snapshot import SimSnapshotBackend
from conformance.cases import Case
from conformance.cli import main
from conformance.dataplane import Dataplane
from conformance.implementations import broken_implementations, get_implementation
from conformance.implementations.cniplugins import CNI_IMPLEMENTATIONS, from_file, noflush_rules
from conformance.probes import Observation, Outcome, Probe
from conformance.reporting import RunMeta
from conformance.reporting.document import rerun_command
from conformance.reporting.reproduce import compare_command, replay_command
from conformance.runner import SpecResult, run_spec
from conformance.specs import all_specs
from conformance.specs.dnat import host_port_scenario
from conformance.strategies import classic_scenario

from live import live_or_skip

REPO = Path(__file__).resolve().parent.parent
NODE = IPv4Address("172.18.0.2")
SVC = IPv4Address("10.96.0.100")
POD_A, POD_B = "pod:default/pod-a", "pod:default/pod-b"


def _preflight_with_plugins() -> None:
    NetnsBackend().preflight()
    missing = [k for k in ("bridge", "ptp", "host-local", "portmap") if find_plugin(k) is None]
    if missing:
        raise BackendUnavailable(f"CNI plugins {missing} not found (apt-get install containernetworking-plugins)")


@pytest.fixture(scope="module")
def privileged(request: pytest.FixtureRequest) -> None:
    live_or_skip(request, "netns", _preflight_with_plugins, what="netns backend with CNI plugins")


@pytest.fixture(scope="module")
def live(privileged: None) -> Iterator[NetnsBackend]:
    b = NetnsBackend()
    yield b
    b.teardown()
    assert b.cni_errors == []


@pytest.fixture(scope="module")
def predicted(live: NetnsBackend) -> SimSnapshotBackend:
    return SimSnapshotBackend(live=live)  # shares the live backend: the snapshot is of what is probed


def _both(
    predictor: SimSnapshotBackend, dataplane: Dataplane, probes: list[Probe]
) -> list[tuple[Observation, Outcome]]:
    """Deploy once, then (sim prediction from the snapshot, the kernel's sample) per probe."""
    predictor.deploy(dataplane)
    live = predictor.live
    assert isinstance(live, NetnsBackend)
    live.reset()
    samples = [obs.outcomes[0][0] for obs in live.observe(probes)]
    return list(zip(predictor.observe(probes), samples, strict=True))


def _agree(pairs: list[tuple[Observation, Outcome]]) -> None:
    bad = [f"{p.probe}: kernel {o.summary()}; sim {p.describe()}" for p, o in pairs if o not in p.possible]
    assert not bad, "\n".join(bad)


def _spec_violations(spec: str, case: Case, pairs: list[tuple[Observation, Outcome]]) -> tuple[list[str], list[str]]:
    """The spec's verdict on the simulator's prediction and on the kernel's samples."""
    check = all_specs()[spec].check
    on_sim = check(case, [p for p, _ in pairs], True)
    on_kernel = check(case, [Observation(p.probe, ((o, 1.0),), exact=False) for p, o in pairs], False)
    return on_sim, on_kernel


HAIRPIN = Case(
    host_port_scenario(),
    (
        Probe(POD_B, SVC, 80, "TCP"),  # pod-b to itself through its Service
        Probe(POD_B, SVC, 80, "UDP"),
        Probe(POD_B, NODE, 8443, "TCP"),  # pod-b to itself through its hostPort
    ),
)
DNAT = Case(
    host_port_scenario(),
    (
        Probe(POD_A, SVC, 80, "TCP"),
        Probe(POD_A, SVC, 80, "UDP"),
        Probe(POD_A, SVC, 81, "TCP"),  # a port the Service lacks
        Probe("external", NODE, 8443, "TCP"),  # hostPort from outside
        Probe(POD_A, NODE, 8443, "TCP"),  # hostPort from another pod
        Probe("node:node-1", NODE, 8443, "TCP"),  # hostPort from the node itself (nat OUTPUT)
    ),
)


@pytest.mark.parametrize(
    ("implementation", "hairpin_fails"),
    [
        ("cni-bridge", False),
        ("cni-bridge-no-hairpin", True),
        ("cni-ptp", False),
        ("cni-bridge-ipmasq", False),
        ("cni-bridge-masq-first", True),
    ],
)
def test_hairpin_spec_tells_profiles_apart(
    predicted: SimSnapshotBackend, implementation: str, hairpin_fails: bool
) -> None:
    dataplane = get_implementation(implementation).render(HAIRPIN.scenario)
    pairs = _both(predicted, dataplane, list(HAIRPIN.probes))
    _agree(pairs)
    on_sim, on_kernel = _spec_violations("hairpin", HAIRPIN, pairs)
    assert bool(on_sim) == hairpin_fails, on_sim
    assert bool(on_kernel) == hairpin_fails, on_kernel
    if implementation == "cni-bridge-masq-first":
        # Only the ClusterIP hairpin: portmap's own hostPort masquerade sits above the CNI chain.
        assert all(str(NODE) not in v for v in on_kernel), on_kernel
    if implementation == "cni-bridge-no-hairpin":
        assert any(f"{NODE}:8443" in v for v in on_kernel), "hostPort hairpin needs hairpin mode too"


@pytest.mark.parametrize("implementation", ["cni-bridge", "cni-ptp"])
def test_dnat_spec_covers_host_ports(predicted: SimSnapshotBackend, implementation: str) -> None:
    dataplane = get_implementation(implementation).render(DNAT.scenario)
    pairs = _both(predicted, dataplane, list(DNAT.probes))
    _agree(pairs)
    assert _spec_violations("dnat", DNAT, pairs) == ([], [])
    served = {str(p.probe): o.served_by for p, o in pairs}
    assert served[str(Probe("external", NODE, 8443, "TCP"))] == "default/pod-b"


def test_masquerade_order_is_the_cause(predicted: SimSnapshotBackend) -> None:
    """The same conflist, two orders: the bridge plugin's ACCEPT ahead of KUBE-POSTROUTING loses hairpin SNAT."""
    probe = Probe(POD_B, SVC, 80, "TCP")
    outcomes = {}
    for name in ("cni-bridge-ipmasq", "cni-bridge-masq-first"):
        impl = get_implementation(name)
        assert json.loads(impl.render(HAIRPIN.scenario).netns("node-node-1").cni[0].conflist)["plugins"][0]["ipMasq"]
        [(prediction, sample)] = _both(predicted, impl.render(HAIRPIN.scenario), [probe])
        assert sample in prediction.possible
        snapshot = predicted.snapshot
        assert snapshot is not None
        postrouting = [
            line for line in snapshot.netns("node-node-1").iptables.splitlines() if line.startswith("-A POSTROUTING")
        ]
        kube = next(i for i, line in enumerate(postrouting) if "KUBE-POSTROUTING" in line)
        cni = next(i for i, line in enumerate(postrouting) if "-s 10.244.1.11/32" in line)
        assert (kube < cni) == (name == "cni-bridge-ipmasq"), postrouting
        outcomes[name] = sample
    assert outcomes["cni-bridge-ipmasq"].verdict == "delivered"
    assert outcomes["cni-bridge-ipmasq"].server_saw == IPv4Address("10.244.1.1")
    assert outcomes["cni-bridge-masq-first"].verdict == "dropped"


def test_ipmasq_snats_pods_on_other_nodes(predicted: SimSnapshotBackend) -> None:
    """bridge ipMasq ACCEPTs only its own node's subnet: pod-to-pod across nodes is SNATed (no-NAT broken)."""
    s = classic_scenario()
    node2 = dataclasses.replace(
        s.nodes[0], name="node-2", ip=IPv4Address("172.18.0.3"), pod_cidr=IPv4Network("10.244.2.0/24")
    )
    pod_c = dataclasses.replace(s.pods[0], name="pod-c", node="node-2", ip=IPv4Address("10.244.2.10"))
    s = dataclasses.replace(s, nodes=(*s.nodes, node2), pods=(*s.pods, pod_c))
    probe = Probe(POD_A, pod_c.ip, 8080, "TCP")
    for name, saw in (("cni-bridge", IPv4Address("10.244.1.10")), ("cni-bridge-ipmasq", NODE)):
        [(prediction, sample)] = _both(predicted, get_implementation(name).render(s), [probe])
        assert sample in prediction.possible
        assert sample.server_saw == saw, (name, sample.summary())


def test_ptp_routes_each_pod_by_a_host_route(predicted: SimSnapshotBackend) -> None:
    _both(predicted, get_implementation("cni-ptp").render(classic_scenario()), [Probe(POD_A, SVC, 80, "TCP")])
    snap = predicted.snapshot
    assert snap is not None
    node = snap.netns("node-node-1")
    assert {str(r.dst) for r in node.routes} >= {"10.244.1.10/32", "10.244.1.11/32"}
    assert ("eth0", IPv4Interface("10.244.1.10/24")) in snap.netns("pod-default-pod-a").no_prefix_route
    assert not [link for link in node.links if link.kind == "bridge"]


def test_delete_undoes_what_add_did(privileged: None) -> None:
    b = NetnsBackend()
    try:
        b.deploy(get_implementation("cni-bridge").render(host_port_scenario()))
        before = b.snapshot()
        assert "CNI-HOSTPORT-DNAT" in before.netns("node-node-1").iptables
        assert b.cni_delete() == []
        after = b.snapshot()
        assert "CNI-DN-" not in after.netns("node-node-1").iptables
        assert after.netns("pod-default-pod-a").addresses == ()
        assert not [lk for lk in after.netns("node-node-1").links if lk.kind == "veth"]
        # host-local released the addresses: the same pods attach again.
        b.deploy(get_implementation("cni-bridge").render(host_port_scenario()))
        assert b.snapshot().netns("pod-default-pod-b").addresses == (("eth0", IPv4Interface("10.244.1.11/24")),)
    finally:
        b.teardown()
    assert b.cni_errors == []


def test_ipam_state_stays_in_the_run_directory(live: NetnsBackend) -> None:
    live.deploy(get_implementation("cni-bridge").render(classic_scenario()))
    record = live._record
    assert record is not None
    stored = list((Path(record.run_dir) / "cni-ipam").rglob("10.244.1.*"))
    assert sorted(p.name for p in stored) == ["10.244.1.10", "10.244.1.11"]


# -- no privileges needed ------------------------------------------------------------


def test_simulator_refuses_cni_attachments_and_says_what_to_do() -> None:
    dataplane = get_implementation("cni-bridge").render(classic_scenario())
    with pytest.raises(SimError, match="snapshot"):
        SimBackend().deploy(dataplane)


def test_cni_implementations_are_not_plain_sim_mutants() -> None:
    names = {i.name for i in broken_implementations()}
    assert not names & {i.name for i in CNI_IMPLEMENTATIONS}
    assert {"cni-bridge-no-hairpin", "cni-bridge-masq-first"} <= {
        i.name for i in broken_implementations(cni_plugins=True)
    }


def test_render_asks_for_the_scenarios_addresses_and_host_ports() -> None:
    s = host_port_scenario()
    node = get_implementation("cni-bridge").render(s).netns("node-node-1")
    assert node.iptables_noflush and node.links == ()
    by_pod = {a.netns: a for a in node.cni}
    pod_b = by_pod["pod-default-pod-b"]
    assert ("IP", "10.244.1.11") in pod_b.args
    assert json.loads(pod_b.capability_args) == {
        "portMappings": [{"hostPort": 8443, "containerPort": 8080, "protocol": "tcp"}]
    }
    ranges = json.loads(pod_b.conflist)["plugins"][0]["ipam"]["ranges"]
    assert ranges == [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]]
    # No hostPort rules of the reference's own: portmap writes them.
    assert "CNI-HOSTPORT" not in node.iptables


def test_noflush_rules_insert_or_append_in_builtin_chains() -> None:
    text = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-X - [0:0]\n-A PREROUTING -j KUBE-X\n-A PREROUTING -j KUBE-Y\n"
    text += "-A KUBE-X -j RETURN\nCOMMIT\n"
    first = noflush_rules(text, proxy_first=True)
    assert "-I PREROUTING 1 -j KUBE-X\n-I PREROUTING 2 -j KUBE-Y\n" in first
    assert ":PREROUTING" not in first and ":KUBE-X - [0:0]" in first and "-A KUBE-X -j RETURN" in first
    after = noflush_rules(text, proxy_first=False)
    assert "-A PREROUTING -j KUBE-X\n-A PREROUTING -j KUBE-Y\n" in after


def test_plugin_config_follows_the_spec(tmp_path: Path) -> None:
    conflist = {"cniVersion": "1.0.0", "name": "net"}
    plugin = {"type": "portmap", "capabilities": {"portMappings": True}, "ipam": {"type": "host-local"}}
    caps = {"portMappings": [{"hostPort": 1}], "bandwidth": {"rate": 1}}
    conf = _plugin_config(conflist, plugin, {"cniVersion": "1.0.0"}, caps, tmp_path)
    assert conf["cniVersion"] == "1.0.0" and conf["name"] == "net"
    assert conf["prevResult"] == {"cniVersion": "1.0.0"}
    assert conf["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}  # only declared capabilities
    assert conf["ipam"]["dataDir"] == str(tmp_path)
    assert "prevResult" not in _plugin_config(conflist, plugin, None, {}, tmp_path)


def test_user_conflist_from_the_command_line(
    privileged: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CNI author's flow: `run --implementation conflist:PATH` on netns, and the replay the report prints."""
    conflist = tmp_path / "my net.conflist"  # a space: commands must quote the path
    conflist.write_text(
        (REPO / "tests" / "cni" / "bridge.conflist").read_text().replace('"hairpinMode": true', '"hairpinMode": false')
    )
    name = f"conflist:{conflist}"
    argv = ["run", "--backend", "netns", "--spec", "hairpin", "--implementation", name, "--examples", "5"]
    assert main([*argv, "--seed", "1", "--report-dir", str(tmp_path / "runs")]) == 1  # hairpinMode false is caught
    out = capsys.readouterr().out
    (results,) = (tmp_path / "runs").glob("*/results.json")
    rerun = shlex.split(json.loads(results.read_text())["results"][0]["rerun"])
    assert rerun[rerun.index("--implementation") + 1] == name
    replay = next(line for line in out.splitlines() if line.startswith("reproduce: "))[len("reproduce: ") :]
    words = shlex.split(replay)
    assert words[words.index("--implementation") + 1] == name and Path(words[2]).is_file()
    assert main(words[1:]) == 1  # the printed command replays the failure
    assert "expected served by one of ['default/pod-b'], reply from 10.96.0.100" in capsys.readouterr().out


def test_user_conflist_plugins_and_failures_are_said_without_traceback(
    privileged: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "typo.conflist"
    typo.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "brdge"}]}))
    monkeypatch.setenv("NETCONFORMANCE_CNI_PATH", f"{tmp_path}/nothing:/usr/lib/cni")
    argv = ["run", "--backend", "netns", "--implementation", f"conflist:{typo}", "--report-dir", str(tmp_path / "r")]
    assert main(argv) == 2  # before anything is built: no report directory either
    err = capsys.readouterr().err
    assert f"CNI plugin(s) brdge not found in CNI_PATH '{tmp_path}/nothing:/usr/lib/cni'" in err
    assert "apt-get" not in err  # not a Debian plugin: a typo, or the user's own binary elsewhere
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("NETCONFORMANCE_CNI_PATH", "")  # set but empty: said, not searched as nothing
    assert main(argv) == 2
    assert "CNI plugin(s) brdge: NETCONFORMANCE_CNI_PATH is set but names no directory" in capsys.readouterr().err
    monkeypatch.delenv("NETCONFORMANCE_CNI_PATH")

    # A plugin whose ADD fails (macvlan on a master that is not there): the plugin's own words, exit 2.
    failing = tmp_path / "failing.conflist"
    plugin = {"type": "macvlan", "master": "nosuchlink0", "ipam": {"type": "host-local", "subnet": "{podCIDR}"}}
    failing.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [plugin]}))
    assert main(["snapshot", "--implementation", f"conflist:{failing}", "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netconformance: the backend could not build the dataplane: ") and "macvlan" in err
    assert "Traceback" not in err


def test_user_conflist_with_placeholders(tmp_path: Path) -> None:
    path = tmp_path / "10-mynet.conflist"
    path.write_text((REPO / "tests" / "cni" / "bridge.conflist").read_text())
    impl = from_file(path)
    node = impl.render(classic_scenario()).netns("node-node-1")
    assert "10.244.1.0/24" in node.cni[0].conflist and "{podCIDR}" not in node.cni[0].conflist
    path.write_text('{"cniVersion": "1.0.0", "name": "x", "type": "bridge"}')
    with pytest.raises(ValueError, match="plugins"):
        from_file(path)


# -- a plugin author's mistakes, said as such (wrapper plugins around Debian's) -------------------------------------


def _wrapper(directory: Path, name: str, body: str) -> Path:
    """An executable plugin `name` in `directory`: a shell script (its CNI_* environment and stdin are the plugin's)."""
    directory.mkdir(exist_ok=True)
    script = directory / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def _conflist(path: Path, *plugins: dict[str, object]) -> Path:
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "wrapped", "plugins": list(plugins)}))
    return path


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_an_ipam_that_ignores_the_asked_address_is_said(
    privileged: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """host-local without CNI_ARGS hands out the first free address: not the scenario's, and said so."""
    host_local = find_plugin("host-local")
    assert host_local is not None
    _wrapper(tmp_path / "bin", "ignores-ip", f"unset CNI_ARGS\nexec {host_local}\n")
    monkeypatch.setenv("NETCONFORMANCE_CNI_PATH", f"{tmp_path / 'bin'}:{host_local.parent}")
    # Not host-local by type: its dataDir is set here, never the host's /var/lib/cni.
    ranges = [[{"subnet": "{podCIDR}", "gateway": "{gateway}"}]]
    ipam = {"type": "ignores-ip", "ranges": ranges, "dataDir": str(tmp_path / "ipam")}
    path = _conflist(tmp_path / "n.conflist", {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipam": ipam})
    assert _build_error(path) == (
        "node-node-1: CNI ADD for pod-default-pod-a: the plugin gave 10.244.1.2/24, the scenario needs 10.244.1.10:"
        " the IPAM must honour CNI_ARGS IP= (host-local does)"
    )
    # On the command line: could not run (exit 2), in those words, no probe judged. The wrapped host-local's state
    # is the test's own: the failed build ran no DEL.
    shutil.rmtree(tmp_path / "ipam")
    argv = ["run", "--backend", "netns", "--spec", "connectivity", "--implementation", f"conflist:{path}"]
    assert main([*argv, "--examples", "2", "--seed", "1", "--report-dir", str(tmp_path / "r")]) == 2
    out = capsys.readouterr().out
    assert re.search(r"could not run: node-\S+: CNI ADD for \S+: the plugin gave 10\.244\.\d+\.2/24, the scenario", out)
    assert "0 passed, 0 failed, 1 could not run" in out


def _build_error(conflist: Path) -> str:
    """What the netns backend says deploying the classic scenario with `conflist` (it must refuse it)."""
    b = NetnsBackend()
    try:
        with pytest.raises(BuildError) as raised:
            b.deploy(from_file(conflist).render(classic_scenario()))
    finally:
        b.teardown()
    return str(raised.value)


def test_a_result_without_addresses_is_said(privileged: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _wrapper(tmp_path / "bin", "no-ips", 'cat >/dev/null\necho \'{"cniVersion": "1.0.0", "interfaces": []}\'\n')
    monkeypatch.setenv("NETCONFORMANCE_CNI_PATH", str(tmp_path / "bin"))
    path = _conflist(tmp_path / "n.conflist", {"type": "no-ips"})
    assert _build_error(path).startswith("node-node-1: CNI ADD for pod-default-pod-a: the plugin gave no address,")


@pytest.mark.parametrize("how", ["timeout", "ctrl-c"])
def test_a_plugin_that_hangs_is_killed_with_what_it_started(
    how: str, privileged: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plugin runs in its own session: at its timeout the backend kills the whole group; on Ctrl-C too (the
    # terminal's SIGINT never reaches the plugin), or teardown would wait out the timeout.
    pid_file = tmp_path / "child.pid"
    _wrapper(tmp_path / "bin", "hangs", f"sleep 600 &\necho $! > {pid_file}\nwait\n")
    monkeypatch.setenv("NETCONFORMANCE_CNI_PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("NETCONFORMANCE_CNI_TIMEOUT", "1" if how == "timeout" else "60")
    path = _conflist(tmp_path / "n.conflist", {"type": "hangs"})
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def interrupt_once_started() -> None:
        deadline = time.monotonic() + 20
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(main_thread, signal.SIGINT)

    expected: type[BaseException] = BuildError if how == "timeout" else KeyboardInterrupt
    b = NetnsBackend()
    child = 0
    try:
        if how == "ctrl-c":
            threading.Thread(target=interrupt_once_started, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(expected) as raised:
            b.deploy(from_file(path).render(classic_scenario()))
        child = int(pid_file.read_text())
        if how == "timeout":
            assert str(raised.value).startswith("node-node-1: CNI hangs ADD for pod-default-pod-a: no answer within 1s")
            assert "NETCONFORMANCE_CNI_TIMEOUT" in str(raised.value)
        else:
            assert time.monotonic() - started < 30, "the interrupt waited for the plugin's timeout"
        assert not _alive(child), "the plugin's child outlived it (in the node's namespace)"
    finally:
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)  # not left behind by a failing run
        b.teardown()


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf"])
def test_the_plugin_timeout_must_be_a_positive_number(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NETCONFORMANCE_CNI_TIMEOUT", value)
    expected = f"NETCONFORMANCE_CNI_TIMEOUT={value!r}: expected a number of seconds greater than 0"
    with pytest.raises(BackendUnavailable, match=re.escape(expected)):
        NetnsBackend()
    argv = ["run", "--backend", "netns", "--implementation", f"conflist:{REPO / 'tests' / 'cni' / 'bridge.conflist'}"]
    assert main([*argv, "--report-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_a_plugin_that_is_not_executable_is_said_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = _wrapper(tmp_path / "bin", "mine", "exit 0\n")
    plugin.chmod(0o644)
    monkeypatch.setenv("NETCONFORMANCE_CNI_PATH", f"{tmp_path / 'bin'}:{tmp_path / 'other'}")
    assert find_plugin("mine") is None and missing_plugins(["mine"]) == []
    message = missing_plugins_message(["mine", "brdge"])
    assert message is not None
    assert f"{plugin} is not executable" in message
    assert "CNI plugin(s) brdge not found" in message and "mine not found" not in message
    assert missing_plugins_message(["mine"]) == f"{plugin} is not executable (chmod +x it)"
    plugin.chmod(0o755)
    assert missing_plugins_message(["mine"]) is None


@pytest.mark.parametrize("backend", ["netns", "sim-snapshot"])
def test_a_failing_del_is_said_once_on_stderr_and_in_the_results(
    backend: str,
    privileged: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bridge = find_plugin("bridge")
    assert bridge is not None
    body = 'if [ "$CNI_COMMAND" = DEL ]; then\n'
    body += '  echo \'{"cniVersion": "1.0.0", "code": 999, "msg": "cannot release the lease"}\'; exit 1\nfi\n'
    _wrapper(tmp_path / "bin", "bridge-del-fails", f"{body}exec {bridge}\n")
    monkeypatch.setenv("NETCONFORMANCE_CNI_PATH", f"{tmp_path / 'bin'}:{bridge.parent}")
    path = tmp_path / "n.conflist"  # the example, passing every spec, but for the plugin's name
    path.write_text(
        (REPO / "tests" / "cni" / "bridge.conflist")
        .read_text()
        .replace('"type": "bridge"', '"type": "bridge-del-fails"')
    )
    argv = ["run", "--backend", backend, "--spec", "connectivity,hairpin", "--implementation", f"conflist:{path}"]
    assert main([*argv, "--examples", "2", "--seed", "1", "--report-dir", str(tmp_path / "r")]) == 0  # verdict kept
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "cannot release the lease" in line]
    assert said and len(said) == len(set(said)), err
    assert all(
        re.fullmatch(
            rf"netconformance: {backend}: warning: node-\S+: CNI bridge-del-fails DEL for \S+: exit 1: "
            r"CNI error 999: cannot release the lease",
            line,
        )
        for line in said
    ), said
    (results,) = (tmp_path / "r").glob("*/results.json")
    notes = [n for r in json.loads(results.read_text())["results"] for n in r["notes"]]
    warnings = {n for n in notes if n.startswith("warning: ")}
    assert warnings and {f"netconformance: {backend}: {w}" for w in warnings} == set(said)


def test_a_plugin_error_keeps_its_cni_error_code() -> None:
    assert _error_text(b'{"code": 11, "msg": "try again", "details": "lease busy"}', b"") == (
        "CNI error 11: try again (lease busy)"
    )
    assert _error_text(b'{"code": 7, "msg": "bad"}', b"warn\n") == "CNI error 7: bad; warn"
    assert _error_text(b'{"code": 4}', b"") == "CNI error 4"
    assert _error_text(b"\xffnot JSON\n", b"") == "\ufffdnot JSON"


def test_plugin_output_is_said_as_text(privileged: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _wrapper(tmp_path / "bin", "chatty", "cat >/dev/null\necho 'hello, this is not JSON'\n")
    monkeypatch.setenv("NETCONFORMANCE_CNI_PATH", str(tmp_path / "bin"))
    path = _conflist(tmp_path / "n.conflist", {"type": "chatty"})
    message = _build_error(path)
    assert message.startswith("node-node-1: CNI chatty ADD for pod-default-pod-a: result is not JSON (")
    assert message.endswith("): hello, this is not JSON") and "b'" not in message


# -- what the run says about them ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Failing:
    """A backend whose deployments raise `error`, and whose every teardown says `warning` (as a DEL can)."""

    error: Exception
    warning: str | None = None
    name: str = "failing"
    exact: bool = False

    def preflight(self) -> None:
        pass

    def deploy(self, dataplane: Dataplane) -> None:
        raise self.error

    def observe(self, probes: Sequence[Probe]) -> list[Observation]:
        raise AssertionError("never deployed")

    def reset(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def take_warnings(self) -> list[str]:
        return [] if self.warning is None else [self.warning]


def test_could_not_run_names_no_class_for_the_projects_own_errors() -> None:
    spec, impl = all_specs()["hairpin"], get_implementation("cni-bridge")
    said = "node-node-1: CNI bridge ADD for pod-default-pod-a: exit 1: failed to allocate"
    r = run_spec(spec, Failing(BuildError(said)), impl, examples=1, seed=1)
    assert r.error == said
    assert run_spec(spec, Failing(BackendUnavailable("gone")), impl, examples=1, seed=1).error == "gone"
    # An unexpected one keeps its class: it is a bug to report, and the name helps.
    assert run_spec(spec, Failing(KeyError("x")), impl, examples=1, seed=1).error == "KeyError: 'x'"


def test_teardown_warnings_are_notes_said_once_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conformance import cli

    backend = Failing(BuildError("could not build"), "node-node-1: CNI x DEL for pod-a: exit 1: no")
    monkeypatch.setattr(cli, "get_backend", lambda name: backend)
    argv = ["run", "--backend", "failing", "--spec", "hairpin,dnat", "--examples", "1", "--seed", "1"]
    assert main([*argv, "--report-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("warning: node-node-1: CNI x DEL for pod-a: exit 1: no") == 1, captured.err
    assert "warning:" not in captured.out
    (results,) = tmp_path.glob("*/results.json")
    notes = [r["notes"] for r in json.loads(results.read_text())["results"]]
    assert notes == [["warning: node-node-1: CNI x DEL for pod-a: exit 1: no"]] * 2


def test_printed_commands_carry_the_plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    impl = f"conflist:{tmp_path / 'my net.conflist'}"
    case = tmp_path / "case.yaml"
    r = SpecResult("hairpin", "netns", impl, 1, 0.1, 7)
    meta = RunMeta.begin([], seed=7, examples=3)

    def commands() -> list[str]:
        return [
            rerun_command(r, meta),
            replay_command(case, spec="hairpin", backend="netns", implementation=impl),
            compare_command(case, predictor="sim-snapshot", backend="netns", implementation=impl),
        ]

    monkeypatch.delenv("NETCONFORMANCE_CNI_PATH", raising=False)
    assert all(c.startswith("netconformance ") for c in commands())
    monkeypatch.setenv("NETCONFORMANCE_CNI_PATH", "/my plugins:/usr/lib/cni")
    for command in commands():
        # As a shell reads it: an assignment (one word, unquoted name), then the command.
        assert command.startswith("NETCONFORMANCE_CNI_PATH='/my plugins:/usr/lib/cni' netconformance "), command
        words = shlex.split(command)
        assert words[0] == "NETCONFORMANCE_CNI_PATH=/my plugins:/usr/lib/cni" and impl in words
    # Only a conflist's plugins come from there: the built-in implementations say nothing of it.
    r = SpecResult("hairpin", "netns", "cni-bridge", 1, 0.1, 7)
    assert rerun_command(r, meta).startswith("netconformance run ")
