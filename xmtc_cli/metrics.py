"""Metrics over predicted label sets against gold label sets (docs/design.md §8).

Pure functions on plain Python containers: a label is any hashable (a label name or id), a
document's prediction is its labels in generation order and its gold is its labels in any order.
Special symbols (∅, start, end) are the caller's business: pass labels only.

Set metrics (micro P/R/F1, macro-F1, weighted-F1, example-based F1) see each prediction as the
set of its distinct labels. The ranking metrics (P@k, nDCG@k) need an order; a seq2set model has
no scores, so they rank by generation order (as the published OTSeq2Set code does): the first
occurrence of a label fixes its rank and repeats are skipped. The propensity-scored PSP@k and
PSnDCG@k rank the same way and weight each label by its inverse propensity
(`inverse_propensities`), so rare labels count for more.

Everything is one pass over the documents with per-label counters, so 300k documents over 13k
labels cost seconds and no dense [documents × labels] matrix is ever built.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from itertools import accumulate
from operator import mul

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
"""The keys of `score_label_sets`'s result, in display order (`PS_METRIC_KEYS` come before
`documents` when inverse propensities are given)."""

PS_METRIC_KEYS = (*(f"psp@{k}" for k in RANKS), *(f"psndcg@{k}" for k in RANKS))
"""The propensity-scored keys `score_label_sets` adds when given `inv_propensity`."""

PROPENSITY_A, PROPENSITY_B = 0.55, 1.5
"""Jain et al.'s (KDD 2016) propensity constants A and B for most datasets."""

_DATASET_PROPENSITY = {"amazoncat13k": (0.6, 2.6), "amazon670k": (0.6, 2.6)}
"""A and B for the datasets where Jain et al. (and the Extreme Classification Repository) use
other values than the defaults: the Amazon ones."""

# _DISCOUNTS[i] = 1 / log2(r + 1), the DCG weight of the 1-based rank r = i + 1.
_DISCOUNTS = [1.0 / math.log2(rank + 1) for rank in range(1, max(RANKS) + 1)]


def propensity_constants(dataset: str | None) -> tuple[float, float]:
    """(A, B) of the inverse propensities for a dataset name (a catalog name, e.g. the processed
    data's manifest "dataset"): (0.6, 2.6) for amazoncat13k and amazon670k, else (0.55, 1.5)."""
    return _DATASET_PROPENSITY.get(dataset or "", (PROPENSITY_A, PROPENSITY_B))


class InversePropensities(dict):
    """label -> 1/p_l, as `inverse_propensities` returns it. A label it does not hold (one never
    seen in training, e.g. one occurring only in test gold sets) reads as `unseen`, the value of a
    training count of 0; `get` and `in` still see only the labels it holds."""

    def __init__(self, weights: Iterable[tuple[Hashable, float]], unseen: float):
        super().__init__(weights)
        self.unseen = unseen

    def __missing__(self, label: Hashable) -> float:
        return self.unseen

    def __repr__(self) -> str:
        return f"InversePropensities({dict.__repr__(self)}, unseen={self.unseen!r})"


def inverse_propensities(
    label_counts: Mapping[Hashable, int] | Iterable[int],
    num_docs: int,
    a: float = PROPENSITY_A,
    b: float = PROPENSITY_B,
) -> InversePropensities:
    """The inverse propensity 1/p_l of each label, from its training document count N_l.

    Jain, Prabhu & Varma (KDD 2016), as the Extreme Classification Repository and pyxclib compute
    it, with N = `num_docs` training documents and the natural log:

        p_l = 1 / (1 + C e^{-A log(N_l + B)}),  C = (log N - 1)(B + 1)^A,
        so 1/p_l = 1 + C (N_l + B)^{-A}.

    1/p_l falls as N_l grows, from 1 + (log N - 1)((B + 1)/B)^A for a label never seen in
    training (N_l = 0) towards 1 for very frequent ones. A = 0.55, B = 1.5 by default; 0.6, 2.6
    for the Amazon datasets (`propensity_constants`).

    `label_counts` is a mapping label -> N_l, or counts aligned with label ids 0, 1, ... (a list
    or a numpy array). The result maps the same labels (or ids) to 1/p_l and gives any other
    label the value of N_l = 0.

    Raises ValueError when `num_docs` < 3 (then log N - 1 <= 0 and the weights are no longer
    above 1), when A < 0 or B <= 0, or when a count is negative or above `num_docs` (counts and
    document total from different data).
    """
    if num_docs < 3:
        raise ValueError(f"inverse propensities need at least 3 training documents, got {num_docs}")
    if a < 0 or b <= 0:
        raise ValueError(f"propensity constants need A >= 0 and B > 0, got A={a}, B={b}")
    c = (math.log(num_docs) - 1) * (b + 1) ** a
    items = label_counts.items() if isinstance(label_counts, Mapping) else enumerate(label_counts)
    weights = []
    for label, count in items:
        count = int(count)
        if not 0 <= count <= num_docs:
            raise ValueError(
                f"label {label!r} has a training count of {count}, outside 0..{num_docs} "
                "(the number of training documents)"
            )
        weights.append((label, 1.0 + c * (count + b) ** -a))
    return InversePropensities(weights, unseen=1.0 + c * b**-a)


