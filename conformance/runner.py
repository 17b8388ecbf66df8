"""Running a spec: Hypothesis drives cases through an implementation and a backend.

A failing case is shrunk by Hypothesis to a minimal one; the result carries
it with everything needed to reproduce it: the scenario, the probes, what
was expected and observed, and the trace of the offending path.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, example, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import FlakyFailure

from backends import Backend, BackendError, BackendUnavailable, teardown_warnings
from backends.sim.kernel import SimError
from conformance.cases import Case, dump_case
from conformance.implementations import Implementation
from conformance.model import Scenario
from conformance.probes import Observation, Probe
from conformance.specs import Spec
from conformance.termination import checkpoint

# How long a real backend waits before calling a probe dropped: short while
# screening, long before a timeout is allowed to count as a violation.
SCREENING_TIMEOUT = 0.05
CONFIRMING_TIMEOUT = 1.0
# A drop on one of k equally likely branches is missed by all attempts with probability ((k-1)/k)^8: 4% for 3.
CONFIRM_ATTEMPTS = 8
# `replay` on a sampling backend: how many times the case is observed before it is said to hold.
REPLAY_SAMPLES = 20
# Errors whose message says it all (a plugin's ADD failed, the simulator lacks a feature): no class name shown.
EXPECTED_ERRORS = (BackendError, BackendUnavailable, SimError)
# A note that the run's verdict does not include but the user must hear of (the CLI says it on stderr).
WARNING = "warning: "


def _error_text(e: BaseException) -> str:
    """The project's own errors say it all; for anything unexpected the class name helps a bug report."""
    return str(e) if isinstance(e, EXPECTED_ERRORS) else f"{type(e).__name__}: {e}"


def screen(backend: Backend) -> None:
    """A real backend waits SCREENING_TIMEOUT for an answer (at most); confirm_timeouts waits longer."""
    if hasattr(backend, "probe_timeout"):
        backend.probe_timeout = min(backend.probe_timeout, SCREENING_TIMEOUT)


class SpecViolation(AssertionError):
    pass


@dataclass
class Failure:
    spec: str
    backend: str
    implementation: str
    case: Case
    observations: list[Observation]
    violations: list[str]

    def render(self, *, traces: bool = True) -> str:
        lines = [
            f"spec {self.spec} failed on backend {self.backend} with implementation {self.implementation}",
            "",
            "violations:",
            *(f"  - {v}" for v in self.violations),
            "",
            "observations:",
            *(f"  {line}" for obs in self.observations for line in obs.describe().splitlines()),
        ]
        if traces:
            shown = self._trace()
            if shown:
                lines += ["", f"trace of {shown[0]}:", *(f"  {t}" for t in shown[1])]
        lines += ["", "minimal case (scenario and probes):", dump_case(self.case)]
        return "\n".join(lines)

    def _trace(self) -> tuple[str, tuple[str, ...]] | None:
        # The first observation named in a violation, its first bad outcome with a trace.
        for obs in self.observations:
            if any(str(obs.probe) in v for v in self.violations):
                for o, _ in obs.outcomes:
                    if o.trace:
                        return f"{obs.probe} ({o.summary()})", o.trace
        return None


@dataclass
class ExampleRecord:
    """One Hypothesis example as run: what was asked, what was seen, the verdict."""

    case: Case
    observations: list[Observation]
    violations: list[str]

    @property
    def passed(self) -> bool:
        return not self.violations


@dataclass
class SpecResult:
    spec: str
    backend: str
    implementation: str
    examples: int
    seconds: float
    seed: int
    failure: Failure | None = None
    error: str | None = None  # the run could not judge (e.g. the simulator lacks a feature)
    notes: list[str] = field(default_factory=list)
    records: list[ExampleRecord] = field(default_factory=list)  # every example, in run order
    # A deliberately broken implementation: its FAIL is the spec catching it (the report judges it so).
    broken: bool = False

    @property
    def passed(self) -> bool:
        return self.failure is None and self.error is None

    @property
    def status(self) -> str:
        return "pass" if self.passed else ("FAIL" if self.failure else "ERROR")


