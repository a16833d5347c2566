"""`assign` against brute force over every injective step choice, on small random batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from xmtc_cli.losses import UNMATCHED, assign

SCHEMES = ("all", "first-n")


def brute_force(scores: np.ndarray, n: int, scheme: str) -> tuple[float, np.ndarray]:
    """Best total and its step->gold map for one document [N, M], by enumeration."""
    steps = scores.shape[0]
    allowed = steps if scheme == "all" else n
    best_total, best_steps = -np.inf, ()
    for chosen in itertools.permutations(range(allowed), n):  # chosen[j]: step of gold j
        total = sum(scores[i, j] for j, i in enumerate(chosen))
        if total > best_total:
            best_total, best_steps = total, chosen
    mapping = np.full(steps, UNMATCHED)
    mapping[list(best_steps)] = np.arange(n)
    return best_total, mapping


def random_case(rng: np.random.Generator, batch: int = 6, square: bool = False):
    """Scores [B, N, M] with M <= N (M = N if `square`), lengths from 0 to M incl. both ends."""
    steps = int(rng.integers(1, 7))
    slots = steps if square else int(rng.integers(1, steps + 1))
    lengths = rng.integers(0, slots + 1, size=batch)
    lengths[:2] = (0, slots)  # always an empty document and a full one
    scores = rng.random((batch, steps, slots))
    return torch.tensor(scores, dtype=torch.float32), lengths


def matched_total(scores: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """Sum of the matched scores of each document, [B]."""
    picked = scores.gather(2, mapping.clamp_min(0).unsqueeze(2)).squeeze(2)
    return torch.where(mapping >= 0, picked, 0.0).sum(1)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_assign_equals_brute_force(scheme):
    rng = np.random.default_rng(0)
    for case in range(40):
        scores, lengths = random_case(rng, square=case % 4 == 0)  # n = N included
        mapping = assign(scores, torch.tensor(lengths), scheme)
        assert mapping.dtype == torch.long and mapping.shape == scores.shape[:2]
        totals = matched_total(scores, mapping)
        for b, n in enumerate(lengths):
            best, expected = brute_force(scores[b].double().numpy(), int(n), scheme)
            # Random continuous scores: the optimum is unique, so the map itself must agree.
            np.testing.assert_array_equal(mapping[b].numpy(), expected)
            assert totals[b].item() == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_gold_label_matched_once_within_allowed_steps(scheme):
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores, lengths = random_case(rng)
        mapping = assign(scores, lengths.tolist(), scheme)  # a list works too
        for b, n in enumerate(lengths):
            row = mapping[b].numpy()
            assert sorted(row[row >= 0].tolist()) == list(range(n))
            if scheme == "first-n":
                assert (row[n:] == UNMATCHED).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_permuting_gold_columns_permutes_the_matching(scheme):
    rng = np.random.default_rng(2)
    scores, lengths = random_case(rng, batch=8)
    mapping = assign(scores, lengths, scheme)
    permuted, perms = scores.clone(), []
    for b, n in enumerate(lengths):
        perm = rng.permutation(int(n))  # new column k holds old column perm[k]
        permuted[b, :, :n] = scores[b, :, perm]
        perms.append(perm)
    mapping_p = assign(permuted, lengths, scheme)
    torch.testing.assert_close(matched_total(permuted, mapping_p), matched_total(scores, mapping))
    for b, perm in enumerate(perms):
        old = np.array([perm[j] if j >= 0 else UNMATCHED for j in mapping_p[b].tolist()])
        np.testing.assert_array_equal(old, mapping[b].numpy())


def test_padding_columns_are_never_read():
    scores = torch.rand(3, 5, 4)
    lengths = [0, 2, 3]
    poisoned = scores.clone()
    for b, n in enumerate(lengths):
        poisoned[b, :, n:] = 100.0
    for scheme in SCHEMES:
        torch.testing.assert_close(assign(poisoned, lengths, scheme),
                                   assign(scores, lengths, scheme))


def test_empty_documents_and_non_finite_scores():
    scores = torch.rand(3, 4, 3)
    assert (assign(scores, [0, 0, 0], "all") == UNMATCHED).all()
    scores[1, 0, 0] = float("nan")
    scores[1, 1, 1] = float("inf")
    scores[2, 2, 0] = float("-inf")
    for scheme in SCHEMES:
        mapping = assign(scores, [3, 3, 3], scheme)
        for b in range(3):
            assert sorted(mapping[b][mapping[b] >= 0].tolist()) == [0, 1, 2]
        if scheme == "all":
            assert mapping[1, 1] == 1  # +inf wins its step
            assert mapping[1, 0] != 0 and mapping[2, 2] != 0  # NaN and -inf lose


def test_rejects_bad_arguments():
    scores = torch.rand(2, 3, 3)
    with pytest.raises(ValueError, match="scheme"):
        assign(scores, [1, 1], "first")
    with pytest.raises(ValueError, match="n_targets"):
        assign(scores, [1, 4], "all")
    with pytest.raises(ValueError, match="n_targets"):
        assign(scores, [1], "all")
