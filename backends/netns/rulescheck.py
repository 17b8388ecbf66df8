"""A rules file tried on the kernel before a run, in a throwaway namespace.

A proxy's rules are restored into the nodes as they are; when the kernel
refuses one, the run should stop before it starts, naming the file, the line
and the kernel's reason, not fail every spec with iptables-restore's line
number in a text the user never saw. `unshare --net` gives the restore a
namespace of its own that goes when the process exits: nothing is named,
nothing is left, the root namespace is never touched. The restore is a real
one (not `--test`), so the kernel's own checks (a target in the wrong
table, say) run as well as iptables' parser.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backends import BackendError
from backends.netns.build import RESTORE, restore_env

_PARSE_ERROR = re.compile(r"Error occurred at line: (\d+)")
_COMMIT_ERROR = re.compile(r"line (\d+) failed")
_VERSION = re.compile(r"^iptables-restore v[\d.]+ \(\w+\): ")


@dataclass(frozen=True)
class Refusal:
    line: int | None  # 1-based, in the text given; None when the restore did not say
    text: str  # that line
    reason: str

    def describe(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        rule = f" {self.text.strip()}:" if self.text.strip() else ""
        return f"{where}:{rule} the kernel refused it ({RESTORE}: {self.reason})"


def _restore(text: str) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory(prefix="netconformance-rulescheck-") as scratch:
        env = restore_env(Path(scratch) / "xtables.lock")
        try:
            return subprocess.run(
                ["unshare", "--net", "--", RESTORE, "-w", "5"],
                input=text.encode(),
                capture_output=True,
                env=env,
                timeout=60,
            )
        except FileNotFoundError:
            raise BackendError("checking rules on the kernel: unshare not found (Debian package util-linux)") from None


def kernel_refusal(text: str) -> Refusal | None:
    """Restore `text` into a new empty namespace; None if the kernel took it."""
    proc = _restore(text)
    if proc.returncode == 0:
        return None
    err = proc.stderr.decode(errors="replace")
    lines = text.splitlines()
    parse = _PARSE_ERROR.search(err)
    if parse is not None:
        # iptables' parser refused a line, and said why.
        said = (_VERSION.sub("", s).strip() for s in err.splitlines())
        reason = "; ".join(s.rstrip(".") for s in said if s and not s.startswith(("Error occurred", "Try ")))
        number = int(parse.group(1))
        return Refusal(number, lines[number - 1] if 0 < number <= len(lines) else "", reason or "refused")
    commit = _COMMIT_ERROR.search(err)
    if commit is not None:
        # The kernel refused a table at its COMMIT, and told only its log why: find the first rule it refuses.
        at = int(commit.group(1))
        culprit = _first_refused_rule(lines, at)
        if culprit is not None:
            return Refusal(culprit, lines[culprit - 1], "refused by the kernel's check of the rule")
        return Refusal(at, "COMMIT", "the kernel refused this table")
    return Refusal(None, "", err.strip() or f"exit {proc.returncode}")


def _first_refused_rule(lines: list[str], commit: int) -> int | None:
    """The line of the first rule of the table ending at `commit` (1-based) without which the table is taken.

    The table's declarations with its first k rules is restored for k found by bisection: a prefix of rules
    only names chains the declarations made, so the kernel takes it until it holds the refused rule.
    """
    start = max((i for i in range(commit - 1) if lines[i].startswith("*")), default=None)
    if start is None:
        return None
    head = [line for line in lines[start : commit - 1] if not line.startswith(("-A ", "-I "))]
    rules = [i for i in range(start, commit - 1) if lines[i].startswith(("-A ", "-I "))]

    def taken(k: int) -> bool:
        body = [*head, *(lines[i] for i in rules[:k]), "COMMIT"]
        return _restore("\n".join(body) + "\n").returncode == 0

    if not rules or not taken(0) or taken(len(rules)):
        return None
    low, high = 0, len(rules)  # taken(low), not taken(high)
    while high - low > 1:
        mid = (low + high) // 2
        if taken(mid):
            low = mid
        else:
            high = mid
    return rules[high - 1] + 1
