"""The lexical scorer beside the set decoder (beyond the paper; docs/design.md §11).

Each document becomes a TF-IDF vector of the token ids the decoder reads (all of them, not cut to
data.max_src_tokens): sublinear term frequency 1 + ln(tf), times the smoothed inverse document
frequency ln((1 + n) / (1 + df)) + 1 of the training split (as scikit-learn's TfidfVectorizer),
rows L2-normalised; <pad> and <unk> count for nothing. A query's label scores come from its k
most cosine-similar training documents (kNN label propagation),

    knn(y) = sum_{n in top-k} s_n^p [y in Y_n] / sum_{n in top-k} s_n^p        in [0, 1],

blended, with a share a = model.lexical_centroid, with its cosine to each label's centroid (the
sum of the label's training rows, cut to its `centroid_terms` heaviest tokens, L2-normalised):

    q(y) = (1 - a) knn(y) + a cos(x, c_y)                                      in [0, 1].

The kNN votes are sharp where a document has near-duplicates, the centroids still rank a label
whose few documents are only loosely like the query; a = 0 is the kNN alone.

Fusion (`fused_choice`): the decoder still decides, at each step, whether to emit a label (its
arg-max over all outputs is a corpus label not yet emitted) or not (∅, EOS, or a label it emitted
already); when it emits one, which label is the arg-max over the labels not yet emitted of
o_y + w (ln(q(y) + eps) - ln eps), o the decoder's logits (ln p_dec up to a constant per step).
With w = 0 that is the decoder's own choice, so weight 0 is the paper's model exactly.

Everything here is plain numpy/scipy (the index) or one small torch function (the choice); the
checkpoint stores the index as tensors (`index_tensors`, `index_from_tensors`).

Shapes: N training documents, W source tokens (vocabulary), L corpus labels, B queries,
V = L + NUM_SPECIALS decoder outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from xmtc_cli.config import ModelConfig
from xmtc_cli.data.processed import Split
from xmtc_cli.data.vocab import PAD_ID, UNK_ID
from xmtc_cli.labelspace import NUM_SPECIALS

EPS = 1e-3
"""The floor inside ln(q + eps): a label no neighbour carries scores ln(eps) - ln(eps) = 0, one
all k neighbours carry w (ln(1 + eps) - ln eps), about 6.9 w."""
PREFIX = "lexical."
"""Checkpoint tensors of the index are named lexical.*; the rest are the model's."""
TENSOR_DTYPES = {"idf": "F32", "docs.indptr": "I64", "docs.indices": "I32", "docs.data": "F32",
                 "labels.indptr": "I64", "labels.indices": "I32"}
_QUERY_CELLS = 1 << 25  # similarities held at once per query batch: 128 MiB of float32
CENTROID_KEEP = 100
"""Centroid similarities kept per query (its best labels): the rest of a row's L cosines are
small and would make every query's score row dense at 670K labels."""
_CENTROID_CHUNK = 1 << 16  # labels whose centroids are summed at once


# --- TF-IDF ---------------------------------------------------------------------------------

def document_frequencies(token_ids: np.ndarray, token_offsets: np.ndarray,
                         vocab_size: int) -> np.ndarray:
    """int64 [W]: how many documents hold each token id at least once."""
    counts = term_counts(token_ids, token_offsets, vocab_size)
    return np.bincount(counts.indices, minlength=vocab_size).astype(np.int64)


def inverse_document_frequencies(train: Split, vocab_size: int,
                                 max_df: float = 1.0) -> np.ndarray:
    """float32 [W]: smoothed idf ln((1 + n) / (1 + df)) + 1 over the training documents; 0 for
    <pad> and <unk>, which say nothing about a document's subject, and for tokens in more than
    `max_df` of the training documents (stop words: their long postings are most of a cosine
    search's work, and their low idf adds little to it)."""
    df = document_frequencies(train.token_ids, train.token_offsets, vocab_size)
    idf = (np.log((1.0 + len(train)) / (1.0 + df)) + 1.0).astype(np.float32)
    idf[[PAD_ID, UNK_ID]] = 0.0
    idf[df > max_df * len(train)] = 0.0
    return idf


