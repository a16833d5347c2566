"""What tests and benchmarks share, kept in one place: the tiny recipe and the reference IPOT.

Tests import it directly (pytest puts tests/ on the path); benchmarks put tests/ on `sys.path`
first, as tests do for benchmarks/tail_corpus.py. Nothing here imports pytest or xmtc_cli.
"""

from __future__ import annotations

import numpy as np

# Small enough that an epoch over the 180 training documents takes a fraction of a second, large
# enough that the model predicts non-empty, partly right label sets after three epochs.
TINY_RECIPE = """\
name: tiny
data:
  dir: {data}
  max_src_tokens: 40
model:
  hidden_size: 16
  encoder_layers: 1
  light_conv: true
  conv_kernels: [3, 3]
loss:
  ot_weight: 1
train:
  epochs: {epochs}
  batch_size: 16
  lr: 1.0e-2
"""


def naive_ipot(cost: np.ndarray, beta: float = 1.0, iters: int = 50) -> np.ndarray:
    """IPOT as docs/design.md §3.2 and the published `ipot_WD` write it, on one document's [N, n]
    cost block, in NumPy (float64 for float64 input), loop for loop."""
    steps, n = cost.shape
    kernel = np.exp(-cost / beta)
    plan = np.ones((steps, n))
    b = np.ones(n) / n
    for _ in range(iters):
        q = kernel * plan
        a = 1 / (steps * (q @ b))
        b = 1 / (n * (q.T @ a))
        plan = a[:, None] * q * b[None, :]
    return plan
