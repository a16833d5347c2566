"""A shortlist of output labels for the training step's softmax (train.shortlist; beyond the
paper, docs/design.md §12).

With V output labels a training step computes B x N x V logits forward and twice that work
backward: at AmazonCat-13K's shape on the CPU the output layer is over a third of a step, and it
grows with V. With a shortlist, every step of a batch scores only the batch's candidates: the
special symbols, every gold label of the batch, and K negatives. The softmax, the decoder's
student-forced arg-max, the matching costs and the OT term's expected embedding are all taken
over the candidates; predicting (and validation) still score all V labels.

A candidate source is anything with `candidates(gold, num_outputs, step)`; `UniformNegatives`
draws the negatives uniformly. Sources that know which labels a document is likely to confuse
(a lexical scorer's top K) plug in the same way (`Trainer.shortlist`).
"""

from __future__ import annotations

from typing import Protocol

import torch

from xmtc_cli.labelspace import GOLD_PAD, NUM_SPECIALS


class CandidateSource(Protocol):
    def candidates(self, gold: torch.Tensor, num_outputs: int, step: int) -> torch.Tensor:
        """Output indices [K'] (long, CPU) for a batch with gold [B, M] (output indices,
        GOLD_PAD after each set): the specials first, at their own indices, then every gold
        label of the batch, then negatives; no index twice."""
        ...


class UniformNegatives:
    """The batch's gold labels plus `k` labels drawn uniformly from the others.

    The draw comes from its own generator seeded with (seed, step): it is the same on every
    process of a run (each sees the global batch) and after a resume, and it leaves the RNG
    streams of dropout alone.
    """

    def __init__(self, k: int, seed: int):
        self.k, self.seed = k, seed

    def candidates(self, gold: torch.Tensor, num_outputs: int, step: int) -> torch.Tensor:
        labels = num_outputs - NUM_SPECIALS
        positives = torch.unique(gold[gold != GOLD_PAD].cpu())  # sorted
        positives = positives[positives >= NUM_SPECIALS]
        want = min(self.k, labels - len(positives))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        drawn = torch.randperm(labels, generator=generator)[: want + len(positives)]
        drawn = drawn + NUM_SPECIALS
        negatives = drawn[~torch.isin(drawn, positives)][:want]
        rest = torch.sort(torch.cat([positives, negatives])).values
        return torch.cat([torch.arange(NUM_SPECIALS), rest])  # (K',)


def to_candidates(gold: torch.Tensor, candidates: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """gold [B, M] as positions in `candidates` [K'] (GOLD_PAD stays): the targets of logits
    over the candidates. Every gold label must be a candidate."""
    position = torch.full((num_outputs,), GOLD_PAD, dtype=torch.long, device=gold.device)
    position[candidates.to(gold.device)] = torch.arange(len(candidates), device=gold.device)
    mapped = position[gold.clamp_min(0)]  # (B, M)
    return torch.where(gold == GOLD_PAD, gold, mapped)
