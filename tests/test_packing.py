"""The byte-budget packing every multi-item reply goes through: pure logic."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from packetbus_server._packing import ITEM_OVERHEAD, fit, packs, read_count


def _bytes(part: list[int]) -> int:
    return sum(size + ITEM_OVERHEAD for size in part)


@given(
    st.lists(st.integers(min_value=0, max_value=5000), max_size=60),
    st.integers(min_value=1, max_value=20000),
)
def test_packs_keep_every_item_in_order_within_the_budget_and_greedy(
    sizes: list[int], budget: int
) -> None:
    parts = list(packs(sizes, lambda s: s, budget))
    assert [s for part in parts for s in part] == sizes
    for part in parts:
        assert part
        # Over the budget only as one item alone.
        assert _bytes(part) <= budget or len(part) == 1
    # Each run is as long as it can be: the next item would not have fitted.
    for part, after in itertools.pairwise(parts):
        assert _bytes(part) + after[0] + ITEM_OVERHEAD > budget
    assert fit(sizes, budget) == (len(parts[0]) if parts else 0)


def test_an_item_larger_than_the_budget_goes_alone() -> None:
    assert list(packs([10, 3000, 10, 10], lambda s: s, 100)) == [[10], [3000], [10, 10]]
    assert fit([3000, 1], 100) == 1
    assert fit([], 100) == 0


@given(
    st.lists(st.integers(min_value=0, max_value=2_000_000), max_size=50),
    st.integers(min_value=1, max_value=8_000_000),
    st.integers(min_value=1, max_value=1000),
)
def test_a_read_count_is_between_one_and_the_most(sizes: list[int], budget: int, most: int) -> None:
    count = read_count(sizes, lambda s: s, budget, most)
    assert 1 <= count <= most
    if not sizes:
        assert count == most
    elif _bytes(sizes) <= budget and len(sizes) <= most:
        # Items as large as these: at least as many again fit.
        assert count >= min(most, len(sizes))
