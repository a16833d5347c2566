"""Corpora as JSONL, CSV and TSV: labels kept whole (spaces, commas, Unicode), the three
formats giving the same processed data, errors at their line, the line layout warning about
names split at spaces, and a JSONL corpus carried through train, predict and eval."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import write_recipe

from xmtc_cli.data.corpus import InseparableLabels
from xmtc_cli.data.processed import load_processed

pytestmark = pytest.mark.usefixtures("single_thread")

TOPICS = {"Money Foreign Exchange": "dollar yen currency exchange rate bank",
          "Crude Oil": "oil barrel opec crude price refinery",
          "Grain, Wheat": "wheat grain harvest tonnes corn farm",
          "Café ☕": "coffee beans brazil export roast cup"}


def documents(split: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    out = []
    for i in range(n):
        labels = [names[k] for k in rng.choice(4, size=int(rng.integers(1, 3)), replace=False)]
        words = [w for label in labels for w in rng.choice(TOPICS[label].split(), 4)]
        out.append({"id": f"{split}-{i}", "text": " ".join(words), "labels": labels})
    return out


def write_corpus(folder: Path, fmt: str, splits: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True)
    for split, docs in splits.items():
        path = folder / f"{split}.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs),
                            encoding="utf-8")
            continue
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="," if fmt == "csv" else "\t",
                                quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE)
            writer.writerow(["id", "labels", "text"])
            for d in docs:
                writer.writerow([d["id"], "|".join(d["labels"]), d["text"]])
    return folder


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {"train": documents("train", 150, 0), "test": documents("test", 30, 1)}


def test_the_three_formats_give_the_same_data_and_labels_stay_whole(splits, tmp_path, cli):
    loaded = {}
    for fmt in ("jsonl", "csv", "tsv"):
        raw = write_corpus(tmp_path / fmt, fmt, splits)
        result = cli("preprocess", raw, "--out", tmp_path / f"{fmt}-data")
        assert result.code == 0, result.err
        assert "warning" not in result.err
        loaded[fmt] = load_processed(tmp_path / f"{fmt}-data")
    data = loaded["jsonl"]
    want = Counter(label for d in splits["train"] for label in d["labels"])
    assert dict(zip(data.labels, data.label_counts.tolist())) == dict(want)
    for fmt in ("csv", "tsv"):
        other = loaded[fmt]
        assert other.labels == data.labels and other.tokens == data.tokens
        for split in ("train", "valid", "test"):
            a, b = data.splits[split], other.splits[split]
            assert np.array_equal(a.token_ids, b.token_ids)
            assert np.array_equal(a.label_ids, b.label_ids)


def test_csv_quoting_and_columns_by_name(tmp_path, cli):
    raw = tmp_path / "raw"
    raw.mkdir()
    header = "doc,body,tags\n"
    rows = '1,"oil, crude ""barrel""\nprice",Crude Oil;Grain\n2,wheat,Grain\n'
    (raw / "train.csv").write_text(header + rows * 3, encoding="utf-8")
    (raw / "test.csv").write_text(header + rows, encoding="utf-8")
    refused = cli("preprocess", raw, "--out", tmp_path / "bad")
    assert refused.code == 1
    assert f"error: {raw / 'train.csv'}:1: no column 'text' in the header" in refused.err
    assert "--text-column" in refused.err
    result = cli("preprocess", raw, "--out", tmp_path / "data", "--text-column", "body",
                 "--labels-column", "tags", "--id-column", "doc", "--label-separator", ";",
                 "--tokenizer", "punct")
    assert result.code == 0, result.err
    data = load_processed(tmp_path / "data")
    assert dict(zip(data.labels, data.label_counts.tolist())) == {"Grain": 6, "Crude Oil": 3}
    # The quoted field keeps its comma, quotes and line break as text.
    assert {"oil", "crude", "barrel", "price", "wheat"} <= set(data.tokens)
    assert data.splits["test"].token_offsets.tolist()[-1] == 8  # 7 + 1 tokens


@pytest.mark.parametrize("fmt,train,fragment", [
    ("jsonl", '{"id": 1, "text": "a"}\n', ':1: no "labels"'),
    ("jsonl", '{"text": "a", "labels": ["x\\ty"]}\n', ":1: label 'x\\ty' holds a tab"),
    ("jsonl", '{"text": "a", "labels": "x"}\n', ':1: "labels" must be a list'),
    ("jsonl", '{"text": "a", "labels": ["x"]}\n\n', ":2: an empty line"),
    ("jsonl", "not json\n", ":1: not a JSON object"),
    ("csv", "text,labels\na,x\nb,y,z\n", ":3: 3 fields, the header has 2"),
])
def test_bad_corpus_lines_are_named(fmt, train, fragment, tmp_path, cli):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"train.{fmt}").write_text(train, encoding="utf-8")
    (raw / f"test.{fmt}").write_text(train, encoding="utf-8")
    result = cli("preprocess", raw, "--out", tmp_path / "data")
    assert result.code == 1 and "Traceback" not in result.err
    assert f"error: {raw / f'train.{fmt}'}{fragment}" in result.err, result.err


def test_a_missing_test_file(tmp_path, cli):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.jsonl").write_text('{"text": "a", "labels": ["x"]}\n')
    result = cli("preprocess", raw, "--out", tmp_path / "data")
    assert result.code == 1 and f"error: {raw} has train.jsonl but no test.jsonl" in result.err


def test_inseparable_labels_rule():
    found = InseparableLabels()
    for line in (["Money", "Exchange", "oil"], ["Money", "Exchange"], ["grain", "Money",
                                                                       "Exchange"]):
        found.add(line)
    assert found.pairs() == [("Money", "Exchange")]
    found.add(["Money"])  # once alone: it is a label of its own
    assert found.pairs() == []
    two = InseparableLabels()  # fewer than MIN_LINES lines say nothing
    two.add(["a", "b"])
    two.add(["a", "b"])
    assert two.pairs() == []


def test_the_line_layout_warns_about_names_split_at_spaces(splits, tmp_path, cli):
    raw = tmp_path / "lines"
    raw.mkdir()
    for split, docs in splits.items():
        (raw / f"{split}_texts.txt").write_text("".join(d["text"] + "\n" for d in docs))
        (raw / f"{split}_labels.txt").write_text("".join(" ".join(d["labels"]) + "\n"
                                                         for d in docs))
    result = cli("preprocess", raw, "--out", tmp_path / "data")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "always occur together" in line]
    assert len(warnings) == 1 and "train.jsonl" in warnings[0]


def test_the_demo_corpus_raises_no_such_warning(tiny_data):
    stats = json.loads((tiny_data.processed / "manifest.json").read_text())["stats"]
    assert not any("always occur together" in w for w in stats["warnings"])


def test_a_jsonl_corpus_through_train_predict_and_eval(splits, tmp_path, cli):
    raw = write_corpus(tmp_path / "raw", "jsonl", splits)
    assert cli("preprocess", raw, "--out", tmp_path / "data").code == 0
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "data", epochs=2)
    trained = cli("train", recipe, "--out", tmp_path / "run", "--device", "cpu")
    assert trained.code == 0, trained.err
    model = tmp_path / "run" / "model.safetensors"
    out = tmp_path / "p.jsonl"
    result = cli("predict", model, raw / "test.jsonl", "--format", "jsonl", "--top-k", "4",
                 "--out", out)
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [d["id"] for d in splits["test"]]
    assert {x["label"] for r in rows for x in r["labels"]} == set(TOPICS)
    scored = cli("eval", "--predictions", out, "--gold", raw / "test.jsonl", "--json")
    assert scored.code == 0, scored.err
    assert json.loads(scored.out)["documents"] == 30
