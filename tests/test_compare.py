"""Replaying a comparison's minimal case on both backends: `compare --case`, and the command a disagreement prints.

The sampling backend here is scripted (a real kernel takes one load-balancing branch per connection, so a
disagreement may show only on some samples); the exact backend is the real simulator.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from backends import Backend
from backends.sim import SimBackend
from conformance import cli
from conformance.cases import Case, dump_case, load_case
from conformance.compare import replay_comparison
from conformance.implementations import get_implementation
from conformance.probes import Outcome
from conformance.strategies import classic_scenario

from scripted import HAIRPIN, SERVED, Scripted

REFUSED = Outcome("refused", reason="ECONNREFUSED")
CASE = Case(classic_scenario(), (HAIRPIN,))


def test_replay_stops_at_the_first_disagreeing_sample() -> None:
    scripted = Scripted([SERVED, SERVED, REFUSED])
    done, taken = replay_comparison(CASE, SimBackend(), scripted, get_implementation("reference"), samples=20)
    assert taken == 3 and len(scripted.timeouts) == 3
    (d,) = done.disagreements
    assert d.probe == HAIRPIN and d.observed.outcomes[0][0] == REFUSED
    assert [o for o, _ in d.predicted.outcomes] == [SERVED]


def test_replay_that_agrees_takes_every_sample() -> None:
    scripted = Scripted()
    done, taken = replay_comparison(CASE, SimBackend(), scripted, get_implementation("reference"), samples=5)
    assert (taken, len(scripted.timeouts), done.disagreements) == (5, 5, [])
    assert [o.outcomes[0][0] for o in done.observed] == [SERVED]
    with pytest.raises(ValueError, match="samples must be at least 1"):
        replay_comparison(CASE, SimBackend(), scripted, get_implementation("reference"), samples=0)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Scripted:
    """`--backends sim,scripted` on the command line reaches this backend."""
    backend = Scripted()
    real_get_backend = cli.get_backend

    def get_backend(name: str) -> Backend:
        return backend if name == "scripted" else real_get_backend(name)

    monkeypatch.setattr(cli, "get_backend", get_backend)
    return backend


def test_compare_case_from_the_command_line(
    scripted: Scripted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "case.yaml"
    path.write_text(dump_case(CASE))
    argv = ["compare", "--backends", "sim,scripted", "--case", str(path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "every probe agrees in all 20 sample(s)" in out and "DISAGREE" not in out
    scripted.answers = [SERVED, REFUSED]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "1 probe(s) disagree (sample 2 of up to 20)" in out
    assert f"DISAGREE  {HAIRPIN}: scripted refused" in out
    assert "minimal case:" not in out  # the case is the file just given
    # Options that only mean something when generating are refused, not ignored.
    assert cli.main([*argv, "--examples", "5"]) == 2
    assert "--case replays one saved case: --examples and --seed do not apply" in capsys.readouterr().err


def test_a_disagreement_prints_the_command_that_replays_it(
    scripted: Scripted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted.otherwise = REFUSED  # every sample disagrees with the simulator's delivered outcomes
    argv = ["compare", "--backends", "sim,scripted", "--examples", "5", "--seed", "3"]
    assert cli.main([*argv, "--report-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "scripted against sim, reference: DISAGREE (" in out  # on stdout, not only in the progress line
    command = out.split("replay it on both backends:\n", 1)[1].splitlines()[0].strip()
    words = shlex.split(command)
    assert words[:6] == ["netconformance", "compare", "--backends", "sim,scripted", "--implementation", "reference"]
    assert words[6] == "--case" and load_case(words[7]).probes  # the minimal case, saved under the report dir
    assert cli.main(words[1:]) == 1  # pasted as printed, it disagrees again
    assert "DISAGREE" in capsys.readouterr().out
    scripted.otherwise = None  # a sample the simulator allows: the same case agrees
    assert cli.main(words[1:]) == 0
