"""ingest.byte_capped and capped: fetch batches capped in messages and in bytes (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keepword.pipeline.ingest import byte_capped, capped


def test_batches_stop_at_the_byte_cap_and_a_big_message_comes_alone() -> None:
    sizes = {1: 40, 2: 40, 3: 40, 4: 500, 5: 10, 6: 10}
    assert list(byte_capped([1, 2, 3, 4, 5, 6], sizes, 10, 100)) == [[1, 2], [3], [4], [5, 6]]


def test_count_cap_still_holds_and_expunged_uids_cost_nothing() -> None:
    assert list(byte_capped([1, 2, 3, 4, 5], {1: 1, 2: 1}, 2, 100)) == [[1, 2], [3, 4], [5]]


@given(
    st.lists(st.integers(min_value=0, max_value=300), max_size=60),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=400),
)
def test_every_uid_once_in_order_within_both_caps(
    sizes: list[int], max_count: int, max_bytes: int
) -> None:
    uids = list(range(1, len(sizes) + 1))
    by_uid = dict(zip(uids, sizes, strict=True))
    batches = list(byte_capped(uids, by_uid, max_count, max_bytes))
    assert [uid for batch in batches for uid in batch] == uids
    for batch in batches:
        assert 1 <= len(batch) <= max_count
        assert sum(by_uid[uid] for uid in batch) <= max_bytes or len(batch) == 1


def test_a_first_imports_first_batches_are_smaller_then_a_fetch_batch() -> None:
    sized = [(uid, 10) for uid in range(1, 1001)]
    batches = list(capped(sized, 500, 10**9, first=(100, 200)))
    assert [len(batch) for batch in batches] == [100, 200, 500, 200]
    # Never above the fetch batch, nor the byte cap; the sizes still add up.
    assert [len(b) for b in capped(sized, 50, 10**9, first=(100, 200))][:3] == [50, 50, 50]
    assert [len(b) for b in capped(sized, 500, 500, first=(100,))][:2] == [50, 50]


@given(
    st.lists(st.integers(min_value=0, max_value=300), max_size=60),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=400),
    st.lists(st.integers(min_value=1, max_value=12), max_size=3),
)
def test_with_first_batches_every_uid_once_in_order_within_each_batchs_cap(
    sizes: list[int], max_count: int, max_bytes: int, first: list[int]
) -> None:
    uids = list(range(1, len(sizes) + 1))
    by_uid = dict(zip(uids, sizes, strict=True))
    batches = list(capped(by_uid.items(), max_count, max_bytes, first=first))
    assert [uid for batch in batches for uid in batch] == uids
    for index, batch in enumerate(batches):
        limit = min(first[index], max_count) if index < len(first) else max_count
        assert 1 <= len(batch) <= limit
        assert sum(by_uid[uid] for uid in batch) <= max_bytes or len(batch) == 1
