"""A small progress bar on stderr: redrawn in place on a terminal; in a CI log, a line every half minute.

A log cannot be redrawn, and a bar's worth of lines would drown it, but a step that says nothing for minutes
looks hung: so off a terminal a step that is still running says how far it got every LOG_EVERY seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

LOG_EVERY = 30.0  # seconds between lines off a terminal


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        *,
        stream: TextIO | None = None,
        width: int = 30,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.label, self.total, self.width = label, max(total, 1), width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.clock = clock
        self.start = self._last_log = clock()
        self._last_draw = 0.0
        self._draw(force=True)

    def step(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self, *, force: bool = False) -> None:
        if not self.tty:
            now = self.clock()
            if now - self._last_log >= LOG_EVERY:
                self._last_log = now
                self.stream.write(f"{self.label}: {self.done}/{self.total} examples, {now - self.start:.0f}s\n")
                self.stream.flush()
            return
        now = self.clock()
        if not force and now - self._last_draw < 0.05:
            return
        self._last_draw = now
        shown = min(self.done, self.total)
        filled = int(self.width * shown / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label:<40} [{bar}] {self.done}/{self.total}")
        self.stream.flush()

    def finish(self, status: str) -> None:
        took = self.clock() - self.start
        line = f"{self.label:<40} {status} ({self.done} examples, {took:.1f}s)"
        if self.tty:
            self.stream.write("\r" + " " * (self.width + 60) + "\r")
        self.stream.write(line + "\n")
        self.stream.flush()
