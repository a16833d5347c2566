"""fit() and `xmtc train`: resuming ends where an uninterrupted run ends, the run folder guards
itself, and the recipe options (--dry-run, --scheme, --method, overrides) resolve as documented."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import threads, write_recipe
from safetensors import safe_open
from safetensors.torch import load_file

import xmtc_cli.atomic
from xmtc_cli.checkpoint import read_meta
from xmtc_cli.cli.render import TrainingDisplay
from xmtc_cli.config import load_recipe
from xmtc_cli.run import STATE_FILE, RunFolder, default_run_dir
from xmtc_cli.training import RunInfo, fit

pytestmark = pytest.mark.usefixtures("single_thread")

TIMING = ("seconds", "docs_per_second")  # the only fields of a metrics line allowed to differ


def safe_open_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


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


class StopAfter:
    """A callback that interrupts the run like Ctrl-C: after an epoch, or at a step of one."""

    def __init__(self, epoch: int, step: int | None = None):
        self.epoch, self.step = epoch, step

    def on_start(self, info): ...
    def on_validate(self, done, total): ...

    def on_step(self, epoch, step, docs, loss):
        if (epoch, step) == (self.epoch, self.step):
            raise KeyboardInterrupt

    def on_epoch_end(self, report):
        if self.step is None and report.epoch == self.epoch:
            raise KeyboardInterrupt


def test_one_process_writes_the_train_state_it_always_wrote(uninterrupted):
    """Training on many processes (xmtc_cli.distributed) changed nothing for one: format 2, one
    RNG state, no launch mark outside torchrun."""
    assert safe_open_metadata(uninterrupted / STATE_FILE)["format"] == "2"
    state = load_file(uninterrupted / STATE_FILE)
    assert [k for k in state if k.startswith("rng.")] == ["rng.torch"]
    assert not (uninterrupted / ".launch").exists()


def test_resume_after_a_stop_ends_with_the_same_weights(recipe_file, uninterrupted, tmp_path):
    recipe = load_recipe(recipe_file)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "run", device="cpu", callback=StopAfter(epoch=1))
    assert [line["epoch"] for line in metrics_lines(tmp_path / "run")] == [1]
    rest = fit(recipe, tmp_path / "run", device="cpu", resume=True)
    assert [e.epoch for e in rest.epochs] == [2, 3]
    assert_same_run(tmp_path / "run", uninterrupted)


def test_cli_resume_continues_an_interrupted_run(recipe_file, uninterrupted, tmp_path, cli):
    with pytest.raises(KeyboardInterrupt):
        fit(load_recipe(recipe_file), tmp_path / "run", device="cpu", callback=StopAfter(2))
    result = cli("train", recipe_file, "--out", tmp_path / "run", "--device", "cpu", "--resume")
    assert result.code == 0, result.err
    assert "epoch 3/3" in result.err and "epoch 1/3" not in result.err
    assert_same_run(tmp_path / "run", uninterrupted)


def test_resume_from_a_save_inside_an_epoch_ends_with_the_same_weights(
    recipe_file, uninterrupted, tmp_path
):
    """train.checkpoint_every saves mid-epoch; a stop after it loses only the steps since."""
    saving = load_recipe(recipe_file, ["train.checkpoint_every=4"])
    with pytest.raises(KeyboardInterrupt):  # epoch 2 step 6: the last save was at its step 4
        fit(saving, tmp_path / "run", device="cpu", callback=StopAfter(epoch=2, step=6))
    state = json.loads(safe_open_metadata(tmp_path / "run" / STATE_FILE)["state"])
    # The last save: the last multiple of 4 steps in all before epoch 2's step 6.
    assert state["epoch"] == 1 and 0 < state["batches_done"] <= 6
    assert state["step"] % 4 == 0 and state["step"] + 4 > state["step"] - state["batches_done"] + 6
    rest = fit(saving, tmp_path / "run", device="cpu", resume=True)
    assert [e.epoch for e in rest.epochs] == [2, 3]
    assert_same_run(tmp_path / "run", uninterrupted)


def test_max_steps_stops_inside_an_epoch_and_a_resume_with_more_finishes_the_run(
    recipe_file, uninterrupted, tmp_path, cli
):
    result = cli("train", recipe_file, "train.max_steps=5", "--out", tmp_path / "run")
    assert result.code == 0, result.err
    assert "stopped at train.max_steps=5" in result.err
    (line,) = metrics_lines(tmp_path / "run")
    assert (line["epoch"], line["steps"], line["partial"], line["best"]) == (1, 5, True, False)
    assert read_meta(tmp_path / "run" / "model.safetensors").extra["steps"] == 5  # predictable
    result = cli("train", recipe_file, "--out", tmp_path / "run", "--resume")
    assert result.code == 0, result.err
    assert_same_run(tmp_path / "run", uninterrupted)


def _epoch_writes(recipe) -> tuple[int, int]:
    """The numbers (1-based) of the first and last file replacement of epoch 2 in a run."""
    count, marks = 0, []
    original = xmtc_cli.atomic.os.replace

    def counting(*args, **kwargs):
        nonlocal count
        count += 1
        return original(*args, **kwargs)

    class Mark(StopAfter):
        def on_epoch_end(self, report):
            marks.append(count)

    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as tmp:
        patch.setattr(xmtc_cli.atomic.os, "replace", counting)
        fit(recipe, Path(tmp) / "run", device="cpu", callback=Mark(0))
    # on_epoch_end comes after the checkpoints and metrics but before the state of its epoch
    return marks[0] + 2, marks[1] + 1


def test_a_kill_at_any_write_of_an_epoch_resumes_to_the_same_run(
    recipe_file, uninterrupted, tmp_path, monkeypatch
):
    """Whichever file of epoch 2 a kill interrupts — leaving its temporary file behind, as a
    kill -9 does — --resume cleans up and redoes what is missing."""
    recipe = load_recipe(recipe_file)
    first, last = _epoch_writes(recipe)
    assert last - first >= 2  # last, metrics and state at least
    original = xmtc_cli.atomic.os.replace
    for kill_at in range(first, last + 1):
        run = tmp_path / f"run-{kill_at}"
        count = 0

        def killed(src, dst, *args, kill_at=kill_at, **kwargs):
            nonlocal count
            count += 1
            if count == kill_at:
                os.link(src, f"{src}.left")  # survives atomic_file's cleanup, as after kill -9
                os.rename(f"{src}.left", src.replace(".tmp", "x.tmp"))
                raise KeyboardInterrupt
            return original(src, dst, *args, **kwargs)

        monkeypatch.setattr(xmtc_cli.atomic.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            fit(recipe, run, device="cpu")
        monkeypatch.setattr(xmtc_cli.atomic.os, "replace", original)
        assert any(p.name.endswith(".tmp") for p in run.iterdir())
        fit(recipe, run, device="cpu", resume=True)
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        assert_same_run(run, uninterrupted)


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
    assert read_meta(tiny_run.best).recipe.to_dict() == resolved


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


# --- one run per folder ----------------------------------------------------------------------

def test_a_second_run_on_a_locked_folder_fails_at_once_naming_the_holder(recipe_file, tmp_path,
                                                                         cli):
    with RunFolder.create(tmp_path / "run", load_recipe(recipe_file)):
        for extra in ([], ["--resume"]):
            result = cli("train", recipe_file, "--out", tmp_path / "run", *extra)
            assert result.code == 1 and "Traceback" not in result.err
            assert result.err.splitlines()[0] == (
                f"error: {tmp_path / 'run'} is in use by another xmtc train (pid {os.getpid()})")
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert before == [".lock", "metrics.jsonl", "recipe.yaml"]


def test_default_run_folders_never_reuse_one_that_holds_any_run_file(tmp_path):
    base = tmp_path / "runs" / "tiny"
    (base / "last.safetensors").parent.mkdir(parents=True)
    (base / "last.safetensors").write_bytes(b"a finished run whose train state was deleted")
    (tmp_path / "runs" / "tiny-2").mkdir()  # empty: free
    assert default_run_dir(base, resume=False) == tmp_path / "runs" / "tiny-2"
    assert default_run_dir(base, resume=True) == base


def test_a_run_killed_with_sigkill_mid_epoch_resumes_to_the_same_weights(
    recipe_file, uninterrupted, tmp_path
):
    """A real `kill -9` of `xmtc train` as soon as it has saved inside an epoch."""
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xmtc_cli", "train", str(recipe_file), "train.checkpoint_every=5",
         "--out", str(run), "--device", "cpu"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    state = run / STATE_FILE
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    err = proc.communicate()[1].decode()
    assert proc.returncode == -signal.SIGKILL, err  # killed, not finished
    assert len(metrics_lines(run)) < 3
    fit(load_recipe(recipe_file, ["train.checkpoint_every=5"]), run, device="cpu", resume=True)
    assert_same_run(run, uninterrupted)


# --- progress --------------------------------------------------------------------------------

def test_progress_off_a_terminal_prints_a_line_every_log_every_seconds(capsys):
    now = [0.0]
    display = TrainingDisplay(live=False, clock=lambda: now[0])
    display.on_start(RunInfo(run_dir=Path("r"), device="cpu", epochs=2, start_epoch=1,
                             start_batch=0, steps_per_epoch=100, train_docs=1600, valid_docs=0,
                             parameters=10, log_every=60.0))
    for step in range(1, 101):
        now[0] += 1.5  # 150 s for the epoch: lines at 60 s and 120 s
        display.on_step(1, step, 16, 2.0 if step % 10 == 0 else None)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("training on cpu: 1,600 documents")
    assert lines[1:] == [
        "epoch 1/2 step 40/100 loss 2.0000, 10.7 docs/s, elapsed 1m00s, epoch ETA 1m30s",
        "epoch 1/2 step 80/100 loss 2.0000, 10.7 docs/s, elapsed 2m00s, epoch ETA 30s",
    ]


def test_resume_refuses_processed_data_that_changed_under_the_same_path(tiny_data, tmp_path,
                                                                      cli):
    """Preprocessed again with other options into the same folder, the data would be read with
    the saved weights as if nothing had changed (here the sizes happen to differ; they need
    not); the same corpus preprocessed the same way again resumes."""
    data = tmp_path / "data"
    preprocess = ["preprocess", tiny_data.raw, "--out", data, "--glove",
                  tiny_data.raw / "vectors.txt"]
    assert cli(*preprocess).code == 0
    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", data))
    with threads(1), pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "run", device="cpu", callback=StopAfter(epoch=1))

    assert cli(*preprocess).code == 0  # the same corpus and options, written again
    with threads(1), pytest.raises(KeyboardInterrupt):  # resumes; stopped again after epoch 2
        fit(recipe, tmp_path / "run", device="cpu", resume=True, callback=StopAfter(epoch=2))

    assert cli(*preprocess, "--tokenizer", "punct").code == 0  # other options, same folder
    result = cli("train", tmp_path / "tiny.yaml", "--out", tmp_path / "run", "--device", "cpu",
                 "--resume")
    assert result.code == 1
    assert f"{data} is not the processed data this run trained on" in result.err
    assert "Traceback" not in result.err
    assert [line["epoch"] for line in metrics_lines(tmp_path / "run")] == [1, 2]


def _tiny_step_inputs(lengths: list[int]):
    """ModelSizes of a tiny model and three batches of 4 documents of 7 tokens, the first 5 of
    them real (`lengths` says how many each document declares), gold labels 3 and 4."""
    import numpy as np

    from xmtc_cli.data.batching import Batch
    from xmtc_cli.model import ModelSizes

    sizes = ModelSizes(vocab_size=50, num_labels=6, decode_steps=3, embed_size=5,
                       label_embed_size=4)
    g = torch.Generator().manual_seed(0)
    batches = [Batch(torch.randint(2, 50, (4, 7), generator=g) * (torch.arange(7) < 5),
                     torch.tensor(lengths), torch.tensor([[3, 4, -1]] * 4), np.arange(4))
               for _ in range(3)]
    return sizes, batches


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_kept_token_gradient_trains_as_a_fresh_dense_one(weight_decay):
    """The token table's gradient kept between steps (sparse lookups added into one buffer,
    zeroed row by row after the step) gives the weights a fresh dense gradient gives, and the
    buffer is all zeros between steps."""
    from xmtc_cli.config import recipe_from_dict
    from xmtc_cli.training import Trainer

    recipe = recipe_from_dict({"data": {"dir": "unused", "max_labels": 3},
                               "model": {"hidden_size": 8, "encoder_layers": 1},
                               "train": {"weight_decay": weight_decay, "lr": 0.05}}, [])
    sizes, batches = _tiny_step_inputs([5, 5, 5, 5])
    trainers = [Trainer.build(recipe, sizes, torch.device("cpu"), 10) for _ in range(2)]
    trainers[1].keep_token_gradient = False
    for i, batch in enumerate(batches):
        for trainer in trainers:
            torch.manual_seed(i)  # the same dropout draws
            trainer.step(batch, i)
        kept = trainers[0].model.encoder.embedding.weight.grad
        assert not kept.is_sparse and not kept.any()
    fresh = dict(trainers[1].model.named_parameters())
    for name, value in trainers[0].model.named_parameters():
        torch.testing.assert_close(value, fresh[name], atol=1e-6, rtol=1e-5, msg=name)
    table = trainers[0].model.encoder.embedding.weight
    assert not torch.equal(table, Trainer.build(recipe, sizes, torch.device("cpu"), 10)
                           .model.encoder.embedding.weight)  # the table did train


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_takes_bf16_products_only_where_the_cpu_has_them(native, monkeypatch):
    """train.cpu_bf16 trains with the GRU's bf16 products where the CPU computes bf16 natively:
    a step's gradients within 2% of the float32 run's, the GRU's not equal to them; without
    native bf16 the recipe's switch is ignored (bitwise the float32 run) and the header says
    why."""
    from xmtc_cli import training
    from xmtc_cli.config import recipe_from_dict

    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native)
    sizes, batches = _tiny_step_inputs([5, 3, 5, 4])
    trainers = []
    for bf16 in (True, False):
        recipe = recipe_from_dict({"data": {"dir": "unused", "max_labels": 3},
                                   "model": {"hidden_size": 8},
                                   "train": {"lr": 0.05, "cpu_bf16": bf16}}, [])
        trainers.append(training.Trainer.build(recipe, sizes, torch.device("cpu"), 10))
    assert trainers[0].bf16_products is native and not trainers[1].bf16_products
    assert trainers[1].describe_precision() == ""
    assert ("bf16 products in the encoder GRU" if native else "no native bf16") in \
        trainers[0].describe_precision()
    for trainer in trainers:
        torch.manual_seed(0)  # the same dropout draws
        trainer.step(batches[0], 0)
    plain = dict(trainers[1].model.named_parameters())
    for name, value in trainers[0].model.named_parameters():
        if name.startswith("encoder.embedding"):
            continue  # its kept gradient buffer is zeroed after the step
        got, want = value.grad, plain[name].grad  # the states differ, so every gradient
        assert (got - want).norm() <= 2e-2 * want.norm(), name
        if name.startswith("encoder.rnn."):  # bf16 products where the CPU has them
            assert torch.equal(got, want) is not native, name
    for trainer in trainers:
        for i, batch in enumerate(batches[1:], 1):
            torch.manual_seed(i)
            trainer.step(batch, i)
    same = [torch.equal(value, plain[name])
            for name, value in trainers[0].model.named_parameters()]
    assert all(same) if not native else not all(same)


@pytest.mark.parametrize("avx512_bf16,amx,mkldnn,expected", [
    (True, False, True, True), (False, True, True, True), (False, False, True, False),
    (True, True, False, False)])
def test_native_bf16_means_the_cpu_instructions_not_onednns_emulation(
        avx512_bf16, amx, mkldnn, expected, monkeypatch):
    """cpu_has_native_bf16: AVX-512 BF16 or AMX, with oneDNN in this torch; a torch that cannot
    say counts as no."""
    from xmtc_cli.device import cpu_has_native_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: mkldnn)
    assert cpu_has_native_bf16() is expected
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert cpu_has_native_bf16() is False


def test_a_bf16_products_run_resumes_to_the_same_weights(recipe_file, tmp_path, monkeypatch):
    """train.cpu_bf16 keeps exact resumption: a run stopped inside epoch 2 and resumed ends
    bit for bit where the same run in one go ends (on a CPU taken to have native bf16)."""
    from xmtc_cli import training

    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: True)
    recipe = load_recipe(recipe_file, ["train.cpu_bf16=true", "train.checkpoint_every=4"])
    with threads(1):
        fit(recipe, tmp_path / "whole", device="cpu")
        with pytest.raises(KeyboardInterrupt):
            fit(recipe, tmp_path / "run", device="cpu", callback=StopAfter(epoch=2, step=6))
        fit(recipe, tmp_path / "run", device="cpu", resume=True)
    assert_same_run(tmp_path / "run", tmp_path / "whole")
