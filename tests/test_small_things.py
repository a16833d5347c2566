"""The small things: help that names every option in full at 80 columns, eval on the built-in
demo corpus, and SIGTERM reported in words."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from xmtc_cli.cli.app import app

REPO = Path(__file__).parents[1]
COMMANDS = ("preprocess", "train", "predict", "eval", "serve", "plot")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_every_option_in_full_at_80_columns(command, cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = cli(command, "--help")
    assert result.code == 0
    group = typer.main.get_command(app)
    params = group.commands[command].params
    names = [opt for p in params if p.param_type_name == "option" for opt in p.opts]
    assert names and all(name in result.out for name in names)
    assert "…" not in result.out
    assert max(len(line) for line in result.out.splitlines()) <= 80


def test_eval_on_the_builtin_demo_corpus(tiny_run, cli, monkeypatch, tmp_path):
    """builtin:demo is what recipes name; eval reads it as training does (generated into the
    cache on first use). The tiny corpus comes from the same generator: the same labels."""
    monkeypatch.setenv("XMTC_CACHE", str(tmp_path / "cache"))
    result = cli("eval", tiny_run.best, "--data", "builtin:demo", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["documents"] > 0


def test_sigterm_is_reported_and_the_run_can_resume(tiny_data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  dir: {tiny_data.processed}\nmodel:\n  hidden_size: 16\n"
                      "train:\n  epochs: 500\n  batch_size: 16\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xmtc_cli", "train", str(recipe), "--out",
                             str(tmp_path / "run"), "--device", "cpu"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "metrics.jsonl").exists():  # one epoch saved
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    assert "error: terminated (SIGTERM)" in err and "--resume" in err
    assert "Traceback" not in err
