"""Implementations: each renders a Scenario into a Dataplane.

`reference` is what Kubernetes expects; every other registered
implementation is a deliberately broken variation of it that the
conformance specs must catch.
"""

from __future__ import annotations

from typing import Protocol

from conformance.dataplane import Dataplane
from conformance.implementations.broken import BROKEN
from conformance.implementations.reference import REFERENCE_IMPLEMENTATION
from conformance.model import Scenario

REFERENCE = "reference"


class Implementation(Protocol):
    # Read-only, so frozen dataclasses and plain classes both qualify.
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def broken(self) -> bool: ...

    def render(self, scenario: Scenario) -> Dataplane: ...


IMPLEMENTATIONS: dict[str, Implementation] = {impl.name: impl for impl in (REFERENCE_IMPLEMENTATION, *BROKEN)}


def get_implementation(name: str) -> Implementation:
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        valid = ", ".join(IMPLEMENTATIONS)
        raise KeyError(f"unknown implementation {name!r}; valid names: {valid}") from None


def broken_implementations() -> tuple[Implementation, ...]:
    return tuple(impl for impl in IMPLEMENTATIONS.values() if impl.broken)


__all__ = [
    "IMPLEMENTATIONS",
    "REFERENCE",
    "Implementation",
    "broken_implementations",
    "get_implementation",
]
