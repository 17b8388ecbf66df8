"""Option values shared by the command line and the pytest plugin: parsing and checks."""

from __future__ import annotations

import argparse

from backends import backend_names


class UsageError(Exception):
    """Bad input on the command line; the message names the option and what was expected."""


def count(value: str) -> int:
    """argparse type: a whole number of at least 1 (examples: Hypothesis' max_examples)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {n}")
    return n


def name_list(value: str, option: str) -> list[str]:
    """Comma-separated names; a name given twice is a mistake (it would run twice), an empty one a stray comma."""
    chosen = [v.strip() for v in value.split(",")]
    if "" in chosen and any(chosen):
        raise UsageError(f"{option} {value!r}: an empty name between commas (expected name,name,...)")
    chosen = [v for v in chosen if v]
    for name in chosen:
        if chosen.count(name) > 1:
            raise UsageError(f"{option} {value}: {name} is given twice")
    return chosen


def backend_list(value: str, option: str) -> list[str]:
    """Known backend names, at least one (checked by name only: nothing is instantiated)."""
    chosen = name_list(value, option)
    if not chosen:
        raise UsageError(f"{option}: give at least one backend name, e.g. sim")
    known = backend_names()
    for name in chosen:
        if name not in known:
            raise UsageError(f"{option} {name}: unknown backend (known: {', '.join(known)})")
    return chosen
