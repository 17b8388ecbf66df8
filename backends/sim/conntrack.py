"""Connection tracking and NAT as the kernel does them (nf_conntrack, nf_nat).

A connection is created unconfirmed by the first packet, gets at most one
DNAT binding (PREROUTING/OUTPUT) and one SNAT binding (POSTROUTING/INPUT)
while still new, and is inserted into the table ("confirmed") when that
packet leaves the last hook. Every later packet, in either direction, is
rewritten from the two tuples alone: that is how replies are un-NATed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from backends.sim.packet import Addr, Conn, Packet, Tuple5

Manip = Literal["SRC", "DST"]

# The status bit nf_nat_initialized tests: a binding was decided for that manip.
INIT_STATUS: dict[Manip, str] = {"DST": "INIT_DST", "SRC": "INIT_SRC"}
# ICMP error types whose payload names the connection they are about.
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
_RST_FIN, _SYN_ACK = frozenset({"RST", "FIN"}), frozenset({"SYN", "ACK"})
_NOT_ESTABLISHED = frozenset({"SYN", "RST", "FIN"})
_SYN = frozenset({"SYN"})


@dataclass(slots=True)
class ConntrackTable:
    by_tuple: dict[Tuple5, tuple[Conn, bool]] = field(default_factory=dict)  # -> (conn, is_reply)

    def copy(self) -> ConntrackTable:
        # Connections are mutated (status, mark) so copy them with the index.
        fresh: dict[int, Conn] = {}
        out: dict[Tuple5, tuple[Conn, bool]] = {}
        for t, (c, r) in self.by_tuple.items():
            nc = fresh.get(id(c))
            if nc is None:
                nc = Conn(c.original, c.reply, set(c.status), c.mark, c.zone, c.syn_sent)
                fresh[id(c)] = nc
            out[t] = (nc, r)
        return ConntrackTable(out)

    def find(self, t: Tuple5) -> tuple[Conn, bool] | None:
        return self.by_tuple.get(t)

    def confirm(self, conn: Conn) -> None:
        if "CONFIRMED" in conn.status:
            return
        conn.status.add("CONFIRMED")
        self.by_tuple[conn.original] = (conn, False)
        self.by_tuple[conn.reply] = (conn, True)

    def flush(self) -> None:
        self.by_tuple.clear()


def track(table: ConntrackTable, pkt: Packet) -> None:
    """nf_conntrack_in: attach a connection and a state to a packet.

    Simplified TCP tracking that keeps the distinctions rules can see:
    a first SYN is NEW, a SYN-ACK or RST without a connection is INVALID, an
    ACK without one is picked up as NEW (nf_conntrack_tcp_loose=1, the
    default), replies are ESTABLISHED and mark the connection SEEN_REPLY,
    and the ACK that completes a TCP handshake marks it ASSURED.
    """
    if pkt.ct is not None or pkt.ctstate == "UNTRACKED":  # already tracked (looped back, a local error), NOTRACK
        return
    if pkt.proto == "icmp" and pkt.icmp_type in ICMP_ERROR_TYPES:
        if pkt.inner is None:
            pkt.ctstate = "INVALID"
            return
        # icmp_error_message: the error travels opposite to the packet it
        # quotes, so look up the quoted tuple inverted.
        hit = table.find(pkt.inner.tuple5().reversed())
        if hit is None:
            pkt.ctstate = "INVALID"
            return
        conn, is_reply = hit
        pkt.ct, pkt.ct_reply, pkt.ctstate = conn, is_reply, "RELATED"
        return
    t = pkt.tuple5()
    hit = table.find(t)
    if hit is not None:
        conn, is_reply = hit
        if (
            not is_reply
            and conn.syn_sent
            and "SEEN_REPLY" not in conn.status
            and pkt.tcp_flags != _SYN
            and "RST" not in pkt.tcp_flags
        ):
            # tcp_conntracks: in SYN_SENT only a retransmitted SYN or a reset may come from the client; its ACK
            # (the SYN-ACK passed by untracked, say) is INVALID and leaves without the entry (measured).
            pkt.ctstate = "INVALID"
            return
        pkt.ct, pkt.ct_reply = conn, is_reply
        if (
            pkt.proto == "tcp"
            and "SEEN_REPLY" in conn.status
            and "ACK" in pkt.tcp_flags
            and _NOT_ESTABLISHED.isdisjoint(pkt.tcp_flags)
        ):
            # tcp_packet: a valid ACK once both directions were seen moves the connection to ESTABLISHED and
            # marks it ASSURED before any rule sees the packet (the handshake's last ACK). A UDP flow is ASSURED
            # only when still active after two seconds, which a probe never is.
            conn.status.add("ASSURED")
        if is_reply:
            conn.status.add("SEEN_REPLY")
            pkt.ctstate = "ESTABLISHED"
        else:
            pkt.ctstate = "ESTABLISHED" if "SEEN_REPLY" in conn.status else "NEW"
        return
    # The TCP state table maps "no connection" + RST, SYN-ACK or FIN to INVALID.
    if pkt.proto == "tcp" and (not _RST_FIN.isdisjoint(pkt.tcp_flags) or pkt.tcp_flags >= _SYN_ACK):
        pkt.ctstate = "INVALID"
        return
    pkt.ct = Conn(original=t, reply=t.reversed(), syn_sent=pkt.proto == "tcp" and "SYN" in pkt.tcp_flags)
    pkt.ct_reply = False
    pkt.ctstate = "NEW"


def bind(conn: Conn, manip: Manip, ip: Addr | None, port: int | None) -> None:
    """Record a NAT binding decided on the first packet (ip None: null binding)."""
    conn.status.add(INIT_STATUS[manip])
    if ip is None:
        return
    r = conn.reply
    if manip == "DST":
        # The reply will come from the new destination.
        conn.reply = Tuple5(ip, r.dst, r.proto, port if port is not None else r.sport, r.dport)
        if conn.reply.src != conn.original.dst or conn.reply.sport != conn.original.dport:
            conn.status.add("DNAT")
    else:
        conn.reply = Tuple5(r.src, ip, r.proto, r.sport, port if port is not None else r.dport)
        if conn.reply.dst != conn.original.src or conn.reply.dport != conn.original.sport:
            conn.status.add("SNAT")


# nf_nat_packet: a packet is rewritten at a DST hook when its connection has
# DNAT (original direction) or SNAT (reply direction), and vice versa.
_WANTED: dict[tuple[Manip, bool], str] = {
    ("DST", False): "DNAT",
    ("DST", True): "SNAT",
    ("SRC", False): "SNAT",
    ("SRC", True): "DNAT",
}


def _set(pkt: Packet, manip: Manip, target: Tuple5) -> None:
    if manip == "DST":
        pkt.dst = target.dst
        if pkt.proto != "icmp":
            pkt.dport = target.dport
    else:
        pkt.src = target.src
        if pkt.proto != "icmp":
            pkt.sport = target.sport


def nat_packet(pkt: Packet, manip: Manip) -> bool:
    """Apply a connection's bindings to a packet at a hook. True if it changed."""
    conn = pkt.ct
    if conn is None:
        return False
    reply_dir = pkt.ct_reply
    wanted = _WANTED[manip, reply_dir] in conn.status
    related = pkt.ctstate == "RELATED" and pkt.inner is not None
    if not wanted and not related:
        return False  # the common case: nothing to rewrite at this hook
    other = conn.original if reply_dir else conn.reply
    target = other.reversed()
    before = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
    if related:
        assert pkt.inner is not None
        # nf_nat_icmp_reply_translation: the embedded header is put back to
        # how its own direction looks, with the opposite manip; then the
        # outer header as usual.
        inner_manip: Manip = "SRC" if manip == "DST" else "DST"
        _set(pkt.inner, inner_manip, other)
    if wanted:
        _set(pkt, manip, target)
    return before != (pkt.src, pkt.sport, pkt.dst, pkt.dport)
