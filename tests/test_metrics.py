"""Metrics against hand-computed values and a dense brute-force oracle; label files."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from xmtc_cli.data.readers import read_label_file
from xmtc_cli.errors import DataError
from xmtc_cli.metrics import (
    METRIC_KEYS,
    PS_METRIC_KEYS,
    InversePropensities,
    inverse_propensities,
    propensity_constants,
    score_label_sets,
)

# Five documents that between them hit every special case:
#   d0  pred a b c   gold a c d   hits a c; b wrong; d missed
#   d1  pred b b a   gold b       a repeat of b collapses: set {b, a}; hit b; a wrong
#   d2  pred -       gold c       nothing predicted; c missed
#   d3  pred e       gold -       e occurs in predictions only
#   d4  pred -       gold -       both empty
PRED = [["a", "b", "c"], ["b", "b", "a"], [], ["e"], []]
GOLD = [["a", "c", "d"], ["b"], ["c"], [], []]


def test_micro_scores_count_every_document_label_pair():
    got = score_label_sets(PRED, GOLD)
    # TP: a,c (d0) + b (d1) = 3. FP: b (d0), a (d1), e (d3) = 3. FN: d (d0), c (d2) = 2.
    assert got["micro_precision"] == pytest.approx(3 / 6)
    assert got["micro_recall"] == pytest.approx(3 / 5)
    assert got["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 3 + 2))  # 6/11


def test_macro_and_weighted_f1_over_the_occurring_labels():
    got = score_label_sets(PRED, GOLD)
    # Per label (TP, FP, FN) -> F1 = 2TP / (2TP + FP + FN), support = TP + FN:
    #   a (1, 1, 0) -> 2/3, support 1      b (1, 1, 0) -> 2/3, support 1
    #   c (1, 0, 1) -> 2/3, support 2      d (0, 0, 1) -> 0,   support 1
    #   e (0, 1, 0) -> 0,   support 0
    assert got["macro_f1"] == pytest.approx((3 * 2 / 3) / 5)  # 2/5
    assert got["weighted_f1"] == pytest.approx((1 + 1 + 2) * (2 / 3) / 5)  # 8/15


def test_a_larger_universe_lowers_macro_f1_and_nothing_else():
    plain = score_label_sets(PRED, GOLD)
    wider = score_label_sets(PRED, GOLD, label_universe=["a", "b", "c", "d", "e", "f", "g"])
    # f and g never occur: each scores 0, so the same sum 2 is spread over 7 labels.
    assert wider["macro_f1"] == pytest.approx(2 / 7)
    assert {k: v for k, v in wider.items() if k != "macro_f1"} == {
        k: v for k, v in plain.items() if k != "macro_f1"
    }


def test_labels_outside_the_universe_still_count():
    # The universe is united with the occurring labels: {a} ∪ {a, b, c, d, e} is 5 labels.
    assert score_label_sets(PRED, GOLD, label_universe=["a"])["macro_f1"] == pytest.approx(2 / 5)


def test_example_f1_scores_both_empty_as_zero():
    # d0: 2*2 / (2*2 + 1 + 1) = 2/3; d1: 2*1 / (2*1 + 1 + 0) = 2/3; d2, d3, d4: 0.
    assert score_label_sets(PRED, GOLD)["example_f1"] == pytest.approx((2 / 3 + 2 / 3) / 5)
    assert score_label_sets([[]], [[]])["example_f1"] == 0.0


def test_precision_at_k_counts_missing_slots_as_wrong():
    got = score_label_sets(PRED, GOLD)
    # Ranked distinct predictions: d0 [a b c] relevant 1 0 1; d1 [b a] relevant 1 0; rest none.
    assert got["p@1"] == pytest.approx((1 + 1) / 5)
    assert got["p@3"] == pytest.approx((2 / 3 + 1 / 3) / 5)
    assert got["p@5"] == pytest.approx((2 / 5 + 1 / 5) / 5)


def test_ndcg_at_k_normalises_by_the_best_ranking_of_the_gold_labels():
    got = score_label_sets(PRED, GOLD)
    # d0: hits at ranks 1 and 3, DCG@3 = 1/log2(2) + 1/log2(4) = 1.5; three gold labels, so
    #     IDCG@3 = IDCG@5 = 1 + 1/log2(3) + 1/2. d1: hit at rank 1 of one gold label: 1.
    # d2 (nothing predicted), d3 (no gold) and d4 score 0.
    d0 = 1.5 / (1.5 + 1 / math.log2(3))
    assert got["ndcg@1"] == pytest.approx((1 + 1) / 5)
    assert got["ndcg@3"] == pytest.approx((d0 + 1) / 5)
    assert got["ndcg@5"] == pytest.approx((d0 + 1) / 5)


def test_repeated_predictions_collapse_before_ranking():
    # Distinct ranking [x a]: a is at rank 2, not 3, and counts once in P@3.
    got = score_label_sets([["x", "x", "a", "a"]], [["a"]])
    assert got["p@1"] == 0.0
    assert got["p@3"] == pytest.approx(1 / 3)
    assert got["ndcg@3"] == pytest.approx(1 / math.log2(3))
    # Sets: TP 1 (a), FP 1 (x), FN 0.
    assert got["micro_precision"] == pytest.approx(1 / 2)
    assert got["example_f1"] == pytest.approx(2 / 3)


def test_repeated_gold_labels_collapse():
    assert score_label_sets([["a"]], [["a", "a"]])["micro_recall"] == 1.0


def test_fewer_predictions_than_k():
    got = score_label_sets([["a"]], [["a"]])
    # One correct label: P@k = 1/k, while nDCG@k is 1 because one gold label is the ideal.
    assert [got["p@1"], got["p@3"], got["p@5"]] == pytest.approx([1, 1 / 3, 1 / 5])
    assert [got["ndcg@1"], got["ndcg@3"], got["ndcg@5"]] == pytest.approx([1, 1, 1])


def test_perfect_sets_score_one_on_every_set_metric_and_ndcg():
    gold = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
    got = score_label_sets([list(reversed(g)) for g in gold], gold)
    for key in ("micro_f1", "macro_f1", "weighted_f1", "example_f1", "ndcg@1", "ndcg@3", "ndcg@5"):
        assert got[key] == pytest.approx(1.0), key


def test_result_keys_types_and_empty_input():
    got = score_label_sets([], [])
    assert tuple(got) == METRIC_KEYS
    assert got["documents"] == 0 and isinstance(got["documents"], int)
    assert all(got[k] == 0.0 for k in METRIC_KEYS if k != "documents")


def test_different_document_counts_are_refused():
    with pytest.raises(ValueError, match="2 predicted label sets but 1 gold"):
        score_label_sets([["a"], ["b"]], [["a"]])


def _dense(sets: list[list[int]], num_labels: int) -> np.ndarray:
    matrix = np.zeros((len(sets), num_labels), dtype=bool)
    for row, labels in enumerate(sets):
        matrix[row, labels] = True
    return matrix


def _oracle(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """The set metrics straight from their definitions on dense [documents, labels] matrices."""

    def f1(tp, fp, fn):
        denominator = 2 * tp + fp + fn
        return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)

    tp, fp, fn = pred & gold, pred & ~gold, ~pred & gold
    per_label = f1(tp.sum(0), fp.sum(0), fn.sum(0))
    support = gold.sum(0)
    return {
        "micro_precision": tp.sum() / max(pred.sum(), 1),
        "micro_recall": tp.sum() / max(gold.sum(), 1),
        "micro_f1": float(f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": per_label.mean(),
        "weighted_f1": (support * per_label).sum() / max(support.sum(), 1),
        "example_f1": f1(tp.sum(1), fp.sum(1), fn.sum(1)).mean(),
    }


@pytest.mark.parametrize("seed", range(5))
def test_set_metrics_match_a_dense_oracle(seed):
    rng = random.Random(seed)
    num_labels, docs = 12, 40
    # Small label space and repeats, so that every case (empty sets, overlaps) occurs.
    pred = [[rng.randrange(num_labels) for _ in range(rng.randint(0, 6))] for _ in range(docs)]
    gold = [rng.sample(range(num_labels), rng.randint(0, 4)) for _ in range(docs)]
    got = score_label_sets(pred, gold, label_universe=range(num_labels))
    want = _oracle(_dense(pred, num_labels), _dense(gold, num_labels))
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


# --- propensity-scored metrics -------------------------------------------------------------

def _paper_inverse_propensity(count: int, num_docs: int, a: float, b: float) -> float:
    """1/p_l written as Jain et al. (2016) write p_l."""
    c = (math.log(num_docs) - 1) * (b + 1) ** a
    return 1 / (1 / (1 + c * math.exp(-a * math.log(count + b))))


def test_inverse_propensities_follow_jain_et_al():
    counts = [0, 1, 9, 40, 1000]
    for a, b in ((0.55, 1.5), (0.6, 2.6), (0.5, 0.4)):
        got = inverse_propensities(counts, 1000, a, b)
        assert list(got) == [0, 1, 2, 3, 4]  # keyed by label id
        assert list(got.values()) == pytest.approx(
            [_paper_inverse_propensity(n, 1000, a, b) for n in counts], rel=1e-12)
        assert got.unseen == pytest.approx(_paper_inverse_propensity(0, 1000, a, b), rel=1e-12)
    # Pinned values (natural log): C = (ln 1000 - 1) 2.5^0.55 = 9.77908...
    got = inverse_propensities(counts, 1000)
    assert [got[0], got[2], got[4]] == pytest.approx([8.824188577703566, 3.683090905565251,
                                                      1.2187416467105792], rel=1e-12)
    assert inverse_propensities([9], 1000, 0.6, 2.6)[0] == pytest.approx(3.927717737273702)
    # Rarer labels weigh more; every weight is above 1.
    values = list(got.values())
    assert values == sorted(values, reverse=True) and min(values) > 1


def test_inverse_propensities_by_label_and_for_unseen_labels():
    got = inverse_propensities({"rare": 1, "common": 90}, 100)
    assert isinstance(got, InversePropensities)
    assert got["rare"] > got["common"]
    # A label it does not hold weighs as a count of 0, without being added.
    assert got["only-in-test"] == inverse_propensities([0], 100)[0] == got.unseen
    assert "only-in-test" not in got and got.get("only-in-test") is None
    # numpy counts (ProcessedData.label_counts) work as a sequence of ids.
    assert inverse_propensities(np.array([1, 90]), 100) == pytest.approx(
        {0: got["rare"], 1: got["common"]})


@pytest.mark.parametrize("counts, docs, a, b, message", [
    ([1], 2, 0.55, 1.5, "at least 3 training documents"),
    ([1], 10, -0.1, 1.5, "A >= 0 and B > 0"),
    ([1], 10, 0.55, 0.0, "A >= 0 and B > 0"),
    ([11], 10, 0.55, 1.5, "label 0 has a training count of 11, outside 0..10"),
    ({"x": -1}, 10, 0.55, 1.5, "label 'x' has a training count of -1"),
])
def test_inverse_propensities_refuse_what_the_formula_cannot_mean(counts, docs, a, b, message):
    with pytest.raises(ValueError, match=message):
        inverse_propensities(counts, docs, a, b)


def test_propensity_constants_by_dataset():
    assert propensity_constants("amazoncat13k") == propensity_constants("amazon670k") == (0.6, 2.6)
    for dataset in ("eurlex", "wiki10", "demo", None):
        assert propensity_constants(dataset) == (0.55, 1.5)


# Weights chosen by hand (not from counts) so that the sums stay readable; e unseen weighs 5.
#   d0  pred b a x   gold a c d   weights a 4, c 1, d 3 -> best 4 3 1; hit a at rank 2
#   d1  pred c c     gold c       ranked [c]; hit at rank 1; best 1
#   d2  pred a       gold -       no gold: adds nothing to either sum
#   d3  pred -       gold d e     best 5 (e) 3 (d); nothing predicted
PS_WEIGHTS = InversePropensities({"a": 4.0, "b": 2.0, "c": 1.0, "d": 3.0}, unseen=5.0)
PS_PRED = [["b", "a", "x"], ["c", "c"], ["a"], []]
PS_GOLD = [["a", "c", "d"], ["c"], [], ["d", "e"]]


def test_psp_at_k_by_hand():
    got = score_label_sets(PS_PRED, PS_GOLD, inv_propensity=PS_WEIGHTS)
    # k=1: gains 0 + 1 + 0 over best 4 + 1 + 5. k=3 and 5: 4 + 1 + 0 over (4+3+1) + 1 + (5+3).
    assert got["psp@1"] == pytest.approx(1 / 10)
    assert got["psp@3"] == pytest.approx(5 / 17)
    assert got["psp@5"] == pytest.approx(5 / 17)


def test_psndcg_at_k_by_hand():
    got = score_label_sets(PS_PRED, PS_GOLD, inv_propensity=PS_WEIGHTS)
    d2 = 1 / math.log2(3)  # the discount of rank 2; rank 1 is 1, rank 3 is 1/2
    # Each document's DCG and ideal DCG are divided by its binary ideal DCG I_d first:
    #   d0 (3 gold): k=1: 0 and 4 over I 1; k=3: 4 d2 and 4 + 3 d2 + 1/2 over I 1 + d2 + 1/2
    #   d1 (1 gold): 1 and 1 over I 1, every k
    #   d3 (2 gold): k=1: 0 and 5 over I 1; k=3: 0 and 5 + 3 d2 over I 1 + d2
    assert got["psndcg@1"] == pytest.approx((0 + 1 + 0) / (4 + 1 + 5))
    want = (4 * d2 / (1.5 + d2) + 1) / ((4.5 + 3 * d2) / (1.5 + d2) + 1 + (5 + 3 * d2) / (1 + d2))
    assert got["psndcg@3"] == pytest.approx(want)
    assert got["psndcg@5"] == pytest.approx(want)


def test_documents_without_gold_leave_ps_metrics_unchanged():
    with_empty = score_label_sets(PS_PRED, PS_GOLD, inv_propensity=PS_WEIGHTS)
    without = score_label_sets(PS_PRED[:2] + PS_PRED[3:], PS_GOLD[:2] + PS_GOLD[3:],
                               inv_propensity=PS_WEIGHTS)
    assert {k: with_empty[k] for k in PS_METRIC_KEYS} == pytest.approx(
        {k: without[k] for k in PS_METRIC_KEYS})
    assert with_empty["p@1"] < without["p@1"]  # P@k counts that document as a 0
    nothing = score_label_sets([["a"], []], [[], []], inv_propensity=PS_WEIGHTS)
    assert all(nothing[k] == 0.0 for k in PS_METRIC_KEYS)  # 0/0


def test_ps_metrics_reward_rare_labels_first():
    weights = inverse_propensities({"rare": 2, "common": 500}, 1000)
    gold = [["rare", "common"]]
    rare_first = score_label_sets([["rare", "common"]], gold, inv_propensity=weights)
    common_first = score_label_sets([["common", "rare"]], gold, inv_propensity=weights)
    assert rare_first["psp@1"] == rare_first["psndcg@3"] == pytest.approx(1.0)
    assert common_first["psp@1"] == pytest.approx(weights["common"] / weights["rare"])
    assert common_first["psndcg@3"] < 1
    assert common_first["psp@3"] == pytest.approx(1.0)  # both within the top 3
    assert rare_first["p@1"] == common_first["p@1"] == 1.0  # P@k cannot tell them apart


def test_ps_keys_only_with_propensities_and_before_documents():
    assert tuple(score_label_sets(PRED, GOLD)) == METRIC_KEYS
    got = score_label_sets(PRED, GOLD, inv_propensity=inverse_propensities({}, 10))
    assert tuple(got) == METRIC_KEYS[:-1] + PS_METRIC_KEYS + ("documents",)
    # The other metrics do not change.
    assert {k: got[k] for k in METRIC_KEYS} == score_label_sets(PRED, GOLD)


def test_equal_weights_make_psp_a_ratio_of_hits():
    # With A = 0 every label weighs 1 + C: PSP@k is hits over the best possible hits.
    weights = inverse_propensities({}, 10, a=0.0)
    got = score_label_sets(PRED, GOLD, inv_propensity=weights)
    # Hits in the top 1 / top 3: d0 1 / 2, d1 1 / 1. Best: d0 1 / 3, d1 1 / 1, d2 1 / 1.
    assert got["psp@1"] == pytest.approx(2 / 3)
    assert got["psp@3"] == pytest.approx(3 / 5)


def test_a_plain_dict_must_weigh_every_gold_label():
    with pytest.raises(KeyError):
        score_label_sets([["a"]], [["a", "z"]], inv_propensity={"a": 2.0})


def _ps_oracle(pred: list[list[int]], gold: list[list[int]], weights: np.ndarray) -> dict:
    """PSP@k and PSnDCG@k from their definition on dense matrices, pyxclib's way: a [documents,
    5] matrix of the top-5 predicted ids (padded with a label no document has), and the ideal
    ranking by sorting each row of the weighted gold matrix."""
    num_labels = len(weights)
    pad = num_labels  # an extra column: never gold, weight 0
    dense_gold = np.zeros((len(gold), num_labels + 1))
    for row, labels in enumerate(gold):
        dense_gold[row, labels] = 1
    w = np.append(weights, 0.0)
    top = np.full((len(pred), 5), pad)
    for row, labels in enumerate(pred):
        distinct = list(dict.fromkeys(labels))[:5]
        top[row, : len(distinct)] = distinct
    rows = np.arange(len(pred))[:, None]
    gains = dense_gold[rows, top] * w[top]
    weighted_gold = dense_gold * w
    best = -np.sort(-weighted_gold, axis=1)[:, :5]
    discounts = 1 / np.log2(np.arange(2, 7))
    num_gold = dense_gold.sum(1)
    want = {}
    for k in (1, 3, 5):
        want[f"psp@{k}"] = gains[:, :k].sum() / best[:, :k].sum()
        ideal = np.array([discounts[: int(min(k, n))].sum() for n in num_gold])
        has_gold = ideal > 0
        dcg = (gains[:, :k] * discounts[:k]).sum(1)[has_gold] / ideal[has_gold]
        idcg = (best[:, :k] * discounts[:k]).sum(1)[has_gold] / ideal[has_gold]
        want[f"psndcg@{k}"] = dcg.sum() / idcg.sum()
    return want


@pytest.mark.parametrize("seed", range(8))
def test_ps_metrics_match_a_dense_oracle(seed):
    rng = random.Random(seed)
    num_labels, seen, docs, train_docs = 15, 11, 50, 300
    counts = [rng.randint(0, train_docs) for _ in range(seen)]  # labels seen..14 never trained
    pred = [[rng.randrange(num_labels) for _ in range(rng.randint(0, 8))] for _ in range(docs)]
    gold = [rng.sample(range(num_labels), rng.randint(0, 7)) for _ in range(docs)]
    a, b = rng.choice([(0.55, 1.5), (0.6, 2.6)])
    inv = inverse_propensities(counts, train_docs, a, b)
    weights = np.array([_paper_inverse_propensity(counts[i] if i < seen else 0, train_docs, a, b)
                        for i in range(num_labels)])
    got = score_label_sets(pred, gold, inv_propensity=inv)
    want = _ps_oracle(pred, gold, weights)
    assert {k: got[k] for k in PS_METRIC_KEYS} == pytest.approx(want, rel=1e-12)
    assert all(0 <= got[k] <= 1 for k in PS_METRIC_KEYS)


def test_read_label_file_keeps_one_entry_per_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("a b\n\n  c\té  \r\nd".encode())
    # Line 2 is an empty set; whitespace runs and a Windows line end separate nothing extra;
    # the last line needs no newline.
    assert read_label_file(path) == [["a", "b"], [], ["c", "é"], ["d"]]


def test_read_label_file_names_the_line_with_bad_bytes(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"a\nb \xe9\n")
    with pytest.raises(DataError, match=r"labels\.txt:2: byte 0xe9 .* not utf-8") as info:
        read_label_file(path)
    assert info.value.hint


def test_read_label_file_refuses_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_label_file(tmp_path / "nope.txt")
