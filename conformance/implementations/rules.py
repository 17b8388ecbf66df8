"""iptables rulesets as data, rendered as `iptables-save` text.

Every rule must carry a comment (the renderers explain each rule where it is
written, as kube-proxy does). Rules are printed grouped by chain, built-in
chains first, then user chains in the order they were declared, so the text
reads top-down the way a packet walks it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
# Order of tables in the rendered text.
TABLE_ORDER: tuple[str, ...] = ("mangle", "nat", "filter")

# xt_comment stores at most 256 bytes including the terminating NUL.
MAX_COMMENT = 255
# Characters iptables-save leaves unquoted (xtables_save_string).
_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def chain_hash(text: str) -> str:
    """16 base32 characters of sha256(text), as kube-proxy names its chains."""
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def save_string(value: str) -> str:
    """Quote a value the way iptables-save does (only when needed)."""
    if value and all(c in _NO_QUOTE for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f'"{escaped}"'


@dataclass(frozen=True)
class Rule:
    """One rule, in iptables-save's canonical order: -s -d -p, matches, -j.

    `matches` follow the comment, e.g. ("-m tcp --dport 80",);
    `jump` is the target with its options, e.g. "DNAT --to-destination 10.0.0.1:80".
    """

    comment: str
    jump: str
    src: str = ""
    not_src: str = ""
    dst: str = ""
    not_dst: str = ""
    proto: str = ""
    matches: tuple[str, ...] = ()

    def render(self) -> str:
        if not self.comment:
            raise ValueError(f"rule without a comment: -j {self.jump}")
        parts: list[str] = []
        if self.src:
            parts.append(f"-s {self.src}")
        if self.not_src:
            parts.append(f"! -s {self.not_src}")
        if self.dst:
            parts.append(f"-d {self.dst}")
        if self.not_dst:
            parts.append(f"! -d {self.not_dst}")
        if self.proto:
            parts.append(f"-p {self.proto}")
        parts.append(f"-m comment --comment {save_string(self.comment[:MAX_COMMENT])}")
        parts.extend(self.matches)
        parts.append(f"-j {self.jump}")
        return " ".join(parts)


@dataclass
class Table:
    name: str
    chains: list[str] = field(default_factory=list)  # user chains, declaration order
    rules: dict[str, list[Rule]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for chain in BUILTIN_CHAINS[self.name]:
            self.rules[chain] = []

    def chain(self, name: str) -> str:
        """Declare a user chain (idempotent); returns its name."""
        if name not in self.rules:
            self.chains.append(name)
            self.rules[name] = []
        return name

    def append(self, chain: str, rule: Rule) -> None:
        """`-A chain rule` (the chain must be built in or declared)."""
        self.rules[chain].append(rule)

    def prepend(self, chain: str, rules: Sequence[Rule]) -> None:
        """Put `rules`, in this order, ahead of the chain's rules (like `-I chain 1`)."""
        self.rules[chain][:0] = rules

    def render(self) -> str:
        lines = [f"*{self.name}"]
        for chain in BUILTIN_CHAINS[self.name]:
            lines.append(f":{chain} ACCEPT [0:0]")
        for chain in self.chains:
            lines.append(f":{chain} - [0:0]")
        for chain in (*BUILTIN_CHAINS[self.name], *self.chains):
            lines.extend(f"-A {chain} {rule.render()}" for rule in self.rules[chain])
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


@dataclass
class Ruleset:
    """The iptables configuration of one network namespace."""

    tables: dict[str, Table] = field(default_factory=dict)

    def table(self, name: str) -> Table:
        if name not in self.tables:
            self.tables[name] = Table(name)
        return self.tables[name]

    def render(self) -> str:
        return "".join(self.tables[t].render() for t in TABLE_ORDER if t in self.tables)
