"""Bipartite matching of decoding steps to gold labels (docs/design.md §3.1), solved on the host.

Shapes: B batch, N decoding steps, M gold slots (gold labels left-aligned, padded to M).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

UNMATCHED = -1  # `assign`'s answer for a step that gets the ∅ target

# Stand-in for non-finite scores: large enough to dominate probabilities, small enough that
# float64 sums inside scipy stay finite and exact at the scale of a probability.
_BIG = 1e9


@torch.no_grad()
def assign(
    scores: torch.Tensor,
    n_targets: torch.Tensor | Sequence[int],
    scheme: Literal["all", "first-n"],
) -> torch.Tensor:
    """Match each document's gold labels to decoding steps, maximising the total score.

    `scores[b, i, j]` (float [B, N, M]) is what step i gives to the j-th gold label of document
    b; columns j >= n_targets[b] are padding and are never read. Every gold label is matched to
    exactly one step: any of the N steps under scheme `all`, one of the first n_targets[b] under
    `first-n`. Returns a LongTensor [B, N] on the scores' device holding, for each step, the gold
    column matched to it or UNMATCHED (-1), the ∅ target.

    The problems are tiny (N x n), so scipy's Hungarian solver runs per document on the host on
    just the [N, n] (`all`) or [n, n] (`first-n`) block; the batch crosses to the host in one
    transfer (n_targets rides along when it lives on the device). NaN scores count as -1e9 and
    ±inf as ±1e9, so a diverged batch still gets a valid matching instead of a scipy error.
    """
    if scheme not in ("all", "first-n"):
        raise ValueError(f"scheme must be 'all' or 'first-n', not {scheme!r}")
    batch, steps, slots = scores.shape
    scores = scores.detach().float()
    if isinstance(n_targets, torch.Tensor) and n_targets.device != torch.device("cpu"):
        # One device-to-host copy for both: n_targets (small integers) is exact in float32.
        packed = torch.cat([scores.reshape(batch, -1), n_targets.float().reshape(batch, 1)], 1)
        packed = packed.cpu().numpy()
        host, lengths = packed[:, :-1].reshape(batch, steps, slots), packed[:, -1].astype(np.int64)
    else:
        host = scores.cpu().numpy()
        lengths = np.asarray(
            n_targets.cpu() if isinstance(n_targets, torch.Tensor) else n_targets, dtype=np.int64
        )
    if lengths.shape != (batch,):
        raise ValueError(f"n_targets must hold {batch} lengths, found shape {lengths.shape}")
    if lengths.min(initial=0) < 0 or lengths.max(initial=0) > min(steps, slots):
        raise ValueError(
            f"n_targets must lie in [0, min(N={steps}, M={slots})], found {lengths.tolist()}"
        )
    host = np.nan_to_num(host, nan=-_BIG, posinf=_BIG, neginf=-_BIG)

    matched = np.full((batch, steps), UNMATCHED, dtype=np.int64)  # (B, N)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            continue
        rows = steps if scheme == "all" else n
        step_ids, gold_ids = linear_sum_assignment(host[b, :rows, :n], maximize=True)
        matched[b, step_ids] = gold_ids
    return torch.from_numpy(matched).to(scores.device)
