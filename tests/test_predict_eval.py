"""`xmtc predict` and `xmtc eval` through the CLI boundary, on a model trained on a tiny corpus:
the output contract, independence from batching, the checkpoint as the only input, clean
errors, and the three evaluation paths (training's validation, `eval CHECKPOINT`, `predict` +
`eval --predictions`) agreeing exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, threads

from xmtc_cli.checkpoint import load_checkpoint, read_meta, save_checkpoint
from xmtc_cli.config import load_recipe
from xmtc_cli.data.processed import load_processed
from xmtc_cli.data.readers import read_label_file
from xmtc_cli.labelspace import NUM_SPECIALS
from xmtc_cli.metrics import METRIC_KEYS, PS_METRIC_KEYS, score_label_sets

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).parents[1]  # subprocesses run this checkout, not an installed xmtc


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def jsonl(text: str) -> list[dict]:
    """`predict --format jsonl` lines as {"labels": the set's labels, "scores": their scores},
    after checking each line's shape: an id, and label objects ranked by score."""
    rows = []
    for line in text.splitlines():
        row = json.loads(line)
        assert row.keys() == {"id", "labels"}
        for item in row["labels"]:
            assert item.keys() == {"label", "name", "score", "in_set"}
        in_set = [item for item in row["labels"] if item["in_set"]]
        rows.append({"labels": [x["label"] for x in in_set],
                     "scores": [x["score"] for x in in_set]})
    return rows


@pytest.fixture(scope="module")
def docs(tiny_data, tmp_path_factory) -> Path:
    """Test documents cut to random lengths (so batches hold padding), a document longer than
    max_src_tokens, an empty and a blank line, a repeated document and unknown words."""
    texts = lines_of(tiny_data.raw / "test_texts.txt")
    rng = np.random.default_rng(0)
    lines = []
    for text in texts:
        words = text.split()
        lines.append(" ".join(words[: int(rng.integers(1, len(words) + 1))]))
    lines[3] = ""
    lines[7] = "   "
    lines[11] = lines[2]
    lines[13] = texts[0] + " " + texts[1]
    lines[17] = "zzyzx qwvvk"
    path = tmp_path_factory.mktemp("docs") / "docs.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def predicted(tiny_run, docs, tmp_path_factory) -> list[dict]:
    """The jsonl predictions of `docs`, one document per forward pass."""
    out = tmp_path_factory.mktemp("predicted") / "p.jsonl"
    with threads(1):
        result = run_cli("predict", tiny_run.best, docs, "--format", "jsonl", "--batch-size", "1",
                         "--order", "generation", "--out", out)
    assert result.code == 0, result.err
    return jsonl(out.read_text(encoding="utf-8"))


# --- predict ---------------------------------------------------------------------------------

def test_one_output_line_per_input_line(tiny_run, docs, predicted, cli):
    labels = read_meta(tiny_run.best).labels
    assert len(predicted) == len(lines_of(docs))
    for row in predicted:
        assert row.keys() == {"labels", "scores"} and len(row["labels"]) == len(row["scores"])
        assert set(row["labels"]) <= set(labels)
        assert len(set(row["labels"])) == len(row["labels"])  # duplicates collapse
        assert all(0 < s <= 1 for s in row["scores"])
    assert predicted[3] == predicted[7] == {"labels": [], "scores": []}  # empty and blank lines
    assert predicted[11] == predicted[2]
    # The model predicts something, and not the same thing for every document, so the order
    # checks below mean something.
    assert sum(bool(row["labels"]) for row in predicted) > len(predicted) // 2
    assert len({tuple(row["labels"]) for row in predicted}) >= 4

    text = cli("predict", tiny_run.best, docs, "--label-ids", "--order", "generation")
    assert text.code == 0, text.err
    assert text.out.split("\n") == [" ".join(row["labels"]) for row in predicted] + [""]
    assert "predicted 40 documents" in text.err and text.err.count("\n") == 1


def test_predictions_do_not_depend_on_batch_size(tiny_run, docs, predicted, cli):
    """Padding, batching and chunking change nothing: each line gets what it gets alone."""
    for batch_size in ("64", "7"):
        result = cli("predict", tiny_run.best, docs, "--format", "jsonl",
                     "--batch-size", batch_size, "--order", "generation")
        assert result.code == 0, result.err
        rows = jsonl(result.out)
        assert [r["labels"] for r in rows] == [r["labels"] for r in predicted]
        got = [s for r in rows for s in r["scores"]]
        want = [s for r in predicted for s in r["scores"]]
        assert got == pytest.approx(want, abs=1e-5)


def test_output_keeps_input_order(tiny_run, docs, predicted, tmp_path, cli):
    reversed_docs = tmp_path / "reversed.txt"
    reversed_docs.write_text("".join(line + "\n" for line in reversed(lines_of(docs))),
                             encoding="utf-8")
    result = cli("predict", tiny_run.best, reversed_docs, "--format", "jsonl",
                 "--batch-size", "5", "--order", "generation")
    assert [r["labels"] for r in jsonl(result.out)] == [r["labels"] for r in reversed(predicted)]


def test_stdin_in_and_atomic_file_out(tiny_run, docs, predicted, tmp_path, cli):
    from_stdin = cli("predict", tiny_run.best, "-", "--format", "jsonl", "--order",
                     "generation", stdin=docs.read_bytes())
    assert from_stdin.code == 0, from_stdin.err
    assert [r["labels"] for r in jsonl(from_stdin.out)] == [r["labels"] for r in predicted]

    out = tmp_path / "out" / "labels.txt"
    out.parent.mkdir()
    out.write_text("old content\n")
    result = cli("predict", tiny_run.best, docs, "--out", out, "--label-ids", "--order",
                 "generation")
    assert result.code == 0 and result.out == ""
    assert result.err.startswith("predicted 40 documents in ")
    assert result.err.endswith(f"-> {out}\n")
    assert lines_of(out) == [" ".join(r["labels"]) for r in predicted]
    assert [p.name for p in out.parent.iterdir()] == ["labels.txt"]  # no temporary file left


def test_stdin_without_a_final_newline_and_windows_line_ends(tiny_run, predicted, docs, cli):
    crlf = "\r\n".join(lines_of(docs)).encode("utf-8")  # and no line end after the last
    result = cli("predict", tiny_run.best, "-", "--format", "jsonl", "--order", "generation",
                 stdin=crlf)
    assert [r["labels"] for r in jsonl(result.out)] == [r["labels"] for r in predicted]


def test_a_checkpoint_needs_no_other_file(tiny_run, docs, predicted, tmp_path, cli):
    """The checkpoint round trip: weights and metadata reloaded and saved again, alone in a
    folder, predict exactly what the original does."""
    state, meta = load_checkpoint(tiny_run.best)
    copy = tmp_path / "elsewhere" / "copy.safetensors"
    save_checkpoint(copy, state, meta)
    assert list(copy.parent.iterdir()) == [copy]
    result = cli("predict", copy, docs, "--format", "jsonl", "--batch-size", "1", "--order",
                 "generation")
    assert result.code == 0, result.err
    assert jsonl(result.out) == predicted


def test_the_checkpoint_carries_its_provenance(tiny_run, tiny_data):
    meta = read_meta(tiny_run.best)
    data = load_processed(tiny_data.processed)
    assert meta.tokens == list(data.tokens)
    assert meta.tokenizer == dict(data.tokenizer)
    assert meta.labels == list(data.labels[: data.num_labels])
    assert meta.label_names[meta.labels.index("star_gazing")] == "Star gazing"
    assert meta.recipe == load_recipe(tiny_run.run / "recipe.yaml")
    assert meta.sizes.num_labels == data.num_labels == 24 and meta.sizes.decode_steps == 5
    lines = [json.loads(line) for line in lines_of(tiny_run.run / "metrics.jsonl")]
    epoch = meta.extra["epoch"]
    assert lines[epoch - 1]["best"] and meta.extra["valid"] == lines[epoch - 1]["valid"]


def test_repeats_collapse_and_an_empty_line_gets_the_empty_set(tiny_run, tmp_path, cli):
    """A model whose output bias makes one label win at every step: its N repeats collapse to
    one label; an empty line still gets no label, though the model would answer one."""
    state, meta = load_checkpoint(tiny_run.best)
    favourite = meta.labels.index("ocean_life")
    state["output.bias"][NUM_SPECIALS + favourite] = 1e4
    biased = tmp_path / "biased.safetensors"
    save_checkpoint(biased, state, meta)
    result = cli("predict", biased, "-", "--format", "jsonl",
                 stdin=b"rocket launch orbit\n\nzzz\n  \ngalaxy\n")
    assert result.code == 0, result.err
    one = {"labels": ["ocean_life"], "scores": [1.0]}
    empty = {"labels": [], "scores": []}
    assert jsonl(result.out) == [one, empty, one, empty, one]


def test_documents_that_are_not_utf8_name_their_line(tiny_run, tmp_path, cli):
    bad = tmp_path / "docs.txt"
    bad.write_bytes(b"rocket launch\ncaf\xe9 au lait\n")
    out = tmp_path / "out.txt"
    result = cli("predict", tiny_run.best, bad, "--out", out)
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.splitlines() == [
        f"error: {bad}:2: byte 0xe9 at column 4 is not utf-8 text",
        "hint: pass the file's encoding, e.g. --encoding latin-1",
    ]
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]  # nothing half-written
    from_stdin = cli("predict", tiny_run.best, "-", stdin=b"ok\n\xff\n")
    assert from_stdin.code == 1
    assert from_stdin.err.startswith("error: <stdin>:2: byte 0xff at column 1 is not utf-8")
    latin1 = cli("predict", tiny_run.best, bad, "--encoding", "latin-1")
    assert latin1.code == 0 and len(latin1.out.splitlines()) == 2


