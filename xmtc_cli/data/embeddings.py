"""Embedding tables: the token and label rows `xmtc preprocess` stores, from word vectors.

Embeddings follow the paper: a word's row is its vector, or U(-0.1, 0.1) where the file has
none (`<pad>` is zero); a label's row is the mean of the vectors of the words of its name that
have one (the paper's code averages in a random vector for each unknown word, which only adds
noise), or U(-0.1, 0.1) where none has. Words are looked up as written, then lower-cased, so
cased (840B) and lower-cased (6B) vectors both serve cased text.

Without vectors no token table is stored and the label table is random (RANDOM_LABEL_DIM wide).
Every builder takes plain arguments (lists, arrays, a random generator), not preprocess options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import sparse

from xmtc_cli.data.glove import WordVectors
from xmtc_cli.data.processed import Split
from xmtc_cli.data.vocab import PAD_ID

# Label names are `_`-joined (Eurlex), hyphenated or spaced phrases ("Money/Foreign Exchange").
_NAME_SEPARATORS = re.compile(r"[\s_\-/&,;:()]+")
INIT_RANGE = 0.1  # U(-0.1, 0.1) for words and labels without a vector
RANDOM_LABEL_DIM = 100  # label embeddings without word vectors


@dataclass(frozen=True)
class LabelEmbeddingStats:
    """Where the training labels' embeddings came from (counts of labels)."""

    kind: str
    """The --label-embeddings choice: names, centroid or names+centroid."""
    dim: int | None
    """Width of the stored table; None: no table (training draws random embeddings)."""
    from_names: int
    """Labels embedded by their name's words."""
    from_centroids: int
    """Labels embedded by the centroid of their training documents."""
    from_both: int
    """Labels embedded by both (names+centroid)."""
    random: int
    """Labels with U(-0.1, 0.1) embeddings: nothing known about them."""
    centroid_docs: int = 0
    """Training documents the centroids are means of (a document with several labels counts
    once per label)."""


def name_words(name: str) -> list[str]:
    """The words of a label name, for its embedding."""
    return [word for word in _NAME_SEPARATORS.split(name) if word]


def token_embeddings(tokens: list[str], vectors: WordVectors, pad: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 [tokens, dim] rows from `vectors`, U(-0.1, 0.1) elsewhere, zero for `pad`;
    and the bool mask of tokens that had a vector."""
    table = rng.uniform(-INIT_RANGE, INIT_RANGE, (len(tokens), vectors.dim)).astype(np.float32)
    known = np.zeros(len(tokens), dtype=bool)
    for i, token in enumerate(tokens):
        vector = vectors.get(token)
        if vector is not None:
            table[i], known[i] = vector, True
    table[pad] = 0.0
    known[pad] = False
    return table, known


def label_embeddings(names: list[str], vectors: WordVectors,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 [labels, dim]: the mean vector of each name's known words, U(-0.1, 0.1) where
    no word is known; and the bool mask of labels with a known word."""
    table = rng.uniform(-INIT_RANGE, INIT_RANGE, (len(names), vectors.dim)).astype(np.float32)
    means, known = name_means(names, vectors)
    table[known] = means[known]
    return table, known


def name_means(names: list[str], vectors: WordVectors) -> tuple[np.ndarray, np.ndarray]:
    """float32 [labels, dim]: the mean vector of each name's known words, zero where no word
    is known; and the bool mask of labels with a known word."""
    table = np.zeros((len(names), vectors.dim), dtype=np.float32)
    known = np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names):
        found = [v for v in map(vectors.get, name_words(name)) if v is not None]
        if found:
            table[i], known[i] = np.mean(found, axis=0), True
    return table, known


CentroidWeighting = Literal["uniform", "tfidf"]
_CHUNK_DOCS = 8192  # documents per sparse product: bounds the working memory, not the result


