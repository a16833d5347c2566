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
from xmtc_cli.cli.options import (
    BatchSizeOption,
    Device,
    DeviceOption,
    EncodingOption,
    ThreadsOption,
)
from xmtc_cli.cli.render import stderr
from xmtc_cli.errors import UsageError, XmtcError
from xmtc_cli.fileerrors import STDOUT, file_error
from xmtc_cli.textio import open_lines


class Format(str, Enum):
    text = "text"
    jsonl = "jsonl"


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(
        help="A model.safetensors written by `xmtc train`.")],
    docs: Annotated[str, typer.Argument(
        help="Text file, one document per line; - for stdin (pipes and <(...) work too).")],
    out: Annotated[Path | None, typer.Option(
        help="Write here (atomically) instead of stdout.")] = None,
    format: Annotated[Format, typer.Option(
        "--format", help='text: labels separated by spaces; jsonl: {"labels": [...], '
        '"scores": [...]}.')] = Format.text,
    features: Annotated[Path | None, typer.Option(
        "--features", help="Side features of the documents (.npy, or .safetensors with one "
        "tensor 'features'), one row per line of DOCS: for a model trained with them.",
    )] = None,
    batch_size: BatchSizeOption = 64,
    device: DeviceOption = Device.auto,
    encoding: EncodingOption = "utf-8",
    threads: ThreadsOption = None,
) -> None:
    """Predict a label set for every line of DOCS, in input order."""
    from xmtc_cli.inference import Predictor, label_lines  # torch: only when the command runs
    from xmtc_cli.threads import apply_threads, choose_threads

    apply_threads(choose_threads(threads))

    if out is not None:
        inputs = {"DOCS": Path(docs), "CHECKPOINT": checkpoint}
        if features is not None:
            inputs["--features"] = features
        _refuse_overwriting_inputs(out, inputs)
    start, count = time.perf_counter(), 0
    last_line = start
    with open_lines(docs, encoding, what="documents file") as lines:
        predictor = Predictor.from_checkpoint(str(checkpoint), device.value)
        rows = predictor.open_features(features, checkpoint)
        with _output(out) as sink:
            for names, scores in label_lines(predictor, lines, batch_size, rows, features):
                sink.write(_render(names, scores, format))
                count += 1
                if count % batch_size == 0:  # a batch done: let a pipe's reader see it now
                    sink.flush()
                    now = time.perf_counter()
                    if stderr.is_terminal:
                        stderr.print(f"\r{count:,} documents", end="")
                    elif out is not None and now - last_line >= PROGRESS_EVERY:
                        last_line = now  # a log file: a plain line a minute
                        stderr.print(f"predicted {count:,} documents, "
                                     f"{count / (now - start):,.1f} docs/s")
    seconds = time.perf_counter() - start
    stderr.print(f"\rpredicted {count:,} document{'' if count == 1 else 's'} in {seconds:.1f}s"
                 + (f" -> {out}" if out else ""))


PROGRESS_EVERY = 60.0  # seconds between progress lines off a terminal


def _refuse_overwriting_inputs(out: Path, inputs: dict[str, Path]) -> None:
    """--out naming an input file would replace it (the checkpoint, even): refuse."""
    for name, path in inputs.items():
        try:
            same = out.exists() and path.exists() and out.samefile(path)
        except OSError:
            same = False
        if same:
            raise UsageError(f"--out {out} is the {name} file: writing it would replace it",
                             "write the predictions to another file")


def _render(names: list[str], scores: list[float], format: Format) -> str:
    if format is Format.text:
        return " ".join(names) + "\n"
    return json.dumps({"labels": names, "scores": [round(s, 6) for s in scores]}) + "\n"


@contextlib.contextmanager
def _output(out: Path | None) -> Iterator[IO[str]]:
    """The file --out (written atomically), or standard output, flushed before and after.

    A reader that stops early (`| head`) is not an error: BrokenPipeError goes on to the CLI
    boundary, which exits quietly. Any other failure to write stdout is one `error:` line.
    """
    if out is not None:
        with atomic_file(out, "w", encoding="utf-8") as handle:
            yield handle
        return
    try:
        sys.stdout.flush()  # a closed stdout fails here, before any document is read
        yield sys.stdout
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        if exc.filename is not None or isinstance(exc, XmtcError):
            raise
        raise file_error(exc, "write to", STDOUT) from None