def test_a_missing_documents_file(tiny_run, tmp_path, cli):
    result = cli("predict", tiny_run.best, tmp_path / "nope.txt")
    assert result.code == 1 and result.out == ""
    assert result.err.startswith(f"error: documents file {tmp_path / 'nope.txt'} does not exist")


# --- broken checkpoints at the CLI boundary ---------------------------------------------------

def _broken(kind: str, tiny_run, folder: Path) -> Path:
    path = folder / f"{kind}.safetensors"
    if kind == "truncated":
        data = tiny_run.best.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not a model\n" * 10)
    return path  # "missing": never written


@pytest.mark.parametrize("command", ["predict", "eval"])
@pytest.mark.parametrize("kind,message", [
    ("missing", "error: checkpoint {} does not exist"),
    ("truncated", "error: checkpoint {} is truncated: its header describes"),
    ("text", "error: {} is not a safetensors file"),
])
def test_broken_checkpoints_are_refused_cleanly(command, kind, message, tiny_run, tiny_data,
                                                 tmp_path, cli):
    path = _broken(kind, tiny_run, tmp_path)
    args = ["predict", path, "-"] if command == "predict" else \
        ["eval", path, "--data", tiny_data.processed, "--json"]
    result = cli(*args, stdin=b"rocket\n")
    assert result.code == 1 and result.out == ""
    lines = result.err.splitlines()
    assert lines[0].startswith(message.format(path)), lines
    assert len(lines) == 2 and lines[1].startswith("hint: ")
    assert "Traceback" not in result.err


