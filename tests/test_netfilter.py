"""Traversal semantics of the netfilter model, rule by rule as ip_tables does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import TypeVar

import pytest

from backends.sim import netfilter
from backends.sim.iptables import Ruleset, parse_iptables_save
from backends.sim.netfilter import (
    Chooser,
    Decision,
    HookContext,
    Nat,
    NetfilterState,
    traverse,
)
from backends.sim.packet import L4, Addr, Conn, CtState, Packet, Tuple5


def A(text: str) -> Addr:
    """An address as the simulator's packets carry it."""
    return Addr.of(IPv4Address(text))


# kube-proxy (iptables mode) for one Service with three endpoints, one without any.
KUBE_PROXY = (Path(__file__).parent / "rulesets" / "kube-proxy-dump.txt").read_text()


def pkt(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    proto: L4 = "tcp",
    sport: int = 40000,
    dport: int = 80,
    **kw: object,
) -> Packet:
    p = Packet(A(src), A(dst), proto, sport, dport)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def tracked(p: Packet, state: CtState = "NEW", status: set[str] | None = None, reply: bool = False) -> Packet:
    t = Tuple5(p.src, p.dst, p.proto, p.sport, p.dport)
    if reply:
        t = t.reversed()
    p.ct = Conn(t, t.reversed(), status or set())
    p.ctstate = state
    p.ct_reply = reply
    return p


