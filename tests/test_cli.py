"""The command line: exit codes CI can trust, errors without tracebacks, reproducers that replay."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from backends import BackendUnavailable
from backends.netns import NetnsBackend
from backends.netns.build import BuildError
from backends.sim import SimBackend
from conformance import cli
from conformance.cases import Case, dump_case
from conformance.cli import main
from conformance.dataplane import Dataplane
from conformance.implementations import get_implementation
from conformance.probes import Probe
from conformance.pytest_plugin import _backend_option
from conformance.runner import SpecResult
from conformance.snapshot import dump_dataplane
from conformance.strategies import classic_scenario
from conformance.termination import Terminated

from scripted import Scripted

TRACE_REST = ["--from", "pod", "--src", "10.244.1.11", "--dst", "10.96.0.10", "--dport", "80"]


def test_run_reference_passes_and_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--spec", "hairpin", "--examples", "20", "--seed", "5", "--report-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "1 passed, 0 failed; seed 5" in out
    summary = next(line for line in out.splitlines() if line.startswith("hairpin "))
    assert summary.split()[-1] == "5"  # each row's own seed
    (run_dir,) = tmp_path.iterdir()
    (row,) = json.loads((run_dir / "results.json").read_text())["results"]
    assert (row["spec"], row["implementation"], row["status"]) == ("hairpin", "reference", "pass")
    assert (run_dir / "index.html").is_file() and (run_dir / "junit-sim.xml").is_file()
    assert row["examples"] >= 20


def test_run_broken_fails_with_a_reproducer_that_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "run",
            "--spec",
            "hairpin",
            "--implementation",
            "hairpin-mode-off",
            "--examples",
            "20",
            "--seed",
            "5",
            "--report-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "hairpin mode is off" in out  # the trace says why
    case = next(tmp_path.glob("*/cases/hairpin-hairpin-mode-off-sim-*.yaml"))
    assert f"reproduce: netconformance replay {case}" in out
    # The saved minimal case fails the same way when replayed, and passes on the reference.
    assert main(["replay", str(case), "--spec", "hairpin", "--implementation", "hairpin-mode-off"]) == 1
    assert main(["replay", str(case), "--spec", "hairpin", "--implementation", "reference"]) == 0


def _netns_unavailable() -> str | None:
    try:
        NetnsBackend().preflight()
    except BackendUnavailable as e:
        return str(e)
    return None


# compare checks its backends (netns needs root) before the implementation.
_WHY_NOT_NETNS = _netns_unavailable()
NEEDS_NETNS = pytest.mark.skipif(_WHY_NOT_NETNS is not None, reason=f"netns: {_WHY_NOT_NETNS}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--spec", "nope"], "--spec nope: unknown spec (known: connectivity, dnat"),
        (["run", "--implementation", "nope"], "--implementation nope: unknown"),
        (["run", "--backend", "nope"], "unknown backend 'nope'"),
        (["compare", "--backends", "sim"], "name one exact backend (sim) and at least one real backend"),
        (["compare", "--backends", ""], "--backends: give at least one backend name"),
        # A name given twice would run (and count) twice.
        (["run", "--backend", "sim,sim"], "--backend sim,sim: sim is given twice"),
        (["run", "--spec", "hairpin", "--spec", "hairpin"], "--spec hairpin,hairpin: hairpin is given twice"),
        (["mutants", "--backend", "sim,sim"], "--backend sim,sim: sim is given twice"),
        (["run", "--implementation", "reference,reference"], "reference is given twice"),
        # A stray comma is a name left out, not nothing.
        (["run", "--backend", "sim,"], "--backend 'sim,': an empty name between commas (expected name,name,...)"),
        (["run", "--spec", "hairpin,,dnat"], "--spec 'hairpin,,dnat': an empty name between commas"),
        (["bench", "--tox", "sim,"], "--tox 'sim,': an empty name between commas"),
        (["run", "--spec", "hairpin,nope"], "--spec nope: unknown spec"),
        (["run", "--implementation", "cni-bridge"], "cni-bridge runs real CNI plugin binaries, which backend sim"),
        (["replay", "case.yaml", "--spec", "hairpin", "--implementation", "reference,hairpin-mode-off"], "exactly one"),
        (["replay", "case.yaml", "--spec", "hairpin", "--backend", "sim,netns"], "--backend sim,netns: this"),
        (["run", "--report-dir", ""], "--report-dir: give a directory"),
        (["bench", "--backends", "nope"], "--backends nope: unknown backend"),
        (["bench", "--tox", "sim,nope"], "--tox nope: no such tox environment (tox.ini has: sim, netns)"),
        (["bench", "--out", "afile/x"], "--out afile/x: cannot create the directory"),
        (["snapshot", "--out", "nodir/s.json"], "--out nodir/s.json: expected a file path in an existing directory"),
        (
            ["trace", "--rules", "rules", "--local-ip", "300.1.1.1", "--pod-cidr", "10.244.1.0/24", *TRACE_REST],
            "--local-ip 300.1.1.1: expected an IPv4 address",
        ),
        (
            ["trace", "--rules", "rules", "--local-ip", "172.18.0.2", "--pod-cidr", "10.244.1.0/33", *TRACE_REST],
            "--pod-cidr 10.244.1.0/33: expected an IPv4 network",
        ),
        (
            ["trace", "--rules", "binary", "--local-ip", "172.18.0.2", "--pod-cidr", "10.244.1.0/24", *TRACE_REST],
            "--rules binary: not iptables-save text (not UTF-8 at byte 1)",
        ),
        # A user's own conflist: read and checked before anything is deployed.
        (["run", "--implementation", "conflist:"], "--implementation conflist:: give the path of a .conflist"),
        (
            ["run", "--implementation", "conflist:nope"],
            "--implementation conflist:nope: nope: cannot read: No such file",
        ),
        (["run", "--implementation", "conflist:binary"], "conflist:binary: binary: not a conflist: not UTF-8 text"),
        (["run", "--implementation", "conflist:rules"], "rules: not JSON: Expecting value: line 1 column 1 (char 0)"),
        (["run", "--implementation", "conflist:single.conf"], "single.conf: not a CNI network configuration list:"),
        (["run", "--implementation", "conflist:untyped"], 'untyped: plugins[1]: expected an object with a "type"'),
        (["run", "--implementation", "conflist:path"], "path: plugins[0].type '/bin/sh': a plugin name, not a path"),
        (["run", "--implementation", "conflist:unnamed"], 'unnamed: expected a "name" (the network\'s name, a string)'),
        (["run", "--implementation", "conflist:caps"], "caps: plugins[0].capabilities: expected an object"),
        (["run", "--implementation", "conflist:fifo"], "conflist:fifo: fifo: not a regular file"),  # would block
        (["run", "--implementation", "conflist:/dev/zero"], "/dev/zero: not a regular file"),  # would never end
        (["replay", "/dev/zero", "--spec", "hairpin"], "/dev/zero: not a regular file"),
        (["replay", "fifo", "--spec", "hairpin"], "fifo: not a regular file"),
        (["snapshot", "--out", "fifo"], "--out fifo: expected a file path in an existing directory"),
        pytest.param(
            ["compare", "--backends", "sim,netns", "--implementation", "conflist:good.conflist"],
            "which backend sim does not: predict it from the live nodes with --backends sim-snapshot,netns",
            marks=NEEDS_NETNS,
        ),
        (
            ["run", "--implementation", "conflist:good.conflist"],
            "conflist:good.conflist runs real CNI plugin binaries, which backend sim does not",
        ),
        (["run", "--implementation", "nope"], "or conflist:PATH for your own CNI plugins, rules:SCENARIO.yaml:NODE="),
        # A proxy's own rules and the cluster they were made for.
        (["run", "--implementation", "rules:"], "--implementation rules:: expected rules:SCENARIO.yaml:NODE=RULES"),
        (["run", "--implementation", "rules:nope.yaml:node-1=rules"], "rules: nope.yaml: cannot read"),
        (["run", "--implementation", "rules:case.yaml:node-1"], "'node-1': expected NODE=RULES"),
        (["run", "--implementation", "rules:case.yaml:node-1=rules+node-1=rules"], "node node-1 is given twice"),
        (["run", "--implementation", "rules:case.yaml:node-9=rules"], "no node(s) node-9 for the supplied rules"),
        (["run", "--implementation", "rules:case.yaml:node-1=nope"], "node-1=nope: nope: cannot read"),
        (["run", "--implementation", "rules:case.yaml:node-1=binary"], "node-1=binary: binary: not UTF-8 text"),
        (
            [
                "snapshot",
                "--out",
                "s.json",
                "--implementation",
                "rules:case.yaml:node-1=rules",
                "--scenario",
                "pol.yaml",
            ],
            "--scenario pol.yaml: rules:case.yaml:node-1=rules realises the cluster its rules were made for, not this",
        ),
        (["run", "--implementation", "rules:case.yaml:node-1=case.yaml"], "case.yaml: no table (*nat, *filter, ...)"),
        (["run", "--implementation", "rules:case.yaml:node-1=ipset"], "ipset:4: -A FORWARD -m set --match-set s src"),
        (["run", "--implementation", "rules:nopods.yaml:node-1=rules"], "no spec can judge it (see above)"),
        (
            ["run", "--implementation", "rules:nopods.yaml:node-1=rules", "--spec", "dnat"],
            "--spec dnat: cannot judge rules:nopods.yaml:node-1=rules: dnat needs a Service with a TCP or UDP port",
        ),
        # On the kernel alone, the kernel judges a proxy's rules before the run: the file's own line, and why.
        pytest.param(
            ["run", "--backend", "netns", "--implementation", "rules:case.yaml:node-1=nth"],
            "nth:4: -A FORWARD -m statistic --mode nth --every 2 -j DROP: the kernel refused it"
            ' (iptables-legacy-restore: statistic: option "--every" also requires "--packet")',
            marks=NEEDS_NETNS,
        ),
        pytest.param(
            ["compare", "--backends", "sim,netns", "--implementation", "rules:case.yaml:node-1=dnat"],
            "dnat:5: -A INPUT -p tcp -j DNAT --to-destination 10.0.0.1: the kernel refused it",
            marks=NEEDS_NETNS,
        ),
        pytest.param(
            ["compare", "--implementation", "rules:nopods.yaml:node-1=rules"],
            "scenario 'nopods' has no pod, Service or NodePort to probe",
            marks=NEEDS_NETNS,
        ),
        (
            ["replay", "case.yaml", "--spec", "policy", "--implementation", "rules:case.yaml:node-1=rules"],
            "--spec policy: cannot judge rules:case.yaml:node-1=rules",
        ),
        (
            ["replay", "hairpin.yaml", "--spec", "hairpin", "--implementation", "rules:pol.yaml:node-1=rules"],
            "hairpin.yaml: its cluster (scenario 'classic') is not the one rules:pol.yaml:node-1=rules was made for",
        ),
        # A snapshot file, and the cluster it was taken of.
        (["run", "--implementation", "dataplane:case.yaml"], "expected dataplane:SCENARIO.yaml:SNAPSHOT.json"),
        (
            ["run", "--implementation", "dataplane:case.yaml:nope.json"],
            "dataplane:case.yaml:nope.json: nope.json: cannot read",
        ),
        (["run", "--implementation", "dataplane:case.yaml:case.yaml"], "case.yaml: not JSON/YAML"),
        (
            ["run", "--implementation", "dataplane:pol.yaml:dp.json"],
            "dp.json: has no pod default/web, pod default/db, pod other/client ... of scenario 'policies' (pol.yaml)",
        ),
        (
            ["run", "--implementation", "rules:case.yaml:node-1=rules", "--spec", "hairpin,policy"],
            "--spec policy: cannot judge rules:case.yaml:node-1=rules: its rules realise one cluster",
        ),
    ],
)
def test_bad_arguments_exit_2_without_traceback(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Checked before any work: nothing runs, nothing is written.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tox.ini").write_text("[tox]\n[testenv:sim]\n[testenv:netns]\n")
    (tmp_path / "afile").write_text("")
    (tmp_path / "rules").write_text("*filter\nCOMMIT\n")
    (tmp_path / "binary").write_bytes(b"*\xff\n")
    (tmp_path / "case.yaml").write_text((Path(__file__).parent / "scenarios" / "classic.yaml").read_text())
    (tmp_path / "single.conf").write_text('{"cniVersion": "1.0.0", "name": "n", "type": "bridge"}')
    (tmp_path / "untyped").write_text('{"name": "n", "plugins": [{"type": "bridge"}, {"capabilities": {}}]}')
    (tmp_path / "path").write_text('{"name": "n", "plugins": [{"type": "/bin/sh"}]}')
    (tmp_path / "unnamed").write_text('{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}')
    (tmp_path / "caps").write_text('{"name": "n", "plugins": [{"type": "portmap", "capabilities": ["portMappings"]}]}')
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "ipset").write_text(
        "*filter\n:FORWARD ACCEPT [0:0]\n# an ipset match\n-A FORWARD -m set --match-set s src -j DROP\nCOMMIT\n"
    )
    (tmp_path / "nth").write_text(
        "*filter\n:FORWARD ACCEPT [0:0]\n# --packet left out\n-A FORWARD -m statistic --mode nth --every 2 -j DROP\n"
        "COMMIT\n"
    )
    # Parsed fine; the kernel refuses DNAT outside the nat table when the table is committed.
    (tmp_path / "dnat").write_text(
        "*filter\n:INPUT ACCEPT [0:0]\n# the second rule\n-A INPUT -p udp -j ACCEPT\n"
        "-A INPUT -p tcp -j DNAT --to-destination 10.0.0.1\n-A INPUT -j ACCEPT\nCOMMIT\n"
    )
    (tmp_path / "dp.json").write_text(dump_dataplane(get_implementation("reference").render(classic_scenario())))
    hairpin = Probe("pod:default/pod-b", IPv4Address("10.96.0.100"), 80, "TCP")
    (tmp_path / "hairpin.yaml").write_text(dump_case(Case(classic_scenario(), (hairpin,))))
    classic = (Path(__file__).parent / "scenarios" / "classic.yaml").read_text()
    (tmp_path / "nopods.yaml").write_text("---\n".join(d for d in classic.split("---\n") if "kind: Node" in d))
    (tmp_path / "pol.yaml").write_text((Path(__file__).parent / "scenarios" / "policies.yaml").read_text())
    (tmp_path / "good.conflist").write_text((Path(__file__).parent / "cni" / "bridge.conflist").read_text())
    before = sorted(tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--examples", "0"], "argument --examples: expected at least 1, got 0"),
        (["mutants", "--examples", "-3"], "argument --examples: expected at least 1, got -3"),
        (["compare", "--examples", "many"], "argument --examples: expected a whole number, got 'many'"),
        (["bench", "--compare-examples", "0"], "argument --compare-examples: expected at least 1"),
        # A run id is never a path (it names state files and, for cleanup, what gets deleted).
        (["snapshot", "--out", "s.json", "--run", "../x"], "argument --run: expected a run id (8 hex digits"),
        (["cleanup", "--run", ""], "argument --run: expected a run id (8 hex digits"),
    ],
)
def test_bad_option_values_are_refused_by_the_parser(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_report_dir_that_cannot_be_made_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert main(["run", "--spec", "hairpin", "--report-dir", str(not_a_dir)]) == 2
    captured = capsys.readouterr()
    assert f"--report-dir {not_a_dir}: cannot create" in captured.err
    assert "passed" not in captured.out  # refused before any spec ran


def test_bad_probe_timeout_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NETCONFORMANCE_PROBE_TIMEOUT", "abc")
    assert main(["run", "--backend", "netns"]) == 2
    assert "NETCONFORMANCE_PROBE_TIMEOUT='abc': expected a number of seconds greater than 0" in capsys.readouterr().err
    monkeypatch.setenv("NETCONFORMANCE_PROBE_TIMEOUT", "-1")
    assert main(["list"]) == 0
    assert "  netns         unavailable: NETCONFORMANCE_PROBE_TIMEOUT='-1'" in capsys.readouterr().out


def test_image_help_reaches_the_image_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["image", "--help"])
    assert exited.value.code == 0
    assert "usage: netconformance image" in capsys.readouterr().out


def test_bad_case_file_names_object_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "case.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.244.1.0/24}\n"
        "status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: pod-a, namespace: default}\n"
        "spec: {nodeName: node-9}\nstatus: {podIP: 10.244.1.10}\n"
    )
    assert main(["replay", str(bad), "--spec", "connectivity"]) == 2
    err = capsys.readouterr().err
    assert "Pod default/pod-a: spec.nodeName" in err and "node-9" in err
    assert "Traceback" not in err


def test_mutants_table_marks_every_broken_implementation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mutants", "--spec", "hairpin", "--spec", "accept-local", "--examples", "15", "--seed", "2"]) == 1
    out = capsys.readouterr().out
    # Two specs cannot catch everything (dnat-ip-only needs the dnat spec): the table says so.
    assert "dnat-ip-only" in out and "NOT CAUGHT by the specs run (hairpin, accept-local)" in out
    row = next(line for line in out.splitlines() if line.startswith("hairpin-mode-off"))
    assert row.count("x") == 2
    rerun = next(line for line in out.splitlines() if line.startswith("each cell's rerun command"))
    (cell,) = [
        r
        for r in json.loads(Path(rerun.rsplit(" ", 1)[1]).read_text())["results"]
        if r["implementation"] == "hairpin-mode-off" and r["spec"] == "hairpin"
    ]
    assert cell["rerun"].endswith("--seed 2 --examples 15")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("simm", "--backend simm: unknown backend (known: docker, kind, netns, sim, sim-snapshot)"),
        ("sim,sim", "--backend sim,sim: sim is given twice"),
        (" , ", "--backend: give at least one backend name"),
        ("sim,,netns", "--backend 'sim,,netns': an empty name between commas"),
    ],
)
def test_pytest_backend_option_is_checked(value: str, message: str) -> None:
    # A typo in `pytest --backend` would otherwise skip every spec and pass.
    with pytest.raises(pytest.UsageError, match=re.escape(message)):
        _backend_option(value)
    assert _backend_option("sim,netns") == ["sim", "netns"]


def test_snapshot_refuses_an_empty_scenario_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An empty --scenario used to mean "the classic scenario" and deployed it on the kernel.
    assert main(["snapshot", "--out", str(tmp_path / "s.json"), "--scenario", ""]) == 2
    assert "--scenario: give a scenario file" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_the_command_keeps_hypothesis_out_of_the_working_directory(tmp_path: Path) -> None:
    # Hypothesis caches what it learns; the command puts that in the user's cache, not in `.hypothesis/` wherever
    # the command happens to run.
    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    env.pop("HYPOTHESIS_STORAGE_DIRECTORY", None)
    argv = ["run", "--spec", "hairpin", "--examples", "3", "--report-dir", str(tmp_path / "r")]
    done = subprocess.run([sys.executable, "-m", "conformance.cli", *argv], cwd=work, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert list(work.iterdir()) == []
    assert (cache / "netconformance" / "hypothesis").is_dir()


@dataclass
class CannotBuild(Scripted):
    """A backend whose every deployment fails, as a CNI plugin's ADD can."""

    name: str = "cannot-build"

    def deploy(self, dataplane: Dataplane) -> None:
        raise BuildError("bridge: failed to allocate all requested IPs: 10.244.1.10")


