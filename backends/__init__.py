"""Backends: what executes a dataplane configuration and answers probes.

Every backend answers the same small contract (pytest-testinfra style): say
whether it can run here, deploy a `Dataplane`, observe probes, reset
connection state between examples, tear down exactly what it made.

Backends are found by name: the built-in ones below, plus any third-party
package exposing a factory under the `netconformance.backends` entry point.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from importlib.metadata import entry_points
from typing import Protocol

from conformance.dataplane import Dataplane
from conformance.probes import Observation, Probe


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says exactly why and what to do."""


class BackendError(RuntimeError):
    """The backend failed at what it was given: a rule the kernel refused, a CNI plugin whose ADD failed, an agent
    that went away. The message carries what the kernel, plugin or agent said."""


def env_seconds(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    """A positive number of seconds from environment variable `name` (unset or empty: `default`)."""
    value = (os.environ if env is None else env).get(name, "")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise BackendUnavailable(f"{name}={value!r}: expected a number of seconds greater than 0")
    return seconds


class Backend(Protocol):
    name: str
    # True when observations are full outcome distributions (the simulator),
    # False when they are samples from a real system.
    exact: bool

    def preflight(self) -> None:
        """Raise BackendUnavailable if this backend cannot run here."""

    def deploy(self, dataplane: Dataplane) -> None:
        """Build (or reconfigure to) this dataplane."""

    def observe(self, probes: Sequence[Probe]) -> list[Observation]:
        """Run probes (each a new connection) and report what happened."""

    def reset(self) -> None:
        """Forget connection state between examples (conntrack, sockets)."""

    def teardown(self) -> None:
        """Remove everything this backend created. Safe to call twice."""


def teardown_warnings(backend: object) -> list[str]:
    """What a backend's teardown could not undo cleanly since the last call (its optional `take_warnings`: CNI
    DEL errors on netns), each once; none for a backend without it."""
    take: Callable[[], list[str]] | None = getattr(backend, "take_warnings", None)
    return take() if take is not None else []


BackendFactory = Callable[[], Backend]

_BUILTIN: dict[str, str] = {
    "sim": "backends.sim:SimBackend",
    "netns": "backends.netns:NetnsBackend",
    "kind": "backends.kind:KindBackend",
    "docker": "backends.docker:DockerBackend",
    "sim-snapshot": "backends.sim_snapshot:SimSnapshotBackend",
}


def backend_names() -> list[str]:
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group="netconformance.backends"))
    return sorted(names)


def get_backend(name: str) -> Backend:
    """Instantiate a backend by name; unknown names list the known ones."""
    target = _BUILTIN.get(name)
    if target is None:
        for ep in entry_points(group="netconformance.backends"):
            if ep.name == name:
                factory: BackendFactory = ep.load()
                return factory()
        raise KeyError(f"unknown backend {name!r} (known: {', '.join(backend_names())})")
    module, _, attr = target.partition(":")
    factory = getattr(import_module(module), attr)
    backend: Backend = factory()
    return backend
