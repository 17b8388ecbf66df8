"""Packets and the conntrack view the netfilter model sees."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Literal

L4 = Literal["tcp", "udp", "sctp", "icmp"]
CtState = Literal["NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"]


@dataclass(frozen=True)
class Tuple5:
    src: IPv4Address
    dst: IPv4Address
    proto: L4
    sport: int  # icmp: echo id
    dport: int  # icmp: echo id

    def reversed(self) -> Tuple5:
        return Tuple5(self.dst, self.src, self.proto, self.dport, self.sport)

    def __str__(self) -> str:
        return f"{self.proto} {self.src}:{self.sport} -> {self.dst}:{self.dport}"


@dataclass
class Conn:
    """A conntrack entry: original and reply tuples, NAT status, mark."""

    original: Tuple5
    reply: Tuple5
    status: set[str] = field(default_factory=set)  # SNAT DNAT CONFIRMED SEEN_REPLY ASSURED
    mark: int = 0
    zone: int = 0


@dataclass
class Packet:
    src: IPv4Address
    dst: IPv4Address
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
    ctstate: CtState = "UNTRACKED"
    ct_reply: bool = False  # the packet travels in the reply direction
    src_mac: str = ""
    dst_mac: str = ""

    def tuple5(self) -> Tuple5:
        return Tuple5(self.src, self.dst, self.proto, self.sport, self.dport)

    def copy(self) -> Packet:
        return replace(self)

    def describe(self) -> str:
        if self.proto == "icmp":
            core = f"icmp {self.src} -> {self.dst} type {self.icmp_type}/{self.icmp_code}"
            if self.inner is not None:
                core += f" [{self.inner.describe()}]"
            return core
        flags = ",".join(sorted(self.tcp_flags)) if self.proto == "tcp" else ""
        return f"{self.proto} {self.src}:{self.sport} -> {self.dst}:{self.dport}" + (f" [{flags}]" if flags else "")
