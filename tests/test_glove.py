"""Streaming word vectors: formats, malformed lines, dimension checks (the tables built from
them: test_embeddings.py)."""

import gzip
import hashlib
import os
import threading

import numpy as np
import pytest
from conftest import VECTORS

from xmtc_cli.data.glove import read_word_vectors
from xmtc_cli.errors import DataError


def test_only_wanted_words_are_kept_and_malformed_lines_counted(vector_file):
    vectors = read_word_vectors(vector_file, ["cat", "dog", "bird"])
    assert vectors.dim == 3
    assert set(vectors.vectors) == {"cat", "dog"}
    np.testing.assert_array_equal(vectors.get("cat"), [1, 0, 0])  # the first duplicate wins
    assert vectors.get("cat").dtype == np.float32
    # Words with spaces are malformed; `bad x ...` has the right shape and, being unwanted,
    # is never parsed.
    assert vectors.lines == 11 and vectors.malformed == 2
    assert vectors.sha256 == hashlib.sha256(vector_file.read_bytes()).hexdigest()


def test_lookup_falls_back_to_the_lower_case_form(vector_file):
    vectors = read_word_vectors(vector_file, ["Paris", "Dog", "THE"])
    np.testing.assert_array_equal(vectors.get("Paris"), [0, 0, 1])  # exact form first
    np.testing.assert_array_equal(vectors.get("Dog"), [0, 1, 0])
    np.testing.assert_allclose(vectors.get("THE"), [0.1, 0.2, 0.3])
    assert vectors.get("Bird") is None


def test_a_wanted_word_with_non_numeric_values_is_malformed(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("a 1 2\nb 1 oops\nc 3 4\n")
    vectors = read_word_vectors(path, ["a", "b", "c"])
    assert set(vectors.vectors) == {"a", "c"} and vectors.malformed == 1


def test_word2vec_header_is_skipped(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("2 3\ncat 1 2 3\ndog 4 5 6\n")
    vectors = read_word_vectors(path, ["cat", "dog"])
    assert vectors.dim == 3 and vectors.lines == 2 and vectors.malformed == 0


@pytest.mark.parametrize("line, count", [("dog 1 2", 2), ("dog 1 2 3 4", 4)])
def test_lines_that_disagree_on_the_dimension_are_an_error(tmp_path, line, count):
    path = tmp_path / "v.txt.gz"
    path.write_bytes(gzip.compress(f"the 1 2 3\ncat 1 2 3\n{line}\n".encode()))
    with pytest.raises(DataError) as info:
        read_word_vectors(path, ["cat"])
    assert f"{path}:3: {count} values where the file's vectors have 3" in info.value.message


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="word-vector file .*glove.txt does not exist") as info:
        read_word_vectors(tmp_path / "glove.txt", ["cat"])
    assert "--glove" in info.value.hint


def test_a_folder_is_named_as_one(tmp_path):
    with pytest.raises(DataError, match="word-vector file .* is a folder"):
        read_word_vectors(tmp_path, ["cat"])


@pytest.mark.parametrize("compress", [False, True])
def test_a_pipe_is_read_like_the_file(tmp_path, compress):
    """`--glove <(zcat FILE)`: a named pipe gives the same vectors and checksum as the file."""
    data = gzip.compress(VECTORS.encode()) if compress else VECTORS.encode()
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_bytes, args=(data,))
    writer.start()
    try:
        vectors = read_word_vectors(pipe, ["cat", "dog"])
    finally:
        writer.join(timeout=10)
    np.testing.assert_array_equal(vectors.get("dog"), [0, 1, 0])
    assert vectors.sha256 == hashlib.sha256(data).hexdigest()


def test_a_truncated_gzip_file_is_a_clear_error(tmp_path):
    path = tmp_path / "v.txt.gz"
    path.write_bytes(gzip.compress(("cat 1 2 3\n" * 1000).encode())[:-30])
    with pytest.raises(DataError, match="is damaged"):
        read_word_vectors(path, ["cat"])


def test_an_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_word_vectors(path, ["cat"])


# --- files that must be refused, not read as 0% coverage (issue 10.4) ------------------------

@pytest.mark.parametrize("value, wanted", [
    ("nan", True), ("NaN", False), ("inf", True), ("-inf", False), ("Infinity", False),
    ("1e39", True),  # beyond float32: only parsed, hence only caught, in a wanted line
])
def test_a_nan_or_inf_value_is_refused_with_its_line(tmp_path, value, wanted):
    path = tmp_path / "v.txt.gz"
    path.write_bytes(gzip.compress(f"cat 1 2 3\ndog 0.5 {value} 1\nthe 1 1 1\n".encode()))
    with pytest.raises(DataError) as info:
        read_word_vectors(path, ["cat", "dog"] if wanted else ["cat"])
    assert info.value.message == f"{path}:2: the vector holds nan or inf values"
    assert info.value.hint


def test_a_header_only_file_is_refused(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("400000 50\n")
    with pytest.raises(DataError, match=r"v.txt holds a header line but no vectors"):
        read_word_vectors(path, ["cat"])


def test_a_binary_word2vec_file_is_refused(tmp_path):
    path = tmp_path / "GoogleNews-vectors.bin"
    rows = np.random.default_rng(0).standard_normal((3, 300)).astype(np.float32)
    rows[0, 0] = 0.0  # real files hold zero bytes; this one is sure to
    body = b"".join(word + b" " + row.tobytes() for word, row in zip([b"a", b"b", b"c"], rows))
    path.write_bytes(b"3 300\n" + body)
    with pytest.raises(DataError, match=r"is a binary file, not GloVe text") as info:
        read_word_vectors(path, ["a"])
    assert "save_word2vec_format" in info.value.hint


def test_a_file_without_a_single_vector_line_is_refused(tmp_path):
    path = tmp_path / "v.tsv"
    path.write_text("cat\t1\t2\t3\ndog\t4\t5\t6\n")  # tabs, not single spaces
    with pytest.raises(DataError, match=r"none of the 2 lines of .*v.tsv is `word v1 ... v3`"):
        read_word_vectors(path, ["cat"])
    path.write_text("cat\ndog\n")  # a word list
    with pytest.raises(DataError, match=r"v.tsv:1: expected `word v1 ... vD`, found b'cat'"):
        read_word_vectors(path, ["cat"])


def test_vectors_that_disagree_with_the_header_name_the_line(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("2 300\ncat 1 2 3\ndog 4 5 6\n")
    with pytest.raises(DataError) as info:
        read_word_vectors(path, ["cat"])
    assert info.value.message == f"{path}:2: 3 values where the header (line 1) announces 300"
