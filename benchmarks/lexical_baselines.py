"""Lexical baselines of `bench_tail.py`: TF-IDF kNN label propagation and Omikuji, with the
thresholding that turns their label scores into label sets. Benchmark-only: scikit-learn and
omikuji come from the `bench` extra (pip install -e '.[bench]').

Scores are kept as a sparse [documents x labels] matrix (scipy CSR): a document's row holds
only the labels its neighbours (kNN) or its tree beam (Omikuji) reached, so 16K or 670K labels
cost no more memory than the non-zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def label_matrix(label_rows: Sequence[Sequence[int]], num_labels: int) -> sp.csr_matrix:
    """Binary [documents x labels] CSR matrix from each document's label ids (repeats count
    once)."""
    rows = [sorted(set(map(int, labels))) for labels in label_rows]
    indptr = np.cumsum([0, *map(len, rows)])
    indices = np.fromiter((j for row in rows for j in row), dtype=np.int64, count=indptr[-1])
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), num_labels))


# --- kNN -------------------------------------------------------------------------------------

def nearest_neighbours(x_query: sp.csr_matrix, x_train: sp.csr_matrix, k: int,
                       chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The k training rows of largest dot product with each query row (cosine for the
    L2-normalised rows TfidfVectorizer makes), most similar first: (indices, similarities),
    each [queries x k]. Ties keep the lower training index first. Memory: one dense
    [chunk x training documents] block at a time."""
    k = min(k, x_train.shape[0])
    x_train_t = x_train.T.tocsr()
    indices = np.empty((x_query.shape[0], k), dtype=np.int64)
    sims = np.empty((x_query.shape[0], k), dtype=np.float64)
    for start in range(0, x_query.shape[0], chunk):
        block = np.asarray((x_query[start:start + chunk] @ x_train_t).todense())
        # A stable sort of the negated similarities: highest first, ties by training index.
        order = np.argsort(-block, axis=1, kind="stable")[:, :k]
        indices[start:start + len(block)] = order
        sims[start:start + len(block)] = np.take_along_axis(block, order, axis=1)
    return indices, sims


def knn_scores(indices: np.ndarray, sims: np.ndarray, y_train: sp.csr_matrix,
               k: int) -> sp.csr_matrix:
    """Label scores by similarity-squared-weighted voting of the first k neighbours:
    score(d, l) = sum over neighbours n of d with label l of s_n^2, divided by the sum of s_n^2
    over the k neighbours (so scores lie in [0, 1]; a document with no similar training
    document scores nothing)."""
    n = indices.shape[0]
    weights = np.clip(sims[:, :k], 0.0, None) ** 2
    w = sp.csr_matrix((weights.ravel(), indices[:, :k].ravel(),
                       np.arange(0, n * k + 1, k)), shape=(n, y_train.shape[0]))
    scores = (w @ y_train).tocsr()
    total = weights.sum(axis=1)
    scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
    return sp.diags(scale) @ scores


# --- Omikuji ---------------------------------------------------------------------------------

def write_xmc_file(path: Path, x: sp.csr_matrix, label_rows: Sequence[Sequence[int]],
                   num_labels: int) -> int:
    """The Extreme Classification Repository's text format Omikuji trains on (as Annif writes
    it): a header `documents features labels`, then `l1,l2 f:v f:v` per document. Documents
    without labels or without features are left out (Annif does the same); returns how many
    were written."""
    lines = []
    for i, labels in enumerate(label_rows):
        row = x.getrow(i)
        if not len(labels) or not row.nnz:
            continue
        features = " ".join(f"{j}:{v:.6g}" for j, v in zip(row.indices, row.data))
        lines.append(",".join(str(int(label)) for label in sorted(set(labels))) + " " + features)
    path.write_text(f"{len(lines)} {x.shape[1]} {num_labels}\n" + "\n".join(lines) + "\n")
    return len(lines)


def omikuji_scores(model, x: sp.csr_matrix, num_labels: int, top_k: int = 10,
                   beam_size: int = 10) -> sp.csr_matrix:
    """Omikuji's top_k labels and scores for each row of x, as a sparse [documents x labels]
    matrix (a row without features scores nothing)."""
    rows, cols, vals = [], [], []
    for i in range(x.shape[0]):
        row = x.getrow(i)
        if not row.nnz:
            continue
        pairs = [(int(j), float(v)) for j, v in zip(row.indices, row.data)]
        for label, score in model.predict(pairs, beam_size=beam_size, top_k=top_k):
            rows.append(i)
            cols.append(label)
            vals.append(score)
    return sp.csr_matrix((vals, (rows, cols)), shape=(x.shape[0], num_labels))


# --- from scores to label sets and rankings --------------------------------------------------

def ranked_scores(scores: sp.csr_matrix,
                  limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each row's labels with a positive score and those scores, highest first (ties: lower
    label id first), at most `limit`: (label ids, scores) per row."""
    scores = scores.tocsr()
    out = []
    for i in range(scores.shape[0]):
        lo, hi = scores.indptr[i], scores.indptr[i + 1]
        cols, vals = scores.indices[lo:hi], scores.data[lo:hi]
        keep = vals > 0
        cols, vals = cols[keep], vals[keep]
        order = np.lexsort((cols, -vals))[:limit]
        out.append((cols[order], vals[order]))
    return out


def ranked(scores: sp.csr_matrix, limit: int | None = None) -> list[list[int]]:
    """Each row's labels with a positive score, highest first, at most `limit`."""
    return [cols.tolist() for cols, _ in ranked_scores(scores, limit)]


def label_sets(ranking: list[tuple[np.ndarray, np.ndarray]], threshold: float,
               limit: int | None = None) -> list[list[int]]:
    """From `ranked_scores`: each row's labels with score >= threshold, highest first, at most
    `limit`; a row where none passes gets its top-scoring label (at least one label per
    document, as the SVM and the data README's kNN reference do); a row with no score at all
    stays empty."""
    out = []
    for cols, vals in ranking:
        kept = cols[vals >= threshold][:limit].tolist()
        out.append(kept or cols[:1].tolist())
    return out
