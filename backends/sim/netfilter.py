"""Evaluation of a parsed ruleset, as the kernel's ip_tables walks a hook.

Each rule is compiled once (per Ruleset object) into a tuple of predicate
closures and an action, so a packet walk does no string work. A chain with
many `-d a.b.c.d/32` rules (kube-proxy's KUBE-SERVICES) is indexed by
destination; the index only skips rules that cannot match, so results and
side effects are exactly those of the linear walk.

Conntrack view: as in the kernel, a packet whose ctstate is INVALID or
UNTRACKED has no conntrack entry (whatever `pkt.ct` holds); CONNMARK then does
nothing and conntrack matches on entry fields are false. A packet conntrack
has not seen yet (in the raw table) is INVALID.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from backends.sim import freeports
from backends.sim.freeports import FreePorts, Ranges
from backends.sim.iptables import (
    RECENT_PKT_LIST_TOT,
    AddrMatch,
    AddrtypeMatch,
    CommentMatch,
    ConnmarkMatch,
    ConnmarkTarget,
    ConntrackMatch,
    IcmpMatch,
    Iface,
    IfaceMatch,
    IprangeMatch,
    Jump,
    L4Match,
    LogTarget,
    MarkMatch,
    MarkTarget,
    Match,
    MultiportMatch,
    NatTarget,
    NetSel,
    NotrackTarget,
    PhysdevMatch,
    PortRange,
    ProtoMatch,
    RecentMatch,
    RejectTarget,
    Rule,
    Ruleset,
    StateMatch,
    StatisticMatch,
    Verdict,
    without_gc,
)
from backends.sim.packet import Addr, Conn, Packet

_MASK32 = 0xFFFFFFFF
# The kernel's xt_recent default: addresses kept per list (ip_list_tot).
RECENT_LIST_TOT = 100


class Chooser(Protocol):
    def choose(self, probability: float, where: str) -> bool:
        """Decide one draw: a `-m statistic --mode random` match, or one step in
        placing an nth counter (see `_nth_phase`); `where` names the rule."""
        ...


@dataclass(slots=True)
class NetfilterState:
    """Per network namespace state that survives between packets."""

    # nth counters, per (rule, index of the statistic match in the rule): the
    # kernel's counter value; absent until a path reaches the rule
    nth: dict[tuple[Rule, int], int] = field(default_factory=dict)
    # recent lists: name -> masked address -> timestamps (oldest first).
    # Dict order is the kernel's LRU order: least recently updated first.
    recent: dict[str, dict[int, list[float]]] = field(default_factory=dict)


@dataclass(slots=True)
class HookContext:
    netns: str
    hook: str  # PREROUTING INPUT FORWARD OUTPUT POSTROUTING
    in_dev: str | None
    out_dev: str | None
    # (address, limit iface or None) -> {"LOCAL", "UNICAST", ...}
    addr_type: Callable[[Addr, str | None], frozenset[str]]
    chooser: Chooser
    state: NetfilterState
    physdev_in: str | None = None  # bridge ports, for a bridged frame (br_netfilter)
    physdev_out: str | None = None
    bridged: bool = False
    now: float = 0.0  # seconds, for recent --seconds
    trace: list[str] | None = None  # human-readable steps are appended when not None
    free: FreePorts | None = None  # the path's randomly picked ports (see backends.sim.freeports)


@dataclass(frozen=True)
class Nat:
    kind: Literal["DNAT", "SNAT", "MASQUERADE"]
    ip: Addr | None  # None for MASQUERADE (the stack picks the out device's source)
    port: int | None  # None: keep the port
    flags: frozenset[str] = frozenset()  # random, random-fully, persistent

    def __str__(self) -> str:
        where = str(self.ip) if self.ip is not None else ""
        if self.port is not None:
            where += f":{self.port}"
        flags = "".join(f" --{f}" for f in sorted(self.flags))
        return f"{self.kind} {where}".rstrip() + flags


@dataclass(frozen=True)
class Decision:
    verdict: Literal["ACCEPT", "DROP", "REJECT"]
    rule: Rule | None  # the deciding rule; None when a built-in chain's policy (or no table) did
    nat: Nat | None = None  # set when a DNAT/SNAT/MASQUERADE target decided (verdict ACCEPT)
    reject_with: str | None = None


# --------------------------------------------------------------------------
# Compilation

Pred = Callable[[Packet, HookContext], bool]

_TRACKED = ("NEW", "ESTABLISHED", "RELATED")


def _conn(pkt: Packet) -> Conn | None:
    """The conntrack entry as the kernel sees it (none for INVALID/UNTRACKED)."""
    return pkt.ct if pkt.ctstate in _TRACKED else None


def _iface_test(iface: Iface, invert: bool) -> Callable[[str | None], bool]:
    # The kernel compares against "" when there is no device, so `-i +`
    # matches even without an input device.
    name = iface.name
    if iface.wildcard:
        return lambda dev: (dev or "").startswith(name) != invert
    return lambda dev: ((dev or "") == name) != invert


PortTest = Callable[[int, "HookContext"], bool]


def _ports(r: PortRange) -> PortTest:
    return _port_test(((r.lo, r.hi),), r.invert)


def _port_test(ranges: Ranges, invert: bool) -> PortTest:
    """A port test; a port the kernel picked at random is fixed only as far as the test needs (a draw)."""
    where = "a port picked at random (a client's, or --random NAT) tested against " + ",".join(
        f"{lo}:{hi}" if lo != hi else str(lo) for lo, hi in ranges
    )
    if len(ranges) == 1:
        ((lo, hi),) = ranges

        def one(port: int, c: HookContext) -> bool:
            free = c.free
            if free is not None and port in free.labels:
                return free.test(port, ranges, c.chooser, where) != invert
            return (lo <= port <= hi) != invert

        return one

    def many(port: int, c: HookContext) -> bool:
        free = c.free
        if free is not None and port in free.labels:
            return free.test(port, ranges, c.chooser, where) != invert
        return any(lo <= port <= hi for lo, hi in ranges) != invert

    return many


def _net(sel: NetSel) -> Callable[[Addr], bool]:
    net, mask, inv = int(sel.net.network_address), int(sel.net.netmask), sel.invert
    return lambda a: ((a & mask) == net) != inv


def _all(tests: list[Pred]) -> Pred:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:  # the common case (e.g. protocol and port), without a generator
        first, second = tests
        return lambda p, c: first(p, c) and second(p, c)
    parts = tuple(tests)
    return lambda p, c: all(t(p, c) for t in parts)


def _compile_match(m: Match, rule: Rule, index: int) -> Pred | None:
    """A predicate for one match; None when it always matches (comments)."""
    if isinstance(m, AddrMatch):
        net, mask, inv = int(m.net.network_address), int(m.net.netmask), m.invert
        if m.field == "src":
            return lambda p, c: ((p.src & mask) == net) != inv
        return lambda p, c: ((p.dst & mask) == net) != inv
    if isinstance(m, ProtoMatch):
        proto, inv = m.proto, m.invert
        return lambda p, c: (p.proto == proto) != inv
    if isinstance(m, IfaceMatch):
        test = _iface_test(m.iface, m.invert)
        if m.direction == "in":
            return lambda p, c: test(c.in_dev)
        return lambda p, c: test(c.out_dev)
    if isinstance(m, L4Match):
        return _compile_l4(m)
    if isinstance(m, MultiportMatch):
        return _compile_multiport(m)
    if isinstance(m, CommentMatch):
        return None
    if isinstance(m, MarkMatch):
        value, mask, inv = m.value, m.mask, m.invert
        return lambda p, c: ((p.mark & mask) == value) != inv
    if isinstance(m, ConnmarkMatch):
        cvalue, cmask, cinv = m.value, m.mask, m.invert

        def connmark(p: Packet, c: HookContext) -> bool:
            ct = _conn(p)
            return ct is not None and ((ct.mark & cmask) == cvalue) != cinv

        return connmark
    if isinstance(m, ConntrackMatch):
        return _compile_conntrack(m)
    if isinstance(m, StateMatch):
        names, inv = m.state.names, m.state.invert
        return lambda p, c: (p.ctstate in names) != inv
    if isinstance(m, AddrtypeMatch):
        return _compile_addrtype(m)
    if isinstance(m, StatisticMatch):
        return _compile_statistic(m, rule, index)
    if isinstance(m, RecentMatch):
        return _compile_recent(m)
    if isinstance(m, IcmpMatch):
        itype, lo, hi, inv = m.icmp_type, m.code_min, m.code_max, m.invert

        def icmp(p: Packet, c: HookContext) -> bool:
            if p.proto != "icmp":
                return False
            return (itype == 255 or (p.icmp_type == itype and lo <= p.icmp_code <= hi)) != inv

        return icmp
    if isinstance(m, PhysdevMatch):
        return _compile_physdev(m)
    if isinstance(m, IprangeMatch):
        tests: list[Pred] = []
        if m.src is not None:
            slo, shi, sinv = int(m.src.lo), int(m.src.hi), m.src.invert
            tests.append(lambda p, c: (slo <= p.src <= shi) != sinv)
        if m.dst is not None:
            dlo, dhi, dinv = int(m.dst.lo), int(m.dst.hi), m.dst.invert
            tests.append(lambda p, c: (dlo <= p.dst <= dhi) != dinv)
        return _all(tests)
    raise AssertionError(m)


def _compile_l4(m: L4Match) -> Pred:
    proto = m.proto
    tests: list[Pred] = [lambda p, c: p.proto == proto]  # a tcp match on udp is simply false
    if m.sport is not None:
        sport = _ports(m.sport)
        tests.append(lambda p, c: sport(p.sport, c))
    if m.dport is not None:
        dport = _ports(m.dport)
        tests.append(lambda p, c: dport(p.dport, c))
    if m.flags_mask is not None:
        fmask, comp, finv = m.flags_mask, m.flags_comp, m.flags_invert
        tests.append(lambda p, c: ((p.tcp_flags & fmask) == comp) != finv)
    return _all(tests)


def _compile_multiport(m: MultiportMatch) -> Pred:
    hit, inv = _port_test(freeports.normal(m.ranges), False), m.invert
    if m.which == "src":
        return lambda p, c: hit(p.sport, c) != inv
    if m.which == "dst":
        return lambda p, c: hit(p.dport, c) != inv
    return lambda p, c: (hit(p.sport, c) or hit(p.dport, c)) != inv


CtTest = Callable[[Packet, Conn, "HookContext"], bool]


def _compile_conntrack(m: ConntrackMatch) -> Pred:
    # Order and the no-entry case follow the kernel's conntrack_mt.
    state = m.state
    tests: list[CtTest] = []
    if m.direction is not None:
        want_reply = m.direction == "REPLY"
        tests.append(lambda p, ct, c: p.ct_reply == want_reply)
    for sel, pick in (
        (m.orig_src, lambda ct: ct.original.src),
        (m.orig_dst, lambda ct: ct.original.dst),
        (m.repl_src, lambda ct: ct.reply.src),
        (m.repl_dst, lambda ct: ct.reply.dst),
    ):
        if sel is not None:
            tests.append(_ct_addr(_net(sel), pick))
    if m.proto is not None:
        cproto, pinv = m.proto, m.proto_invert
        tests.append(lambda p, ct, c: (ct.original.proto == cproto) != pinv)
    for ports, pickp in (
        (m.orig_sport, lambda ct: ct.original.sport),
        (m.orig_dport, lambda ct: ct.original.dport),
        (m.repl_sport, lambda ct: ct.reply.sport),
        (m.repl_dport, lambda ct: ct.reply.dport),
    ):
        if ports is not None:
            tests.append(_ct_port(_ports(ports), pickp))
    if m.status is not None:
        statuses, sinv = m.status.names, m.status.invert
        tests.append(lambda p, ct, c: bool(statuses & ct.status) != sinv)

    if state is not None and not tests and state.names.isdisjoint(("SNAT", "DNAT")):
        # The common rule (kube-proxy's --ctstate NEW, INVALID, RELATED,ESTABLISHED):
        # only the packet's own state can decide, entry or not.
        names, inv = state.names, state.invert
        return lambda p, c: (p.ctstate in names) != inv

    def conntrack(p: Packet, c: HookContext) -> bool:
        ct = _conn(p)
        if state is not None:
            bits: set[str] = {p.ctstate}
            if ct is not None:
                bits |= ct.status & {"SNAT", "DNAT"}
            if (not state.names.isdisjoint(bits)) == state.invert:
                return False
        if ct is None:
            # the kernel: without an entry only a --ctstate test can match
            return state is not None
        return all(t(p, ct, c) for t in tests)

    return conntrack


def _ct_addr(test: Callable[[Addr], bool], pick: Callable[[Conn], Addr]) -> CtTest:
    return lambda p, ct, c: test(pick(ct))


def _ct_port(test: PortTest, pick: Callable[[Conn], int]) -> CtTest:
    return lambda p, ct, c: test(pick(ct), c)


def _compile_addrtype(m: AddrtypeMatch) -> Pred:
    limit = m.limit

    def dev(c: HookContext) -> str | None:
        if limit == "in":
            return c.in_dev
        if limit == "out":
            return c.out_dev
        return None

    tests: list[Pred] = []
    if m.src is not None:
        s = m.src
        tests.append(lambda p, c: (not s.names.isdisjoint(c.addr_type(p.src, dev(c)))) != s.invert)
    if m.dst is not None:
        d = m.dst
        tests.append(lambda p, c: (not d.names.isdisjoint(c.addr_type(p.dst, dev(c)))) != d.invert)
    if not tests:
        return lambda p, c: True
    return _all(tests)


def _compile_statistic(m: StatisticMatch, rule: Rule, index: int) -> Pred:
    inv = m.invert
    if m.mode == "random":
        prob = m.probability
        where = f"{rule.table}:{rule.line}: {rule.text}"
        return lambda p, c: c.chooser.choose(prob, where) != inv
    key = (rule, index)
    every = m.every
    last = every - 1
    # The kernel's counter counts up to every-1 and wraps to 0, where the match
    # fires; loading the rule sets it to every-1-packet, so the first match is
    # on packet number --packet (measured: --every 3 --packet 0 drops packets
    # 1, 4, 7 after the load; --packet 2 drops 3 and 6).
    loaded = last - m.packet
    where = f"{rule.table}:{rule.line}: {rule.text} (nth counter phase)"

    def nth(p: Packet, c: HookContext) -> bool:
        count = c.state.nth.get(key)
        if count is None:
            count = _nth_phase(c.chooser, every, loaded, where)
        count = 0 if count == last else count + 1
        c.state.nth[key] = count
        return (count == 0) != inv

    return nth


def _nth_phase(chooser: Chooser, every: int, loaded: int, where: str) -> int:
    """Where a counter stands when a path first reaches its rule.

    The counter is shared by every packet through the rule since it was
    loaded (a conntrack flush keeps it), and probes on a real backend run
    concurrently, so a probe cannot know its place in the cycle: each of the
    `every` places is drawn with equal weight, the one right after a load
    first (so a chooser that always says yes sees a freshly loaded rule).
    """
    for i in range(every - 1):
        if chooser.choose(1.0 / (every - i), where):
            return (loaded + i) % every
    return (loaded + every - 1) % every


def _compile_recent(m: RecentMatch) -> Pred:
    name, command, inv = m.name, m.command, m.invert
    seconds, hitcount, reap, mask = m.seconds, m.hitcount, m.reap, m.mask
    use_src = m.side == "src"

    def recent(p: Packet, c: HookContext) -> bool:
        # Mirrors the kernel's recent_mt, including where `!` applies.
        table = c.state.recent.setdefault(name, {})
        addr = (p.src if use_src else p.dst) & mask
        stamps = table.get(addr)
        ret = inv
        if stamps is None:
            if command != "set":
                return ret
            if len(table) >= RECENT_LIST_TOT:
                del table[next(iter(table))]  # the least recently updated goes
            table[addr] = [c.now]
            return not ret
        if command == "set":
            ret = not ret
        elif command == "remove":
            del table[addr]
            return not ret
        else:
            since = c.now - seconds
            hits = 0
            for t in stamps:
                if seconds and t < since:
                    continue
                hits += 1
                if not hitcount or hits >= hitcount:
                    ret = not ret
                    break
            if reap:
                oldest_addr = next(iter(table))
                oldest = table[oldest_addr]
                # the kernel reaps the LRU entry unless it is the one about to be updated
                if not (oldest_addr == addr and command == "update" and ret) and oldest[-1] < since:
                    del table[oldest_addr]
        if command == "set" or (command == "update" and ret):
            entry = table.pop(addr, stamps)  # the entry moves to the LRU tail
            entry.append(c.now)
            del entry[:-RECENT_PKT_LIST_TOT]
            table[addr] = entry
        return ret

    return recent


def _compile_physdev(m: PhysdevMatch) -> Pred:
    in_test = _iface_test(m.in_iface, m.in_invert) if m.in_iface is not None else None
    out_test = _iface_test(m.out_iface, m.out_invert) if m.out_iface is not None else None
    is_in, is_out, is_bridged = m.is_in, m.is_out, m.is_bridged
    # Without bridge info, a test matches only if it is negated (the kernel's rule).
    no_info = not (
        (is_bridged is True)
        or (is_in is True)
        or (is_out is True)
        or (m.in_iface is not None and not m.in_invert)
        or (m.out_iface is not None and not m.out_invert)
    )

    def physdev(p: Packet, c: HookContext) -> bool:
        if not (c.bridged or c.physdev_in is not None or c.physdev_out is not None):
            return no_info
        if is_bridged is not None and (c.physdev_out is not None) != is_bridged:
            return False
        if is_in is not None and (c.physdev_in is not None) != is_in:
            return False
        if is_out is not None and (c.physdev_out is not None) != is_out:
            return False
        if in_test is not None and not in_test(c.physdev_in):
            return False
        return out_test is None or out_test(c.physdev_out)

    return physdev


# Actions, as small ints for a cheap dispatch in the walk. _DECIDE: a terminal
# target (ACCEPT, DROP, REJECT, DNAT/SNAT/MASQUERADE), whose Decision is built once.
_CONTINUE, _DECIDE, _RETURN, _JUMP, _GOTO, _MARK, _CONNMARK, _LOG, _NOTRACK = range(9)


@dataclass(eq=False)
class _CRule:
    rule: Rule
    preds: tuple[Pred, ...]
    action: int
    target_chain: _CChain | None = None
    mark: MarkTarget | None = None
    connmark: ConnmarkTarget | None = None
    log: LogTarget | None = None
    decision: Decision | None = None  # set for _DECIDE


@dataclass(eq=False)
class _CChain:
    table: str
    name: str
    policy: str | None
    rules: list[_CRule] = field(default_factory=list)
    all_rules: tuple[_CRule, ...] = ()
    # destination index: /32 destination -> the rules that may match it, in order
    by_dst: dict[int, tuple[_CRule, ...]] | None = None
    others: tuple[_CRule, ...] = ()

    def candidates(self, pkt: Packet) -> tuple[_CRule, ...]:
        if self.by_dst is None:
            return self.all_rules
        return self.by_dst.get(pkt.dst, self.others)


_INDEX_MIN_RULES = 16  # below this a linear walk is as fast


def _index(chain: _CChain) -> None:
    """Index rules with a plain `-d x/32` by x; rules without one stay in every list."""
    keys: list[int | None] = []
    for cr in chain.rules:
        key = None
        for m in cr.rule.matches:
            if isinstance(m, AddrMatch) and m.field == "dst" and not m.invert and m.net.prefixlen == 32:
                key = int(m.net.network_address)
                break
        keys.append(key)
    keyed = sum(k is not None for k in keys)
    if keyed < _INDEX_MIN_RULES:
        return
    others = [i for i, k in enumerate(keys) if k is None]
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        if k is not None:
            groups.setdefault(k, []).append(i)
    chain.by_dst = {k: tuple(chain.rules[i] for i in sorted(v + others)) for k, v in groups.items()}
    chain.others = tuple(chain.rules[i] for i in others)


def _compile(ruleset: Ruleset) -> dict[str, dict[str, _CChain]]:
    out: dict[str, dict[str, _CChain]] = {}
    for tname, table in ruleset.tables.items():
        chains = {n: _CChain(tname, n, c.policy) for n, c in table.chains.items()}
        for name, chain in table.chains.items():
            cchain = chains[name]
            for rule in chain.rules:
                cchain.rules.append(_compile_rule(rule, chains))
            cchain.all_rules = tuple(cchain.rules)
            _index(cchain)
        out[tname] = chains
    return out


def _compile_rule(rule: Rule, chains: dict[str, _CChain]) -> _CRule:
    preds: list[Pred] = []
    deferred: list[Pred] = []
    for i, m in enumerate(rule.matches):
        pred = _compile_match(m, rule, i)
        if pred is None:
            continue
        # A random draw has no side effect, so it can be taken last: the
        # chooser is then only asked when the rest of the rule matched.
        if isinstance(m, StatisticMatch) and m.mode == "random":
            deferred.append(pred)
        else:
            preds.append(pred)
    cr = _CRule(rule, tuple(preds + deferred), _CONTINUE)
    t = rule.target
    if t is None:
        pass
    elif isinstance(t, Verdict):
        if t.name == "RETURN":
            cr.action = _RETURN
        else:
            cr.action, cr.decision = _DECIDE, Decision("ACCEPT" if t.name == "ACCEPT" else "DROP", rule)
    elif isinstance(t, Jump):
        cr.action = _GOTO if t.goto else _JUMP
        cr.target_chain = chains[t.chain]
    elif isinstance(t, RejectTarget):
        cr.action, cr.decision = _DECIDE, Decision("REJECT", rule, reject_with=t.reject_with)
    elif isinstance(t, MarkTarget):
        cr.action, cr.mark = _MARK, t
    elif isinstance(t, ConnmarkTarget):
        cr.action, cr.connmark = _CONNMARK, t
    elif isinstance(t, NatTarget):
        nat = Nat(t.kind, None if t.ip is None else Addr.of(t.ip), t.port, t.flags)
        cr.action, cr.decision = _DECIDE, Decision("ACCEPT", rule, nat=nat)
    elif isinstance(t, LogTarget):
        cr.action, cr.log = _LOG, t
    elif isinstance(t, NotrackTarget):
        cr.action = _NOTRACK
    else:
        raise AssertionError(t)
    return cr


_compiled: weakref.WeakKeyDictionary[Ruleset, dict[str, dict[str, _CChain]]] = weakref.WeakKeyDictionary()


def prepare(ruleset: Ruleset) -> None:
    """Compile now rather than on the first packet (a Ruleset is treated as immutable)."""
    _tables(ruleset)


def _tables(ruleset: Ruleset) -> dict[str, dict[str, _CChain]]:
    tables = _compiled.get(ruleset)
    if tables is None:
        with without_gc():
            tables = _compile(ruleset)
        _compiled[ruleset] = tables
    return tables


CompiledTable = dict[str, _CChain]


def compiled_tables(ruleset: Ruleset) -> dict[str, CompiledTable]:
    """The ruleset's tables compiled for `traverse_compiled` (compiled once per Ruleset)."""
    return _tables(ruleset)