def test_a_spec_that_could_not_run_is_exit_2_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_get_backend = cli.get_backend
    monkeypatch.setattr(
        cli, "get_backend", lambda name: CannotBuild() if name == "cannot-build" else real_get_backend(name)
    )
    argv = ["run", "--spec", "hairpin", "--examples", "5", "--seed", "1", "--report-dir", str(tmp_path)]
    assert main([*argv, "--backend", "cannot-build"]) == 2
    out = capsys.readouterr().out
    assert "hairpin on cannot-build: could not run: bridge: failed to allocate" in out
    assert "0 passed, 0 failed, 1 could not run; seed 1" in out
    # A failure elsewhere in the same run is a finding: exit 1.
    argv += ["--implementation", "hairpin-mode-off"]
    assert main([*argv, "--backend", "sim,cannot-build"]) == 1
    assert "0 passed, 1 failed, 1 could not run" in capsys.readouterr().out


def _interrupt_cell(monkeypatch: pytest.MonkeyPatch, which: int, interrupt: KeyboardInterrupt) -> None:
    """Make the `which`-th cell (1-based) of the CLI's matrix be cut short by `interrupt` (Ctrl-C, SIGTERM)."""
    real, calls = cli.run_spec, []

    def run_spec(*args: Any, **kwargs: Any) -> SpecResult:
        calls.append(args)
        if len(calls) == which:
            raise interrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "run_spec", run_spec)


