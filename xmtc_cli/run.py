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

Nothing in a run folder is followed or waited on: a run file (or the lock) that is a symbolic
link, a FIFO, a device or a folder is refused when the folder is opened, before anything is
read or written, so a link planted there can neither make xmtc write through it nor a FIFO make
it block. The train state carries a checksum (`xmtc_cli.tensorfile`) checked before it is used,
and every value restored from it is checked to be what it must be (counts are non-negative
integers, losses finite numbers, no unknown keys). A resumed run rewrites recipe.yaml with the
recipe it runs (a new train.max_steps included), warning where the file had been edited.

Under torchrun (xmtc_cli.distributed) only rank 0 opens a RunFolder: it alone takes the lock
and writes; the train state then holds every rank's RNG state (`rng.torch.R`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from xmtc_cli.atomic import atomic_file, atomic_write_text
from xmtc_cli.config import Recipe, load_recipe, recipe_from_dict
from xmtc_cli.errors import ConfigError, XmtcError, cut
from xmtc_cli.fileerrors import file_error
from xmtc_cli.tensorfile import ChecksumMismatch, verify_checksum, write_safetensors

log = logging.getLogger(__name__)

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
        run._check_files()
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
    def reopen(cls, path: str | Path, recipe: Recipe, command: str = "") -> RunFolder:
        """The interrupted run in `path`, checked to be the run of `recipe`; its recipe.yaml is
        rewritten to show `recipe` (what the resumed run uses) with `command` under the
        original command."""
        run = cls(path)
        if run.path.is_dir():
            run._check_files()
        if not (run.path / RECIPE_FILE).is_file():
            raise XmtcError(
                f"{run.path} holds no interrupted run to resume (no {RECIPE_FILE})",
                "drop --resume to start a new run there",
            )
        run._acquire()
        try:
            run._remove_leftovers()
            run._check_recipe(recipe)
            run._record_recipe(recipe, command)
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
            mark = _read_regular(path / LAUNCH_FILE).decode("utf-8", "replace").strip()
        except OSError:
            return False
        return mark == launch and (path / RECIPE_FILE).is_file()

    def _check_files(self) -> None:
        """Refuse run files that are not regular files: links, FIFOs, devices, folders."""
        for name in (*RUN_FILES, LOCK_FILE, LAUNCH_FILE):
            path = self.path / name
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise file_error(exc, "read", path) from None
            if stat.S_ISREG(info.st_mode):
                continue
            if stat.S_ISLNK(info.st_mode):
                what = f"a symbolic link (to {cut(os.readlink(path), 60)})"
            elif stat.S_ISDIR(info.st_mode):
                what = "a folder"
            elif stat.S_ISFIFO(info.st_mode):
                what = "a FIFO (named pipe)"
            else:
                what = "a device or socket"
            raise XmtcError(
                f"{path} is {what}, not a file that xmtc wrote: xmtc neither follows links "
                "nor opens pipes or devices in a run folder",
                f"remove {path}, or train into another folder with --out",
            )

    def _record_recipe(self, recipe: Recipe, command: str) -> None:
        """recipe.yaml shows what the resumed run uses; an edit since the run began is told."""
        from xmtc_cli.config import recipe_from_dict

        path = self.path / RECIPE_FILE
        try:
            text = _read_regular(path).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        comments = [ln for ln in text.splitlines()
                    if ln.startswith("# ") and not ln.startswith("# resumed: ")]
        try:
            import yaml

            shown = recipe_from_dict(yaml.safe_load(text) or {}).to_dict()
            edited = sorted(_diff_keys(shown, recipe.to_dict()))
        except Exception:  # damaged beyond reading: it is rewritten all the same
            edited = ["(unreadable)"]
        if edited and not all(key in RESUMABLE_CHANGES for key in edited):
            log.warning(f"{path} did not show the recipe this run uses "
                        f"({cut(', '.join(edited), 80)}): it is written again")
        header = comments[:1] + ([f"# resumed: {command}"] if command else [])
        atomic_write_text(path, "".join(ln + "\n" for ln in header) + recipe.to_yaml())

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
        path = self.path / LOCK_FILE
        try:  # never through a link, never waiting on a FIFO
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except OSError as exc:
            self._check_files()  # a link or a FIFO planted since: say so
            raise file_error(exc, "open the lock file", path) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self._check_files()
        handle = os.fdopen(fd, "a+", encoding="utf-8")
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
        previous = "".join(ln + "\n" for ln, _ in self._metric_lines())
        with atomic_file(path, "w", encoding="utf-8") as f:
            f.write(previous + json.dumps(dataclasses.asdict(report), sort_keys=True) + "\n")
        from xmtc_cli.curves import write_csv

        write_csv(self.path)  # curves.csv: the same epochs as a table

    def truncate_metrics(self, epoch: int) -> None:
        """Drop metric lines of epochs after `epoch` (finished but not saved before a kill)."""
        path = self.path / METRICS_FILE
        if not path.exists():
            return
        lines = [ln for ln, report in self._metric_lines() if report["epoch"] <= epoch]
        atomic_write_text(path, "".join(ln + "\n" for ln in lines))

    def _metric_lines(self) -> list[tuple[str, dict[str, Any]]]:
        """metrics.jsonl's lines and what each says; an XmtcError naming the line where one is
        not a metrics line."""
        path = self.path / METRICS_FILE
        try:
            raw = _read_regular(path)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise file_error(exc, "read", path) from None
        out = []
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                report = json.loads(line.decode("utf-8"))
                ok = (isinstance(report, dict) and isinstance(report.get("epoch"), int)
                      and not isinstance(report["epoch"], bool) and report["epoch"] >= 0)
            except (UnicodeDecodeError, ValueError, RecursionError):
                ok = False
            if not ok:
                raise XmtcError(
                    f"{path}:{number}: damaged: not a metrics line (a JSON object with an "
                    "epoch number)",
                    f"remove that line (or {path} itself: it only lists finished epochs) and "
                    "resume again",
                )
            out.append((line.decode("utf-8"), report))
        return out

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
        restored = _train_state(path, meta.get("state"))
        saved = restored.data
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
        return restored, _rngs_of(tensors)


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


