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
from collections.abc import Iterator
from contextlib import contextmanager
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


_held: list[int] = []  # signals that arrived inside `deferred()`, to be raised when it ends
_depth = 0
_received: list[int] = []  # the signal that asked this process to end, once one has


def _unwind(signum: int, frame: FrameType | None) -> None:
    # Only the first signal unwinds: a second one (CI sends SIGTERM again, or SIGHUP follows) must not cut the
    # teardown it started short. SIGKILL still ends a teardown that hangs.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _received.append(signum)
    if _depth:
        _held.append(signum)
        return
    raise Terminated(signum)


def checkpoint() -> None:
    """Raise Terminated again if a signal asked this process to end and it is still at work.

    A handler's exception is lost when it fires inside a finaliser or a gc callback: Python prints "Exception
    ignored" and goes on. Measured: one SIGTERM in 26 sent during the docker backend's preflight was raised inside
    Hypothesis' gc callback (gc_cumulative_time) and lost; the run went on into its examples with the signal
    ignored (py-spy showed it deploying). The runner and compare call this before each example.
    """
    if _received and not _depth:
        raise Terminated(_received[0])


def _hold_interrupt(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGTERM, SIGHUP and Ctrl-C until the block ends, then raise them.

    For creating what the run has not recorded yet: interrupted inside a Docker API call, the daemon still
    creates the object after the client has gone on to tear down (measured: a run's network outlived its
    teardown one time in three), and interrupted while threads start containers, they are never recorded.
    """
    global _depth
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    if main and previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _hold_interrupt)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if main and previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
    if not _depth and _held:
        signum = _held.pop(0)
        _held.clear()
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)


def unwind_on_termination() -> None:
    """Install the handlers; signals someone else handles or ignores (nohup) are left as they are."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for sig in SIGNALS:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _unwind)