@pytest.mark.parametrize(
    ("interrupt", "code", "said"),
    [
        (KeyboardInterrupt(), 130, "netconformance: interrupted"),
        (Terminated(signal.SIGTERM), 143, "netconformance: terminated by SIGTERM"),
    ],
)
def test_an_interrupted_run_reports_the_cells_that_finished(
    interrupt: KeyboardInterrupt,
    code: int,
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _interrupt_cell(monkeypatch, 2, interrupt)
    # A real backend's own run id names what it built; `cleanup --run` takes it (sim has none: lend it one).
    monkeypatch.setattr(SimBackend, "run_id", "1f2e3d4c", raising=False)
    argv = ["run", "--spec", "connectivity,dnat,hairpin", "--examples", "3", "--seed", "1"]
    assert main([*argv, "--report-dir", str(tmp_path)]) == code
    out, err = capsys.readouterr()
    signal_name = "SIGINT" if code == 130 else "SIGTERM"
    stopped = f"interrupted by {signal_name} after 1 of 3 cells"
    # The summary: the cell that finished, and what did not run.
    assert re.search(r"^connectivity +sim +reference +pass ", out, re.MULTILINE), out
    assert not re.search(r"^(dnat|hairpin) ", out, re.MULTILINE), out
    assert f"{stopped}: 2 did not run" in out and "1 passed, 0 failed; seed 1" in out
    assert said in err and "netconformance cleanup --run 1f2e3d4c" in err
    # The report: that cell, marked as a partial run.
    (run_dir,) = tmp_path.iterdir()
    doc = json.loads((run_dir / "results.json").read_text())
    assert [(r["spec"], r["status"]) for r in doc["results"]] == [("connectivity", "pass")]
    assert doc["run"]["interrupted"] == {"signal": signal_name, "cells_run": 1, "cells_planned": 3}
    assert doc["run"]["backend_runs"] == {"sim": "1f2e3d4c"}
    html = (run_dir / "index.html").read_text()
    assert stopped in html and "sim 1f2e3d4c" in html
    # Cut short before any cell finished: nothing to report, and the empty report directory goes.
    _interrupt_cell(monkeypatch, 1, interrupt)
    assert main([*argv, "--report-dir", str(tmp_path / "none")]) == code
    assert said in capsys.readouterr().err and list((tmp_path / "none").iterdir()) == []


def test_interrupted_mutants_report_what_ran_and_judge_only_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _interrupt_cell(monkeypatch, 2, KeyboardInterrupt())
    argv = ["mutants", "--spec", "hairpin", "--examples", "3", "--seed", "1", "--report-dir", str(tmp_path)]
    assert main(argv) == 130
    out = capsys.readouterr().out
    assert re.search(r"^reference +\. *$", out, re.MULTILINE), out
    assert re.search(r"^hairpin-mode-off +- *$", out, re.MULTILINE), out  # not run, so not "NOT CAUGHT"
    assert "NOT CAUGHT" not in out and "caught no broken implementation" not in out
    assert "interrupted by SIGINT after 1 of " in out
    (run_dir,) = tmp_path.iterdir()
    doc = json.loads((run_dir / "results.json").read_text())
    assert [(r["spec"], r["implementation"]) for r in doc["results"]] == [("hairpin", "reference")]
    assert doc["run"]["interrupted"]["cells_run"] == 1


def test_cleanup_with_nothing_left_says_what_it_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import backends.docker
    import backends.kind
    import backends.netns

    def unavailable(message: str) -> Any:
        def clean(run_id: str | None) -> list[str]:
            raise BackendUnavailable(message)

        return clean

    monkeypatch.setattr(backends.netns, "cleanup", lambda run_id: [])
    hint = "install Docker (Debian: apt-get install docker.io) and start it"
    monkeypatch.setattr(backends.docker, "cleanup", unavailable(f"docker backend: no Docker daemon answers: {hint}"))
    monkeypatch.setattr(backends.kind, "cleanup", unavailable("kind backend: the kind binary is not on PATH; install"))
    # No daemon here at all: nothing it could have left, so no install hints.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.delenv("NETCONFORMANCE_KUBECONFIG", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["cleanup", "--run", "1f2e3d4c"]) == 0
    out = capsys.readouterr().out
    assert "netns: nothing left of run 1f2e3d4c (checked the run records in " in out
    assert f"docker: nothing to check (no Docker daemon on this machine: unix://{tmp_path}/docker.sock" in out
    assert "kind: nothing to check (no kind binary on PATH and no NETCONFORMANCE_KUBECONFIG)" in out
    assert "install" not in out and out.rstrip().endswith("cleanup: 0 object(s) removed for run 1f2e3d4c")
    # A daemon that is there but does not answer may hold what a run left: the hint stays.
    (tmp_path / "docker.sock").touch()
    assert main(["cleanup"]) == 0
    assert f"docker: could not check: docker backend: no Docker daemon answers: {hint}" in capsys.readouterr().out
    # A bad setting of one backend stops neither the others nor the command.
    monkeypatch.setenv("NETCONFORMANCE_PROBE_TIMEOUT", "abc")
    assert main(["cleanup"]) == 0
    assert "netns: nothing left (checked the run records in " in capsys.readouterr().out
