"""Metrics over predicted label sets against gold label sets (docs/design.md §8).

Pure functions on plain Python containers: a label is any hashable (a label name or id), a
document's prediction is its labels in generation order and its gold is its labels in any order.
Special symbols (∅, start, end) are the caller's business: pass labels only.

Set metrics (micro P/R/F1, macro-F1, weighted-F1, example-based F1) see each prediction as the
set of its distinct labels. The ranking metrics (P@k, nDCG@k) need an order; a seq2set model has
no scores, so they rank by generation order (as the published OTSeq2Set code does): the first
occurrence of a label fixes its rank and repeats are skipped.

Everything is one pass over the documents with per-label counters, so 300k documents over 13k
labels cost seconds and no dense [documents × labels] matrix is ever built.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Hashable, Sequence

RANKS = (1, 3, 5)
"""The k of P@k and nDCG@k."""

METRIC_KEYS = (
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "macro_f1",
    "weighted_f1",
    "example_f1",
    *(f"p@{k}" for k in RANKS),
    *(f"ndcg@{k}" for k in RANKS),
    "documents",
)
"""The keys of `score_label_sets`'s result, in display order."""

# _DISCOUNTS[i] = 1 / log2(r + 1), the DCG weight of the 1-based rank r = i + 1.
_DISCOUNTS = [1.0 / math.log2(rank + 1) for rank in range(1, max(RANKS) + 1)]


def score_label_sets(
    predictions: Sequence[Sequence[Hashable]],
    gold: Sequence[Sequence[Hashable]],
    label_universe: Collection[Hashable] | None = None,
) -> dict[str, float | int]:
    """Score predicted label sets against gold sets; keys as in `METRIC_KEYS`.

    `predictions[i]` holds document i's labels in generation order, repeats allowed (they
    collapse onto the first occurrence); `gold[i]` its gold labels. Every value is a fraction in
    [0, 1], except `documents`, the number of documents; a ratio 0/0 counts as 0.

    Macro-F1 averages the per-label F1 over `label_universe` ∪ the labels occurring in gold or
    predictions (a label with neither gold nor prediction scores 0, so a larger universe lowers
    it). With no universe it averages over the occurring labels only. The published OTSeq2Set
    code averages over its whole label vocabulary: pass the model's training labels to match it.

    Example-based F1 scores a document whose predicted and gold sets are both empty 0, as
    docs/design.md §8 says; some libraries (e.g. scikit-learn with `zero_division=1`) score it 1.

    Raises ValueError when `predictions` and `gold` hold different numbers of documents.
    """
    if len(predictions) != len(gold):
        raise ValueError(
            f"{len(predictions)} predicted label sets but {len(gold)} gold label sets; "
            "they must describe the same documents in the same order"
        )
    tp: Counter[Hashable] = Counter()  # per label: documents predicted and gold
    fp: Counter[Hashable] = Counter()  # predicted, not gold
    fn: Counter[Hashable] = Counter()  # gold, not predicted
    example_f1 = 0.0
    precision_at = dict.fromkeys(RANKS, 0.0)
    ndcg_at = dict.fromkeys(RANKS, 0.0)
    for predicted, relevant in zip(predictions, gold):
        ranked = list(dict.fromkeys(predicted))  # distinct, in order of first generation
        predicted_set, gold_set = set(ranked), set(relevant)
        hits = predicted_set & gold_set
        tp.update(hits)
        fp.update(predicted_set - hits)
        fn.update(gold_set - hits)
        example_f1 += _f1(len(hits), len(predicted_set) - len(hits), len(gold_set) - len(hits))
        gains = [label in gold_set for label in ranked[: max(RANKS)]]
        for k in RANKS:
            precision_at[k] += sum(gains[:k]) / k
            ndcg_at[k] += _ndcg(gains[:k], len(gold_set), k)

    documents = len(gold)
    labels = set(tp) | set(fp) | set(fn)
    if label_universe is not None:
        labels.update(label_universe)
    per_label = {label: _f1(tp[label], fp[label], fn[label]) for label in labels}
    support = {label: tp[label] + fn[label] for label in labels}
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    return {
        "micro_precision": _ratio(total_tp, total_tp + total_fp),
        "micro_recall": _ratio(total_tp, total_tp + total_fn),
        "micro_f1": _f1(total_tp, total_fp, total_fn),
        "macro_f1": _ratio(math.fsum(per_label.values()), len(labels)),
        "weighted_f1": _ratio(
            math.fsum(support[label] * per_label[label] for label in labels), sum(support.values())
        ),
        "example_f1": _ratio(example_f1, documents),
        **{f"p@{k}": _ratio(precision_at[k], documents) for k in RANKS},
        **{f"ndcg@{k}": _ratio(ndcg_at[k], documents) for k in RANKS},
        "documents": documents,
    }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 from counts, 2TP / (2TP + FP + FN); equal to 2PR / (P + R) and 0 when nothing counts."""
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _ndcg(gains: list[bool], num_gold: int, k: int) -> float:
    """nDCG@k of one ranking with binary gains, normalised by the best DCG@k of `num_gold` labels.

    This is the XMC definition (AttentionXML, pyxclib): the ideal ranking puts
    min(k, num_gold) relevant labels first, so a document with no gold labels scores 0.
    """
    dcg = sum(_DISCOUNTS[rank] for rank, gain in enumerate(gains) if gain)
    ideal = sum(_DISCOUNTS[: min(k, num_gold)])
    return _ratio(dcg, ideal)
