"""Embedding tables from word vectors: token rows, label rows from names, label centroids."""

import numpy as np
import pytest

from xmtc_cli.data.embeddings import (
    label_centroids,
    label_embeddings,
    name_words,
    token_embeddings,
)
from xmtc_cli.data.glove import read_word_vectors


def test_name_words_split_on_underscores_hyphens_spaces_and_slashes():
    assert name_words("space_travel") == ["space", "travel"]
    assert name_words("Money/Foreign Exchange") == ["Money", "Foreign", "Exchange"]
    assert name_words("l-cattle") == ["l", "cattle"]
    assert name_words("Arts__Photography") == ["Arts", "Photography"]


def test_label_embeddings_are_the_mean_of_known_name_words(vector_file):
    names = ["space_travel", "Space-Unknownword", "nothing_known", "CAT dog"]
    vectors = read_word_vectors(vector_file, [w for n in names for w in name_words(n)])
    table, known = label_embeddings(names, vectors, np.random.default_rng(0))
    assert table.shape == (4, 3) and table.dtype == np.float32
    np.testing.assert_allclose(table[0], [1, 1, 0])
    np.testing.assert_allclose(table[1], [2, 0, 0])  # unknown words are left out of the mean
    assert np.all(np.abs(table[2]) <= 0.1)  # no word known: U(-0.1, 0.1)
    np.testing.assert_allclose(table[3], [0.5, 0.5, 0])  # lower-case fallback
    assert known.tolist() == [True, True, False, True]


def test_token_embeddings_use_vectors_random_rows_and_a_zero_pad(vector_file):
    tokens = ["<pad>", "<unk>", "cat", "zebra", "Dog"]
    vectors = read_word_vectors(vector_file, tokens[2:])
    table, known = token_embeddings(tokens, vectors, 0, np.random.default_rng(0))
    assert table.shape == (5, 3) and table.dtype == np.float32
    np.testing.assert_array_equal(table[0], 0)
    np.testing.assert_array_equal(table[2], [1, 0, 0])
    np.testing.assert_array_equal(table[4], [0, 1, 0])
    assert np.all(np.abs(table[[1, 3]]) <= 0.1) and np.any(table[[1, 3]] != 0)
    assert known.tolist() == [False, False, True, False, True]


# --- label centroids (issue 13.1) -------------------------------------------------------------

def naive_centroids(docs, labels, table, known, num_labels, idf=None):
    """The definition, one document at a time: centred, normalised means of representations."""
    weight = known * (idf if idf is not None else 1.0)
    reps = {}
    for i, doc in enumerate(docs):
        w = weight[doc]
        if w.sum() > 0:
            reps[i] = (w[:, None] * table[doc]).sum(0) / w.sum()
    overall = np.mean(list(reps.values()), axis=0)
    out, counts = np.zeros((num_labels, table.shape[1])), np.zeros(num_labels, dtype=int)
    for label in range(num_labels):
        mine = [reps[i] for i, doc_labels in enumerate(labels) if label in doc_labels and i in reps]
        if mine:
            centred = np.mean(mine, axis=0) - overall
            out[label], counts[label] = centred / np.linalg.norm(centred), len(mine)
    return out, counts


def csr(rows):
    return (np.array([x for row in rows for x in row], dtype=np.int32),
            np.cumsum([0] + [len(row) for row in rows]).astype(np.int64))


@pytest.mark.parametrize("weighting", ["uniform", "tfidf"])
@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_label_centroids_match_the_definition_in_any_chunking(weighting, chunk):
    rng = np.random.default_rng(0)
    vocab, dim, num_labels = 30, 4, 6
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    known = rng.random(vocab) < 0.7
    docs = [rng.integers(0, vocab, rng.integers(0, 12)).tolist() for _ in range(40)]
    docs[5] = [int(np.flatnonzero(~known)[0])] * 3  # no known word: no representation
    labels = [rng.choice(num_labels + 2, rng.integers(0, 3), replace=False).tolist()
              for _ in docs]  # ids >= num_labels are gold-only labels: ignored
    token_ids, token_offsets = csr(docs)
    label_ids, label_offsets = csr(labels)
    before = token_ids.copy()
    got, counts = label_centroids(token_ids, token_offsets, label_ids, label_offsets, table,
                                  known, num_labels, weighting, chunk_docs=chunk)
    idf = None
    if weighting == "tfidf":
        df = np.array([sum(w in doc for doc in docs) for w in range(vocab)])
        idf = np.log((1 + len(docs)) / (1 + df)) + 1
    want, want_counts = naive_centroids(docs, labels, table, known, num_labels, idf)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert counts.tolist() == want_counts.tolist() and got.dtype == np.float32
    np.testing.assert_array_equal(token_ids, before)  # the caller's arrays are left alone


def test_a_label_on_every_document_or_on_none_with_a_vector_has_no_centroid():
    table = np.eye(3, dtype=np.float32)
    known = np.array([True, True, False])
    token_ids, token_offsets = csr([[0], [1, 1], [2], [0, 1]])
    label_ids, label_offsets = csr([[0, 1], [0], [0, 2], [0]])
    got, counts = label_centroids(token_ids, token_offsets, label_ids, label_offsets, table,
                                  known, 3)
    assert counts.tolist() == [0, 1, 0]  # 0: every represented document; 2: only doc 2
    np.testing.assert_array_equal(got[[0, 2]], 0)
    np.testing.assert_allclose(np.linalg.norm(got[1]), 1, rtol=1e-6)
