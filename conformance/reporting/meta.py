"""What a run was: its id, when and how it was started, and what it ran on."""

from __future__ import annotations

import platform
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import hypothesis


@dataclass(frozen=True)
class Interruption:
    """A run cut short (Ctrl-C, SIGTERM): its report holds only the cells that finished."""

    signal: str  # "SIGINT", "SIGTERM", "SIGHUP"
    cells_run: int
    cells_planned: int

    def describe(self) -> str:
        return f"interrupted by {self.signal} after {self.cells_run} of {self.cells_planned} cells"


@dataclass(frozen=True)
class RunMeta:
    """Facts about a run that the results themselves do not carry."""

    started: datetime
    command: tuple[str, ...]  # the command line as typed, e.g. ("netconformance", "run", "--seed", "1")
    run_id: str | None = None  # None: the run directory's name
    seed: int | None = None  # the --seed asked for; None: each spec drew its own (recorded per result)
    examples: int | None = None  # the --examples asked for, so a re-run command can repeat it
    finished: datetime | None = None  # None: when write_run is called
    tags: dict[str, str] = field(default_factory=dict)  # free-form, e.g. a CI job URL
    interrupted: Interruption | None = None  # None: every cell ran
    # Each real backend's own run id (it names what the backend built): `netconformance cleanup --run ID` takes it.
    backend_runs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def begin(cls, argv: Sequence[str], *, seed: int | None = None, examples: int | None = None) -> RunMeta:
        """Call before running; argv without the program name (sys.argv[1:])."""
        return cls(datetime.now(UTC), ("netconformance", *argv), seed=seed, examples=examples)


def iptables_version() -> str | None:
    exe = shutil.which("iptables")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # "iptables v1.8.9 (nf_tables)": the name is the key already.
    return out.stdout.strip().removeprefix("iptables ").strip() or None


def netconformance_version() -> str:
    try:
        return version("netconformance")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def collect_versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "netconformance": netconformance_version(),
        "hypothesis": hypothesis.__version__,
        "kernel": platform.release(),  # uname -r
        "iptables": iptables_version(),
    }