def deploy_case(backend: Backend, implementation: Implementation, scenario: Scenario) -> None:
    """Render and deploy; a backend that is its own implementation (a real cluster) takes the intent."""
    deploy_scenario = getattr(backend, "deploy_scenario", None)
    if getattr(backend, "takes_intent", False) and deploy_scenario is not None:
        deploy_scenario(scenario)
    else:
        backend.deploy(implementation.render(scenario))


def check_case(
    spec: Spec, case: Case, backend: Backend, implementation: Implementation
) -> tuple[list[Observation], list[str]]:
    checkpoint()  # a termination signal whose exception was lost stops the run here
    deploy_case(backend, implementation, case.scenario)
    backend.reset()
    observations = backend.observe(case.probes)
    violations = spec.check(case, observations, backend.exact)
    dropped = [i for i, obs in enumerate(observations) if timed_out(obs)]
    if violations and dropped and hasattr(backend, "probe_timeout"):
        # A real backend screens with a short wait: before a timeout counts
        # against the dataplane, ask again and wait long enough to be sure.
        confirm_timeouts(backend, case.probes, observations, dropped)
        violations = spec.check(case, observations, backend.exact)
    if violations and getattr(backend, "tracing", True) is False:
        observations = traced(backend, case.probes)
    return observations, violations


def timed_out(obs: Observation) -> bool:
    return any(o.verdict == "dropped" for o, _ in obs.outcomes)


def confirm_timeouts(
    backend: Backend, probes: Sequence[Probe], observations: list[Observation], which: Sequence[int]
) -> None:
    """Observe probes[i] (i in `which`) again with the long timeout; replace their observations in place.

    A new connection may take another load-balancing branch than the one that timed out, so one answer does not
    clear a timeout: each probe is asked up to CONFIRM_ATTEMPTS times and a timeout on any attempt is the drop,
    confirmed. Only a probe answered every time counts as answered (a slow answer). Answers on a local veth take
    well under a millisecond, so the attempts cost little; a confirmed drop costs one long wait.
    """
    if not which or not hasattr(backend, "probe_timeout"):
        return
    saved = backend.probe_timeout
    backend.probe_timeout = max(CONFIRMING_TIMEOUT, saved)
    pending = list(which)
    try:
        for _ in range(CONFIRM_ATTEMPTS):
            again = backend.observe([probes[i] for i in pending])
            for i, obs in zip(pending, again, strict=True):
                observations[i] = obs
            pending = [i for i, obs in zip(pending, again, strict=True) if not timed_out(obs)]
            if not pending:
                break
    finally:
        backend.probe_timeout = saved


def traced(backend: Backend, probes: Sequence[Probe]) -> list[Observation]:
    """Observe again with traces on (the simulator is deterministic) to explain a result."""
    backend.tracing = True  # type: ignore[attr-defined]
    try:
        return backend.observe(probes)
    finally:
        backend.tracing = False  # type: ignore[attr-defined]