def test_xmtc_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "XMTC_DEBUG": "1", "PYTHONPATH": str(REPO)}
    missing = tmp_path / "missing.safetensors"
    proc = subprocess.run([sys.executable, "-m", "xmtc_cli", "predict", str(missing), "-"],
                          input=b"", capture_output=True, env=env, timeout=120,
                          check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert err.startswith("Traceback (most recent call last):")
    assert f"xmtc_cli.errors.CheckpointError: checkpoint {missing} does not exist" in err


def test_an_unexpected_error_asks_for_xmtc_debug(tiny_run, monkeypatch, cli):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("xmtc_cli.inference.Predictor.from_checkpoint", boom)
    result = cli("predict", tiny_run.best, "-", stdin=b"x\n")
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err == ("error: unexpected RuntimeError: boom (re-run with XMTC_DEBUG=1 to "
                          "see the traceback, and please report it)\n")
    monkeypatch.setenv("XMTC_DEBUG", "1")  # the traceback, then the same line and exit code
    result = cli("predict", tiny_run.best, "-", stdin=b"x\n")
    assert result.code == 1 and result.err.startswith("Traceback (most recent call last):")
    assert result.err.splitlines()[-2:] == [
        "RuntimeError: boom",
        "error: unexpected RuntimeError: boom (please report it, with the traceback above)"]
    monkeypatch.undo()
    monkeypatch.setenv("XMTC_DEBUG", "1")  # known errors too
    result = cli("predict", tiny_run.best.with_name("nope.safetensors"), "-")
    assert result.code == 1 and result.err.startswith("Traceback (most recent call last):")
    assert "xmtc_cli.errors.CheckpointError: checkpoint" in result.err
    assert result.err.splitlines()[-2].startswith("error: checkpoint ")


# --- eval from files ------------------------------------------------------------------------

def test_eval_files_against_hand_computed_metrics(tmp_path, cli):
    predictions = tmp_path / "pred.txt"
    gold = tmp_path / "gold.txt"
    predictions.write_text("a b a\nc\n\nx\n")  # a repeat, an empty set, a wrong label
    gold.write_text("a\nd  c\n\n\n")
    result = cli("eval", "--predictions", predictions, "--gold", gold, "--json")
    assert result.code == 0, result.err
    got = json.loads(result.out)
    assert list(got) == sorted(METRIC_KEYS)
    # TP a, c; FP b, x; FN d. Macro over a b c d x: F1 1 0 1 0 0. Example F1 2/3 2/3 0 0.
    ndcg3 = (1 + 1 / (1 + 1 / np.log2(3))) / 4
    assert got == pytest.approx({
        "micro_precision": 2 / 4, "micro_recall": 2 / 3, "micro_f1": 4 / 7,
        "macro_f1": 2 / 5, "weighted_f1": 2 / 3, "example_f1": 1 / 3,
        "p@1": 2 / 4, "p@3": (2 / 3) / 4, "p@5": (2 / 5) / 4,
        "ndcg@1": 2 / 4, "ndcg@3": ndcg3, "ndcg@5": ndcg3, "documents": 4,
    })
    table = cli("eval", "--predictions", predictions, "--gold", gold)
    assert "micro F1" in table.out and "57.14" in table.out


def test_eval_files_of_different_lengths(tmp_path, cli):
    (tmp_path / "p.txt").write_text("a\nb\n")
    (tmp_path / "g.txt").write_text("a\n")
    result = cli("eval", "--predictions", tmp_path / "p.txt", "--gold", tmp_path / "g.txt")
    assert result.code == 1 and result.out == ""
    assert result.err.splitlines()[0] == (
        f"error: {tmp_path / 'p.txt'} has 2 lines but {tmp_path / 'g.txt'} has 1"
    )


def test_a_gold_file_that_is_not_utf8(tmp_path, cli):
    (tmp_path / "p.txt").write_text("a\nb\n")
    (tmp_path / "g.txt").write_bytes(b"a\n\xe9\n")
    result = cli("eval", "--predictions", tmp_path / "p.txt", "--gold", tmp_path / "g.txt")
    assert result.code == 1
    assert result.err.splitlines() == [
        f"error: {tmp_path / 'g.txt'}:2: byte 0xe9 at column 1 is not utf-8 text",
        "hint: convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 FILE`, or name its "
        "encoding with --encoding",
    ]


@pytest.mark.parametrize("args", [
    [],
    ["--predictions", "p.txt"],
    ["--gold", "g.txt"],
    ["model.safetensors"],
    ["model.safetensors", "--data", "d", "--gold", "g.txt"],
])
def test_eval_needs_exactly_one_mode(args, cli):
    result = cli("eval", *args)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("error: ")


# --- the three evaluation paths agree ------------------------------------------------------

# Averages over a set of labels: summed in set order, which differs between label ids and names
# (and between runs, as string hashing is salted), so they agree only to rounding.
LABEL_AVERAGES = ("macro_f1", "weighted_f1")


def assert_same_metrics(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    assert {k: v for k, v in got.items() if k not in LABEL_AVERAGES} == \
        {k: v for k, v in want.items() if k not in LABEL_AVERAGES}  # exactly: counts and order
    for key in LABEL_AVERAGES:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), key


def test_eval_checkpoint_on_valid_equals_what_training_recorded(tiny_run, tiny_data, cli):
    result = cli("eval", tiny_run.best, "--data", tiny_data.processed, "--split", "valid",
                 "--json")
    assert result.code == 0, result.err
    got = json.loads(result.out)
    assert set(got) == set(METRIC_KEYS) | set(PS_METRIC_KEYS) | {"macro_f1_all_labels"}
    epoch = read_meta(tiny_run.best).extra["epoch"]
    recorded = json.loads(lines_of(tiny_run.run / "metrics.jsonl")[epoch - 1])["valid"]
    assert recorded["micro_f1"] > 0.2
    assert_same_metrics({k: got[k] for k in recorded}, recorded)
    assert got["macro_f1_all_labels"] <= got["macro_f1"]


def test_predict_then_eval_files_equals_eval_checkpoint(tiny_run, tiny_data, tmp_path, cli):
    """The test split was tokenized from the same raw file with the same tokenizer, so
    predicting the raw texts scores exactly as evaluating the processed split."""
    predictions = tmp_path / "test_predictions.txt"
    gold = tiny_data.raw / "test_labels.txt"
    assert cli("predict", tiny_run.best, tiny_data.raw / "test_texts.txt", "--out",
               predictions, "--label-ids", "--order", "generation").code == 0
    from_files = json.loads(cli("eval", "--predictions", predictions, "--gold", gold,
                                "--train-labels", tiny_data.raw / "train_labels.txt",
                                "--json").out)
    result = cli("eval", tiny_run.best, "--data", tiny_data.processed, "--json")  # test split
    assert result.code == 0, result.err
    from_checkpoint = json.loads(result.out)
    assert from_files["micro_f1"] > 0.2 and from_files["documents"] == 40
    assert from_checkpoint.pop("macro_f1_all_labels") == pytest.approx(
        score_label_sets(read_label_file(predictions), read_label_file(gold),
                 read_meta(tiny_run.best).labels)["macro_f1"], abs=1e-12)
    assert_same_metrics(from_checkpoint, from_files)


def test_eval_of_a_split_that_does_not_exist(tiny_run, tiny_data, cli):
    result = cli("eval", tiny_run.best, "--data", tiny_data.processed, "--split", "dev")
    assert result.code == 1
    assert result.err.startswith(f"error: {tiny_data.processed} has no 'dev' split (it has ")


def test_eval_checkpoint_prints_a_table(tiny_run, tiny_data, cli):
    result = cli("eval", tiny_run.best, "--data", tiny_data.processed, "--split", "valid")
    assert result.code == 0
    for row in ("micro precision", "macro F1 (all labels)", "nDCG@5", "documents"):
        assert row in result.out
