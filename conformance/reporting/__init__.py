"""Reports of runs: results.json, JUnit XML and index.html; baseline diffs; the regression corpus."""

from __future__ import annotations

from conformance.reporting.baseline import BaselineDiff, OutcomeChange, StatusChange, compare_with_baseline, render_diff
from conformance.reporting.command import cmd_report, register
from conformance.reporting.corpus import CorpusEntry, add_to_corpus, load_corpus
from conformance.reporting.document import ResultsError
from conformance.reporting.meta import Interruption, RunMeta
from conformance.reporting.run import RunReport, new_run_dir, write_run

__all__ = [
    "BaselineDiff",
    "CorpusEntry",
    "Interruption",
    "OutcomeChange",
    "ResultsError",
    "RunMeta",
    "RunReport",
    "StatusChange",
    "add_to_corpus",
    "cmd_report",
    "compare_with_baseline",
    "load_corpus",
    "new_run_dir",
    "register",
    "render_diff",
    "write_run",
]