def term_counts(token_ids: np.ndarray, token_offsets: np.ndarray, vocab_size: int,
                chunk: int = 1 << 24) -> sp.csr_matrix:
    """CSR float32 [docs, W]: how often each token id occurs in each document.

    Built `chunk` tokens' worth of documents at a time, so that 490K documents of 200 tokens
    never hold more than a chunk's coordinates beside the result.
    """
    docs = len(token_offsets) - 1
    bounds = [0]
    while bounds[-1] < docs:
        start = bounds[-1]
        stop = int(np.searchsorted(token_offsets, token_offsets[start] + chunk, side="right")) - 1
        bounds.append(min(max(stop, start + 1), docs))
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        lo, hi = int(token_offsets[start]), int(token_offsets[stop])
        lengths = np.diff(token_offsets[start : stop + 1])
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), lengths)
        part = sp.csr_matrix((np.ones(hi - lo, dtype=np.float32),
                              (rows, token_ids[lo:hi].astype(np.int64))),
                             shape=(stop - start, vocab_size))
        part.sum_duplicates()
        parts.append(part)
    if not parts:
        parts.append(sp.csr_matrix((0, vocab_size), dtype=np.float32))
    out = parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")
    out.indices = out.indices.astype(np.int32, copy=False)
    return out


def tfidf(token_ids: np.ndarray, token_offsets: np.ndarray, idf: np.ndarray) -> sp.csr_matrix:
    """CSR float32 [docs, W]: each document's (1 + ln tf) idf, L2-normalised; an all-zero row
    for a document with no token of weight."""
    m = term_counts(token_ids, token_offsets, len(idf))
    m.data = ((1.0 + np.log(m.data)) * idf[m.indices]).astype(np.float32)
    m.eliminate_zeros()
    return normalise_rows(m)


def tfidf_of_docs(docs: Sequence[np.ndarray | Sequence[int]], idf: np.ndarray) -> sp.csr_matrix:
    """`tfidf` of documents given as token-id arrays; ids beyond the vocabulary count as <unk>."""
    lengths = [len(d) for d in docs]
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = (np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if sum(lengths)
           else np.zeros(0, dtype=np.int64))
    ids = np.where((ids >= 0) & (ids < len(idf)), ids, UNK_ID)
    return tfidf(ids, offsets, idf)


def label_matrix(split: Split, num_labels: int) -> sp.csr_matrix:
    """CSR float32 [docs, L]: 1 where a document carries a label (label ids >= L dropped)."""
    lengths = np.diff(split.label_offsets)
    rows = np.repeat(np.arange(len(split), dtype=np.int64), lengths)
    cols = split.label_ids.astype(np.int64)
    keep = cols < num_labels
    m = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])),
                      shape=(len(split), num_labels))
    m.sum_duplicates()
    m.data[:] = 1.0
    m.indices = m.indices.astype(np.int32, copy=False)
    return m


# --- kNN label propagation ------------------------------------------------------------------

