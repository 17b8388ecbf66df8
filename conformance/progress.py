"""A small progress bar on stderr: redrawn in place on a terminal, quiet in CI logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, width: int = 30) -> None:
        self.label, self.total, self.width = label, max(total, 1), width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._draw(force=True)

    def step(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self, *, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.perf_counter()
        if not force and now - self._last_draw < 0.05:
            return
        self._last_draw = now
        shown = min(self.done, self.total)
        filled = int(self.width * shown / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label:<40} [{bar}] {self.done}/{self.total}")
        self.stream.flush()

    def finish(self, status: str) -> None:
        took = time.perf_counter() - self.start
        line = f"{self.label:<40} {status} ({self.done} examples, {took:.1f}s)"
        if self.tty:
            self.stream.write("\r" + " " * (self.width + 60) + "\r")
        self.stream.write(line + "\n")
        self.stream.flush()
