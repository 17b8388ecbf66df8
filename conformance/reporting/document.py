"""results.json: the machine-readable record of a run, and reading one back.

Written from SpecResult / CompareResult; read back (by the baseline diff)
into the few typed facts a comparison needs. Every example is recorded with
its case (the case file's YAML), probes, every outcome with its probability,
the verdict and the violations; traces only for failures and disagreements,
where someone will read them (all of them would multiply the file's size).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from conformance.cases import dump_case
from conformance.compare import CompareResult, Distribution
from conformance.implementations import broken_implementations
from conformance.probes import Observation, Outcome, Probe
from conformance.reporting.meta import Interruption, RunMeta
from conformance.reporting.reproduce import SavedCase, case_id, with_environment
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
    words = ["netconformance", "run", "--spec", r.spec, "--backend", r.backend, "--implementation", r.implementation]
    words += ["--seed", str(r.seed)]
    if meta.examples is not None:
        words += ["--examples", str(meta.examples)]
    return with_environment(shlex.join(words), r.implementation)  # a conflist:PATH may hold spaces


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
        "broken": r.broken,
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
            "interrupted": None if meta.interrupted is None else dataclasses.asdict(meta.interrupted),
            "backend_runs": dict(meta.backend_runs),
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
    status: str  # one of STATUSES: pass | FAIL | ERROR
    detail: tuple[str, ...]  # violations, or the error
    cases: dict[str, CaseRun]  # case id -> first run of that case
    broken: bool = False  # a deliberately broken implementation: FAIL is the spec catching it

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.spec, self.backend, self.implementation)

    @property
    def label(self) -> str:
        return f"{self.spec} / {self.backend} / {self.implementation}"


@dataclass(frozen=True)
class Results:
    """What a comparison reads from a results.json: its cells and the versions that produced them."""

    cells: list[Cell]
    versions: dict[str, str]  # tool -> version (python, hypothesis, kernel, ...); empty for the older flat list
    interrupted: str | None = None  # how a run cut short ended ("interrupted by SIGINT after 1 of 4 cells")


def load_results(path: Path) -> Results:
    """The cells and versions of a results.json (a run's, a committed baseline, or the CLI's older flat list)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ResultsError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        byte = e.object[e.start]
        raise ResultsError(
            f"{path}: not a results file: not UTF-8 text (byte 0x{byte:02x} at offset {e.start})"
        ) from None
    try:
        doc = json.loads(text)
    except RecursionError:
        # json recurses once per level; a results.json nests about a dozen deep.
        raise ResultsError(f"{path}: not a results file: JSON nested too deeply to read") from None
    except ValueError as e:  # JSONDecodeError, and also integers too long to convert
        raise ResultsError(f"{path}: not JSON: {e}") from None
    try:
        return Results(_cells(doc), _versions(doc), _interrupted(doc))
    except _Malformed as e:
        raise ResultsError(f"{path}: {e}") from None


# What the writers above produce: SpecResult.status and comparison_status give a cell's status, record_json a case's
# verdict. Anything else ("PASS", a typo) is a damaged file, not a failure: it must not read as a regression.
STATUSES = ("pass", "FAIL", "ERROR")
VERDICTS = ("pass", "fail")


class _Malformed(ValueError):
    """Where in the document (e.g. results[3].status) and what is wrong there; load_results adds the file."""


_MISSING = object()  # what _at gives for a field the object does not have


