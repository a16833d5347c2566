"""Same text, same answer: every command reads its text files through one reader, so a byte-order
mark, another Unicode encoding, Windows line ends, a pipe or a FIFO change nothing; `eval` reads
what `predict` writes, and refuses inputs that could only score meaningless zeros."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, threads
from safetensors.numpy import load_file

from xmtc_cli.data.synthetic import write_demo_corpus

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).parents[1]  # subprocesses run this checkout, not an installed xmtc


def one_error(result, code: int = 1) -> str:
    """The `error:` line of a failed command that printed exactly that and a hint."""
    lines = result.err.splitlines()
    assert result.code == code, result.err
    assert "Traceback" not in result.err and result.out == ""
    assert len(lines) == 2 and lines[1].startswith("hint: "), lines
    assert lines[0].startswith("error: ")
    return lines[0]


def metrics(result) -> dict:
    assert result.code == 0, result.err
    return json.loads(result.out)


# --- predict ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def doc_lines(tiny_data) -> list[str]:
    return (tiny_data.raw / "test_texts.txt").read_text(encoding="utf-8").splitlines()[:12]


@pytest.fixture(scope="module")
def expected(tiny_run, doc_lines, tmp_path_factory) -> str:
    docs = tmp_path_factory.mktemp("expected") / "docs.txt"
    docs.write_text("".join(line + "\n" for line in doc_lines), encoding="utf-8")
    with threads(1):
        result = run_cli("predict", tiny_run.best, docs)
    assert result.code == 0, result.err
    return result.out


@pytest.mark.parametrize("encoding,bom,newline", [
    ("utf-8", "\ufeff", "\n"),
    ("utf-8", "\ufeff", "\r\n"),
    ("utf-16", "", "\n"),  # the codec writes its BOM
    ("utf-16-le", "\ufeff", "\r\n"),
    ("utf-32-be", "", "\n"),
])
def test_predict_reads_any_unicode_file_as_the_same_text(tiny_run, doc_lines, expected, tmp_path,
                                                          cli, encoding, bom, newline):
    docs = tmp_path / "docs.txt"
    docs.write_bytes((bom + "".join(line + newline for line in doc_lines)).encode(encoding))
    args = [] if encoding == "utf-8" else ["--encoding", encoding]
    result = cli("predict", tiny_run.best, docs, *args)
    assert result.code == 0, result.err
    assert result.out == expected


def test_predict_refuses_utf16_read_as_utf8_at_line_1(tiny_run, doc_lines, tmp_path, cli):
    docs = tmp_path / "docs.txt"
    docs.write_bytes("\n".join(doc_lines).encode("utf-16"))
    error = one_error(cli("predict", tiny_run.best, docs))
    assert error.startswith(f"error: {docs}:1: starts with a UTF-16 or UTF-32 byte-order mark")


def test_predict_reads_a_fifo(tiny_run, doc_lines, expected, tmp_path, cli):
    fifo = tmp_path / "docs.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in doc_lines)

    writer = threading.Thread(target=feed)
    writer.start()
    result = cli("predict", tiny_run.best, fifo)
    writer.join(timeout=60)
    assert result.code == 0, result.err
    assert result.out == expected


def test_predict_reads_process_substitution_and_dev_stdin(tiny_run, doc_lines, expected,
                                                          tmp_path):
    docs = tmp_path / "docs.txt"
    docs.write_text("".join(line + "\n" for line in doc_lines), encoding="utf-8")
    xmtc = f"{sys.executable} -m xmtc_cli predict {tiny_run.best}"
    script = f"{xmtc} <(cat {docs}) && cat {docs} | {xmtc} /dev/stdin"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("XMTC_DEBUG", None)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == expected * 2


# --- preprocess ------------------------------------------------------------------------------

def test_preprocess_of_a_utf16_corpus_equals_the_utf8_one(tmp_path, cli):
    raw = write_demo_corpus(tmp_path / "raw", seed=2, train_docs=60, test_docs=10)
    utf16 = tmp_path / "raw16"
    utf16.mkdir()
    for path in raw.glob("*.txt"):
        if path.name != "vectors.txt":
            text = path.read_text(encoding="utf-8").replace("\n", "\r\n")
            (utf16 / path.name).write_bytes(text.encode("utf-16"))
    assert cli("preprocess", raw, "--out", tmp_path / "a").code == 0
    result = cli("preprocess", utf16, "--out", tmp_path / "b", "--encoding", "utf-16")
    assert result.code == 0, result.err
    for name in ("tokens.tsv", "labels.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for split in ("train", "valid", "test"):
        a, b = (load_file(str(tmp_path / d / f"{split}.safetensors")) for d in "ab")
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[key], b[key]) for key in a)


def test_preprocess_warns_about_labels_with_commas(tmp_path, cli):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train_texts.txt").write_text("the cat\na dog\nfish\n")
    (corpus / "train_labels.txt").write_text("pets\npets,animals\nfish\n")
    (corpus / "test_texts.txt").write_text("the bird\n")
    (corpus / "test_labels.txt").write_text("birds\n")
    result = cli("preprocess", corpus, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {corpus / 'train_labels.txt'}:2: label 'pets,animals' holds a comma; "
        "labels are separated by spaces, so it counts as one label"]


# --- eval from files -------------------------------------------------------------------------

def test_a_byte_order_mark_changes_no_score(tmp_path, cli):
    plain = tmp_path / "plain.txt"
    plain.write_text("a b\nc\n", encoding="utf-8")
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfa b\r\nc\r\n")
    for predictions, gold in ((bom, bom), (bom, plain), (plain, bom)):
        got = metrics(cli("eval", "--predictions", predictions, "--gold", gold, "--json"))
        assert got["micro_f1"] == got["macro_f1"] == got["p@1"] == 1.0


def test_eval_reads_label_files_in_the_encoding_given(tmp_path, cli):
    """Latin-1 labels score as their UTF-8 twins with --encoding latin-1, and are refused at
    their line, with the option named, without it."""
    lines = "café thé\nnaïve\n"
    latin, utf8 = tmp_path / "latin.txt", tmp_path / "utf8.txt"
    latin.write_bytes(lines.encode("latin-1"))
    utf8.write_text(lines, encoding="utf-8")
    (tmp_path / "train.txt").write_bytes("café\nthé naïve\ncafé thé\n".encode("latin-1"))
    got = metrics(cli("eval", "--predictions", latin, "--gold", latin, "--train-labels",
                      tmp_path / "train.txt", "--encoding", "latin-1", "--json"))
    assert got["micro_f1"] == 1.0 and got["psp@1"] == 1.0
    refused = cli("eval", "--predictions", latin, "--gold", utf8)
    assert refused.code == 1 and f"{latin}:1" in refused.err and "--encoding" in refused.err
    assert cli("eval", "CKPT", "--data", tmp_path, "--encoding", "latin-1").code == 2


def test_eval_reads_the_jsonl_that_predict_writes(tiny_run, tiny_data, tmp_path, cli):
    texts, gold = tiny_data.raw / "test_texts.txt", tiny_data.raw / "test_labels.txt"
    as_text, as_jsonl = tmp_path / "p.txt", tmp_path / "p.jsonl"
    assert cli("predict", tiny_run.best, texts, "--out", as_text, "--label-ids").code == 0
    assert cli("predict", tiny_run.best, texts, "--out", as_jsonl, "--format", "jsonl").code == 0
    want = metrics(cli("eval", "--predictions", as_text, "--gold", gold, "--json"))
    assert want["micro_f1"] > 0.2
    assert metrics(cli("eval", "--predictions", as_jsonl, "--gold", gold, "--json")) == want
    from_stdin = cli("eval", "--predictions", "-", "--gold", gold, "--json",
                     stdin=as_jsonl.read_bytes())
    assert metrics(from_stdin) == want


def test_malformed_jsonl_is_refused_at_its_line(tmp_path, cli):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"labels": ["a"], "scores": [0.9]}\n{"labels": "b"}\n')
    (tmp_path / "g.txt").write_text("a\nb\n")
    error = one_error(cli("eval", "--predictions", predictions, "--gold", tmp_path / "g.txt"))
    assert error == (f"error: {predictions}:2: expected a JSON object with \"labels\": [...] "
                     "(the file's first line is JSON), found '{\"labels\": \"b\"}'")
    predictions.write_text('{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "loss": 0.4}\n')
    error = one_error(cli("eval", "--predictions", predictions, "--gold", tmp_path / "g.txt"))
    assert error.startswith(f"error: {predictions}:1: expected a JSON object with \"labels\"")


@pytest.mark.parametrize("predicted,gold,message", [
    ("", "", "{gold} holds no documents: there is nothing to score"),
    ("a\n\n", "\n  \n", "{gold} holds 2 documents but no label: every metric would be 0"),
    ("x y\nz\n", "a\nb c\n", "no label of {predictions} occurs in {gold} (they hold 'x', 'y', "
     "... and 'a', 'b', ...): every metric would be 0"),
])
def test_eval_refuses_what_can_only_score_zero(tmp_path, cli, predicted, gold, message):
    p, g = tmp_path / "p.txt", tmp_path / "g.txt"
    p.write_text(predicted)
    g.write_text(gold)
    error = one_error(cli("eval", "--predictions", p, "--gold", g, "--json"))
    assert error == "error: " + message.format(predictions=p, gold=g)


def test_an_empty_prediction_set_still_scores(tmp_path, cli):
    """A model that predicts nothing scores 0 honestly: only disjoint non-empty sides refuse."""
    (tmp_path / "p.txt").write_text("\n\n")
    (tmp_path / "g.txt").write_text("a\nb\n")
    got = metrics(cli("eval", "--predictions", tmp_path / "p.txt", "--gold", tmp_path / "g.txt",
                      "--json"))
    assert got["micro_f1"] == 0 and got["documents"] == 2


def test_eval_warns_about_labels_with_commas(tmp_path, cli):
    (tmp_path / "p.txt").write_text("a b\na\n")
    (tmp_path / "g.txt").write_text("a,b\na\n")
    result = cli("eval", "--predictions", tmp_path / "p.txt", "--gold", tmp_path / "g.txt",
                 "--json")
    assert result.code == 0, result.err
    assert result.err.splitlines() == [
        f"warning: {tmp_path / 'g.txt'}:1: label 'a,b' holds a comma; labels are separated by "
        "spaces, so it counts as one label"]


# --- eval CHECKPOINT --data ------------------------------------------------------------------

def test_eval_refuses_data_tokenized_otherwise(tiny_run, tiny_data, tmp_path, cli):
    data = tmp_path / "punct"
    assert cli("preprocess", tiny_data.raw, "--out", data, "--tokenizer", "punct",
               "--lowercase").code == 0
    error = one_error(cli("eval", tiny_run.best, "--data", data, "--json"))
    assert error == (f"error: {tiny_run.best} was trained on text tokenized with `--tokenizer "
                     f"whitespace --keep-case`, but {data} was preprocessed with `--tokenizer "
                     "punct --lowercase`")


def test_eval_refuses_an_empty_split(tiny_run, tiny_data, tmp_path, cli):
    data = tmp_path / "no_valid"
    assert cli("preprocess", tiny_data.raw, "--out", data, "--valid-fraction", "0").code == 0
    error = one_error(cli("eval", tiny_run.best, "--data", data, "--split", "valid"))
    assert error == f"error: the 'valid' split of {data} holds no documents: there is nothing " \
        "to score"


def test_eval_refuses_another_corpus(tiny_run, tmp_path, cli):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "test"):
        (corpus / f"{split}_texts.txt").write_text("rocket launch\nocean whale\n")
        (corpus / f"{split}_labels.txt").write_text("Space\nSea\n")
    assert cli("preprocess", corpus, "--out", tmp_path / "data").code == 0
    error = one_error(cli("eval", tiny_run.best, "--data", tmp_path / "data"))
    assert error.startswith(f"error: no gold label of the 'test' split of {tmp_path / 'data'} "
                            f"is a label of {tiny_run.best} (they hold 'Sea', 'Space' and ")


def test_only_one_side_of_eval_can_be_stdin(cli):
    result = cli("eval", "--predictions", "-", "--gold", "-", stdin=b"a\n")
    assert one_error(result, code=2) == (
        "error: only one of --predictions and --gold can be - (standard input)")
