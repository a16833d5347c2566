"""Memory and time of the lexical scorer (xmtc_cli.lexical) at a corpus of Amazon-670K's shape.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_lexical.py
        [--docs 490449] [--labels 670091] [--words 135909] [--length 247] [--queries 2000]
        [--k 20] [--power 2] [--max-df 0.2] [--centroid 0.5] [--centroid-terms 50] [--seed 0]
        [--json FILE]

A synthetic training split is generated in memory: --docs documents of uniform 0.5-1.5 x
--length tokens drawn from a Zipf(1.1) distribution over --words token ids (so, as in real
text, a few hundred words occur in most documents: their postings are what a cosine search
pays for), each with 1 + Poisson(4.45) labels (5.45 a document, Amazon-670K's) from --labels
labels of Zipf(1.1) frequency. Then, timed apart: the index (idf, TF-IDF rows, label matrix:
`LexicalIndex.build`), its checkpoint tensors, the label centroids where --centroid > 0 (built
from the index when it first scores; `centroid_s`, `centroid_mib`), and the label scores of
--queries documents of the same distribution (`LexicalIndex.scores_of_docs`). Memory: the bytes
of the index's arrays (what the checkpoint and `predict` hold; the centroids are not stored but
held once built), and the process's peak RSS (VmHWM) after each phase.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xmtc_cli.data.processed import Split, offsets
from xmtc_cli.lexical import LexicalIndex


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def zipf_ids(rng: np.random.Generator, size: int, n: int, s: float = 1.1) -> np.ndarray:
    """`size` draws from a Zipf(s) law over 0..n-1 (id 0 the most frequent)."""
    p = 1.0 / np.arange(1, n + 1) ** s
    return rng.choice(n, size=size, p=p / p.sum()).astype(np.int32)


def corpus(rng: np.random.Generator, docs: int, words: int, labels: int,
           length: int) -> Split:
    lengths = rng.integers(length // 2, 3 * length // 2 + 1, docs)
    tokens = zipf_ids(rng, int(lengths.sum()), words - 2) + 2  # past <pad> and <unk>
    counts = 1 + rng.poisson(4.45, docs)
    label_ids = zipf_ids(rng, int(counts.sum()), labels)
    return Split(tokens, offsets(lengths), label_ids, offsets(counts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=490_449)
    ap.add_argument("--labels", type=int, default=670_091)
    ap.add_argument("--words", type=int, default=135_909)
    ap.add_argument("--length", type=int, default=247)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--power", type=float, default=2.0)
    ap.add_argument("--max-df", type=float, default=0.2)
    ap.add_argument("--centroid", type=float, default=0.0,
                    help="share of the centroid similarity (model.lexical_centroid)")
    ap.add_argument("--centroid-terms", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    row: dict = {k: v for k, v in vars(args).items() if k != "json"}

    t = time.perf_counter()
    train = corpus(rng, args.docs, args.words, args.labels, args.length)
    queries = corpus(rng, args.queries, args.words, args.labels, args.length)
    row["generate_s"] = time.perf_counter() - t
    row["corpus_peak_mib"] = peak_mib()

    t = time.perf_counter()
    index = LexicalIndex.build(train, args.words, args.labels, args.k, args.power, args.max_df,
                               args.centroid, args.centroid_terms)
    row["build_s"] = time.perf_counter() - t
    row["build_peak_mib"] = peak_mib()
    row["index_mib"] = sum(a.nbytes for a in (
        index.idf, index.docs.data, index.docs.indices, index.docs.indptr,
        index.labels.indices, index.labels.indptr)) / 2**20
    row["doc_nnz"] = int(index.docs.nnz)

    t = time.perf_counter()
    tensors = index.tensors()
    row["tensors_s"] = time.perf_counter() - t
    row["checkpoint_mib"] = sum(x.numel() * x.element_size() for x in tensors.values()) / 2**20
    del tensors

    if args.centroid > 0:
        t = time.perf_counter()
        cents = index.centroids
        row["centroid_s"] = time.perf_counter() - t
        row["centroid_peak_mib"] = peak_mib()
        row["centroid_mib"] = sum(a.nbytes for a in (cents.data, cents.indices,
                                                      cents.indptr)) / 2**20

    docs = [queries.tokens(i) for i in range(len(queries))]
    t = time.perf_counter()
    scores = index.scores_of_docs(docs)
    seconds = time.perf_counter() - t
    row["query_ms_per_doc"] = 1000 * seconds / len(docs)
    row["query_peak_mib"] = peak_mib()
    row["scored_labels_per_doc"] = scores.nnz / len(docs)
    for key, value in row.items():
        print(f"{key:24s} {value:.4g}" if isinstance(value, float) else f"{key:24s} {value}")
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
