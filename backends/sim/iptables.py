"""Parser of `iptables-save` text into a typed, validated ruleset.

The input is what `iptables-save` prints and `iptables-restore` accepts. The
result is plain data (frozen dataclasses per match and target); evaluation
lives in `backends.sim.netfilter`.

The simulator never guesses: a match extension, option, option value or
target that is not modelled here is a `RulesetError` naming it, instead of
being ignored or approximated. Load-time checks the kernel does (which hooks
a target may be used from, jump loops) are done here too, so a ruleset the
real kernel would refuse is refused here as well.
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

TABLES: tuple[str, ...] = ("raw", "mangle", "nat", "filter")
HOOKS: tuple[str, ...] = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": HOOKS,
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}

L4Proto = Literal["tcp", "udp", "sctp", "icmp"]
_PROTOCOLS: dict[str, L4Proto | None] = {
    "tcp": "tcp",
    "6": "tcp",
    "udp": "udp",
    "17": "udp",
    "sctp": "sctp",
    "132": "sctp",
    "icmp": "icmp",
    "1": "icmp",
    "all": None,
    "0": None,
}
_MASK32 = 0xFFFFFFFF


class RulesetError(ValueError):
    """A line the simulator refuses, with where and why."""

    def __init__(self, source: str, line: int, text: str, message: str) -> None:
        # Control characters (a NUL, an escape) are shown escaped, never sent to the terminal.
        shown = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
        super().__init__(f"{source}:{line}: {shown}: {message}")
        self.source = source
        self.line = line
        self.text = text
        self.message = message


class _Refused(Exception):
    """Raised deep in the parser; turned into a RulesetError with the line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------
# Matches. Every `invert` is the `!` given to that option.


@dataclass(frozen=True)
class Iface:
    """An interface name as iptables takes it; `eth+` is a prefix wildcard."""

    name: str
    wildcard: bool = False

    def __str__(self) -> str:
        return self.name + ("+" if self.wildcard else "")


@dataclass(frozen=True)
class PortRange:
    lo: int
    hi: int
    invert: bool = False


@dataclass(frozen=True)
class NetSel:
    net: IPv4Network
    invert: bool = False


@dataclass(frozen=True)
class Selection:
    """A set of names (states, address types, ...), matched if any is present."""

    names: frozenset[str]
    invert: bool = False


@dataclass(frozen=True)
class AddrRange:
    lo: IPv4Address
    hi: IPv4Address
    invert: bool = False


@dataclass(frozen=True)
class AddrMatch:
    """-s / -d."""

    field: Literal["src", "dst"]
    net: IPv4Network
    invert: bool = False


@dataclass(frozen=True)
class ProtoMatch:
    """-p (never for `all`, which matches everything)."""

    proto: L4Proto
    invert: bool = False


@dataclass(frozen=True)
class IfaceMatch:
    """-i / -o."""

    direction: Literal["in", "out"]
    iface: Iface
    invert: bool = False


@dataclass(frozen=True)
class L4Match:
    """-m tcp / udp / sctp."""

    proto: Literal["tcp", "udp", "sctp"]
    sport: PortRange | None = None
    dport: PortRange | None = None
    # tcp only: (flags & mask) == comp
    flags_mask: frozenset[str] | None = None
    flags_comp: frozenset[str] = frozenset()
    flags_invert: bool = False


@dataclass(frozen=True)
class MultiportMatch:
    which: Literal["src", "dst", "either"]
    ranges: tuple[tuple[int, int], ...]
    invert: bool = False


@dataclass(frozen=True)
class CommentMatch:
    comment: str


@dataclass(frozen=True)
class MarkMatch:
    """(mark & mask) == value."""

    value: int
    mask: int = _MASK32
    invert: bool = False


@dataclass(frozen=True)
class ConnmarkMatch:
    """(connection mark & mask) == value; false without a connection, inverted or not (xt_connmark)."""

    value: int
    mask: int = _MASK32
    invert: bool = False


@dataclass(frozen=True)
class ConntrackMatch:
    state: Selection | None = None
    status: Selection | None = None
    proto: L4Proto | None = None
    proto_invert: bool = False
    orig_src: NetSel | None = None
    orig_dst: NetSel | None = None
    repl_src: NetSel | None = None
    repl_dst: NetSel | None = None
    orig_sport: PortRange | None = None
    orig_dport: PortRange | None = None
    repl_sport: PortRange | None = None
    repl_dport: PortRange | None = None
    direction: Literal["ORIGINAL", "REPLY"] | None = None


@dataclass(frozen=True)
class StateMatch:
    state: Selection


@dataclass(frozen=True)
class AddrtypeMatch:
    src: Selection | None = None
    dst: Selection | None = None
    limit: Literal["in", "out"] | None = None  # look the type up on in_dev / out_dev


@dataclass(frozen=True)
class StatisticMatch:
    mode: Literal["random", "nth"]
    probability: float = 0.0  # as the kernel stores it: round(p * 2**31) / 2**31
    every: int = 0
    packet: int = 0
    invert: bool = False


@dataclass(frozen=True)
class RecentMatch:
    name: str
    command: Literal["set", "rcheck", "update", "remove"]
    invert: bool = False
    seconds: int = 0  # 0: no age limit
    hitcount: int = 0
    reap: bool = False
    side: Literal["src", "dst"] = "src"
    mask: int = _MASK32


@dataclass(frozen=True)
class IcmpMatch:
    icmp_type: int  # 255: any
    code_min: int = 0
    code_max: int = 255
    invert: bool = False


@dataclass(frozen=True)
class PhysdevMatch:
    in_iface: Iface | None = None
    in_invert: bool = False
    out_iface: Iface | None = None
    out_invert: bool = False
    # None: not tested; True: --physdev-is-X; False: ! --physdev-is-X
    is_in: bool | None = None
    is_out: bool | None = None
    is_bridged: bool | None = None


@dataclass(frozen=True)
class IprangeMatch:
    src: AddrRange | None = None
    dst: AddrRange | None = None


Match = (
    AddrMatch
    | ProtoMatch
    | IfaceMatch
    | L4Match
    | MultiportMatch
    | CommentMatch
    | MarkMatch
    | ConnmarkMatch
    | ConntrackMatch
    | StateMatch
    | AddrtypeMatch
    | StatisticMatch
    | RecentMatch
    | IcmpMatch
    | PhysdevMatch
    | IprangeMatch
)


# --------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Verdict:
    name: Literal["ACCEPT", "DROP", "RETURN"]


@dataclass(frozen=True)
class Jump:
    chain: str
    goto: bool = False


@dataclass(frozen=True)
class RejectTarget:
    reject_with: str = "icmp-port-unreachable"


@dataclass(frozen=True)
class MarkTarget:
    """mark = (mark & ~mask) ^ value; every MARK option reduces to this."""

    value: int
    mask: int


@dataclass(frozen=True)
class ConnmarkTarget:
    """As the kernel's xt_connmark v1:

    set:     ct.mark = (ct.mark & ~ctmask) ^ ctmark
    save:    ct.mark = (ct.mark & ~ctmask) ^ (mark & nfmask)
    restore: mark    = (mark & ~nfmask) ^ (ct.mark & ctmask)
    """

    mode: Literal["set", "save", "restore"]
    ctmark: int = 0
    ctmask: int = _MASK32
    nfmask: int = _MASK32


