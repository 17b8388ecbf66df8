"""Standalone reproducers: a case file under the run directory and the one command that replays it."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from conformance.cases import Case, dump_case

CASES_DIR = "cases"


def case_id(case: Case) -> str:
    """A stable name for a case: its file's content hash (same case, same id, in any run)."""
    return hashlib.sha256(dump_case(case).encode("utf-8")).hexdigest()[:12]


CNI_PATH_VARIABLE = "NETCONFORMANCE_CNI_PATH"


def with_environment(command: str, implementation: str) -> str:
    """`command` as a user pastes it: a conflist's plugins may be found only through NETCONFORMANCE_CNI_PATH."""
    value = os.environ.get(CNI_PATH_VARIABLE)
    if value is None or not implementation.startswith("conflist:"):
        return command
    return f"{CNI_PATH_VARIABLE}={shlex.quote(value)} {command}"  # quoted as a whole, it would be a command name


def replay_command(path: Path, *, spec: str, backend: str, implementation: str) -> str:
    command = shlex.join(
        [
            "netconformance",
            "replay",
            str(path),
            "--spec",
            spec,
            "--backend",
            backend,
            "--implementation",
            implementation,
        ]
    )
    return with_environment(command, implementation)


def compare_command(path: Path, *, predictor: str, backend: str, implementation: str) -> str:
    """The command that replays a disagreement's case on both backends, probe by probe."""
    words = ["netconformance", "compare", "--backends", f"{predictor},{backend}", "--implementation", implementation]
    return with_environment(shlex.join([*words, "--case", str(path)]), implementation)


@dataclass(frozen=True)
class SavedCase:
    """A case written for replay, and how to replay it."""

    path: Path  # as the run directory was given (relative paths stay relative, like the CLI prints them)
    case_id: str
    commands: tuple[str, ...]  # one per backend that should be asked

    @property
    def relative(self) -> str:
        """The path inside the run directory, for links from index.html."""
        return f"{CASES_DIR}/{self.path.name}"


def file_stem(*parts: str) -> str:
    """A file name from names joined by "-": a conflist:PATH implementation's slashes and the like become "_"."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts)).lstrip(".")


def save_case(run_dir: Path, case: Case, stem: str) -> tuple[Path, str]:
    cid = case_id(case)
    path = run_dir / CASES_DIR / f"{file_stem(stem)}-{cid}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_case(case), encoding="utf-8")
    return path, cid


def save_failure_case(run_dir: Path, case: Case, *, spec: str, backend: str, implementation: str) -> SavedCase:
    path, cid = save_case(run_dir, case, f"{spec}-{implementation}-{backend}")
    return SavedCase(path, cid, (replay_command(path, spec=spec, backend=backend, implementation=implementation),))


def save_disagreement_case(
    run_dir: Path, case: Case, *, predictor: str, backend: str, implementation: str
) -> SavedCase:
    path, cid = save_case(run_dir, case, f"compare-{implementation}-{predictor}-{backend}")
    return SavedCase(
        path, cid, (compare_command(path, predictor=predictor, backend=backend, implementation=implementation),)
    )
