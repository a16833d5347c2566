"""Scoring label sets: from prediction files, or by running a checkpoint over processed data."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from xmtc_cli import perlabel
from xmtc_cli.config import Recipe
from xmtc_cli.data.builtin import load_data
from xmtc_cli.data.processed import ProcessedData, Split
from xmtc_cli.data.readers import read_label_file
from xmtc_cli.data.vocab import UNK_ID
from xmtc_cli.errors import DataError
from xmtc_cli.inference import Predictor, predict_split, predict_split_by_weight
from xmtc_cli.lexical import LexicalIndex, choose_weight, gate_threshold, tfidf
from xmtc_cli.metrics import (
    RANKS,
    InversePropensities,
    inverse_propensities,
    propensity_constants,
    score_label_sets,
)
from xmtc_cli.model import Seq2SetModel


def evaluate_split(model: Seq2SetModel, data: ProcessedData, split: str, recipe: Recipe,
                   device: torch.device,
                   progress: Callable[[int, int], None] | None = None,
                   prior: sp.csr_matrix | None = None) -> dict[str, float]:
    """Generate label sets for a split of processed data and score them against its gold sets
    (label ids of the model's own data: training's validation), with the propensity-scored
    metrics where the training split is large enough for them (3 documents or more).

    With lexical label scores `prior` [docs, L] (model.lexical) the split is decoded once per
    weight of model.lexical_weights, and the metrics are those of the weight with the best
    micro-F1, with `lexical_weight` (that weight) and `micro_f1_w=W` for every weight tried.
    """
    part = data.splits[split]
    gold = [part.labels(i).tolist() for i in range(len(part))]
    inv = training_inverse_propensities(data) if training_documents(data) >= 3 else None
    weights = [float(w) for w in recipe.model.lexical_weights] if prior is not None else [0.0]
    # Every weight's label sets in one pass, each batch encoded once.
    predicted = dict(zip(weights, predict_split_by_weight(
        model, part, recipe.data.max_src_tokens, recipe.train.eval_batch_size, device,
        amp=recipe.train.amp, progress=progress, prior=prior, weights=weights,
        gate=gate_threshold(recipe.model))))

    def score(weight: float) -> dict[str, float]:
        return score_label_sets(predicted[weight], gold, inv_propensity=inv)

    if prior is None:
        return score(0.0)
    weight, metrics, by_weight = choose_weight(weights, score)
    return {**metrics, "lexical_weight": weight,
            **{f"micro_f1_w={w:g}": f1 for w, f1 in by_weight.items()}}


def lexical_prior(index: LexicalIndex, part: Split, token_ids: np.ndarray | None = None
                  ) -> sp.csr_matrix:
    """The lexical label scores [docs, L] of a split's documents (their token ids read as
    `token_ids`, the index's vocabulary, when given)."""
    ids = part.token_ids if token_ids is None else token_ids
    return index.scores(tfidf(ids, part.token_offsets, index.idf))


def training_documents(data: ProcessedData) -> int:
    """N of the propensity formula: the documents `data.label_counts` were counted over.

    Those are the training file's documents, so a validation split held out of it (manifest
    options.valid_from "held-out") counts as well as the train split.
    """
    docs = len(data.splits["train"])
    if data.manifest.get("options", {}).get("valid_from") == "held-out" and "valid" in data.splits:
        docs += len(data.splits["valid"])
    return docs


def training_inverse_propensities(data: ProcessedData, a: float | None = None,
                                  b: float | None = None,
                                  keys: Literal["ids", "names"] = "ids") -> InversePropensities:
    """1/p of each of `data`'s labels from its training counts (`metrics.inverse_propensities`).

    Keyed by corpus label id (`keys="ids"`, as the gold sets of `data.splits` are) or by label
    (`keys="names"`, the strings of `data.labels`). Labels occurring only in held-out gold sets
    have a count of 0. A and B default to `propensity_constants` of the manifest's dataset.
    """
    counts = data.label_counts.tolist()
    if keys == "names":
        counts = dict(zip(data.labels, counts))
    return _propensities(counts, training_documents(data), a, b, data.manifest.get("dataset"),
                         f"for {data.path}",
                         "check the processed data, or --propensity-a/--propensity-b")


def label_file_inverse_propensities(train_labels: str | Path, a: float | None = None,
                                    b: float | None = None,
                                    encoding: str = "utf-8") -> InversePropensities:
    """1/p of each label of a training label file (one document a line), by label.

    A and B default to 0.55 and 1.5 (a label file does not say which dataset it is).
    """
    documents = read_label_file(train_labels, encoding)
    counts = Counter(label for labels in documents for label in set(labels))
    return _propensities(counts, len(documents), a, b, None, f"from {train_labels}",
                         "--train-labels takes the training set's labels, one document a line")


def _propensities(counts, documents: int, a: float | None, b: float | None,
                  dataset: str | None, where: str, hint: str) -> InversePropensities:
    """`inverse_propensities` with A and B defaulting to the dataset's; a DataError if not."""
    default_a, default_b = propensity_constants(dataset)
    try:
        return inverse_propensities(counts, documents, default_a if a is None else a,
                                    default_b if b is None else b)
    except ValueError as exc:
        raise DataError(f"no propensity-scored metrics {where}: {exc}", hint) from exc


