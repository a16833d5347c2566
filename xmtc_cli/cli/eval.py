"""`xmtc eval`: score predictions against gold label sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from xmtc_cli.cli.app import app
from xmtc_cli.cli.options import BatchSizeOption, Device, DeviceOption
from xmtc_cli.cli.render import metrics_table, stdout
from xmtc_cli.errors import UsageError


@app.command("eval")
def eval_command(
    checkpoint: Annotated[Path | None, typer.Argument(
        help="A model.safetensors to evaluate on --data.")] = None,
    data: Annotated[Path | None, typer.Option(
        help="Processed-data folder (with CHECKPOINT).")] = None,
    split: Annotated[str, typer.Option(
        help="Split of --data to evaluate: test or valid.")] = "test",
    predictions: Annotated[Path | None, typer.Option(
        help="Predicted labels, one document a line (or the jsonl of `xmtc predict`); "
        "- for stdin.")] = None,
    gold: Annotated[Path | None, typer.Option(help="Gold labels, one document a line.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    batch_size: BatchSizeOption = 64,
    device: DeviceOption = Device.auto,
) -> None:
    """Micro/macro/weighted/example F1, P@k and nDCG@k, from files or a checkpoint."""
    from xmtc_cli.evaluation import evaluate_checkpoint, evaluate_files  # torch: only now

    if checkpoint is not None:
        if data is None or predictions or gold:
            raise UsageError("with CHECKPOINT give --data DIR (and no --predictions/--gold)")
        metrics = evaluate_checkpoint(checkpoint, data, split, device.value, batch_size)
        title = f"{checkpoint} on {data} ({split})"
    elif predictions is not None and gold is not None:
        if str(predictions) == str(gold) == "-":
            raise UsageError("only one of --predictions and --gold can be - (standard input)",
                             "give the other one as a file")
        metrics = evaluate_files(predictions, gold)
        title = f"{predictions} against {gold}"
    else:
        raise UsageError(
            "give either CHECKPOINT --data DIR, or --predictions FILE --gold FILE"
        )
    if json_output:
        print(json.dumps(metrics, sort_keys=True))
    else:
        stdout.print(metrics_table(metrics, title))
