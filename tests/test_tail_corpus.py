"""The benchmark's tail-heavy corpus generator (benchmarks/tail_corpus.py): seeded, power-law."""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tail_corpus import TailSpec, generate, power_law_counts, write_tail_corpus

SMALL = TailSpec(themes=10, qualifiers=20, labels=200, train_docs=400, valid_docs=40,
                 test_docs=100, head_count=80, noise_words=100)


def test_the_default_label_counts_follow_a_power_law_with_a_long_tail():
    spec = TailSpec()
    counts, exponent = power_law_counts(spec, total=23_700)  # about 6,000 documents x 3.95
    assert counts.sum() == 23_700 and list(counts) == sorted(counts, reverse=True)
    assert counts[0] >= 900 and counts.min() == spec.min_count == 2
    assert np.mean(counts <= 5) > 0.6 and (counts >= 100).sum() >= 10  # tail and head
    ranks = np.arange(1, len(counts) + 1)
    unfloored = counts > 2 * spec.min_count  # where the floor does not bend the line
    slope = np.polyfit(np.log(ranks[unfloored]), np.log(counts[unfloored]), 1)[0]
    assert abs(slope + exponent) < 0.05 and 0.5 < exponent < 1.0


def test_the_corpus_is_deterministic_and_its_training_counts_are_the_targets(tmp_path):
    a, b = generate(SMALL), generate(SMALL)
    assert a["splits"] == b["splits"] and a["vectors"].keys() == b["vectors"].keys()
    assert all(np.array_equal(a["vectors"][w], b["vectors"][w]) for w in a["vectors"])
    assert generate(dataclasses.replace(SMALL, seed=1))["splits"]["train"] != a["splits"]["train"]

    names = [x.label for x in a["labels"]]
    seen = Counter(x for _, labels in a["splits"]["train"] for x in labels)
    target = dict(zip(names, a["counts"].tolist()))
    assert sum(seen[x] == target[x] for x in names) >= 0.95 * len(names)
    assert min(seen[x] for x in names) >= 1
    sizes = [len(labels) for split in a["splits"].values() for _, labels in split]
    assert 3.5 < np.mean(sizes) < 4.5 and max(sizes) == 5

    out = write_tail_corpus(tmp_path / "raw", SMALL)
    files = {p.name for p in (tmp_path / "raw").iterdir()}
    assert {"train_texts.txt", "train_labels.txt", "valid_texts.txt", "valid_labels.txt",
            "test_texts.txt", "test_labels.txt", "label_names.txt", "vectors.txt"} <= files
    label, name = (tmp_path / "raw" / "label_names.txt").read_text().splitlines()[0].split("\t")
    assert name.lower().split() == label.split("_")  # readable, made of words with vectors
    vocabulary = {line.split(" ", 1)[0] for line in
                  (tmp_path / "raw" / "vectors.txt").read_text().splitlines()}
    words = {w for line in (tmp_path / "raw" / "test_texts.txt").read_text().splitlines()
             for w in line.split()}
    assert words <= vocabulary and set(name.lower().split()) <= vocabulary
    assert list(out["counts"]) == list(a["counts"])
