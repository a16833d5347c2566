"""Validation that does not dominate a run: train.valid_every skips epochs (never the last),
train.valid_docs scores a fixed subset of the validation split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_recipe

from xmtc_cli.config import load_recipe
from xmtc_cli.data.builtin import load_data
from xmtc_cli.evaluation import evaluate_split, lexical_prior
from xmtc_cli.inference import Predictor
from xmtc_cli.lexical import LexicalIndex
from xmtc_cli.training import fit, validation_subset

pytestmark = pytest.mark.usefixtures("single_thread")


def _lines(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_subset_is_drawn_once_from_the_seed_and_keeps_the_documents_in_order(tiny_data):
    data = load_data(str(tiny_data.processed))
    valid = data.splits["valid"]
    a = validation_subset(data, 7, seed=3).splits["valid"]
    b = validation_subset(data, 7, seed=3).splits["valid"]
    c = validation_subset(data, 7, seed=4).splits["valid"]
    assert len(a) == 7
    assert np.array_equal(a.token_ids, b.token_ids) and np.array_equal(a.label_ids, b.label_ids)
    assert not np.array_equal(a.token_offsets, c.token_offsets) or not np.array_equal(
        a.token_ids, c.token_ids)
    # Every document of the subset is a document of the split, in the split's order.
    docs = [tuple(valid.tokens(i)) for i in range(len(valid))]
    positions = [docs.index(tuple(a.tokens(i))) for i in range(len(a))]
    assert positions == sorted(positions)
    assert all(np.array_equal(a.labels(k), valid.labels(i)) for k, i in enumerate(positions))
    assert validation_subset(data, None, 0) is data
    assert validation_subset(data, len(valid), 0) is data


def test_valid_every_validates_every_kth_epoch_and_the_last_and_only_those_can_be_best(
        tiny_data, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=5),
                         ["train.valid_every=2"])
    result = fit(recipe, tmp_path / "run", device="cpu")
    lines = _lines(tmp_path / "run")
    assert [line["valid"] is not None for line in lines] == [False, True, False, True, True]
    assert not any(line["best"] for line in lines if line["valid"] is None)
    assert result.best_epoch in (2, 4, 5)
    best = max((line for line in lines if line["valid"]), key=lambda x: x["valid"]["micro_f1"])
    assert result.best_epoch == best["epoch"]


def test_valid_docs_scores_the_subset_as_evaluating_it_directly_does(tiny_data, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=1),
                         ["train.valid_docs=9"])
    fit(recipe, tmp_path / "run", device="cpu")
    reported = _lines(tmp_path / "run")[-1]["valid"]
    model = Predictor.from_checkpoint(str(tmp_path / "run" / "last.safetensors"), "cpu").model
    subset = validation_subset(load_data(str(tiny_data.processed)), 9, recipe.train.seed)
    with torch.no_grad():
        direct = evaluate_split(model, subset, "valid", recipe, torch.device("cpu"))
    assert reported == pytest.approx(direct)
    full = evaluate_split(model, load_data(str(tiny_data.processed)), "valid", recipe,
                          torch.device("cpu"))
    assert reported != pytest.approx(full)  # it is the subset's score, not the split's


def test_valid_docs_with_the_lexical_scorer_scores_the_subset_with_its_own_scores(
        tiny_data, tmp_path):
    """The validation prior's rows are those of the documents decoded: with train.valid_docs,
    the subset's kNN scores, not the first rows of the whole split's."""
    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=1),
                         ["train.valid_docs=9", "model.lexical=knn",
                          "model.lexical_weights=[4]", "model.lexical_gate=fused",
                          "model.lexical_centroid=0.5"])
    fit(recipe, tmp_path / "run", device="cpu")
    reported = _lines(tmp_path / "run")[-1]["valid"]
    model = Predictor.from_checkpoint(str(tmp_path / "run" / "last.safetensors"), "cpu").model
    data = load_data(str(tiny_data.processed))
    subset = validation_subset(data, 9, recipe.train.seed)
    m = recipe.model
    index = LexicalIndex.build(data.splits["train"], len(data.tokens), data.num_labels,
                               m.lexical_k, m.lexical_power, m.lexical_max_df,
                               m.lexical_centroid, m.lexical_centroid_terms)
    with torch.no_grad():
        direct = evaluate_split(model, subset, "valid", recipe, torch.device("cpu"),
                                prior=lexical_prior(index, subset.splits["valid"]))
    assert {k: v for k, v in reported.items() if k in direct} == pytest.approx(direct)


def test_the_threshold_is_tuned_on_the_documents_validation_scores(tiny_data, tmp_path,
                                                                    monkeypatch):
    """With train.valid_docs, the threshold tuned after training decodes that subset, not the
    whole validation split."""
    import xmtc_cli.threshold as threshold

    tuned_on = []
    real = threshold.tune_checkpoint

    def spy(path, split, *args):
        tuned_on.append(split)
        return real(path, split, *args)

    monkeypatch.setattr(threshold, "tune_checkpoint", spy)
    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=1),
                         ["train.valid_docs=9"])
    fit(recipe, tmp_path / "run", device="cpu")
    subset = validation_subset(load_data(str(tiny_data.processed)), 9, recipe.train.seed)
    (split,) = tuned_on
    assert len(split) == 9
    assert np.array_equal(split.token_ids, subset.splits["valid"].token_ids)
    assert np.array_equal(split.label_ids, subset.splits["valid"].label_ids)

