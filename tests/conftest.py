"""Shared fixtures: a tiny generated corpus, preprocessed once, a model trained on it once, and a
way to run `xmtc` in-process and read what it printed."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from references import TINY_RECIPE

from xmtc_cli.cli import main
from xmtc_cli.threads import THREADS_ENV

# Commands and fit() choose their own thread count (xmtc_cli.threads); on the tests' tiny
# tensors a second thread only adds overhead, so they get one unless a test says otherwise.
os.environ.setdefault(THREADS_ENV, "1")
from xmtc_cli.data.synthetic import write_demo_corpus


def write_recipe(path: Path, data: Path, epochs: int = 3) -> Path:
    """The tiny recipe over the processed folder `data`, written to `path`."""
    path.write_text(TINY_RECIPE.format(data=data, epochs=epochs), encoding="utf-8")
    return path


@contextlib.contextmanager
def threads(n: int = 1) -> Iterator[None]:
    """Tiny tensors: a second thread only adds overhead, and thrashes on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread() -> Iterator[None]:
    with threads(1):
        yield


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str | Path, stdin: bytes | None = None) -> CliResult:
    """Run `xmtc ARGS` in this process (stdin from `stdin`); its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    saved_stdin, saved_threads = sys.stdin, torch.get_num_threads()  # commands set threads
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        with (contextlib.redirect_stdout(out), contextlib.redirect_stderr(err),
              pytest.raises(SystemExit) as exit_info):
            main([str(a) for a in args])
    finally:
        sys.stdin = saved_stdin
        torch.set_num_threads(saved_threads)
    code = exit_info.value.code
    return CliResult(0 if code is None else code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    """`run_cli`, for tests."""
    return run_cli


@dataclass(frozen=True)
class TinyData:
    raw: Path  # train/test texts and labels, label_names.txt and vectors.txt
    processed: Path  # the `xmtc preprocess` output, with a 10% validation split


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> TinyData:
    """A 200 + 40 document demo corpus, preprocessed with its own word vectors."""
    root = tmp_path_factory.mktemp("tiny")
    raw = write_demo_corpus(root / "raw", seed=0, train_docs=200, test_docs=40)
    result = run_cli("preprocess", raw, "--out", root / "processed", "--glove", raw / "vectors.txt")
    assert result.code == 0, result.err
    return TinyData(raw=raw, processed=root / "processed")


@dataclass(frozen=True)
class TinyRun:
    recipe: Path
    run: Path  # the run folder

    @property
    def best(self) -> Path:
        return self.run / "model.safetensors"


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> TinyRun:
    """The tiny recipe trained for three epochs (tests must not write into its folder)."""
    root = tmp_path_factory.mktemp("tiny_run")
    recipe = write_recipe(root / "tiny.yaml", tiny_data.processed)
    with threads(1):
        result = run_cli("train", recipe, "--out", root / "run", "--device", "cpu")
    assert result.code == 0, result.err
    return TinyRun(recipe=recipe, run=root / "run")


# A small word-vector file (test_glove.py reads it; test_embeddings.py builds tables from it).
VECTORS = """\
the 0.1 0.2 0.3
cat 1 0 0
dog 0 1 0
. . . 0.5 0.5 0.5
at name@domain.com 0.1 0.1 0.1
bad x 0.2 0.3
Paris 0 0 1
paris 0 0 -1
cat 9 9 9
space 2 0 0
travel 0 2 0
"""


@pytest.fixture(params=["txt", "gz"])
def vector_file(request, tmp_path):
    if request.param == "gz":
        path = tmp_path / "vectors.txt.gz"
        path.write_bytes(gzip.compress(VECTORS.encode()))
    else:
        path = tmp_path / "vectors.txt"
        path.write_text(VECTORS)
    return path
