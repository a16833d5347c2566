"""The loss modules: hand-computed values, per-document oracles, invariances and numerics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xmtc_cli.config import LossConfig
from xmtc_cli.labelspace import EMPTY, EOS, NUM_SPECIALS
from xmtc_cli.losses import (
    CrossEntropyLoss,
    MatchingLoss,
    build_criterion,
    cosine_cost,
    ipot,
    teacher_targets,
)

B, N, V, E = 5, 6, 12, 8


def random_inputs(seed: int = 0, slots: int = 4):
    """Logits [B, N, V], ragged gold [B, slots] (first document empty), embeddings [V, E]."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, N, V, generator=gen) * 2
    gold = torch.full((B, slots), -1)
    for b, n in enumerate([0, 1, 2, slots, 3]):
        gold[b, :n] = torch.randperm(V - NUM_SPECIALS, generator=gen)[:n] + NUM_SPECIALS
    table = torch.randn(V, E, generator=gen)
    return logits, gold, table


def shuffle_gold(gold: torch.Tensor, seed: int) -> torch.Tensor:
    """Each row's labels in another order, still left-aligned."""
    gen = torch.Generator().manual_seed(seed)
    out = gold.clone()
    for b in range(gold.size(0)):
        n = int((gold[b] >= 0).sum())
        out[b, :n] = gold[b, torch.randperm(n, generator=gen)]
    return out


@pytest.mark.parametrize("scheme", ["all", "first-n"])
@pytest.mark.parametrize("ot_weight", [0.0, 8.0])
def test_matching_loss_ignores_gold_order(scheme, ot_weight):
    logits, gold, table = random_inputs()
    criterion = MatchingLoss(scheme=scheme, ot_weight=ot_weight)
    loss, parts = criterion(logits, gold, table)
    for seed in range(3):
        shuffled = shuffle_gold(gold, seed)
        assert not torch.equal(shuffled, gold)
        loss_s, parts_s = criterion(logits, shuffled, table)
        torch.testing.assert_close(loss_s, loss)
        torch.testing.assert_close(parts_s, parts)


def test_weighted_nll_by_hand():
    # Two documents, three steps, labels 3 and 4; the second document has no gold label.
    probs = torch.tensor([
        [0.10, 0.05, 0.05, 0.60, 0.20],
        [0.50, 0.05, 0.05, 0.10, 0.30],
        [0.20, 0.05, 0.05, 0.30, 0.40],
    ])
    logits = probs.log().expand(2, 3, 5)
    gold = torch.tensor([[4, 3], [-1, -1]])
    table = torch.eye(5)
    empty = -0.2 * (math.log(0.1) + math.log(0.5) + math.log(0.2))  # document 2: all ∅
    # scheme all: label 3 -> step 0 (0.6) and label 4 -> step 2 (0.4) beat every other pair.
    expected_all = (-math.log(0.6) - math.log(0.4) - 0.2 * math.log(0.5) + empty) / (2.2 + 0.6)
    # first-n: steps 0 and 1 only; 3 -> 0 and 4 -> 1 (0.6 + 0.3) beat 4 -> 0, 3 -> 1 (0.2 + 0.1).
    expected_first = (-math.log(0.6) - math.log(0.3) - 0.2 * math.log(0.2) + empty) / (2.2 + 0.6)
    for scheme, expected in (("all", expected_all), ("first-n", expected_first)):
        loss, parts = MatchingLoss(scheme=scheme, ot_weight=0.0)(logits, gold, table)
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        assert set(parts) == {"matching"}


def test_ot_term_equals_per_document_computation():
    logits, gold, table = random_inputs(1)
    loss, parts = MatchingLoss(ot_weight=8.0, ot_beta=0.5, ot_iters=30)(logits, gold, table)
    # The authors' loop: each document alone, on its n real gold labels only.
    p = logits.softmax(-1)
    total = torch.zeros(())
    for b in range(B):
        labels = gold[b][gold[b] >= 0]
        if len(labels) == 0:
            continue
        cost = cosine_cost((p[b] @ table)[None], table[labels][None])  # (1, N, n)
        plan = ipot(cost, torch.ones(1, len(labels), dtype=torch.bool), beta=0.5, iters=30)
        total += (plan * cost).sum()
    torch.testing.assert_close(parts["ot"], total / B)  # averaged over all B documents
    torch.testing.assert_close(loss, parts["matching"] + 8.0 * parts["ot"])


@pytest.mark.parametrize("scheme", ["all", "first-n"])
def test_gradients_flow_to_logits_only(scheme):
    logits, gold, table = random_inputs(2)
    logits.requires_grad_(True)
    table.requires_grad_(True)
    loss, parts = MatchingLoss(scheme=scheme)(logits, gold, table)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert table.grad is None  # the label embeddings enter detached (docs/design.md §3.2)
    assert all(not v.requires_grad and v.dim() == 0 for v in parts.values())


