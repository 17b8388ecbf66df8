"""The progress display: a bar on a terminal, and off one (a CI log) a line every half minute of a long step."""

from __future__ import annotations

import io

from conformance.progress import LOG_EVERY, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_long_step_in_a_log_says_how_far_it_got_every_half_minute() -> None:
    log, clock = io.StringIO(), Clock()
    progress = Progress("hairpin / reference / netns", 100, stream=log, clock=clock)
    for _ in range(10):
        clock.now += 1
        progress.step()
    assert log.getvalue() == ""  # quick steps stay quiet
    clock.now += LOG_EVERY
    progress.step()
    assert log.getvalue() == f"hairpin / reference / netns: 11/100 examples, {10 + LOG_EVERY:.0f}s\n"
    clock.now += 1
    progress.step()
    assert log.getvalue().count("\n") == 1  # not again until another half minute
    progress.finish("pass")
    assert log.getvalue().splitlines()[-1].split() == [
        "hairpin",
        "/",
        "reference",
        "/",
        "netns",
        "pass",
        "(12",
        "examples,",
        f"{11 + LOG_EVERY:.1f}s)",
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_is_redrawn_in_place() -> None:
    term, clock = Terminal(), Clock()
    progress = Progress("dnat / reference / sim", 4, stream=term, clock=clock)
    clock.now += 1
    progress.step(2)
    assert term.getvalue().endswith("\rdnat / reference / sim                   [###############...............] 2/4")
    assert "\n" not in term.getvalue()
