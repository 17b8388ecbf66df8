"""Packets and the conntrack view the netfilter model sees."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from backends.sim.kernel import Device

L4 = Literal["tcp", "udp", "sctp", "icmp"]
CtState = Literal["NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"]


class Addr(int):
    """An IPv4 address inside the simulator: an int that prints dotted.

    ipaddress.IPv4Address hashes and compares in Python code; the walk hashes
    addresses dozens of times per packet (routes, conntrack, memo keys), and
    ints do that in C. Addresses enter as `Addr.of(...)` and leave with
    `.ipv4()`. An Addr never equals an IPv4Address, so a mix-up fails loudly.
    """

    __slots__ = ()

    @classmethod
    def of(cls, ip: IPv4Address) -> Addr:
        return cls(int(ip))

    def ipv4(self) -> IPv4Address:
        return _ipv4(self)

    def __str__(self) -> str:
        n = int(self)
        return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"

    def __repr__(self) -> str:
        return f"Addr('{self}')"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


@functools.lru_cache(maxsize=4096)
def _ipv4(n: int) -> IPv4Address:
    # Outcomes carry IPv4Address; building one validates in Python code, and
    # the same few addresses come back on every probe.
    return IPv4Address(int(n))


ANY = Addr(0)


# A NamedTuple's constructor is a Python-level function; the walk builds two
# tuples per tracked packet, so the hot paths call tuple.__new__ directly.
_new_tuple = tuple.__new__


class Tuple5(NamedTuple):
    src: Addr
    dst: Addr
    proto: L4
    sport: int  # icmp: echo id
    dport: int  # icmp: echo id

    def reversed(self) -> Tuple5:
        return _new_tuple(Tuple5, (self.dst, self.src, self.proto, self.dport, self.sport))

    def __str__(self) -> str:
        return f"{self.proto} {self.src}:{self.sport} -> {self.dst}:{self.dport}"


@dataclass(slots=True)
class Conn:
    """A conntrack entry: original and reply tuples, NAT status, mark."""

    original: Tuple5
    reply: Tuple5
    status: set[str] = field(default_factory=set)  # SNAT DNAT CONFIRMED SEEN_REPLY ASSURED
    mark: int = 0
    zone: int = 0
    syn_sent: bool = False  # opened by a SYN (TCP state SYN_SENT until a reply), not picked up mid-stream


@dataclass(slots=True)
class Packet:
    src: Addr
    dst: Addr
    proto: L4
    sport: int = 0
    dport: int = 0
    tcp_flags: frozenset[str] = frozenset()  # subset of SYN ACK RST FIN PSH URG
    icmp_type: int = 0
    icmp_code: int = 0
    inner: Packet | None = None  # the offending packet's header, in ICMP errors
    ttl: int = 64
    mark: int = 0
    payload: str = ""
    # Kernel metadata, set by the stack while the packet is walked:
    ct: Conn | None = None
    # No entry yet: conntrack_mt calls that INVALID (the raw table runs before conntrack); UNTRACKED is only
    # what NOTRACK sets.
    ctstate: CtState = "INVALID"
    ct_reply: bool = False  # the packet travels in the reply direction
    src_mac: str = ""
    dst_mac: str = ""
    # br_netfilter's record of the bridge port a frame came in on (nf_bridge's physindev): set when iptables
    # PREROUTING runs at bridge level, seen by -m physdev in every later hook of that namespace, routed or
    # bridged; crossing a veth scrubs it (measured).
    physin: Device | None = None

    def tuple5(self) -> Tuple5:
        return _new_tuple(Tuple5, (self.src, self.dst, self.proto, self.sport, self.dport))

    def copy(self) -> Packet:
        return Packet(
            self.src,
            self.dst,
            self.proto,
            self.sport,
            self.dport,
            self.tcp_flags,
            self.icmp_type,
            self.icmp_code,
            self.inner,
            self.ttl,
            self.mark,
            self.payload,
            self.ct,
            self.ctstate,
            self.ct_reply,
            self.src_mac,
            self.dst_mac,
            self.physin,
        )

    def describe(self) -> str:
        if self.proto == "icmp":
            core = f"icmp {self.src} -> {self.dst} type {self.icmp_type}/{self.icmp_code}"
            if self.inner is not None:
                core += f" [{self.inner.describe()}]"
            return core
        flags = ",".join(sorted(self.tcp_flags)) if self.proto == "tcp" else ""
        return f"{self.proto} {self.src}:{self.sport} -> {self.dst}:{self.dport}" + (f" [{flags}]" if flags else "")
