"""The simulator backend: a pure-Python model of the kernel dataplane."""

from __future__ import annotations

from collections.abc import Sequence

from backends.sim.kernel import Kernel, SimError
from backends.sim.probing import observe
from conformance.dataplane import Dataplane
from conformance.probes import Observation, Probe

__all__ = ["Kernel", "SimBackend", "SimError"]


class SimBackend:
    """No privileges, no side effects: every probe starts from clean state."""

    name = "sim"
    exact = True

    def __init__(self, *, tracing: bool = False) -> None:
        self.kernel: Kernel | None = None
        # Traces cost several times the walk: off by default; the runner and
        # compare turn them on to explain a failure or a disagreement.
        self.tracing = tracing

    def preflight(self) -> None:
        return None

    def deploy(self, dataplane: Dataplane) -> None:
        self.kernel = Kernel(dataplane)

    def observe(self, probes: Sequence[Probe]) -> list[Observation]:
        if self.kernel is None:
            raise RuntimeError("sim backend: observe() before deploy()")
        return [observe(self.kernel, p, tracing=self.tracing) for p in probes]

    def reset(self) -> None:
        # Each probe already runs on a copy of the connection state.
        return None

    def teardown(self) -> None:
        self.kernel = None
