"""The optimiser: Adam, with torch's fused kernel where it has one for the device.

On the CPU torch's default Adam is its single-tensor loop: a handful of element-wise kernels per
parameter tensor, each a pass over memory. The fused kernel updates moments and weights in one
pass per tensor; at AmazonCat-13K's shape it makes the optimiser step about ten times faster and
the training step about a fifth faster (BENCHMARKS.md, "Speed on the CPU"). Its arithmetic is
Adam's, in another order of floating-point operations: weights agree with the loop's to float32
rounding, not bit for bit, so a run keeps one implementation from start to resume (the state
file holds the same moments and step counts either way; only the flag in the optimiser's
param group decides, and `RunFolder.load_state` keeps the optimiser's own groups).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")
"""Devices on which torch's Adam has a fused kernel (torch >= 2.4 for the CPU)."""


def build_adam(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
               fused: bool = True) -> torch.optim.Adam:
    """Adam over `params`; with `fused`, torch's fused kernel when every parameter is a float
    tensor on a device that has one, else (an older torch, another device) the default loop."""
    params = list(params)
    if fused and _can_fuse(params):
        try:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError, TypeError):  # this torch has no such kernel
            pass
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _can_fuse(params: list[torch.nn.Parameter]) -> bool:
    return bool(params) and all(
        p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params
    )


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` steps with the fused kernel."""
    return all(bool(g.get("fused")) for g in optimizer.param_groups)
