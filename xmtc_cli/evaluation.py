"""Scoring label sets: from prediction files, or by running a checkpoint over processed data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xmtc_cli.data.processed import UNK, load_processed
from xmtc_cli.errors import DataError
from xmtc_cli.inference import Predictor, predict_ids
from xmtc_cli.labelfiles import read_label_file
from xmtc_cli.metrics import evaluate


def evaluate_files(predictions: str | Path, gold: str | Path) -> dict[str, float]:
    """Metrics of a predictions file against a gold file, one document per line each.

    Macro-F1 averages over the labels that occur in either file.
    """
    pred_sets = read_label_file(predictions)
    gold_sets = read_label_file(gold)
    if len(pred_sets) != len(gold_sets):
        raise DataError(
            f"{predictions} has {len(pred_sets)} lines but {gold} has {len(gold_sets)}",
            "both files need one line per document, in the same order",
        )
    return evaluate(pred_sets, gold_sets)


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, split: str = "test",
                        device: str = "auto", batch_size: int = 64) -> dict[str, float]:
    """Metrics of a checkpoint on a split of processed data, compared by label name.

    Besides `macro_f1` (over labels in gold or predictions) the result holds
    `macro_f1_all_labels`, averaged over the model's whole label vocabulary as the paper's code
    does. The data may come from another preprocessing run: tokens and labels are matched by
    name, so only the tokenizer must agree.
    """
    predictor = Predictor.from_checkpoint(str(checkpoint), device)
    data = load_processed(data_dir)
    if split not in data.splits:
        raise DataError(
            f"{data_dir} has no {split!r} split (it has {', '.join(data.splits)})",
            "choose --split " + " or --split ".join(data.splits),
        )
    part = data.splits[split]
    ckpt_ids = predictor.token_ids
    remap = np.array([ckpt_ids.get(t, UNK) for t in data.tokens], dtype=np.int64)
    order = np.argsort(-np.diff(part.token_offsets), kind="stable")
    predicted: list[list[str]] = [[] for _ in range(len(part))]
    max_src = predictor.recipe.data.max_src_tokens
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        docs = [remap[part.tokens(i)] for i in idx]
        for i, p in zip(idx, predict_ids(predictor.model, docs, max_src, predictor.device,
                                         predictor.recipe.train.amp)):
            predicted[i] = [predictor.labels[k] for k in p.labels]
    gold = [[data.labels[k] for k in part.labels(i)] for i in range(len(part))]
    metrics = evaluate(predicted, gold)
    metrics["macro_f1_all_labels"] = evaluate(predicted, gold, predictor.labels)["macro_f1"]
    return metrics
