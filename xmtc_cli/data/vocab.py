"""Word and label vocabularies, counted in one pass over the training documents.

The pass numbers every new string in order of first appearance (`FirstSeen`); the final ids
then rank strings by descending count, ties in order of first appearance, so the numbering is
deterministic and needs no second tokenisation of the corpus: a numpy remap turns first-seen
ids into final ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD_ID, UNK_ID = 0, 1  # token ids of <pad> and <unk> in every word vocabulary
PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
NUM_SPECIAL_TOKENS = 2  # <pad>, <unk>


class FirstSeen:
    """Numbers strings 0, 1, 2, ... in the order they first appear."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def add(self, items: list[str]) -> list[int]:
        index = self.index
        # setdefault evaluates len(index) before inserting, so a new item gets the next id.
        return [index.setdefault(item, len(index)) for item in items]

    @property
    def items(self) -> list[str]:
        return list(self.index)


@dataclass(frozen=True)
class Vocabulary:
    """Strings by id with their training counts."""

    items: list[str]
    counts: np.ndarray  # int64 [len(items)]
    index: dict[str, int]

    def __len__(self) -> int:
        return len(self.items)


def by_count(counts: np.ndarray) -> np.ndarray:
    """First-seen ids by descending count; ties keep first-seen order (a stable sort)."""
    return np.argsort(-counts, kind="stable")


def word_vocabulary(seen: FirstSeen, counts: np.ndarray,
                    max_words: int) -> tuple[Vocabulary, np.ndarray]:
    """`<pad>`, `<unk>`, then the `max_words` most frequent words; and the first-seen remap.

    `remap[first_seen_id]` is the word's final id, or `<unk>` for words past the cap. Words
    spelled like a special token are treated as unknown, so text can never inject padding.
    The count of `<unk>` is the number of training tokens it replaces.
    """
    words = seen.items
    ranked = [i for i in by_count(counts).tolist() if words[i] not in (PAD_TOKEN, UNK_TOKEN)]
    kept = np.asarray(ranked[:max_words], dtype=np.int64)
    remap = np.full(len(words), UNK_ID, dtype=np.int32)
    remap[kept] = np.arange(NUM_SPECIAL_TOKENS, NUM_SPECIAL_TOKENS + len(kept), dtype=np.int32)
    unk_count = int(counts.sum() - counts[kept].sum())
    items = [PAD_TOKEN, UNK_TOKEN] + [words[i] for i in kept.tolist()]
    vocab_counts = np.concatenate([[0, unk_count], counts[kept]]).astype(np.int64)
    return Vocabulary(items, vocab_counts, {w: i for i, w in enumerate(items)}), remap


def label_vocabulary(seen: FirstSeen, counts: np.ndarray) -> tuple[Vocabulary, np.ndarray]:
    """Labels by descending document count, ties by first appearance; and the remap."""
    labels = seen.items
    order = by_count(counts)
    remap = np.empty(len(labels), dtype=np.int32)
    remap[order] = np.arange(len(labels), dtype=np.int32)
    items = [labels[i] for i in order.tolist()]
    ids = {x: i for i, x in enumerate(items)}
    return Vocabulary(items, counts[order].astype(np.int64), ids), remap
