"""The training losses: bipartite matching + semantic OT (OTSeq2Set) and cross-entropy (Seq2Seq).

Both are called as `criterion(logits, gold, label_embeddings) -> (loss, parts)` with
logits [B, S, V] over the output index space (`xmtc_cli.labelspace`), gold [B, M] output
indices left-aligned and padded with -1, and the decoder's label-embedding table [V, E]; `parts`
holds the detached terms for logging. Both compute in float32 even under autocast, and neither
reads a value back to the host except the one transfer inside `assign`.

Each loss is a weighted sum of means, `sum_k weight_k * sums_k / counts_k`. `criterion.terms(...)`
returns those sums and denominators (`LossTerms`) instead of the loss, so that training on many
processes (xmtc_cli.distributed) can add the denominators of every process's share of a batch
and take the loss of the whole batch, as one process would.

Shapes: B batch, S logit steps (N decoding steps for matching, M + 1 for cross-entropy),
M gold slots, V output indices, E label-embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xmtc_cli import blocked
from xmtc_cli.config import LossConfig
from xmtc_cli.labelspace import EMPTY, EOS, GOLD_PAD
from xmtc_cli.losses.matching import assign
from xmtc_cli.losses.transport import cosine_cost, ipot


@dataclass(frozen=True)
class LossTerms:
    """A loss as sums over the batch and what they are divided by: the loss is
    `sum_k weights[k] * sums[k] / counts[k]` over the names k of `sums`.

    sums: float32 scalars with their gradient; counts: float32 scalars, constants of the loss
    (weight sums, documents, targets); weights: the coefficient of each mean.
    """

    sums: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    weights: dict[str, float]


def teacher_targets(gold: torch.Tensor) -> torch.Tensor:
    """The cross-entropy targets of each document: its gold labels, then EOS, then GOLD_PAD (-1).

    gold: long [B, M], left-aligned, padded with GOLD_PAD -> long [B, M + 1]. Row b holds
    gold[b, :n] at steps 0..n-1, EOS at step n and GOLD_PAD after it, so every row has at least
    the EOS target. The model feeds BOS followed by targets[:, :-1] as the teacher-forcing inputs.
    """
    targets = torch.cat([gold, gold.new_full((gold.size(0), 1), GOLD_PAD)], 1)  # (B, M + 1)
    n = (gold != GOLD_PAD).sum(1, keepdim=True)  # (B, 1)
    return targets.scatter(1, n, EOS)


class MatchingLoss(nn.Module):
    """OTSeq2Set's loss: L_BM + ot_weight * L_OT over N student-forced steps (docs/design.md §3).

    L_BM: each document's gold labels are matched to steps by the Hungarian method on the cost
    -p_i(y_j) (`assign`, scheme `all` or `first-n`); the other steps target ∅. The loss is the
    class-weighted NLL (weight `empty_weight` on ∅, 1 elsewhere) reduced by the weighted mean
    over all B·N slots, sum(w * nll) / sum(w), as the authors' code does with `F.nll_loss`;
    the paper's Eq. 13 writes a per-document sum instead (a rescaling of the loss only).

    L_OT: the expected label embedding of each step, p_t · E (E detached), against the gold
    labels' embeddings under the cosine cost, weighted by the IPOT plan (a constant) between
    uniform steps and uniform gold labels; summed per document, then averaged over all B
    documents (a document without gold labels contributes 0 but still counts, as in the
    authors' code, which divides by the batch size).

    Gold sets longer than the N steps keep their first N labels (the batcher already cuts them).
    """

    def __init__(
        self,
        scheme: str = "all",
        empty_weight: float = 0.2,
        ot_weight: float = 8.0,
        ot_beta: float = 1.0,
        ot_iters: int = 50,
    ):
        super().__init__()
        self.scheme = scheme
        self.empty_weight = empty_weight
        self.ot_weight = ot_weight
        self.ot_beta = ot_beta
        self.ot_iters = ot_iters

    def forward(
        self, logits: torch.Tensor, gold: torch.Tensor, label_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            nll, weights, ot_per_doc = self._slots(logits, gold, label_embeddings)
            # The floor only matters for empty_weight = 0 with no gold label in the batch.
            matching = (weights * nll).sum() / weights.sum().clamp_min(1e-12)
            parts = {"matching": matching.detach()}
            if ot_per_doc is None:
                return matching, parts
            ot = ot_per_doc.mean()
            parts["ot"] = ot.detach()
            return matching + self.ot_weight * ot, parts

    def terms(
        self, logits: torch.Tensor, gold: torch.Tensor, label_embeddings: torch.Tensor
    ) -> LossTerms:
        """The loss as sums and denominators: the matching loss's weighted NLL over its weight
        sum, the OT term's per-document sum over the documents (`LossTerms`)."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            nll, weights, ot_per_doc = self._slots(logits, gold, label_embeddings)
            sums = {"matching": (weights * nll).sum()}
            counts = {"matching": weights.sum()}
            factors = {"matching": 1.0}
            if ot_per_doc is not None:
                sums["ot"] = ot_per_doc.sum()
                counts["ot"] = torch.tensor(float(ot_per_doc.numel()), device=logits.device)
                factors["ot"] = self.ot_weight
            return LossTerms(sums, counts, factors)

    def _slots(
        self, logits: torch.Tensor, gold: torch.Tensor, label_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per slot: the NLL of its matched target and its class weight, both [B, N]; per
        document: the OT term [B] (None when ot_weight is 0). Float32; call without autocast."""
        steps = logits.size(1)
        gold = gold[:, :steps]  # (B, M) with M <= N
        valid = gold != GOLD_PAD  # (B, M)
        log_p = F.log_softmax(logits.float(), dim=-1)  # (B, N, V)
        gold_index = gold.clamp_min(0)  # padding reads column 0 (∅); never used
        # The matching cost is -p_i(y_j): exponentiate only the gathered [B, N, M] entries.
        columns = gold_index.unsqueeze(1).expand(-1, steps, -1)  # (B, N, M)
        scores = log_p.detach().gather(2, columns).exp()  # (B, N, M)
        matched = assign(scores, valid.sum(1), self.scheme)  # (B, N), -1 for ∅
        targets = torch.where(
            matched >= 0, gold.gather(1, matched.clamp_min(0)), EMPTY
        )  # (B, N)
        nll = -log_p.gather(2, targets.unsqueeze(2)).squeeze(2)  # (B, N)
        weights = torch.where(targets == EMPTY, self.empty_weight, 1.0)  # (B, N)
        if self.ot_weight == 0:
            return nll, weights, None

        table = label_embeddings.detach().float()  # (V, E)
        expected = blocked.expectation(log_p.exp(), table)  # (B, N, E)
        cost = cosine_cost(expected, table[gold_index])  # (B, N, M)
        plan = ipot(cost.detach(), valid, self.ot_beta, self.ot_iters)  # (B, N, M)
        return nll, weights, (plan * cost).sum((1, 2))  # (B,)


class CrossEntropyLoss(nn.Module):
    """The Seq2Seq baselines' loss: NLL of the ordered gold labels then EOS, teacher forced.

    logits: [B, M + 1, V] for the targets of `teacher_targets(gold)`; the mean runs over the
    non-padding targets of the batch. The label embeddings are not used.
    """

    def forward(
        self, logits: torch.Tensor, gold: torch.Tensor, label_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        targets = self._targets(logits, gold)  # (B, M + 1)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), ignore_index=GOLD_PAD
            )  # over the B·(M + 1) targets
        return loss, {"cross_entropy": loss.detach()}

    def terms(
        self, logits: torch.Tensor, gold: torch.Tensor, label_embeddings: torch.Tensor
    ) -> LossTerms:
        """The loss as the NLL summed over the non-padding targets and their number."""
        targets = self._targets(logits, gold)  # (B, M + 1)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            total = F.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), ignore_index=GOLD_PAD,
                reduction="sum",
            )
        count = (targets != GOLD_PAD).sum().float()
        return LossTerms({"cross_entropy": total}, {"cross_entropy": count},
                         {"cross_entropy": 1.0})

    @staticmethod
    def _targets(logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        targets = teacher_targets(gold)  # (B, M + 1)
        if logits.shape[:2] != targets.shape:
            raise ValueError(
                f"cross-entropy needs logits for {targets.size(1)} steps (gold slots + EOS), "
                f"found logits of shape {tuple(logits.shape)} for gold {tuple(gold.shape)}"
            )
        return targets


def build_criterion(loss_cfg: LossConfig) -> nn.Module:
    """The loss module a recipe's `loss` section asks for."""
    if loss_cfg.kind == "cross-entropy":
        return CrossEntropyLoss()
    return MatchingLoss(
        scheme=loss_cfg.scheme,
        empty_weight=loss_cfg.empty_weight,
        ot_weight=loss_cfg.ot_weight,
        ot_beta=loss_cfg.ot_beta,
        ot_iters=loss_cfg.ot_iters,
    )
