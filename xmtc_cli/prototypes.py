"""Prototype initialisation of the output layer (beyond the paper; docs/design.md §10).

A label seen in two training documents gets two gradient signals an epoch; starting its output
row as random noise, it is rarely generated correctly before training ends. In embedding-based
XMC a label is better started from the centroid of its training documents' representations
(ViXML, Ortego et al. 2025): then a rare label begins as a nearest-centroid classifier.

Here the representation is the model's own: u_1(d), the input of the output layer's last,
V-wide linear map at the first decoding step of document d (with its side features, if any),
computed by the freshly initialised network in eval mode (no dropout). A corpus label l with
training documents D_l gets

    w_l = (κ / σ) · (p_l − ū) / ‖p_l − ū‖,   b_l = −w_l · ū,
    p_l = mean of u_1(d) over D_l,   ū = mean over all d,   σ² = mean of ‖u_1(d) − ū‖²

so that its logit is κ (‖u − ū‖ / σ) cos(u − ū, p_l − ū): the centred prototype's cosine,
about κ for a typical document pointing its way (κ = `SCALE`). Labels without training
documents and the special symbols keep their random rows. Nothing random is drawn, and the
rows are set once, before the first step (never on `--resume`): a run stays reproducible.
With several processes rank 0 sets them and the others receive its weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xmtc_cli.data.batching import Batcher
from xmtc_cli.labelspace import NUM_SPECIALS

SCALE = 5.0
"""κ: the logit a typical centred document gets from a prototype pointing its way."""


@torch.no_grad()
def first_step_features(model, batcher: Batcher, batch_size: int,
                        device: torch.device) -> tuple[Tensor, Tensor, Tensor, float]:
    """One pass over the training documents: per-label sums of u_1 and what centring needs.

    Returns (sums [V, F] float32, counts [V] float32, mean ū [F], spread), on `device`: sums
    and counts are indexed by output index (the NUM_SPECIALS specials count 0), and spread is
    the root-mean-square ‖u_1 − ū‖.
    """
    was_training = model.training
    model.eval()
    try:
        sums = counts = total = None
        squares, docs = 0.0, 0
        for batch in batcher.epoch(batch_size, seed=None):
            batch = batch.to(device)
            memories, state = model.encode(batch.src, batch.lengths, batch.features)
            u = next(model.decode(memories, state, 1)).features.float()  # (B, F)
            if sums is None:
                outputs = model.last_layer().weight.size(0)
                sums = u.new_zeros(outputs, u.size(1))  # (V, F)
                counts = u.new_zeros(outputs)  # (V,)
                total = u.new_zeros(u.size(1))  # (F,)
            rows, slots = torch.nonzero(batch.gold >= NUM_SPECIALS, as_tuple=True)  # (P,) pairs
            labels = batch.gold[rows, slots]  # (P,)
            sums.index_add_(0, labels, u[rows])
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=u.dtype))
            total += u.sum(0)
            squares += float(u.square().sum())
            docs += len(batch)
        mean = total / max(docs, 1)
        # E‖u − ū‖² = E‖u‖² − ‖ū‖², clamped against rounding.
        spread = max(squares / max(docs, 1) - float(mean.square().sum()), 0.0) ** 0.5
        return sums, counts, mean, spread
    finally:
        model.train(was_training)


@torch.no_grad()
def init_output_prototypes(model, batcher: Batcher, batch_size: int, device: torch.device,
                           scale: float = SCALE) -> int:
    """Set the output rows of every label with training documents to its centred prototype
    (module docstring); returns how many rows were set."""
    sums, counts, mean, spread = first_step_features(model, batcher, batch_size, device)
    seen = torch.nonzero(counts > 0, as_tuple=True)[0]  # (L',) output indices
    directions = sums[seen] / counts[seen].unsqueeze(1) - mean  # (L', F)
    norms = directions.norm(dim=1)  # (L',)
    # A label whose documents average to ū exactly has no direction: it keeps its random row.
    usable = norms > 1e-12
    index = seen[usable]  # (L'',)
    if index.numel() == 0 or spread <= 0:
        return 0
    weight = (scale / spread) * directions[usable] / norms[usable].unsqueeze(1)  # (L'', F)
    last = model.last_layer()
    last.weight[index] = weight.to(last.weight.dtype)
    last.bias[index] = (-(weight @ mean)).to(last.bias.dtype)
    return int(index.numel())
