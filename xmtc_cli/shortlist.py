"""A shortlist of output labels for the training step's softmax (train.shortlist; beyond the
paper, docs/design.md §12).

With V output labels a training step computes B x N x V logits forward and twice that work
backward: at AmazonCat-13K's shape on the CPU the output layer is over a third of a step, and it
grows with V. With a shortlist, every step of a batch scores only the batch's candidates: the
special symbols, every gold label of the batch, and K negatives. The softmax, the decoder's
student-forced arg-max, the matching costs and the OT term's expected embedding are all taken
over the candidates; predicting (and validation) still score all V labels.

A candidate source is anything with `candidates(gold, num_outputs, step, documents)`.
`UniformNegatives` draws the negatives uniformly. `LexicalNegatives` (train.shortlist_hard)
first takes the labels that the lexical scorer (xmtc_cli.lexical) ranks highest for the
batch's documents without their being gold, the labels a document is likely to be confused
with, which a uniform draw of K out of tens of thousands rarely contains; the rest of the K
are drawn uniformly as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from xmtc_cli.labelspace import GOLD_PAD, NUM_SPECIALS

if TYPE_CHECKING:
    from xmtc_cli.lexical import LexicalIndex


class CandidateSource(Protocol):
    def candidates(self, gold: torch.Tensor, num_outputs: int, step: int,
                   documents: np.ndarray | None = None) -> torch.Tensor:
        """Output indices [K'] (long, CPU) for a batch with gold [B, M] (output indices,
        GOLD_PAD after each set) of the training documents at positions `documents` [B]: the
        specials first, at their own indices, then every gold label of the batch, then
        negatives; no index twice."""
        ...


class UniformNegatives:
    """The batch's gold labels plus `k` labels drawn uniformly from the others.

    The draw comes from its own generator seeded with (seed, step): it is the same on every
    process of a run (each sees the global batch) and after a resume, and it leaves the RNG
    streams of dropout alone.
    """

    def __init__(self, k: int, seed: int):
        self.k, self.seed = k, seed

    def candidates(self, gold: torch.Tensor, num_outputs: int, step: int,
                   documents: np.ndarray | None = None) -> torch.Tensor:
        positives = _positives(gold)
        negatives = _drawn(self.k, positives, num_outputs, self.seed, step)
        return _assemble(positives, negatives)


class LexicalNegatives:
    """The batch's gold labels, then up to `k` negatives: first the labels `ranked` lists for
    the batch's documents (all documents' first choices, then their second ones, and so on,
    each label once, gold labels of the batch left out), then labels drawn uniformly from the
    rest, as `UniformNegatives` draws them, until there are `k`.

    ranked: long [N, m], for each training document the output indices of its m hard
    negatives, best first, -1 past the last (`hard_negatives`).
    """

    def __init__(self, ranked: torch.Tensor, k: int, seed: int):
        self.ranked, self.k, self.seed = ranked, k, seed

    def candidates(self, gold: torch.Tensor, num_outputs: int, step: int,
                   documents: np.ndarray | None = None) -> torch.Tensor:
        if documents is None:
            raise ValueError("LexicalNegatives needs the batch's document positions")
        positives = _positives(gold)
        rows = self.ranked[torch.as_tensor(np.asarray(documents, dtype=np.int64))]  # (B, m)
        by_rank = rows.t().flatten().numpy()  # first choices, then second ones, ...
        by_rank = by_rank[by_rank >= 0]
        _, first = np.unique(by_rank, return_index=True)
        hard = torch.from_numpy(by_rank[np.sort(first)])
        hard = hard[~torch.isin(hard, positives)][: self.k]
        drawn = _drawn(self.k - len(hard), torch.cat([positives, hard]), num_outputs,
                       self.seed, step)
        return _assemble(positives, torch.cat([hard, drawn]))


def _positives(gold: torch.Tensor) -> torch.Tensor:
    """The batch's gold labels (output indices, no specials), sorted, each once."""
    positives = torch.unique(gold[gold != GOLD_PAD].cpu())  # sorted
    return positives[positives >= NUM_SPECIALS]


def _drawn(k: int, taken: torch.Tensor, num_outputs: int, seed: int, step: int) -> torch.Tensor:
    """Up to `k` labels (output indices) drawn uniformly from those not in `taken`, by a
    generator of their own seeded with (seed, step)."""
    labels = num_outputs - NUM_SPECIALS
    want = max(0, min(k, labels - len(taken)))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    drawn = torch.randperm(labels, generator=generator)[: want + len(taken)] + NUM_SPECIALS
    return drawn[~torch.isin(drawn, taken)][:want]


def _assemble(positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """The specials, then the positives and negatives in increasing order: [K']."""
    rest = torch.sort(torch.cat([positives, negatives])).values
    return torch.cat([torch.arange(NUM_SPECIALS), rest])


def hard_negatives(index: LexicalIndex, per_doc: int, chunk: int = 1024) -> torch.Tensor:
    """long [N, per_doc]: for each training document of `index` (its rows, in the split's
    order), the output indices of the `per_doc` labels the lexical scorer scores highest for
    it without their being its gold labels, best first (ties by label id); -1 past the last
    label it scores. The document is its own nearest neighbour, so what is left are its
    neighbours' labels and the labels whose centroids resemble it."""
    n = index.docs.shape[0]
    table = np.full((n, per_doc), -1, dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = index.scores(index.docs[start:stop]).tocsr()
        gold = scores.multiply(index.labels[start:stop]).tocsr()  # the labels are ones
        scores = (scores - gold).tocsr()  # x - x is exactly 0: the gold labels leave
        scores.eliminate_zeros()
        rows = np.repeat(np.arange(stop - start), np.diff(scores.indptr))
        order = np.lexsort((scores.indices, -scores.data, rows))  # by row, best first
        rank = np.arange(len(order)) - scores.indptr[rows]  # rows[order] == rows
        kept = rank < per_doc
        table[start + rows[kept], rank[kept]] = (scores.indices[order][kept].astype(np.int64)
                                                 + NUM_SPECIALS)
    return torch.from_numpy(table)


def to_candidates(gold: torch.Tensor, candidates: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """gold [B, M] as positions in `candidates` [K'] (GOLD_PAD stays): the targets of logits
    over the candidates. Every gold label must be a candidate."""
    position = torch.full((num_outputs,), GOLD_PAD, dtype=torch.long, device=gold.device)
    position[candidates.to(gold.device)] = torch.arange(len(candidates), device=gold.device)
    mapped = position[gold.clamp_min(0)]  # (B, M)
    return torch.where(gold == GOLD_PAD, gold, mapped)
