"""Randomly picked ports in the simulator: a label, the values left, and a draw only when a rule splits them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.sim.freeports import FreePorts, intersect, normal, size, subtract


class Answer:
    def __init__(self, yes: bool) -> None:
        self.yes = yes
        self.asked: list[float] = []

    def choose(self, probability: float, where: str) -> bool:
        self.asked.append(probability)
        return self.yes


ranges_ = st.lists(st.tuples(st.integers(1, 200), st.integers(0, 30)), max_size=5).map(
    lambda xs: normal((lo, lo + n) for lo, n in xs)
)


@given(ranges_, ranges_)
def test_intersect_and_subtract_split_a_set_exactly(
    a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]
) -> None:
    def values(r: tuple[tuple[int, int], ...]) -> set[int]:
        return {p for lo, hi in r for p in range(lo, hi + 1)}

    assert values(intersect(a, b)) == values(a) & values(b)
    assert values(subtract(a, b)) == values(a) - values(b)
    assert size(a) == len(values(a))


def test_a_test_that_splits_the_values_is_a_weighted_draw_and_narrows_them() -> None:
    free = FreePorts()
    label = free.new(((32768, 60999),), prefer=41000, taken=frozenset({8080}))
    assert label == 41000
    yes = Answer(True)
    assert free.test(label, ((32768, 46383),), yes, "rule") is True
    assert yes.asked == [pytest.approx(13616 / 28232)]
    assert free.labels[label] == ((32768, 46383),)
    # Now every value left answers the same: no more draws.
    assert free.test(label, ((1024, 65535),), yes, "rule") is True and len(yes.asked) == 1
    assert free.test(label, ((50000, 50000),), yes, "rule") is False and len(yes.asked) == 1
    no = Answer(False)
    assert free.test(label, ((40000, 40000),), no, "rule") is False
    assert free.labels[label] == ((32768, 39999), (40001, 46383))


def test_a_label_is_never_a_port_in_use() -> None:
    free = FreePorts()
    first = free.new(((41000, 41003),), prefer=41000, taken=frozenset({41000, 41001}))
    second = free.new(((41000, 41003),), prefer=41000, taken=frozenset({41000, 41001}))
    assert (first, second) == (41002, 41003)
    with pytest.raises(ValueError, match="at least one possible value"):
        free.new((), prefer=1, taken=frozenset())
