"""results.json: the machine-readable record of a run, and reading one back.

Written from SpecResult / CompareResult; read back (by the baseline diff)
into the few typed facts a comparison needs. Every example is recorded with
its case (the case file's YAML), probes, every outcome with its probability,
the verdict and the violations; traces only for failures and disagreements,
where someone will read them (all of them would multiply the file's size).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from conformance.cases import dump_case
from conformance.compare import CompareResult, Distribution
from conformance.probes import Observation, Outcome, Probe
from conformance.reporting.meta import RunMeta
from conformance.reporting.reproduce import SavedCase, case_id
from conformance.runner import ExampleRecord, SpecResult

FORMAT = "netconformance.io/results/v1"

Json = dict[str, Any]


def probe_json(p: Probe) -> Json:
    return {"source": p.source, "destination": str(p.dst), "port": p.port, "protocol": p.protocol}


def outcome_key(o: Outcome) -> str:
    """What identifies an outcome (the reason is commentary, as in Outcome's equality)."""
    if o.verdict != "delivered":
        return o.verdict
    return f"delivered by {o.served_by}:{o.served_port}, server saw {o.server_saw}, reply from {o.client_saw}"


def outcome_json(o: Outcome, p: float, *, trace: bool) -> Json:
    doc: Json = {
        "p": p,
        "verdict": o.verdict,
        "served_by": o.served_by,
        "served_port": o.served_port,
        "server_saw": None if o.server_saw is None else str(o.server_saw),
        "client_saw": None if o.client_saw is None else str(o.client_saw),
        "reason": o.reason,
        "key": outcome_key(o),
    }
    if trace:
        doc["trace"] = list(o.trace)
    return doc


def observation_json(obs: Observation, *, traces: bool = False) -> Json:
    return {
        "probe": probe_json(obs.probe),
        "text": str(obs.probe),
        "exact": obs.exact,
        "outcomes": [outcome_json(o, p, trace=traces) for o, p in obs.outcomes],
    }


def record_json(r: ExampleRecord) -> Json:
    return {
        "case_id": case_id(r.case),
        "verdict": "pass" if r.passed else "fail",
        "violations": list(r.violations),
        "scenario": dump_case(r.case),
        "probes": [probe_json(p) for p in r.case.probes],
        "observations": [observation_json(o) for o in r.observations],
    }


def rerun_command(r: SpecResult, meta: RunMeta) -> str:
    examples = f" --examples {meta.examples}" if meta.examples is not None else ""
    return (
        f"netconformance run --spec {r.spec} --backend {r.backend} --implementation {r.implementation}"
        f" --seed {r.seed}{examples}"
    )


def result_json(r: SpecResult, saved: SavedCase | None, meta: RunMeta) -> Json:
    failure: Json | None = None
    if r.failure is not None:
        f = r.failure
        failure = {
            "case_id": case_id(f.case),
            "case_file": None if saved is None else str(saved.path),
            "reproduce": None if saved is None else saved.commands[0],
            "violations": list(f.violations),
            "scenario": dump_case(f.case),
            "probes": [probe_json(p) for p in f.case.probes],
            "observations": [observation_json(o, traces=True) for o in f.observations],
        }
    return {
        "spec": r.spec,
        "backend": r.backend,
        "implementation": r.implementation,
        "status": r.status,
        "examples": r.examples,
        "seconds": round(r.seconds, 3),
        "seed": r.seed,
        "rerun": rerun_command(r, meta),
        "violations": list(r.failure.violations) if r.failure else [],
        "error": r.error,
        "notes": list(r.notes),
        "failure": failure,
        "records": [record_json(x) for x in r.records],
    }


def distribution_json(d: Distribution) -> Json:
    return {
        "probe": probe_json(d.probe),
        "text": str(d.probe),
        "backend": d.backend,
        "predicted": dict(d.predicted),
        "observed": dict(d.observed),
    }


def comparison_status(c: CompareResult) -> str:
    return "pass" if c.passed else ("FAIL" if c.disagreement else "ERROR")


def comparison_json(c: CompareResult, saved: SavedCase | None) -> Json:
    disagreement: Json | None = None
    if c.disagreement is not None:
        d = c.disagreement
        disagreement = {
            "case_id": case_id(d.case),
            "case_file": None if saved is None else str(saved.path),
            "reproduce": [] if saved is None else list(saved.commands),
            "probe": probe_json(d.probe),
            "text": str(d.probe),
            "predictor": d.predictor,
            "backend": d.backend,
            "predicted": observation_json(d.predicted, traces=True),
            "observed": observation_json(d.observed, traces=True),
            "scenario": dump_case(d.case),
        }
    return {
        "backends": list(c.backends),
        "implementation": c.implementation,
        "status": comparison_status(c),
        "examples": c.examples,
        "seconds": round(c.seconds, 3),
        "seed": c.seed,
        "error": c.error,
        "disagreement": disagreement,
        "distributions": [distribution_json(x) for x in c.distributions],
    }


def run_json(
    meta: RunMeta,
    *,
    run_id: str,
    finished: datetime,
    versions: Mapping[str, str | None],
    results: Sequence[Json],
    comparisons: Sequence[Json],
) -> Json:
    seeds = sorted({int(r["seed"]) for r in results} | {int(c["seed"]) for c in comparisons})
    return {
        "format": FORMAT,
        "run": {
            "id": run_id,
            "started": meta.started.isoformat(),
            "finished": finished.isoformat(),
            "seconds": round((finished - meta.started).total_seconds(), 3),
            "command": list(meta.command),
            "seed_requested": meta.seed,
            "seeds": seeds,
            "versions": dict(versions),
            "tags": dict(meta.tags),
        },
        "results": list(results),
        "comparisons": list(comparisons),
    }


# Reading back -------------------------------------------------------------------------------------------------------


class ResultsError(ValueError):
    """A results.json that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class CaseRun:
    """One case as recorded: its verdict and, per probe, the set of outcomes seen."""

    case_id: str
    verdict: str
    outcomes: dict[str, frozenset[str]]  # probe text -> outcome keys with p > 0


@dataclass(frozen=True)
class Cell:
    """One spec x backend x implementation result (or one backend comparison)."""

    spec: str
    backend: str
    implementation: str
    status: str  # pass | FAIL | ERROR
    detail: tuple[str, ...]  # violations, or the error
    cases: dict[str, CaseRun]  # case id -> first run of that case

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.spec, self.backend, self.implementation)

    @property
    def label(self) -> str:
        return f"{self.spec} / {self.backend} / {self.implementation}"


def load_cells(path: Path) -> list[Cell]:
    """The cells of a results.json (a run's, a committed baseline, or the CLI's older flat list)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ResultsError(f"{path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not JSON: {e}") from None
    try:
        if isinstance(doc, list):  # the flat list `netconformance run` wrote before this module
            return [_cell(row, records=False) for row in doc]
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ResultsError(f"{path}: not a netconformance results file (expected format {FORMAT!r})")
        cells = [_cell(row, records=True) for row in doc["results"]]
        cells += [_comparison_cell(row) for row in doc.get("comparisons", [])]
        return cells
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ResultsError):
            raise
        raise ResultsError(f"{path}: malformed results ({type(e).__name__}: {e})") from None


