"""pytest plugin: run the specs as ordinary tests, on the backends named by --backend.

Registered through the `pytest11` entry point. Tests that take the
`nc_backend` fixture are parametrized over the backends; a backend that
cannot run here is skipped with its reason, or fails the test when the
environment variable NETCONFORMANCE_REQUIRE_BACKENDS names it.
"""

from __future__ import annotations

import os

import pytest

from backends import Backend, BackendUnavailable, get_backend

REQUIRE_ENV = "NETCONFORMANCE_REQUIRE_BACKENDS"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netconformance")
    group.addoption("--backend", default="sim", help="comma-separated netconformance backends (default: sim)")
    group.addoption("--nc-examples", type=int, default=100, help="Hypothesis examples per spec (default: 100)")
    group.addoption("--nc-seed", type=int, default=None, help="Hypothesis seed for the specs (default: random)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "nc_backend" in metafunc.fixturenames:
        names = [n.strip() for n in str(metafunc.config.getoption("--backend")).split(",") if n.strip()]
        metafunc.parametrize("nc_backend", names, indirect=True, ids=names)


def required_backends() -> set[str]:
    return {n.strip() for n in os.environ.get(REQUIRE_ENV, "").split(",") if n.strip()}


def usable_backend(name: str) -> Backend:
    """The backend, or a skip (a failure when it is required) saying why it cannot run."""
    try:
        backend = get_backend(name)
        backend.preflight()
    except (BackendUnavailable, KeyError) as e:
        reason = f"backend {name} cannot run here: {e}"
        if name in required_backends():
            pytest.fail(f"{reason} (and {REQUIRE_ENV} requires it)", pytrace=False)
        pytest.skip(reason)
    return backend


@pytest.fixture
def nc_backend(request: pytest.FixtureRequest) -> Backend:
    backend = usable_backend(str(request.param))
    request.addfinalizer(backend.teardown)
    return backend


@pytest.fixture
def nc_examples(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--nc-examples"))


@pytest.fixture
def nc_seed(request: pytest.FixtureRequest) -> int | None:
    value = request.config.getoption("--nc-seed")
    return None if value is None else int(value)
