"""`xmtc predict`: label raw documents with a checkpoint, streaming."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import IO, Annotated

import typer

from xmtc_cli.atomic import atomic_file
from xmtc_cli.cli.app import app
from xmtc_cli.cli.render import stderr
from xmtc_cli.cli.train import Device
from xmtc_cli.errors import DataError


class Format(str, Enum):
    text = "text"
    jsonl = "jsonl"


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(
        help="A model.safetensors written by `xmtc train`.")],
    docs: Annotated[str, typer.Argument(
        help="Text file, one document per line; - for stdin.")],
    out: Annotated[Path | None, typer.Option(
        help="Write here (atomically) instead of stdout.")] = None,
    format: Annotated[Format, typer.Option(
        "--format", help='text: labels separated by spaces; jsonl: {"labels": [...], '
        '"scores": [...]}.')] = Format.text,
    batch_size: Annotated[int, typer.Option(min=1, help="Documents per forward pass.")] = 64,
    device: Annotated[Device, typer.Option(help="Where to run the model.")] = Device.auto,
) -> None:
    """Predict a label set for every line of DOCS, in input order."""
    from xmtc_cli.inference import Predictor, chunks  # torch: only when the command runs

    predictor = Predictor.from_checkpoint(str(checkpoint), device.value)
    start, count = time.perf_counter(), 0
    with _lines(docs) as lines, _output(out) as sink:
        for chunk in chunks(lines, batch_size):
            for pred in predictor.predict_texts(chunk):
                names = [predictor.labels[k] for k in pred.labels]
                if format is Format.text:
                    sink.write(" ".join(names) + "\n")
                else:
                    scores = [round(s, 6) for s in pred.scores]
                    sink.write(json.dumps({"labels": names, "scores": scores}) + "\n")
            sink.flush()
            count += len(chunk)
            if stderr.is_terminal:
                stderr.print(f"\r{count:,} documents", end="")
    seconds = time.perf_counter() - start
    stderr.print(f"\rpredicted {count:,} documents in {seconds:.1f}s"
                 + (f" -> {out}" if out else ""))


@contextlib.contextmanager
def _lines(docs: str) -> Iterator[Iterator[str]]:
    """The documents of DOCS one by one, decoded strictly so a bad byte names its line."""
    if docs == "-":
        yield _decode(sys.stdin.buffer, "<stdin>")
        return
    path = Path(docs)
    if not path.is_file():
        raise DataError(f"documents file {path} does not exist",
                        "pass a text file with one document per line, or - for stdin")
    with open(path, "rb") as handle:
        yield _decode(handle, str(path))


def _decode(handle: IO[bytes], name: str) -> Iterator[str]:
    for number, raw in enumerate(handle, start=1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise DataError(f"{name}:{number}: not UTF-8 ({exc.reason} at byte {exc.start})",
                            "convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8") from exc


@contextlib.contextmanager
def _output(out: Path | None) -> Iterator[IO[str]]:
    if out is None:
        yield sys.stdout
    else:
        with atomic_file(out, "w", encoding="utf-8") as handle:
            yield handle
