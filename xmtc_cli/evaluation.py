"""Scoring label sets: from prediction files, or by running a checkpoint over processed data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from xmtc_cli.data.processed import UNK_ID, ProcessedData, Split, load_processed
from xmtc_cli.errors import DataError
from xmtc_cli.inference import Predictor, predict_split
from xmtc_cli.labelfiles import read_label_file
from xmtc_cli.metrics import score_label_sets


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
    check_label_sets(pred_sets, gold_sets, str(predictions), str(gold))
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
    check_checkpoint_data(predictor, data, part, split, checkpoint, data_dir)
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


def check_label_sets(predicted: list[list[str]], gold: list[list[str]], predictions_name: str,
                     gold_name: str) -> None:
    """Refuse to score what could only give zeros that mean nothing.

    No documents, no gold label at all, or predicted labels none of which occurs in the gold
    sets: the last almost always means the two sides name labels differently (line numbers
    into Y.txt against names, another corpus), not a model that is wrong every time.
    """
    if not gold:
        raise DataError(f"{gold_name} holds no documents: there is nothing to score",
                        "check the paths: give files with one line per document")
    _check_gold_labels(gold, gold_name)
    predicted_labels = {label for labels in predicted for label in labels}
    gold_labels = {label for labels in gold for label in labels}
    if predicted_labels and not predicted_labels & gold_labels:
        raise DataError(
            f"no label of {predictions_name} occurs in {gold_name} (they hold "
            f"{_examples(predicted_labels)} and {_examples(gold_labels)}): every metric would "
            "be 0",
            "both files must name labels the same way, for the same corpus: label names, not "
            "line numbers into a names file such as Y.txt",
        )


def check_checkpoint_data(predictor: Predictor, data: ProcessedData, part: Split, split: str,
                          checkpoint: str | Path, data_dir: str | Path) -> None:
    """Refuse data the checkpoint cannot be scored on: text tokenized another way (its token
    ids would be read as other words), an empty split, no gold label, or gold labels none of
    which the model knows (another corpus)."""
    ours, theirs = predictor.meta.tokenizer, data.tokenizer
    if dict(ours) != dict(theirs):
        raise DataError(
            f"{checkpoint} was trained on text tokenized with {_tokenizer_flags(ours)}, but "
            f"{data_dir} was preprocessed with {_tokenizer_flags(theirs)}",
            f"preprocess the corpus again with {_tokenizer_flags(ours)} (and a new --out), or "
            "evaluate a checkpoint trained on this data",
        )
    where = f"the {split!r} split of {data_dir}"
    if len(part) == 0:
        raise DataError(f"{where} holds no documents: there is nothing to score",
                        "choose another --split")
    gold = [[data.labels[k] for k in part.labels(i)] for i in range(len(part))]
    _check_gold_labels(gold, where)
    gold_labels = {label for labels in gold for label in labels}
    if not gold_labels & set(predictor.labels):
        raise DataError(
            f"no gold label of {where} is a label of {checkpoint} (they hold "
            f"{_examples(gold_labels)} and {_examples(set(predictor.labels))}): every metric "
            "would be 0",
            "evaluate the checkpoint on the corpus it was trained on",
        )


def _check_gold_labels(gold: list[list[str]], gold_name: str) -> None:
    if not any(gold):
        raise DataError(
            f"{gold_name} holds {len(gold):,} documents but no label: every metric would be 0",
            "check that this is the gold side: one line per document, its labels separated by "
            "spaces",
        )


def _examples(labels: set[str]) -> str:
    shown = sorted(labels)[:2]
    return ", ".join(repr(label[:30]) for label in shown) + (", ..." if len(labels) > 2 else "")


def _tokenizer_flags(settings: dict) -> str:
    """Tokenizer settings as the `xmtc preprocess` options that produce them."""
    flags = f"--tokenizer {settings.get('kind')}"
    if "lowercase" in settings:
        flags += " --lowercase" if settings["lowercase"] else " --keep-case"
    rest = {k: v for k, v in settings.items() if k not in ("kind", "lowercase")}
    return f"`{flags}`" + (f" ({rest})" if rest else "")
