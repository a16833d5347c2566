"""`xmtc train`: fit a model from a recipe."""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from xmtc_cli.cli.app import app
from xmtc_cli.cli.render import TrainingDisplay, metrics_table, stderr, stdout
from xmtc_cli.config import METHODS, load_recipe, method_overrides
from xmtc_cli.errors import ConfigError

# The core (torch) is imported inside the command, so that `xmtc --help` and `xmtc preprocess`
# start fast.


class Scheme(str, Enum):
    all = "all"
    first_n = "first-n"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def train(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="YAML recipe, e.g. recipes/demo.yaml.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="KEY=VALUE overrides of the recipe, e.g. train.epochs=3 model.light_conv=false.",
    )] = None,
    scheme: Annotated[Scheme | None, typer.Option(help="Shorthand for loss.scheme=...")] = None,
    method: Annotated[str | None, typer.Option(
        help="A row of the paper's Table 3: " + ", ".join(METHODS)
        + " (applied before KEY=VALUE overrides).",
    )] = None,
    out: Annotated[Path | None, typer.Option(
        help="Run folder. Default: runs/NAME, or runs/NAME-2, -3... if that holds a run.",
    )] = None,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved recipe and exit.")] = False,
) -> None:
    """Train a model; the best checkpoint by validation micro-F1 is RUN/model.safetensors."""
    overrides = (method_overrides(method) if method else []) + list(overrides or [])
    if scheme is not None:
        given = [o.partition("=")[2].strip() for o in overrides if o.startswith("loss.scheme=")]
        conflicting = [g for g in given if g != scheme.value]
        if conflicting:
            raise ConfigError(
                f"--scheme {scheme.value} conflicts with loss.scheme={conflicting[0]}",
                "give the scheme once",
            )
        overrides.append(f"loss.scheme={scheme.value}")
    resolved = load_recipe(recipe, overrides)
    if dry_run:
        stdout.print(resolved.to_yaml(), end="", markup=False)
        return
    from xmtc_cli.training import fit

    name = resolved.name or recipe.stem
    run_dir = out or _default_run_dir(Path("runs") / name, resume)
    # The arguments `main` was given, not sys.argv, which belongs to whoever called `main`.
    argv = (ctx.obj or {}).get("argv")
    command = "xmtc " + shlex.join(argv) if argv else f"xmtc train {shlex.quote(str(recipe))}"
    display = TrainingDisplay()
    try:
        result = fit(resolved, run_dir, device=device.value, resume=resume, command=command,
                     callback=display)
    finally:
        display.close()
    if result.best_valid:
        stdout.print(metrics_table(result.best_valid,
                                   f"validation, best epoch {result.best_epoch}"))
    stdout.print(f"checkpoint: {result.best_checkpoint}")
    stderr.print(f"next: xmtc predict {result.best_checkpoint} DOCS.txt")


def _default_run_dir(base: Path, resume: bool) -> Path:
    """runs/NAME, or the first runs/NAME-k that holds no run (the latest one when resuming)."""
    from xmtc_cli.training import STATE_FILE

    candidates = [base] + [base.with_name(f"{base.name}-{k}") for k in range(2, 1000)]
    taken = [c for c in candidates if (c / STATE_FILE).exists()]
    if resume:
        return taken[-1] if taken else base
    return next(c for c in candidates if not (c / STATE_FILE).exists())