def run_spec(
    spec: Spec,
    backend: Backend,
    implementation: Implementation,
    *,
    examples: int = 100,
    seed: int | None = None,
    on_example: Callable[[], None] | None = None,
    shrink: bool = True,
) -> SpecResult:
    """Run one spec; never raises for a failing property (see SpecResult)."""
    used_seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    screen(backend)
    fixed = getattr(backend, "fixed_knob_reason", None)
    reason = fixed(spec.knobs) if fixed is not None and spec.knobs else None
    if reason is not None:
        return SpecResult(
            spec.name,
            backend.name,
            implementation.name,
            0,
            0.0,
            used_seed,
            notes=[f"skipped: {reason}"],
            broken=implementation.broken,
        )
    supports = getattr(backend, "supports", None)
    skipped: dict[str, int] = {}
    last: dict[str, Failure] = {}
    records: list[ExampleRecord] = []

    def prop(case: Case) -> None:
        why = supports(case.scenario) if supports is not None else None
        if why is not None:
            skipped[why] = skipped.get(why, 0) + 1
            reject()
        observations, violations = check_case(spec, case, backend, implementation)
        records.append(ExampleRecord(case, observations, violations))
        if on_example is not None:
            on_example()
        if violations:
            # Hypothesis replays the minimal failing case last, so this ends as it.
            last["failure"] = Failure(spec.name, backend.name, implementation.name, case, observations, violations)
            raise SpecViolation("\n".join(violations))

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    test = given(spec.cases())(prop)
    for case in reversed(spec.examples):
        test = example(case)(test)
    test = settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=phases,
        derandomize=False,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )(test)
    test = hypothesis_seed(used_seed)(test)
    start = time.perf_counter()
    result = SpecResult(spec.name, backend.name, implementation.name, 0, 0.0, used_seed, broken=implementation.broken)
    try:
        test()
    except SpecViolation:
        result.failure = last.get("failure")
    except FlakyFailure as e:
        result.failure = last.get("failure")
        if result.failure is not None:
            # A sampling backend (a real kernel) broke the promise once and kept it
            # on replay: with random load balancing that is evidence, not noise.
            result.notes.append("the violation did not recur on every replay (a sampled, random outcome)")
        else:
            # No broken promise, but an error that did not come back on replay (a plugin that timed out once):
            # the cell could not be judged, it did not pass.
            cause = next((x for x in e.exceptions if not isinstance(x, SpecViolation)), e)
            result.error = f"{_error_text(cause)} (once: it did not recur on replay)"
    except Exception as e:  # a backend or simulator error: report it, do not crash the run
        result.error = _error_text(e)
    finally:
        backend.teardown()
    result.notes += [f"{n} case(s) skipped: {why}" for why, n in skipped.items()]
    # What teardown could not undo cleanly (a CNI plugin's DEL that failed, on netns).
    result.notes += [WARNING + w for w in teardown_warnings(backend)]
    result.examples = len(records)
    result.records = records
    result.seconds = time.perf_counter() - start
    return result


def replay(
    spec: Spec, case: Case, backend: Backend, implementation: Implementation
) -> tuple[list[Observation], list[str]]:
    """One observation of a case, then teardown (the corpus keeps only cases whose verdict no sample changes)."""
    done = replay_sampled(spec, case, backend, implementation, samples=1)
    return done.observations, done.violations


@dataclass
class Replayed:
    observations: list[Observation]  # the violating sample's, or the last one's
    violations: list[str]
    samples: int  # how many times the case was observed (1 on an exact backend)


def replay_sampled(
    spec: Spec, case: Case, backend: Backend, implementation: Implementation, *, samples: int = REPLAY_SAMPLES
) -> Replayed:
    """Replay a case; a sampling backend observes it up to `samples` times, stopping at the first violation.

    A real kernel takes one load-balancing branch per connection, so a failure found on one branch shows only
    when that branch is sampled again: one observation would call the case held most of the time.
    """
    try:
        n = 0
        while True:
            observations, violations = check_case(spec, case, backend, implementation)
            n += 1
            if violations or backend.exact or n >= samples:
                return Replayed(observations, violations, n)
    finally:
        backend.teardown()


def summarize(results: Sequence[SpecResult]) -> str:
    # Each row's own seed: `run --spec S --backend B --implementation I --seed N` reruns exactly that row.
    rows = [("spec", "backend", "implementation", "result", "examples", "seconds", "seed")]
    for r in results:
        rows.append((r.spec, r.backend, r.implementation, r.status, str(r.examples), f"{r.seconds:.1f}", str(r.seed)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
