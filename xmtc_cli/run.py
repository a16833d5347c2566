"""The run folder: everything `xmtc train` writes, and the rules that keep it one run's.

    recipe.yaml              the resolved recipe, under a comment with the command that ran it
    metrics.jsonl            one `EpochReport` per finished epoch (JSON, one per line)
    last.safetensors         checkpoint of the last finished epoch
    model.safetensors        checkpoint with the best validation micro-F1 so far
    train_state.safetensors  weights, Adam moments, RNG state and `TrainState`: what --resume
                             reads; saved after every epoch and every train.checkpoint_every steps
    .lock                    held (flock) by the process that trains into the folder
    .launch                  the torchrun launch that created the run (`launch_id`), so that its
                             restarts resume it by themselves

Every file is replaced atomically. Metrics are appended before the state is saved, so a kill
between the two leaves a line that --resume drops and redoes, never a finished epoch without
its line. One process at a time: a second `xmtc train` on a locked folder fails at once, naming
the holder's pid. A new run never writes into a folder that holds any run file; temporary files
that a killed run left behind are removed when the folder is next opened.

Under torchrun (xmtc_cli.distributed) only rank 0 opens a RunFolder: it alone takes the lock
and writes; the train state then holds every rank's RNG state (`rng.torch.R`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from xmtc_cli.atomic import atomic_file, atomic_write_text
from xmtc_cli.config import Recipe, load_recipe, recipe_from_dict
from xmtc_cli.errors import ConfigError, XmtcError
from xmtc_cli.fileerrors import file_error
from xmtc_cli.tensorfile import write_safetensors

try:  # POSIX; elsewhere runs go unlocked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
STATE_FILE = "train_state.safetensors"
"""The train state, written and read here only (`RunFolder.save_state`, `load_state`): tensors
`model.NAME` (weights), `optim.PID.SLOT` (Adam moments), `rng.KIND` (one process's RNG state,
KIND torch or cuda) or `rng.KIND.R` (rank R's, in a run of many processes); metadata `format`
(STATE_FORMAT, or MANY_PROCESS_STATE_FORMAT), `state` (TrainState as JSON), `recipe`."""
LOCK_FILE = ".lock"
LAUNCH_FILE = ".launch"
CURVES_FILE = "curves.csv"  # metrics.jsonl as a table (xmtc_cli.curves)
RUN_FILES = (RECIPE_FILE, METRICS_FILE, BEST_FILE, LAST_FILE, STATE_FILE, CURVES_FILE)
# 2 added the position inside an epoch; 3, written by runs of many processes only, holds one RNG
# state per rank (rng.torch.R). Files of formats 1 and 2 still resume.
STATE_FORMAT = 2
MANY_PROCESS_STATE_FORMAT = 3
# Recipe keys that say how long to run and how often to report or save, not what to train:
# --resume accepts new values for them. A larger train.epochs continues a finished run; the
# cosine schedule then runs over the new total of steps from the step reached (README).
# train.threads changes the rounding of some sums (how work is split among threads), as
# resuming on another machine would, not the method.
RESUMABLE_CHANGES = ("train.max_steps", "train.log_every", "train.checkpoint_every",
                     "train.epochs", "train.early_stop", "train.threads")


@dataclass
class TrainState:
    """Where a run is: what --resume needs besides the tensors."""

    epoch: int = 0
    """The last finished epoch (0 before the first)."""
    step: int = 0
    """Optimiser steps taken so far, over all epochs."""
    best_f1: float = -1.0
    best_epoch: int = 0
    best_valid: dict[str, float] | None = None
    batches_done: int = 0
    """Batches of epoch `epoch + 1` already trained (a save inside an epoch)."""
    loss_sum: float = 0.0
    """Sum of those batches' losses, so that the epoch reports the same mean after a resume."""
    parts_sum: dict[str, float] = field(default_factory=dict)
    data: str = ""
    """The processed data's fingerprint (`data_fingerprint`); "" in states saved before it."""
    threads: int = 0
    """CPU threads the run trains with (xmtc_cli.threads); a resume keeps them unless told
    otherwise. 0 in states saved before."""


@dataclass(frozen=True)
class EpochReport:
    """One line of metrics.jsonl."""

    epoch: int
    train_loss: float
    loss_parts: dict[str, float]
    valid: dict[str, float] | None  # validation metrics, None without a validation split
    seconds: float
    docs_per_second: float
    lr: float
    best: bool  # this epoch is the best so far (its weights are in model.safetensors)
    steps: int = 0  # optimiser steps so far, over all epochs
    partial: bool = False  # train.max_steps ended the run inside this epoch
    threads: int = 0  # CPU threads torch used (xmtc_cli.threads); 0 in lines written before


class RunFolder:
    """A run folder opened (and locked) for training; use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: Any = None

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, recipe: Recipe, command: str = "",
               launch: str | None = None) -> RunFolder:
        """A new run in `path` (created if needed), refused where any run file exists.

        `launch` (xmtc_cli.launch.Launch.launch_id) names the torchrun launch that starts it.
        """
        run = cls(path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise file_error(exc, "create the run folder", run.path) from exc
        run._acquire()
        try:
            run._remove_leftovers()
            if holds_run(run.path):
                raise XmtcError(
                    f"{run.path} already holds a training run",
                    "pass --resume to continue it, or choose another folder with --out",
                )
            # Before any run file: a restart that finds the mark and no recipe starts afresh.
            launch_file = run.path / LAUNCH_FILE
            if launch is not None:
                atomic_write_text(launch_file, launch + "\n")
            elif launch_file.exists():
                launch_file.unlink()
            header = f"# {command}\n" if command else ""
            atomic_write_text(run.path / RECIPE_FILE, header + recipe.to_yaml())
            atomic_write_text(run.path / METRICS_FILE, "")
        except BaseException:
            run.close()
            raise
        return run

    @classmethod
    def reopen(cls, path: str | Path, recipe: Recipe) -> RunFolder:
        """The interrupted run in `path`, checked to be the run of `recipe`."""
        run = cls(path)
        if not (run.path / RECIPE_FILE).is_file():
            raise XmtcError(
                f"{run.path} holds no interrupted run to resume (no {RECIPE_FILE})",
                "drop --resume to start a new run there",
            )
        run._acquire()
        try:
            run._remove_leftovers()
            run._check_recipe(recipe)
        except BaseException:
            run.close()
            raise
        return run

    @staticmethod
    def started_by(path: str | Path, launch: str | None) -> bool:
        """Whether the run in `path` was created by the torchrun launch `launch`."""
        if launch is None:
            return False
        path = Path(path)
        try:
            mark = (path / LAUNCH_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            return False
        return mark == launch and (path / RECIPE_FILE).is_file()

    def _check_recipe(self, recipe: Recipe) -> None:
        saved = _recipe_of(self.path / STATE_FILE) if self.has_state else None
        if saved is None:  # killed before the first save: recipe.yaml says what it was
            saved = load_recipe(self.path / RECIPE_FILE).to_dict()
        with contextlib.suppress(ConfigError):  # keys added since the run began: their defaults
            saved = recipe_from_dict(saved).to_dict()
        changed = [key for key in _diff_keys(saved, recipe.to_dict())
                   if key not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"--resume with a recipe that differs from the run in {self.path}: "
                + ", ".join(sorted(changed)),
                "resume with the same recipe and overrides, or start a new run with another --out",
            )

    def _acquire(self) -> None:
        if fcntl is None:
            return
        handle = open(self.path / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise XmtcError(
                f"{self.path} is in use by another xmtc train (pid {holder})",
                "wait for it to finish, or train into another folder with --out",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def _remove_leftovers(self) -> None:
        """Temporary files of a killed write (`.NAME.*.tmp`, see xmtc_cli.atomic) of our files."""
        for name in (*RUN_FILES, ".recipe.yaml", LAUNCH_FILE):
            for leftover in self.path.glob(f".{name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- files -------------------------------------------------------------------------------

    @property
    def best(self) -> Path:
        return self.path / BEST_FILE

    @property
    def last(self) -> Path:
        return self.path / LAST_FILE

    @property
    def has_state(self) -> bool:
        return (self.path / STATE_FILE).is_file()

    def append_metrics(self, report: EpochReport) -> None:
        # Rewritten whole through a temporary file, so a kill never leaves a torn last line.
        path = self.path / METRICS_FILE
        previous = path.read_text(encoding="utf-8") if path.exists() else ""
        with atomic_file(path, "w", encoding="utf-8") as f:
            f.write(previous + json.dumps(dataclasses.asdict(report), sort_keys=True) + "\n")
        from xmtc_cli.curves import write_csv

        write_csv(self.path)  # curves.csv: the same epochs as a table

    def truncate_metrics(self, epoch: int) -> None:
        """Drop metric lines of epochs after `epoch` (finished but not saved before a kill)."""
        path = self.path / METRICS_FILE
        if not path.exists():
            return
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
                 if ln.strip() and json.loads(ln)["epoch"] <= epoch]
        atomic_write_text(path, "".join(ln + "\n" for ln in lines))

    def save_state(self, state: TrainState, model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, recipe: Recipe,
                   rngs: list[dict[str, torch.Tensor]] | None = None) -> None:
        """Weights, optimiser moments, RNG state and `state` in one file, so they never disagree
        (the file's layout: `STATE_FILE`).

        Tensors stream to disk one at a time (xmtc_cli.tensorfile): the save needs no second
        copy of the weights and moments. `rngs`: the RNG states (`rng_state`) of every rank of
        a run of many processes, in rank order; None: this process's own.
        """
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        for pid, slots in optimizer.state_dict()["state"].items():
            for key, value in slots.items():
                tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value)
        rngs = rngs or [rng_state()]
        tensors.update(_rng_tensors(rngs))
        meta = {
            "format": str(STATE_FORMAT if len(rngs) == 1 else MANY_PROCESS_STATE_FORMAT),
            "state": json.dumps(dataclasses.asdict(state)),
            "recipe": json.dumps(recipe.to_dict()),
        }
        write_safetensors(self.path / STATE_FILE, tensors, meta)

    def load_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   device: torch.device, data: tuple[str, str] | None = None,
                   ) -> tuple[TrainState, list[dict[str, torch.Tensor]]]:
        """Fill `model` and `optimizer` from the saved state; the state and the RNG states of
        every rank that saved it, in rank order (one for a run of one process).

        `data`: (folder, fingerprint) of the processed data the run resumes on; a state saved
        on other data is refused before any tensor is read.
        """
        path = self.path / STATE_FILE
        meta = _metadata(path)
        if meta.get("format") not in ("1", str(STATE_FORMAT), str(MANY_PROCESS_STATE_FORMAT)):
            raise XmtcError(f"{path} is from another version of xmtc",
                            "start a new run with another --out")
        saved = json.loads(meta["state"]).get("data", "")
        if data is not None and saved and saved != data[1]:
            raise XmtcError(
                f"{data[0]} is not the processed data this run trained on: it was preprocessed "
                "again, from other files or with other options, since the run started",
                "resume with the data the run started with, or start a new run with another "
                "--out",
            )
        try:
            tensors = load_file(path)
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise XmtcError(f"{path} is damaged ({exc})",
                            "start a new run with another --out") from exc
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optim_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, slot = key.split(".", 2)
                optim_state.setdefault(int(pid), {})[slot] = value
        current = optimizer.state_dict()
        optimizer.load_state_dict({"state": optim_state, "param_groups": current["param_groups"]})
        return TrainState(**json.loads(meta["state"])), _rngs_of(tensors)


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG state: torch's, and the current CUDA device's where there is one."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"])


def _rng_tensors(rngs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The train state's RNG tensors for every rank's RNG state, in rank order: `rng.torch`
    (and `rng.cuda`) for one process, `rng.torch.R` (and `rng.cuda.R`) for rank R of many."""
    if len(rngs) == 1:
        return {f"rng.{kind}": v for kind, v in rngs[0].items()}
    return {f"rng.{kind}.{r}": v for r, own in enumerate(rngs) for kind, v in own.items()}


def _rngs_of(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state, in rank order, from a train state's tensors (`_rng_tensors`)."""
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    if "torch" in rng:
        return [rng]
    ranks: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in rng.items():
        kind, rank = key.rsplit(".", 1)
        ranks.setdefault(int(rank), {})[kind] = value
    return [ranks[r] for r in sorted(ranks)]


def holds_run(path: Path) -> bool:
    """Whether `path` holds any file of a run (finished, interrupted or killed early)."""
    return any((path / name).exists() for name in RUN_FILES)


def default_run_dir(base: Path, resume: bool, launch: str | None = None) -> Path:
    """runs/NAME, or the first runs/NAME-k that holds no run (the latest one when resuming);
    the one this torchrun launch created, if `launch` is given and there is one."""
    candidates = [base] + [base.with_name(f"{base.name}-{k}") for k in range(2, 1000)]
    if launch is not None:
        ours = [c for c in candidates if RunFolder.started_by(c, launch)]
        if ours:
            return ours[-1]
    if resume:
        taken = [c for c in candidates if holds_run(c)]
        return taken[-1] if taken else base
    return next(c for c in candidates if not holds_run(c))


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise XmtcError(f"{path} is damaged ({exc})", "start a new run with another --out") from exc


def _recipe_of(state_file: Path) -> dict[str, Any]:
    return json.loads(_metadata(state_file)["recipe"])


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def run_name(recipe: Recipe, path: str | Path) -> str:
    """The run's name: the recipe's, else the recipe file's stem made safe as a folder name."""
    if recipe.name:
        return recipe.name
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(path).stem).lstrip(".-_")[:100]
    return stem or "run"