# --------------------------------------------------------------------------
# The walk


def _connmark(t: ConnmarkTarget, pkt: Packet) -> None:
    ct = _conn(pkt)
    if ct is None:
        return  # the kernel: no entry, nothing to do
    if t.mode == "set":
        ct.mark = (ct.mark & ~t.ctmask & _MASK32) ^ t.ctmark
    elif t.mode == "save":
        ct.mark = (ct.mark & ~t.ctmask & _MASK32) ^ (pkt.mark & t.nfmask)
    else:
        pkt.mark = (pkt.mark & ~t.nfmask & _MASK32) ^ (ct.mark & t.ctmask)


POLICY_ACCEPT = Decision("ACCEPT", None)
POLICY_DROP = Decision("DROP", None)


def traverse(ruleset: Ruleset, table: str, pkt: Packet, ctx: HookContext) -> Decision:
    """Walk built-in chain `ctx.hook` of `table` for `pkt`, as ipt_do_table does.

    MARK/CONNMARK modify the packet (and its conntrack entry) in place.
    """
    return traverse_compiled(_tables(ruleset).get(table), pkt, ctx)


def _step(ctx: HookContext, ch: _CChain, what: str, rule: Rule | None = None) -> None:
    assert ctx.trace is not None
    where = f"{ctx.netns} {ctx.hook} {ch.table}/{ch.name}:"
    ctx.trace.append(f"{where} {rule.text} => {what}" if rule is not None else f"{where} {what}")