def evaluate_files(predictions: str | Path, gold: str | Path,
                   train_labels: str | Path | None = None, propensity_a: float | None = None,
                   propensity_b: float | None = None,
                   encoding: str = "utf-8", ranks: tuple[int, ...] = RANKS,
                   per_label: list | None = None) -> dict[str, float]:
    """Metrics of a predictions file against a gold file, one document per line each, all
    files read in `encoding`.

    Macro-F1 averages over the labels that occur in either file. With `train_labels`, the
    training set's label file, the result adds PSP@k and PSnDCG@k (`metrics.PS_METRIC_KEYS`)
    with propensities counted there. `ranks`: the k of the ranking metrics. `per_label`, a
    list, receives the rows of `perlabel.rows` (train counts from `train_labels`).
    """
    pred_sets = read_label_file(predictions, encoding)
    gold_sets = read_label_file(gold, encoding)
    if len(pred_sets) != len(gold_sets):
        raise DataError(
            f"{predictions} has {len(pred_sets)} lines but {gold} has {len(gold_sets)}",
            "both files need one line per document, in the same order",
        )
    check_label_sets(pred_sets, gold_sets, str(predictions), str(gold))
    inv = None
    if train_labels is not None:
        inv = label_file_inverse_propensities(train_labels, propensity_a, propensity_b,
                                              encoding)
    counts: dict = {}
    metrics = score_label_sets(pred_sets, gold_sets, inv_propensity=inv, ranks=ranks,
                               per_label=counts)
    if per_label is not None:
        train = None
        if train_labels is not None:
            train = Counter(x for labels in read_label_file(train_labels, encoding)
                            for x in set(labels))
        per_label.extend(perlabel.rows(counts, None, train))
    return metrics


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, split: str = "test",
                        device: str = "auto", batch_size: int = 64,
                        propensity_a: float | None = None,
                        propensity_b: float | None = None, ranks: tuple[int, ...] = RANKS,
                        per_label: list | None = None,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Metrics of a checkpoint on a split of processed data, compared by label name;
    `progress(done, total)` after every batch decoded.

    Besides `macro_f1` (over labels in gold or predictions) the result holds
    `macro_f1_all_labels`, averaged over the model's whole label vocabulary as the paper's code
    does, and PSP@k and PSnDCG@k with the propensities of the data's training label counts
    (`training_inverse_propensities`; A and B by the data's dataset unless given). The data may
    come from another preprocessing run: tokens and labels are matched by name, so only the
    tokenizer must agree.
    """
    predictor = Predictor.from_checkpoint(str(checkpoint), device)
    data = load_data(str(data_dir))  # a folder, or builtin:demo as recipes name it
    if split not in data.splits:
        raise DataError(
            f"{data_dir} has no {split!r} split (it has {', '.join(data.splits)})",
            "choose --split " + " or --split ".join(data.splits),
        )
    part = data.splits[split]
    gold = [[data.labels[k] for k in part.labels(i)] for i in range(len(part))]
    check_checkpoint_data(predictor, data, gold, split, checkpoint, data_dir)
    # The data's token ids, read as the checkpoint's: the same tokenizer, maybe another vocabulary.
    remap = np.array([predictor.token_ids.get(t, UNK_ID) for t in data.tokens], dtype=np.int32)
    # A model trained without side features reads the text alone, whatever the data has.
    as_checkpoint = dataclasses.replace(
        part, token_ids=remap[part.token_ids],
        features=part.features if predictor.feature_size else None)
    recipe = predictor.recipe
    prior = (lexical_prior(predictor.lexical, as_checkpoint) if predictor.lexical_weight
             else None)
    predicted = [
        [predictor.labels[k] for k in labels]
        for labels in predict_split(predictor.model, as_checkpoint, recipe.data.max_src_tokens,
                                    batch_size, predictor.device, recipe.train.amp,
                                    progress, prior=prior, weight=predictor.lexical_weight,
                                    gate=gate_threshold(recipe.model))
    ]
    inv = training_inverse_propensities(data, propensity_a, propensity_b, keys="names")
    metrics = score_label_sets(predicted, gold, inv_propensity=inv, ranks=ranks)
    counts: dict = {}
    metrics["macro_f1_all_labels"] = score_label_sets(predicted, gold, predictor.labels,
                                                      per_label=counts)["macro_f1"]
    if per_label is not None:  # every label of the model, and gold-only ones of the data
        names = dict(zip(data.labels, data.label_names))
        names.update(zip(predictor.labels, predictor.names))
        train = dict(zip(data.labels, data.label_counts.tolist()))
        per_label.extend(perlabel.rows(counts, names, train))
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


def check_checkpoint_data(predictor: Predictor, data: ProcessedData, gold: list[list[str]],
                          split: str, checkpoint: str | Path, data_dir: str | Path) -> None:
    """Refuse data the checkpoint cannot be scored on: text tokenized another way (its token
    ids would be read as other words), no side features (or others) for a model trained with
    them, an empty split, no gold label, or gold labels none of
    which the model knows (another corpus). `gold`: the split's gold sets, by label name."""
    ours, theirs = predictor.meta.tokenizer, data.tokenizer
    if dict(ours) != dict(theirs):
        raise DataError(
            f"{checkpoint} was trained on text tokenized with {_tokenizer_flags(ours)}, but "
            f"{data_dir} was preprocessed with {_tokenizer_flags(theirs)}",
            f"preprocess the corpus again with {_tokenizer_flags(ours)} (and a new --out), or "
            "evaluate a checkpoint trained on this data",
        )
    need, have = predictor.feature_size, data.feature_size
    if need and need != have:
        raise DataError(
            f"{checkpoint} was trained with side features of width {need}, and {data_dir} "
            + (f"has features of width {have}" if have else "has none"),
            "preprocess the corpus again with its {split}_features.npy files beside the texts, "
            "computed as for training (README: side embeddings)",
        )
    where = f"the {split!r} split of {data_dir}"
    if not gold:
        raise DataError(f"{where} holds no documents: there is nothing to score",
                        "choose another --split")
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
