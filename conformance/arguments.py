"""Option value types shared by the command line and the pytest plugin (both parse with argparse)."""

from __future__ import annotations

import argparse


def count(value: str) -> int:
    """A whole number of at least 1 (examples: Hypothesis' max_examples)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {n}")
    return n