_NEW_RUN = "start a new run with another --out"
_verified: dict[str, tuple[int, int, int]] = {}  # path -> (size, mtime, inode) checked


def _metadata(path: Path) -> dict[str, str]:
    """The train state's metadata, once its checksum is checked (once per version of the file)."""
    try:
        info = os.stat(path)
        key = (info.st_size, info.st_mtime_ns, info.st_ino)
        if _verified.get(str(path)) != key:
            verify_checksum(path)
            _verified[str(path)] = key
    except ChecksumMismatch:
        raise XmtcError(f"{path} was changed after xmtc wrote it: its checksum does not match "
                        "its tensors and metadata", _NEW_RUN) from None
    except (OSError, ValueError) as exc:
        raise XmtcError(f"{path} is damaged ({cut(str(exc), 80)})", _NEW_RUN) from None
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise XmtcError(f"{path} is damaged ({exc})", _NEW_RUN) from exc


def _recipe_of(state_file: Path) -> dict[str, Any]:
    try:
        recipe = json.loads(_metadata(state_file)["recipe"])
    except (KeyError, ValueError, RecursionError):
        recipe = None
    if not isinstance(recipe, dict):
        raise XmtcError(f"{state_file} holds a damaged recipe (not a JSON object)", _NEW_RUN)
    return recipe


def _train_state(path: Path, raw: str | None) -> TrainState:
    """The `TrainState` a state file records, each value checked to be what it must be."""
    def damaged(what: str) -> XmtcError:
        return XmtcError(f"{path} holds a damaged train state: {what}", _NEW_RUN)

    try:
        values = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        values = None
    if not isinstance(values, dict):
        raise damaged("not a JSON object")
    fields = {f.name: f for f in dataclasses.fields(TrainState)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise damaged(f"unknown keys {cut(', '.join(map(str, unknown)), 60)}")
    for key in ("epoch", "step", "best_epoch"):
        if key not in values:
            raise damaged(f"no {key}")
    for key, value in values.items():
        kind = fields[key].type
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 62
            what = "a count (a non-negative integer)"
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value)
            what = "a finite number"
        elif kind == "str":
            ok, what = isinstance(value, str), "a string"
        else:  # dict[str, float] (or None for best_valid)
            ok = (value is None and key == "best_valid") or (
                isinstance(value, dict) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in value.values()))
            what = "an object of finite numbers"
        if not ok:
            raise damaged(f"{key} is {cut(json.dumps(value), 30)}, not {what}")
    state = TrainState(**values)
    if state.best_epoch > state.epoch:
        raise damaged(f"best_epoch {state.best_epoch} is after epoch {state.epoch}")
    return state


def _read_regular(path: Path) -> bytes:
    """A run file's bytes, read without following a link or waiting on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read()


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
