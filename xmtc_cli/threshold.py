"""A score threshold tuned on validation, kept in the checkpoint where it beats the set.

A label's score is its highest probability over the decoder's steps (`suggest.py`). Cutting
at a threshold t gives the set {labels scoring t or more}. After training, `tune_checkpoint`
finds the t that maximises validation micro-F1, exactly: the candidates are the scores
themselves, swept from high to low with running counts of predicted and correct labels
(micro-F1 = 2·TP / (predicted + gold)). Thresholds below MIN_THRESHOLD are not tried, so the
`rank_needed` best labels per document hold every candidate. When the best t scores higher than
the generated set on the same documents, the checkpoint's `extra["threshold"]` records
{"threshold", "valid_micro_f1", "set_micro_f1", "valid_docs"} (the documents it was tuned
on); `xmtc predict --threshold tuned` uses it. A model fused with a lexical scorer
(model.lexical) is tuned on what it predicts: its fused sets, and its labels ranked by the
fused distribution softmax(logits + bonus).
The generated set stays the default answer (the paper's).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from xmtc_cli.checkpoint import load_checkpoint, save_checkpoint
from xmtc_cli.data.processed import Split
from xmtc_cli.evaluation import lexical_prior
from xmtc_cli.inference import predict_ids
from xmtc_cli.lexical import gate_threshold
from xmtc_cli.model import Seq2SetModel
from xmtc_cli.suggest import rank_needed

MIN_THRESHOLD = 0.05


def best_threshold(ranked: list[list[tuple[int, float]]], gold: list[set[int]]
                   ) -> tuple[float, float] | None:
    """(t, micro-F1) of the threshold with the highest micro-F1 over documents whose labels
    and scores, best first, are `ranked`, against `gold`; None without a gold label. Ties go to
    the higher threshold (the smaller sets)."""
    total_gold = sum(len(g) for g in gold)
    if not total_gold:
        return None
    pairs = [(score, k in g) for r, g in zip(ranked, gold) for k, score in r
             if score >= MIN_THRESHOLD]
    if not pairs:
        return None
    scores = np.array([p[0] for p in pairs], dtype=np.float64)
    correct = np.array([p[1] for p in pairs], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    scores, correct = scores[order], correct[order]
    tp = np.cumsum(correct)
    predicted = np.arange(1, len(scores) + 1, dtype=np.float64)
    # Only the last of equal scores is a cut that keeps every label scoring t.
    last = np.append(scores[1:] != scores[:-1], True)
    f1 = np.where(last, 2 * tp / (predicted + total_gold), -1.0)
    i = int(np.argmax(f1))
    return float(scores[i]), float(f1[i])


def micro_f1(predicted: list[list[int]], gold: list[set[int]]) -> float:
    tp = sum(len(set(p) & g) for p, g in zip(predicted, gold))
    denominator = sum(len(set(p)) for p in predicted) + sum(len(g) for g in gold)
    return 2 * tp / denominator if denominator else 0.0


def tune(model: Seq2SetModel, split: Split, max_src_tokens: int, batch_size: int,
         device: torch.device, amp: bool, steps: int, num_labels: int,
         prior: sp.csr_matrix | None = None, weight: float = 0.0,
         gate: float | None = None) -> dict | None:
    """The tuned threshold record for `split` (gold as corpus label ids), or None where no
    threshold beats the generated set. A model fused with a lexical scorer gets the split's
    lexical scores `prior` [docs, L], its `weight` and `gate` (`predict_ids`): its sets and
    its ranked scores, softmax(logits + bonus), are those `xmtc predict` gives."""
    rank = min(rank_needed(0, MIN_THRESHOLD, steps), num_labels)
    sets: list[list[int]] = []
    ranked: list[list[tuple[int, float]]] = []
    for start in range(0, len(split), batch_size):
        idx = range(start, min(start + batch_size, len(split)))
        rows = None if split.features is None else split.features[start:idx.stop]
        scores = None if prior is None else prior[start:idx.stop]
        for pred in predict_ids(model, [split.tokens(i) for i in idx], max_src_tokens, device,
                                amp, rows, rank=rank, prior=scores, weight=weight, gate=gate):
            sets.append(pred.labels)
            ranked.append(pred.ranked)
    gold = [set(split.labels(i).tolist()) for i in range(len(split))]
    found = best_threshold(ranked, gold)
    if found is None:
        return None
    threshold, f1 = found
    baseline = micro_f1(sets, gold)
    if f1 <= baseline:
        return None
    return {"threshold": threshold, "valid_micro_f1": f1, "set_micro_f1": baseline,
            "valid_docs": len(split)}


def tune_checkpoint(path: str | Path, split: Split, batch_size: int, device: torch.device,
                    prior: sp.csr_matrix | None = None) -> dict | None:
    """Tune the checkpoint at `path` on `split` (its own data's validation split) and save it
    again with the record in `extra["threshold"]` (or without one where none beats the set).
    The weights are written back unchanged. `prior`: the split's lexical scores where the
    caller holds them already (training does; its index is the checkpoint's), else scored
    here with the checkpoint's index."""
    from xmtc_cli.inference import Predictor

    predictor = Predictor.from_checkpoint(str(path), str(device))
    recipe = predictor.recipe
    fused = {}
    if predictor.lexical_weight:  # model.lexical: tuned on the fused choices and scores
        fused = {"prior": lexical_prior(predictor.lexical, split) if prior is None else prior,
                 "weight": predictor.lexical_weight, "gate": gate_threshold(recipe.model)}
    record = tune(predictor.model, split, recipe.data.max_src_tokens, batch_size,
                  predictor.device, recipe.train.amp, predictor.steps, len(predictor.labels),
                  **fused)
    state, meta = load_checkpoint(path)
    extra = {k: v for k, v in meta.extra.items() if k != "threshold"}
    if record is not None:
        extra["threshold"] = record
    save_checkpoint(path, state, dataclasses.replace(meta, extra=extra))
    return record
