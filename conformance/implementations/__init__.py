"""Implementations: each renders a Scenario into a Dataplane.

`reference` is what Kubernetes expects; every other registered
implementation is a deliberately broken variation of it that the
conformance specs must catch.
"""

from __future__ import annotations

from typing import Protocol

from conformance.dataplane import Dataplane
from conformance.implementations.broken import BROKEN
from conformance.implementations.cniplugins import CNI_IMPLEMENTATIONS
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


_ALL: tuple[Implementation, ...] = (REFERENCE_IMPLEMENTATION, *BROKEN, *CNI_IMPLEMENTATIONS)
IMPLEMENTATIONS: dict[str, Implementation] = {impl.name: impl for impl in _ALL}
# Implementations that run real CNI plugin binaries: a real kernel deploys
# them, the simulator predicts them only from a snapshot (sim-snapshot).
CNI_PLUGIN_IMPLEMENTATIONS: tuple[str, ...] = tuple(impl.name for impl in CNI_IMPLEMENTATIONS)


def get_implementation(name: str) -> Implementation:
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        valid = ", ".join(IMPLEMENTATIONS)
        raise KeyError(f"unknown implementation {name!r}; valid names: {valid}") from None


def broken_implementations(*, cni_plugins: bool = False) -> tuple[Implementation, ...]:
    """The broken variations; those running real CNI plugins only when asked (no plain sim for them)."""
    return tuple(
        impl
        for impl in IMPLEMENTATIONS.values()
        if impl.broken and (cni_plugins or impl.name not in CNI_PLUGIN_IMPLEMENTATIONS)
    )


__all__ = [
    "CNI_PLUGIN_IMPLEMENTATIONS",
    "IMPLEMENTATIONS",
    "REFERENCE",
    "Implementation",
    "broken_implementations",
    "get_implementation",
]
