"""Ports the kernel picks at random, fixed only as far as some rule asks.

A client's source port is one of the ephemeral range (32768-60999), and
MASQUERADE/SNAT with --random or --random-fully gives a connection a new
source port anywhere in its range. Which one hardly ever matters, so a path
does not enumerate them: the packet carries a label (an ordinary port number
no rule or socket of the dataplane uses) and the set of values it may still
stand for. When a rule tests a labelled port and the answer is not the same
for every value left, the test is a random draw, weighted by how many values
fall on each side, and the set shrinks to that side. So every outcome a real
port could produce is reached, with the share of ports that produce it
(ports taken as uniform over the range, as the kernel's hashed choice
nearly is).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

Ranges = tuple[tuple[int, int], ...]  # disjoint, sorted, inclusive

EPHEMERAL = (32768, 60999)  # net.ipv4.ip_local_port_range, a namespace's default


class Chooser(Protocol):
    def choose(self, probability: float, where: str) -> bool: ...


def size(ranges: Ranges) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def intersect(a: Ranges, b: Iterable[tuple[int, int]]) -> Ranges:
    out = []
    for blo, bhi in b:
        for alo, ahi in a:
            lo, hi = max(alo, blo), min(ahi, bhi)
            if lo <= hi:
                out.append((lo, hi))
    return normal(out)


def subtract(a: Ranges, b: Iterable[tuple[int, int]]) -> Ranges:
    out = list(a)
    for blo, bhi in b:
        nxt = []
        for lo, hi in out:
            if bhi < lo or blo > hi:
                nxt.append((lo, hi))
                continue
            if lo < blo:
                nxt.append((lo, blo - 1))
            if hi > bhi:
                nxt.append((bhi + 1, hi))
        out = nxt
    return normal(out)


def normal(ranges: Iterable[tuple[int, int]]) -> Ranges:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


@dataclass(slots=True)
class FreePorts:
    """One path's labelled ports: label -> the values it may still stand for."""

    labels: dict[int, Ranges] = field(default_factory=dict)

    def new(self, values: Ranges, *, prefer: int, taken: frozenset[int]) -> int:
        """A label for a port that may be any of `values`: `prefer` if no one uses it, else the first free value."""
        if not values:
            raise ValueError("a free port needs at least one possible value")
        label = prefer
        if label in taken or label in self.labels:
            label = next(p for lo, hi in values for p in range(lo, hi + 1) if p not in taken and p not in self.labels)
        self.labels[label] = values
        return label

    def test(self, label: int, ranges: Ranges, chooser: Chooser, where: str) -> bool:
        """Is the labelled port in `ranges`? A draw when some of its values are and some are not."""
        values = self.labels[label]
        if len(values) == 1 and len(ranges) == 1:  # the common case, without building sets
            (vlo, vhi), (rlo, rhi) = values[0], ranges[0]
            if rhi < vlo or rlo > vhi:
                return False
            if rlo <= vlo and vhi <= rhi:
                return True
        inside = intersect(values, ranges)
        if not inside:
            return False
        if inside == values:
            return True
        if chooser.choose(size(inside) / size(values), where):
            self.labels[label] = inside
            return True
        self.labels[label] = subtract(values, ranges)
        return False
