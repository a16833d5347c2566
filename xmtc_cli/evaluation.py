"""Scoring label sets: from prediction files, or by running a checkpoint over processed data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from xmtc_cli.config import Recipe
from xmtc_cli.data.processed import UNK_ID, ProcessedData, load_processed
from xmtc_cli.errors import DataError
from xmtc_cli.inference import Predictor, predict_split
from xmtc_cli.labelfiles import read_label_file
from xmtc_cli.metrics import score_label_sets
from xmtc_cli.model import Seq2SetModel


def evaluate_split(model: Seq2SetModel, data: ProcessedData, split: str, recipe: Recipe,
                   device: torch.device,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Generate label sets for a split of processed data and score them against its gold sets
    (label ids of the model's own data: training's validation)."""
    part = data.splits[split]
    predicted = predict_split(model, part, recipe.data.max_src_tokens,
                              recipe.train.eval_batch_size, device, amp=recipe.train.amp,
                              progress=progress)
    gold = [part.labels(i).tolist() for i in range(len(part))]
    return score_label_sets(predicted, gold)


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
    return score_label_sets(pred_sets, gold_sets)


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
    # The data's token ids, read as the checkpoint's: the same tokenizer, maybe another vocabulary.
    remap = np.array([predictor.token_ids.get(t, UNK_ID) for t in data.tokens], dtype=np.int32)
    as_checkpoint = dataclasses.replace(part, token_ids=remap[part.token_ids])
    recipe = predictor.recipe
    predicted = [
        [predictor.labels[k] for k in labels]
        for labels in predict_split(predictor.model, as_checkpoint, recipe.data.max_src_tokens,
                                    batch_size, predictor.device, recipe.train.amp)
    ]
    gold = [[data.labels[k] for k in part.labels(i)] for i in range(len(part))]
    metrics = score_label_sets(predicted, gold)
    metrics["macro_f1_all_labels"] = score_label_sets(predicted, gold, predictor.labels)["macro_f1"]
    return metrics
