"""The validation-tuned threshold: exact against a brute-force sweep, recorded only where it
beats the generated set, and consistent with what training measured."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from xmtc_cli.checkpoint import load_checkpoint, read_meta
from xmtc_cli.data.processed import load_processed
from xmtc_cli.threshold import MIN_THRESHOLD, best_threshold, micro_f1, tune_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


def _brute(ranked, gold):
    best = None
    candidates = sorted({s for r in ranked for _, s in r if s >= MIN_THRESHOLD}, reverse=True)
    for t in candidates:
        f1 = micro_f1([[k for k, s in r if s >= t] for r in ranked], gold)
        if best is None or f1 > best[1]:
            best = (t, f1)
    return best


def test_best_threshold_equals_a_brute_force_sweep():
    rng = np.random.default_rng(0)
    for _ in range(200):
        docs, labels = int(rng.integers(1, 6)), int(rng.integers(1, 8))
        ranked, gold = [], []
        for _ in range(docs):
            scores = np.round(rng.random(labels), 1)  # rounding makes ties
            order = np.argsort(-scores, kind="stable")
            ranked.append([(int(k), float(scores[k])) for k in order])
            gold.append({int(k) for k in np.flatnonzero(rng.random(labels) < 0.3)})
        want = _brute(ranked, gold) if any(gold) else None
        got = best_threshold(ranked, gold)
        if want is None:
            assert got is None or not any(gold)
        else:
            assert got[1] == pytest.approx(want[1]) and got[0] == want[0]


def test_a_hand_computed_threshold():
    # Doc 1: a 0.9 (gold), b 0.6, c 0.2 (gold); doc 2: b 0.7 (gold), a 0.1.
    ranked = [[(0, 0.9), (1, 0.6), (2, 0.2)], [(1, 0.7), (0, 0.1)]]
    gold = [{0, 2}, {1}]
    # t = 0.7: 2 TP of 2 predicted, 3 gold: F1 = 4/5; t = 0.2: 3 TP of 4: 6/7, the best.
    assert best_threshold(ranked, gold) == (0.2, pytest.approx(6 / 7))
    assert best_threshold(ranked, [set(), set()]) is None


def test_tuning_keeps_the_weights_and_agrees_with_training(tiny_run, tiny_data, tmp_path):
    copy = tmp_path / "model.safetensors"
    shutil.copy(tiny_run.best, copy)
    before, meta = load_checkpoint(copy)
    data = load_processed(tiny_data.processed)
    record = tune_checkpoint(copy, data.splits["valid"], 16, torch.device("cpu"))
    after, new = load_checkpoint(copy)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert new.extra.get("threshold") == record
    assert read_meta(tiny_run.best).extra.get("threshold") == record  # training tuned the same
    assert {k: v for k, v in new.extra.items() if k != "threshold"} == \
        {k: v for k, v in meta.extra.items() if k != "threshold"}
    if record is not None:
        assert record["valid_micro_f1"] > record["set_micro_f1"]
        assert record["set_micro_f1"] == pytest.approx(meta.extra["valid"]["micro_f1"])
        assert MIN_THRESHOLD <= record["threshold"] <= 1


def test_predict_threshold_tuned(tiny_run, cli, tmp_path):
    docs = tmp_path / "d.txt"
    docs.write_text("rocket orbit\nwhale reef\n")
    tuned = read_meta(tiny_run.best).extra.get("threshold")
    result = cli("predict", tiny_run.best, docs, "--threshold", "tuned")
    if tuned is None:
        assert result.code == 2 and "holds no tuned threshold" in result.err
    else:
        assert result.code == 0, result.err
        same = cli("predict", tiny_run.best, docs, "--threshold", str(tuned["threshold"]))
        assert same.out == result.out
