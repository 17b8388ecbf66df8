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


_matrix: dict[tuple[str, str], dict[str, SpecResult]] = {}


def _results(backend: Backend, impl: str, seed: int | None) -> dict[str, SpecResult]:
    if getattr(backend, "takes_intent", False):
        pytest.skip(f"{backend.name} is its own implementation: broken ones cannot be applied to it")
    key = (backend.name, impl)
    if key not in _matrix:
        # Detection is the point here, not a minimal case (`netconformance
        # run` shrinks); skipping the shrink keeps this fast on every backend.
        _matrix[key] = {
            s: run_spec(spec, backend, get_implementation(impl), examples=MUTANT_EXAMPLES, seed=seed, shrink=False)
            for s, spec in all_specs().items()
        }
    return _matrix[key]


@pytest.mark.parametrize("impl", BROKEN)
def test_broken_implementation_is_caught(
    impl: str, nc_backend: Backend, nc_seed: int | None, nc_record: Callable[[SpecResult], None]
) -> None:
    results = _results(nc_backend, impl, nc_seed)
    for r in results.values():
        nc_record(r)
    errors = {s: r.error for s, r in results.items() if r.error}
    assert not errors, errors
    caught = [s for s, r in results.items() if r.failure is not None]
    assert caught, f"{impl} passed every spec: no spec tells it from the reference"


@pytest.mark.parametrize("spec_name", SPECS)
def test_spec_can_fail(spec_name: str, nc_backend: Backend, nc_seed: int | None) -> None:
    killed = [impl for impl in BROKEN if _results(nc_backend, impl, nc_seed)[spec_name].failure is not None]
    assert killed, f"spec {spec_name} caught no broken implementation: a spec that cannot fail is a bug"