@dataclass(frozen=True)
class LexicalIndex:
    """The training documents' TF-IDF rows and label sets, and how to score labels from them:
    kNN label propagation, blended with label-centroid similarity (module docstring)."""

    idf: np.ndarray  # float32 [W]
    docs: sp.csr_matrix  # float32 [N, W], rows L2-normalised
    labels: sp.csr_matrix  # float32 [N, L] of ones
    k: int  # neighbours per query
    power: float  # similarity exponent p of the neighbour weights
    centroid: float = 0.0  # share a of the centroid similarity in q
    centroid_terms: int = 50  # tokens kept per label centroid

    @classmethod
    def build(cls, train: Split, vocab_size: int, num_labels: int, k: int, power: float,
              max_df: float = 1.0, centroid: float = 0.0,
              centroid_terms: int = 50) -> LexicalIndex:
        idf = inverse_document_frequencies(train, vocab_size, max_df)
        return cls(idf, tfidf(train.token_ids, train.token_offsets, idf),
                   label_matrix(train, num_labels), k, power, centroid, centroid_terms)

    @classmethod
    def for_recipe(cls, train: Split, vocab_size: int, num_labels: int,
                   model_cfg: ModelConfig) -> LexicalIndex:
        """`build` with a recipe's model.lexical_* options."""
        return cls.build(train, vocab_size, num_labels, max_df=model_cfg.lexical_max_df,
                         **scoring_options(model_cfg))

    @property
    def num_labels(self) -> int:
        return self.labels.shape[1]

    @functools.cached_property
    def postings(self) -> sp.csr_matrix:
        """CSR float32 [W, N]: the training rows transposed, for query products, made once
        (scipy would transpose the whole index for every batch)."""
        return self.docs.T.tocsr()

    @functools.cached_property
    def centroids(self) -> sp.csr_matrix:
        """CSR float32 [L, W]: each label's centroid, the sum of its training rows cut to its
        `centroid_terms` heaviest tokens, L2-normalised; an all-zero row for a label without
        training documents. Summed `_CENTROID_CHUNK` labels at a time, so that the uncut sums
        of 670K labels are never held at once."""
        by_label = self.labels.T.tocsr()  # (L, N)
        parts = [keep_heaviest(by_label[start : start + _CENTROID_CHUNK] @ self.docs,
                               self.centroid_terms)
                 for start in range(0, self.num_labels, _CENTROID_CHUNK)]
        if not parts:
            parts.append(sp.csr_matrix((0, self.docs.shape[1]), dtype=np.float32))
        return normalise_rows(sp.vstack(parts, format="csr").astype(np.float32))

    @functools.cached_property
    def centroid_postings(self) -> sp.csr_matrix:
        """CSR float32 [W, L]: the centroids transposed, for query products."""
        return self.centroids.T.tocsr()

    def scores(self, queries: sp.csr_matrix) -> sp.csr_matrix:
        """CSR float32 [B, L]: q(y) of every label for TF-IDF rows `queries` [B, W]; labels
        neither a neighbour carries nor among the query's CENTROID_KEEP best centroids are
        left out (q = 0). A query with no similar document scores nothing."""
        knn = self.knn_scores(queries)
        if self.centroid == 0:
            return knn
        out = ((1.0 - self.centroid) * knn
               + self.centroid * self.centroid_scores(queries)).tocsr().astype(np.float32)
        out.eliminate_zeros()
        return out

    def knn_scores(self, queries: sp.csr_matrix) -> sp.csr_matrix:
        """CSR float32 [B, L]: knn(y), the share of the k nearest training documents' weight
        on each label; labels of no neighbour are left out."""
        n = self.docs.shape[0]
        k = min(self.k, n)
        step = max(1, _QUERY_CELLS // max(n, 1))
        docs_t = self.postings  # (W, N)
        parts = []
        for start in range(0, queries.shape[0], step):
            q = queries[start : start + step]
            sims = (q @ docs_t).toarray()  # (b, N)
            if k < n:
                top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (b, k), unordered
            else:
                top = np.broadcast_to(np.arange(n), (q.shape[0], n))
            weights = np.take_along_axis(sims, top, axis=1).clip(min=0.0) ** self.power
            total = weights.sum(axis=1, keepdims=True)  # (b, 1)
            weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
            rows = np.repeat(np.arange(q.shape[0]), top.shape[1])
            w = sp.csr_matrix((weights.ravel().astype(np.float32), (rows, top.ravel())),
                              shape=(q.shape[0], n))
            w.eliminate_zeros()
            parts.append((w @ self.labels).tocsr())  # (b, L)
        return _stack(parts, self.num_labels)

    def centroid_scores(self, queries: sp.csr_matrix) -> sp.csr_matrix:
        """CSR float32 [B, L]: cos(x, c_y) for each query's CENTROID_KEEP most similar label
        centroids (ties at the cut broken by argpartition), 0 elsewhere."""
        cents_t = self.centroid_postings  # (W, L)
        step = max(1, _QUERY_CELLS // max(self.num_labels, 1))
        parts = []
        for start in range(0, queries.shape[0], step):
            sims = (queries[start : start + step] @ cents_t).toarray()  # (b, L)
            if CENTROID_KEEP < self.num_labels:
                order = np.argpartition(-sims, CENTROID_KEEP - 1, axis=1)[:, :CENTROID_KEEP]
                kept = np.zeros_like(sims)
                np.put_along_axis(kept, order, np.take_along_axis(sims, order, axis=1), axis=1)
                sims = kept
            parts.append(sp.csr_matrix(sims.clip(min=0.0)))
        return _stack(parts, self.num_labels)

    def scores_of_docs(self, docs: Sequence[np.ndarray | Sequence[int]]) -> sp.csr_matrix:
        """`scores` of documents given as token-id arrays."""
        return self.scores(tfidf_of_docs(docs, self.idf))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The index as checkpoint tensors, named PREFIX + one of TENSOR_DTYPES (the centroids
        are not stored: they are a function of these)."""
        arrays = {"idf": self.idf, "docs.indptr": self.docs.indptr.astype(np.int64),
                  "docs.indices": self.docs.indices.astype(np.int32),
                  "docs.data": self.docs.data.astype(np.float32),
                  "labels.indptr": self.labels.indptr.astype(np.int64),
                  "labels.indices": self.labels.indices.astype(np.int32)}
        return {PREFIX + name: torch.from_numpy(np.ascontiguousarray(a))
                for name, a in arrays.items()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], k: int, power: float,
                     centroid: float = 0.0, centroid_terms: int = 50) -> LexicalIndex:
        """The index `tensors` holds (names as `tensors()` writes them, shapes already checked
        by `spec_problem`); ValueError naming what is inconsistent in the values."""
        a = {name: tensors[PREFIX + name].cpu().numpy() for name in TENSOR_DTYPES}
        idf = a["idf"]
        if not np.isfinite(idf).all() or (idf < 0).any():
            raise ValueError("its idf holds a negative or non-finite value")
        if not np.isfinite(a["docs.data"]).all():
            raise ValueError("its document vectors hold a non-finite value")
        docs = _csr(a["docs.indptr"], a["docs.indices"], a["docs.data"], len(idf), "documents")
        labels = _csr(a["labels.indptr"], a["labels.indices"],
                      np.ones(len(a["labels.indices"]), dtype=np.float32), None, "labels")
        return cls(idf, docs, labels, k, power, centroid, centroid_terms)

    def with_num_labels(self, num_labels: int) -> LexicalIndex:
        """The same index over `num_labels` label columns (a checkpoint's L)."""
        labels = sp.csr_matrix((self.labels.data, self.labels.indices, self.labels.indptr),
                               shape=(self.labels.shape[0], num_labels))
        return dataclasses.replace(self, labels=labels)


def scoring_options(model_cfg: ModelConfig) -> dict[str, float | int]:
    """The recipe's model.lexical_* options that shape the scores (`from_tensors`' keywords);
    max_df only shapes the idf, which the checkpoint stores."""
    return {"k": model_cfg.lexical_k, "power": model_cfg.lexical_power,
            "centroid": model_cfg.lexical_centroid,
            "centroid_terms": model_cfg.lexical_centroid_terms}


def keep_heaviest(m: sp.csr_matrix, per_row: int) -> sp.csr_matrix:
    """CSR float32: `m` with each row cut to its `per_row` largest values (the first of equals
    by column), the rest dropped."""
    m = m.tocsr()
    m.sum_duplicates()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))  # by row, value descending, then column
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - m.indptr[rows[order]]
    keep = rank < per_row
    return sp.csr_matrix((m.data[keep].astype(np.float32), m.indices[keep], (
        np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=m.shape[0]))]))),
        shape=m.shape)


