"""pytest plugin: run the specs as ordinary tests, on the backends named by --backend.

Registered through the `pytest11` entry point. Tests that take the
`nc_backend` fixture are parametrized over the backends; a backend that
cannot run here is skipped with its reason, or fails the test when the
environment variable NETCONFORMANCE_REQUIRE_BACKENDS names it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backends import Backend, BackendUnavailable, get_backend
from conformance.arguments import UsageError, backend_list, count
from conformance.runner import SpecResult
from conformance.termination import unwind_on_termination

_RESULTS = pytest.StashKey[list[SpecResult]]()
_BACKENDS = pytest.StashKey[list[str]]()

REQUIRE_ENV = "NETCONFORMANCE_REQUIRE_BACKENDS"
_WORKER_KEY = "netconformance_results"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netconformance")
    group.addoption("--backend", default="sim", help="comma-separated netconformance backends (default: sim)")
    group.addoption("--nc-examples", type=count, default=100, help="Hypothesis examples per spec (default: 100)")
    group.addoption("--nc-seed", type=int, default=None, help="Hypothesis seed for the specs (default: random)")


def pytest_configure(config: pytest.Config) -> None:
    # A cancelled CI job's SIGTERM unwinds like Ctrl-C: fixtures and backends tear down what the session built.
    unwind_on_termination()
    config.stash[_RESULTS] = []
    config.stash[_BACKENDS] = _backend_option(str(config.getoption("--backend")))


def _backend_option(value: str) -> list[str]:
    """--backend's names, checked: a typo must not turn into a skipped (so silently passing) session."""
    try:
        return backend_list(value, "--backend")
    except UsageError as e:
        raise pytest.UsageError(str(e)) from None


def selected_backends(config: pytest.Config) -> list[str]:
    """The backends `--backend` names, as checked at start-up."""
    return config.stash[_BACKENDS]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tox and CI runs leave the same reports a CLI run does."""
    config = session.config
    results: list[SpecResult] = config.stash.get(_RESULTS, [])
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        # A pytest-xdist worker: hand the results to the controller, which
        # writes one report for the whole session.
        workeroutput[_WORKER_KEY] = pickle.dumps(results)
        return
    if not results:
        return
    from conformance.reporting import RunMeta, new_run_dir, write_run  # only when there is something to write

    run_dir = new_run_dir(Path(os.environ.get("NETCONFORMANCE_REPORT_DIR", "reports/runs")), maker="pytest")
    meta = RunMeta(datetime.now(UTC), ("pytest", *session.config.invocation_params.args))
    report = write_run(run_dir, results=results, meta=meta)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"netconformance report: {report.html}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist (controller): a worker finished; keep its spec results."""
    data = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if data is not None:
        node.config.stash[_RESULTS].extend(pickle.loads(data))


@pytest.fixture
def nc_record(request: pytest.FixtureRequest) -> Callable[[SpecResult], None]:
    """Hand a SpecResult to the session report."""
    results: list[SpecResult] = request.config.stash[_RESULTS]
    return results.append


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "nc_backend" in metafunc.fixturenames:
        names = selected_backends(metafunc.config)
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
