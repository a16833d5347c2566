"""Products with a label-wide matrix, a block of its rows at a time (docs/design.md §12).

The output layer's last linear map and the OT term multiply a few dozen rows (B, or B·N) by a
matrix with a row per label (V = 13K-670K). On the CPU, MKL's product with all V rows at once
ran 20-30% slower than the same product taken 1024 rows at a time, each block written in place
into its columns of the result: measured at V = 13K, 100K and 670K with M = 8-184 rows, the
results bitwise equal (each entry is the same dot product). Elsewhere (a GPU, another dtype,
autocast, a product autograd must see) these are the plain products.

Shapes: M rows of the small operand, V rows of the label-wide one, F its width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 1024


def _plain(*tensors: Tensor) -> bool:
    """Whether to leave the product to torch: not float32 on the CPU, under autocast, or
    recorded by autograd (the blocks write into a tensor in place)."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 or t.layout != torch.strided
           for t in tensors):
        return True
    if torch.is_autocast_enabled("cpu"):
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias): x [..., F], weight [V, F], bias [V] -> [..., V]."""
    rows = weight.size(0)
    if rows <= 2 * BLOCK or _plain(x, weight, *([bias] if bias is not None else [])):
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.size(-1))  # (M, F)
    out = flat.new_empty(flat.size(0), rows)  # (M, V)
    for start in range(0, rows, BLOCK):
        block = slice(start, start + BLOCK)
        if bias is None:
            torch.mm(flat, weight[block].t(), out=out[:, block])
        else:
            torch.addmm(bias[block], flat, weight[block].t(), out=out[:, block])
    return out.view(*x.shape[:-1], rows)


def outer(grad: Tensor, x: Tensor) -> Tensor:
    """gradᵀ x, the weight gradient of a linear map: grad [M, V], x [M, F] -> [V, F]."""
    rows = grad.size(1)
    if rows <= 2 * BLOCK or _plain(grad, x):
        return grad.t() @ x
    out = x.new_empty(rows, x.size(1))  # (V, F)
    for start in range(0, rows, BLOCK):
        block = slice(start, start + BLOCK)
        torch.mm(grad[:, block].t(), x, out=out[block])
    return out


def expectation(probs: Tensor, table: Tensor) -> Tensor:
    """probs @ table: probs [..., V], table [V, E] -> [..., E]. With table a constant, the
    gradient of probs, grad @ tableᵀ [..., V], is taken a block of labels at a time."""
    if table.requires_grad and torch.is_grad_enabled():
        return probs @ table
    return _Expectation.apply(probs, table)


class _Expectation(torch.autograd.Function):

    @staticmethod
    def forward(ctx, probs: Tensor, table: Tensor) -> Tensor:
        ctx.save_for_backward(table)
        return probs @ table

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (table,) = ctx.saved_tensors
        return linear(grad, table), None
