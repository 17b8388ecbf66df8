"""SIGTERM and SIGHUP unwind like Ctrl-C: teardown runs, the exit code says which signal (no root needed here;
tests/test_netns.py checks that a terminated netns run leaves no namespace behind)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import atexit, os, signal, sys, time
from conformance.termination import Terminated, unwind_on_termination
unwind_on_termination()
atexit.register(lambda: print("torn down", flush=True))
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    print("not interrupted", flush=True)
except Terminated as e:
    print(e, e.exit_code, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # a second one must not cut the teardown short
    os.kill(os.getpid(), signal.SIGHUP)
    time.sleep(0.2)
    print("unwound", flush=True)
    sys.exit(e.exit_code)
"""


def test_sigterm_unwinds_and_teardown_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.splitlines() == ["terminated by SIGTERM 143", "unwound", "torn down"], done.stderr
    assert done.returncode == 128 + signal.SIGTERM


IGNORED = """
import os, signal, time
from conformance.termination import unwind_on_termination
unwind_on_termination()
os.kill(os.getpid(), signal.SIGHUP)
time.sleep(0.2)
print("still here", flush=True)
"""


def test_an_ignored_signal_stays_ignored() -> None:
    # nohup (SIGHUP ignored by the parent) must keep working: only default handlers are replaced.
    done = subprocess.run(
        [sys.executable, "-c", IGNORED],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    assert (done.returncode, done.stdout) == (0, "still here\n"), done.stderr


DEFERRED = """
import os, signal, time
from conformance.termination import Terminated, deferred, unwind_on_termination
unwind_on_termination()
for sig in (signal.SIGTERM, signal.SIGINT):
    try:
        with deferred():
            with deferred():
                os.kill(os.getpid(), sig)
                time.sleep(0.1)
                print("created and recorded", flush=True)
            print("still inside", flush=True)
        print("not raised", flush=True)
    except KeyboardInterrupt as e:
        print(type(e).__name__, flush=True)
"""


def test_deferred_holds_signals_until_what_it_creates_is_recorded() -> None:
    done = subprocess.run(
        [sys.executable, "-c", DEFERRED], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    held = ["created and recorded", "still inside"]  # the block ran to its end, then the signal was raised
    assert lines == [*held, "Terminated", *held, "KeyboardInterrupt"]


LOST = """
import os, signal, time
from conformance.termination import Terminated, checkpoint, unwind_on_termination
unwind_on_termination()
checkpoint()  # nothing asked this process to end: no-op
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
except BaseException:
    print("swallowed", flush=True)  # as a finaliser or a broad except would
try:
    checkpoint()
except Terminated as e:
    print(e, flush=True)
"""


def test_checkpoint_raises_a_termination_whose_exception_was_lost() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOST], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.splitlines() == ["swallowed", "terminated by SIGTERM"], done.stderr


def test_a_terminated_run_keeps_the_report_of_the_cells_that_finished(tmp_path: Path) -> None:
    """SIGTERM once the first of three cells has finished (sim): its report and summary stay, the exit code says
    SIGTERM."""
    argv = ["run", "--backend", "sim", "--spec", "connectivity,dnat,hairpin", "--examples", "200", "--seed", "1"]
    child = subprocess.Popen(
        [sys.executable, "-m", "conformance.cli", *argv, "--report-dir", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stderr is not None
        for line in child.stderr:  # off a terminal, the progress says each finished cell on a line of its own
            if line.startswith("connectivity / reference / sim"):
                child.send_signal(signal.SIGTERM)
                break
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "netconformance: terminated by SIGTERM" in err and "Traceback" not in err
    assert "interrupted by SIGTERM after 1 of 3 cells: 2 did not run" in out, err
    assert any(line.split()[:4] == ["connectivity", "sim", "reference", "pass"] for line in out.splitlines())
    (run_dir,) = tmp_path.iterdir()
    doc = json.loads((run_dir / "results.json").read_text())
    assert [r["spec"] for r in doc["results"]] == ["connectivity"]
    assert doc["run"]["interrupted"] == {"signal": "SIGTERM", "cells_run": 1, "cells_planned": 3}
    assert "interrupted by SIGTERM after 1 of 3 cells" in (run_dir / "index.html").read_text()