def label_centroids(token_ids: np.ndarray, token_offsets: np.ndarray, label_ids: np.ndarray,
                    label_offsets: np.ndarray, word_table: np.ndarray, word_known: np.ndarray,
                    num_labels: int, weighting: CentroidWeighting = "uniform",
                    chunk_docs: int = _CHUNK_DOCS) -> tuple[np.ndarray, np.ndarray]:
    """Each label's embedding from its documents' words (label enrichment as in ViXML).

    Takes documents as CSR arrays (token_ids [tokens], token_offsets [docs + 1], label_ids
    [labels], label_offsets [docs + 1]), `word_table` float32 [vocab, dim] and `word_known`
    bool [vocab] (words whose row is a real vector). A document's representation is the mean
    of the vectors of its known words (`uniform`), or their mean weighted by idf (`tfidf`:
    each occurrence counts idf(w) = ln((1 + docs) / (1 + df(w))) + 1, so a word counts
    tf * idf); a document without a known word has none.

    A label's centroid is the mean of its documents' representations minus the mean of all
    documents' representations, L2-normalised. Centring matters: averaged word vectors share
    one large common direction (Mu & Viswanath, "All-but-the-top", 2018), and uncentred
    centroids of Reuters' 90 labels have a mean pairwise cosine of 0.96, which would leave the
    OT cost 1 - cos nearly constant; centred, 0.41, while each test document's nearest
    centroid is one of its labels as often (61%). A label whose mean is the overall mean (it
    is on every document) has no direction of its own and gets no centroid.

    Returns float32 [num_labels, dim] (zero rows for labels without a centroid) and int64
    [num_labels], how many documents each centroid is the mean of (0: none). Documents go
    through in chunks, each as two sparse products (docs x words by words x dim, then labels x
    docs by that), so memory is the [num_labels, dim] result plus one chunk: no [docs, labels]
    or [docs, dim] matrix is ever built.
    """
    vocab, dim = word_table.shape
    docs = len(token_offsets) - 1
    word_weight = word_known.astype(np.float32)  # [vocab]
    if weighting == "tfidf":
        word_weight *= _idf(token_ids, token_offsets, vocab, chunk_docs)
    elif weighting != "uniform":
        raise ValueError(f"weighting must be uniform or tfidf, not {weighting!r}")
    sums = np.zeros((num_labels, dim), dtype=np.float32)
    counts = np.zeros(num_labels, dtype=np.int64)
    all_sum, all_count = np.zeros(dim, dtype=np.float64), 0
    for start in range(0, docs, chunk_docs):
        stop = min(start + chunk_docs, docs)
        rows = stop - start
        # Document representations of the chunk: x [rows, vocab] holds each token's weight.
        first, last = token_offsets[start], token_offsets[stop]
        tokens = token_ids[first:last]
        x = sparse.csr_matrix((word_weight[tokens], tokens, token_offsets[start:stop + 1] - first),
                              shape=(rows, vocab))
        total = np.asarray(x.sum(axis=1)).ravel()  # [rows]
        has = total > 0
        reps = x @ word_table  # [rows, dim]
        reps[has] /= total[has, None]
        all_sum += reps[has].sum(axis=0, dtype=np.float64)
        all_count += int(has.sum())
        # Add each representation to its labels' sums: y [present labels, rows] is 0/1.
        first, last = label_offsets[start], label_offsets[stop]
        labels = label_ids[first:last]
        owner = np.repeat(np.arange(rows), np.diff(label_offsets[start:stop + 1]))
        keep = has[owner] & (labels < num_labels)
        labels, owner = labels[keep], owner[keep]
        if not len(labels):
            continue
        present, row_of = np.unique(labels, return_inverse=True)
        y = sparse.csr_matrix((np.ones(len(labels), dtype=np.float32), (row_of, owner)),
                              shape=(len(present), rows))
        sums[present] += y @ reps
        counts += np.bincount(labels, minlength=num_labels)
    # In place, with `where` rather than boolean indexing, which would copy [labels, dim].
    overall = (all_sum / max(all_count, 1)).astype(np.float32)  # [dim]
    found = (counts > 0)[:, None]  # [labels, 1]
    np.divide(sums, np.maximum(counts, 1)[:, None].astype(np.float32), out=sums)
    np.subtract(sums, overall, out=sums, where=found)
    norms = np.sqrt(np.einsum("ij,ij->i", sums, sums))  # [labels]
    # Float32 sums of many documents differ from the overall mean by rounding alone.
    found &= (norms > 1e-4 * float(np.linalg.norm(overall)))[:, None]
    np.divide(sums, np.maximum(norms, 1e-30)[:, None], out=sums, where=found)
    np.multiply(sums, found, out=sums)  # zero rows without a centroid
    counts[~found[:, 0]] = 0
    return sums, counts


def _idf(token_ids: np.ndarray, token_offsets: np.ndarray, vocab: int,
         chunk_docs: int) -> np.ndarray:
    """float32 [vocab]: ln((1 + docs) / (1 + df)) + 1, df counting the documents with the word."""
    docs = len(token_offsets) - 1
    df = np.zeros(vocab, dtype=np.int64)
    for start in range(0, docs, chunk_docs):
        stop = min(start + chunk_docs, docs)
        first, last = token_offsets[start], token_offsets[stop]
        tokens = token_ids[first:last].copy()  # sum_duplicates sorts its indices in place
        x = sparse.csr_matrix((np.ones(len(tokens), dtype=bool), tokens,
                               token_offsets[start:stop + 1] - first), shape=(stop - start, vocab))
        x.sum_duplicates()  # one entry per (document, word)
        df += np.bincount(x.indices, minlength=vocab)
    return (np.log((1.0 + docs) / (1.0 + df)) + 1.0).astype(np.float32)