def normalise_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    """`m` with every non-zero row scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())  # (rows,)
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    m = m.copy()
    m.data *= np.repeat(scale, np.diff(m.indptr)).astype(m.data.dtype)
    return m


def _stack(parts: list[sp.csr_matrix], num_labels: int) -> sp.csr_matrix:
    if not parts:
        return sp.csr_matrix((0, num_labels), dtype=np.float32)
    out = sp.vstack(parts, format="csr").astype(np.float32)
    out.eliminate_zeros()
    return out


def _csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, width: int | None,
         what: str) -> sp.csr_matrix:
    if (len(indptr) == 0 or indptr[0] != 0 or indptr[-1] != len(indices)
            or (np.diff(indptr) < 0).any()):
        raise ValueError(f"its {what} row offsets are not a CSR layout")
    if len(indices) and (indices.min() < 0 or (width is not None and indices.max() >= width)):
        raise ValueError(f"its {what} hold a column index out of range")
    cols = width if width is not None else (int(indices.max()) + 1 if len(indices) else 0)
    return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, cols))


def spec_problem(specs: Mapping[str, tuple[str, tuple[int, ...]]], vocab_size: int,
                 wanted: bool) -> str | None:
    """What is wrong with the lexical.* tensors of a checkpoint header (name -> dtype, shape),
    or None: all six of TENSOR_DTYPES if `wanted` (the recipe's model.lexical is on), none
    otherwise, with the dtypes and the shapes a CSR index over `vocab_size` tokens has."""
    if not wanted:
        return (f"holds a lexical index ({', '.join(sorted(specs))}) that its recipe does not "
                "use (model.lexical is none)") if specs else None
    names = {PREFIX + n for n in TENSOR_DTYPES}
    missing, extra = sorted(names - set(specs)), sorted(set(specs) - names)
    if missing or extra:
        return ("does not hold the lexical index its recipe uses (model.lexical): "
                + "; ".join(([f"it lacks {', '.join(missing)}"] if missing else [])
                            + ([f"it has unknown {', '.join(extra)}"] if extra else [])))
    for name, dtype in TENSOR_DTYPES.items():
        got, shape = specs[PREFIX + name]
        if got != dtype or len(shape) != 1:
            return f"stores tensor {PREFIX}{name} as {got} {list(shape)}; xmtc writes {dtype} [n]"
    size = {n: specs[PREFIX + n][1][0] for n in TENSOR_DTYPES}
    if size["idf"] != vocab_size:
        return f"has an idf of {size['idf']:,} tokens for a vocabulary of {vocab_size:,}"
    if size["docs.indptr"] != size["labels.indptr"] or size["docs.indptr"] < 1:
        return "has lexical document and label rows of different counts"
    if size["docs.indices"] != size["docs.data"]:
        return "has lexical document indices and values of different lengths"
    return None


# --- fusion ---------------------------------------------------------------------------------

def prior_bonus(scores: sp.csr_matrix, weight: float, num_outputs: int,
                device: torch.device | str = "cpu",
                threshold: float | None = None) -> torch.Tensor:
    """float32 [B, V]: w (ln(q + eps) - ln eps) of every label for label scores [B, L] (0 for
    labels no neighbour carries), and for the specials 0, or with a `threshold` τ (the fused
    gate) w (ln(τ + eps) - ln eps): a label then outbids ∅ by its lexical score where q > τ,
    and loses ground where q < τ."""
    coo = scores.tocoo()
    bonus = torch.zeros(scores.shape[0], num_outputs, dtype=torch.float32)
    if threshold is not None:
        bonus[:, :NUM_SPECIALS] = weight * (math.log(threshold + EPS) - math.log(EPS))
    values = weight * (np.log(coo.data.astype(np.float64) + EPS) - math.log(EPS))
    bonus[torch.from_numpy(coo.row.astype(np.int64)),
          torch.from_numpy(coo.col.astype(np.int64) + NUM_SPECIALS)] = torch.from_numpy(
        values.astype(np.float32))
    return bonus.to(device)


def fused_choice(logits: torch.Tensor, bonus: torch.Tensor, emitted: torch.Tensor,
                 gate: bool = False) -> torch.Tensor:
    """The output each document takes at one decoding step, and `emitted` updated in place.

    logits [B, V] (masked as the model masks them), bonus [B, V] (`prior_bonus`), emitted
    [B, V] bool: the labels this decode has emitted so far. Without `gate` the decoder's own
    arg-max decides whether a label comes (a corpus label not emitted yet) or not (a special,
    or a repeat, which adds nothing to the set); when one comes it is the best not-yet-emitted
    corpus label of logits + bonus. With `gate` (model.lexical_gate=fused) a repeat still adds
    nothing, and otherwise the step takes the best of logits + bonus over the specials (their
    bonus the threshold's, `prior_bonus`) and the labels not yet emitted: a label the
    neighbours vouch for can outbid ∅.
    """
    own = logits.argmax(dim=-1)  # (B,)
    repeat = (own >= NUM_SPECIALS) & emitted.gather(1, own.unsqueeze(1)).squeeze(1)  # (B,)
    fused = logits.float() + bonus  # (B, V)
    if not gate:
        fused[:, :NUM_SPECIALS] = -math.inf
    fused = fused.masked_fill(emitted, -math.inf)
    best = fused.argmax(dim=-1)  # (B,)
    if gate:
        comes = ~repeat & (best >= NUM_SPECIALS)
        choice = torch.where(repeat, own, best)
    else:
        comes = (own >= NUM_SPECIALS) & ~repeat
        choice = torch.where(comes, best, own)  # (B,)
    rows = torch.arange(choice.size(0), device=choice.device)
    emitted[rows, choice] = emitted[rows, choice] | comes
    return choice


def gate_threshold(model_cfg: ModelConfig) -> float | None:
    """The threshold of the fused gate (`prior_bonus`), or None where the decoder gates."""
    return model_cfg.lexical_threshold if model_cfg.lexical_gate == "fused" else None


# --- choosing the weight --------------------------------------------------------------------

def choose_weight(weights: Sequence[float],
                  score: Callable[[float], dict[str, float]]) -> tuple[float, dict[str, float],
                                                                        dict[float, float]]:
    """The weight of `weights` whose metrics `score(w)` have the best micro-F1 (the first of
    equals, so list smaller weights first), its metrics, and every weight's micro-F1."""
    best_w, best, by_weight = None, None, {}
    for w in weights:
        metrics = score(float(w))
        by_weight[float(w)] = metrics["micro_f1"]
        if best is None or metrics["micro_f1"] > best["micro_f1"]:
            best_w, best = float(w), metrics
    return best_w, best, by_weight