def score_label_sets(
    predictions: Sequence[Sequence[Hashable]],
    gold: Sequence[Sequence[Hashable]],
    label_universe: Collection[Hashable] | None = None,
    inv_propensity: Mapping[Hashable, float] | None = None,
    ranks: Sequence[int] = RANKS,
    per_label: dict[Hashable, tuple[int, int, int]] | None = None,
) -> dict[str, float | int]:
    """Score predicted label sets against gold sets; keys as in `METRIC_KEYS`, and
    `PS_METRIC_KEYS` too when `inv_propensity` is given. `ranks` are the k of the ranking
    metrics (P@k, nDCG@k, ...; the keys follow them). `per_label`, a dict, receives each
    label's (true positives, false positives, false negatives) over the labels macro-F1
    averages over.

    `predictions[i]` holds document i's labels in generation order, repeats allowed (they
    collapse onto the first occurrence); `gold[i]` its gold labels. Every value is a fraction in
    [0, 1], except `documents`, the number of documents; a ratio 0/0 counts as 0.

    Macro-F1 averages the per-label F1 over `label_universe` ∪ the labels occurring in gold or
    predictions (a label with neither gold nor prediction scores 0, so a larger universe lowers
    it). With no universe it averages over the occurring labels only. The published OTSeq2Set
    code averages over its whole label vocabulary: pass the model's training labels to match it.

    Example-based F1 scores a document whose predicted and gold sets are both empty 0, as
    docs/design.md §8 says; some libraries (e.g. scikit-learn with `zero_division=1`) score it 1.

    PSP@k and PSnDCG@k (with `inv_propensity`, label -> w_l = 1/p_l, normally from
    `inverse_propensities`, which also weights labels it does not hold) are the Extreme
    Classification Repository's and pyxclib's: the propensity-weighted gain of the predictions
    over the best gain the gold sets allow, each summed over all documents before dividing.
    With R_d the first k distinct labels generated for document d, Y_d its gold set, and
    w*_{d,1} >= w*_{d,2} >= ... the weights of Y_d sorted in descending order:

        PSP@k    = Σ_d Σ_{l ∈ R_d ∩ Y_d} w_l  /  Σ_d Σ_{i <= min(k, |Y_d|)} w*_{d,i}

        PSnDCG@k = Σ_d DCG_d / I_d  /  Σ_d IDCG_d / I_d,  where
                   DCG_d  = Σ_{r <= k, r-th label of R_d ∈ Y_d} w_{r-th label} / log2(r + 1),
                   IDCG_d = Σ_{i <= min(k, |Y_d|)} w*_{d,i} / log2(i + 1),
                   I_d    = Σ_{i <= min(k, |Y_d|)} 1 / log2(i + 1)  (nDCG@k's normaliser).

    This is a ratio of two averages over documents, not the average of per-document ratios:
    a document with more or rarer gold labels weighs more. A document without gold labels adds
    0 to both sums, so it leaves PSP@k and PSnDCG@k unchanged (P@k and nDCG@k, plain averages,
    count it as a 0). With no gold label at all both are 0 (0/0). Both reach 1 when every
    document's first min(k, |Y_d|) labels generated are gold labels of largest weight, the
    highest first. Labels are compared as given, so `inv_propensity` must be keyed
    like `gold` (label ids or names); a plain dict must hold every gold label (KeyError).

    Raises ValueError when `predictions` and `gold` hold different numbers of documents.
    """
    if len(predictions) != len(gold):
        raise ValueError(
            f"{len(predictions)} predicted label sets but {len(gold)} gold label sets; "
            "they must describe the same documents in the same order"
        )
    ranks = tuple(ranks)
    if not ranks or min(ranks) < 1:
        raise ValueError(f"ranks must be positive integers, not {ranks}")
    depth = max(ranks)
    discounts = _discounts(depth)
    tp: Counter[Hashable] = Counter()  # per label: documents predicted and gold
    fp: Counter[Hashable] = Counter()  # predicted, not gold
    fn: Counter[Hashable] = Counter()  # gold, not predicted
    example_f1 = 0.0
    precision_at = dict.fromkeys(ranks, 0.0)
    ndcg_at = dict.fromkeys(ranks, 0.0)
    # Propensity-scored sums: [gain of the predictions, best gain of the gold set] for each k.
    psp_at = {k: [0.0, 0.0] for k in ranks}
    psndcg_at = {k: [0.0, 0.0] for k in ranks}
    for predicted, relevant in zip(predictions, gold):
        ranked = list(dict.fromkeys(predicted))  # distinct, in order of first generation
        predicted_set, gold_set = set(ranked), set(relevant)
        hits = predicted_set & gold_set
        tp.update(hits)
        fp.update(predicted_set - hits)
        fn.update(gold_set - hits)
        example_f1 += _f1(len(hits), len(predicted_set) - len(hits), len(gold_set) - len(hits))
        gains = [label in gold_set for label in ranked[:depth]]
        for k in ranks:
            precision_at[k] += sum(gains[:k]) / k
            ndcg_at[k] += _ndcg(gains[:k], len(gold_set), k, discounts)
        if inv_propensity is not None and gold_set:
            _add_propensity_scored(ranked, gold_set, inv_propensity, psp_at, psndcg_at,
                                   discounts)

    documents = len(gold)
    labels = set(tp) | set(fp) | set(fn)
    if label_universe is not None:
        labels.update(label_universe)
    if per_label is not None:
        per_label.update((label, (tp[label], fp[label], fn[label])) for label in labels)
    f1_of = {label: _f1(tp[label], fp[label], fn[label]) for label in labels}
    support = {label: tp[label] + fn[label] for label in labels}
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    return {
        "micro_precision": _ratio(total_tp, total_tp + total_fp),
        "micro_recall": _ratio(total_tp, total_tp + total_fn),
        "micro_f1": _f1(total_tp, total_fp, total_fn),
        "macro_f1": _ratio(math.fsum(f1_of.values()), len(labels)),
        "weighted_f1": _ratio(
            math.fsum(support[label] * f1_of[label] for label in labels), sum(support.values())
        ),
        "example_f1": _ratio(example_f1, documents),
        **{f"p@{k}": _ratio(precision_at[k], documents) for k in ranks},
        **{f"ndcg@{k}": _ratio(ndcg_at[k], documents) for k in ranks},
        **({} if inv_propensity is None else {
            **{f"psp@{k}": _ratio(*psp_at[k]) for k in ranks},
            **{f"psndcg@{k}": _ratio(*psndcg_at[k]) for k in ranks},
        }),
        "documents": documents,
    }


