"""`xmtc train`: fit a model from a recipe, in one process or many (torchrun)."""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from xmtc_cli.cli.app import app
from xmtc_cli.cli.options import Device, ThreadsOption, given, out_path
from xmtc_cli.cli.render import TrainingDisplay, metrics_table, stderr, stdout
from xmtc_cli.config import METHODS, load_recipe, method_overrides, scheme_override, without_effect
from xmtc_cli.errors import UsageError, XmtcError
from xmtc_cli.launch import Launch

# The core (torch) is imported inside the command, so that `xmtc --help` and `xmtc preprocess`
# start fast.


class Scheme(str, Enum):
    all = "all"
    first_n = "first-n"


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
    out: Annotated[str | None, typer.Option(
        help="Run folder. Default: runs/NAME, or runs/NAME-2, -3... if that holds a run.",
    )] = None,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")] = False,
    init: Annotated[Path | None, typer.Option(
        "--init", help="Start from this checkpoint's weights (fine-tuning on new documents "
        "with the same label space; words and labels are matched by name).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved recipe and exit.")] = False,
    nproc: Annotated[int, typer.Option(
        min=1, help="Train on this many processes of this machine (one per GPU, or CPU "
        "processes), started by torchrun; for many machines run torchrun yourself.",
    )] = 1,
    max_restarts: Annotated[int, typer.Option(
        min=0, help="Start the processes again this many times after a failure; the run "
        "resumes from its last save (torchrun's --max-restarts).",
    )] = 0,
    threads: ThreadsOption = None,
) -> None:
    """Train a model; the best checkpoint by validation micro-F1 is RUN/model.safetensors.

    Under `torchrun --nproc-per-node K -m xmtc_cli train ...` the K processes train together
    on the same global batches; rank 0 writes the run folder and shows progress.
    """
    out = out_path(out)  # a str until checked: "" would become Path(".")
    user_overrides = list(overrides or [])
    overrides = (method_overrides(method) if method else []) + user_overrides
    if scheme is not None:
        overrides = scheme_override(scheme.value, overrides)
    resolved = load_recipe(recipe, overrides)
    for problem in _ignored(ctx, resolved, user_overrides, dry_run):
        typer.echo(f"warning: {problem}", err=True)
    if dry_run:
        stdout.print(resolved.to_yaml(), end="", markup=False)
        return
    if init is not None and resume:
        raise UsageError("--init starts a new run and --resume continues one: give one of them")
    # The arguments `main` was given, not sys.argv, which belongs to whoever called `main`.
    argv = (ctx.obj or {}).get("argv")
    launch = Launch.from_environ()  # this process's place, decided once and handed on
    if nproc > 1 or max_restarts > 0:
        _launch(nproc, max_restarts, argv or ["train", str(recipe)], launch)
        return
    # The thread count and OpenMP's waits before torch loads (libgomp reads the waits once).
    from xmtc_cli.threads import choose_before_torch

    choice = choose_before_torch(threads, resolved.train.threads, launch.local_world_size)
    # torch only now: --help, --dry-run and recipe errors answer without importing it.
    from xmtc_cli import distributed
    from xmtc_cli.run import default_run_dir, run_name
    from xmtc_cli.training import fit

    ours = launch.launch_id if launch.restarts > 0 else None  # a restart continues its folder
    run_dir = out or default_run_dir(Path("runs") / run_name(resolved, recipe), resume, ours)
    command = "xmtc " + shlex.join(argv) if argv else f"xmtc train {shlex.quote(str(recipe))}"
    if launch.world_size > 1:
        command += f"  # on {launch.world_size} processes (torchrun)"
    display = TrainingDisplay() if launch.is_main else None
    try:
        result = fit(resolved, run_dir, device=device.value, resume=resume, command=command,
                     callback=display, launch=launch, init=init, threads=choice)
    except distributed.ReplicatedError:
        raise typer.Exit(1) from None  # rank 0 reports it
    finally:
        if display is not None:
            display.close()
    if not launch.is_main:
        return
    patience = resolved.train.early_stop
    if patience and result.epochs and result.epochs[-1].epoch < resolved.train.epochs \
            and not result.epochs[-1].partial:
        stderr.print(f"stopped early after epoch {result.epochs[-1].epoch}: {patience} epochs "
                     f"without a better validation micro-F1 than epoch {result.best_epoch}'s")
    if result.best_valid:
        stdout.print(metrics_table(result.best_valid,
                                   f"validation, best epoch {result.best_epoch}"))
    stdout.print(f"checkpoint: {result.best_checkpoint}")
    _report_threshold(result.best_checkpoint)
    stderr.print(f"next: xmtc predict {result.best_checkpoint} DOCS.txt")


def _report_threshold(checkpoint: Path) -> None:
    from xmtc_cli.checkpoint import read_meta

    tuned = read_meta(checkpoint).extra.get("threshold") if checkpoint.exists() else None
    if tuned:
        stderr.print(f"tuned threshold {tuned['threshold']:.3g}: validation micro-F1 "
                     f"{100 * tuned['valid_micro_f1']:.2f} against the generated set's "
                     f"{100 * tuned['set_micro_f1']:.2f}"
                     + (f" on {tuned['valid_docs']} documents" if "valid_docs" in tuned else "")
                     + " (xmtc predict --threshold tuned)")


def _launch(nproc: int, max_restarts: int, argv: list[str], launch: Launch) -> None:
    """`xmtc train ... --nproc K [--max-restarts N]`: the same command on K processes, started
    (and restarted) by torchrun's own launcher (torch.distributed.run) on this machine."""
    if launch.by_torchrun:
        raise UsageError("--nproc or --max-restarts was given to a process that torchrun "
                         "already started",
                         "drop them: torchrun's own --nproc-per-node and --max-restarts apply")
    # torch only now, as in `train`: the launcher is needed on this path alone.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    args = _without_launch_options(argv)
    try:
        torchrun(["--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
                  "-m", "xmtc_cli", *args])
    except ChildFailedError as exc:
        codes = sorted({f.exitcode for f in exc.failures.values()})
        raise XmtcError(
            f"training on {nproc} processes failed (exit code {', '.join(map(str, codes))})",
            "the processes' own error is printed above",
        ) from None


def _ignored(ctx: typer.Context, recipe, overrides: list[str], dry_run: bool) -> list[str]:
    """What the command line asks for that has no effect, each as a sentence for a warning."""
    out = []
    keys = [o.split("=", 1)[0].strip() for o in overrides if "=" in o]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        out.append(f"{key} is overridden {keys.count(key)} times: only the last one applies")
    if dry_run:
        options = given(ctx, "out", "resume", "nproc", "max_restarts", "device")
        if options:
            out.append(f"{', '.join(options)} {'has' if len(options) == 1 else 'have'} no effect "
                       "with --dry-run, which only prints the recipe")
    out += without_effect(recipe)
    world = Launch.from_environ().world_size
    if recipe.train.ddp_bf16_grads and world == 1 and ctx.params.get("nproc", 1) <= 1:
        out.append("train.ddp_bf16_grads has no effect on one process (it rounds the gradients "
                   "that processes exchange)")
    return out


LAUNCH_OPTIONS = ("--nproc", "--max-restarts")


def _without_launch_options(argv: list[str]) -> list[str]:
    """The command each process runs: `argv` without the options that only the launcher reads."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in LAUNCH_OPTIONS)):
            out.append(arg)
    return out