def _cell(row: Json, *, records: bool) -> Cell:
    cases: dict[str, CaseRun] = {}
    for rec in row["records"] if records else []:
        cid = str(rec["case_id"])
        if cid in cases:
            continue  # Hypothesis may run a case twice; the first run stands for it
        outcomes = {
            str(obs["text"]): frozenset(str(o["key"]) for o in obs["outcomes"] if float(o["p"]) > 0)
            for obs in rec["observations"]
        }
        cases[cid] = CaseRun(cid, str(rec["verdict"]), outcomes)
    status = str(row["status"])
    detail = [str(v) for v in row.get("violations") or []] + ([str(row["error"])] if row.get("error") else [])
    return Cell(str(row["spec"]), str(row["backend"]), str(row["implementation"]), status, tuple(detail), cases)


def _comparison_cell(row: Json) -> Cell:
    predictor, backend = (str(b) for b in row["backends"])
    detail: list[str] = []
    if row.get("disagreement"):
        d = row["disagreement"]
        seen = [str(o["key"]) for o in d["observed"]["outcomes"]]
        detail.append(f"{d['text']}: {backend} observed {', '.join(seen) or 'nothing'}, not predicted by {predictor}")
    if row.get("error"):
        detail.append(str(row["error"]))
    return Cell(f"compare:{predictor}", backend, str(row["implementation"]), str(row["status"]), tuple(detail), {})
