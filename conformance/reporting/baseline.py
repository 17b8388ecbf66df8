"""Comparing a run with a baseline: what newly fails, what got fixed, which outcomes changed.

A cell is one spec x backend x implementation result. A new failure is a
cell whose status is not pass and differs from the baseline's (including a
failing cell the baseline does not have: nobody vouched for it). A changed
outcome is the same case in the same cell whose set of observed outcomes
for a probe differs; cases only line up when both runs used the same seed
and example count, so the diff says how many cases it could compare.

A deliberately broken implementation (the mutants `pytest` and `mutants`
run) is judged the other way round: its FAIL is a spec catching it, as
intended, and the regression is a cell the baseline caught that now passes
(the spec lost its power to tell it from the reference). Its ERROR is a new
failure like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conformance.reporting.document import Cell, ResultsError, load_results


@dataclass(frozen=True)
class StatusChange:
    spec: str
    backend: str
    implementation: str
    before: str | None  # None: the baseline has no such cell
    after: str
    detail: tuple[str, ...]  # the run's violations or error (new failures), the baseline's (fixes)

    @property
    def label(self) -> str:
        return f"{self.spec} / {self.backend} / {self.implementation}"


@dataclass(frozen=True)
class OutcomeChange:
    spec: str
    backend: str
    implementation: str
    case_id: str
    probe: str
    before: frozenset[str]
    after: frozenset[str]
    verdict_before: str
    verdict_after: str


@dataclass(frozen=True)
class BaselineDiff:
    run: Path
    baseline: Path
    new_failures: tuple[StatusChange, ...]
    fixes: tuple[StatusChange, ...]
    changed_outcomes: tuple[OutcomeChange, ...]
    missing: tuple[str, ...]  # cells in the baseline that the run did not have
    cells_compared: int
    cases_compared: int  # cases present in both
    no_longer_caught: tuple[StatusChange, ...] = ()  # broken implementations the baseline caught and the run passes
    caught: int = 0  # the run's cells of broken implementations a spec caught (FAIL), as intended
    versions: tuple[tuple[str, str | None, str | None], ...] = ()  # (tool, baseline's, run's) where they differ
    interrupted: str | None = None  # the run was cut short: the baseline's cells it did not reach are `missing`

    @property
    def regressed(self) -> bool:
        return bool(self.new_failures or self.no_longer_caught)


def _results_file(path: Path) -> Path:
    return path / "results.json" if path.is_dir() else path


def compare_with_baseline(run: Path, baseline: Path) -> BaselineDiff:
    """run and baseline: results.json files (or run directories holding one)."""
    run, baseline = _results_file(run), _results_file(baseline)
    run_doc, baseline_doc = load_results(run), load_results(baseline)
    now = {c.key: c for c in run_doc.cells}
    before = {c.key: c for c in baseline_doc.cells}
    if not now.keys() & before.keys():
        # Every run cell would be "not in baseline" and every baseline cell "not in this run": nothing is compared,
        # and a pass would vouch for nothing (a wrong --baseline, or a run of other specs or implementations).
        raise ResultsError(
            f"{run} and the baseline {baseline} have no spec / backend / implementation cell in common,"
            f" so there is nothing to compare: the run has {_labels(now)}; the baseline has {_labels(before)}"
        )
    new_failures: list[StatusChange] = []
    fixes: list[StatusChange] = []
    lost: list[StatusChange] = []
    changed: list[OutcomeChange] = []
    cases = 0
    for key, cell in now.items():
        old = before.get(key)
        old_status = old.status if old is not None else None
        if cell.broken and cell.status != "ERROR":
            # FAIL is the spec catching a broken implementation; passing where the baseline caught it is the loss.
            if cell.status == "pass" and old_status == "FAIL":
                lost.append(StatusChange(*key, old_status, cell.status, old.detail if old is not None else ()))
            elif old is not None and old.status == "ERROR":
                fixes.append(StatusChange(*key, old.status, cell.status, old.detail))
        elif cell.status != "pass" and cell.status != old_status:
            new_failures.append(StatusChange(*key, old_status, cell.status, cell.detail))
        elif cell.status == "pass" and old is not None and old.status != "pass":
            fixes.append(StatusChange(*key, old.status, cell.status, old.detail))
        if old is not None:
            found, n = _changed_outcomes(old, cell)
            changed += found
            cases += n
    missing = tuple(before[k].label for k in before if k not in now)
    caught = sum(1 for c in now.values() if c.broken and c.status == "FAIL")
    versions = tuple(
        (name, baseline_doc.versions.get(name), run_doc.versions.get(name))
        for name in dict.fromkeys([*baseline_doc.versions, *run_doc.versions])
        if baseline_doc.versions.get(name) != run_doc.versions.get(name)
    )
    return BaselineDiff(
        run,
        baseline,
        tuple(new_failures),
        tuple(fixes),
        tuple(changed),
        missing,
        len(now),
        cases,
        tuple(lost),
        caught,
        versions,
        run_doc.interrupted,
    )


def _labels(cells: dict[tuple[str, str, str], Cell], shown: int = 5) -> str:
    """How many cells and which, the first `shown` of them by name."""
    labels = [c.label for c in cells.values()]
    more = f", ... and {len(labels) - shown} more" if len(labels) > shown else ""
    noun = "cell" if len(labels) == 1 else "cells"
    return f"{len(labels)} {noun} ({', '.join(labels[:shown])}{more})"


def _changed_outcomes(old: Cell, new: Cell) -> tuple[list[OutcomeChange], int]:
    out: list[OutcomeChange] = []
    common = [cid for cid in new.cases if cid in old.cases]
    for cid in common:
        a, b = old.cases[cid], new.cases[cid]
        for probe in dict.fromkeys([*a.outcomes, *b.outcomes]):
            seen_before, seen_now = a.outcomes.get(probe, frozenset()), b.outcomes.get(probe, frozenset())
            if seen_before != seen_now:
                out.append(
                    OutcomeChange(
                        new.spec,
                        new.backend,
                        new.implementation,
                        cid,
                        probe,
                        seen_before,
                        seen_now,
                        a.verdict,
                        b.verdict,
                    )
                )
    return out, len(common)


def _set(keys: frozenset[str]) -> str:
    return "{" + "; ".join(sorted(keys)) + "}" if keys else "{}"


def render_diff(diff: BaselineDiff) -> str:
    lines = [f"run {diff.run}", f"  against baseline {diff.baseline}"]
    if diff.interrupted:
        lines.append(f"  a partial run: {diff.interrupted}")
    lines.append("")
    lines.append(f"new failures: {len(diff.new_failures)}")
    for s in diff.new_failures:
        was = "not in baseline" if s.before is None else f"was {s.before}"
        lines.append(f"  - {s.label}: {s.after} ({was})")
        lines += [f"      {d}" for d in s.detail[:5]]
        if len(s.detail) > 5:
            lines.append(f"      ... and {len(s.detail) - 5} more")
    if diff.no_longer_caught:
        lines.append(f"broken implementations no longer caught: {len(diff.no_longer_caught)}")
        for s in diff.no_longer_caught:
            lines.append(f"  - {s.label}: pass (the baseline caught it: FAIL)")
            lines += [f"      was: {d}" for d in s.detail[:3]]
    lines.append(f"fixes: {len(diff.fixes)}")
    lines += [f"  - {s.label}: {s.after} (was {s.before})" for s in diff.fixes]
    if diff.caught:
        lines.append(f"broken implementations caught by a spec, as intended: {diff.caught} cell(s) FAIL")
    lines.append(f"changed outcomes: {len(diff.changed_outcomes)} (in {diff.cases_compared} cases run by both)")
    for c in diff.changed_outcomes:
        verdict = f", verdict {c.verdict_before} -> {c.verdict_after}" if c.verdict_before != c.verdict_after else ""
        lines.append(f"  - {c.spec} / {c.backend} / {c.implementation}, case {c.case_id}{verdict}")
        lines.append(f"      {c.probe}")
        lines.append(f"      before: {_set(c.before)}")
        lines.append(f"      now:    {_set(c.after)}")
    if diff.cases_compared == 0 and diff.cells_compared:
        lines.append("  (no case ran in both: outcomes line up only with the baseline's seed and example count)")
    if diff.versions:
        changes = ", ".join(f"{name} {before or 'none'} -> {now or 'none'}" for name, before, now in diff.versions)
        lines.append(f"versions differ from the baseline's: {changes}")
        if any(name == "hypothesis" for name, _, _ in diff.versions):
            lines.append("  (another Hypothesis draws other cases from the same seed: fewer cases line up)")
    if diff.missing:
        lines.append(f"not in this run (in the baseline): {len(diff.missing)}")
        lines += [f"  - {m}" for m in diff.missing]
    if diff.new_failures:
        verdict = "REGRESSED: new failures since the baseline"
    elif diff.no_longer_caught:
        verdict = "REGRESSED: a spec no longer catches a broken implementation the baseline caught"
    else:
        verdict = "no regression"
    lines += ["", verdict]
    return "\n".join(lines)
