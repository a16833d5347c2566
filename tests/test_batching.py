"""Batches: padding, truncation, gold label order and unseen labels."""

from __future__ import annotations

import numpy as np
import torch

from xmtc_cli.data.batching import GOLD_PAD, Batcher, frequency_rank, pad_sources
from xmtc_cli.data.processed import Split, flatten, offsets
from xmtc_cli.labelspace import NUM_SPECIALS


def _split():
    docs = [[5, 6, 7, 8], [], [9, 10]]
    labels = [[2, 0, 2, 1], [1], [7]]  # label 7 is beyond num_labels=4: never trained on
    return Split(token_ids=flatten(docs), token_offsets=offsets([len(d) for d in docs]),
                 label_ids=flatten(labels), label_offsets=offsets([len(x) for x in labels]))


def test_pad_sources_cuts_and_pads():
    src, lengths = pad_sources([np.array([4, 5, 6]), np.array([], dtype=np.int64)], max_tokens=2)
    assert src.tolist() == [[4, 5], [0, 0]]
    assert lengths.tolist() == [2, 0]


def test_gold_is_deduplicated_shifted_and_padded():
    b = Batcher(_split(), max_src_tokens=3, max_labels=5, num_labels=4).batch(np.arange(3))
    s = NUM_SPECIALS
    assert b.gold.tolist() == [[2 + s, 0 + s, 1 + s], [1 + s, GOLD_PAD, GOLD_PAD],
                               [GOLD_PAD, GOLD_PAD, GOLD_PAD]]
    assert b.src.tolist() == [[5, 6, 7], [0, 0, 0], [9, 10, 0]]
    assert b.lengths.tolist() == [3, 0, 2]


def test_frequency_order_and_cut_to_n():
    counts = np.array([1, 9, 5, 9])  # by frequency: 1, 3 (tie: lower id first), 2, 0
    rank = frequency_rank(counts)
    assert rank.tolist() == [3, 0, 2, 1]
    b = Batcher(_split(), 10, max_labels=2, num_labels=4, rank=rank).batch(np.array([0]))
    assert (b.gold[0] - NUM_SPECIALS).tolist() == [1, 2]


def test_epochs_are_seeded_and_cover_every_document():
    batcher = Batcher(_split(), 10, 5, 4)
    first = [b.index.tolist() for b in batcher.epoch(2, seed=3)]
    again = [b.index.tolist() for b in batcher.epoch(2, seed=3)]
    assert first == again
    assert sorted(i for batch in first for i in batch) == [0, 1, 2]
    assert [len(x) for x in first] == [2, 1]
    assert batcher.num_batches(2) == 2
    assert isinstance(next(batcher.epoch(2, None)).src, torch.Tensor)
