"""SIGTERM and SIGHUP unwind like Ctrl-C, so what a run built is torn down.

Python's default for SIGTERM ends the process on the spot: no `finally`, no
atexit. A CI job cancelled or a `timeout` expiring mid-run used to leave the
run's namespaces behind (measured: `kill -TERM` during `run --backend netns`
left nc-<run>-underlay). Raised as a KeyboardInterrupt, the signal takes the
path Ctrl-C takes: the CLI and pytest stop, backends tear down, exit codes
say it was cut short.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """The process was asked to end (SIGTERM, SIGHUP); unwinding tears down what the run built."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"terminated by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for a process ended by a signal


def _unwind(signum: int, frame: FrameType | None) -> None:
    # Only the first signal unwinds: a second one (CI sends SIGTERM again, or SIGHUP follows) must not cut the
    # teardown it started short. SIGKILL still ends a teardown that hangs.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def unwind_on_termination() -> None:
    """Install the handlers; signals someone else handles or ignores (nohup) are left as they are."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for sig in SIGNALS:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _unwind)