def _cells(doc: object) -> list[Cell]:
    placed: list[tuple[str, Cell]] = []
    if isinstance(doc, list):  # the flat list `netconformance run` wrote before this module
        placed = [(f"[{i}]", _cell(row, f"[{i}]", records=False)) for i, row in enumerate(doc)]
        if not placed:
            raise _Malformed("an empty list: no results, so nothing to compare (a run records at least one)")
    elif isinstance(doc, dict) and doc.get("format") == FORMAT:
        results = _list(*_at(doc, "results", ""))
        # A compare run records no results, only comparisons; older files have no comparisons.
        comparisons = _list(doc.get("comparisons", []), "comparisons")
        placed = [(f"results[{i}]", _cell(row, f"results[{i}]", records=True)) for i, row in enumerate(results)]
        placed += [
            (f"comparisons[{i}]", _comparison_cell(row, f"comparisons[{i}]")) for i, row in enumerate(comparisons)
        ]
        if not placed:
            raise _Malformed(
                "results and comparisons are both empty: nothing to compare (a run records at least one of either)"
            )
    else:
        if isinstance(doc, dict):
            found = f"format {_found(doc['format'])}" if "format" in doc else "an object without a format"
        else:
            found = _found(doc)
        raise _Malformed(
            f"not a netconformance results file (expected an object with format {json.dumps(FORMAT)}"
            f" or the older flat list, found {found})"
        )
    first: dict[tuple[str, str, str], str] = {}
    for where, cell in placed:
        # One cell per spec x backend x implementation; a second would silently replace the first in the diff.
        if cell.key in first:
            raise _Malformed(f"{where}: {cell.label} is already at {first[cell.key]} (a cell may appear only once)")
        first[cell.key] = where
    return [cell for _, cell in placed]


def _versions(doc: object) -> dict[str, str]:
    """run.versions: optional (the flat list has none); each a string, or null for a tool that was not found."""
    if not isinstance(doc, dict) or "run" not in doc:
        return {}
    run = _object(doc["run"], "run")
    if "versions" not in run:
        return {}
    versions = _object(run["versions"], "run.versions")
    return {name: _text(value, f"run.versions.{name}") for name, value in versions.items() if value is not None}


def _interrupted(doc: object) -> str | None:
    """run.interrupted: optional (older files have none); null for a run that ran every cell."""
    if not isinstance(doc, dict) or "run" not in doc:
        return None
    run = _object(doc["run"], "run")
    if run.get("interrupted") is None:
        return None
    where = "run.interrupted"
    stop = _object(run["interrupted"], where)

    def count(name: str) -> int:
        value, at = _at(stop, name, where)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _Malformed(f"{at}: expected a count, found {_found(value)}")
        return value

    return Interruption(_string(*_at(stop, "signal", where)), count("cells_run"), count("cells_planned")).describe()


def _cell(value: object, where: str, *, records: bool) -> Cell:
    row = _object(value, where)
    cases: dict[str, CaseRun] = {}
    for i, rec in enumerate(_list(*_at(row, "records", where)) if records else []):
        case = _case(rec, f"{where}.records[{i}]")
        cases.setdefault(case.case_id, case)  # Hypothesis may run a case twice; the first run stands for it
    return Cell(
        _string(*_at(row, "spec", where)),
        _string(*_at(row, "backend", where)),
        _string(*_at(row, "implementation", where)),
        _choice(*_at(row, "status", where), STATUSES),
        tuple(_violations(row, where) + _error(row, where)),
        cases,
        _broken(row, where),
    )


def _case(value: object, where: str) -> CaseRun:
    rec = _object(value, where)
    outcomes: dict[str, frozenset[str]] = {}  # probe text -> outcome keys with p > 0
    for i, item in enumerate(_list(*_at(rec, "observations", where))):
        at = f"{where}.observations[{i}]"
        obs = _object(item, at)
        seen: set[str] = set()
        for j, entry in enumerate(_list(*_at(obs, "outcomes", at))):
            outcome = _object(entry, f"{at}.outcomes[{j}]")
            key = _string(*_at(outcome, "key", f"{at}.outcomes[{j}]"))
            if _probability(*_at(outcome, "p", f"{at}.outcomes[{j}]")) > 0:  # p = 0: listed, but impossible
                seen.add(key)
        outcomes[_string(*_at(obs, "text", at))] = frozenset(seen)
    return CaseRun(_string(*_at(rec, "case_id", where)), _choice(*_at(rec, "verdict", where), VERDICTS), outcomes)


