"""Training on many processes (torchrun, DistributedDataParallel on gloo): the step of one process
on the same global batches, rank 0's run folder, and resumes and restarts that end where an
uninterrupted run of as many processes ends.

The two-process tests share one pair of processes (torch.multiprocessing, gloo on the CPU),
started once for the module: it runs every scenario and leaves its results in files, which the
tests compare with one process's. The torchrun tests (a kill -9 and a restart; `--nproc`) start
real launchers and are marked slow.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing
from conftest import threads, write_recipe
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_training import assert_same_run, metrics_lines

from xmtc_cli import distributed
from xmtc_cli.checkpoint import read_meta
from xmtc_cli.cli.train import _without_launch_options
from xmtc_cli.config import load_recipe, method_overrides
from xmtc_cli.data.batching import Batcher
from xmtc_cli.data.builtin import load_data
from xmtc_cli.distributed import SINGLE, Group, ReplicatedError
from xmtc_cli.errors import XmtcError
from xmtc_cli.evaluation import evaluate_split, lexical_prior
from xmtc_cli.inference import Predictor
from xmtc_cli.launch import Launch
from xmtc_cli.lexical import LexicalIndex
from xmtc_cli.losses import build_criterion
from xmtc_cli.run import LAUNCH_FILE, STATE_FILE, RunFolder, _rng_tensors, _rngs_of, default_run_dir
from xmtc_cli.tensorfile import CHECKSUM_KEY
from xmtc_cli.training import Trainer, fit, model_sizes, resolve_recipe

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
# Global batches of 15, 7, 1 and 16 training documents: odd sizes, and a last batch smaller
# than the world, which leaves rank 1 an empty share.
GLOBAL_BATCHES = [range(0, 15), range(15, 22), [22], range(23, 39)]
ORACLES = {
    "matching": ["model.dropout=0"],  # the tiny recipe's loss: matching + OT (λ = 1)
    "cross-entropy": ["model.dropout=0", *method_overrides("seq2seq")],
    "bf16": ["model.dropout=0", "train.ddp_bf16_grads=true"],
}
RUN = ["train.epochs=2", "train.checkpoint_every=5"]  # 12 steps an epoch, saves inside it
ZERO_DROPOUT_RUN = ["model.dropout=0", "train.epochs=1", "train.batch_size=15"]
PROTOTYPE = ["model.output_init=prototype"]  # rank 0 sets the rows, the others receive them
LEXICAL = ["model.lexical=knn", "model.lexical_k=5"]  # rank 0 builds the index and validates


# --- pieces that need no second process -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_data, tmp_path_factory):
    """The tiny recipe, its data and a batcher over its training split."""
    recipe_file = write_recipe(tmp_path_factory.mktemp("ddp-recipe") / "tiny.yaml",
                               tiny_data.processed)
    data = load_data(str(tiny_data.processed))
    recipe = resolve_recipe(load_recipe(recipe_file), data)
    batcher = Batcher(data.splits["train"], recipe.data.max_src_tokens, recipe.data.max_labels,
                      data.num_labels)
    return recipe_file, data, recipe, batcher


@pytest.mark.parametrize("size,world", [(16, 2), (15, 2), (7, 3), (2, 3)])
def test_a_share_is_the_batch_the_batcher_builds_for_its_documents(tiny, size, world):
    *_, batcher = tiny
    whole = batcher.batch(np.arange(40, 40 + size))
    for rank in range(world):
        part, standin = distributed.shard(whole, rank, world)
        mine = whole.index[rank::world]
        if len(mine) == 0:  # the stand-in: the batch's first document, counting for nothing
            assert standin and list(part.index) == [whole.index[0]]
            mine = whole.index[:1]
        else:
            assert not standin
        want = batcher.batch(mine)
        assert torch.equal(part.src, want.src) and torch.equal(part.lengths, want.lengths)
        assert torch.equal(part.gold, want.gold) and list(part.index) == list(want.index)
    shares = [len(whole.index[r::world]) for r in range(world)]
    assert sum(shares) == size and max(shares) - min(shares) <= 1


@pytest.mark.parametrize("loss", ["matching", "matching-no-ot", "cross-entropy"])
def test_the_loss_terms_make_the_loss(tiny, loss):
    *_, recipe, batcher = tiny
    overrides = {"matching": [], "matching-no-ot": ["loss.ot_weight=0"],
                 "cross-entropy": method_overrides("seq2seq")}[loss]
    loss_cfg = load_recipe(tiny[0], overrides).loss
    criterion = build_criterion(loss_cfg)
    batch = batcher.batch(np.arange(9))
    steps = batch.gold.size(1) + 1 if loss_cfg.kind == "cross-entropy" else recipe.data.max_labels
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(len(batch), steps, batcher.num_labels + 3, generator=gen)
    table = torch.randn(batcher.num_labels + 3, 8, generator=gen)
    value, parts = criterion(logits, batch.gold, table)
    terms = criterion.terms(logits, batch.gold, table)
    assert terms.sums.keys() == parts.keys() == terms.counts.keys() == terms.weights.keys()
    from_terms = sum(terms.weights[k] * terms.sums[k] / terms.counts[k] for k in terms.sums)
    torch.testing.assert_close(from_terms, value, rtol=1e-6, atol=0)


def test_one_process_keeps_its_rng_keys_and_many_are_told_apart():
    own = {"torch": torch.get_rng_state()}
    [gathered_one] = distributed.gather_rng(own, SINGLE)
    assert gathered_one is own
    assert list(_rng_tensors([own])) == ["rng.torch"]
    [back] = _rngs_of(_rng_tensors([own]))
    assert back["torch"] is own["torch"]
    gathered = [{"torch": torch.zeros(3, dtype=torch.uint8)},
                {"torch": torch.ones(3, dtype=torch.uint8), "cuda": torch.ones(2)}]
    tensors = _rng_tensors(gathered)
    assert sorted(tensors) == ["rng.cuda.1", "rng.torch.0", "rng.torch.1"]
    back = _rngs_of(tensors)
    assert len(back) == 2 and set(back[1]) == {"torch", "cuda"}
    assert torch.equal(back[1]["torch"], tensors["rng.torch.1"])
    assert torch.equal(back[0]["torch"], gathered[0]["torch"])


def test_a_restart_resumes_only_the_run_its_own_launch_created(tiny, tmp_path):
    recipe_file, *_ = tiny
    recipe = load_recipe(recipe_file)
    run = tmp_path / "runs" / "tiny"
    with RunFolder.create(run, recipe, launch="launch-1"):
        pass
    assert (run / LAUNCH_FILE).read_text().strip() == "launch-1"
    assert RunFolder.started_by(run, "launch-1")
    assert not RunFolder.started_by(run, "launch-2") and not RunFolder.started_by(run, None)
    # A restart without --out finds its folder, even where a later folder holds a run.
    with RunFolder.create(run.with_name("tiny-2"), recipe, launch="launch-2"):
        pass
    assert default_run_dir(run, resume=False, launch="launch-1") == run
    assert default_run_dir(run, resume=False, launch="launch-3") == run.with_name("tiny-3")
    # A run that no torchrun started leaves no mark behind for a restart to follow.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / LAUNCH_FILE).write_text("launch-1\n")
    with RunFolder.create(tmp_path / "other", recipe):
        pass
    assert not (tmp_path / "other" / LAUNCH_FILE).exists()


def test_a_restart_resumes_by_itself_and_a_first_start_does_not(tiny, tmp_path, monkeypatch):
    """What torchrun's restart does to `fit`: TORCHELASTIC_RESTART_COUNT > 0 and this launch's
    mark in the folder continue the run; a first start refuses the folder as ever."""
    recipe_file, *_ = tiny
    recipe = load_recipe(recipe_file, ["train.max_steps=3"])
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    fit(recipe, tmp_path / "run", device="cpu")
    with pytest.raises(XmtcError, match="already holds a training run"):
        fit(recipe, tmp_path / "run", device="cpu")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-2")  # another launch: not ours to resume
    with pytest.raises(XmtcError, match="already holds a training run"):
        fit(recipe, tmp_path / "run", device="cpu")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-1")
    more = load_recipe(recipe_file, ["train.max_steps=5"])
    result = fit(more, tmp_path / "run", device="cpu")
    assert result.epochs[-1].steps == 5  # continued from step 3


def test_a_state_saved_before_a_recipe_key_existed_still_resumes(tiny, tmp_path):
    """train.ddp_bf16_grads is newer than some runs: its absence reads as its default."""
    recipe_file, *_ = tiny
    recipe = load_recipe(recipe_file, ["train.max_steps=2"])
    fit(recipe, tmp_path / "run", device="cpu")
    state = tmp_path / "run" / STATE_FILE
    with safe_open(str(state), "pt") as f:
        meta = f.metadata()
    old = json.loads(meta["recipe"])
    del old["train"]["ddp_bf16_grads"]
    meta.pop(CHECKSUM_KEY)  # a state of an xmtc before checksums, too
    save_file(load_file(state), str(state), {**meta, "recipe": json.dumps(old)})
    result = fit(load_recipe(recipe_file, ["train.max_steps=3"]), tmp_path / "run",
                 device="cpu", resume=True)
    assert result.epochs[-1].steps == 3


def test_the_launcher_options_are_left_out_of_the_workers_command():
    assert _without_launch_options(["train", "r.yaml", "--nproc", "2", "--out", "x"]) == [
        "train", "r.yaml", "--out", "x"]
    assert _without_launch_options(["train", "r.yaml", "--nproc=4", "a=1", "--max-restarts",
                                    "3", "--max-restarts=2"]) == ["train", "r.yaml", "a=1"]


@pytest.mark.parametrize("option", ["--nproc", "--max-restarts"])
def test_launcher_options_inside_torchrun_are_a_usage_error(tiny, cli, monkeypatch, option):
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    result = cli("train", tiny[0], option, "2")
    assert result.code == 2 and "torchrun already started" in result.err


def test_the_launch_is_read_from_torchruns_variables_and_defaults_to_one_process():
    env = {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "TORCHELASTIC_RESTART_COUNT": "1",
           "TORCHELASTIC_RUN_ID": "abc", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert Launch.from_environ(env) == Launch(by_torchrun=True, world_size=4, rank=2,
                                              local_rank=0, restarts=1, launch_id="abc")
    assert not Launch.from_environ(env).is_main and Launch().is_main
    assert Launch.from_environ({}) == Launch()
    # torchrun's default run id "none" says nothing: the host and the agent's pid stand in.
    assert Launch.from_environ({"TORCHELASTIC_RUN_ID": "none"}).launch_id == (
        f"{socket.gethostname()}:{os.getppid()}")


def test_only_the_launch_reads_torchruns_place_from_the_environment():
    # The place is decided once (xmtc_cli.launch) and handed on: no other module reads it.
    root = Path(__file__).parents[1] / "xmtc_cli"
    names = {"WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT",
             "TORCHELASTIC_RUN_ID"}
    readers = sorted({str(path.relative_to(root)) for path in root.rglob("*.py")
                      for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                      if isinstance(node, ast.Constant) and node.value in names})
    assert readers == ["launch.py"]


def test_one_process_has_no_group_and_no_collectives():
    group, device, joined = distributed.setup("cpu", Launch.from_environ())
    assert (group, device.type, joined) == (SINGLE, "cpu", False)
    assert group.broadcast_object(5) == 5 and group.all_gather_object(5) == [5]
    assert group.on_main(lambda: 7) == 7


# --- two processes ----------------------------------------------------------------------------

def oracle_steps(recipe_file: Path, overrides: list[str], group: Group
                 ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Weights and losses after one step on each of GLOBAL_BATCHES (each rank its share)."""
    data = load_data(load_recipe(recipe_file).data.dir)
    recipe = resolve_recipe(load_recipe(recipe_file, overrides), data)
    batcher = Batcher(data.splits["train"], recipe.data.max_src_tokens, recipe.data.max_labels,
                      data.num_labels)
    trainer = Trainer.build(recipe, model_sizes(recipe, data), torch.device("cpu"), 100,
                            data.token_embeddings, data.label_embeddings, group)
    losses = []
    for step, rows in enumerate(GLOBAL_BATCHES):
        loss, _ = trainer.step(batcher.batch(np.asarray(rows)), step)
        losses.append(loss.item())
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, losses


