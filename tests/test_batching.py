"""Length-sorted batching: budgets, bounded padding, left truncation."""

import numpy as np
import pytest

from featstore.extraction.batching import order_split, token_batches, truncate_left


@pytest.mark.parametrize("slack", [0.05, 0.25])
@pytest.mark.parametrize("seed", range(5))
def test_batches_cover_rows_in_order_within_budget_and_with_little_padding(seed, slack):
    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(1, 300, size=500))
    rows = slice(100, 356)
    batches = token_batches(lengths, rows, batch_tokens=2048, slack=slack)
    assert batches[0].start == rows.start and batches[-1].stop == rows.stop
    assert all(a.stop == b.start for a, b in zip(batches, batches[1:], strict=False))
    for batch in batches:
        batch_lengths = lengths[batch]
        padded = len(batch_lengths) * batch_lengths.max()
        assert padded <= 2048 or len(batch_lengths) == 1
        assert padded <= (1 + slack) * batch_lengths.sum()
    padded = sum((b.stop - b.start) * lengths[b].max() for b in batches)
    assert padded / lengths[rows].sum() <= 1 + slack


def test_hundreds_of_short_rows_fill_big_batches_with_little_padding():
    lengths = np.sort(4 + np.random.default_rng(0).poisson(3, size=512))  # 4..13 tokens, mostly 5..8
    batches = token_batches(lengths, slice(0, 512), batch_tokens=8192, slack=0.25)
    assert max(b.stop - b.start for b in batches) > 256
    assert sum((b.stop - b.start) * lengths[b].max() for b in batches) / lengths.sum() <= 1.25


def test_a_row_longer_than_the_budget_gets_its_own_batch():
    lengths = np.array([3, 4, 5000, 6000])
    assert token_batches(lengths, slice(0, 4), batch_tokens=100, slack=0.25) == [slice(0, 2), slice(2, 3), slice(3, 4)]


def test_truncation_keeps_the_last_tokens_and_optionally_the_first():
    ids = np.arange(10)
    assert truncate_left(ids, 4, keep_first=False).tolist() == [6, 7, 8, 9]
    assert truncate_left(ids, 4, keep_first=True).tolist() == [0, 7, 8, 9]
    assert truncate_left(ids, 10, keep_first=True).tolist() == list(range(10))


def test_order_split_sorts_by_length_then_example_id_and_records_source_lengths():
    encoded = [np.arange(n) for n in (5, 3, 9, 3)]
    split = order_split(np.array([40, 30, 20, 10]), encoded, max_len=6, keep_first=True)
    assert split.example_ids.tolist() == [10, 30, 40, 20]
    assert split.seq_lens.tolist() == [3, 3, 5, 6] and split.source_lens.tolist() == [3, 3, 5, 9]
    assert split.truncated.tolist() == [False, False, False, True]
    assert split.padded(slice(1, 3)).tolist() == [[0, 1, 2, 0, 0], [0, 1, 2, 3, 4]]