def _comparison_cell(value: object, where: str) -> Cell:
    row = _object(value, where)
    backends = _list(*_at(row, "backends", where))
    if len(backends) != 2:
        raise _Malformed(f"{where}.backends: expected [predictor, backend], found {_found(backends)}")
    predictor, backend = (_string(b, f"{where}.backends[{i}]") for i, b in enumerate(backends))
    detail: list[str] = []
    if row.get("disagreement") is not None:
        d = _object(row["disagreement"], f"{where}.disagreement")
        observed = _object(*_at(d, "observed", f"{where}.disagreement"))
        outcomes = _list(*_at(observed, "outcomes", f"{where}.disagreement.observed"))
        at = f"{where}.disagreement.observed.outcomes"
        seen = [_string(*_at(_object(o, f"{at}[{i}]"), "key", f"{at}[{i}]")) for i, o in enumerate(outcomes)]
        text = _string(*_at(d, "text", f"{where}.disagreement"))
        detail.append(f"{text}: {backend} observed {', '.join(seen) or 'nothing'}, not predicted by {predictor}")
    detail += _error(row, where)
    return Cell(
        f"compare:{predictor}",
        backend,
        _string(*_at(row, "implementation", where)),
        _choice(*_at(row, "status", where), STATUSES),
        tuple(detail),
        {},
    )


def _broken(row: Json, where: str) -> bool:
    """Whether the row's implementation is broken on purpose; files from before the field ask the registry."""
    if "broken" in row:
        return _flag(row["broken"], f"{where}.broken")
    name = row.get("implementation")
    return any(impl.name == name for impl in broken_implementations(cni_plugins=True))


def _violations(row: Json, where: str) -> list[str]:
    if "violations" not in row:  # optional: absent means none
        return []
    items = _list(row["violations"], f"{where}.violations")
    return [_text(v, f"{where}.violations[{i}]") for i, v in enumerate(items)]


def _error(row: Json, where: str) -> list[str]:
    error = row.get("error")  # optional; null means none
    if error is None:
        return []
    return [_text(error, f"{where}.error")] if error else []


# Typed access: each returns the value as the type it must be, or raises naming the place, the expectation, and what
# was there instead.


def _at(obj: Json, name: str, where: str) -> tuple[object, str]:
    """A field's value (or _MISSING) and its place, ready to unpack into a checker below."""
    return obj.get(name, _MISSING), f"{where}.{name}" if where else name


def _object(value: object, where: str) -> Json:
    if not isinstance(value, dict):
        raise _Malformed(f"{where}: expected an object, found {_found(value)}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Malformed(f"{where}: expected a list, found {_found(value)}")
    return value


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _Malformed(f"{where}: expected true or false, found {_found(value)}")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{where}: expected a string, found {_found(value)}")
    return value


def _string(value: object, where: str) -> str:
    """A name (spec, backend, case id, probe text, outcome key): a non-empty string."""
    if not isinstance(value, str) or not value:
        raise _Malformed(f"{where}: expected a non-empty string, found {_found(value)}")
    return value


# The simulator's probabilities are sums of products of path weights: an outcome every path reaches can come out a few
# ulps above 1 (e.g. 1.0000000000000013 over 199 endpoints). That is rounding, not damage.
P_ROUNDING = 1e-9


def _probability(value: object, where: str) -> float:
    """An outcome's probability: a number from 0 to 1 (never NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"{where}: expected a number, found {_found(value)}")
    # Compared before float(): an integer too large for a float is out of range, not an OverflowError. NaN fails both.
    if not 0 <= value <= 1 + P_ROUNDING:
        raise _Malformed(f"{where}: expected a probability from 0 to 1, found {_found(value)}")
    return float(value)


def _choice(value: object, where: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(json.dumps(c) for c in choices)
        raise _Malformed(f"{where}: expected one of {expected}, found {_found(value)}")
    return value


def _found(value: object) -> str:
    """What was there instead, short: the value itself for scalars, the kind for containers."""
    if value is _MISSING:
        return "no such field"
    if isinstance(value, str):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:56] + '..."'
    if value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)  # NaN and Infinity as json.loads reads them
        return text if len(text) <= 60 else text[:56] + "..."
    if isinstance(value, list):
        return f"a list of {len(value)}" if value else "an empty list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
