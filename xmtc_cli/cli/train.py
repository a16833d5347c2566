"""`xmtc train`: fit a model from a recipe."""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from xmtc_cli.cli.app import app
from xmtc_cli.cli.render import TrainingDisplay, metrics_table, stderr, stdout
from xmtc_cli.config import METHODS, load_recipe, method_overrides, run_name, scheme_override

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
        overrides = scheme_override(scheme.value, overrides)
    resolved = load_recipe(recipe, overrides)
    if dry_run:
        stdout.print(resolved.to_yaml(), end="", markup=False)
        return
    from xmtc_cli.run import default_run_dir
    from xmtc_cli.training import fit

    run_dir = out or default_run_dir(Path("runs") / run_name(resolved, recipe), resume)
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