def test_ot_term_has_gradient():
    logits, gold, table = random_inputs(3)
    logits.requires_grad_(True)
    loss = MatchingLoss(ot_weight=8.0)(logits, gold, table)[0]
    no_ot = MatchingLoss(ot_weight=0.0)(logits, gold, table)[0]
    grad = torch.autograd.grad(loss - no_ot, logits)[0]  # through the cost, not the plan
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("empty_weight", [0.2, 0.0])
def test_batch_without_gold_labels(empty_weight):
    logits, _, table = random_inputs(4)
    logits.requires_grad_(True)
    gold = torch.full((B, 3), -1)
    loss, parts = MatchingLoss(empty_weight=empty_weight)(logits, gold, table)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert parts["ot"] == 0
    if empty_weight:  # every slot targets ∅ with the same weight: a plain mean
        expected = -F.log_softmax(logits, -1)[..., EMPTY].mean()
        torch.testing.assert_close(parts["matching"], expected)


def test_all_empty_predictions_are_finite():
    logits, gold, table = random_inputs(5)
    logits = torch.full_like(logits, -1e4)
    logits[..., EMPTY] = 1e4  # the model is sure of ∅ everywhere: p(gold) underflows to 0
    logits.requires_grad_(True)
    loss, _ = MatchingLoss()(logits, gold, table)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("kind", ["matching", "cross-entropy"])
def test_bfloat16_autocast(kind):
    _, gold, table = random_inputs(6)
    features = torch.randn(B, gold.size(1) + 1 if kind == "cross-entropy" else N, 16)
    layer = torch.nn.Linear(16, V)
    criterion = build_criterion(LossConfig(kind=kind, ot_weight=8.0 if kind == "matching" else 0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(features)
        assert logits.dtype == torch.bfloat16
        loss, _ = criterion(logits, gold, table)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    reference, _ = criterion(logits.float(), gold, table)  # same bf16 logits, no autocast
    torch.testing.assert_close(loss, reference)


def test_gold_longer_than_steps_keeps_the_first_n():
    logits, _, table = random_inputs(7)
    gold = torch.arange(NUM_SPECIALS, NUM_SPECIALS + N + 2).repeat(B, 1)  # (B, N + 2)
    criterion = MatchingLoss()
    torch.testing.assert_close(criterion(logits, gold, table),
                               criterion(logits, gold[:, :N], table))


def test_teacher_targets():
    gold = torch.tensor([[5, 3, -1], [4, -1, -1], [-1, -1, -1], [7, 8, 9]])
    expected = torch.tensor([[5, 3, EOS, -1], [4, EOS, -1, -1], [EOS, -1, -1, -1], [7, 8, 9, EOS]])
    assert torch.equal(teacher_targets(gold), expected)


def test_cross_entropy_matches_torch():
    gold = torch.tensor([[5, 3, -1], [4, -1, -1]])
    targets = torch.tensor([[5, 3, EOS, -1], [4, EOS, -1, -1]])  # built by hand
    logits = torch.randn(2, 4, V, requires_grad=True)
    loss, parts = CrossEntropyLoss()(logits, gold, torch.empty(0))
    expected = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)
    torch.testing.assert_close(loss, expected)
    log_p = F.log_softmax(logits, -1)
    by_hand = -(log_p[0, 0, 5] + log_p[0, 1, 3] + log_p[0, 2, EOS] + log_p[1, 0, 4]
                + log_p[1, 1, EOS]) / 5  # mean over the 5 non-padding targets
    torch.testing.assert_close(loss, by_hand)
    assert set(parts) == {"cross_entropy"}


def test_cross_entropy_rejects_wrong_step_count():
    with pytest.raises(ValueError, match="gold slots"):
        CrossEntropyLoss()(torch.randn(2, 3, V), torch.tensor([[5, 3, -1], [4, -1, -1]]), None)


def test_build_criterion():
    cfg = LossConfig(scheme="first-n", empty_weight=0.3, ot_weight=2.0, ot_beta=0.5, ot_iters=7)
    criterion = build_criterion(cfg)
    assert isinstance(criterion, MatchingLoss)
    assert (criterion.scheme, criterion.empty_weight, criterion.ot_weight, criterion.ot_beta,
            criterion.ot_iters) == ("first-n", 0.3, 2.0, 0.5, 7)
    assert isinstance(build_criterion(LossConfig(kind="cross-entropy", ot_weight=0)),
                      CrossEntropyLoss)