def traverse_compiled(chains: CompiledTable | None, pkt: Packet, ctx: HookContext) -> Decision:
    """`traverse` on one table from `compiled_tables` (None: the table is not loaded)."""
    base = chains.get(ctx.hook) if chains is not None else None
    if base is None:
        return POLICY_ACCEPT
    trace = ctx.trace
    chain = base
    cand = chain.candidates(pkt)
    pos = 0
    stack: list[tuple[_CChain, tuple[_CRule, ...], int]] = []
    while True:
        if pos >= len(cand):
            if not stack:
                # end of the built-in chain, or of a chain reached by goto from it
                policy = POLICY_DROP if base.policy == "DROP" else POLICY_ACCEPT
                if trace is not None and (base.rules or policy is not POLICY_ACCEPT):
                    _step(ctx, chain, f"end of chain => policy {policy.verdict}")
                return policy
            if trace is not None:
                _step(ctx, chain, f"end of chain => return to {stack[-1][0].name}")
            chain, cand, pos = stack.pop()
            continue
        cr = cand[pos]
        pos += 1
        for pred in cr.preds:
            if not pred(pkt, ctx):
                break
        else:
            action = cr.action
            if action == _CONTINUE:
                continue
            if action in (_JUMP, _GOTO):
                target = cr.target_chain
                assert target is not None
                if trace is not None:
                    _step(ctx, chain, f"{'jump' if action == _JUMP else 'goto'} {target.name}", cr.rule)
                if action == _JUMP:
                    stack.append((chain, cand, pos))
                chain, cand, pos = target, target.candidates(pkt), 0
                continue
            if cr.decision is not None:  # _DECIDE
                if trace is not None:
                    d = cr.decision
                    what = str(d.nat) if d.nat else (f"REJECT {d.reject_with}" if d.verdict == "REJECT" else d.verdict)
                    _step(ctx, chain, what, cr.rule)
                return cr.decision
            if action == _RETURN:
                if trace is not None:
                    _step(ctx, chain, "return", cr.rule)
                if not stack:
                    policy = POLICY_DROP if base.policy == "DROP" else POLICY_ACCEPT
                    if trace is not None:
                        _step(ctx, chain, f"no caller to return to => policy {policy.verdict}")
                    return policy
                chain, cand, pos = stack.pop()
                continue
            if action == _MARK:
                assert cr.mark is not None
                before = pkt.mark
                pkt.mark = (pkt.mark & ~cr.mark.mask & _MASK32) ^ cr.mark.value
                if trace is not None:
                    _step(ctx, chain, f"mark {before:#x} -> {pkt.mark:#x}", cr.rule)
                continue
            if action == _CONNMARK:
                assert cr.connmark is not None
                ct = _conn(pkt)
                ct_before = ct.mark if ct is not None else None
                _connmark(cr.connmark, pkt)
                if trace is not None:
                    if ct is None:
                        _step(ctx, chain, "CONNMARK: no conntrack entry, nothing done", cr.rule)
                    else:
                        _step(ctx, chain, f"ct mark {ct_before:#x} -> {ct.mark:#x}, mark {pkt.mark:#x}", cr.rule)
                continue
            if action == _LOG:
                if trace is not None:
                    assert cr.log is not None
                    _step(ctx, chain, f"LOG {cr.log.prefix!r} {pkt.describe()}", cr.rule)
                continue
            if action == _NOTRACK:
                # xt_CT: a packet that has a conntrack entry already (looped back) keeps it.
                if pkt.ct is None:
                    pkt.ctstate = "UNTRACKED"
                if trace is not None:
                    _step(ctx, chain, f"notrack: {pkt.ctstate}", cr.rule)
                continue
            raise AssertionError(action)
