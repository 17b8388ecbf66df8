"""The specs as ordinary tests: the reference satisfies them, every broken
implementation is caught by at least one, and every spec catches something."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from backends import Backend
from conformance.implementations import REFERENCE, broken_implementations, get_implementation
from conformance.runner import SpecResult, run_spec
from conformance.specs import all_specs

SPECS = list(all_specs())
BROKEN = [i.name for i in broken_implementations()]
MUTANT_EXAMPLES = 30


@pytest.mark.parametrize("spec_name", SPECS)
def test_reference_satisfies_spec(
    spec_name: str, nc_backend: Backend, nc_examples: int, nc_seed: int | None, nc_record: Callable[[SpecResult], None]
) -> None:
    r = run_spec(all_specs()[spec_name], nc_backend, get_implementation(REFERENCE), examples=nc_examples, seed=nc_seed)
    nc_record(r)
    assert r.error is None, r.error
    if r.examples == 0 and r.notes:
        pytest.skip("; ".join(r.notes))
    assert r.failure is None, r.failure.render()
    assert r.examples >= min(nc_examples, 100)


_matrix: dict[tuple[str, str, str], SpecResult] = {}


def _result(backend: Backend, impl: str, spec: str, seed: int | None) -> SpecResult:
    """One cell of the mutant matrix, computed once per process."""
    if getattr(backend, "takes_intent", False):
        pytest.skip(f"{backend.name} is its own implementation: broken ones cannot be applied to it")
    key = (backend.name, impl, spec)
    if key not in _matrix:
        # Detection is the point here, not a minimal case (`netconformance
        # run` shrinks); skipping the shrink keeps this fast on every backend.
        _matrix[key] = run_spec(
            all_specs()[spec], backend, get_implementation(impl), examples=MUTANT_EXAMPLES, seed=seed, shrink=False
        )
    return _matrix[key]


@pytest.mark.parametrize("impl", BROKEN)
def test_broken_implementation_is_caught(
    impl: str, nc_backend: Backend, nc_seed: int | None, nc_record: Callable[[SpecResult], None]
) -> None:
    results = {s: _result(nc_backend, impl, s, nc_seed) for s in SPECS}
    for r in results.values():
        nc_record(r)
    errors = {s: r.error for s, r in results.items() if r.error}
    assert not errors, errors
    caught = [s for s, r in results.items() if r.failure is not None]
    assert caught, f"{impl} passed every spec: no spec tells it from the reference"


@pytest.mark.parametrize("spec_name", SPECS)
def test_spec_can_fail(spec_name: str, nc_backend: Backend, nc_seed: int | None) -> None:
    # Stops at the first broken implementation the spec catches: under
    # pytest-xdist this test may run in a process that has no matrix yet.
    killer = next((i for i in BROKEN if _result(nc_backend, i, spec_name, nc_seed).failure is not None), None)
    assert killer is not None, f"spec {spec_name} caught no broken implementation: a spec that cannot fail is a bug"
