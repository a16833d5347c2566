"""The lexical scorer (xmtc_cli.lexical) against dense brute-force oracles: TF-IDF, kNN label
propagation, the checkpoint tensors, and the fused choice of a decoding step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xmtc_cli.data.processed import Split, flatten, offsets
from xmtc_cli.data.vocab import PAD_ID, UNK_ID
from xmtc_cli.labelspace import EMPTY, EOS, NUM_SPECIALS
from xmtc_cli.lexical import (
    EPS,
    PREFIX,
    LexicalIndex,
    fused_choice,
    inverse_document_frequencies,
    prior_bonus,
    spec_problem,
    term_counts,
    tfidf,
    tfidf_of_docs,
)


def corpus(seed: int, docs: int, vocab: int, labels: int) -> Split:
    """Random documents (token ids 0..vocab-1, <pad> and <unk> among them) and label sets."""
    rng = np.random.default_rng(seed)
    tokens = [rng.integers(0, vocab, rng.integers(0, 30)).tolist() for _ in range(docs)]
    sets = [sorted(set(rng.integers(0, labels, rng.integers(1, 5)).tolist())) for _ in range(docs)]
    return split_of(tokens, sets)


def split_of(docs: list[list[int]], labels: list[list[int]]) -> Split:
    return Split(flatten(docs), offsets([len(d) for d in docs]), flatten(labels),
                 offsets([len(x) for x in labels]))


def oracle_tfidf(split: Split, idf_split: Split, vocab: int, max_df: float = 1.0) -> np.ndarray:
    """Dense [docs, W] TF-IDF computed one document and one token at a time, in float64."""
    n = len(idf_split)
    df = np.zeros(vocab)
    for i in range(n):
        for t in set(idf_split.tokens(i).tolist()):
            df[t] += 1
    out = np.zeros((len(split), vocab))
    for i in range(len(split)):
        for t in split.tokens(i).tolist():
            if t in (PAD_ID, UNK_ID) or df[t] > max_df * n:
                continue
            tf = int((split.tokens(i) == t).sum())
            out[i, t] = (1 + math.log(tf)) * (math.log((1 + n) / (1 + df[t])) + 1)
        norm = np.linalg.norm(out[i])
        if norm > 0:
            out[i] /= norm
    return out


def oracle_scores(queries: np.ndarray, docs: np.ndarray, labels: Split, num_labels: int,
                  k: int, power: float) -> np.ndarray:
    """Dense [B, L] kNN label scores: every similarity, fully sorted, one query at a time."""
    out = np.zeros((len(queries), num_labels))
    for b, q in enumerate(queries):
        sims = docs @ q
        top = np.argsort(-sims, kind="stable")[:k]
        weights = np.clip(sims[top], 0, None) ** power
        if weights.sum() == 0:
            continue
        for n, w in zip(top, weights):
            out[b, labels.labels(n)] += w / weights.sum()
    return out


@pytest.mark.parametrize("max_df", [1.0, 0.15])
def test_tfidf_matches_a_per_token_oracle(max_df):
    train, test = corpus(0, 60, 25, 7), corpus(1, 20, 25, 7)
    idf = inverse_document_frequencies(train, 25, max_df)
    assert idf[PAD_ID] == idf[UNK_ID] == 0
    assert (idf == 0).sum() > 2 if max_df < 1 else (idf == 0).sum() == 2  # stop words dropped
    for split in (train, test):
        got = tfidf(split.token_ids, split.token_offsets, idf).toarray()
        np.testing.assert_allclose(got, oracle_tfidf(split, train, 25, max_df), rtol=1e-5,
                                   atol=1e-6)
        norms = np.linalg.norm(got, axis=1)
        assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))


def test_term_counts_do_not_depend_on_the_chunking():
    split = corpus(2, 50, 30, 5)
    whole = term_counts(split.token_ids, split.token_offsets, 30).toarray()
    for chunk in (1, 7, 64):
        np.testing.assert_array_equal(
            term_counts(split.token_ids, split.token_offsets, 30, chunk=chunk).toarray(), whole)
    dense = np.zeros((len(split), 30))
    for i in range(len(split)):
        np.add.at(dense[i], split.tokens(i), 1)
    np.testing.assert_array_equal(whole, dense)


def test_token_arrays_and_ids_beyond_the_vocabulary():
    train = corpus(3, 40, 20, 5)
    idf = inverse_document_frequencies(train, 20)
    docs = [np.array([5, 5, 7]), np.array([], dtype=np.int64), np.array([3, 99, -4])]
    got = tfidf_of_docs(docs, idf).toarray()
    as_split = split_of([[5, 5, 7], [], [3, UNK_ID, UNK_ID]], [[0], [0], [0]])
    np.testing.assert_allclose(got, tfidf(as_split.token_ids, as_split.token_offsets,
                                          idf).toarray())
    assert not got[1].any()


@pytest.mark.parametrize(("k", "power"), [(1, 1.0), (5, 2.0), (12, 0.5), (500, 3.0)])
def test_knn_scores_match_a_dense_brute_force_oracle(k, power):
    train, test = corpus(4, 80, 40, 9), corpus(5, 30, 40, 9)
    index = LexicalIndex.build(train, 40, 9, k, power)
    queries = tfidf(test.token_ids, test.token_offsets, index.idf)
    got = index.scores(queries).toarray()
    expected = oracle_scores(queries.toarray().astype(np.float64), oracle_tfidf(train, train, 40),
                             train, 9, k, power)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # Scores are a convex combination of label indicators: in [0, 1], at most the k
    # neighbours' labels, and a query sharing no token with any document scores nothing.
    assert got.min() >= 0 and got.max() <= 1 + 1e-6


def test_queries_are_batched_without_changing_the_scores(monkeypatch):
    import xmtc_cli.lexical as lexical

    train, test = corpus(6, 50, 30, 6), corpus(7, 25, 30, 6)
    index = LexicalIndex.build(train, 30, 6, 4, 2.0)
    queries = tfidf(test.token_ids, test.token_offsets, index.idf)
    whole = index.scores(queries).toarray()
    monkeypatch.setattr(lexical, "_QUERY_CELLS", 50 * 3)  # 3 queries per batch
    np.testing.assert_array_equal(index.scores(queries).toarray(), whole)


def test_a_query_without_known_tokens_scores_nothing():
    train = corpus(8, 30, 20, 4)
    index = LexicalIndex.build(train, 20, 4, 5, 2.0)
    got = index.scores_of_docs([np.array([UNK_ID, PAD_ID]), np.array([], dtype=np.int64)])
    assert got.shape == (2, 4) and got.nnz == 0


def test_index_tensors_round_trip_and_bad_values_are_refused():
    train, test = corpus(9, 40, 25, 6), corpus(10, 10, 25, 6)
    index = LexicalIndex.build(train, 25, 6, 3, 2.0)
    tensors = index.tensors()
    specs = {n: ({torch.float32: "F32", torch.int64: "I64", torch.int32: "I32"}[t.dtype],
                 tuple(t.shape)) for n, t in tensors.items()}
    assert spec_problem(specs, 25, wanted=True) is None
    assert "does not use" in spec_problem(specs, 25, wanted=False)
    assert "vocabulary" in spec_problem(specs, 26, wanted=True)
    assert "lacks" in spec_problem({}, 25, wanted=True)
    assert spec_problem({}, 25, wanted=False) is None
    again = LexicalIndex.from_tensors(tensors, 3, 2.0).with_num_labels(6)
    queries = tfidf(test.token_ids, test.token_offsets, index.idf)
    np.testing.assert_array_equal(again.scores(queries).toarray(),
                                  index.scores(queries).toarray())
    blended = LexicalIndex.build(train, 25, 6, 3, 2.0, centroid=0.4, centroid_terms=4)
    again = LexicalIndex.from_tensors(blended.tensors(), 3, 2.0, 0.4, 4).with_num_labels(6)
    np.testing.assert_array_equal(again.scores(queries).toarray(),
                                  blended.scores(queries).toarray())
    broken = dict(tensors)
    broken[PREFIX + "docs.indices"] = tensors[PREFIX + "docs.indices"].clone()
    broken[PREFIX + "docs.indices"][0] = 25
    with pytest.raises(ValueError, match="out of range"):
        LexicalIndex.from_tensors(broken, 3, 2.0)
    broken = dict(tensors)
    broken[PREFIX + "labels.indptr"] = tensors[PREFIX + "labels.indptr"].flip(0)
    with pytest.raises(ValueError, match="CSR"):
        LexicalIndex.from_tensors(broken, 3, 2.0)


def oracle_centroids(docs: np.ndarray, labels: Split, num_labels: int, terms: int) -> np.ndarray:
    """Dense [L, W] label centroids, one label at a time: the sum of its documents' rows, all
    but its `terms` largest values (the first of equals by token) zeroed, L2-normalised."""
    out = np.zeros((num_labels, docs.shape[1]))
    for y in range(num_labels):
        rows = [n for n in range(len(labels)) if y in labels.labels(n).tolist()]
        total = docs[rows].sum(axis=0) if rows else np.zeros(docs.shape[1])
        kept = [t for t in sorted(range(len(total)), key=lambda t: (-total[t], t))[:terms]
                if total[t] != 0]
        out[y, kept] = total[kept]
        norm = np.linalg.norm(out[y])
        out[y] /= norm if norm > 0 else 1
    return out


@pytest.mark.parametrize("terms", [1, 4, 1000])
def test_centroids_match_a_per_label_oracle(terms):
    train = corpus(11, 70, 30, 8)
    index = LexicalIndex.build(train, 30, 10, 5, 2.0, centroid=0.5, centroid_terms=terms)
    got = index.centroids.toarray()
    expected = oracle_centroids(oracle_tfidf(train, train, 30), train, 10, terms)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not got[8:].any()  # labels without training documents have no centroid
    assert ((got != 0).sum(axis=1) <= terms).all()


def test_centroids_do_not_depend_on_the_label_chunking(monkeypatch):
    import xmtc_cli.lexical as lexical

    train = corpus(12, 60, 25, 9)
    whole = LexicalIndex.build(train, 25, 9, 5, 2.0, centroid=0.3, centroid_terms=3).centroids
    monkeypatch.setattr(lexical, "_CENTROID_CHUNK", 2)
    chunked = LexicalIndex.build(train, 25, 9, 5, 2.0, centroid=0.3, centroid_terms=3).centroids
    np.testing.assert_array_equal(chunked.toarray(), whole.toarray())


@pytest.mark.parametrize(("centroid", "keep"), [(0.5, 100), (0.25, 3), (1.0, 1)])
def test_blended_scores_match_knn_and_centroid_oracles(monkeypatch, centroid, keep):
    import xmtc_cli.lexical as lexical

    monkeypatch.setattr(lexical, "CENTROID_KEEP", keep)
    train, test = corpus(13, 80, 40, 9), corpus(14, 30, 40, 9)
    index = LexicalIndex.build(train, 40, 9, 5, 2.0, centroid=centroid, centroid_terms=6)
    queries = tfidf(test.token_ids, test.token_offsets, index.idf)
    dense_q = queries.toarray().astype(np.float64)
    docs = oracle_tfidf(train, train, 40)
    cosines = dense_q @ oracle_centroids(docs, train, 9, 6).T  # (B, L)
    kept = np.zeros_like(cosines)
    for b, row in enumerate(cosines):  # each query's `keep` best labels
        best = np.argsort(-row, kind="stable")[:keep]
        kept[b, best] = row[best]
    expected = ((1 - centroid) * oracle_scores(dense_q, docs, train, 9, 5, 2.0)
                + centroid * kept)
    got = index.scores(queries).toarray()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert ((index.centroid_scores(queries).toarray() > 0).sum(axis=1) <= keep).all()
    assert got.min() >= 0 and got.max() <= 1 + 1e-5  # a convex blend of two scores in [0, 1]


def test_centroid_share_zero_is_the_knn_alone():
    train, test = corpus(15, 50, 30, 6), corpus(16, 20, 30, 6)
    queries = tfidf(test.token_ids, test.token_offsets,
                    inverse_document_frequencies(train, 30))
    knn = LexicalIndex.build(train, 30, 6, 4, 2.0)
    np.testing.assert_array_equal(
        LexicalIndex.build(train, 30, 6, 4, 2.0, centroid=0.0).scores(queries).toarray(),
        knn.scores(queries).toarray())
    assert knn.centroid == 0 and "centroids" not in vars(knn)  # never built


def test_blended_scores_are_batched_without_changing_them(monkeypatch):
    import xmtc_cli.lexical as lexical

    train, test = corpus(17, 50, 30, 6), corpus(18, 25, 30, 6)
    index = LexicalIndex.build(train, 30, 6, 4, 2.0, centroid=0.5, centroid_terms=5)
    queries = tfidf(test.token_ids, test.token_offsets, index.idf)
    whole = index.scores(queries).toarray()
    monkeypatch.setattr(lexical, "_QUERY_CELLS", 6 * 4)  # 4 queries per centroid batch
    np.testing.assert_array_equal(index.scores(queries).toarray(), whole)


def test_keep_heaviest_matches_a_per_row_sort():
    import scipy.sparse as sp

    from xmtc_cli.lexical import keep_heaviest

    rng = np.random.default_rng(19)
    dense = rng.integers(0, 4, (12, 15)).astype(np.float32)  # many ties
    dense[rng.random(dense.shape) < 0.4] = 0
    for per_row in (0, 1, 3, 20):
        expected = np.zeros_like(dense)
        for r, row in enumerate(dense):
            nonzero = [c for c in range(len(row)) if row[c] != 0]
            for c in sorted(nonzero, key=lambda c: (-row[c], c))[:per_row]:
                expected[r, c] = row[c]
        np.testing.assert_array_equal(keep_heaviest(sp.csr_matrix(dense), per_row).toarray(),
                                      expected)


def test_prior_bonus_is_the_weighted_log_prior_above_its_floor():
    import scipy.sparse as sp

    scores = sp.csr_matrix(np.array([[0.0, 0.5, 1.0], [0.25, 0.0, 0.0]], dtype=np.float32))
    bonus = prior_bonus(scores, 2.0, 3 + NUM_SPECIALS)
    expected = np.zeros((2, 6))
    for b in range(2):
        for y in range(3):
            q = scores[b, y]
            expected[b, y + NUM_SPECIALS] = 2.0 * (math.log(q + EPS) - math.log(EPS))
    np.testing.assert_allclose(bonus.numpy(), expected, rtol=1e-6, atol=1e-6)
    # The fused gate's threshold τ: the specials get τ's bonus, so a label of q = τ ties ∅.
    gated = prior_bonus(scores, 2.0, 3 + NUM_SPECIALS, threshold=0.5)
    np.testing.assert_allclose(gated[:, NUM_SPECIALS:].numpy(), expected[:, NUM_SPECIALS:],
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(gated[:, :NUM_SPECIALS], torch.full((2, NUM_SPECIALS), gated[0, 4].item()))


def oracle_choices(logits: np.ndarray, bonus: np.ndarray, gate: bool) -> list[list[int]]:
    """The fused outputs of every step (logits [S, B, V]), one document at a time, by the rule
    the module docstring states."""
    steps, batch, outputs = logits.shape
    out = [[] for _ in range(batch)]
    for b in range(batch):
        emitted: set[int] = set()
        for t in range(steps):
            own = int(np.argmax(logits[t, b]))
            if own in emitted or (own < NUM_SPECIALS and not gate):
                out[b].append(own)
                continue
            first = 0 if gate else NUM_SPECIALS
            candidates = [y for y in range(first, outputs) if y not in emitted]
            best = max(candidates, key=lambda y: (logits[t, b, y] + bonus[b, y], -y))
            if best >= NUM_SPECIALS:
                emitted.add(best)
            out[b].append(best)
    return out


@pytest.mark.parametrize("gate", [False, True])
def test_fused_choice_matches_a_per_document_oracle(gate):
    rng = np.random.default_rng(11)
    steps, batch, outputs = 6, 8, 9
    logits = rng.normal(size=(steps, batch, outputs)).astype(np.float32)
    logits[:, :, EMPTY] += rng.normal(size=(steps, batch)).astype(np.float32)  # more ∅ steps
    logits[2, 3] = logits[0, 3]  # a repeat of an earlier arg-max
    bonus = np.where(rng.random((batch, outputs)) < 0.4,
                     rng.random((batch, outputs)) * 3, 0).astype(np.float32)
    bonus[:, :NUM_SPECIALS] = 1.5 if gate else 0  # the threshold's bonus (prior_bonus)
    emitted = torch.zeros(batch, outputs, dtype=torch.bool)
    got = [fused_choice(torch.from_numpy(logits[t]), torch.from_numpy(bonus), emitted,
                        gate).tolist() for t in range(steps)]
    expected = oracle_choices(logits, bonus, gate)
    assert [[got[t][b] for t in range(steps)] for b in range(batch)] == expected
    corpus_labels = [{y for y in row if y >= NUM_SPECIALS} for row in expected]
    assert [set(torch.nonzero(emitted[b]).ravel().tolist()) for b in range(batch)] == corpus_labels


@pytest.mark.parametrize("gate", [False, True])
def test_weight_zero_is_the_decoders_own_choice(gate):
    rng = np.random.default_rng(12)
    logits = torch.from_numpy(rng.normal(size=(16, 12)).astype(np.float32))
    own = logits.argmax(dim=-1)
    got = fused_choice(logits, torch.zeros(16, 12), torch.zeros(16, 12, dtype=torch.bool), gate)
    assert torch.equal(got, own)
    # The end stays the decoder's choice whatever the prior says, unless the prior outbids it
    # and the gate is fused.
    logits[:, EOS] = 100
    bonus = torch.zeros(16, 12)
    bonus[:, NUM_SPECIALS:] = 50.0
    got = fused_choice(logits, bonus, torch.zeros(16, 12, dtype=torch.bool), gate)
    assert bool((got == EOS).all())
    bonus[:, NUM_SPECIALS:] = 200.0
    got = fused_choice(logits, bonus, torch.zeros(16, 12, dtype=torch.bool), gate)
    assert bool((got >= NUM_SPECIALS).all()) if gate else bool((got == EOS).all())
