"""Learning curves (curves.csv, `xmtc plot`), train.early_stop, and --resume with a larger
train.epochs, whose schedule runs over the new total."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import xml.etree.ElementTree as ET

import pytest
from conftest import write_recipe

from xmtc_cli.config import load_recipe
from xmtc_cli.training import cosine_lr

pytestmark = pytest.mark.usefixtures("single_thread")


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_curves_csv_holds_every_epoch_of_metrics_jsonl(tiny_run):
    with open(tiny_run.run / "curves.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    lines = metrics(tiny_run.run)
    assert [int(r["epoch"]) for r in rows] == [m["epoch"] for m in lines] == [1, 2, 3]
    for row, line in zip(rows, lines):
        assert float(row["train_loss"]) == line["train_loss"]
        assert float(row["valid_micro_f1"]) == line["valid"]["micro_f1"]
        assert float(row["loss_matching"]) == line["loss_parts"]["matching"]
        assert row["best"] == str(line["best"]).lower()


def test_plot_writes_an_svg_with_one_line_per_series(tiny_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run, run)
    result = cli("plot", run)
    assert result.code == 0, result.err
    root = ET.parse(run / "curves.svg").getroot()
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    # train loss, its two parts (matching, ot); valid micro-F1, macro-F1, P@1.
    assert len(lines) == 6
    assert all(len(line.get("points").split()) == 3 for line in lines)  # three epochs each
    assert cli("plot", tmp_path).code == 1  # no metrics.jsonl
    wrong = cli("plot", run, "--out", tmp_path / "c.pdf")
    assert wrong.code == 2 and ".svg or .png" in wrong.err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None,
                    reason="matplotlib is installed")
def test_png_without_matplotlib_says_how_to_get_it(tiny_run, tmp_path, cli):
    result = cli("plot", tiny_run.run, "--out", tmp_path / "c.png")
    assert result.code == 2 and 'pip install "xmtc[plot]"' in result.err
    assert not (tmp_path / "c.png").exists()


def test_early_stop_ends_a_run_that_stops_improving(tiny_data, tmp_path, cli):
    """A learning rate too small to change any prediction: epoch 1 stays the best, so with
    early_stop 2 the run ends after epoch 3 of 10."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data.processed, epochs=10)
    result = cli("train", recipe, "train.lr=1e-12", "train.early_stop=2", "--out",
                 tmp_path / "run", "--device", "cpu")
    assert result.code == 0, result.err
    assert [m["epoch"] for m in metrics(tmp_path / "run")] == [1, 2, 3]
    assert "stopped early after epoch 3" in result.err
    bad = cli("train", recipe, "train.early_stop=0", "--dry-run")
    assert bad.code != 0 and "train.early_stop" in bad.err


def test_early_stop_counts_validations_not_the_epochs_valid_every_skips(tiny_data, tmp_path,
                                                                          cli):
    """Validating every 2nd epoch, epoch 2 is the first validation and stays the best: with
    early_stop 1 the run ends at the next validation, epoch 4, not at the skipped epoch 3."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data.processed, epochs=10)
    result = cli("train", recipe, "train.lr=1e-12", "train.early_stop=1",
                 "train.valid_every=2", "--out", tmp_path / "run", "--device", "cpu")
    assert result.code == 0, result.err
    lines = metrics(tmp_path / "run")
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert [m["best"] for m in lines] == [False, True, False, False]
    assert "stopped early after epoch 4" in result.err


def test_resume_with_more_epochs_continues_on_the_longer_schedule(tiny_data, tmp_path, cli):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data.processed, epochs=2)
    run = tmp_path / "run"
    assert cli("train", recipe, "--out", run, "--device", "cpu").code == 0
    before = metrics(run)
    result = cli("train", recipe, "train.epochs=4", "--out", run, "--resume", "--device", "cpu")
    assert result.code == 0, result.err
    after = metrics(run)
    assert [m["epoch"] for m in after] == [1, 2, 3, 4] and after[:2] == before
    steps_per_epoch = before[0]["steps"]
    train = load_recipe(recipe, ["train.epochs=4"]).train
    for m in after[2:]:  # the schedule of 4 epochs, from the step reached
        assert m["lr"] == pytest.approx(cosine_lr(train, m["steps"] - 1, 4 * steps_per_epoch))
    # The 2-epoch schedule had run down to near min_lr; the 4-epoch one is half-way there.
    assert after[1]["lr"] < after[2]["lr"] > after[3]["lr"]
