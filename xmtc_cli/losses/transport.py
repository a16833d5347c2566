"""Optimal transport between decoding steps and gold labels (docs/design.md §3.2): cost, IPOT.

Shapes: B batch, N decoding steps, M gold slots, E embedding width.
"""

from __future__ import annotations

import torch

_TINY = torch.finfo(torch.float32).tiny  # smallest normal float32: 1 / _TINY is finite


def cosine_cost(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine distance 1 - cos(x_i, y_j) between two batches of vectors, the OT ground cost.

    x: [B, N, E], y: [B, M, E] -> [B, N, M]. The norm product is floored at `eps` (as the
    authors' code does), so a zero vector is at distance 1 from everything, not NaN.
    """
    dots = torch.bmm(x, y.transpose(1, 2))  # (B, N, M)
    norms = x.norm(dim=2).unsqueeze(2) * y.norm(dim=2).unsqueeze(1)  # (B, N, M)
    return 1 - dots / norms.clamp_min(eps)


@torch.no_grad()
def ipot(
    cost: torch.Tensor, target_mask: torch.Tensor, beta: float = 1.0, iters: int = 50
) -> torch.Tensor:
    """IPOT transport plan from N uniform steps to each document's uniform valid targets.

    cost: [B, N, M]; target_mask: bool [B, M], True for a real target. Returns the float32 plan
    [B, N, M], the same as running IPOT (Xie et al. 2020; β proximal step, one inner Sinkhorn
    iteration, `iters` outer iterations) on each document's [N, n] block alone, with zeros in
    masked columns and an all-zero plan for a document without targets.

    Masking is exact rather than approximate: a masked column has G = 0, so it adds nothing to
    Q b or to the plan, whatever b is there. The column marginals are exact after every iteration
    (b is updated last); the row marginals converge towards 1/N.
    The plan is a constant of the loss, so it is computed without autograd, and in float32
    whatever autocast says, because exp(-C/β) and the reciprocals lose too much in 16 bits.
    """
    steps = cost.size(1)
    with torch.autocast(device_type=cost.device.type, enabled=False):
        mask = target_mask.unsqueeze(1)  # (B, 1, M)
        n = mask.sum(2, keepdim=True).float()  # (B, 1, 1)
        # where, not a product: whatever sits in masked columns (even NaN) must not leak.
        kernel = torch.where(mask, torch.exp(-cost.float() / beta), 0.0)  # G (B, N, M)
        col = mask / n.clamp_min(1)  # b (B, 1, M)
        plan = mask.expand_as(kernel).float()  # Γ = 1 on the real targets (B, N, M)
        for _ in range(iters):
            q = kernel * plan  # Q (B, N, M)
            # The sums are exactly 0 for a masked column or a document without targets: the
            # floor keeps their reciprocal finite, and the zero kernel keeps the plan zero there.
            row = torch.bmm(q, col.mT).mul_(steps).clamp_min_(_TINY).reciprocal_()  # a (B, N, 1)
            col = torch.bmm(row.mT, q).mul_(n).clamp_min_(_TINY).reciprocal_()  # b (B, 1, M)
            plan = q.mul_(row).mul_(col)  # Γ = diag(a) Q diag(b), in Q's memory
    return plan
