"""A sampling backend with scripted answers, for what the runner and compare do with a real kernel's samples.

A real kernel takes one load-balancing branch per connection, so one observation of a case may agree and the next
not; scripting the samples makes that deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from backends.sim import SimBackend
from conformance.dataplane import Dataplane
from conformance.probes import Observation, Outcome, Probe

HAIRPIN = Probe("pod:default/pod-b", IPv4Address("10.96.0.100"), 80, "TCP")
# The classic scenario's hairpin probe on the reference, as the simulator predicts it: served, the server sees the
# bridge's address.
SERVED = Outcome(
    "delivered",
    served_by="default/pod-b",
    served_port=8080,
    server_saw=IPv4Address("10.244.1.1"),
    client_saw=IPv4Address("10.96.0.100"),
)
DROPPED = Outcome("dropped", reason="no answer")


@dataclass
class Scripted:
    """Each observe() answers every probe with the next scripted outcome, then with `otherwise` (None: the
    simulator's first outcome for the deployed dataplane, a sample it allows)."""

    answers: list[Outcome] = field(default_factory=list)
    otherwise: Outcome | None = SERVED
    name: str = "scripted"
    exact: bool = False
    probe_timeout: float = 0.05
    timeouts: list[float] = field(default_factory=list)  # the timeout each observe() ran with
    sim: SimBackend = field(default_factory=SimBackend)

    def preflight(self) -> None:
        pass

    def deploy(self, dataplane: Dataplane) -> None:
        self.sim.deploy(dataplane)

    def reset(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def observe(self, probes: Sequence[Probe]) -> list[Observation]:
        self.timeouts.append(self.probe_timeout)
        if self.answers or self.otherwise is not None:
            outcome = self.answers.pop(0) if self.answers else self.otherwise
            return [Observation(p, ((outcome, 1.0),), exact=False) for p in probes]
        return [Observation(o.probe, ((o.outcomes[0][0], 1.0),), exact=False) for o in self.sim.observe(probes)]
