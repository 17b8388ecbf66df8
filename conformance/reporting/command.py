"""`netconformance report`: diff a run against a baseline; the exit code tells CI whether anything regressed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance.reporting.baseline import compare_with_baseline, render_diff
from conformance.reporting.document import ResultsError

DEFAULT_RUNS = Path("reports/runs")


def newest_run(runs: Path) -> Path:
    # Run directories are named <YYYYmmdd-HHMMSS>-<id>, so the name orders them by time.
    found = sorted(p for p in runs.glob("*/results.json"))
    if not found:
        raise ResultsError(f"no run under {runs} (looked for {runs}/*/results.json); give a run directory")
    return found[-1].parent


def cmd_report(args: argparse.Namespace) -> int:
    """0: no regression, 1: something regressed, 2: a file could not be read."""
    try:
        run = Path(args.run_dir) if args.run_dir else newest_run(Path(args.runs))
        diff = compare_with_baseline(run, Path(args.baseline))
    except ResultsError as e:
        print(f"netconformance: error: {e}", file=sys.stderr)
        return 2
    print(render_diff(diff))
    return 1 if diff.regressed else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `report` command to the CLI's subparsers (the object add_subparsers returned)."""
    rep: argparse.ArgumentParser = subparsers.add_parser(
        "report", help="compare a run with a baseline results.json; exit 1 if anything regressed"
    )
    rep.add_argument(
        "run_dir", nargs="?", default=None, help=f"a run directory (default: the newest under {DEFAULT_RUNS})"
    )
    rep.add_argument("--baseline", required=True, help="a results.json (or run directory) to compare with")
    rep.add_argument("--runs", default=str(DEFAULT_RUNS), help=f"where runs are looked for (default: {DEFAULT_RUNS})")
    rep.set_defaults(func=cmd_report)
    return rep
