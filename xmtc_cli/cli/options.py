"""Option types that more than one command takes, so that each is spelled and documented once."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from xmtc_cli.errors import UsageError


class Device(str, Enum):
    """Where a model runs: `auto` is CUDA when there is a GPU, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DeviceOption = Annotated[Device, typer.Option(
    help="Where to run the model: auto (a GPU when there is one), cpu or cuda.")]
MAX_BATCH = 1 << 20
BatchSizeOption = Annotated[int, typer.Option(
    min=1, max=MAX_BATCH, help="Documents per forward pass.")]
EncodingOption = Annotated[str, typer.Option(
    "--encoding", help="Encoding of the input text, e.g. latin-1 or utf-16 (a byte-order mark "
    "is always dropped).")]


SYSTEM_FOLDERS = frozenset(("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run",
                            "/sbin", "/sys", "/usr", "/var", "/tmp"))
"""Folders that --out may not name itself (a file or folder inside them is fine)."""


def out_path(value: str | None, option: str = "--out") -> Path | None:
    """An output path as given to `option`, refused where writing there is never meant: the
    empty string (which would mean the working folder), the filesystem root, a system folder
    (`SYSTEM_FOLDERS`) or the home folder.
    A folder-writing command replacing or filling one of those would scatter files over (or
    replace) what is there."""
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{option} is empty", f"give {option} the path to write to")
    path = Path(value)
    try:
        real = path.resolve()
        home = Path.home().resolve() if "HOME" in os.environ else None
    except (OSError, RuntimeError):
        return path  # the write itself says what is wrong
    if real == Path(real.anchor):
        raise UsageError(f"{option} {value} is the root of the file system",
                         f"give {option} a folder or file of its own, e.g. {option} out")
    if str(real) in SYSTEM_FOLDERS:
        raise UsageError(f"{option} {value} is a system folder ({real})",
                         f"give {option} a folder or file of its own, e.g. {option} out")
    if home is not None and real == home:
        raise UsageError(f"{option} {value} is your home folder",
                         f"give {option} a folder of its own inside it, e.g. {option} ~/out")
    return path


def given(ctx: typer.Context, *names: str) -> list[str]:
    """Which of the parameters `names` (Python names) the command line set, as their option
    spellings: for refusing an option that has no effect in the combination given."""
    out = []
    for name in names:
        source = ctx.get_parameter_source(name)  # by name: typer may bring its own click
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            param = next((p for p in ctx.command.params if p.name == name), None)
            out.append(param.opts[0] if param is not None and param.opts else name)
    return out
ThreadsOption = Annotated[int | None, typer.Option(
    min=1, max=1024, help="CPU threads for torch. Default: the recipe's train.threads, else "
    "XMTC_THREADS or OMP_NUM_THREADS, else the cores this process may use less the busy "
    "ones (shared among torchrun's processes).")]


CheckpointArgument = Annotated[Path, typer.Argument(
    help="A model.safetensors written by `xmtc train`.")]


def threshold_value(threshold: str | None) -> float | None:
    """--threshold as a number (None for `tuned` or none given); a UsageError if neither."""
    if threshold is None or threshold == "tuned":
        return None
    try:
        value = float(threshold)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise UsageError(f"--threshold {threshold[:20]!r} is neither `tuned` nor a number in "
                         "(0, 1]", "give e.g. --threshold 0.3, or --threshold tuned")
    return value


def resolve_threshold(predictor: Any, explicit: float | None, threshold: str | None,
                       checkpoint: Path) -> float | None:
    """The threshold the set is cut at: a number given, the checkpoint's tuned one, or None
    (the generated set)."""
    tuned = predictor.threshold
    if threshold == "tuned":
        if tuned is None:
            raise UsageError(f"{checkpoint} holds no tuned threshold (none beat the generated "
                             "set on validation, or it was trained before xmtc tuned them)",
                             "leave out --threshold, or give a number")
        return float(tuned["threshold"])
    return explicit


def cpu_watch(choice: Any, device: str) -> Any:
    """A `threads.LoadWatch` of `choice` for a long command on the CPU; None on a GPU."""
    from xmtc_cli.device import resolve_device
    from xmtc_cli.threads import LoadWatch

    return LoadWatch(choice) if resolve_device(device).type == "cpu" else None
