"""Every command end to end on the CPU: preprocess -> train -> predict -> eval, once in-process on a
generated corpus and once as a user runs it (`python -m xmtc_cli`, the shipped demo recipe on the
built-in corpus)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from xmtc_cli import __version__
from xmtc_cli.checkpoint import read_meta
from xmtc_cli.data.synthetic import write_demo_corpus
from xmtc_cli.metrics import METRIC_KEYS, PS_METRIC_KEYS

pytestmark = pytest.mark.usefixtures("single_thread")

DEMO = Path(__file__).parents[1] / "recipes" / "demo.yaml"
# The demo recipe shrunk to train for a few seconds on a busy CPU.
SMALL = ["model.hidden_size=16", "model.conv_kernels=[3,3]", "data.max_src_tokens=40",
         "train.batch_size=16"]
RUN_FILES = {".lock", "recipe.yaml", "metrics.jsonl", "model.safetensors", "last.safetensors",
             "train_state.safetensors", "curves.csv"}


def test_preprocess_train_predict_eval(tmp_path, cli):
    raw = write_demo_corpus(tmp_path / "raw", seed=1, train_docs=200, test_docs=30)

    result = cli("preprocess", raw, "--out", tmp_path / "data", "--glove", raw / "vectors.txt",
                 "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["corpus"]["train_docs"] == 200 and summary["corpus"]["labels"] == 24
    assert summary["splits"]["valid"]["docs"] == 20 and summary["splits"]["test"]["docs"] == 30

    run = tmp_path / "run"
    args = ["train", DEMO, f"data.dir={tmp_path / 'data'}", *SMALL, "train.epochs=2",
            "--out", run, "--device", "cpu"]
    result = cli(*args)
    assert result.code == 0, result.err
    assert "training on cpu: 180 documents, 20 for validation" in result.err
    assert "epoch 1/2 loss" in result.err and "epoch 2/2 loss" in result.err
    assert f"next: xmtc predict {run / 'model.safetensors'} DOCS.txt" in result.err
    assert "micro F1" in result.out and f"checkpoint: {run / 'model.safetensors'}" in result.out
    assert {p.name for p in run.iterdir()} == RUN_FILES  # and no temporary file left behind
    header = (run / "recipe.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert header == "# xmtc " + shlex.join(map(str, args))  # a command to paste into a shell
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(set(m["valid"]) == {*METRIC_KEYS, *PS_METRIC_KEYS} and m["train_loss"] > 0
               for m in metrics)
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"]
    assert read_meta(run / "last.safetensors").extra["epoch"] == 2
    assert read_meta(run / "model.safetensors").recipe.name == "demo"

    predictions = tmp_path / "predictions.txt"
    result = cli("predict", run / "model.safetensors", raw / "test_texts.txt", "--out",
                 predictions, "--label-ids")
    assert result.code == 0, result.err
    lines = predictions.read_text(encoding="utf-8").splitlines()
    labels = set(read_meta(run / "model.safetensors").labels)
    assert len(lines) == 30 and all(set(line.split()) <= labels for line in lines)

    result = cli("eval", "--predictions", predictions, "--gold", raw / "test_labels.txt", "--json")
    assert result.code == 0, result.err
    from_files = json.loads(result.out)
    assert set(from_files) == set(METRIC_KEYS) and from_files["documents"] == 30
    result = cli("eval", run / "model.safetensors", "--data", tmp_path / "data", "--split",
                 "test", "--json")
    assert result.code == 0, result.err
    from_checkpoint = json.loads(result.out)
    assert from_checkpoint["micro_f1"] == from_files["micro_f1"]


def test_the_demo_as_a_user_runs_it(tmp_path):
    """`python -m xmtc_cli`: the shipped recipe on the built-in corpus, generated into
    $XMTC_CACHE (never the home folder), into the default run folder, then predict from stdin."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "XMTC_CACHE": str(tmp_path / "cache"), "HOME": str(home),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[1])}  # this checkout, not an installed xmtc
    env.pop("XMTC_DEBUG", None)

    def xmtc(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xmtc_cli", *args], cwd=tmp_path, env=env,
                              input=stdin, capture_output=True, timeout=300,
                              check=False)

    train = xmtc("train", str(DEMO), *SMALL, "train.epochs=1", "--device", "cpu")
    assert train.returncode == 0, train.stderr.decode()
    err = train.stderr.decode()
    assert "training on cpu: 1,800 documents, 200 for validation" in err and "Traceback" not in err
    assert train.stdout.decode().splitlines()[-1] == "checkpoint: runs/demo/model.safetensors"
    assert (tmp_path / "cache" / f"demo-{__version__}" / "manifest.json").is_file()
    assert list(home.iterdir()) == []
    run = tmp_path / "runs" / "demo"
    assert {p.name for p in run.iterdir()} == RUN_FILES
    header = (run / "recipe.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert header == "# xmtc " + shlex.join(["train", str(DEMO), *SMALL, "train.epochs=1",
                                             "--device", "cpu"])

    docs = b"rocket launch orbit astronaut capsule\n\nwhale dolphin coral reef plankton\n"
    predict = xmtc("predict", "runs/demo/model.safetensors", "-", "--format", "jsonl",
                   stdin=docs)
    assert predict.returncode == 0, predict.stderr.decode()
    rows = [json.loads(line) for line in predict.stdout.decode().splitlines()]
    assert len(rows) == 3 and rows[1] == {"id": 2, "labels": []}
    assert [row["id"] for row in rows] == [1, 2, 3]
    assert all(0 < s["score"] <= 1 and s["in_set"] for row in rows for s in row["labels"])
    assert predict.stderr.decode().startswith("predicted 3 documents in ")
