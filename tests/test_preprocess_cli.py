"""`xmtc preprocess` through the CLI boundary: tables on stdout, logs on stderr, clean errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xmtc_cli.cli import main
from xmtc_cli.data.processed import load_processed


def write_corpus(folder: Path, train_texts: bytes = b"the cat\na dog\n") -> Path:
    folder.mkdir()
    (folder / "train_texts.txt").write_bytes(train_texts)
    (folder / "train_labels.txt").write_text("pets\npets animals\n")
    (folder / "test_texts.txt").write_text("the bird\n")
    (folder / "test_labels.txt").write_text("birds\n")
    return folder


def xmtc(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_prints_the_statistics_table_and_logs_on_stderr(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    code, out, err = xmtc(capsys, "preprocess", str(folder), "--out", str(tmp_path / "out"))
    assert code == 0
    assert "documents" in out and "labels/doc" in out and "vocabulary D" in out
    assert "reading" in err and "wrote" in err and "reading" not in out
    assert load_processed(tmp_path / "out").num_labels == 2


def test_json_output_for_machines(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    code, out, _ = xmtc(capsys, "preprocess", str(folder), "--out", str(tmp_path / "out"),
                        "--json", "--tokenizer", "punct", "--lowercase", "--max-vocab", "10",
                        "--seed", "3", "--valid-fraction", "0")
    assert code == 0
    summary = json.loads(out)
    assert summary["corpus"]["train_docs"] == 2 and summary["corpus"]["labels"] == 2
    assert summary["splits"]["test"]["unseen_labels"] == 1
    assert summary["out"] == str(tmp_path / "out")
    assert load_processed(tmp_path / "out").tokenizer == {"kind": "punct", "lowercase": True}


def test_bad_input_is_one_error_and_a_hint_with_exit_code_1(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    (folder / "test_labels.txt").write_text("a\nb\n")
    code, out, err = xmtc(capsys, "preprocess", str(folder), "--out", str(tmp_path / "out"))
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert lines[-2] == (f"error: {folder / 'test_texts.txt'} has 1 lines but "
                         f"{folder / 'test_labels.txt'} has 2")
    assert lines[-1].startswith("hint: ") and "Traceback" not in err


def test_an_unknown_dataset_name_suggests_the_close_one(capsys):
    code, _, err = xmtc(capsys, "preprocess", "wiki10-31k")
    assert code == 1 and "did you mean wiki10?" in err


def test_encoding_option_reads_latin1(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus", train_texts="café\nna\xefve\n".encode("latin-1"))
    code, _, err = xmtc(capsys, "preprocess", str(folder), "--out", str(tmp_path / "out"))
    assert code == 1 and "train_texts.txt:1:" in err and "--encoding latin-1" in err
    code, _, _ = xmtc(capsys, "preprocess", str(folder), "--out", str(tmp_path / "out"),
                      "--encoding", "latin-1")
    assert code == 0 and "naïve" in load_processed(tmp_path / "out").tokens


def test_a_bad_option_value_is_a_usage_error(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    code, _, err = xmtc(capsys, "preprocess", str(folder), "--tokenizer", "bpe")
    assert code == 2 and "bpe" in err


def test_python_m_xmtc_cli_shows_no_traceback(tmp_path):
    folder = write_corpus(tmp_path / "corpus", train_texts=b"ok\n\xff\xfe broken\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("XMTC_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "xmtc_cli", "preprocess", str(folder), "--out",
         str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {folder / 'train_texts.txt'}:2:" in result.stderr
    assert not (tmp_path / "out").exists()


def test_warnings_go_to_stderr_as_warning_lines_and_into_the_json(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    (folder / "label_names.txt").write_text("pets\tPets\npets\tPets\n")
    code, out, err = xmtc(capsys, "preprocess", str(folder), "--out", str(tmp_path / "out"))
    assert code == 0 and "warning:" not in out
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == [
        f"warning: {folder / 'label_names.txt'}: 1 line names a label again; the first name "
        "counts ('pets' on line 2, first on line 1)"]
    code, out, err = xmtc(capsys, "preprocess", str(folder), "--out", str(tmp_path / "out"),
                          "--json")
    assert code == 0 and len(json.loads(out)["warnings"]) == 1 and "warning: " in err


def test_label_embeddings_option_and_its_summary_line(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    (tmp_path / "g.txt").write_text("the 1 0\ncat 0 1\ndog 1 1\n")
    code, out, _ = xmtc(capsys, "preprocess", str(folder), "--out", str(tmp_path / "out"),
                        "--glove", str(tmp_path / "g.txt"), "--label-embeddings", "centroid",
                        "--centroid-weighting", "tfidf", "--valid-fraction", "0")
    assert code == 0
    assert "label embeddings (centroid, 2-d): 1 from document centroids, 1 random" in out
    manifest = load_processed(tmp_path / "out").manifest
    assert manifest["options"]["label_embeddings"] == "centroid"
    code, _, err = xmtc(capsys, "preprocess", str(folder), "--label-embeddings", "average")
    assert code == 2 and "average" in err


def test_centroids_without_glove_are_one_error_and_a_hint(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    code, out, err = xmtc(capsys, "preprocess", str(folder), "--out", str(tmp_path / "out"),
                          "--label-embeddings", "names+centroid")
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.splitlines() == [
        "error: --label-embeddings names+centroid needs word vectors: centroids are means of them",
        "hint: pass --glove FILE (e.g. glove.840B.300d.txt), or leave out --label-embeddings"]
