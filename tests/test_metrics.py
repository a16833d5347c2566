"""Metrics against hand-computed values and a dense brute-force oracle; label files."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from xmtc_cli.errors import DataError
from xmtc_cli.labelfiles import read_label_file
from xmtc_cli.metrics import METRIC_KEYS, score_label_sets

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
