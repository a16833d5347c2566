"""fit(): train a model from a recipe into a run folder, resumably.

The run folder holds, each written atomically after every epoch:
  recipe.yaml              the resolved recipe and the command that ran it
  metrics.jsonl            one JSON object per finished epoch
  last.safetensors         checkpoint of the last finished epoch
  model.safetensors        checkpoint with the best validation micro-F1 so far
  train_state.safetensors  weights, Adam moments, step count and RNG state: what --resume reads

Every epoch's data order is drawn from (seed, epoch), and the RNG state is saved at epoch
boundaries, so a resumed run ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from xmtc_cli.atomic import atomic_file, atomic_write_bytes, atomic_write_text
from xmtc_cli.checkpoint import CheckpointMeta, save_checkpoint
from xmtc_cli.config import Recipe
from xmtc_cli.data.batching import Batcher, frequency_rank
from xmtc_cli.data.builtin import load_data
from xmtc_cli.data.processed import ProcessedData
from xmtc_cli.device import autocast, resolve_device
from xmtc_cli.errors import ConfigError, XmtcError
from xmtc_cli.inference import predict_split
from xmtc_cli.losses import build_criterion
from xmtc_cli.metrics import score_label_sets
from xmtc_cli.model import ModelSizes, Seq2SetModel, build_model

STATE_FILE = "train_state.safetensors"
STATE_FORMAT = 1
DEFAULT_EMBED_SIZE = 300  # the paper's GloVe width, used when no vectors were given


@dataclass(frozen=True)
class RunInfo:
    """What a run is about to do, for the progress display."""

    run_dir: Path
    device: str
    epochs: int
    start_epoch: int  # 1-based epoch the run starts at (> 1 when resuming)
    steps_per_epoch: int
    train_docs: int
    valid_docs: int
    parameters: int


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    train_loss: float
    loss_parts: dict[str, float]
    valid: dict[str, float] | None  # validation metrics, None without a validation split
    seconds: float
    docs_per_second: float
    lr: float
    best: bool  # this epoch is the best so far (its weights are in model.safetensors)


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_valid: dict[str, float] | None
    epochs: list[EpochReport] = field(default_factory=list)


class Callback(Protocol):
    def on_start(self, info: RunInfo) -> None: ...
    def on_step(self, epoch: int, step: int, docs: int, loss: float | None) -> None: ...
    def on_epoch_end(self, report: EpochReport) -> None: ...


class _Silent:
    def on_start(self, info: RunInfo) -> None:
        pass

    def on_step(self, epoch: int, step: int, docs: int, loss: float | None) -> None:
        pass

    def on_epoch_end(self, report: EpochReport) -> None:
        pass


def resolve_recipe(recipe: Recipe, data: ProcessedData) -> Recipe:
    """Fill the data-dependent blanks of a recipe (max source tokens, N) from the data."""
    max_src = recipe.data.max_src_tokens or data.defaults.get("max_src_tokens") or 500
    max_labels = recipe.data.max_labels or _largest_label_set(data)
    return dataclasses.replace(
        recipe, data=dataclasses.replace(recipe.data, max_src_tokens=int(max_src),
                                         max_labels=int(max_labels))
    )


def _largest_label_set(data: ProcessedData) -> int:
    train = data.splits["train"]
    return max(int(np.diff(train.label_offsets).max(initial=0)), 1)


def model_sizes(recipe: Recipe, data: ProcessedData) -> ModelSizes:
    """The sizes the model is built with, all derived from the data and the resolved recipe."""
    emb = data.token_embeddings
    label_width = recipe.model.label_embedding_size or data.label_embeddings.shape[1]
    return ModelSizes(
        vocab_size=len(data.tokens),
        num_labels=data.num_labels,
        max_steps=recipe.data.max_labels,
        embed_size=emb.shape[1] if emb is not None else DEFAULT_EMBED_SIZE,
        label_embed_size=int(label_width),
    )


def checkpoint_meta(recipe: Recipe, sizes: ModelSizes, data: ProcessedData, **extra: Any) -> CheckpointMeta:
    """Everything `xmtc predict` needs beside the weights."""
    return CheckpointMeta(
        recipe=recipe.to_dict(),
        sizes=dataclasses.asdict(sizes),
        tokens=list(data.tokens),
        tokenizer=dict(data.tokenizer),
        labels=list(data.labels[: data.num_labels]),
        label_names=list(data.label_names[: data.num_labels]),
        label_counts=[int(c) for c in data.label_counts[: data.num_labels]],
        extra=extra,
    )


def fit(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    device: str = "auto",
    resume: bool = False,
    command: str = "",
    callback: Callback | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Train `recipe` into `run_dir`; `resume` continues from its last finished epoch.

    `stop_after` ends the run after that many epochs of this call (the run stays resumable);
    tests use it to simulate an interruption.
    """
    callback = callback or _Silent()
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    data = load_data(recipe.data.dir)
    recipe = resolve_recipe(recipe, data)
    if "train" not in data.splits or len(data.splits["train"]) == 0:
        raise XmtcError(f"{data.path} has no training documents", "re-run `xmtc preprocess`")
    _check_run_dir(run_dir, recipe, resume)

    torch.manual_seed(recipe.train.seed)
    sizes = model_sizes(recipe, data)
    label_emb = data.label_embeddings if recipe.model.label_embedding_size is None else None
    model = build_model(recipe.model, recipe.loss, sizes, data.token_embeddings, label_emb).to(dev)
    criterion = build_criterion(recipe.loss)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=recipe.train.lr, weight_decay=recipe.train.weight_decay
    )
    rank = (frequency_rank(data.label_counts[: data.num_labels])
            if recipe.data.label_order == "frequency" else None)
    batcher = Batcher(data.splits["train"], recipe.data.max_src_tokens, recipe.data.max_labels,
                      data.num_labels, rank)
    valid = data.splits.get("valid")
    steps_per_epoch = batcher.num_batches(recipe.train.batch_size)
    total_steps = steps_per_epoch * recipe.train.epochs

    state = _TrainState(epoch=0, step=0, best_f1=-1.0, best_epoch=0, best_valid=None)
    if resume:
        state = _load_state(run_dir / STATE_FILE, model, optimizer, dev)
        _truncate_metrics(run_dir / "metrics.jsonl", state.epoch)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        header = f"# {command}\n" if command else ""
        atomic_write_text(run_dir / "recipe.yaml", header + recipe.to_yaml())
        atomic_write_text(run_dir / "metrics.jsonl", "")

    callback.on_start(RunInfo(
        run_dir=run_dir, device=str(dev), epochs=recipe.train.epochs, start_epoch=state.epoch + 1,
        steps_per_epoch=steps_per_epoch, train_docs=len(batcher.split),
        valid_docs=len(valid) if valid is not None else 0,
        parameters=sum(p.numel() for p in model.parameters()),
    ))
    reports = []
    last = state.epoch + (stop_after if stop_after is not None else recipe.train.epochs)
    for epoch in range(state.epoch + 1, min(recipe.train.epochs, last) + 1):
        start = time.perf_counter()
        train_loss, loss_parts = _train_epoch(
            epoch, model, criterion, optimizer, batcher, recipe, state, total_steps, dev, callback
        )
        train_seconds = time.perf_counter() - start

        metrics = None
        if valid is not None and len(valid):
            metrics = evaluate_split(model, data, "valid", recipe, dev)
        score = metrics["micro_f1"] if metrics else float(epoch)  # no validation: keep the last
        best = score > state.best_f1
        meta = checkpoint_meta(recipe, sizes, data, epoch=epoch, valid=metrics)
        if best:
            state.best_f1, state.best_epoch, state.best_valid = score, epoch, metrics
            save_checkpoint(run_dir / "model.safetensors", model.state_dict(), meta)
        save_checkpoint(run_dir / "last.safetensors", model.state_dict(), meta)
        report = EpochReport(
            epoch=epoch, train_loss=train_loss, loss_parts=loss_parts, valid=metrics,
            seconds=time.perf_counter() - start, docs_per_second=len(batcher.split) / train_seconds,
            lr=optimizer.param_groups[0]["lr"], best=best,
        )
        # The metrics line before the state: a kill between the two leaves a line that --resume
        # drops and redoes, never a finished epoch without its line.
        _append_metrics(run_dir / "metrics.jsonl", report)
        state.epoch = epoch
        _save_state(run_dir / STATE_FILE, state, model, optimizer, recipe)
        reports.append(report)
        callback.on_epoch_end(report)

    return FitResult(
        run_dir=run_dir, best_checkpoint=run_dir / "model.safetensors",
        last_checkpoint=run_dir / "last.safetensors", best_epoch=state.best_epoch,
        best_valid=state.best_valid, epochs=reports,
    )


