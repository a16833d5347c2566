"""`xmtc eval`: score predictions against gold label sets."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from xmtc_cli.cli.app import app
from xmtc_cli.cli.options import (
    BatchSizeOption,
    Device,
    DeviceOption,
    EncodingOption,
    ThreadsOption,
    cpu_watch,
    given,
)
from xmtc_cli.cli.render import metrics_table, stderr, stdout
from xmtc_cli.errors import UsageError


@app.command("eval")
def eval_command(
    ctx: typer.Context,
    checkpoint: Annotated[Path | None, typer.Argument(
        help="A model.safetensors to evaluate on --data.")] = None,
    data: Annotated[Path | None, typer.Option(
        help="Processed-data folder (with CHECKPOINT), or builtin:demo.")] = None,
    split: Annotated[str, typer.Option(
        help="Split of --data to evaluate: test or valid.")] = "test",
    predictions: Annotated[Path | None, typer.Option(
        help="Predicted labels, one document a line (or the jsonl of `xmtc predict`); "
        "- for stdin.")] = None,
    gold: Annotated[Path | None, typer.Option(help="Gold labels, one document a line.")] = None,
    train_labels: Annotated[Path | None, typer.Option(
        help="With --predictions/--gold: the training set's labels, one document a line, for "
             "PSP@k and PSnDCG@k (CHECKPOINT --data counts them in the data).")] = None,
    propensity_a: Annotated[float | None, typer.Option(min=0.0,
        help="A of the inverse propensities (Jain et al. 2016) of PSP@k and PSnDCG@k: "
             "0.55, or 0.6 when --data is amazoncat13k or amazon670k, unless given.")] = None,
    propensity_b: Annotated[float | None, typer.Option(min=0.0,
        help="B of the inverse propensities: 1.5, or 2.6 when --data is amazoncat13k or "
             "amazon670k, unless given.")] = None,
    per_label: Annotated[Path | None, typer.Option(
        "--per-label", help="Also write each label's support, precision, recall, F1 and "
        "training count to this TSV file.")] = None,
    k: Annotated[str, typer.Option(
        "--k", help="The k of P@k, nDCG@k, PSP@k and PSnDCG@k, comma-separated.")] = "1,3,5",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    batch_size: BatchSizeOption = 64,
    device: DeviceOption = Device.auto,
    encoding: EncodingOption = "utf-8",
    threads: ThreadsOption = None,
) -> None:
    """Micro/macro/weighted/example F1, P@k and nDCG@k, from files or a checkpoint."""
    for name, value in (("--propensity-a", propensity_a), ("--propensity-b", propensity_b)):
        if value is not None and not math.isfinite(value):
            raise UsageError(f"{name} {value} is not a finite number",
                             f"give {name} a number such as 0.55")
    from xmtc_cli.threads import apply_threads, choose_before_torch, follow_load

    choice = choose_before_torch(threads)
    from xmtc_cli.evaluation import evaluate_checkpoint, evaluate_files  # torch: only now

    apply_threads(choice)

    ranks = _ranks(k)
    rows: list | None = [] if per_label is not None else None
    if checkpoint is not None:
        if data is None or predictions or gold or train_labels or encoding != "utf-8":
            raise UsageError(
                "with CHECKPOINT give --data DIR (and no --predictions/--gold/--train-labels/"
                "--encoding: processed data has no text encoding)"
            )
        watch = cpu_watch(choice, device.value)
        metrics = evaluate_checkpoint(
            checkpoint, data, split, device.value, batch_size, propensity_a, propensity_b,
            ranks, rows, progress=lambda done, total: follow_load(watch, stderr.print))
        title = f"{checkpoint} on {data} ({split})"
    elif predictions is not None and gold is not None:
        ignored = given(ctx, "data", "split", "batch_size", "device")
        if ignored:
            raise UsageError(f"{', '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no "
                             "effect with --predictions/--gold: they apply to CHECKPOINT --data",
                             f"leave out {', '.join(ignored)}")
        if str(predictions) == str(gold) == "-":
            raise UsageError("only one of --predictions and --gold can be - (standard input)",
                             "give the other one as a file")
        if train_labels is None and (propensity_a is not None or propensity_b is not None):
            raise UsageError("--propensity-a/--propensity-b need --train-labels FILE")
        metrics = evaluate_files(predictions, gold, train_labels, propensity_a, propensity_b,
                                 encoding, ranks, rows)
        title = f"{predictions} against {gold}"
    else:
        raise UsageError(
            "give either CHECKPOINT --data DIR, or --predictions FILE --gold FILE"
        )
    if per_label is not None:
        from xmtc_cli import perlabel

        perlabel.write(per_label, rows)
    if json_output:
        print(json.dumps(metrics, sort_keys=True))
    else:
        stdout.print(metrics_table(metrics, title))


MAX_K = 1000


def _ranks(text: str) -> tuple[int, ...]:
    """--k as sorted distinct positive integers, or a UsageError."""
    try:
        ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        ranks = []
    if not ranks or ranks[0] < 1 or ranks[-1] > MAX_K:
        raise UsageError(f"--k {text[:30]!r} is not a list of integers from 1 to {MAX_K}",
                         "give e.g. --k 1,3,5,10")
    return tuple(ranks)
