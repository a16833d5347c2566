"""Turn processed documents into padded tensor batches for the model.

A `Batch` holds source token ids padded with <pad> (id 0) and each document's gold labels as
decoder output indices (`xmtc_cli.labelspace`), left-aligned and padded with -1, and, where
the split has side features, each document's row of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xmtc_cli.data.processed import Split
from xmtc_cli.data.vocab import PAD_ID
from xmtc_cli.labelspace import GOLD_PAD, NUM_SPECIALS


@dataclass
class Batch:
    src: torch.Tensor  # (B, T) long, <pad> = 0 after each document's end
    lengths: torch.Tensor  # (B,) long on the host, tokens kept per document (0 when empty)
    gold: torch.Tensor  # (B, M) long, output indices, GOLD_PAD after each gold set
    index: np.ndarray  # (B,) positions of the documents in their split
    features: torch.Tensor | None = None  # (B, D) float32 side features (row b: document b)

    def to(self, device: torch.device | str) -> Batch:
        """The batch with `src`, `gold` and `features` on `device`; `lengths` stays on the
        host, where the encoder's packing reads it (reading it back from a GPU would wait for
        the GPU)."""
        nb = torch.device(device).type == "cuda"
        return Batch(
            self.src.to(device, non_blocking=nb),
            self.lengths,
            self.gold.to(device, non_blocking=nb),
            self.index,
            None if self.features is None else self.features.to(device, non_blocking=nb),
        )

    def __len__(self) -> int:
        return len(self.index)


def pad_sources(docs: Sequence[np.ndarray | Sequence[int]],
                max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each document to `max_tokens` and pad them into one (B, T) tensor with lengths."""
    lengths = [min(len(d), max_tokens) for d in docs]
    width = max(max(lengths, default=0), 1)
    src = np.full((len(docs), width), PAD_ID, dtype=np.int64)
    for row, (doc, n) in enumerate(zip(docs, lengths)):
        src[row, :n] = doc[:n]
    return torch.from_numpy(src), torch.tensor(lengths, dtype=torch.long)


@dataclass(frozen=True)
class Batcher:
    """Build training and evaluation batches from one split.

    `num_labels` corpus labels are trainable; gold labels beyond them (seen only outside the
    training split) cannot be generated, so they are left out of training targets. `rank` orders
    each gold set for the cross-entropy baselines (None keeps file order); gold sets longer than
    `max_labels` (N) are cut, as the decoder has only N steps.
    """

    split: Split
    max_src_tokens: int
    max_labels: int
    num_labels: int
    rank: np.ndarray | None = None  # (L,) position of each label in the training order

    def batch(self, indices: np.ndarray) -> Batch:
        docs = [self.split.tokens(i) for i in indices]
        src, lengths = pad_sources(docs, self.max_src_tokens)
        golds = [self._gold(self.split.labels(i)) for i in indices]
        width = max(max((len(g) for g in golds), default=0), 1)
        gold = np.full((len(indices), width), GOLD_PAD, dtype=np.int64)
        for row, g in enumerate(golds):
            gold[row, : len(g)] = g
        return Batch(src, lengths, torch.from_numpy(gold), np.asarray(indices),
                     feature_rows(self.split.features, indices))

    def _gold(self, labels: np.ndarray) -> np.ndarray:
        # Duplicate labels in a gold line would be matched twice: keep the first occurrence.
        _, first = np.unique(labels, return_index=True)
        labels = labels[np.sort(first)]
        labels = labels[labels < self.num_labels]
        if self.rank is not None:
            labels = labels[np.argsort(self.rank[labels], kind="stable")]
        return labels[: self.max_labels].astype(np.int64) + NUM_SPECIALS

    def epoch(self, batch_size: int, seed: int | None, start: int = 0) -> Iterator[Batch]:
        """Batches over the whole split: shuffled by `seed` (None: in order), from batch
        `start` on (the same batches an epoch from 0 yields there: resuming inside an epoch)."""
        n = len(self.split)
        if seed is None:
            order = np.arange(n)
        else:
            order = np.random.default_rng(seed).permutation(n)
        for first in range(start * batch_size, n, batch_size):
            yield self.batch(order[first : first + batch_size])

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.split) // batch_size)


def feature_rows(features: np.ndarray | None,
                 indices: np.ndarray | Sequence[int]) -> torch.Tensor | None:
    """float32 (B, D): the side-feature rows of the documents `indices` (None without)."""
    if features is None:
        return None
    rows = np.asarray(features[np.asarray(indices, dtype=np.int64)], dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(rows))


def frequency_rank(label_counts: np.ndarray) -> np.ndarray:
    """Rank of every label by descending training frequency, ties by id (MLC2Seq's order)."""
    order = np.lexsort((np.arange(len(label_counts)), -label_counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank
