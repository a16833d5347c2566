"""`xmtc eval --per-label FILE` and `--k`: hand-computed rows, the f1 column averaging to
macro-F1, counts matching the data, and other k leaving the default k's values unchanged."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from xmtc_cli.data.processed import load_processed
from xmtc_cli.metrics import score_label_sets

pytestmark = pytest.mark.usefixtures("single_thread")


def read_tsv(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_per_label_rows_by_hand(tmp_path, cli):
    predictions, gold, train = tmp_path / "p.txt", tmp_path / "g.txt", tmp_path / "t.txt"
    predictions.write_text("a b a\nc\n\nx\n")
    gold.write_text("a\nd  c\n\n\n")
    train.write_text("a b\na\nc d\n")
    out = tmp_path / "labels.tsv"
    result = cli("eval", "--predictions", predictions, "--gold", gold, "--train-labels", train,
                 "--per-label", out, "--json", "--k", "1,3,5,10")
    assert result.code == 0, result.err
    with open(out, encoding="utf-8") as f:
        assert f.readline() == "label\tname\tsupport\tprecision\trecall\tf1\ttrain_count\n"
    rows = {r["label"]: r for r in read_tsv(out)}
    assert list(rows) == ["a", "c", "d", "b", "x"]  # most support first, then label
    assert rows["a"] == {"label": "a", "name": "a", "support": "1", "precision": "1.000000",
                         "recall": "1.000000", "f1": "1.000000", "train_count": "2"}
    assert (rows["d"]["support"], rows["d"]["recall"], rows["d"]["train_count"]) == \
        ("1", "0.000000", "1")
    assert (rows["b"]["support"], rows["b"]["precision"]) == ("0", "0.000000")
    assert rows["x"]["train_count"] == "0"
    got = json.loads(result.out)
    assert np.mean([float(r["f1"]) for r in rows.values()]) == pytest.approx(got["macro_f1"])
    # P@10: one hit in each of the first two documents' lists, over 10 slots and 4 documents.
    assert got["p@10"] == pytest.approx(0.05)
    assert {"p@1", "p@3", "p@5", "ndcg@10", "psp@10", "psndcg@10"} <= set(got)


def test_more_k_leave_the_default_k_unchanged():
    rng = np.random.default_rng(0)
    labels = [f"l{i}" for i in range(30)]
    gold = [list(rng.choice(labels, size=int(rng.integers(0, 6)), replace=False))
            for _ in range(50)]
    predicted = [list(rng.choice(labels, size=int(rng.integers(0, 12)))) for _ in range(50)]
    inv = {label: 1.0 + i / 10 for i, label in enumerate(labels)}
    default = score_label_sets(predicted, gold, inv_propensity=inv)
    more = score_label_sets(predicted, gold, inv_propensity=inv, ranks=(1, 3, 5, 10))
    assert {k: more[k] for k in default} == default  # exactly
    # P@10 by brute force.
    want = np.mean([len(set(list(dict.fromkeys(p))[:10]) & set(g)) / 10
                    for p, g in zip(predicted, gold)])
    assert more["p@10"] == pytest.approx(want)


@pytest.mark.parametrize("bad", ["0", "a,b", "", "1,2000"])
def test_bad_k_is_a_usage_error(bad, tmp_path, cli):
    (tmp_path / "p.txt").write_text("a\n")
    result = cli("eval", "--predictions", tmp_path / "p.txt", "--gold", tmp_path / "p.txt",
                 "--k", bad)
    assert result.code == 2 and "--k" in result.err


def test_per_label_of_a_checkpoint(tiny_run, tiny_data, tmp_path, cli):
    out = tmp_path / "labels.tsv"
    result = cli("eval", tiny_run.best, "--data", tiny_data.processed, "--per-label", out,
                 "--json", "--k", "1,10")
    assert result.code == 0, result.err
    got = json.loads(result.out)
    rows = read_tsv(out)
    data = load_processed(tiny_data.processed)
    test = data.splits["test"]
    assert len(rows) == 24 and {r["label"] for r in rows} == set(data.labels[:24])
    assert sum(int(r["support"]) for r in rows) == len(test.label_ids)
    names = dict(zip(data.labels, data.label_names))
    counts = dict(zip(data.labels, data.label_counts.tolist()))
    assert all(r["name"] == names[r["label"]] and int(r["train_count"]) == counts[r["label"]]
               for r in rows)
    assert np.mean([float(r["f1"]) for r in rows]) == pytest.approx(got["macro_f1_all_labels"],
                                                                     abs=1e-6)
    table = cli("eval", tiny_run.best, "--data", tiny_data.processed, "--k", "1,10").out
    assert "P@10" in table and "nDCG@10" in table and "P@3" not in table
