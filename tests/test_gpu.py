"""CUDA: the core gives the CPU's answers on a GPU, and bf16 training steps stay finite.

Opt-in (`python -m pytest -m gpu`); skipped where torch sees no CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmtc_cli.config import recipe_from_dict
from xmtc_cli.data.batching import Batch
from xmtc_cli.labelspace import NUM_SPECIALS
from xmtc_cli.losses import assign, build_criterion, ipot
from xmtc_cli.model import ModelSizes, build_model
from xmtc_cli.training import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _batch(device, batch=6, width=70, steps=5, labels=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, 50, (batch, width), generator=g)
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    gold = torch.full((batch, 3), -1)
    for b in range(batch):
        n = int(torch.randint(0, 4, (1,), generator=g))
        gold[b, :n] = torch.randperm(labels, generator=g)[:n] + NUM_SPECIALS
    return src.to(device), lengths, gold.to(device)


def test_assign_and_ipot_agree_with_the_cpu():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(8, 6, 4, generator=g)
    n = torch.tensor([0, 1, 2, 3, 4, 4, 2, 1])
    for scheme in ("all", "first-n"):
        assert torch.equal(assign(scores.cuda(), n.cuda(), scheme).cpu(), assign(scores, n, scheme))
    mask = torch.arange(4) < n.unsqueeze(1)
    cost = torch.rand(8, 6, 4, generator=g)
    torch.testing.assert_close(ipot(cost.cuda(), mask.cuda()).cpu(), ipot(cost, mask),
                               atol=1e-6, rtol=1e-5)


@pytest.fixture
def no_tf32(monkeypatch):
    """Full float32 on the GPU too: cuDNN convolutions and RNNs default to TF32 on Ampere+."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize("kind", ["matching", "cross-entropy"])
def test_model_and_loss_match_the_cpu_in_float32(kind, no_tf32):
    recipe = recipe_from_dict({"data": {"dir": "x"},
                               "model": {"hidden_size": 32, "dropout": 0.0},
                               "loss": {"kind": kind, "ot_weight": 8 if kind == "matching" else 0}})
    torch.manual_seed(0)
    model = build_model(recipe.model, recipe.loss, ModelSizes(50, 12, 5, 16, 16)).eval()
    criterion = build_criterion(recipe.loss)
    src, lengths, gold = _batch("cpu")
    cpu_logits = model(src, lengths, gold)
    cpu_loss, _ = criterion(cpu_logits, gold, model.label_embedding.weight)
    model.cuda()
    gpu_logits = model(src.cuda(), lengths, gold.cuda())
    gpu_loss, _ = criterion(gpu_logits, gold.cuda(), model.label_embedding.weight)
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, atol=1e-4, rtol=1e-4)
    labels, _ = model.generate(src.cuda(), lengths)
    assert torch.equal(labels.cpu(), model.cpu().generate(src, lengths)[0])


@pytest.mark.parametrize("kind", ["matching", "cross-entropy"])
def test_bf16_training_steps_are_finite(kind):
    recipe = recipe_from_dict({"data": {"dir": "x"}, "model": {"hidden_size": 32},
                               "loss": {"kind": kind, "ot_weight": 8 if kind == "matching" else 0}})
    device = torch.device("cuda")
    trainer = Trainer.build(recipe, ModelSizes(50, 12, 5, 16, 16), device, total_steps=3)
    assert trainer.train.amp  # bf16 autocast on CUDA: the recipe's default
    for step in range(3):
        src, lengths, gold = _batch(device, seed=step)
        loss, _ = trainer.step(Batch(src, lengths, gold, np.arange(len(src))), step)
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in trainer.model.parameters()
                   if p.grad is not None)