def _add_propensity_scored(ranked: list[Hashable], gold_set: set[Hashable],
                           inv_propensity: Mapping[Hashable, float],
                           psp_at: dict[int, list[float]],
                           psndcg_at: dict[int, list[float]],
                           discounts: list[float] = _DISCOUNTS) -> None:
    """Add one document (with gold labels) to the PSP@k and PSnDCG@k sums (k: their keys)."""
    depth = len(discounts)
    padding = [0.0] * depth
    # The gold weights in descending order: the best ranking. Sorted also makes the sums
    # independent of set order (string hashing).
    best = (sorted((inv_propensity[label] for label in gold_set), reverse=True) + padding)[:depth]
    gains = ([inv_propensity[label] if label in gold_set else 0.0 for label in ranked[:depth]]
             + padding)[:depth]
    # Prefix sums: [k - 1] is the sum over the top k.
    gain, best_gain = list(accumulate(gains)), list(accumulate(best))
    dcg = list(accumulate(map(mul, gains, discounts)))
    ideal = list(accumulate(map(mul, best, discounts)))
    for k in psp_at:
        normaliser = sum(discounts[: min(k, len(gold_set))])
        psp_at[k][0] += gain[k - 1]
        psp_at[k][1] += best_gain[k - 1]
        psndcg_at[k][0] += dcg[k - 1] / normaliser
        psndcg_at[k][1] += ideal[k - 1] / normaliser


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 from counts, 2TP / (2TP + FP + FN); equal to 2PR / (P + R) and 0 when nothing counts."""
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _discounts(depth: int) -> list[float]:
    """1 / log2(r + 1) for the ranks r = 1 .. depth (the shared list for the default ranks)."""
    if depth <= len(_DISCOUNTS):
        return _DISCOUNTS[:depth] if depth < len(_DISCOUNTS) else _DISCOUNTS
    return [1.0 / math.log2(rank + 1) for rank in range(1, depth + 1)]


def _ndcg(gains: list[bool], num_gold: int, k: int,
          discounts: list[float] = _DISCOUNTS) -> float:
    """nDCG@k of one ranking with binary gains, normalised by the best DCG@k of `num_gold` labels.

    This is the XMC definition (AttentionXML, pyxclib): the ideal ranking puts
    min(k, num_gold) relevant labels first, so a document with no gold labels scores 0.
    """
    dcg = sum(discounts[rank] for rank, gain in enumerate(gains) if gain)
    ideal = sum(discounts[: min(k, num_gold)])
    return _ratio(dcg, ideal)
