"""`netconformance report`: diff a run against a baseline; the exit code tells CI whether anything regressed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance.reporting.baseline import compare_with_baseline, render_diff
from conformance.reporting.document import ResultsError
from conformance.reporting.run import RUN_NAME

DEFAULT_RUNS = Path("reports/runs")


def newest_run(runs: Path) -> Path:
    # Run directories sort by time by name (RUN_NAME); anything else under the
    # runs directory (a copy, a scratch dir) is not a run to pick.
    found = sorted(p.parent for p in runs.glob("*/results.json") if RUN_NAME.fullmatch(p.parent.name))
    if not found:
        others = sorted(p.parent.name for p in runs.glob("*/results.json"))
        ignored = f"; ignored {', '.join(others)} (not named like a run)" if others else ""
        raise ResultsError(
            f"no run under {runs} (looked for {runs}/<YYYYmmdd-HHMMSS>-<id>/results.json{ignored}); give a run directory"
        )
    return found[-1]


def _path(value: str) -> str:
    """argparse type: a path; an empty one would quietly mean the current directory."""
    if not value:
        raise argparse.ArgumentTypeError("expected a path, found an empty string")
    return value


def cmd_report(args: argparse.Namespace) -> int:
    """0: no regression, 1: something regressed, 2: bad input (a file unreadable, malformed or with nothing in it)
    or a run that was interrupted (its missing cells were never judged)."""
    try:
        run = Path(args.run_dir) if args.run_dir is not None else newest_run(Path(args.runs))
        diff = compare_with_baseline(run, Path(args.baseline))
    except ResultsError as e:
        print(f"netconformance: error: {e}", file=sys.stderr)
        return 2
    print(render_diff(diff))
    if diff.regressed:
        return 1
    if diff.interrupted:
        print(
            f"netconformance: INCOMPLETE: {diff.interrupted}; no verdict on the cells that did not run", file=sys.stderr
        )
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the `report` command to the CLI's subparsers (the object add_subparsers returned)."""
    rep: argparse.ArgumentParser = subparsers.add_parser(
        "report", help="compare a run with a baseline results.json; exit 1 if anything regressed"
    )
    rep.add_argument(
        "run_dir",
        nargs="?",
        default=None,
        type=_path,
        help=f"a run directory (default: the newest under {DEFAULT_RUNS})",
    )
    rep.add_argument("--baseline", required=True, type=_path, help="a results.json (or run directory) to compare with")
    rep.add_argument(
        "--runs", default=str(DEFAULT_RUNS), type=_path, help=f"where runs are looked for (default: {DEFAULT_RUNS})"
    )
    rep.set_defaults(func=cmd_report)
    return rep