def _pair_worker(rank: int, port: int, recipe_file: Path, out: Path, locked: Path) -> None:
    """One of the two processes: every scenario, its results under `out`."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    group, _, _ = distributed.setup("cpu", Launch.from_environ())
    report: dict = {"pid": os.getpid(), "fits": {}}
    try:
        for name, overrides in ORACLES.items():
            weights, losses = oracle_steps(recipe_file, overrides, group)
            if rank == 0:
                save_file(weights, str(out / f"oracle-{name}.safetensors"))
                (out / f"oracle-{name}.json").write_text(json.dumps(losses))

        def run(name, overrides, **kwargs):
            result = fit(load_recipe(recipe_file, overrides), out / name, device="cpu", **kwargs)
            report["fits"][name] = dataclasses.asdict(dataclasses.replace(result, epochs=[]))

        run("whole", RUN)
        run("resumed", [*RUN, "train.max_steps=17"])  # stops at epoch 2, step 5
        run("resumed", RUN, resume=True)
        run("zero-dropout", ZERO_DROPOUT_RUN)
        run("zero-dropout-prototype", [*ZERO_DROPOUT_RUN, *PROTOTYPE])
        run("zero-dropout-lexical", [*ZERO_DROPOUT_RUN, *LEXICAL])
        try:
            fit(load_recipe(recipe_file, RUN), locked, device="cpu")
        except XmtcError as exc:
            report["locked"] = [type(exc).__name__, exc.message]
        try:  # a process started with another override than the others
            fit(load_recipe(recipe_file, [*RUN, f"train.lr={0.01 * (rank + 1)}"]),
                out / "disagreeing", device="cpu")
        except XmtcError as exc:
            report["disagreeing"] = [type(exc).__name__, exc.message]
    finally:
        (out / f"rank{rank}.json").write_text(json.dumps(report, default=str))
        distributed.teardown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pair(tiny, tmp_path_factory):
    """Two processes (gloo) that ran every scenario; their results' folder."""
    recipe_file = tiny[0]
    out = tmp_path_factory.mktemp("pair")
    locked = out / "locked"
    with RunFolder.create(locked, load_recipe(recipe_file)):  # held by this process
        # Forked from this process, which has imported torch already: a fresh interpreter
        # spends 5-15 s importing torch and torch._dynamo (Adam imports it) on a busy 2-core CPU.
        # CUDA, once started here, does not survive a fork: then fresh interpreters.
        method = "spawn" if torch.cuda.is_initialized() else "fork"
        torch.multiprocessing.start_processes(
            _pair_worker, (free_port(), recipe_file, out, locked), nprocs=2, start_method=method)
    return out


