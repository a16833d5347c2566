"""Adam with torch's fused kernel (xmtc_cli.optim): the update is Adam's, a run with it ends
where a run with the per-tensor loop ends (to float32 rounding), old train states still load,
and without a kernel it falls back to the loop."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import threads, write_recipe
from safetensors.torch import load_file

from xmtc_cli.config import load_recipe
from xmtc_cli.optim import build_adam, is_fused
from xmtc_cli.run import STATE_FILE, RunFolder, TrainState
from xmtc_cli.training import fit

pytestmark = pytest.mark.usefixtures("single_thread")


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3, generator=g)),
            torch.nn.Parameter(torch.randn(7, generator=g))]


def test_the_cpu_gets_the_fused_kernel_and_fused_false_the_loop():
    assert is_fused(build_adam(_params(), 1e-3, 0.0))
    assert not is_fused(build_adam(_params(), 1e-3, 0.0, fused=False))


def test_without_a_kernel_it_falls_back_to_the_loop(monkeypatch):
    real = torch.optim.Adam

    def no_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be CUDA tensors")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    optimizer = build_adam(_params(), 1e-3, 0.0)
    assert isinstance(optimizer, real) and not is_fused(optimizer)


@pytest.mark.parametrize("fused", [True, False])
def test_three_steps_are_adams_update_computed_by_hand(fused):
    lr, wd, (b1, b2), eps = 0.01, 0.1, (0.9, 0.999), 1e-8
    params = _params()
    optimizer = build_adam(params, lr, wd, fused=fused)
    want = [p.detach().clone().double() for p in params]
    m = [torch.zeros_like(w) for w in want]
    v = [torch.zeros_like(w) for w in want]
    g = torch.Generator().manual_seed(1)
    for t in range(1, 4):
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        optimizer.step()
        for i, grad in enumerate(grads):
            d = grad.double() + wd * want[i]  # L2 weight decay, as torch's Adam adds it
            m[i] = b1 * m[i] + (1 - b1) * d
            v[i] = b2 * v[i] + (1 - b2) * d * d
            step = lr / (1 - b1 ** t)
            want[i] = want[i] - step * m[i] / ((v[i] / (1 - b2 ** t)).sqrt() + eps)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach().double(), w, rtol=0, atol=1e-6)


def test_a_fused_run_ends_where_a_loop_run_ends_to_float_rounding(tiny_data, tmp_path):
    recipe_file = write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=2)
    weights = {}
    for fused in (True, False):
        recipe = load_recipe(recipe_file, [f"train.fused_adam={str(fused).lower()}"])
        with threads(1):
            fit(recipe, tmp_path / f"run-{fused}", device="cpu")
        weights[fused] = load_file(tmp_path / f"run-{fused}" / "last.safetensors")
    assert weights[True].keys() == weights[False].keys()
    worst = max((weights[True][k] - weights[False][k]).abs().max().item() for k in weights[True])
    assert worst < 1e-3  # 22 steps at lr 1e-2 of two orders of float32 operations
    # ... and they are two implementations, not one: the test compares something.
    assert any(not torch.equal(weights[True][k], weights[False][k]) for k in weights[True])


def test_a_state_saved_by_the_loop_resumes_into_the_fused_kernel_and_stays_fused(tmp_path):
    model = torch.nn.Linear(3, 2)
    loop = build_adam(model.parameters(), 1e-2, 0.0, fused=False)
    model(torch.randn(4, 3)).sum().backward()
    loop.step()
    recipe = load_recipe_for_state(tmp_path)
    folder = RunFolder.create(tmp_path / "run", recipe)
    folder.save_state(TrainState(epoch=1, step=1), model, loop, recipe)
    saved = load_file(tmp_path / "run" / STATE_FILE)
    assert {k.split(".", 2)[2] for k in saved if k.startswith("optim.")} == {
        "step", "exp_avg", "exp_avg_sq"}

    fused = build_adam(model.parameters(), 1e-2, 0.0, fused=True)
    folder.load_state(model, fused, torch.device("cpu"))
    folder.close()
    assert is_fused(fused)
    for pid, slots in loop.state_dict()["state"].items():
        for key, value in slots.items():
            got = fused.state_dict()["state"][pid][key]
            assert torch.equal(torch.as_tensor(got).float(), torch.as_tensor(value).float())
    model(torch.randn(4, 3)).sum().backward()
    fused.step()  # the loaded step counts and moments are in the form the kernel needs
    assert all(math.isfinite(p.abs().sum().item()) for p in model.parameters())


def load_recipe_for_state(tmp_path):
    from xmtc_cli.config import recipe_from_dict

    return recipe_from_dict({"data": {"dir": str(tmp_path)}})
