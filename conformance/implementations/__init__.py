"""Implementations: each renders a Scenario into a Dataplane.

`reference` is what Kubernetes expects; every other registered
implementation is a deliberately broken variation of it that the
conformance specs must catch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from conformance.dataplane import Dataplane
from conformance.implementations.broken import BROKEN
from conformance.implementations.cniplugins import CNI_IMPLEMENTATIONS, ConflistError, from_file
from conformance.implementations.foreign import (
    DATAPLANE,
    DATAPLANE_FORM,
    RULES,
    RULES_FORM,
    dataplane_from_name,
    from_name,
)
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


_RENDERED: tuple[Implementation, ...] = (REFERENCE_IMPLEMENTATION, *BROKEN)
IMPLEMENTATIONS: dict[str, Implementation] = {impl.name: impl for impl in _RENDERED}
# Implementations that run real CNI plugin binaries: a real kernel deploys
# them, the simulator predicts them only from a snapshot (sim-snapshot), so
# they are kept apart from the ones every backend (and `mutants` on sim) runs.
CNI_PLUGIN_IMPLEMENTATIONS: dict[str, Implementation] = {impl.name: impl for impl in CNI_IMPLEMENTATIONS}


# A user's own network configuration list: `conflist:PATH` names the implementation that wires pods with its
# plugins, and the name is also the command-line word that rebuilds it (reports' rerun and replay commands).
CONFLIST = "conflist:"


def get_implementation(name: str) -> Implementation:
    """A registered implementation, `conflist:PATH`, `rules:SCENARIO:NODE=FILE...` or `dataplane:SCENARIO:FILE`
    (ConflistError and ForeignScenarioError when their files cannot be used)."""
    if name.startswith(CONFLIST):
        return from_file(Path(name[len(CONFLIST) :]), name=name)
    if name.startswith(RULES):
        return from_name(name)
    if name.startswith(DATAPLANE):
        return dataplane_from_name(name)
    found = IMPLEMENTATIONS.get(name) or CNI_PLUGIN_IMPLEMENTATIONS.get(name)
    if found is None:
        valid = ", ".join(
            [*IMPLEMENTATIONS, *CNI_PLUGIN_IMPLEMENTATIONS, f"{CONFLIST}PATH", RULES_FORM, DATAPLANE_FORM]
        )
        raise KeyError(f"unknown implementation {name!r}; valid names: {valid}")
    return found


def broken_implementations(*, cni_plugins: bool = False) -> tuple[Implementation, ...]:
    """The broken variations; with `cni_plugins`, also those running real CNI plugins (netns, sim-snapshot)."""
    extra = CNI_PLUGIN_IMPLEMENTATIONS.values() if cni_plugins else ()
    return tuple(impl for impl in (*IMPLEMENTATIONS.values(), *extra) if impl.broken)


__all__ = [
    "CNI_PLUGIN_IMPLEMENTATIONS",
    "CONFLIST",
    "DATAPLANE",
    "IMPLEMENTATIONS",
    "REFERENCE",
    "RULES",
    "ConflistError",
    "Implementation",
    "broken_implementations",
    "get_implementation",
]
