"""sim-snapshot: the simulator's prediction of what a real kernel was given, read back from it.

A Dataplane is deployed on a real backend (netns by default; anything with
`snapshot() -> Dataplane`), every namespace is read back (`conformance.snapshot`:
links, addresses, routes, sysctls, the full ruleset; listeners and probe
sources from the intent), and the simulator models that plain Dataplane.
This is how the simulator predicts what it cannot run itself (real CNI
plugins, rules added on top of theirs) and how `compare` checks a snapshot's
prediction against the kernel it came from.

Sharing the live backend with `compare`: ``SimSnapshotBackend(live=netns)``
deploys through the same netns backend the comparison probes, which then
finds the dataplane already in place (an unchanged redeploy is a no-op swap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from backends import teardown_warnings
from backends.sim import SimBackend
from conformance.dataplane import Dataplane
from conformance.probes import Observation, Probe


class Snapshotting(Protocol):
    name: str

    def preflight(self) -> None: ...

    def deploy(self, dataplane: Dataplane) -> None: ...

    def snapshot(self) -> Dataplane: ...

    def teardown(self) -> None: ...


class SimSnapshotBackend:
    """Exact (distributions, like sim), predicted from a live backend's state."""

    name = "sim-snapshot"
    exact = True

    def __init__(self, live: Snapshotting | None = None) -> None:
        if live is None:
            from backends.netns import NetnsBackend  # imported late: plain sim users need no pyroute2

            live = NetnsBackend()
            self._owns_live = True
        else:
            self._owns_live = False  # a shared backend is torn down by its owner
        self.live = live
        self.sim = SimBackend()
        self.snapshot: Dataplane | None = None  # the last Dataplane read back

    @property
    def tracing(self) -> bool:
        return self.sim.tracing

    @tracing.setter
    def tracing(self, on: bool) -> None:
        # The runner and compare turn traces on to explain a result.
        self.sim.tracing = on

    def preflight(self) -> None:
        self.live.preflight()

    def deploy(self, dataplane: Dataplane) -> None:
        self.live.deploy(dataplane)
        self.snapshot = self.live.snapshot()
        self.sim.deploy(self.snapshot)

    def observe(self, probes: Sequence[Probe]) -> list[Observation]:
        return self.sim.observe(probes)

    def reset(self) -> None:
        self.sim.reset()

    def teardown(self) -> None:
        self.sim.teardown()
        if self._owns_live:
            self.live.teardown()

    def take_warnings(self) -> list[str]:
        """What the live backend's teardown reported (CNI DEL errors), when this backend tore it down."""
        return teardown_warnings(self.live) if self._owns_live else []
