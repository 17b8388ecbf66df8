"""What a run created, on disk, so that anything can be undone after a crash.

One JSON file per run in the state directory, rewritten BEFORE each thing
is created: a SIGKILL can leave a recorded name that was never created
(harmless: deleting it finds nothing) but never an unrecorded namespace.
`cleanup()` deletes exactly what records list, never by matching names.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backends.netns.nsutil import delete_netns

STATE_DIR = Path(os.environ.get("NETCONFORMANCE_STATE_DIR", "/run/netconformance"))


def _start_time(pid: int) -> int | None:
    """The process start time (clock ticks since boot): pid plus this is unique."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass
class RunRecord:
    run_id: str
    pid: int
    pid_start: int | None
    netns: list[str] = field(default_factory=list)  # names under /run/netns
    run_dir: str = ""  # the run's own directory (xtables lock files)

    @classmethod
    def new(cls, run_id: str, state_dir: Path = STATE_DIR) -> RunRecord:
        pid = os.getpid()
        return cls(run_id, pid, _start_time(pid), run_dir=str(state_dir / run_id))

    def path(self, state_dir: Path = STATE_DIR) -> Path:
        return state_dir / f"{self.run_id}.json"

    def save(self, state_dir: Path = STATE_DIR) -> None:
        tmp = state_dir / f".{self.run_id}.json.tmp"
        for _ in range(3):  # another run may remove the directory when it empties it
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                tmp.write_text(json.dumps(asdict(self), indent=1))
                break
            except FileNotFoundError:
                continue
        os.replace(tmp, self.path(state_dir))  # atomic: never a half-written record

    def owner_alive(self) -> bool:
        return self.pid_start is not None and _start_time(self.pid) == self.pid_start


def load(path: Path) -> RunRecord:
    data = json.loads(path.read_text())
    return RunRecord(
        run_id=str(data["run_id"]),
        pid=int(data["pid"]),
        pid_start=None if data.get("pid_start") is None else int(data["pid_start"]),
        netns=[str(n) for n in data.get("netns", [])],
        run_dir=str(data.get("run_dir", "")),
    )


def undo(record: RunRecord, state_dir: Path = STATE_DIR) -> list[str]:
    """Delete what one record lists, then the record; return what was deleted."""
    prefix = f"nc-{record.run_id}-"
    for name in record.netns:
        if not name.startswith(prefix):  # a corrupt record must not aim elsewhere
            raise ValueError(f"record {record.run_id}: {name!r} is not a name this run could create")
    deleted: list[str] = []
    for name in record.netns:
        if delete_netns(name):
            deleted.append(name)
    if record.run_dir:
        run_dir = Path(record.run_dir)
        if run_dir.parent != state_dir or run_dir.name != record.run_id:
            raise ValueError(f"record {record.run_id}: run_dir {run_dir} is outside {state_dir}")
        if run_dir.exists():
            shutil.rmtree(run_dir)
            deleted.append(str(run_dir))
    record.path(state_dir).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        state_dir.rmdir()  # only if no other run left a record there
    return deleted


def cleanup(run_id: str | None = None, *, state_dir: Path = STATE_DIR) -> list[str]:
    """Undo recorded runs: one (whatever its state), or all whose process is gone.

    Without `run_id`, runs whose owning process is still alive are left
    alone: they tear down after themselves (teardown, atexit).
    """
    if run_id is not None:
        path = state_dir / f"{run_id}.json"
        return undo(load(path), state_dir) if path.exists() else []
    deleted: list[str] = []
    if not state_dir.is_dir():
        return deleted
    for path in sorted(state_dir.glob("*.json")):
        record = load(path)
        if not record.owner_alive():
            deleted += undo(record, state_dir)
    return deleted
