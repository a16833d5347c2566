"""fit() and `xmtc train`: resuming ends where an uninterrupted run ends, the run folder guards
itself, and the recipe options (--dry-run, --scheme, --method, overrides) resolve as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import threads, write_recipe
from safetensors.torch import load_file

from xmtc_cli import training
from xmtc_cli.checkpoint import read_meta
from xmtc_cli.config import load_recipe
from xmtc_cli.training import STATE_FILE, fit

pytestmark = pytest.mark.usefixtures("single_thread")

TIMING = ("seconds", "docs_per_second")  # the only fields of a metrics line allowed to differ


def metrics_lines(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical checkpoints and optimiser state, and the same metrics, epoch by epoch."""
    for name in ("last.safetensors", "model.safetensors", STATE_FILE):
        got, want = load_file(run / name), load_file(reference / name)
        assert got.keys() == want.keys(), name
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, f"{name}: {different[:5]}"
    for name in ("last.safetensors", "model.safetensors"):
        assert read_meta(run / name).extra == read_meta(reference / name).extra
    assert metrics_lines(run) == metrics_lines(reference)


@pytest.fixture(scope="module")
def recipe_file(tiny_data, tmp_path_factory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("recipe") / "tiny.yaml", tiny_data.processed)


@pytest.fixture(scope="module")
def uninterrupted(recipe_file, tmp_path_factory) -> Path:
    """The three epochs of the tiny recipe, run in one go."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    with threads(1):
        result = fit(load_recipe(recipe_file), run, device="cpu")
    assert [e.epoch for e in result.epochs] == [1, 2, 3]
    return run


def test_the_reference_run_learns_and_keeps_its_best_epoch(uninterrupted):
    lines = metrics_lines(uninterrupted)
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    f1 = [line["valid"]["micro_f1"] for line in lines]
    assert max(f1) > 0.2  # the model learns: the consistency tests compare non-trivial sets
    best = max(range(3), key=lambda i: (f1[i], -i))  # the first of equal scores stays best
    assert [line["best"] for line in lines] == [f1[i] > max(f1[:i], default=-1) for i in range(3)]
    assert read_meta(uninterrupted / "model.safetensors").extra["epoch"] == best + 1
    assert read_meta(uninterrupted / "last.safetensors").extra["epoch"] == 3


def test_resume_after_a_stop_ends_with_the_same_weights(recipe_file, uninterrupted, tmp_path):
    recipe = load_recipe(recipe_file)
    first = fit(recipe, tmp_path / "run", device="cpu", stop_after=1)
    assert [e.epoch for e in first.epochs] == [1]
    assert [line["epoch"] for line in metrics_lines(tmp_path / "run")] == [1]
    rest = fit(recipe, tmp_path / "run", device="cpu", resume=True)
    assert [e.epoch for e in rest.epochs] == [2, 3]
    assert_same_run(tmp_path / "run", uninterrupted)


def test_cli_resume_continues_an_interrupted_run(recipe_file, uninterrupted, tmp_path, cli):
    fit(load_recipe(recipe_file), tmp_path / "run", device="cpu", stop_after=2)
    result = cli("train", recipe_file, "--out", tmp_path / "run", "--device", "cpu", "--resume")
    assert result.code == 0, result.err
    assert "epoch 3/3" in result.err and "epoch 1/3" not in result.err
    assert_same_run(tmp_path / "run", uninterrupted)


@pytest.mark.parametrize("write", ["save_checkpoint", "_append_metrics", "_save_state"])
def test_a_kill_during_any_write_of_an_epoch_resumes_to_the_same_run(
    write, recipe_file, uninterrupted, tmp_path, monkeypatch
):
    """Whichever file of epoch 2 the kill interrupts, --resume redoes what is missing."""
    original = getattr(training, write)

    def killed_at_epoch_2(*args, **kwargs):
        epoch = {"save_checkpoint": lambda: args[2].extra["epoch"],
                 "_append_metrics": lambda: args[1].epoch,
                 "_save_state": lambda: args[1].epoch}[write]()
        if epoch == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    recipe = load_recipe(recipe_file)
    monkeypatch.setattr(training, write, killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "run", device="cpu")
    monkeypatch.setattr(training, write, original)
    fit(recipe, tmp_path / "run", device="cpu", resume=True)
    assert_same_run(tmp_path / "run", uninterrupted)


def test_resuming_a_finished_run_changes_nothing(recipe_file, uninterrupted, tmp_path, cli):
    fit(load_recipe(recipe_file), tmp_path / "run", device="cpu")
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    result = cli("train", recipe_file, "--out", tmp_path / "run", "--resume")
    assert result.code == 0, result.err
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before
    assert_same_run(tmp_path / "run", uninterrupted)


def test_a_second_run_into_the_same_folder_is_refused_with_a_hint(tiny_run, cli):
    before = {p.name: p.read_bytes() for p in tiny_run.run.iterdir()}
    result = cli("train", tiny_run.recipe, "--out", tiny_run.run)
    assert result.code == 1 and result.out == ""
    assert result.err.splitlines() == [
        f"error: {tiny_run.run} already holds a training run",
        "hint: pass --resume to continue it, or choose another folder with --out",
    ]
    assert {p.name: p.read_bytes() for p in tiny_run.run.iterdir()} == before


def test_resume_without_a_run_is_refused(recipe_file, tmp_path, cli):
    result = cli("train", recipe_file, "--out", tmp_path / "empty", "--resume")
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.startswith(f"error: {tmp_path / 'empty'} holds no interrupted run to resume")
    assert "hint: drop --resume" in result.err


def test_resume_with_another_recipe_names_the_changed_keys(tiny_run, cli):
    result = cli("train", tiny_run.recipe, "train.lr=0.5", "model.dropout=0",
                 "--out", tiny_run.run, "--resume")
    assert result.code == 1
    assert result.err.startswith(
        f"error: --resume with a recipe that differs from the run in {tiny_run.run}: "
        "model.dropout, train.lr\n"
    )


def test_the_run_folder_records_the_command_and_the_resolved_recipe(tiny_run):
    text = (tiny_run.run / "recipe.yaml").read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    assert header == f"# xmtc train {tiny_run.recipe} --out {tiny_run.run} --device cpu"
    resolved = yaml.safe_load(body)
    # The data-dependent blanks are filled in: N is the largest training label set (1 to 5).
    assert resolved["data"]["max_labels"] == 5
    assert load_recipe(tiny_run.run / "recipe.yaml").to_dict() == resolved
    assert read_meta(tiny_run.best).recipe == resolved


# --- recipe options --------------------------------------------------------------------------

def test_dry_run_prints_the_resolved_recipe_and_trains_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XMTC_CACHE", str(tmp_path / "cache"))
    recipe = Path(__file__).parents[1] / "recipes" / "demo.yaml"
    long_dir = tmp_path / ("x" * 100)  # longer than a line of the console: must not wrap
    result = cli("train", recipe, "train.epochs=2", "model.conv_kernels=[3,5]",
                 f"data.dir={long_dir}", "--scheme", "first-n", "--dry-run")
    assert result.code == 0, result.err
    expected = load_recipe(recipe).to_dict()
    expected["data"]["dir"] = str(long_dir)
    expected["train"]["epochs"] = 2
    expected["model"]["conv_kernels"] = [3, 5]
    expected["loss"]["scheme"] = "first-n"
    assert yaml.safe_load(result.out) == expected
    assert list(tmp_path.iterdir()) == []  # no runs/ folder, no corpus generated


def test_method_comes_before_overrides(recipe_file, cli):
    result = cli("train", recipe_file, "--method", "bm-lc", "loss.ot_weight=2", "--dry-run")
    assert result.code == 0, result.err
    loss = yaml.safe_load(result.out)["loss"]
    assert (loss["kind"], loss["ot_weight"]) == ("matching", 2.0)
    result = cli("train", recipe_file, "--method", "sgm", "--dry-run")
    resolved = yaml.safe_load(result.out)
    assert resolved["loss"]["kind"] == "cross-entropy" and resolved["loss"]["ot_weight"] == 0
    assert resolved["model"]["masked_softmax"] and resolved["data"]["label_order"] == "frequency"


def test_an_unknown_method_suggests_the_close_one(recipe_file, cli):
    result = cli("train", recipe_file, "--method", "otseq2seq", "--dry-run")
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("error: unknown method 'otseq2seq' (did you mean otseq2set?)")


def test_a_conflicting_scheme_is_an_error(recipe_file, cli):
    result = cli("train", recipe_file, "loss.scheme=all", "--scheme", "first-n", "--dry-run")
    assert result.code == 1 and result.out == ""
    assert result.err.splitlines()[0] == "error: --scheme first-n conflicts with loss.scheme=all"
    agreeing = cli("train", recipe_file, "loss.scheme=first-n", "--scheme", "first-n", "--dry-run")
    assert agreeing.code == 0 and yaml.safe_load(agreeing.out)["loss"]["scheme"] == "first-n"


def test_bad_overrides_are_all_listed_at_once(recipe_file, cli):
    result = cli("train", recipe_file, "train.epoch=3", "model.hidden_size=big", "lr", "--dry-run")
    assert result.code == 1 and result.out == "" and "Traceback" not in result.err
    assert "3 problems" in result.err
    assert "unknown key train.epoch (did you mean train.epochs?)" in result.err
    assert "model.hidden_size: 'big' is not an integer" in result.err
    assert "override 'lr' is not KEY=VALUE" in result.err


def test_a_bad_option_value_is_a_usage_error(recipe_file, cli):
    result = cli("train", recipe_file, "--scheme", "some", "--dry-run")
    assert result.code == 2 and result.out == ""