def unit_rows(table: np.ndarray) -> np.ndarray:
    """`table` with every non-zero row scaled to length 1 (zero rows stay zero)."""
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    return np.divide(table, norms, out=np.zeros_like(table), where=norms > 0)


def random_embeddings(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [rows, dim] drawn from U(-0.1, 0.1), for labels whose names carry no meaning."""
    return rng.uniform(-INIT_RANGE, INIT_RANGE, (rows, dim)).astype(np.float32)


def token_table(tokens: list[str], vectors: WordVectors | None,
                rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray]:
    """(token embeddings, or None without vectors; bool [tokens], the words with a vector)."""
    if vectors is None:
        return None, np.zeros(len(tokens), dtype=bool)
    return token_embeddings(tokens, vectors, PAD_ID, rng)


def label_table(kind: str, names: list[str], names_mean_something: bool,
                vectors: WordVectors | None, train: Split, token_table: np.ndarray | None,
                words_known: np.ndarray, weighting: CentroidWeighting,
                rng: np.random.Generator) -> tuple[np.ndarray | None, LabelEmbeddingStats]:
    """The training labels' embeddings float32 [labels, E_l] (or None), and where they came from.

    `names` (the paper): the mean vector of the name's known words; U(-0.1, 0.1) without one.
    Without vectors every row is random and 100-d. Where names mean nothing (Amazon-670K) no
    table is stored: training draws its own random one (`model.label_embedding_size`), and
    storing ours would only cost disk (268 MB at 670K labels).

    `centroid`: the centred, L2-normalised mean of the representations of the label's
    documents in the training split (`label_centroids`; the held-out validation part
    excluded, so validation labels never leak into the model); a label with no such document
    with a known word falls back to its normalised name vector, else U(-0.1, 0.1) (drawn for
    those labels only, in label order). `names+centroid`: the normalised sum of the
    normalised name vector and the centroid, one weight each, as ViXML enriches label
    embeddings with their documents; a label with only one of the two gets that one. Every
    row that comes from the vectors has length 1.
    """
    labels, meaningful, label_rng = len(names), names_mean_something, rng
    if kind == "names" and not meaningful:
        return None, LabelEmbeddingStats(kind, None, 0, 0, 0, labels)
    if vectors is None:  # names only: centroids without vectors were refused up front
        table = random_embeddings(labels, RANDOM_LABEL_DIM, label_rng)
        return table, LabelEmbeddingStats(kind, RANDOM_LABEL_DIM, 0, 0, 0, labels)
    if kind == "names":
        table, known = label_embeddings(names, vectors, label_rng)
        return table, LabelEmbeddingStats(kind, vectors.dim, int(known.sum()), 0, 0,
                                          int(labels - known.sum()))
    table, docs = label_centroids(
        train.token_ids, train.token_offsets, train.label_ids, train.label_offsets,
        token_table, words_known, labels, weighting,
    )
    # The centroid table becomes the result in place: at 670K labels x 300 it is 800 MB, and
    # every full-size copy would cost as much again.
    has_centroid = docs > 0
    both = np.zeros(labels, dtype=bool)
    only_name = np.zeros(labels, dtype=bool)
    if meaningful:
        # Name vectors of the labels that use them: all (names+centroid), or the fallbacks.
        asked = np.arange(labels) if kind == "names+centroid" else np.flatnonzero(~has_centroid)
        rows, known = name_means([names[i] for i in asked.tolist()], vectors)
        rows = unit_rows(rows)
        with_name = np.zeros(labels, dtype=bool)
        with_name[asked[known]] = True
        both = with_name & has_centroid
        only_name = with_name & ~has_centroid
        table[both] = unit_rows(rows[both[asked]] + table[both])
        table[only_name] = rows[only_name[asked]]
    neither = ~has_centroid & ~only_name
    table[neither] = random_embeddings(int(neither.sum()), vectors.dim, label_rng)
    only_centroid = has_centroid & ~both
    return table, LabelEmbeddingStats(kind, vectors.dim, int(only_name.sum()),
                                      int(only_centroid.sum()), int(both.sum()),
                                      int(neither.sum()), int(docs.sum()))