class Always:
    """A chooser that answers the same every time and records what it was asked."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.asked: list[tuple[float, str]] = []

    def choose(self, probability: float, where: str) -> bool:
        self.asked.append((probability, where))
        return self.answer


def no_types(addr: Addr, iface: str | None) -> frozenset[str]:
    return frozenset({"UNICAST"})


def ctx(
    hook: str,
    *,
    in_dev: str | None = None,
    out_dev: str | None = None,
    chooser: Chooser | None = None,
    state: NetfilterState | None = None,
    addr_type: Callable[[Addr, str | None], frozenset[str]] = no_types,
    trace: list[str] | None = None,
    **kw: object,
) -> HookContext:
    c = HookContext(
        netns="node-1",
        hook=hook,
        in_dev=in_dev,
        out_dev=out_dev,
        addr_type=addr_type,
        chooser=chooser or Always(),
        state=state or NetfilterState(),
        trace=trace,
    )
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def filter_rules(body: str, chains: str = "", policy: str = "ACCEPT") -> Ruleset:
    return parse_iptables_save(
        f"*filter\n:INPUT {policy} [0:0]\n:FORWARD {policy} [0:0]\n:OUTPUT {policy} [0:0]\n{chains}{body}COMMIT\n"
    )


def run(rs: Ruleset, p: Packet, hook: str = "INPUT", table: str = "filter", **kw: object) -> Decision:
    return traverse(rs, table, p, ctx(hook, **kw))  # type: ignore[arg-type]


def deciding_line(d: Decision) -> str | None:
    return d.rule.text if d.rule is not None else None


# -- walking order -----------------------------------------------------------


def test_first_matching_rule_decides_in_order() -> None:
    rs = filter_rules("-A INPUT -s 10.0.0.9 -j DROP\n-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT\n-A INPUT -j DROP\n")
    d = run(rs, pkt())
    assert d.verdict == "ACCEPT" and deciding_line(d) == "-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT"
    assert run(rs, pkt(src="10.0.0.9")).verdict == "DROP"
    d = run(rs, pkt(dport=81))
    assert d.verdict == "DROP" and deciding_line(d) == "-A INPUT -j DROP"


def test_policy_no_table_and_no_chain() -> None:
    rs = filter_rules("-A INPUT -s 10.9.9.9 -j ACCEPT\n", policy="DROP")
    assert run(rs, pkt()) == Decision("DROP", None)
    assert run(rs, pkt(src="10.9.9.9")).verdict == "ACCEPT"
    assert run(rs, pkt(), table="nat", hook="PREROUTING") == Decision("ACCEPT", None)
    nat_only = parse_iptables_save("*nat\n-A PREROUTING -j DNAT --to-destination 1.2.3.4\nCOMMIT\n")
    assert run(nat_only, pkt(), table="nat", hook="FORWARD") == Decision("ACCEPT", None)


def test_counting_rule_without_target_continues() -> None:
    rs = filter_rules("-A INPUT -s 10.0.0.1\n-A INPUT -j DROP\n")
    assert deciding_line(run(rs, pkt())) == "-A INPUT -j DROP"


def test_jump_and_return() -> None:
    rs = filter_rules(
        "-A INPUT -j SUB\n"
        "-A INPUT -p tcp -j ACCEPT\n"
        "-A INPUT -j DROP\n"
        "-A SUB -s 10.0.0.5 -j RETURN\n"
        "-A SUB -s 10.0.0.0/24 -j DROP\n",
        chains=":SUB - [0:0]\n",
    )
    # RETURN in SUB resumes after the jump
    assert deciding_line(run(rs, pkt(src="10.0.0.5"))) == "-A INPUT -p tcp -j ACCEPT"
    assert deciding_line(run(rs, pkt(src="10.0.0.6"))) == "-A SUB -s 10.0.0.0/24 -j DROP"
    # falling off the end of SUB returns too
    assert deciding_line(run(rs, pkt(src="10.0.1.1", proto="udp"))) == "-A INPUT -j DROP"


def test_goto_returns_to_the_caller_of_the_chain_that_did_the_goto() -> None:
    rs = filter_rules(
        "-A INPUT -j OUTER\n"
        "-A INPUT -s 10.0.0.1 -j ACCEPT\n"
        "-A OUTER -g INNER\n"
        "-A OUTER -j DROP\n"
        "-A INNER -p udp -j DROP\n"
        "-A INNER -j RETURN\n",
        chains=":INNER - [0:0]\n:OUTER - [0:0]\n",
        policy="DROP",
    )
    # RETURN from INNER skips the rest of OUTER (goto) and lands back in INPUT
    assert deciding_line(run(rs, pkt())) == "-A INPUT -s 10.0.0.1 -j ACCEPT"
    assert deciding_line(run(rs, pkt(proto="udp"))) == "-A INNER -p udp -j DROP"


def test_goto_from_builtin_chain_then_end_is_the_policy() -> None:
    rs = filter_rules(
        "-A INPUT -g SUB\n-A INPUT -j ACCEPT\n-A SUB -s 10.9.9.9 -j ACCEPT\n",
        chains=":SUB - [0:0]\n",
        policy="DROP",
    )
    assert run(rs, pkt()) == Decision("DROP", None)


def test_return_in_builtin_chain_is_the_policy() -> None:
    rs = filter_rules("-A INPUT -j RETURN\n-A INPUT -j ACCEPT\n", policy="DROP")
    assert run(rs, pkt()) == Decision("DROP", None)


# -- generic matches and negation --------------------------------------------


def test_negation_and_interfaces() -> None:
    rs = filter_rules(
        "-A FORWARD ! -s 10.244.0.0/16 -j DROP\n"
        "-A FORWARD -i cni+ ! -o cni0 -j ACCEPT\n"
        "-A FORWARD -p tcp -m tcp ! --dport 80 -j DROP\n"
        "-A FORWARD -j ACCEPT\n"
    )
    assert run(rs, pkt(src="10.0.0.1"), "FORWARD").verdict == "DROP"
    accept_by_iface = run(rs, pkt(src="10.244.1.2", dport=22), "FORWARD", in_dev="cni0", out_dev="eth0")
    assert deciding_line(accept_by_iface) == "-A FORWARD -i cni+ ! -o cni0 -j ACCEPT"
    hairpin = run(rs, pkt(src="10.244.1.2", dport=22), "FORWARD", in_dev="cni0", out_dev="cni0")
    assert deciding_line(hairpin) == "-A FORWARD -p tcp -m tcp ! --dport 80 -j DROP"
    assert deciding_line(run(rs, pkt(src="10.244.1.2"), "FORWARD", in_dev="eth0")) == "-A FORWARD -j ACCEPT"


def test_interface_wildcard_matches_without_a_device_like_the_kernel() -> None:
    # The kernel compares against an empty name when there is no device:
    # `-i +` matches everything, `! -i eth0` matches locally generated packets.
    rs = parse_iptables_save(
        "*mangle\n:C - [0:0]\n-A OUTPUT -j C\n"
        "-A C -i + -j MARK --set-mark 1\n"
        "-A C ! -i eth0 -j MARK --or-mark 2\n"
        "COMMIT\n"
    )
    p = pkt()
    traverse(rs, "mangle", p, ctx("OUTPUT"))
    assert p.mark == 3


def test_protocol_match_on_other_protocols_is_false() -> None:
    rs = filter_rules("-A INPUT -p tcp -m tcp --sport 0:65535 -j DROP\n-A INPUT ! -p udp -j REJECT\n")
    assert run(rs, pkt(proto="udp")) == Decision("ACCEPT", None)
    d = run(rs, pkt(proto="icmp"))
    assert d.verdict == "REJECT" and d.reject_with == "icmp-port-unreachable"


def test_iprange_and_state() -> None:
    rs = filter_rules(
        "-A INPUT -m iprange --src-range 10.0.0.10-10.0.0.20 -j DROP\n"
        "-A INPUT -m state --state ESTABLISHED,RELATED -j ACCEPT\n"
        "-A INPUT -m iprange ! --dst-range 10.0.0.2 -j DROP\n",
        policy="DROP",
    )
    assert deciding_line(run(rs, pkt(src="10.0.0.15"))) == "-A INPUT -m iprange --src-range 10.0.0.10-10.0.0.20 -j DROP"
    assert run(rs, tracked(pkt(src="10.0.0.21"), "ESTABLISHED")).verdict == "ACCEPT"
    assert deciding_line(run(rs, pkt(dst="10.0.0.3"))) == "-A INPUT -m iprange ! --dst-range 10.0.0.2 -j DROP"
    assert run(rs, pkt()) == Decision("DROP", None)


# -- marks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "before", "after"),
    [
        ("--set-xmark 0x4000/0x4000", 0x1, 0x4001),
        ("--set-xmark 0x4000/0x0", 0x4001, 0x0001),  # what --xor-mark 0x4000 saves as
        ("--xor-mark 0x4000", 0x4000, 0x0),
        ("--or-mark 0x4000", 0x0F00, 0x4F00),
        ("--and-mark 0xff", 0x12345, 0x45),
        ("--set-mark 0x7", 0xFFFF, 0x7),
        ("--set-mark 0x10/0xf0", 0x1FF, 0x11F),
        ("--set-xmark 0x10/0xf0", 0x1FF, 0x11F),
        ("--set-xmark 0x3/0x1", 0x2, 0x1),  # xmark: clear the mask, then XOR (even outside it)
    ],
)
def test_mark_arithmetic(target: str, before: int, after: int) -> None:
    rs = parse_iptables_save(f"*mangle\n-A PREROUTING -j MARK {target}\nCOMMIT\n")
    p = pkt(mark=before)
    assert traverse(rs, "mangle", p, ctx("PREROUTING")) == Decision("ACCEPT", None)
    assert p.mark == after


def test_mark_match_with_mask() -> None:
    rs = filter_rules(
        "-A INPUT -m mark --mark 0x4000/0x4000 -j ACCEPT\n-A INPUT -m mark --mark 0x1 -j REJECT\n", policy="DROP"
    )
    assert run(rs, pkt(mark=0x4001)).verdict == "ACCEPT"
    assert run(rs, pkt(mark=0x1)).verdict == "REJECT"
    assert run(rs, pkt(mark=0x3)).verdict == "DROP"


def test_connmark_save_and_restore() -> None:
    rs = parse_iptables_save(
        "*mangle\n"
        "-A PREROUTING -j CONNMARK --restore-mark --nfmask 0xff --ctmask 0xf\n"
        "-A PREROUTING -m mark --mark 0x0 -j MARK --set-mark 0x20\n"
        "-A PREROUTING -j CONNMARK --save-mark --mask 0xf0\n"
        "COMMIT\n"
    )
    p = tracked(pkt(mark=0x300))
    assert p.ct is not None
    p.ct.mark = 0xAB
    traverse(rs, "mangle", p, ctx("PREROUTING"))
    # restore: mark = (0x300 & ~0xff) ^ (0xab & 0xf) = 0x30b; not 0, so no MARK;
    # save: ct = (0xab & ~0xf0) ^ (0x30b & 0xf0) = 0x0b
    assert p.mark == 0x30B
    assert p.ct.mark == 0x0B
    set_rs = parse_iptables_save("*mangle\n-A PREROUTING -j CONNMARK --set-xmark 0x4/0x6\nCOMMIT\n")
    q = tracked(pkt())
    assert q.ct is not None
    q.ct.mark = 0x3
    traverse(set_rs, "mangle", q, ctx("PREROUTING"))
    assert q.ct.mark == 0x5


def test_connmark_without_conntrack_entry_does_nothing() -> None:
    rs = parse_iptables_save(
        "*mangle\n-A PREROUTING -j CONNMARK --restore-mark\n-A PREROUTING -j CONNMARK --set-mark 9\nCOMMIT\n"
    )
    p = pkt(mark=0x5)
    traverse(rs, "mangle", p, ctx("PREROUTING"))
    assert p.mark == 0x5 and p.ct is None
    # INVALID packets have no entry in the kernel's eyes either
    q = tracked(pkt(), "INVALID")
    traverse(rs, "mangle", q, ctx("PREROUTING"))
    assert q.ct is not None and q.ct.mark == 0


# -- conntrack ---------------------------------------------------------------


def test_conntrack_states_and_virtual_nat_states() -> None:
    rs = filter_rules(
        "-A FORWARD -m conntrack --ctstate INVALID -j DROP\n"
        "-A FORWARD -m conntrack --ctstate DNAT -j ACCEPT\n"
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        "-A FORWARD -m conntrack ! --ctstate NEW -j REJECT\n",
        policy="DROP",
    )
    assert run(rs, tracked(pkt(), "INVALID"), "FORWARD").verdict == "DROP"
    assert run(rs, tracked(pkt(), "NEW", {"DNAT"}), "FORWARD").verdict == "ACCEPT"
    assert run(rs, tracked(pkt(), "ESTABLISHED", reply=True), "FORWARD").verdict == "ACCEPT"
    assert run(rs, tracked(pkt(), "NEW"), "FORWARD") == Decision("DROP", None)
    assert run(rs, pkt(), "FORWARD").verdict == "DROP"  # not tracked yet: INVALID, as conntrack_mt says


def test_conntrack_entry_fields_direction_and_status() -> None:
    rs = filter_rules(
        "-A INPUT -m conntrack --ctorigdst 10.96.0.10 --ctorigdstport 80 --ctdir ORIGINAL -j ACCEPT\n"
        "-A INPUT -m conntrack --ctstatus ASSURED --ctreplsrc 10.0.0.0/8 --ctdir REPLY -j ACCEPT\n"
        "-A INPUT -m conntrack --ctproto udp -j REJECT\n",
        policy="DROP",
    )
    p = tracked(pkt(dst="10.244.1.11", dport=8080))
    assert p.ct is not None
    p.ct.original = Tuple5(p.src, A("10.96.0.10"), "tcp", p.sport, 80)
    assert run(rs, p).verdict == "ACCEPT"
    p.ct_reply = True  # same entry, reply direction: the first rule no longer matches
    assert run(rs, p) == Decision("DROP", None)
    p.ct.status = {"ASSURED"}
    assert run(rs, p).verdict == "ACCEPT"
    assert run(rs, tracked(pkt(proto="udp"))).verdict == "REJECT"


def test_conntrack_without_entry_matches_only_through_ctstate() -> None:
    rs = filter_rules(
        "-A INPUT -m conntrack --ctorigsrc 0.0.0.0/0 -j DROP\n"
        "-A INPUT -m conntrack --ctstate INVALID --ctorigsrc 10.9.9.9 -j ACCEPT\n",
        policy="DROP",
    )
    # the kernel's conntrack_mt returns "state was tested" for packets without an entry
    d = run(rs, pkt())
    assert d.verdict == "ACCEPT" and d.rule is not None and "INVALID" in d.rule.text


# -- addrtype ----------------------------------------------------------------


def test_addrtype_with_fake_lookup() -> None:
    asked: list[tuple[Addr, str | None]] = []

    def types(addr: Addr, iface: str | None) -> frozenset[str]:
        asked.append((addr, iface))
        return frozenset({"LOCAL"}) if addr == A("192.168.1.10") else frozenset({"UNICAST"})

    rs = filter_rules(
        "-A INPUT -m addrtype --dst-type LOCAL --limit-iface-in -j ACCEPT\n"
        "-A INPUT -m addrtype ! --src-type LOCAL,BROADCAST -j REJECT\n",
        policy="DROP",
    )
    assert run(rs, pkt(dst="192.168.1.10"), in_dev="eth0", addr_type=types).verdict == "ACCEPT"
    assert asked[0] == (A("192.168.1.10"), "eth0")
    asked.clear()
    assert run(rs, pkt(dst="10.1.1.1"), in_dev="eth0", addr_type=types).verdict == "REJECT"
    assert asked[1] == (A("10.0.0.1"), None)  # no limit: any interface
    assert run(rs, pkt(src="192.168.1.10", dst="10.1.1.1"), addr_type=types) == Decision("DROP", None)


# -- statistic ---------------------------------------------------------------


@dataclass
class Replay:
    """Follows a given prefix of draws, then answers True; records every draw."""

    prefix: list[bool]
    draws: list[tuple[float, bool]] = field(default_factory=list)

    def choose(self, probability: float, where: str) -> bool:
        i = len(self.draws)
        answer = self.prefix[i] if i < len(self.prefix) else True
        self.draws.append((probability, answer))
        return answer


T = TypeVar("T")


def enumerate_branches(run_one: Callable[[Chooser], T]) -> dict[T, float]:
    """Every outcome of all random draws, with its exact probability."""
    out: dict[T, float] = {}
    pending: list[list[bool]] = [[]]
    while pending:
        prefix = pending.pop()
        chooser = Replay(prefix)
        outcome = run_one(chooser)
        for i in range(len(prefix), len(chooser.draws)):
            pending.append([a for _, a in chooser.draws[:i]] + [False])
        prob = 1.0
        for p, answer in chooser.draws:
            prob *= p if answer else 1.0 - p
        out[outcome] = out.get(outcome, 0.0) + prob
    return out


def test_statistic_enumeration_gives_each_endpoint_a_third() -> None:
    rs = parse_iptables_save(KUBE_PROXY)

    def one(chooser: Chooser) -> str:
        d = traverse(rs, "nat", pkt(src="10.244.1.5", dst="10.96.0.10"), ctx("PREROUTING", chooser=chooser))
        assert d.nat is not None
        return str(d.nat.ip)

    got = enumerate_branches(one)
    assert set(got) == {"10.244.1.11", "10.244.1.12", "10.244.2.13"}
    for share in got.values():
        assert share == pytest.approx(1 / 3, abs=1e-9)
    assert sum(got.values()) == pytest.approx(1.0)


def test_chooser_is_asked_only_when_the_rest_of_the_rule_matched() -> None:
    rs = filter_rules(
        "-A INPUT -m statistic --mode random --probability 0.25 -m mark --mark 0x1 -j DROP\n"
        "-A INPUT -m statistic --mode random ! --probability 0.5 -j ACCEPT\n",
        policy="DROP",
    )
    chooser = Always(True)
    d = run(rs, pkt(), chooser=chooser)
    assert len(chooser.asked) == 1 and chooser.asked[0][0] == 0.5
    assert "--probability 0.5" in chooser.asked[0][1]
    assert d == Decision("DROP", None)  # the draw said yes, and `!` inverts it
    chooser = Always(True)
    assert run(rs, pkt(mark=1), chooser=chooser).verdict == "DROP"
    assert [p for p, _ in chooser.asked] == [0.25]


def test_statistic_nth_counts_per_rule_and_per_namespace() -> None:
    rs = filter_rules(
        "-A INPUT -p udp -m statistic --mode nth --every 3 --packet 0 -j DROP\n"
        "-A INPUT -m statistic --mode nth --every 2 --packet 1 -j REJECT\n"
    )
    # A chooser that always says yes places each counter as the load left it:
    # the first match is on packet number --packet, counted from 0.
    st = NetfilterState()
    tcp = [run(rs, pkt(), state=st).verdict for _ in range(4)]
    assert tcp == ["ACCEPT", "REJECT", "ACCEPT", "REJECT"]
    # the udp rule did not count the tcp packets (they failed its -p first);
    # the DROPped udp packet never reached the second rule
    udp = [run(rs, pkt(proto="udp"), state=st).verdict for _ in range(4)]
    assert udp == ["DROP", "ACCEPT", "REJECT", "DROP"]
    other = NetfilterState()
    assert run(rs, pkt(), state=other).verdict == "ACCEPT"


def test_statistic_nth_phase_is_drawn_once_per_path_then_counted() -> None:
    rs = filter_rules("-A INPUT -m statistic --mode nth --every 2 --packet 0 -j DROP\n")

    def two_packets(chooser: Chooser) -> tuple[str, str]:
        st = NetfilterState()
        first = run(rs, pkt(), state=st, chooser=chooser).verdict
        return first, run(rs, pkt(), state=st, chooser=chooser).verdict

    # a probe cannot know where the shared counter stands, so both places are
    # possible, but within one path the second packet follows the first
    assert enumerate_branches(two_packets) == {("DROP", "ACCEPT"): 0.5, ("ACCEPT", "DROP"): 0.5}


def test_statistic_nth_round_robin_reaches_every_endpoint_equally() -> None:
    rs = parse_iptables_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n"
        "-A PREROUTING -m statistic --mode nth --every 3 --packet 0 -j DNAT --to-destination 10.1.0.1\n"
        "-A PREROUTING -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination 10.1.0.2\n"
        "-A PREROUTING -j DNAT --to-destination 10.1.0.3\n"
        "COMMIT\n"
    )

    def one(chooser: Chooser) -> str:
        d = traverse(rs, "nat", pkt(), ctx("PREROUTING", chooser=chooser))
        assert d.nat is not None
        return str(d.nat.ip)

    got = enumerate_branches(one)
    assert got.keys() == {"10.1.0.1", "10.1.0.2", "10.1.0.3"}
    assert all(share == pytest.approx(1 / 3) for share in got.values())


# -- recent ------------------------------------------------------------------


def test_recent_set_rcheck_update_remove() -> None:
    rs = filter_rules(
        "-A INPUT -p tcp -m tcp --dport 22 -m recent --name ssh --rcheck --seconds 60 --hitcount 3 -j DROP\n"
        "-A INPUT -p tcp -m tcp --dport 22 -m recent --name ssh --set -j ACCEPT\n"
        "-A INPUT -p tcp -m tcp --dport 23 -m recent --name ssh --remove -j ACCEPT\n"
        "-A INPUT -p tcp -m tcp --dport 24 -m recent --name ssh ! --rcheck -j REJECT\n"
    )
    st = NetfilterState()

    def at(now: float, dport: int = 22, src: str = "10.0.0.1") -> str:
        return run(rs, pkt(src=src, dport=dport), state=st, now=now).verdict

    assert [at(0), at(1), at(2)] == ["ACCEPT", "ACCEPT", "ACCEPT"]
    assert at(3) == "DROP"  # three hits within 60 s
    assert at(3, src="10.0.0.2") == "ACCEPT"  # per address
    assert at(61.5) == "ACCEPT"  # stamps at 0 and 1 are too old now
    assert at(24, dport=24) == "ACCEPT"  # `! --rcheck` on a listed address: no match
    assert at(70, dport=23) == "ACCEPT"  # removed
    assert at(71, dport=24) == "REJECT"  # not listed any more
    assert st.recent["ssh"].keys() == {int(A("10.0.0.2"))}


def test_recent_update_refreshes_only_on_match() -> None:
    rs = filter_rules(
        "-A INPUT -m recent --name b --update --seconds 10 -j DROP\n"
        "-A INPUT -s 10.0.0.1 -m recent --name b --set --rdest --mask 255.255.255.0 -j ACCEPT\n"
    )
    st = NetfilterState()
    assert run(rs, pkt(), state=st, now=0).verdict == "ACCEPT"
    # --set with --rdest --mask listed 10.0.0.0; --update looks at the source 10.0.0.1
    assert run(rs, pkt(), state=st, now=1).verdict == "ACCEPT"
    assert run(rs, pkt(src="10.0.0.7"), state=st, now=5).verdict == "ACCEPT"
    st.recent["b"][int(A("10.0.0.7"))] = [5.0]
    assert run(rs, pkt(src="10.0.0.7"), state=st, now=14).verdict == "DROP"  # and refreshed to 14
    assert run(rs, pkt(src="10.0.0.7"), state=st, now=23).verdict == "DROP"
    assert run(rs, pkt(src="10.0.0.7"), state=st, now=40).verdict == "ACCEPT"


def test_recent_reap_drops_the_stale_least_recent_address() -> None:
    rs = filter_rules(
        "-A INPUT -p udp -m recent --name r --set -j ACCEPT\n"
        "-A INPUT -m recent --name r --rcheck --seconds 10 --reap -j DROP\n"
    )
    st = NetfilterState()
    run(rs, pkt(src="10.0.0.1", proto="udp"), state=st, now=0)
    run(rs, pkt(src="10.0.0.2", proto="udp"), state=st, now=20)
    assert run(rs, pkt(src="10.0.0.2"), state=st, now=25).verdict == "DROP"
    # 10.0.0.1 (least recently seen, last at 0) was older than 25 - 10: reaped
    assert list(st.recent["r"]) == [int(A("10.0.0.2"))]
    # a non-invertible option takes "!" as its value
    comment = filter_rules('-A INPUT -m comment --comment "!" -j DROP\n').tables["filter"].chains["INPUT"]
    assert comment.rules[0].comment == "!"


# -- ports, flags, icmp, physdev ---------------------------------------------


def test_multiport_ranges() -> None:
    rs = filter_rules(
        "-A INPUT -p tcp -m multiport --dports 80,443,8000:8080 -j ACCEPT\n"
        "-A INPUT -p udp -m multiport --sports 53,5353 -j ACCEPT\n"
        "-A INPUT -p udp -m multiport ! --ports 1000:2000 -j REJECT\n",
        policy="DROP",
    )
    assert run(rs, pkt(dport=8050)).verdict == "ACCEPT"
    assert run(rs, pkt(dport=8000)).verdict == "ACCEPT"
    assert run(rs, pkt(dport=8081)).verdict == "DROP"
    assert run(rs, pkt(proto="udp", sport=5353, dport=1)).verdict == "ACCEPT"
    assert run(rs, pkt(proto="udp", sport=9, dport=9)).verdict == "REJECT"
    assert run(rs, pkt(proto="udp", sport=9, dport=1500)).verdict == "DROP"
    assert run(rs, pkt(proto="udp", sport=1500, dport=9)).verdict == "DROP"


def test_tcp_flags() -> None:
    rs = filter_rules(
        "-A INPUT -p tcp -m tcp --syn -j ACCEPT\n"
        "-A INPUT -p tcp -m tcp --tcp-flags ALL NONE -j DROP\n"
        "-A INPUT -p tcp -m tcp ! --tcp-flags RST RST -j REJECT --reject-with tcp-reset\n"
    )
    assert run(rs, pkt(tcp_flags=frozenset({"SYN"}))).verdict == "ACCEPT"
    assert run(rs, pkt(tcp_flags=frozenset({"SYN", "PSH"}))).verdict == "ACCEPT"
    syn_ack = run(rs, pkt(tcp_flags=frozenset({"SYN", "ACK"})))
    assert syn_ack.verdict == "REJECT" and syn_ack.reject_with == "tcp-reset"
    assert run(rs, pkt(tcp_flags=frozenset())).verdict == "DROP"
    assert run(rs, pkt(tcp_flags=frozenset({"RST", "ACK"}))) == Decision("ACCEPT", None)


def test_icmp_types() -> None:
    rs = filter_rules(
        "-A INPUT -p icmp -m icmp --icmp-type echo-request -j ACCEPT\n"
        "-A INPUT -p icmp -m icmp --icmp-type 3/3 -j REJECT --reject-with icmp-host-prohibited\n"
        "-A INPUT -p icmp -m icmp --icmp-type destination-unreachable -j DROP\n"
        "-A INPUT -p icmp -m icmp ! --icmp-type any -j ACCEPT\n",
        policy="DROP",
    )

    def icmp(t: int, c: int = 0) -> Packet:
        return pkt(proto="icmp", sport=7, dport=7, icmp_type=t, icmp_code=c)

    assert run(rs, icmp(8)).verdict == "ACCEPT"
    d = run(rs, icmp(3, 3))
    assert d.verdict == "REJECT" and d.reject_with == "icmp-host-prohibited"
    assert deciding_line(run(rs, icmp(3, 1))) == "-A INPUT -p icmp -m icmp --icmp-type destination-unreachable -j DROP"
    assert run(rs, icmp(0)) == Decision("DROP", None)


def test_physdev() -> None:
    rs = filter_rules(
        "-A FORWARD -m physdev --physdev-is-bridged --physdev-in vethA --physdev-out vethB -j DROP\n"
        "-A FORWARD -m physdev --physdev-is-bridged -j ACCEPT\n"
        "-A FORWARD -m physdev ! --physdev-is-in -j REJECT\n",
        policy="DROP",
    )
    assert run(rs, pkt(), "FORWARD", bridged=True, physdev_in="vethA", physdev_out="vethB").verdict == "DROP"
    assert run(rs, pkt(), "FORWARD", bridged=True, physdev_in="vethA", physdev_out="vethC").verdict == "ACCEPT"
    # routed packet without bridge info: only negated tests can match
    assert run(rs, pkt(), "FORWARD").verdict == "REJECT"
    # entered through a bridge port, then routed: bridge info with no out port
    assert run(rs, pkt(), "FORWARD", bridged=True, physdev_in="vethA") == Decision("DROP", None)


# -- NAT and the whole kube-proxy ruleset -------------------------------------


def test_kube_proxy_cluster_ip_from_outside_pod_cidr_is_marked_and_dnatted() -> None:
    rs = parse_iptables_save(KUBE_PROXY)
    p = pkt(src="192.168.1.10", dst="10.96.0.10")
    trace: list[str] = []
    d = traverse(rs, "nat", p, ctx("OUTPUT", chooser=Always(True), trace=trace))
    assert d.verdict == "ACCEPT"
    assert d.nat == Nat("DNAT", A("10.244.1.11"), 8080)
    assert d.rule is not None and d.rule.chain == "KUBE-SEP-AAA"
    assert p.mark == 0x4000  # KUBE-MARK-MASQ
    assert trace[-1].endswith("=> DNAT 10.244.1.11:8080")
    assert any("KUBE-SVC-WEB" in line and "=> jump KUBE-SEP-AAA" in line for line in trace)
    # masquerade in POSTROUTING clears the bit it uses
    out = traverse(rs, "nat", p, ctx("POSTROUTING", out_dev="eth0"))
    assert out.nat == Nat("MASQUERADE", None, None, frozenset({"random-fully"}))
    assert p.mark == 0


def test_kube_proxy_unmarked_traffic_returns_to_policy() -> None:
    rs = parse_iptables_save(KUBE_PROXY)
    d = traverse(rs, "nat", pkt(src="10.244.1.5"), ctx("POSTROUTING"))
    assert d == Decision("ACCEPT", None)


def test_kube_proxy_nodeport_via_addrtype() -> None:
    rs = parse_iptables_save(KUBE_PROXY)

    def types(addr: Addr, iface: str | None) -> frozenset[str]:
        return frozenset({"LOCAL"}) if addr == A("192.168.1.2") else frozenset({"UNICAST"})

    p = pkt(src="192.168.1.50", dst="192.168.1.2", dport=30080)
    d = traverse(rs, "nat", p, ctx("PREROUTING", in_dev="eth0", addr_type=types, chooser=Always(False)))
    assert d.nat == Nat("DNAT", A("10.244.2.13"), 8080)
    assert p.mark == 0x4000
    assert traverse(rs, "nat", pkt(dst="10.1.1.1", dport=30080), ctx("PREROUTING", addr_type=types)).nat is None


def test_kube_proxy_filter_reject_and_invalid_drop() -> None:
    rs = parse_iptables_save(KUBE_PROXY)
    trace: list[str] = []
    d = traverse(rs, "filter", tracked(pkt(dst="10.96.0.50")), ctx("OUTPUT", out_dev="eth0", trace=trace))
    assert d.verdict == "REJECT" and d.reject_with == "icmp-port-unreachable"
    assert d.rule is not None and d.rule.comment == "default/noeps:http has no endpoints"
    assert trace[-1] == f"node-1 OUTPUT filter/KUBE-SERVICES: {d.rule.text} => REJECT icmp-port-unreachable"
    inv = traverse(rs, "filter", tracked(pkt(), "INVALID"), ctx("FORWARD", in_dev="a", out_dev="b"))
    assert inv.verdict == "DROP" and inv.rule is not None and inv.rule.chain == "KUBE-FORWARD"
    marked = traverse(rs, "filter", tracked(pkt(mark=0x4000)), ctx("FORWARD", in_dev="a", out_dev="b"))
    assert marked.verdict == "ACCEPT"
    # FORWARD's policy is DROP in the dump
    assert traverse(rs, "filter", tracked(pkt()), ctx("FORWARD", in_dev="a", out_dev="b")) == Decision("DROP", None)


def test_snat_and_traces() -> None:
    rs = parse_iptables_save(
        "*nat\n:POSTROUTING ACCEPT [0:0]\n:SUB - [0:0]\n"
        "-A POSTROUTING -o eth0 -j SUB\n"
        "-A SUB -d 10.0.0.0/8 -j RETURN\n"
        "-A SUB -p udp -j SNAT --to-source 1.2.3.4:999\n"
        '-A SUB -j LOG --log-prefix "nat: "\n'
        "COMMIT\n"
    )
    trace: list[str] = []
    d = traverse(rs, "nat", pkt(proto="udp", dst="8.8.8.8"), ctx("POSTROUTING", out_dev="eth0", trace=trace))
    assert d.nat == Nat("SNAT", A("1.2.3.4"), 999)
    assert trace == [
        "node-1 POSTROUTING nat/POSTROUTING: -A POSTROUTING -o eth0 -j SUB => jump SUB",
        "node-1 POSTROUTING nat/SUB: -A SUB -p udp -j SNAT --to-source 1.2.3.4:999 => SNAT 1.2.3.4:999",
    ]
    trace.clear()
    d = traverse(rs, "nat", pkt(dst="8.8.8.8"), ctx("POSTROUTING", out_dev="eth0", trace=trace))
    assert d == Decision("ACCEPT", None)
    assert any("LOG 'nat: '" in line for line in trace)
    assert trace[-2] == "node-1 POSTROUTING nat/SUB: end of chain => return to POSTROUTING"
    assert trace[-1] == "node-1 POSTROUTING nat/POSTROUTING: end of chain => policy ACCEPT"
    # no lines for rules that did not match
    assert not any("RETURN" in line for line in trace)


# -- the destination index must not change anything -------------------------


def big_services(n: int) -> str:
    lines = ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-MARK - [0:0]"]
    lines += [f":KUBE-SVC-{i} - [0:0]" for i in range(n)]
    lines.append("-A PREROUTING -j KUBE-SERVICES")
    lines.append("-A KUBE-MARK -j MARK --or-mark 0x1")
    for i in range(n):
        ip = f"10.96.{i // 200}.{i % 200 + 1}"
        lines.append(f"-A KUBE-SERVICES -d {ip}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}")
        if i == n // 2:
            # an unkeyed rule in the middle, with a side effect and a decision
            lines.append("-A KUBE-SERVICES -p udp -j KUBE-MARK")
            lines.append("-A KUBE-SERVICES -s 10.66.0.0/16 -j DNAT --to-destination 10.0.0.66")
        lines.append(f"-A KUBE-SVC-{i} -j DNAT --to-destination 10.244.{i // 200}.{i % 200 + 1}")
    lines.append(f"-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-{n - 1}")
    lines.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j DNAT --to-destination 10.0.0.99")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def test_destination_index_gives_the_linear_walks_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    text = big_services(60)
    indexed = parse_iptables_save(text)
    netfilter.prepare(indexed)
    monkeypatch.setattr(netfilter, "_INDEX_MIN_RULES", 10**9)
    linear = parse_iptables_save(text)
    netfilter.prepare(linear)

    def types(addr: Addr, iface: str | None) -> frozenset[str]:
        return frozenset({"LOCAL"}) if addr == A("192.168.0.1") else frozenset({"UNICAST"})

    probes = []
    for dst in ["10.96.0.1", "10.96.0.31", "10.96.0.45", "10.96.0.60", "10.96.1.1", "192.168.0.1", "1.1.1.1"]:
        for src in ["10.0.0.1", "10.66.1.1"]:
            for proto, dport in (("tcp", 80), ("tcp", 443), ("udp", 80)):
                probes.append((src, dst, proto, dport))
    for src, dst, proto, dport in probes:
        results = []
        for rs in (indexed, linear):
            p = pkt(src=src, dst=dst, proto=proto, dport=dport)  # type: ignore[arg-type]
            trace: list[str] = []
            d = traverse(rs, "nat", p, ctx("PREROUTING", addr_type=types, trace=trace))
            results.append((d.verdict, d.nat, d.rule.text if d.rule else None, p.mark, trace))
        assert results[0] == results[1], (src, dst, proto, dport)
    # the index is really in use for the big chain
    chains = netfilter._tables(indexed)["nat"]
    assert chains["KUBE-SERVICES"].by_dst is not None
    assert netfilter._tables(linear)["nat"]["KUBE-SERVICES"].by_dst is None