@dataclass(frozen=True)
class NatTarget:
    kind: Literal["DNAT", "SNAT", "MASQUERADE"]
    ip: IPv4Address | None  # None for MASQUERADE
    port: int | None = None
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NotrackTarget:
    """NOTRACK, or CT --notrack: the packet skips conntrack (and so NAT); raw table only."""


@dataclass(frozen=True)
class LogTarget:
    prefix: str = ""
    level: str = "warning"


Target = Verdict | Jump | RejectTarget | MarkTarget | ConnmarkTarget | NatTarget | NotrackTarget | LogTarget


# --------------------------------------------------------------------------
# Ruleset


@dataclass(eq=False)  # identity semantics: per-rule state (nth counters) is keyed by the rule
class Rule:
    table: str
    chain: str
    line: int
    text: str  # the rule line as written, for traces and errors
    matches: list[Match]
    target: Target | None  # None: a rule without -j only counts
    comment: str | None = None

    def __str__(self) -> str:
        return self.text


@dataclass
class Chain:
    name: str
    policy: str | None  # ACCEPT / DROP for built-in chains, None for user chains
    rules: list[Rule] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)


@dataclass(eq=False)  # identity semantics: netfilter caches the compiled form per ruleset
class Ruleset:
    tables: dict[str, Table] = field(default_factory=dict)
    source: str = "<iptables>"

    def jumps_to(self, table: str, from_chain: str, to_chain: str) -> bool:
        """Whether a rule of `from_chain` jumps or goes to `to_chain`."""
        t = self.tables.get(table)
        chain = t.chains.get(from_chain) if t is not None else None
        if chain is None:
            return False
        return any(isinstance(r.target, Jump) and r.target.chain == to_chain for r in chain.rules)

    def rules(self) -> Iterable[Rule]:
        for t in self.tables.values():
            for c in t.chains.values():
                yield from c.rules


# --------------------------------------------------------------------------
# Value parsers


def _num(text: str, what: str, lo: int = 0, hi: int = _MASK32) -> int:
    """An unsigned integer as strtoul(base 0) reads it: 0x.., 0.., decimal."""
    t = text.strip()
    try:
        if t.lower().startswith("0x"):
            v = int(t, 16)
        elif len(t) > 1 and t.startswith("0"):
            v = int(t[1:], 8)
        else:
            if not t.isdigit():
                raise ValueError(t)
            v = int(t, 10)
    except ValueError:
        raise _Refused(f"invalid {what} {text!r}") from None
    if not lo <= v <= hi:
        raise _Refused(f"{what} {text!r} out of range {lo}..{hi}")
    return v


def _value_mask(text: str, what: str) -> tuple[int, int | None]:
    if "/" in text:
        v, m = text.split("/", 1)
        return _num(v, what), _num(m, what + " mask")
    return _num(text, what), None


def _port(text: str) -> int:
    if not text.isdigit():
        # iptables would look a name up in /etc/services; iptables-save prints numbers
        raise _Refused(f"port {text!r} is not a number (service names are not modelled)")
    v = int(text)
    if v > 65535:
        raise _Refused(f"port {text!r} out of range")
    return v


def _port_range(text: str, invert: bool) -> PortRange:
    if ":" in text:
        a, b = text.split(":", 1)
        lo = _port(a) if a else 0
        hi = _port(b) if b else 65535
        if lo > hi:
            raise _Refused(f"invalid port range {text!r} (min > max)")
        return PortRange(lo, hi, invert)
    p = _port(text)
    return PortRange(p, p, invert)


