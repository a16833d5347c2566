"""`xmtc eval`: score predictions against gold label sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from xmtc_cli.cli.app import app
from xmtc_cli.cli.render import metrics_table, stdout
from xmtc_cli.cli.train import Device
from xmtc_cli.errors import UsageError
from xmtc_cli.evaluation import evaluate_checkpoint, evaluate_files


@app.command("eval")
def eval_command(
    checkpoint: Optional[Path] = typer.Argument(None, help="A model.safetensors to evaluate on --data."),
    data: Optional[Path] = typer.Option(None, help="Processed-data folder (with CHECKPOINT)."),
    split: str = typer.Option("test", help="Split of --data to evaluate: test or valid."),
    predictions: Optional[Path] = typer.Option(None, help="Predicted labels, one document a line."),
    gold: Optional[Path] = typer.Option(None, help="Gold labels, one document a line."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
    batch_size: int = typer.Option(64, min=1, help="Documents per forward pass."),
    device: Device = typer.Option(Device.auto, help="Where to run the model."),
) -> None:
    """Micro/macro/weighted/example F1, P@k and nDCG@k, from files or a checkpoint."""
    if checkpoint is not None:
        if data is None or predictions or gold:
            raise UsageError("with CHECKPOINT give --data DIR (and no --predictions/--gold)")
        metrics = evaluate_checkpoint(checkpoint, data, split, device.value, batch_size)
        title = f"{checkpoint} on {data} ({split})"
    elif predictions is not None and gold is not None:
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