def _train_epoch(epoch: int, model: Seq2SetModel, criterion: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, batcher: Batcher, recipe: Recipe,
                 state: _TrainState, total_steps: int, device: torch.device,
                 callback: Callback) -> tuple[float, dict[str, float]]:
    """One pass over the training split; returns the mean loss and the mean of each part."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    parts_sum: dict[str, torch.Tensor] = {}
    steps = batcher.num_batches(recipe.train.batch_size)
    batches = batcher.epoch(recipe.train.batch_size, seed=_epoch_seed(recipe, epoch))
    for i, batch in enumerate(batches):
        lr = _cosine(recipe.train.lr, recipe.train.min_lr, state.step, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batch.to(device)
        with autocast(device, recipe.train.amp):
            logits = model(batch.src, batch.lengths, batch.gold)
            loss, parts = criterion(logits, batch.gold, model.label_embedding.weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
        optimizer.step()
        state.step += 1
        loss_sum += loss.detach().float()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0) + v.detach().float()
        # Reading the loss waits for the device: only every few steps.
        shown = loss_sum.item() / (i + 1) if (i + 1) % 10 == 0 or i + 1 == steps else None
        callback.on_step(epoch, i + 1, len(batch), shown)
    train_loss = loss_sum.item() / steps
    if not math.isfinite(train_loss):
        raise XmtcError(
            f"training diverged at epoch {epoch} (loss {train_loss})",
            "lower train.lr or train.grad_clip, or set train.amp=false",
        )
    return train_loss, {k: v.item() / steps for k, v in parts_sum.items()}


def evaluate_split(model: Seq2SetModel, data: ProcessedData, split: str, recipe: Recipe,
                   device: torch.device, label_universe: bool = False) -> dict[str, float]:
    """Generate label sets for a processed split and score them against its gold sets."""
    part = data.splits[split]
    predicted = predict_split(model, part, recipe.data.max_src_tokens, recipe.train.eval_batch_size, device,
                              amp=recipe.train.amp)
    gold = [part.labels(i).tolist() for i in range(len(part))]
    universe = range(data.num_labels) if label_universe else None
    return score_label_sets(predicted, gold, universe)


def _epoch_seed(recipe: Recipe, epoch: int) -> int:
    return recipe.train.seed * 1_000_003 + epoch


def _cosine(lr: float, min_lr: float, step: int, total: int) -> float:
    """Cosine annealing from `lr` to `min_lr` over `total` steps."""
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


# --- the run folder --------------------------------------------------------------------------

def _check_run_dir(run_dir: Path, recipe: Recipe, resume: bool) -> None:
    state = run_dir / STATE_FILE
    if resume:
        if not state.is_file():
            raise XmtcError(
                f"{run_dir} holds no interrupted run to resume (no {STATE_FILE})",
                "drop --resume to start a new run there",
            )
        saved = json.loads(_state_metadata(state)["recipe"])
        if saved != recipe.to_dict():
            changed = sorted(_diff_keys(saved, recipe.to_dict()))
            raise ConfigError(
                f"--resume with a recipe that differs from the run in {run_dir}: {', '.join(changed)}",
                "resume with the same recipe and overrides, or start a new run with another --out",
            )
    elif state.is_file():
        raise XmtcError(
            f"{run_dir} already holds a training run",
            "pass --resume to continue it, or choose another folder with --out",
        )


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def _append_metrics(path: Path, report: EpochReport) -> None:
    # Rewritten whole through a temporary file, so a kill never leaves a torn last line.
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(previous + json.dumps(dataclasses.asdict(report), sort_keys=True) + "\n")


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop metric lines of epochs after `epoch` (finished but not saved before a kill)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
             if ln.strip() and json.loads(ln)["epoch"] <= epoch]
    atomic_write_text(path, "".join(ln + "\n" for ln in lines))


@dataclass
class _TrainState:
    epoch: int
    step: int
    best_f1: float
    best_epoch: int
    best_valid: dict[str, float] | None


def _save_state(path: Path, state: _TrainState, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, recipe: Recipe) -> None:
    """Weights, optimiser moments and RNG state in one file, so they can never disagree."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for pid, slots in optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {
        "format": str(STATE_FORMAT),
        "state": json.dumps(dataclasses.asdict(state)),
        "recipe": json.dumps(recipe.to_dict()),
    }
    atomic_write_bytes(path, save_safetensors(tensors, metadata=meta))


def _state_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise XmtcError(f"{path} is damaged ({exc})", "start a new run with another --out") from exc


def _load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device) -> _TrainState:
    meta = _state_metadata(path)
    if meta.get("format") != str(STATE_FORMAT):
        raise XmtcError(f"{path} is from another version of xmtc", "start a new run with another --out")
    tensors = load_safetensors(path.read_bytes())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, slot = key.split(".", 2)
            optim_state.setdefault(int(pid), {})[slot] = value
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": optim_state, "param_groups": current["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return _TrainState(**json.loads(meta["state"]))
