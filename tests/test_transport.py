"""`ipot` against a naive per-document NumPy IPOT and the exact OT cost of a linear program."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from references import naive_ipot
from scipy.optimize import linprog

from xmtc_cli.losses import cosine_cost, ipot


def exact_ot(cost: np.ndarray) -> float:
    """Minimum of <Γ, C> over plans with uniform marginals, by linear programming."""
    steps, n = cost.shape
    rows = np.kron(np.eye(steps), np.ones(n))  # Γ 1 = 1/N
    cols = np.kron(np.ones(steps), np.eye(n))  # Γᵀ 1 = 1/n
    a_eq = np.vstack([rows, cols])
    b_eq = np.concatenate([np.full(steps, 1 / steps), np.full(n, 1 / n)])
    return linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs").fun


def random_batch(seed: int, batch: int = 8, steps: int = 7, slots: int = 5):
    """Cosine costs in [0, 2] as the loss makes them, ragged masks incl. empty and full rows."""
    gen = torch.Generator().manual_seed(seed)
    cost = cosine_cost(torch.randn(batch, steps, 16, generator=gen),
                       torch.randn(batch, slots, 16, generator=gen))
    lengths = torch.randint(1, slots + 1, (batch,), generator=gen)
    lengths[0], lengths[1] = 0, slots
    mask = torch.arange(slots) < lengths.unsqueeze(1)  # (B, M)
    return cost, mask, lengths.tolist()


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_ipot_equals_naive_per_document(beta):
    cost, mask, lengths = random_batch(0)
    cost[~mask.unsqueeze(1).expand_as(cost)] = float("nan")  # masked columns must not leak
    plan = ipot(cost, mask, beta=beta, iters=50)
    assert plan.dtype == torch.float32 and plan.shape == cost.shape
    for b, n in enumerate(lengths):
        # float32 against float64: observed at most 1.6e-7 apart over 600 documents.
        expected = np.zeros(cost.shape[1:])
        expected[:, :n] = naive_ipot(cost[b, :, :n].double().numpy(), beta) if n else 0.0
        np.testing.assert_allclose(plan[b].numpy(), expected, rtol=0, atol=1e-6)


def test_marginals():
    cost, mask, lengths = random_batch(1, batch=16, steps=24, slots=10)
    plan = ipot(cost, mask).double()
    steps = cost.shape[1]
    for b, n in enumerate(lengths):
        if n == 0:
            assert (plan[b] == 0).all()
            continue
        # b is updated last, so the column marginals are exact up to float32 rounding (observed
        # 2.3e-7 relative) ...
        torch.testing.assert_close(plan[b, :, :n].sum(0),
                                   torch.full((n,), 1 / n, dtype=torch.float64),
                                   rtol=1e-5, atol=0)
        # ... and the row marginals are 50 iterations from converged: observed within 0.36% of
        # 1/N over 600 random documents (median 0.02%).
        torch.testing.assert_close(plan[b].sum(1),
                                   torch.full((steps,), 1 / steps, dtype=torch.float64),
                                   rtol=5e-3, atol=0)
        assert (plan[b, :, n:] == 0).all()


@pytest.mark.parametrize(("iters", "tolerance"), [(50, 1e-2), (1000, 1e-3)])
def test_transport_cost_close_to_exact_ot(iters, tolerance):
    cost, mask, lengths = random_batch(2, batch=24, steps=6, slots=4)
    plan = ipot(cost, mask, iters=iters)
    for b, n in enumerate(lengths):
        if n == 0:
            continue
        block = cost[b, :, :n].double().numpy()
        got = float((plan[b, :, :n].double().numpy() * block).sum())
        exact = exact_ot(block)
        # Observed over 600 random documents (costs of about 1): 50 iterations (the paper's)
        # land at most 6.3e-3 above the optimum (median 1e-3), 1000 iterations at most 1.6e-4.
        # Slightly below it is possible too (by 3e-6), as the row marginals are not exact.
        assert exact - 1e-5 <= got <= exact + tolerance


def test_all_masked_document_gives_a_zero_plan():
    cost = torch.rand(3, 4, 2)
    mask = torch.tensor([[False, False], [True, False], [False, False]])
    plan = ipot(cost, mask)
    assert torch.isfinite(plan).all()
    assert (plan[0] == 0).all() and (plan[2] == 0).all()
    torch.testing.assert_close(plan[1, :, 0], torch.full((4,), 0.25))


def test_float32_under_autocast():
    cost, mask, _ = random_batch(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plan = ipot(cost.bfloat16(), mask)
    assert plan.dtype == torch.float32
    torch.testing.assert_close(plan, ipot(cost.bfloat16().float(), mask))


def test_no_autograd_graph():
    cost = torch.rand(2, 3, 2, requires_grad=True)
    assert not ipot(cost, torch.ones(2, 2, dtype=torch.bool)).requires_grad
