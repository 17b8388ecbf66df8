"""The runner against a sampling backend: a timeout is confirmed on more than one connection, and a replay takes
several samples, because a real kernel takes one load-balancing branch per connection."""

from __future__ import annotations

from dataclasses import dataclass

from backends.netns.build import BuildError
from backends.sim import SimBackend
from conformance.cases import Case
from conformance.dataplane import Dataplane
from conformance.implementations import get_implementation
from conformance.probes import Observation
from conformance.runner import CONFIRM_ATTEMPTS, CONFIRMING_TIMEOUT, confirm_timeouts, replay_sampled, run_spec
from conformance.specs import get_spec
from conformance.strategies import classic_scenario

from scripted import DROPPED, HAIRPIN, SERVED, Scripted


def _screened() -> list[Observation]:
    return [Observation(HAIRPIN, ((DROPPED, 1.0),), exact=False)]


def test_a_timeout_on_any_attempt_is_the_drop_confirmed() -> None:
    # The second connection took another branch and was served; the third timed out again: a drop, not slowness.
    backend = Scripted([SERVED, DROPPED])
    observations = _screened()
    confirm_timeouts(backend, [HAIRPIN], observations, [0])
    assert observations[0].outcomes[0][0].verdict == "dropped"
    assert backend.timeouts == [CONFIRMING_TIMEOUT, CONFIRMING_TIMEOUT]  # asked with the long wait, stopped at it
    assert backend.probe_timeout == 0.05  # the screening timeout is back


def test_answered_every_time_is_a_slow_answer() -> None:
    backend = Scripted([])
    observations = _screened()
    confirm_timeouts(backend, [HAIRPIN], observations, [0])
    assert observations[0].outcomes[0][0] == SERVED
    assert len(backend.timeouts) == CONFIRM_ATTEMPTS


def test_replay_samples_a_sampling_backend_until_the_violation() -> None:
    case = Case(classic_scenario(), (HAIRPIN,))
    backend = Scripted([SERVED, SERVED, DROPPED, DROPPED])  # the third sample hits the branch that drops
    done = replay_sampled(get_spec("hairpin"), case, backend, get_implementation("reference"))
    assert done.samples == 3 and done.violations
    assert done.observations[0].outcomes[0][0].verdict == "dropped"

    held = replay_sampled(get_spec("hairpin"), case, Scripted([]), get_implementation("reference"), samples=5)
    assert held.samples == 5 and held.violations == []


def test_replay_observes_an_exact_backend_once() -> None:
    case = Case(classic_scenario(), (HAIRPIN,))
    done = replay_sampled(get_spec("hairpin"), case, SimBackend(), get_implementation("hairpin-mode-off"))
    assert done.samples == 1 and done.violations


@dataclass
class FailsOnce(Scripted):
    """A backend whose first deployment fails (a CNI plugin that timed out once) and later ones work."""

    fail_at: int = 1
    deployments: int = 0

    def deploy(self, dataplane: Dataplane) -> None:
        self.deployments += 1
        if self.deployments == self.fail_at:
            raise BuildError("node-node-1: CNI bridge ADD for pod-a: no answer within 1s")
        super().deploy(dataplane)


def test_an_error_that_does_not_recur_is_not_a_pass() -> None:
    # Hypothesis calls an error that replay cannot reproduce flaky; the cell was not judged, so it must not pass.
    spec = get_spec("hairpin")
    backend = FailsOnce(
        [], otherwise=None, fail_at=len(spec.examples) + 1
    )  # a generated example: the explicit ones come first
    r = run_spec(spec, backend, get_implementation("reference"), examples=5, seed=1)
    assert r.failure is None and r.status == "ERROR", (r.status, r.notes)
    assert r.error == "node-node-1: CNI bridge ADD for pod-a: no answer within 1s (once: it did not recur on replay)"
