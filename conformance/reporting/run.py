"""write_run: everything a run leaves behind, in its run directory.

results.json (machines), junit-<backend>.xml (CI), index.html (people), and
cases/ (each failure's and disagreement's minimal case, replayable alone).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from conformance.compare import CompareResult
from conformance.reporting.document import comparison_json, result_json, run_json
from conformance.reporting.html import render_html
from conformance.reporting.junit import junit_backends, junit_xml
from conformance.reporting.meta import RunMeta, collect_versions
from conformance.reporting.reproduce import SavedCase, save_disagreement_case, save_failure_case
from conformance.runner import SpecResult

# A run directory's name: the time first, so names sort by time; then who made
# it (`pytest-` for the pytest plugin, nothing for the CLI) and a random id.
RUN_NAME = re.compile(r"\d{8}-\d{6}-(pytest-)?[0-9a-f]+")


def new_run_dir(base: Path, *, maker: str = "") -> Path:
    """A new directory under `base` named like RUN_NAME (OSError if it cannot be made)."""
    tag = f"{maker}-" if maker else ""
    path = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class RunReport:
    run_dir: Path
    results_json: Path
    html: Path
    junit: dict[str, Path]  # backend -> file
    failures: dict[tuple[str, str, str], SavedCase]  # (spec, backend, implementation) -> minimal case
    disagreements: dict[tuple[str, str, str], SavedCase]  # (predictor, backend, implementation) -> minimal case

    def reproducer(self, r: SpecResult) -> str | None:
        """The command that replays r's minimal failing case, or None when r did not fail."""
        saved = self.failures.get((r.spec, r.backend, r.implementation))
        return None if saved is None else saved.commands[0]


def write_run(
    run_dir: Path,
    *,
    results: Sequence[SpecResult],
    comparisons: Sequence[CompareResult] = (),
    meta: RunMeta,
) -> RunReport:
    run_dir.mkdir(parents=True, exist_ok=True)
    failures: dict[tuple[str, str, str], SavedCase] = {}
    result_docs = []
    for r in results:
        saved = None
        if r.failure is not None:
            saved = save_failure_case(
                run_dir, r.failure.case, spec=r.spec, backend=r.backend, implementation=r.implementation
            )
            failures[(r.spec, r.backend, r.implementation)] = saved
        result_docs.append(result_json(r, saved, meta))

    disagreements: dict[tuple[str, str, str], SavedCase] = {}
    comparison_docs = []
    for c in comparisons:
        saved = None
        if c.disagreement is not None:
            d = c.disagreement
            saved = save_disagreement_case(
                run_dir, d.case, predictor=d.predictor, backend=d.backend, implementation=c.implementation
            )
            disagreements[(d.predictor, d.backend, c.implementation)] = saved
        comparison_docs.append(comparison_json(c, saved))

    doc = run_json(
        meta,
        run_id=meta.run_id or run_dir.name,
        finished=meta.finished or datetime.now(UTC),
        versions=collect_versions(),
        results=result_docs,
        comparisons=comparison_docs,
    )
    results_path = run_dir / "results.json"
    results_path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")

    junit: dict[str, Path] = {}
    for backend in junit_backends(result_docs, comparison_docs):
        path = run_dir / f"junit-{backend}.xml"
        path.write_bytes(junit_xml(backend, result_docs, comparison_docs, doc["run"]))
        junit[backend] = path

    html_path = run_dir / "index.html"
    html_path.write_text(render_html(doc), encoding="utf-8")
    return RunReport(run_dir, results_path, html_path, junit, failures, disagreements)
