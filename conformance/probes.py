"""Probes and their outcomes: the only thing specs ever look at."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Literal

from conformance.model import Protocol

Verdict = Literal["delivered", "refused", "dropped"]


@dataclass(frozen=True)
class Probe:
    """A new connection from `source` ("pod:ns/name" or "node:name") to dst:port."""

    source: str
    dst: IPv4Address
    port: int
    protocol: Protocol = "TCP"

    def __str__(self) -> str:
        return f"{self.source} -> {self.dst}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Outcome:
    """What happened to one probe.

    delivered: the server answered and the client got the answer.
    refused: an immediate negative answer (RST, ICMP unreachable).
    dropped: nothing came back before the timeout.
    """

    verdict: Verdict
    served_by: str | None = None  # identity of the pod that answered
    served_port: int | None = None  # the port the server listened on
    server_saw: IPv4Address | None = None  # peer address seen by the server
    client_saw: IPv4Address | None = None  # source of the reply seen by the client
    reason: str = field(default="", compare=False)
    trace: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def summary(self) -> str:
        if self.verdict == "delivered":
            return (
                f"delivered by {self.served_by}:{self.served_port}, server saw "
                f"{self.server_saw}, reply from {self.client_saw}"
            )
        return f"{self.verdict}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Observation:
    """Every possible outcome of a probe with its probability.

    The simulator returns the full distribution (random load balancing); a
    real backend returns the one sample it saw with probability 1.
    """

    probe: Probe
    outcomes: tuple[tuple[Outcome, float], ...]
    exact: bool = True  # False: a sample from a real backend

    @property
    def possible(self) -> tuple[Outcome, ...]:
        return tuple(o for o, p in self.outcomes if p > 0)

    def describe(self) -> str:
        lines = [str(self.probe)]
        for o, p in self.outcomes:
            lines.append(f"  p={p:.3f}: {o.summary()}")
        return "\n".join(lines)
