"""The netns backend against the simulator, and its promise to leave nothing behind.

Needs root (skipped otherwise, with the preflight's reason); fails instead
when NETCONFORMANCE_REQUIRE_BACKENDS names "netns". The unit tests at the
end need no privileges.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from backends import BackendUnavailable
from backends.netns import NetnsBackend, cleanup, records
from backends.netns.build import is_device_sysctl, restore_text, table_blocks
from conformance.implementations import get_implementation
from conformance.loader import load_scenario
from conformance.model import ServicePort
from conformance.probes import Probe
from conformance.strategies import classic_scenario

from live import (
    CLASSIC_PROBES,
    MEASURED,
    NODE,
    POD_A,
    POLICIES,
    REPO,
    B,
    assert_like_sim,
    assert_reset_empties_recent_lists,
    classic_with_node_port,
    live_or_skip,
    sampled,
    simulated,
    terminate_once_started,
    with_rules,
)


@pytest.fixture(scope="module")
def privileged(request: pytest.FixtureRequest) -> None:
    live_or_skip(request, "netns", NetnsBackend().preflight, selected_only=True)


@pytest.fixture(scope="module")
def backend(privileged: None) -> Iterator[NetnsBackend]:
    b = NetnsBackend()
    yield b
    b.teardown()


@pytest.mark.parametrize("implementation", ["reference", "hairpin-mode-off", "bridge-nf-off"])
def test_classic_matches_simulator(backend: NetnsBackend, implementation: str) -> None:
    dataplane = get_implementation(implementation).render(classic_with_node_port())
    samples = sampled(backend, dataplane, CLASSIC_PROBES)
    assert_like_sim(dataplane, CLASSIC_PROBES, samples, who="kernel")
    if implementation == "reference":
        delivered = {o.verdict for o in samples[:6] + samples[8:12]}
        assert delivered == {"delivered"}, samples
        hairpin = samples[4]
        assert hairpin.served_by == "default/pod-b" and hairpin.server_saw == IPv4Address("10.244.1.1")
        assert samples[6].verdict == "refused" and samples[7].verdict == "refused"


@pytest.mark.parametrize("broken", ["hairpin-mode-off", "bridge-nf-off"])
def test_broken_differs_where_simulator_says(backend: NetnsBackend, broken: str) -> None:
    scenario = classic_with_node_port()
    good, bad = (get_implementation(name).render(scenario) for name in ("reference", broken))
    sim_good, sim_bad = simulated(good, CLASSIC_PROBES), simulated(bad, CLASSIC_PROBES)
    kernel_good, kernel_bad = sampled(backend, good, CLASSIC_PROBES), sampled(backend, bad, CLASSIC_PROBES)
    differing = 0
    for sg, sb, kg, kb in zip(sim_good, sim_bad, kernel_good, kernel_bad, strict=True):
        if not set(sg.possible) & set(sb.possible):  # the sim says: always different
            assert kg != kb, f"{sg.probe}: {broken} should differ from reference"
            differing += 1
        elif set(sg.possible) == set(sb.possible) and len(sg.possible) == 1:
            assert kg == kb, f"{sg.probe}: {broken} should behave like reference"
    assert differing, f"the simulator predicts no difference for {broken}"


def _root_snapshot() -> dict[str, str]:
    def run(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout

    def rules(cmd: str) -> str:  # without the timestamp comments and counters
        out = run(cmd)
        return "\n".join(line.split(" [")[0] for line in out.splitlines() if not line.startswith("#"))

    return {
        "links": run("ip", "-o", "link", "show"),
        "addresses": run("ip", "-o", "addr", "show"),
        "routes": run("ip", "route", "show", "table", "all"),
        "rules": run("ip", "rule", "show"),
        "netns": run("ip", "netns", "list"),
        "iptables-legacy": rules("iptables-legacy-save"),
        "sysctls": "".join(
            Path("/proc/sys", *key.split(".")).read_text()
            for key in ("net.ipv4.ip_forward", "net.ipv4.icmp_ratelimit", "net.bridge.bridge-nf-call-iptables")
        ),
    }


def test_root_namespace_unchanged(privileged: None) -> None:
    before = _root_snapshot()
    b = NetnsBackend()
    try:
        sampled(b, get_implementation("reference").render(classic_with_node_port()), CLASSIC_PROBES[:4])
        during = _root_snapshot()
        record = json.loads((records.STATE_DIR / f"{b.run_id}.json").read_text())
        assert all(name.startswith(f"nc-{b.run_id}-") for name in record["netns"])
        assert len(record["netns"]) == 5
    finally:
        b.teardown()
    b.teardown()  # safe twice
    after = _root_snapshot()
    # Other runs (another pytest, a CLI run) may add or remove their own
    # namespaces meanwhile: judge `ip netns list` by this run's names only.
    ours = f"nc-{b.run_id}-"
    assert sum(line.startswith(ours) for line in during.pop("netns").splitlines()) == 5
    assert not any(line.startswith(ours) for line in after.pop("netns").splitlines())
    before.pop("netns")
    assert during == before
    assert after == before
    assert not (records.STATE_DIR / f"{b.run_id}.json").exists()


CHILD = """
import os, signal, sys
from backends.netns import NetnsBackend
from conformance.implementations import get_implementation
from conformance.strategies import classic_scenario
b = NetnsBackend()
b.deploy(get_implementation("reference").render(classic_scenario()))
print(b.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_cleanup_after_sigkill(privileged: None) -> None:
    child = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    run_id = child.stdout.strip()
    prefix = f"nc-{run_id}-"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert sum(prefix in line for line in listed.splitlines()) == 5  # atexit never ran
    deleted = cleanup()
    # 5, unless a concurrent run's cleanup() got to this dead run first.
    assert sum(name.startswith(prefix) for name in deleted) in (0, 5)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert prefix not in listed
    assert not (records.STATE_DIR / f"{run_id}.json").exists()
    assert not (records.STATE_DIR / run_id).exists()
    assert cleanup(run_id) == []


def _netns_names() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


SPECS_TEST = "tests/test_specs.py::test_reference_satisfies_spec"
# A long run on netns each way it is started: the CLI, and pytest (as tox runs it).
TERMINATED_RUNS = {
    "cli": (
        ["-m", "conformance.cli", "run", "--backend", "netns", "--spec", "connectivity", "--examples", "100000"],
        128 + signal.SIGTERM,
        "netconformance: terminated by SIGTERM; tearing down what this run built",
    ),
    # Pods wired by CNI plugins: teardown runs CNI DEL first, which cannot run from atexit after an interrupt.
    "compare-cni": (
        [
            "-m",
            "conformance.cli",
            "compare",
            "--backends",
            "sim-snapshot,netns",
            "--implementation",
            "cni-bridge",
            "--examples",
            "100000",
        ],
        128 + signal.SIGTERM,
        "netconformance: terminated by SIGTERM; tearing down what this run built",
    ),
    "pytest": (
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--backend", "netns", "--nc-examples", "100000", SPECS_TEST],
        pytest.ExitCode.INTERRUPTED,
        "Terminated: terminated by SIGTERM",
    ),
}


def _record_pid(path: Path) -> int | None:
    try:
        return records.load(path).pid
    except (OSError, ValueError, KeyError):  # being written, or gone again
        return None


@pytest.mark.parametrize("how", list(TERMINATED_RUNS))
def test_sigterm_mid_run_tears_down(how: str, privileged: None, tmp_path: Path) -> None:
    """A cancelled CI job's SIGTERM: the run unwinds, removes exactly its namespaces and says so."""
    args, code, message = TERMINATED_RUNS[how]
    before = set(records.STATE_DIR.glob("*.json")) if records.STATE_DIR.is_dir() else set()

    def started(pid: int) -> str | None:
        # The record is written before anything is created; then wait for its namespaces. Only this child's
        # record: a run of someone else's meanwhile must not pass for it (seen once: SIGTERM then came too early).
        new = set(records.STATE_DIR.glob("*.json")) - before if records.STATE_DIR.is_dir() else set()
        ours = [path for path in new if _record_pid(path) == pid]
        run_id = ours[0].stem if len(ours) == 1 else None
        return run_id if run_id and any(n.startswith(f"nc-{run_id}-") for n in _netns_names()) else None

    env = {**os.environ, "NETCONFORMANCE_REPORT_DIR": str(tmp_path)}
    args = [*args, "--report-dir", str(tmp_path)] if "conformance.cli" in args else args
    done = terminate_once_started(args, started, env=env)
    assert done.returncode == code, done.output
    assert message in done.output and "Traceback" not in done.output and "Exception ignored" not in done.output
    assert not [n for n in _netns_names() if n.startswith(f"nc-{done.run_id}-")]
    assert not (records.STATE_DIR / f"{done.run_id}.json").exists()
    if "conformance.cli" in args:
        assert list(tmp_path.iterdir()) == []  # no empty report directory either


def _policy_probes() -> list[Probe]:
    web, db, svc, node1, node2 = (
        IPv4Address(a) for a in ("10.244.1.10", "10.244.2.10", "10.96.0.10", "172.18.0.2", "172.18.0.3")
    )
    return [
        Probe("pod:other/client", web, 8080, "TCP"),
        Probe("pod:other/client", svc, 80, "TCP"),
        Probe("pod:default/web", db, 5432, "TCP"),
        Probe("pod:default/db", web, 8080, "TCP"),
        Probe("external", node1, 30080, "TCP"),
        Probe("external", node2, 30080, "TCP"),
        Probe("node:node-2", svc, 80, "TCP"),
        Probe("pod:default/web", svc, 80, "TCP"),
    ]


def test_rules_swap_behaves_like_fresh_deploy(backend: NetnsBackend) -> None:
    scenario = load_scenario(POLICIES)
    no_policies = dataclasses.replace(scenario, policies=())
    sequence = [
        get_implementation("reference").render(scenario),
        get_implementation("policy-before-dnat").render(scenario),  # adds a mangle table
        get_implementation("reference").render(scenario),  # ... which must go again
        get_implementation("reference").render(no_policies),  # only the filter table changes
        get_implementation("etp-local-masquerade").render(scenario),
    ]
    probes = _policy_probes()
    fresh = NetnsBackend(reuse=False)
    try:
        backend.deploy(sequence[0])
        swaps = backend.swaps
        for dataplane in sequence:
            reused = sampled(backend, dataplane, probes)
            assert_like_sim(dataplane, probes, reused, who="kernel")
            assert reused == sampled(fresh, dataplane, probes), dataplane.implementation
        assert backend.swaps - swaps == len(sequence)
    finally:
        fresh.teardown()


def test_nth_counter_outlives_examples_and_the_simulator_allows_every_place(backend: NetnsBackend) -> None:
    # Every second new connection to pod-b is reset: the kernel's counter goes
    # on across examples (a reset flushes conntrack, not the counter).
    dataplane = with_rules(
        "-A INPUT -p tcp --dport 8080 --syn -m statistic --mode nth --every 2 --packet 0"
        " -j REJECT --reject-with tcp-reset\n"
    )
    probes = [Probe(POD_A, B, 8080, "TCP")]
    verdicts = []
    for _ in range(4):
        samples = sampled(backend, dataplane, probes)
        assert_like_sim(dataplane, probes, samples, who="kernel")
        verdicts.append(samples[0].verdict)
    assert verdicts in (["refused", "delivered"] * 2, ["delivered", "refused"] * 2)
    [predicted] = simulated(dataplane, probes)
    assert {o.verdict: p for o, p in predicted.outcomes} == {"refused": 0.5, "delivered": 0.5}


# Rules on the node that look at what the simulator once lost or refused on the way: the bridge port a frame came
# in on (kept by br_netfilter through the routed INPUT, FORWARD and POSTROUTING hooks), the ASSURED status the
# handshake's last ACK sets, an address type limited to the incoming device. Each drops some of the classic
# probes; the simulator must say which.
NODE_MANGLE_RULES = {
    "physdev-in-forward": "-A FORWARD -m physdev --physdev-is-in -j DROP\n",
    "physdev-in-input": "-A INPUT -m physdev --physdev-is-in -j DROP\n",
    "physdev-routed-postrouting": "-A POSTROUTING -m physdev --physdev-is-in ! --physdev-is-bridged -j DROP\n",
    "physdev-bridged-postrouting": "-A POSTROUTING -m physdev --physdev-is-bridged --physdev-in veth+ -j DROP\n",
    "assured-forward": "-A FORWARD -m conntrack --ctstatus ASSURED -j DROP\n",
    "assured-input": "-A INPUT -p tcp -m conntrack --ctstatus ASSURED -j DROP\n",
    "addrtype-limit-iface": "-A INPUT -m addrtype --dst-type LOCAL --limit-iface-in -j DROP\n",
}


@pytest.mark.parametrize("name", list(NODE_MANGLE_RULES))
def test_node_rules_the_simulator_once_missed_match_it(backend: NetnsBackend, name: str) -> None:
    dataplane = with_rules(
        NODE_MANGLE_RULES[name], netns="node-node-1", table="mangle", scenario=classic_with_node_port()
    )
    samples = sampled(backend, dataplane, CLASSIC_PROBES)
    assert_like_sim(dataplane, CLASSIC_PROBES, samples, who="kernel")
    assert any(s.verdict != "delivered" for s in samples[:6] + samples[8:12]), samples  # the rule did bite


# How a node answers with a TCP reset, and what happens to an ACK it cannot send: node filter rules, one probe
# each, the verdict the kernel gives (found by the sim-vs-kernel hunt; the simulator had each one wrong).
RESETS = {
    # nf_ct_attach: the reset is RELATED to the connection, so a RELATED drop in OUTPUT stops it.
    "reset-is-related": (
        "-A INPUT -p tcp --dport 9999 -j REJECT --reject-with tcp-reset\n"
        "-A OUTPUT -p tcp -m conntrack --ctstate RELATED -j DROP\n",
        Probe("external", NODE, 9999, "TCP"),
        "dropped",
    ),
    # nf_send_reset: a packet that came in on a bridge port is answered straight out of it, past OUTPUT.
    "reset-out-of-its-bridge-port": (
        "-A INPUT -p tcp --dport 9999 -j REJECT --reject-with tcp-reset\n"
        "-A OUTPUT -p tcp --tcp-flags RST RST -j DROP\n",
        Probe(POD_A, IPv4Address("10.244.1.1"), 9999, "TCP"),
        "refused",
    ),
    # connect() returned at the SYN-ACK; the ACK's EPERM only means no answer ever comes.
    "ack-dropped-in-output": (
        "-A OUTPUT -d 10.244.1.11/32 -p tcp -m tcp --tcp-flags SYN,ACK ACK -j DROP\n",
        Probe("node:node-1", B, 8080, "TCP"),
        "dropped",
    ),
}


@pytest.mark.parametrize("name", list(RESETS))
def test_resets_and_lost_acks_match_simulator(backend: NetnsBackend, name: str) -> None:
    rules, probe, verdict = RESETS[name]
    dataplane = with_rules(rules, netns="node-node-1", table="filter", scenario=classic_with_node_port())
    samples = sampled(backend, dataplane, [probe])
    assert samples[0].verdict == verdict, samples
    assert_like_sim(dataplane, [probe], samples, who="kernel")


@pytest.mark.parametrize("name", list(MEASURED))
def test_measured_verdicts_match_simulator(backend: NetnsBackend, name: str) -> None:
    case = MEASURED[name]
    samples = sampled(backend, case.dataplane(), [case.probe])
    assert samples[0].verdict == case.verdict, samples
    assert_like_sim(case.dataplane(), [case.probe], samples, who="kernel")


def test_reset_empties_recent_lists(backend: NetnsBackend) -> None:
    assert_reset_empties_recent_lists(backend, who="kernel")


def test_sctp_probe_is_refused_loudly(backend: NetnsBackend) -> None:
    backend.deploy(get_implementation("reference").render(classic_scenario()))
    with pytest.raises(NotImplementedError):
        backend.observe([Probe(POD_A, B, 8080, "SCTP")])


# -- no privileges needed ------------------------------------------------------------


def test_restore_text_sends_changed_tables_and_empties_removed_ones() -> None:
    old = "*mangle\n:PREROUTING DROP [0:0]\n-A PREROUTING -j DROP\nCOMMIT\n*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    new = "*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"
    text = restore_text(old, new)
    assert list(table_blocks(text)) == ["filter", "mangle"]  # nat unchanged: not sent
    assert "-A" not in table_blocks(text)["mangle"] and ":PREROUTING ACCEPT" in text
    assert restore_text(new, new) == ""


def test_device_sysctls_are_told_apart() -> None:
    assert is_device_sysctl("net.ipv4.conf.eth0.accept_local")
    assert not is_device_sysctl("net.ipv4.conf.all.accept_local")
    assert not is_device_sysctl("net.ipv4.conf.default.rp_filter")
    assert not is_device_sysctl("net.ipv4.ip_forward")
    assert not is_device_sysctl("net.bridge.bridge-nf-call-iptables")


def test_probe_timeout_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETCONFORMANCE_PROBE_TIMEOUT", "0.25")
    assert NetnsBackend().probe_timeout == 0.25
    assert NetnsBackend(probe_timeout=1.0).probe_timeout == 1.0
    monkeypatch.delenv("NETCONFORMANCE_PROBE_TIMEOUT")
    assert NetnsBackend().probe_timeout == 0.5


def test_cleanup_refuses_a_record_aimed_elsewhere(tmp_path: Path) -> None:
    record = records.RunRecord("0badc0de", pid=1, pid_start=None, netns=["nc-12345678-pod"])
    record.save(tmp_path)
    with pytest.raises(ValueError):
        records.cleanup(state_dir=tmp_path)


def test_node_port_variant_is_valid() -> None:
    svc = classic_with_node_port().services[0]
    assert svc.type == "NodePort" and all(isinstance(p, ServicePort) and p.node_port == 30080 for p in svc.ports)


def test_preflight_says_exactly_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(BackendUnavailable, match=r"needs root .* running as uid 1000"):
        NetnsBackend().preflight()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr("backends.netns._effective_caps", lambda: (1 << 12) | (1 << 21))
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(BackendUnavailable, match=r"iptables-legacy-restore not found .* Debian package 'iptables'"):
        NetnsBackend().preflight()