def _address(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise _Refused(f"invalid IPv4 address {text!r} (host names are not modelled)") from None


def _network(text: str) -> IPv4Network:
    if "," in text:
        raise _Refused(f"several addresses {text!r} in one rule are not modelled")
    try:
        # iptables masks the address itself: 10.0.0.1/8 means 10.0.0.0/8
        return IPv4Network(text, strict=False)
    except ValueError:
        raise _Refused(f"invalid IPv4 address or network {text!r}") from None


def _iface(text: str) -> Iface:
    if not text or len(text) > 15 or "/" in text or " " in text:
        raise _Refused(f"invalid interface name {text!r}")
    if text.endswith("+"):
        return Iface(text[:-1], True)
    return Iface(text)


def _proto(text: str) -> L4Proto | None:
    key = text.lower()
    if key not in _PROTOCOLS:
        named = ", ".join(k for k in _PROTOCOLS if not k.isdigit())
        raise _Refused(
            f"protocol {text!r} is unknown or not modelled by the simulator (modelled: {named}, or their numbers)"
        )
    return _PROTOCOLS[key]


def _names(text: str, allowed: Sequence[str], what: str) -> frozenset[str]:
    allowed_set = set(allowed)
    out: set[str] = set()
    for part in text.split(","):
        name = part.strip().upper()
        if name not in allowed_set:
            raise _Refused(
                f"{what} {part!r} is unknown or not modelled by the simulator (modelled: {', '.join(allowed)})"
            )
        out.add(name)
    return frozenset(out)


_TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG")


def _tcp_flags(text: str) -> frozenset[str]:
    out: set[str] = set()
    for part in text.split(","):
        name = part.strip().upper()
        if name == "ALL":
            out.update(_TCP_FLAGS)
        elif name == "NONE":
            pass
        elif name in _TCP_FLAGS:
            out.add(name)
        else:
            raise _Refused(f"TCP flag {part!r} is unknown (iptables knows {', '.join(_TCP_FLAGS)}, ALL, NONE)")
    return frozenset(out)


# name -> (type, code min, code max), as libipt_icmp lists them
_ICMP_TYPES: dict[str, tuple[int, int, int]] = {
    "any": (255, 0, 255),
    "echo-reply": (0, 0, 255),
    "pong": (0, 0, 255),
    "destination-unreachable": (3, 0, 255),
    "network-unreachable": (3, 0, 0),
    "host-unreachable": (3, 1, 1),
    "protocol-unreachable": (3, 2, 2),
    "port-unreachable": (3, 3, 3),
    "fragmentation-needed": (3, 4, 4),
    "source-route-failed": (3, 5, 5),
    "network-unknown": (3, 6, 6),
    "host-unknown": (3, 7, 7),
    "network-prohibited": (3, 9, 9),
    "host-prohibited": (3, 10, 10),
    "tos-network-unreachable": (3, 11, 11),
    "tos-host-unreachable": (3, 12, 12),
    "communication-prohibited": (3, 13, 13),
    "host-precedence-violation": (3, 14, 14),
    "precedence-cutoff": (3, 15, 15),
    "source-quench": (4, 0, 255),
    "redirect": (5, 0, 255),
    "network-redirect": (5, 0, 0),
    "host-redirect": (5, 1, 1),
    "tos-network-redirect": (5, 2, 2),
    "tos-host-redirect": (5, 3, 3),
    "echo-request": (8, 0, 255),
    "ping": (8, 0, 255),
    "router-advertisement": (9, 0, 255),
    "router-solicitation": (10, 0, 255),
    "time-exceeded": (11, 0, 255),
    "ttl-exceeded": (11, 0, 255),
    "ttl-zero-during-transit": (11, 0, 0),
    "ttl-zero-during-reassembly": (11, 1, 1),
    "parameter-problem": (12, 0, 255),
    "ip-header-bad": (12, 0, 0),
    "required-option-missing": (12, 1, 1),
    "timestamp-request": (13, 0, 255),
    "timestamp-reply": (14, 0, 255),
    "address-mask-request": (17, 0, 255),
    "address-mask-reply": (18, 0, 255),
}


def _icmp_type(text: str, invert: bool) -> IcmpMatch:
    if text[:1].isdigit():
        if "/" in text:
            type_text, code_text = text.split("/", 1)
            code = _num(code_text, "ICMP code", 0, 255)
            return IcmpMatch(_num(type_text, "ICMP type", 0, 255), code, code, invert)
        return IcmpMatch(_num(text, "ICMP type", 0, 255), 0, 255, invert)
    key = text.lower()
    if key not in _ICMP_TYPES:
        # iptables also takes an unambiguous prefix of a name
        found = [n for n in _ICMP_TYPES if n.startswith(key)]
        if len(found) != 1:
            raise _Refused(f"unknown or ambiguous ICMP type {text!r}")
        key = found[0]
    itype, lo, hi = _ICMP_TYPES[key]
    return IcmpMatch(itype, lo, hi, invert)


_REJECT_WITH: dict[str, str] = {
    "icmp-net-unreachable": "icmp-net-unreachable",
    "net-unreach": "icmp-net-unreachable",
    "icmp-host-unreachable": "icmp-host-unreachable",
    "host-unreach": "icmp-host-unreachable",
    "icmp-proto-unreachable": "icmp-proto-unreachable",
    "proto-unreach": "icmp-proto-unreachable",
    "icmp-port-unreachable": "icmp-port-unreachable",
    "port-unreach": "icmp-port-unreachable",
    "icmp-net-prohibited": "icmp-net-prohibited",
    "net-prohib": "icmp-net-prohibited",
    "icmp-host-prohibited": "icmp-host-prohibited",
    "host-prohib": "icmp-host-prohibited",
    "icmp-admin-prohibited": "icmp-admin-prohibited",
    "admin-prohib": "icmp-admin-prohibited",
    "tcp-reset": "tcp-reset",
    "tcp-rst": "tcp-reset",
}

_LOG_LEVELS = ("emerg", "alert", "crit", "error", "warning", "notice", "info", "debug")
_CT_STATES = ("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT")
_CT_STATUSES = ("NONE", "EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED")
_ADDR_TYPES = (
    "UNSPEC",
    "UNICAST",
    "LOCAL",
    "BROADCAST",
    "ANYCAST",
    "MULTICAST",
    "BLACKHOLE",
    "UNREACHABLE",
    "PROHIBIT",
    "THROW",
    "NAT",
    "XRESOLVE",
)
# The kernel keeps at most this many timestamps per address (ip_pkt_list_tot).
RECENT_PKT_LIST_TOT = 20

# --------------------------------------------------------------------------
# Extension option tables: spelling -> (canonical name, number of values, invertible)

_Spec = dict[str, tuple[str, int, bool]]

_MATCH_OPTIONS: dict[str, _Spec] = {
    "tcp": {
        "--sport": ("sport", 1, True),
        "--source-port": ("sport", 1, True),
        "--dport": ("dport", 1, True),
        "--destination-port": ("dport", 1, True),
        "--tcp-flags": ("tcp-flags", 2, True),
        "--syn": ("syn", 0, True),
    },
    "udp": {
        "--sport": ("sport", 1, True),
        "--source-port": ("sport", 1, True),
        "--dport": ("dport", 1, True),
        "--destination-port": ("dport", 1, True),
    },
    "sctp": {
        "--sport": ("sport", 1, True),
        "--source-port": ("sport", 1, True),
        "--dport": ("dport", 1, True),
        "--destination-port": ("dport", 1, True),
    },
    "multiport": {
        "--ports": ("ports", 1, True),
        "--sports": ("sports", 1, True),
        "--source-ports": ("sports", 1, True),
        "--dports": ("dports", 1, True),
        "--destination-ports": ("dports", 1, True),
    },
    "comment": {"--comment": ("comment", 1, False)},
    "mark": {"--mark": ("mark", 1, True)},
    "connmark": {"--mark": ("mark", 1, True)},
    "conntrack": {
        "--ctstate": ("ctstate", 1, True),
        "--ctstatus": ("ctstatus", 1, True),
        "--ctproto": ("ctproto", 1, True),
        "--ctorigsrc": ("ctorigsrc", 1, True),
        "--ctorigdst": ("ctorigdst", 1, True),
        "--ctreplsrc": ("ctreplsrc", 1, True),
        "--ctrepldst": ("ctrepldst", 1, True),
        "--ctorigsrcport": ("ctorigsrcport", 1, True),
        "--ctorigdstport": ("ctorigdstport", 1, True),
        "--ctreplsrcport": ("ctreplsrcport", 1, True),
        "--ctrepldstport": ("ctrepldstport", 1, True),
        "--ctdir": ("ctdir", 1, False),
    },
    "state": {"--state": ("state", 1, True)},
    "addrtype": {
        "--src-type": ("src-type", 1, True),
        "--dst-type": ("dst-type", 1, True),
        "--limit-iface-in": ("limit-iface-in", 0, False),
        "--limit-iface-out": ("limit-iface-out", 0, False),
    },
    "statistic": {
        "--mode": ("mode", 1, False),
        "--probability": ("probability", 1, True),
        "--every": ("every", 1, True),
        "--packet": ("packet", 1, False),
    },
    "recent": {
        "--name": ("name", 1, False),
        "--set": ("set", 0, True),
        "--rcheck": ("rcheck", 0, True),
        "--update": ("update", 0, True),
        "--remove": ("remove", 0, True),
        "--seconds": ("seconds", 1, False),
        "--hitcount": ("hitcount", 1, False),
        "--rsource": ("rsource", 0, False),
        "--rdest": ("rdest", 0, False),
        "--mask": ("mask", 1, False),
        "--reap": ("reap", 0, False),
    },
    "icmp": {"--icmp-type": ("icmp-type", 1, True)},
    "physdev": {
        "--physdev-in": ("physdev-in", 1, True),
        "--physdev-out": ("physdev-out", 1, True),
        "--physdev-is-in": ("physdev-is-in", 0, True),
        "--physdev-is-out": ("physdev-is-out", 0, True),
        "--physdev-is-bridged": ("physdev-is-bridged", 0, True),
    },
    "iprange": {
        "--src-range": ("src-range", 1, True),
        "--dst-range": ("dst-range", 1, True),
    },
}

_MARK_OPTS: _Spec = {
    "--set-xmark": ("set-xmark", 1, False),
    "--set-mark": ("set-mark", 1, False),
    "--and-mark": ("and-mark", 1, False),
    "--or-mark": ("or-mark", 1, False),
    "--xor-mark": ("xor-mark", 1, False),
}

_TARGET_OPTIONS: dict[str, _Spec] = {
    "ACCEPT": {},
    "DROP": {},
    "RETURN": {},
    "REJECT": {"--reject-with": ("reject-with", 1, False)},
    "MARK": _MARK_OPTS,
    "CONNMARK": {
        **_MARK_OPTS,
        "--save-mark": ("save-mark", 0, False),
        "--restore-mark": ("restore-mark", 0, False),
        "--nfmask": ("nfmask", 1, False),
        "--ctmask": ("ctmask", 1, False),
        "--mask": ("mask", 1, False),
    },
    "DNAT": {
        "--to-destination": ("to", 1, False),
        "--random": ("random", 0, False),
        "--persistent": ("persistent", 0, False),
    },
    "SNAT": {
        "--to-source": ("to", 1, False),
        "--random": ("random", 0, False),
        "--random-fully": ("random-fully", 0, False),
        "--persistent": ("persistent", 0, False),
    },
    "MASQUERADE": {
        "--to-ports": ("to-ports", 1, False),
        "--random": ("random", 0, False),
        "--random-fully": ("random-fully", 0, False),
    },
    "NOTRACK": {},
    # Only --notrack: the other CT options (zones, helpers, timeouts) are refused as not modelled.
    "CT": {"--notrack": ("notrack", 0, False)},
    "LOG": {
        "--log-level": ("log-level", 1, False),
        "--log-prefix": ("log-prefix", 1, False),
        "--log-tcp-sequence": ("log-tcp-sequence", 0, False),
        "--log-tcp-options": ("log-tcp-options", 0, False),
        "--log-ip-options": ("log-ip-options", 0, False),
        "--log-uid": ("log-uid", 0, False),
        "--log-macdecode": ("log-macdecode", 0, False),
    },
}

# Names a user chain may not take: iptables would resolve them to a target.
_RESERVED = frozenset(_TARGET_OPTIONS) | {"QUEUE", "NFQUEUE", "TRACE"}


@dataclass
class _Ext:
    """A loaded match or target while its rule is parsed: options given so far."""

    kind: Literal["match", "target"]
    name: str
    spec: _Spec
    opts: dict[str, tuple[list[str], bool]] = field(default_factory=dict)

    def has(self, key: str) -> bool:
        return key in self.opts

    def value(self, key: str) -> str:
        return self.opts[key][0][0]

    def inverted(self, key: str) -> bool:
        return self.opts[key][1]


@dataclass
class _RuleInfo:
    """What extension checks need to know about the rest of the rule."""

    table: str
    chain: str
    proto: L4Proto | None = None
    proto_invert: bool = False

    def has_proto(self, *protos: str) -> bool:
        return self.proto in protos and not self.proto_invert


def _finish_match(ext: _Ext, info: _RuleInfo) -> Match | None:
    name = ext.name
    if name in ("tcp", "udp", "sctp", "icmp") and not info.has_proto(name):
        # the kernel's xt_check_match: the match is only valid for its protocol
        raise _Refused(f"match {name!r} requires -p {name}")
    if name in ("tcp", "udp", "sctp"):
        sport = _port_range(ext.value("sport"), ext.inverted("sport")) if ext.has("sport") else None
        dport = _port_range(ext.value("dport"), ext.inverted("dport")) if ext.has("dport") else None
        if ext.has("tcp-flags") and ext.has("syn"):
            raise _Refused("--syn and --tcp-flags are exclusive")
        mask: frozenset[str] | None = None
        comp: frozenset[str] = frozenset()
        finv = False
        if ext.has("tcp-flags"):
            values, finv = ext.opts["tcp-flags"]
            mask, comp = _tcp_flags(values[0]), _tcp_flags(values[1])
        elif ext.has("syn"):
            mask, comp, finv = frozenset({"SYN", "RST", "ACK", "FIN"}), frozenset({"SYN"}), ext.inverted("syn")
        proto: Literal["tcp", "udp", "sctp"] = "tcp" if name == "tcp" else "udp" if name == "udp" else "sctp"
        return L4Match(proto, sport, dport, mask, comp, finv)
    if name == "icmp":
        if not ext.has("icmp-type"):
            return IcmpMatch(255)  # -m icmp alone matches any type
        return _icmp_type(ext.value("icmp-type"), ext.inverted("icmp-type"))
    if name == "multiport":
        if len(ext.opts) != 1:
            raise _Refused("multiport takes exactly one of --ports, --sports, --dports")
        key = next(iter(ext.opts))
        if not info.has_proto("tcp", "udp", "sctp"):
            raise _Refused("multiport requires -p tcp, udp or sctp")
        ranges: list[tuple[int, int]] = []
        slots = 0
        for part in ext.value(key).split(","):
            r = _port_range(part, False)
            ranges.append((r.lo, r.hi))
            slots += 1 if r.lo == r.hi and ":" not in part else 2
        if slots > 15:
            raise _Refused("multiport takes at most 15 ports (a range counts as two)")
        which: Literal["src", "dst", "either"] = "src" if key == "sports" else "dst" if key == "dports" else "either"
        return MultiportMatch(which, tuple(ranges), ext.inverted(key))
    if name == "comment":
        if not ext.has("comment"):
            raise _Refused("comment match needs --comment")
        text = ext.value("comment")
        if len(text) > 255:
            raise _Refused("comment longer than 255 characters")
        return CommentMatch(text)
    if name == "mark":
        if not ext.has("mark"):
            raise _Refused("mark match needs --mark")
        v, m = _value_mask(ext.value("mark"), "mark")
        return MarkMatch(v, _MASK32 if m is None else m, ext.inverted("mark"))
    if name == "connmark":
        if not ext.has("mark"):
            raise _Refused("connmark match needs --mark")
        v, m = _value_mask(ext.value("mark"), "mark")
        return ConnmarkMatch(v, _MASK32 if m is None else m, ext.inverted("mark"))
    if name == "conntrack":
        return _finish_conntrack(ext)
    if name == "state":
        if not ext.has("state"):
            raise _Refused("state match needs --state")
        states = _names(ext.value("state"), _CT_STATES[:5], "conntrack state")
        return StateMatch(Selection(states, ext.inverted("state")))
    if name == "addrtype":
        src = dst = None
        if ext.has("src-type"):
            src = Selection(_names(ext.value("src-type"), _ADDR_TYPES, "address type"), ext.inverted("src-type"))
        if ext.has("dst-type"):
            dst = Selection(_names(ext.value("dst-type"), _ADDR_TYPES, "address type"), ext.inverted("dst-type"))
        if ext.has("limit-iface-in") and ext.has("limit-iface-out"):
            raise _Refused("--limit-iface-in and --limit-iface-out are exclusive")
        limit: Literal["in", "out"] | None = (
            "in" if ext.has("limit-iface-in") else "out" if ext.has("limit-iface-out") else None
        )
        return AddrtypeMatch(src, dst, limit)
    if name == "statistic":
        return _finish_statistic(ext)
    if name == "recent":
        return _finish_recent(ext)
    if name == "physdev":
        if not ext.opts:
            raise _Refused("physdev match needs at least one option")

        def flag(key: str) -> bool | None:
            return (not ext.inverted(key)) if ext.has(key) else None

        return PhysdevMatch(
            _iface(ext.value("physdev-in")) if ext.has("physdev-in") else None,
            ext.has("physdev-in") and ext.inverted("physdev-in"),
            _iface(ext.value("physdev-out")) if ext.has("physdev-out") else None,
            ext.has("physdev-out") and ext.inverted("physdev-out"),
            flag("physdev-is-in"),
            flag("physdev-is-out"),
            flag("physdev-is-bridged"),
        )
    if name == "iprange":

        def addr_range(key: str) -> AddrRange | None:
            if not ext.has(key):
                return None
            lo, _, hi = ext.value(key).partition("-")
            return AddrRange(_address(lo), _address(hi or lo), ext.inverted(key))

        if not ext.opts:
            raise _Refused("iprange match needs --src-range or --dst-range")
        return IprangeMatch(addr_range("src-range"), addr_range("dst-range"))
    raise AssertionError(name)


def _finish_conntrack(ext: _Ext) -> ConntrackMatch:
    if not ext.opts:
        raise _Refused("conntrack match needs at least one option")

    def sel(key: str, allowed: tuple[str, ...], what: str) -> Selection | None:
        if not ext.has(key):
            return None
        return Selection(_names(ext.value(key), allowed, what), ext.inverted(key))

    def net(key: str) -> NetSel | None:
        return NetSel(_network(ext.value(key)), ext.inverted(key)) if ext.has(key) else None

    def ports(key: str) -> PortRange | None:
        return _port_range(ext.value(key), ext.inverted(key)) if ext.has(key) else None

    proto: L4Proto | None = None
    if ext.has("ctproto"):
        proto = _proto(ext.value("ctproto"))
        if proto is None:
            raise _Refused("--ctproto all is not modelled")
    direction: Literal["ORIGINAL", "REPLY"] | None = None
    if ext.has("ctdir"):
        d = ext.value("ctdir").upper()
        if d == "ORIGINAL":
            direction = "ORIGINAL"
        elif d == "REPLY":
            direction = "REPLY"
        else:
            raise _Refused(f"--ctdir {ext.value('ctdir')!r}: expected ORIGINAL or REPLY")
    return ConntrackMatch(
        state=sel("ctstate", _CT_STATES, "conntrack state"),
        status=sel("ctstatus", _CT_STATUSES, "conntrack status"),
        proto=proto,
        proto_invert=ext.has("ctproto") and ext.inverted("ctproto"),
        orig_src=net("ctorigsrc"),
        orig_dst=net("ctorigdst"),
        repl_src=net("ctreplsrc"),
        repl_dst=net("ctrepldst"),
        orig_sport=ports("ctorigsrcport"),
        orig_dport=ports("ctorigdstport"),
        repl_sport=ports("ctreplsrcport"),
        repl_dport=ports("ctrepldstport"),
        direction=direction,
    )


def _finish_statistic(ext: _Ext) -> StatisticMatch:
    if not ext.has("mode"):
        raise _Refused("statistic match needs --mode")
    mode = ext.value("mode")
    if mode == "random":
        if not ext.has("probability") or ext.has("every") or ext.has("packet"):
            raise _Refused("--mode random takes --probability (and not --every/--packet)")
        try:
            p = float(ext.value("probability"))
        except ValueError:
            raise _Refused(f"invalid probability {ext.value('probability')!r}") from None
        if not 0.0 <= p <= 1.0:
            raise _Refused("--probability must be between 0 and 1")
        # The kernel compares a 31-bit random number with lround(p * 2^31).
        q = math.floor(p * 0x80000000 + 0.5) / 0x80000000
        return StatisticMatch("random", probability=q, invert=ext.inverted("probability"))
    if mode == "nth":
        if not ext.has("every") or ext.has("probability"):
            raise _Refused("--mode nth takes --every (and not --probability)")
        if not ext.has("packet"):
            # as iptables-restore 1.8.9 refuses it (measured)
            raise _Refused('option "--every" also requires "--packet"')
        every = _num(ext.value("every"), "--every", 1)
        packet = _num(ext.value("packet"), "--packet")
        if packet > every - 1:
            raise _Refused("--packet must be between 0 and --every - 1")
        return StatisticMatch("nth", every=every, packet=packet, invert=ext.inverted("every"))
    raise _Refused(f"statistic --mode {mode!r} is not modelled by the simulator")


def _finish_recent(ext: _Ext) -> RecentMatch:
    commands = [c for c in ("set", "rcheck", "update", "remove") if ext.has(c)]
    if len(commands) != 1:
        raise _Refused("recent takes exactly one of --set, --rcheck, --update, --remove")
    command: Literal["set", "rcheck", "update", "remove"] = (
        "set"
        if commands[0] == "set"
        else "rcheck"
        if commands[0] == "rcheck"
        else "update"
        if commands[0] == "update"
        else "remove"
    )
    seconds = _num(ext.value("seconds"), "--seconds") if ext.has("seconds") else 0
    hitcount = _num(ext.value("hitcount"), "--hitcount") if ext.has("hitcount") else 0
    reap = ext.has("reap")
    if command in ("set", "remove") and (seconds or hitcount or reap):
        raise _Refused("--seconds, --hitcount and --reap only go with --rcheck or --update")
    if reap and not seconds:
        raise _Refused("--reap needs --seconds")
    if hitcount > RECENT_PKT_LIST_TOT:
        raise _Refused(f"--hitcount {hitcount} is larger than the kernel's maximum {RECENT_PKT_LIST_TOT}")
    if ext.has("rsource") and ext.has("rdest"):
        raise _Refused("--rsource and --rdest are exclusive")
    mask = int(_address(ext.value("mask"))) if ext.has("mask") else _MASK32
    name = ext.value("name") if ext.has("name") else "DEFAULT"
    return RecentMatch(
        name=name,
        command=command,
        invert=ext.inverted(command),
        seconds=seconds,
        hitcount=hitcount,
        reap=reap,
        side="dst" if ext.has("rdest") else "src",
        mask=mask,
    )


def _nat_to(text: str, info: _RuleInfo, what: str) -> tuple[IPv4Address, int | None]:
    addr, sep, port = text.partition(":")
    if "-" in addr or "-" in port or "," in text:
        raise _Refused(f"{what} {text!r}: address or port ranges are not modelled by the simulator")
    if not addr:
        raise _Refused(f"{what} {text!r}: a port without an address is not modelled")
    ip = _address(addr)
    if not sep:
        return ip, None
    if not info.has_proto("tcp", "udp", "sctp"):
        raise _Refused("a port mapping needs -p tcp, udp or sctp")
    return ip, _port(port)


def _finish_target(ext: _Ext, info: _RuleInfo) -> Target:
    name = ext.name
    if name in ("ACCEPT", "DROP", "RETURN"):
        v: Literal["ACCEPT", "DROP", "RETURN"] = (
            "ACCEPT" if name == "ACCEPT" else "DROP" if name == "DROP" else "RETURN"
        )
        return Verdict(v)
    if name == "REJECT":
        with_ = "icmp-port-unreachable"
        if ext.has("reject-with"):
            given = ext.value("reject-with")
            if given not in _REJECT_WITH:
                known = ", ".join(sorted(set(_REJECT_WITH.values())))
                raise _Refused(
                    f"--reject-with {given!r} is unknown or not modelled by the simulator (modelled: {known})"
                )
            with_ = _REJECT_WITH[given]
        if with_ == "tcp-reset" and not info.has_proto("tcp"):
            raise _Refused("--reject-with tcp-reset needs -p tcp")
        return RejectTarget(with_)
    if name == "MARK":
        return _finish_mark(ext)
    if name == "CONNMARK":
        return _finish_connmark(ext)
    if name in ("DNAT", "SNAT"):
        option = "--to-destination" if name == "DNAT" else "--to-source"
        if not ext.has("to"):
            raise _Refused(f"{name} needs {option}")
        ip, port = _nat_to(ext.value("to"), info, option)
        flags = frozenset(k for k in ("random", "random-fully", "persistent") if ext.has(k))
        return NatTarget("DNAT" if name == "DNAT" else "SNAT", ip, port, flags)
    if name == "MASQUERADE":
        port = None
        if ext.has("to-ports"):
            text = ext.value("to-ports")
            if "-" in text or "," in text:
                raise _Refused(f"--to-ports {text!r}: port ranges are not modelled by the simulator")
            if not info.has_proto("tcp", "udp", "sctp"):
                raise _Refused("--to-ports needs -p tcp, udp or sctp")
            port = _port(text)
        flags = frozenset(k for k in ("random", "random-fully") if ext.has(k))
        return NatTarget("MASQUERADE", None, port, flags)
    if name == "NOTRACK":
        return NotrackTarget()
    if name == "CT":
        if not ext.has("notrack"):
            raise _Refused("CT without --notrack is not modelled by the simulator")
        return NotrackTarget()
    if name == "LOG":
        prefix = ext.value("log-prefix") if ext.has("log-prefix") else ""
        if len(prefix) > 29:
            raise _Refused("--log-prefix longer than 29 characters")
        level = "warning"
        if ext.has("log-level"):
            given = ext.value("log-level").lower()
            if given.isdigit() and int(given) < len(_LOG_LEVELS):
                level = _LOG_LEVELS[int(given)]
            elif given in _LOG_LEVELS:
                level = given
            elif given in ("panic", "warn", "err"):
                level = {"panic": "emerg", "warn": "warning", "err": "error"}[given]
            else:
                raise _Refused(f"invalid --log-level {ext.value('log-level')!r}")
        return LogTarget(prefix, level)
    raise AssertionError(name)


def _finish_mark(ext: _Ext) -> MarkTarget:
    given = [k for k in ("set-xmark", "set-mark", "and-mark", "or-mark", "xor-mark") if ext.has(k)]
    if len(given) != 1:
        raise _Refused(f"{ext.name} takes exactly one of --set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark")
    key = given[0]
    # The same reduction libxt_MARK does before handing the rule to the kernel.
    if key in ("set-xmark", "set-mark"):
        v, m = _value_mask(ext.value(key), "mark")
        mask = _MASK32 if m is None else m
        return MarkTarget(v, mask if key == "set-xmark" else (v | mask))
    bits = _num(ext.value(key), "mark")
    if key == "and-mark":
        return MarkTarget(0, ~bits & _MASK32)
    if key == "or-mark":
        return MarkTarget(bits, bits)
    return MarkTarget(bits, 0)


def _finish_connmark(ext: _Ext) -> ConnmarkTarget:
    modes = [k for k in ("save-mark", "restore-mark") if ext.has(k)]
    sets = [k for k in ("set-xmark", "set-mark", "and-mark", "or-mark", "xor-mark") if ext.has(k)]
    masks = [k for k in ("nfmask", "ctmask", "mask") if ext.has(k)]
    if len(modes) + len(sets) != 1:
        raise _Refused(
            "CONNMARK takes exactly one of --set-xmark, --set-mark, --and-mark, "
            "--or-mark, --xor-mark, --save-mark, --restore-mark"
        )
    if sets:
        if masks:
            raise _Refused("--nfmask, --ctmask and --mask only go with --save-mark or --restore-mark")
        m = _finish_mark(ext)
        return ConnmarkTarget("set", ctmark=m.value, ctmask=m.mask)
    if ext.has("mask") and (ext.has("nfmask") or ext.has("ctmask")):
        raise _Refused("--mask and --nfmask/--ctmask are exclusive")
    nfmask = ctmask = _MASK32
    if ext.has("mask"):
        nfmask = ctmask = _num(ext.value("mask"), "mask")
    if ext.has("nfmask"):
        nfmask = _num(ext.value("nfmask"), "mask")
    if ext.has("ctmask"):
        ctmask = _num(ext.value("ctmask"), "mask")
    return ConnmarkTarget("save" if modes[0] == "save-mark" else "restore", ctmask=ctmask, nfmask=nfmask)


# --------------------------------------------------------------------------
# Rule lines

_GENERIC = {
    "-s": "src", "--source": "src", "--src": "src",
    "-d": "dst", "--destination": "dst", "--dst": "dst",
    "-p": "proto", "--protocol": "proto",
    "-i": "in", "--in-interface": "in",
    "-o": "out", "--out-interface": "out",
    "-j": "jump", "--jump": "jump",
    "-g": "goto", "--goto": "goto",
    "-m": "match", "--match": "match",
    "-4": "ipv4", "--ipv4": "ipv4",
}  # fmt: skip
_NOT_INVERTIBLE = {"jump", "goto", "match", "ipv4"}


def _parse_rule_args(
    args: list[str], table: str, chain: str, declared: dict[str, Chain]
) -> tuple[list[Match], Target | None, str | None]:
    """The options of one rule (after `-A CHAIN`), into matches and a target."""
    info = _RuleInfo(table, chain)
    generic: list[Match] = []
    exts: list[_Ext] = []  # loaded match extensions, in order
    target_ext: _Ext | None = None
    jump: Jump | None = None
    current: _Ext | None = None  # options go to the extension named last
    seen_generic: set[str] = set()
    i = 0
    invert = False

    def take(opt: str, n: int, invertible: bool) -> list[str]:
        """The values of `opt`, accepting the old `--opt ! value` negation too."""
        nonlocal i, invert
        if n and invertible and i < len(args) and args[i] == "!":
            if invert:
                raise _Refused("double negation")
            invert = True
            i += 1
        if i + n > len(args):
            raise _Refused(f"option {opt} needs {n} value(s)")
        values = args[i : i + n]
        i += n
        return values

    while i < len(args):
        tok = args[i]
        i += 1
        if tok == "!":
            if invert:
                raise _Refused("double negation")
            invert = True
            continue
        if tok in _GENERIC:
            key = _GENERIC[tok]
            if invert and key in _NOT_INVERTIBLE:
                raise _Refused(f"option {tok} cannot be negated")
            if key == "ipv4":
                continue
            if key in seen_generic and key != "match":
                raise _Refused(f"option {tok} given twice")
            seen_generic.add(key)
            (value,) = take(tok, 1, key not in _NOT_INVERTIBLE)
            neg, invert = invert, False
            if key in ("src", "dst"):
                generic.append(AddrMatch("src" if key == "src" else "dst", _network(value), neg))
            elif key == "proto":
                p = _proto(value)
                if p is None:
                    if neg:
                        raise _Refused("! -p all would never match")
                else:
                    generic.append(ProtoMatch(p, neg))
                info.proto, info.proto_invert = p, neg
            elif key in ("in", "out"):
                # as the iptables command checks, by the rule's own chain
                if key == "in" and chain in ("OUTPUT", "POSTROUTING"):
                    raise _Refused(f"-i cannot be used in chain {chain}")
                if key == "out" and chain in ("PREROUTING", "INPUT"):
                    raise _Refused(f"-o cannot be used in chain {chain}")
                generic.append(IfaceMatch("in" if key == "in" else "out", _iface(value), neg))
            elif key == "match":
                if value not in _MATCH_OPTIONS:
                    known = ", ".join(sorted(_MATCH_OPTIONS))
                    raise _Refused(f"match extension {value!r} is not modelled by the simulator (modelled: {known})")
                current = _Ext("match", value, _MATCH_OPTIONS[value])
                exts.append(current)
            else:  # jump / goto
                if "jump" in seen_generic and "goto" in seen_generic:
                    raise _Refused("-j and -g are exclusive")
                if key == "jump" and value in _TARGET_OPTIONS:
                    current = target_ext = _Ext("target", value, _TARGET_OPTIONS[value])
                    continue
                if value in BUILTIN_CHAINS[table]:
                    raise _Refused(f"cannot jump to built-in chain {value!r}")
                if value not in declared:
                    how = "goto" if key == "goto" else "jump"
                    raise _Refused(
                        f"{how} to undeclared chain {value!r} (and no target of that name is modelled by the simulator)"
                    )
                jump = Jump(value, key == "goto")
                current = None
            continue
        if tok in ("-6", "--ipv6"):
            raise _Refused("IPv6 rules (-6) are not modelled by the simulator")
        if tok in ("-f", "--fragment"):
            raise _Refused("fragment matching (-f) is not modelled by the simulator")
        if not tok.startswith("-"):
            raise _Refused(f"unexpected argument {tok!r}")
        # An extension option: the extension named last, else any loaded one.
        owner: _Ext | None = None
        candidates = ([current] if current else []) + ([target_ext] if target_ext else []) + exts[::-1]
        for ext in candidates:
            if tok in ext.spec:
                owner = ext
                break
        if owner is None and info.proto in ("tcp", "udp", "sctp", "icmp") and not info.proto_invert:
            # like iptables, `-p tcp --dport 80` loads the protocol's match implicitly
            assert info.proto is not None
            implicit = _MATCH_OPTIONS[info.proto]
            if tok in implicit and not any(e.name == info.proto for e in exts):
                owner = _Ext("match", info.proto, implicit)
                exts.append(owner)
        if owner is None:
            if current is not None:
                known = ", ".join(sorted(current.spec))
                raise _Refused(
                    f"option {tok!r} of {current.kind} {current.name!r} is unknown or not modelled by the simulator "
                    f"(modelled: {known})"
                )
            # iptables itself refuses an option no loaded extension owns (e.g. --dport without -p tcp).
            raise _Refused(
                f"option {tok!r} belongs to no match or target given before it "
                "(missing -p/-m before it, a typo, or an extension the simulator does not model)"
            )
        canon, n, invertible = owner.spec[tok]
        if invert and not invertible:
            raise _Refused(f"option {tok} cannot be negated")
        values = take(tok, n, invertible)
        if canon in owner.opts:
            raise _Refused(f"option {tok} given twice")
        owner.opts[canon] = (values, invert)
        invert = False
    if invert:
        raise _Refused("'!' at the end of the rule")

    matches: list[Match] = list(generic)
    comments: list[str] = []
    for ext in exts:
        m = _finish_match(ext, info)
        if m is not None:
            matches.append(m)
            if isinstance(m, CommentMatch):
                comments.append(m.comment)
    target: Target | None = jump
    if target_ext is not None:
        target = _finish_target(target_ext, info)
        if isinstance(target, NatTarget) and table != "nat":
            raise _Refused(f"target {target.kind} is only valid in table nat")
        if isinstance(target, NotrackTarget) and table != "raw":
            raise _Refused(f"target {target_ext.name} is only valid in table raw")
        if isinstance(target, RejectTarget) and table != "filter":
            # ipt_REJECT is registered for table filter (measured: mangle refuses it at COMMIT)
            raise _Refused("target REJECT is only valid in table filter")
    return matches, target, (" ".join(comments) if comments else None)


# --------------------------------------------------------------------------
# Hook restrictions the kernel enforces when the table is loaded


def _allowed_hooks(rule: Rule) -> tuple[frozenset[str], str] | None:
    """Hooks the rule may be reached from, and why; None when unrestricted."""
    allowed = frozenset(HOOKS)
    why: list[str] = []
    t = rule.target
    if isinstance(t, NatTarget):
        hooks = {"DNAT": ("PREROUTING", "OUTPUT"), "SNAT": ("POSTROUTING", "INPUT"), "MASQUERADE": ("POSTROUTING",)}[
            t.kind
        ]
        allowed &= frozenset(hooks)
        why.append(f"target {t.kind} (only {', '.join(hooks)})")
    if isinstance(t, RejectTarget):
        allowed &= frozenset(("INPUT", "FORWARD", "OUTPUT"))
        why.append("target REJECT (only INPUT, FORWARD, OUTPUT)")
    for m in rule.matches:
        if isinstance(m, AddrtypeMatch) and m.limit == "in":
            allowed -= {"OUTPUT", "POSTROUTING"}
            why.append("addrtype --limit-iface-in (not OUTPUT, POSTROUTING)")
        if isinstance(m, AddrtypeMatch) and m.limit == "out":
            allowed -= {"PREROUTING", "INPUT"}
            why.append("addrtype --limit-iface-out (not PREROUTING, INPUT)")
        if (
            isinstance(m, PhysdevMatch)
            and (m.out_iface is not None or m.is_out is not None)
            and m.is_bridged is not True
        ):
            allowed -= {"OUTPUT"}
            why.append("physdev --physdev-out/--physdev-is-out without --physdev-is-bridged (not OUTPUT)")
    if not why:
        return None
    return allowed, "; ".join(why)


def _check_table(table: Table, source: str) -> None:
    """Reachability from each built-in chain: loops and hook restrictions."""
    reach: dict[str, set[str]] = {name: set() for name in table.chains}
    for hook in BUILTIN_CHAINS[table.name]:
        # iterative DFS; `path` holds chains on the current jump path (loop detection)
        reach[hook].add(hook)
        done: set[str] = {hook}
        path: list[str] = [hook]
        on_path: set[str] = {hook}
        stack: list[tuple[str, int]] = [(hook, 0)]
        while stack:
            name, pos = stack[-1]
            rules = table.chains[name].rules
            if pos >= len(rules):
                stack.pop()
                path.pop()
                on_path.discard(name)
                continue
            stack[-1] = (name, pos + 1)
            t = rules[pos].target
            if not isinstance(t, Jump):
                continue
            if t.chain in on_path:
                r = rules[pos]
                raise RulesetError(source, r.line, r.text, f"jump loop: {' -> '.join([*path, t.chain])}")
            if t.chain in done:
                continue
            done.add(t.chain)
            reach[t.chain].add(hook)
            path.append(t.chain)
            on_path.add(t.chain)
            stack.append((t.chain, 0))
    for name, chain in table.chains.items():
        hooks = reach[name]
        if not hooks:
            continue
        for r in chain.rules:
            restriction = _allowed_hooks(r)
            if restriction is None:
                continue
            allowed, why = restriction
            bad = sorted(hooks - allowed, key=HOOKS.index)
            if bad:
                via = "" if chain.builtin else f" (chain {name} is reachable from {', '.join(bad)})"
                raise RulesetError(
                    source,
                    r.line,
                    r.text,
                    f"{why}: not allowed from {', '.join(bad)}{via}",
                )


# --------------------------------------------------------------------------
# The file

_COUNTERS = re.compile(r"^\[(\d+):(\d+)\]\s*")
# Shell-like words as iptables-restore splits them: "..." (where a backslash
# escapes any character), '...', and backslash escapes outside quotes.
_WORD = re.compile(r"""(?:[^\s"'\\]+|"(?:[^"\\]|\\.)*"|'[^']*'|\\.)+""", re.S)
_PIECE = re.compile(r"""[^\s"'\\]+|"((?:[^"\\]|\\.)*)"|'([^']*)'|\\(.)""", re.S)
_ESCAPED = re.compile(r"\\(.)", re.S)


def split_words(line: str) -> list[str]:
    """Split a rule line into words; _Refused on an unterminated quote."""
    simple = _split_double_quoted(line)
    return simple if simple is not None else _split_shell_words(line)


def _split_double_quoted(line: str) -> list[str] | None:
    """The common case (kube-proxy's --comment "..."): double quotes, each
    quoted part a whole word. None when the line is anything else."""
    if "\\" in line or "'" in line:
        return None
    parts = line.split('"')
    if len(parts) % 2 == 0:
        return None  # an unterminated quote: the general splitter says so
    last = len(parts) - 1
    words: list[str] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            words.extend(part.split())
            continue
        before, after = parts[i - 1], parts[i + 1]
        # A quoted part glued to other characters (or to another quoted
        # part) joins them into one word: leave that to the general splitter.
        if (before and not before[-1].isspace()) or (not before and i > 1):
            return None
        if (after and not after[0].isspace()) or (not after and i + 1 < last):
            return None
        words.append(part)
    return words


def _split_shell_words(line: str) -> list[str]:
    words: list[str] = []
    pos = 0
    for m in _WORD.finditer(line):
        if line[pos : m.start()].strip():
            break
        pos = m.end()
        word = m.group()
        if '"' not in word and "'" not in word and "\\" not in word:
            words.append(word)
            continue
        parts: list[str] = []
        for piece in _PIECE.finditer(word):
            dq, sq, esc = piece.group(1), piece.group(2), piece.group(3)
            if dq is not None:
                parts.append(_ESCAPED.sub(r"\1", dq))
            elif sq is not None:
                parts.append(sq)
            elif esc is not None:
                parts.append(esc)
            else:
                parts.append(piece.group())
        words.append("".join(parts))
    if line[pos:].strip():
        raise _Refused("cannot split the line: unterminated quote")
    return words


@dataclass
class _Open:
    table: Table
    line: int
    text: str


def parse_iptables_save(text: str, *, source: str = "<iptables>") -> Ruleset:
    """Parse iptables-save output into a validated Ruleset; RulesetError if refused."""
    # Parsing allocates many small objects and no cycles: the cyclic garbage
    # collector's passes during it were a third of the time for 10,000 rules.
    with without_gc():
        return _parse(text, source)


@contextmanager
def without_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector (for bursts of acyclic allocations)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _parse(text: str, source: str) -> Ruleset:
    if text.startswith("\ufeff"):
        # Invisible in the message otherwise; iptables-restore refuses it too.
        raise RulesetError(
            source, 1, text.splitlines()[0][1:], "starts with a byte-order mark (U+FEFF): save the file without one"
        )
    ruleset = Ruleset(source=source)
    open_: _Open | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("*"):
                if open_ is not None:
                    raise _Refused(f"table {open_.table.name} (line {open_.line}) has no COMMIT")
                name = line[1:].strip()
                if name not in TABLES:
                    raise _Refused(f"table {name!r} is not modelled by the simulator")
                table = Table(name, {c: Chain(c, "ACCEPT") for c in BUILTIN_CHAINS[name]})
                open_ = _Open(table, lineno, line)
                continue
            if open_ is None:
                raise _Refused("outside of a table (no *table line before it)")
            table = open_.table
            if line == "COMMIT":
                _check_table(table, source)
                # iptables-restore replaces a table given twice
                ruleset.tables[table.name] = table
                open_ = None
                continue
            if line.startswith(":"):
                _declare(table, line)
                continue
            _rule_line(table, line, lineno)
        except _Refused as e:
            raise RulesetError(source, lineno, line, e.message) from None
    if open_ is not None:
        raise RulesetError(source, open_.line, open_.text, f"table {open_.table.name} has no COMMIT")
    return ruleset


def _declare(table: Table, line: str) -> None:
    parts = line[1:].split()
    if len(parts) not in (2, 3) or (len(parts) == 3 and not _COUNTERS.match(parts[2])):
        raise _Refused("expected ':CHAIN POLICY [packets:bytes]'")
    name, policy = parts[0], parts[1]
    if name in BUILTIN_CHAINS[table.name]:
        if policy not in ("ACCEPT", "DROP"):
            raise _Refused(f"policy of built-in chain {name} must be ACCEPT or DROP")
        table.chains[name].policy = policy
        return
    if name in HOOKS or name in _RESERVED:
        raise _Refused(f"{name!r} cannot be a user chain name in table {table.name}")
    if policy != "-":
        raise _Refused(f"user chain {name} cannot have a policy")
    if len(name) > 28:
        raise _Refused(f"chain name {name!r} longer than 28 characters")
    if name in table.chains:
        raise _Refused(f"chain {name} declared twice")
    table.chains[name] = Chain(name, None)


def _rule_line(table: Table, line: str, lineno: int) -> None:
    body = _COUNTERS.sub("", line, count=1)
    args = split_words(body)
    if len(args) < 2:
        raise _Refused("expected -A CHAIN ...")
    cmd, chain_name = args[0], args[1]
    rest = args[2:]
    if cmd in ("-N", "--new-chain") and not rest:
        _declare(table, f":{chain_name} -")
        return
    if cmd not in ("-A", "--append", "-I", "--insert"):
        raise _Refused(
            f"command {cmd!r} is unknown or not modelled by the simulator (modelled: -A/--append, -I/--insert, -N)"
        )
    chain = table.chains.get(chain_name)
    if chain is None:
        raise _Refused(f"chain {chain_name!r} does not exist in table {table.name}")
    position = len(chain.rules)
    if cmd in ("-I", "--insert"):
        position = 0
        if rest and rest[0].isdigit():
            n = int(rest[0])
            if not 1 <= n <= len(chain.rules) + 1:
                raise _Refused(f"index of insertion {n} out of range")
            position = n - 1
            rest = rest[1:]
    matches, target, comment = _parse_rule_args(rest, table.name, chain_name, table.chains)
    rule = Rule(table.name, chain_name, lineno, line, matches, target, comment)
    chain.rules.insert(position, rule)
