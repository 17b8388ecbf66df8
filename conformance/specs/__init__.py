"""The specs: Kubernetes' dataplane promises as Hypothesis properties.

A spec draws cases (a scenario and probes), and judges a backend's
observations against Kubernetes semantics computed from the intent alone. It
never looks inside a backend. `check` returns violations as sentences; an
empty list means the promise held.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from conformance.cases import Case
from conformance.probes import Observation

Check = Callable[[Case, Sequence[Observation], bool], list[str]]


@dataclass(frozen=True)
class Spec:
    name: str
    summary: str
    cases: Callable[[], st.SearchStrategy[Case]]
    check: Check  # (case, observations, exact) -> violations
    examples: tuple[Case, ...] = ()
    # Knobs the spec must vary; a backend that fixes them skips the spec.
    knobs: tuple[str, ...] = ()


def all_specs() -> dict[str, Spec]:
    # Imported here so each spec module can import this one.
    from conformance.specs import accept_local, connectivity, dnat, hairpin, policy

    specs = (connectivity.SPEC, dnat.SPEC, hairpin.SPEC, policy.SPEC, accept_local.SPEC)
    return {s.name: s for s in specs}


def get_spec(name: str) -> Spec:
    specs = all_specs()
    if name not in specs:
        raise KeyError(f"unknown spec {name!r} (known: {', '.join(specs)})")
    return specs[name]
