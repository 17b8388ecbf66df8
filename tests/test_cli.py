"""The command line: exit codes CI can trust, errors without tracebacks, reproducers that replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.cli import main


def test_run_reference_passes_and_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--spec", "hairpin", "--examples", "20", "--seed", "5", "--report-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "1 passed, 0 failed; seed 5" in out
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--spec", "nope"], "--spec nope: unknown spec (known: connectivity, dnat"),
        (["run", "--implementation", "nope"], "--implementation nope: unknown"),
        (["run", "--backend", "nope"], "unknown backend 'nope'"),
        (["compare", "--backends", "sim"], "name one exact backend (sim) and at least one real backend"),
    ],
)
def test_bad_arguments_exit_2_without_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


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
    assert "dnat-ip-only" in out and "NOT CAUGHT" in out
    row = next(line for line in out.splitlines() if line.startswith("hairpin-mode-off"))
    assert row.count("x") == 2
