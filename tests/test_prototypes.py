"""Prototype initialisation of the output layer (model.output_init=prototype), against a
per-document oracle, and through training: resumable and reproducible."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import threads, write_recipe
from test_training import StopAfter, assert_same_run

from xmtc_cli.config import load_recipe
from xmtc_cli.data.batching import Batcher
from xmtc_cli.data.builtin import load_data
from xmtc_cli.labelspace import NUM_SPECIALS
from xmtc_cli.prototypes import SCALE, init_output_prototypes
from xmtc_cli.training import Trainer, fit, model_sizes, resolve_recipe

pytestmark = pytest.mark.usefixtures("single_thread")

PROTOTYPE = ["model.output_init=prototype"]


@pytest.fixture(scope="module")
def recipe_file(tiny_data, tmp_path_factory):
    return write_recipe(tmp_path_factory.mktemp("proto") / "tiny.yaml", tiny_data.processed)


def fresh(recipe_file, overrides=()):
    """The model `fit` builds for the tiny recipe, before any step, and its training batcher."""
    data = load_data(load_recipe(recipe_file).data.dir)
    recipe = resolve_recipe(load_recipe(recipe_file, list(overrides)), data)
    trainer = Trainer.build(recipe, model_sizes(recipe, data), torch.device("cpu"), 1,
                            data.token_embeddings, data.label_embeddings)
    batcher = Batcher(data.splits["train"], recipe.data.max_src_tokens, recipe.data.max_labels,
                      data.num_labels)
    return trainer.model, batcher, data


def oracle_rows(model, batcher):
    """The rows the module docstring defines, one document at a time, in float64."""
    model.eval()
    features, labels = [], []
    with torch.no_grad():
        for i in range(len(batcher.split)):
            batch = batcher.batch(np.array([i]))
            memories, state = model.encode(batch.src, batch.lengths)
            features.append(next(model.decode(memories, state, 1)).features[0].double())
            labels.append([int(g) for g in batch.gold[0] if g >= NUM_SPECIALS])
    model.train()
    u = torch.stack(features)  # (D, F)
    mean = u.mean(0)
    spread = (u - mean).norm(dim=1).square().mean().sqrt()
    rows = {}
    for label in sorted({g for gold in labels for g in gold}):
        docs = [d for d, gold in enumerate(labels) if label in gold]
        direction = u[docs].mean(0) - mean
        rows[label] = SCALE / spread * direction / direction.norm()
    return rows, mean, u, labels, spread


def test_rows_are_the_centred_prototypes_of_the_labels_documents(recipe_file):
    model, batcher, data = fresh(recipe_file)
    before = {k: v.clone() for k, v in model.output.state_dict().items()}
    rows, mean, _, _, _ = oracle_rows(model, batcher)
    assert init_output_prototypes(model, batcher, 7, torch.device("cpu")) == len(rows)
    weight, bias = model.output.weight.double(), model.output.bias.double()
    for label, row in rows.items():
        torch.testing.assert_close(weight[label], row, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bias[label], -(row @ mean), rtol=1e-4, atol=1e-5)
    # The specials, and labels no training document has, keep their random rows.
    untouched = sorted(set(range(weight.size(0))) - set(rows))
    assert untouched[:NUM_SPECIALS] == list(range(NUM_SPECIALS))
    assert torch.equal(model.output.weight[untouched], before["weight"][untouched])
    assert torch.equal(model.output.bias[untouched], before["bias"][untouched])
    assert model.training  # handed back in the mode it came in


def test_each_label_scores_its_own_documents_up_and_the_others_down(recipe_file):
    """At the first step, a label's mean logit over its n own documents is κ ‖p − ū‖ / spread
    (its row points along p − ū), and over the D − n others exactly −n / (D − n) times that
    (ū mixes the two means)."""
    model, batcher, _ = fresh(recipe_file)
    _, mean, u, labels, spread = oracle_rows(model, batcher)
    init_output_prototypes(model, batcher, 16, torch.device("cpu"))
    # W u + b with b = −W ū (checked above), in float64.
    logits = (u - mean) @ model.output.weight.detach().double().t()  # (D, V)
    for label in sorted({g for gold in labels for g in gold}):
        own = torch.tensor([label in gold for gold in labels])
        n = int(own.sum())
        want = SCALE * (u[own].mean(0) - mean).norm() / spread
        torch.testing.assert_close(logits[own, label].mean(), want, rtol=1e-4, atol=1e-4)
        if n < len(labels):
            others = logits[~own, label].mean()
            torch.testing.assert_close(others, -n / (len(labels) - n) * want, rtol=1e-3,
                                       atol=1e-4)


def test_the_rows_do_not_depend_on_the_batch_size(recipe_file):
    a, batcher, _ = fresh(recipe_file)
    b, _, _ = fresh(recipe_file)
    init_output_prototypes(a, batcher, 3, torch.device("cpu"))
    init_output_prototypes(b, batcher, 64, torch.device("cpu"))
    torch.testing.assert_close(a.output.weight, b.output.weight, rtol=1e-4, atol=1e-5)


def test_the_bottleneck_initialises_its_last_map(recipe_file):
    model, batcher, _ = fresh(recipe_file, ["model.bottleneck=8"])
    rows, _, _, _, _ = oracle_rows(model, batcher)
    init_output_prototypes(model, batcher, 16, torch.device("cpu"))
    last = model.output[-1].weight.double()
    for label, row in rows.items():
        torch.testing.assert_close(last[label], row, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def prototype_run(recipe_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("proto-run") / "run"
    with threads(1):
        fit(load_recipe(recipe_file, PROTOTYPE), run, device="cpu")
    return run


def test_training_starts_from_the_prototypes(recipe_file, prototype_run, tmp_path):
    """The first step's loss is lower than from random rows: the fit used the switch."""
    losses = {}
    for name, overrides in (("random", []), ("prototype", PROTOTYPE)):
        with threads(1):
            fit(load_recipe(recipe_file, [*overrides, "train.max_steps=1", "model.dropout=0"]),
                tmp_path / name, device="cpu")
        losses[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text())["train_loss"]
    assert losses["prototype"] < losses["random"]


def test_a_resumed_prototype_run_ends_with_the_same_weights(recipe_file, prototype_run,
                                                            tmp_path):
    """The rows are set once, when the run starts: a resume must not set them again."""
    recipe = load_recipe(recipe_file, PROTOTYPE)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "run", device="cpu", callback=StopAfter(epoch=1))
    fit(recipe, tmp_path / "run", device="cpu", resume=True)
    assert_same_run(tmp_path / "run", prototype_run)