def ranks(pair: Path) -> list[dict]:
    return [json.loads((pair / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("loss", ["matching", "cross-entropy"])
def test_two_processes_take_the_one_process_steps_on_the_same_global_batches(tiny, pair, loss):
    """Matching + OT and cross-entropy, odd global batches and an empty share: the weights
    after four steps match one process's within 1e-5, and so do the logged losses."""
    want, want_losses = oracle_steps(tiny[0], ORACLES[loss], SINGLE)
    got = load_file(pair / f"oracle-{loss}.safetensors")
    assert got.keys() == want.keys()
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst <= TOLERANCE, worst
    got_losses = json.loads((pair / f"oracle-{loss}.json").read_text())
    np.testing.assert_allclose(got_losses, want_losses, rtol=TOLERANCE)


def test_bf16_gradients_train_close_to_float32(tiny, pair):
    want, want_losses = oracle_steps(tiny[0], ORACLES["bf16"], SINGLE)
    got = load_file(pair / "oracle-bf16.safetensors")
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert 0 < worst < 0.05  # bf16 rounds the gradients: close, not equal
    np.testing.assert_allclose(json.loads((pair / "oracle-bf16.json").read_text()),
                               want_losses, rtol=1e-3)


def test_rank_0_alone_holds_the_lock_and_writes_the_run(pair):
    first, second = ranks(pair)
    run = pair / "whole"
    assert (run / ".lock").read_text().strip() == str(first["pid"])
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock", "curves.csv", "last.safetensors", "metrics.jsonl", "model.safetensors",
        "recipe.yaml", STATE_FILE]
    assert first["fits"] == second["fits"]  # every rank knows how the run went
    state = load_file(run / STATE_FILE)
    assert sorted(k for k in state if k.startswith("rng.")) == ["rng.torch.0", "rng.torch.1"]
    assert not torch.equal(state["rng.torch.0"], state["rng.torch.1"])  # own dropout streams
    assert [line["epoch"] for line in metrics_lines(run)] == [1, 2]


def test_resume_on_two_processes_ends_with_the_uninterrupted_weights(pair):
    """Stopped inside epoch 2 (train.max_steps=17, dropout on), resumed: bit for bit."""
    assert_same_run(pair / "resumed", pair / "whole")


def test_a_run_of_two_processes_resumes_on_two_only(pair, tmp_path):
    shutil.copytree(pair / "whole", tmp_path / "run")
    recipe = load_recipe(tmp_path / "run" / "recipe.yaml")
    with pytest.raises(XmtcError) as info:
        fit(recipe, tmp_path / "run", device="cpu", resume=True)
    assert info.value.message.startswith(
        f"{tmp_path / 'run'} holds a run trained by 2 processes; this run has one process")
    assert "torchrun with 2 processes in all" in info.value.hint


def test_a_locked_folder_stops_both_ranks_and_rank_0_alone_reports_it(pair):
    first, second = ranks(pair)
    message = f"{pair / 'locked'} is in use by another xmtc train (pid {os.getpid()})"
    assert first["locked"] == ["XmtcError", message]
    assert second["locked"] == ["ReplicatedError", message]
    assert issubclass(ReplicatedError, XmtcError)


def test_processes_that_disagree_on_the_recipe_stop_before_touching_the_folder(pair):
    first, second = ranks(pair)
    assert first["disagreeing"][0] == second["disagreeing"][0] == "XmtcError"
    assert first["disagreeing"][1].startswith(
        "the training processes disagree on the recipe or the data: process 0 and process(es) "
        "1 differ")
    assert not (pair / "disagreeing").exists()


def test_a_lost_peer_is_told_from_other_failures():
    assert distributed.lost_contact(RuntimeError(
        "[third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"))
    assert distributed.lost_contact(torch.distributed.DistNetworkError("store went away"))
    assert not distributed.lost_contact(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_validation_gives_the_numbers_one_process_gives_for_those_weights(pair):
    run = pair / "zero-dropout"
    predictor = Predictor.from_checkpoint(str(run / "last.safetensors"), "cpu")
    data = load_data(predictor.recipe.data.dir)
    metrics = evaluate_split(predictor.model, data, "valid", predictor.recipe,
                             torch.device("cpu"))
    (line,) = metrics_lines(run)
    assert line["valid"] == metrics


def test_a_checkpoint_of_two_processes_is_one_processes_checkpoint(pair, tiny, tmp_path):
    """No `module.` prefixes: the files load in one process, and a one-process run of the same
    recipe writes the same names and nearly the same weights (dropout 0, 12 steps)."""
    with threads(1):
        fit(load_recipe(tiny[0], ZERO_DROPOUT_RUN), tmp_path / "one", device="cpu")
    for name in ("last.safetensors", "model.safetensors"):
        got, want = load_file(pair / "zero-dropout" / name), load_file(tmp_path / "one" / name)
        assert got.keys() == want.keys() and not any(k.startswith("module.") for k in got)
        worst = max(float((got[k] - want[k]).abs().max()) for k in want)
        assert worst < 1e-3, worst  # 12 Adam steps at lr 1e-2 amplify float rounding
    assert read_meta(pair / "zero-dropout" / "last.safetensors").extra["steps"] == 12


def test_prototype_rows_reach_every_process(pair, tiny, tmp_path):
    """Rank 0 alone computes the prototype rows; if rank 1 kept its random rows, DDP would
    average gradients of two different models and end far from one process's run."""
    with threads(1):
        fit(load_recipe(tiny[0], [*ZERO_DROPOUT_RUN, *PROTOTYPE]), tmp_path / "one",
            device="cpu")
    got = load_file(pair / "zero-dropout-prototype" / "last.safetensors")
    want = load_file(tmp_path / "one" / "last.safetensors")
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst < 1e-3, worst
    random = load_file(pair / "zero-dropout" / "last.safetensors")
    assert float((random["output.weight"] - want["output.weight"]).abs().max()) > 1e-2


def test_a_lexical_run_of_two_processes_validates_and_saves_as_one_process(pair):
    """Rank 0 alone builds the index and searches the weight: the run's checkpoint holds the
    index of its data, and its validation line the fused numbers one process computes for
    those weights."""
    run = pair / "zero-dropout-lexical"
    predictor = Predictor.from_checkpoint(str(run / "last.safetensors"), "cpu")
    data = load_data(predictor.recipe.data.dir)
    index = LexicalIndex.build(data.splits["train"], len(data.tokens), data.num_labels, 5, 2.0, 0.2)
    saved = load_file(run / "last.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in index.tensors().items())
    metrics = evaluate_split(predictor.model, data, "valid", predictor.recipe,
                             torch.device("cpu"), prior=lexical_prior(index, data.splits["valid"]))
    (line,) = metrics_lines(run)
    assert line["valid"] == metrics
    assert read_meta(run / "last.safetensors").extra["lexical_weight"] == \
        metrics["lexical_weight"]


# --- torchrun ---------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_torchrun_restarts_a_worker_killed_mid_epoch_and_ends_with_the_same_weights(
    tiny, pair, tmp_path
):
    """`torchrun --max-restarts 1`: kill -9 rank 0 as soon as it has saved inside epoch 1; the
    group comes back, resumes from that save by itself, and ends bit for bit where the
    uninterrupted run of two processes ends."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--max-restarts", "1", "--monitor-interval", "0.1", "-m", "xmtc_cli", "train",
         str(tiny[0]), *RUN, "--out", str(run), "--device", "cpu"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 300
    while not (run / STATE_FILE).exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no save inside the first epoch"
        time.sleep(0.005)
    victim = next((p for p in _children(proc.pid) if _rank_of(p) == 0), None)
    assert victim is not None, "no rank 0 to kill"
    os.kill(victim, signal.SIGKILL)
    before = len(metrics_lines(run))
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert before < 2  # it was killed before the end
    assert "resuming at epoch" in output  # the restarted group continued the run
    assert_same_run(run, pair / "whole")


@pytest.mark.slow
def test_xmtc_train_nproc_trains_like_torchrun(tiny, pair, tmp_path):
    """`xmtc train --nproc 2` goes through torch.distributed.run: the run of two processes."""
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "xmtc_cli", "train", str(tiny[0]), *RUN, "--out", str(run),
         "--device", "cpu", "--nproc", "2", "--max-restarts=1"],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("checkpoint:") == 1  # rank 0 alone reports
    header = (run / "recipe.yaml").read_text().splitlines()[0]
    assert header.endswith("--device cpu  # on 2 processes (torchrun)")
    assert_same_run(run, pair / "whole")
