"""Differential runs: the same implementation output on several backends.

The simulator returns every possible outcome of a probe; a real backend
returns the one it saw, which must be among them. Any other answer is a
disagreement: a simulator bug or kernel behaviour the model does not know,
and Hypothesis shrinks it to a minimal scenario.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import FlakyFailure

from backends import Backend
from conformance import strategies
from conformance.cases import Case, dump_case
from conformance.implementations import Implementation
from conformance.probes import Observation, Outcome, Probe
from conformance.runner import confirm_timeouts, screen, timed_out, traced
from conformance.specs.common import cases_of
from conformance.termination import checkpoint


@dataclass
class Disagreement:
    """One probe on which a real backend's sample is not a predicted outcome."""

    case: Case
    probe: Probe
    predictor: str  # the exact backend (sim)
    backend: str  # the real backend
    predicted: Observation
    observed: Observation
    implementation: str = "reference"

    def render(self, *, case: bool = True) -> str:
        sample = self.observed.outcomes[0][0] if self.observed.outcomes else None
        lines = [
            f"{self.probe}: {self.backend} observed {sample.summary() if sample else 'nothing'}",
            f"  {self.predictor} predicted:",
            *(f"    p={p:.3f}: {o.summary()}" for o, p in self.predicted.outcomes),
        ]
        traced = next((o for o, _ in self.predicted.outcomes if o.trace), None)
        if traced is not None:
            lines.append(f"  {self.predictor} trace of {traced.summary()}:")
            lines += [f"    {t}" for t in traced.trace]
        if sample is not None and sample.reason:
            lines.append(f"  {self.backend} says: {sample.reason}")
        if case:
            lines += ["", "minimal case:", dump_case(self.case)]
        return "\n".join(lines)


@dataclass
class Distribution:
    """Load balancing: the predicted probabilities against counts seen on a real backend."""

    probe: Probe
    predicted: dict[str, float]  # outcome summary -> probability
    observed: dict[str, int]  # outcome summary -> count
    backend: str


@dataclass
class CompareResult:
    backends: tuple[str, str]
    implementation: str
    examples: int
    seconds: float
    seed: int
    disagreement: Disagreement | None = None
    error: str | None = None
    distributions: list[Distribution] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.disagreement is None and self.error is None


def agrees(predicted: Observation, observed: Observation) -> bool:
    """A sample agrees when it is one of the predicted possible outcomes."""
    possible = set(predicted.possible)
    return all(o in possible for o, p in observed.outcomes if p > 0)


def comparison_cases() -> st.SearchStrategy[Case]:
    """Scenarios with the knobs varied, and probes of every kind."""
    return cases_of(strategies.scenarios(knobs=True, max_nodes=2), lambda s: strategies.probes(s), max_probes=6)


# Comparisons screen with a short wait and confirm every would-be disagreement
# that is a timeout with a long one, so slow answers never count as drops.


def _observe_confirmed(
    backend: Backend, probes: Sequence[Probe], predicted: Sequence[Observation]
) -> list[Observation]:
    observed = backend.observe(probes)
    suspects = [
        i for i, (p, o) in enumerate(zip(predicted, observed, strict=True)) if not agrees(p, o) and timed_out(o)
    ]
    confirm_timeouts(backend, probes, observed, suspects)
    return observed


@dataclass
class Compared:
    """One case on both backends: every probe's prediction and sample, and the probes that disagree."""

    predicted: list[Observation]
    observed: list[Observation]
    disagreements: list[Disagreement]


def compare_once(case: Case, predictor: Backend, backend: Backend, implementation: Implementation) -> Compared:
    dataplane = implementation.render(case.scenario)
    predictor.deploy(dataplane)
    backend.deploy(dataplane)
    backend.reset()
    predicted = predictor.observe(case.probes)
    observed = _observe_confirmed(backend, case.probes, predicted)
    bad = [i for i, (p, o) in enumerate(zip(predicted, observed, strict=True)) if not agrees(p, o)]
    if bad and getattr(predictor, "tracing", True) is False:
        predicted = traced(predictor, case.probes)  # explain the prediction
    diffs = [
        Disagreement(
            case, predicted[i].probe, predictor.name, backend.name, predicted[i], observed[i], implementation.name
        )
        for i in bad
    ]
    return Compared(list(predicted), list(observed), diffs)


def find_disagreements(
    case: Case, predictor: Backend, backend: Backend, implementation: Implementation
) -> list[Disagreement]:
    return compare_once(case, predictor, backend, implementation).disagreements


def replay_comparison(
    case: Case, predictor: Backend, backend: Backend, implementation: Implementation, *, samples: int
) -> tuple[Compared, int]:
    """A saved case on both backends, sampled up to `samples` times, stopping at the first disagreement.

    A real backend takes one load-balancing branch per connection, so a
    disagreement on one branch shows only when that branch comes up again.
    Returns the disagreeing (or last) comparison and how many were made.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    screen(backend)
    taken = 0
    while True:
        checkpoint()
        done = compare_once(case, predictor, backend, implementation)
        taken += 1
        if done.disagreements or taken == samples:
            return done, taken


def run_compare(
    predictor: Backend,
    backend: Backend,
    implementation: Implementation,
    *,
    examples: int = 100,
    seed: int | None = None,
    cases: st.SearchStrategy[Case] | None = None,
    on_example: Callable[[], None] | None = None,
) -> CompareResult:
    used_seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    screen(backend)
    found: dict[str, Disagreement] = {}
    count = 0

    def prop(case: Case) -> None:
        nonlocal count
        checkpoint()  # a termination signal whose exception was lost stops the run here
        count += 1
        diffs = find_disagreements(case, predictor, backend, implementation)
        if on_example is not None:
            on_example()
        if diffs:
            found["last"] = diffs[0]  # the minimal case is replayed last
            raise AssertionError(diffs[0].render())

    test = given(cases if cases is not None else comparison_cases())(prop)
    test = settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        print_blob=False,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )(test)
    test = hypothesis_seed(used_seed)(test)
    result = CompareResult((predictor.name, backend.name), implementation.name, 0, 0.0, used_seed)
    start = time.perf_counter()
    try:
        test()
    except (AssertionError, FlakyFailure):
        # A disagreement that does not recur is still one: a real kernel sampled
        # an outcome the simulator says is impossible.
        result.disagreement = found.get("last")
    except Exception as e:
        result.error = f"{type(e).__name__}: {e}"
    result.examples = count
    result.seconds = time.perf_counter() - start
    return result


def replay_pinned(
    cases: Sequence[Case], predictor: Backend, backend: Backend, implementation: Implementation
) -> list[Disagreement]:
    """Replay pinned regression cases on both backends; return what disagrees."""
    out: list[Disagreement] = []
    for case in cases:
        out += find_disagreements(case, predictor, backend, implementation)
    return out


def outcome_counts(observations: Sequence[Observation]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for obs in observations:
        for o, _ in obs.outcomes:
            counts[_label(o)] = counts.get(_label(o), 0) + 1
    return counts


def _label(o: Outcome) -> str:
    return o.served_by or o.verdict
