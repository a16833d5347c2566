"""The benchmark's lexical baselines (benchmarks/lexical_baselines.py) against naive loops, and
bench_tail.py's frequency groups."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lexical_baselines import (
    knn_scores,
    label_matrix,
    label_sets,
    nearest_neighbours,
    ranked,
    ranked_scores,
    write_xmc_file,
)


def random_rows(rng: np.random.Generator, n: int, dim: int) -> sp.csr_matrix:
    x = rng.random((n, dim)) * (rng.random((n, dim)) < 0.3)
    x[0] = 0.0  # a row with no feature at all
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return sp.csr_matrix(x / np.maximum(norms, 1e-12))


def test_knn_scores_match_a_naive_loop_over_the_neighbours():
    rng = np.random.default_rng(0)
    x_train, x_query = random_rows(rng, 40, 12), random_rows(rng, 9, 12)
    labels = [rng.choice(7, size=rng.integers(1, 4), replace=False).tolist() for _ in range(40)]
    y = label_matrix(labels, 7)
    k = 5
    neighbours, sims = nearest_neighbours(x_query, x_train, k=8, chunk=4)  # 8 >= k: a prefix
    scores = knn_scores(neighbours, sims, y, k).toarray()

    dense_q, dense_t = x_query.toarray(), x_train.toarray()
    for i in range(x_query.shape[0]):
        s = dense_t @ dense_q[i]
        order = sorted(range(40), key=lambda j: (-s[j], j))[:k]
        expected = np.zeros(7)
        for j in order:
            for label in labels[j]:
                expected[label] += max(s[j], 0.0) ** 2
        total = sum(max(s[j], 0.0) ** 2 for j in order)
        expected = expected / total if total > 0 else expected
        np.testing.assert_allclose(scores[i], expected, atol=1e-9)
        assert neighbours[i, :k].tolist() == order
    assert not scores[0].any()  # the featureless query scores nothing
    assert np.all(scores <= 1 + 1e-9)


def test_label_matrix_counts_a_repeated_label_once():
    y = label_matrix([[2, 0, 2], [], [1]], 3).toarray()
    assert y.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_label_sets_threshold_limit_and_at_least_one_by_hand():
    scores = sp.csr_matrix(np.array([
        [0.5, 0.0, 0.3, 0.3, 0.1],   # 0.3 tie: lower id first
        [0.05, 0.0, 0.0, 0.02, 0.0],  # none passes: its top label only
        [0.0, 0.0, 0.0, 0.0, 0.0],   # no score: empty
    ]))
    ranking = ranked_scores(scores)
    assert ranked(scores) == [[0, 2, 3, 4], [0, 3], []]
    assert label_sets(ranking, 0.3) == [[0, 2, 3], [0], []]
    assert label_sets(ranking, 0.3, limit=2) == [[0, 2], [0], []]
    assert label_sets(ranking, 0.6) == [[0], [0], []]
    assert ranked(scores, limit=1) == [[0], [0], []]


def test_the_xmc_file_holds_each_labelled_document_with_its_features(tmp_path):
    x = sp.csr_matrix(np.array([[0.0, 0.5, 0.25], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0],
                                [0.0, 0.0, 0.75]]))
    written = write_xmc_file(tmp_path / "t.txt", x, [[3, 1, 3], [0], [2], []], 4)
    assert written == 2  # no features / no labels: left out, as Annif does
    assert (tmp_path / "t.txt").read_text().splitlines() == ["2 3 4", "1,3 1:0.5 2:0.25",
                                                               "2 0:1"]


def test_frequency_groups_cover_every_count_once():
    from bench_tail import BUCKETS, CORPUS_BUCKETS, bucket_names, bucket_of

    tibkat = CORPUS_BUCKETS["tibkat"]
    assert bucket_names(tibkat) == ["0", "1", "2-5", "6-20", ">20"]
    assert [bucket_of(n, tibkat) for n in (0, 1, 2, 5, 6, 20, 21, 10_000)] == \
        [0, 1, 2, 2, 3, 3, 4, 4]
    assert bucket_names(BUCKETS) == ["0", "1-5", "6-20", "21-100", ">100"]


@pytest.mark.parametrize("switch", [
    ["model.lexical=knn", "model.lexical_k=5"],
    ["model.lexical=knn", "model.lexical_gate=fused", "model.lexical_threshold=0.1",
     "model.lexical_weights=[0,2,8]"],
], ids=["decoder-gate", "fused-gate"])
def test_attaching_the_lexical_scorer_to_a_trained_decoder_equals_training_with_it(
        tiny_data, tmp_path, single_thread, switch):
    """The oracle: `xmtc train` with model.lexical=knn. One epoch, so that both runs keep the
    same epoch; the scorer does not change training, so the weights must agree bit for bit."""
    from bench_tail import attach_lexical
    from conftest import run_cli, write_recipe

    from xmtc_cli.checkpoint import load_checkpoint

    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=1)
    for name, extra in (("plain", []), ("fused", switch)):
        result = run_cli("train", recipe, *extra, "--out", tmp_path / name, "--device", "cpu")
        assert result.code == 0, result.err
    valid = attach_lexical(tmp_path / "plain" / "model.safetensors", tiny_data.processed,
                           switch, tmp_path / "attached" / "model.safetensors")

    want, want_meta = load_checkpoint(tmp_path / "fused" / "model.safetensors")
    got, got_meta = load_checkpoint(tmp_path / "attached" / "model.safetensors")
    assert sorted(got) == sorted(want) and any(k.startswith("lexical.") for k in got)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert got_meta.recipe == want_meta.recipe
    assert got_meta.extra["lexical_weight"] == want_meta.extra["lexical_weight"]
    assert valid["micro_f1"] == pytest.approx(want_meta.extra["valid"]["micro_f1"])
    # and `xmtc predict` reads it as it reads the trained one
    texts = tiny_data.raw / "test_texts.txt"
    outs = [run_cli("predict", tmp_path / name / "model.safetensors", texts, "--device", "cpu")
            for name in ("fused", "attached")]
    assert outs[0].code == 0 and outs[0].out == outs[1].out
