"""Untrusted input through the command line: recipes and checkpoints are data, never a way out.

Each case runs `xmtc` in-process and expects one `error:` line (and a hint), exit code 1, no
traceback, and nothing written where it should not be. `benchmarks/probe_bad_input.py` runs
several hundred such cases in subprocesses, with time and memory limits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import write_recipe

from xmtc_cli.checkpoint import load_checkpoint, save_checkpoint


def _refused(result, *fragments: str) -> str:
    """The one-line error of a refused command (exit 1), which names every fragment."""
    assert result.code == 1, (result.code, result.err)
    assert "Traceback" not in result.err and "unexpected" not in result.err, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err
    assert result.err.splitlines()[-1].startswith("hint: "), result.err
    for fragment in fragments:
        assert fragment in result.err, result.err
    return result.err


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


# --- recipes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/abs/path", "../x", "..", "a/../../b"])
def test_a_recipe_name_cannot_write_outside_runs(name, tiny_data, tmp_path, monkeypatch, cli):
    work = tmp_path / "work"
    work.mkdir()
    recipe = write_recipe(work / "r.yaml", tiny_data.processed)
    recipe.write_text(recipe.read_text().replace("name: tiny", f"name: '{name}'"))
    monkeypatch.chdir(work)
    before = _files(tmp_path)
    _refused(cli("train", recipe, "--device", "cpu"), "name", "it names the run folder")
    _refused(cli("train", "r.yaml", f"name={name}", "--device", "cpu"), "name")
    assert _files(tmp_path) == before  # no runs/, nothing beside work/, no /abs
    assert not Path("/abs").exists()


def _alias_bomb() -> str:
    rows = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(rows) + "\nname: *a8\n"


@pytest.mark.parametrize("text, fragments", [
    (_alias_bomb(), ["bomb.yaml:2: YAML aliases (*name) are not allowed in recipes"]),
    ("name: " + "[" * 100_000 + "]" * 100_000, ["bomb.yaml:1: nested deeper than 32 levels"]),
    ("name: " + "x" * 500_000 + "\ndata: {dir: d}\n", ["name 'xxxx", "...", "names the run"]),
    ("data: {dir: d}\ntrain: {lr: .nan, grad_clip: .inf}\n",
     ["train.lr: nan is not a finite number", "train.grad_clip: inf is not a finite number"]),
    ("data: {dir: d}\ntrain: {epochs: " + "9" * 5000 + "}\n", ["a value cannot be read"]),
], ids=["alias-bomb", "deep-nesting", "huge-name", "nan-inf", "5000-digits"])
def test_hostile_recipes_are_refused_cheaply(text, fragments, tmp_path, cli):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    err = _refused(cli("train", path, "--dry-run"), *fragments)
    assert len(err) < 1000  # a bad value is quoted by a short prefix only


@pytest.mark.parametrize("override, fragment", [
    ("train.lr=nan", "train.lr: nan is not a finite number"),
    ("train.lr=.inf", "train.lr: inf is not a finite number"),
    ("train.grad_clip=.nan", "train.grad_clip: nan is not a finite number"),
    ("train.lr=[unclosed", "override 'train.lr=[unclosed': not valid YAML"),
    ("data.max_labels=10000000", "data.max_labels must be at most 10,000"),
])
def test_overrides_that_cannot_be_right_are_refused(override, fragment, tiny_data, tmp_path,
                                                    cli):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data.processed)
    _refused(cli("train", recipe, override, "--dry-run"), fragment)


@pytest.mark.parametrize("lr", ["1e9", "10"])  # a loss of 1e19; a finite loss 1000x its start
def test_a_diverging_run_stops_with_one_error_and_saves_no_best_epoch(tiny_data, tmp_path, cli,
                                                                      single_thread, lr):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data.processed, epochs=2)
    run = tmp_path / "run"
    result = cli("train", recipe, f"train.lr={lr}", "--out", run, "--device", "cpu")
    _refused(result, "training diverged in epoch 1")
    assert not (run / "model.safetensors").exists() and not (run / "last.safetensors").exists()
    assert (run / "metrics.jsonl").read_text() == ""  # no epoch recorded as finished


# --- checkpoints -------------------------------------------------------------------------------

def _lying(tiny_run, folder: Path, **changes) -> Path:
    """A copy of the tiny checkpoint whose metadata has `changes` (sizes merged) applied."""
    state, meta = load_checkpoint(tiny_run.best)
    if "sizes" in changes:
        changes["sizes"] = {**dataclasses.asdict(meta.sizes), **changes["sizes"]}
    if "model" in changes:
        recipe = meta.recipe.to_dict()
        recipe["model"] = {**recipe["model"], **changes.pop("model")}
        changes["recipe"] = recipe
    path = folder / "lying.safetensors"
    save_checkpoint(path, state, dataclasses.replace(meta, **changes))
    return path


@pytest.mark.parametrize("command", ["predict", "eval"])
@pytest.mark.parametrize("changes, fragment", [
    ({"sizes": {"decode_steps": 10**7}}, "claims 10,000,000 decoding steps"),
    ({"sizes": {"vocab_size": 10**9}}, "its sizes say vocab_size = 1,000,000,000"),
    ({"sizes": {"num_labels": 10**9}}, "its sizes say num_labels = 1,000,000,000"),
    ({"model": {"hidden_size": 10**6}}, "does not hold the model its metadata describes"),
    ({"model": {"hidden_size": float("nan")}}, "holds a recipe that does not validate"),
    ({"labels": ["a"]}, "it lists 1 labels but its sizes say num_labels = 24"),
], ids=["steps", "vocab", "labels", "hidden", "recipe", "label-list"])
def test_checkpoint_metadata_out_of_bounds_is_refused_before_allocating(
        command, changes, fragment, tiny_run, tiny_data, tmp_path, cli):
    path = _lying(tiny_run, tmp_path, **changes)
    args = (["predict", path, "-"] if command == "predict"
            else ["eval", path, "--data", tiny_data.processed, "--json"])
    result = cli(*args, "--device", "cpu", stdin=b"rocket launch\n")
    _refused(result, f"checkpoint {path} ", fragment)
    assert result.out == ""
