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
    CheckpointArgument,
    Device,
    DeviceOption,
    EncodingOption,
    ThreadsOption,
    cpu_watch,
    out_path,
    resolve_threshold,
    threshold_value,
)
from xmtc_cli.cli.render import stderr
from xmtc_cli.errors import UsageError, XmtcError
from xmtc_cli.fileerrors import STDOUT, file_error
from xmtc_cli.textio import open_lines


class Format(str, Enum):
    text = "text"
    jsonl = "jsonl"
    tsv = "tsv"


class Input(str, Enum):
    auto = "auto"
    text = "text"
    jsonl = "jsonl"


class Order(str, Enum):
    score = "score"
    generation = "generation"


TSV_HEADER = "id\trank\tlabel\tname\tscore\tin_set\n"


@app.command()
def predict(
    checkpoint: CheckpointArgument,
    docs: Annotated[str, typer.Argument(
        help="Documents: a text file, one document a line, or a .jsonl file of "
        '{"id": ..., "text": ...} lines; - for stdin (pipes and <(...) work too).')],
    out: Annotated[str | None, typer.Option(
        help="Write here (atomically) instead of stdout.")] = None,
    format: Annotated[Format, typer.Option(
        "--format", help="text: one line of labels per document; jsonl: "
        '{"id": ..., "labels": [{"label", "name", "score", "in_set"}, ...]}; tsv: one row per '
        "label, under a header.")] = Format.text,
    input_format: Annotated[Input, typer.Option(
        "--input", help="How DOCS is written: auto (jsonl for a .jsonl file, else text), "
        "text or jsonl.")] = Input.auto,
    top_k: Annotated[int, typer.Option(
        "--top-k", min=0, help="Also suggest the K best-scoring labels outside the set, "
        "ranked (a label's score: its highest probability over the decoder's steps).")] = 0,
    min_score: Annotated[float, typer.Option(
        "--min-score", min=0.0, max=1.0, help="Leave out labels scoring less, set or not.")] = 0.0,
    threshold: Annotated[str | None, typer.Option(
        "--threshold", help="The set: labels scoring at least this (a number in (0, 1]), or "
        "`tuned`: the threshold the checkpoint tuned on validation. Default: the generated set.",
    )] = None,
    order: Annotated[Order, typer.Option(
        "--order", help="score: best first; generation: the set in the order the decoder "
        "produced it (the ranking the paper's P@k reads), then the other suggestions by score.",
    )] = Order.score,
    label_ids: Annotated[bool, typer.Option(
        "--label-ids", help="text format: print label identifiers instead of names.")] = False,
    features: Annotated[Path | None, typer.Option(
        "--features", help="Side features of the documents (.npy, or .safetensors with one "
        "tensor 'features'), one row per line of DOCS: for a model trained with them.",
    )] = None,
    batch_size: BatchSizeOption = 64,
    device: DeviceOption = Device.auto,
    encoding: EncodingOption = "utf-8",
    threads: ThreadsOption = None,
) -> None:
    """Predict a label set for every document of DOCS, in input order, with ranked
    suggestions, names and scores."""
    out = out_path(out)  # a str until checked: "" would become Path(".")
    from xmtc_cli.threads import apply_threads, choose_before_torch, follow_load

    choice = choose_before_torch(threads)
    from xmtc_cli.data.formats import plain_documents, read_documents
    from xmtc_cli.inference import Predictor, label_lines  # torch: only when the command runs
    from xmtc_cli.suggest import rank_needed, suggest

    apply_threads(choice)
    watch = cpu_watch(choice, device.value)

    if out is not None:
        inputs = {"DOCS": Path(docs), "CHECKPOINT": checkpoint}
        if features is not None:
            inputs["--features"] = features
        _refuse_overwriting_inputs(out, inputs)
    explicit = threshold_value(threshold)
    jsonl = input_format is Input.jsonl or (
        input_format is Input.auto and docs != "-" and docs.lower().endswith(".jsonl"))
    start, count = time.perf_counter(), 0
    last_line = start
    with open_lines(docs, encoding, what="documents file") as lines:
        predictor = Predictor.from_checkpoint(str(checkpoint), device.value)
        cut = resolve_threshold(predictor, explicit, threshold, checkpoint)
        rows = predictor.open_features(features, checkpoint)
        names = predictor.names
        shown = predictor.labels if label_ids else names
        separator = "\t" if any(any(c.isspace() for c in x) for x in shown) else " "
        documents = read_documents(lines, docs) if jsonl else plain_documents(lines)
        pending: list = []  # the ids of documents read, waiting for their predictions

        def texts():
            for doc in documents:
                pending.append(doc.id)
                yield doc.text

        rank = rank_needed(top_k, cut, predictor.steps)
        with _output(out) as sink:
            if format is Format.tsv:
                sink.write(TSV_HEADER)
            for pred in label_lines(predictor, texts(), batch_size, rows, features, rank):
                found = suggest(pred, predictor.labels, names, top_k, min_score, cut,
                                order is Order.generation)
                sink.write(_render(pending.pop(0), found, format, label_ids, separator))
                count += 1
                if count % batch_size == 0:  # a batch done: let a pipe's reader see it now
                    sink.flush()
                    follow_load(watch, stderr.print)
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


def _clean(value) -> str:
    """A TSV field: tabs and line breaks become spaces."""
    return " ".join(str(value).split("\t")).replace("\n", " ").replace("\r", " ")
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


def _render(doc_id, found, format: Format, label_ids: bool, separator: str) -> str:
    if format is Format.text:
        return separator.join(s.label if label_ids else s.name for s in found) + "\n"
    if format is Format.jsonl:
        return json.dumps({"id": doc_id, "labels": [s.to_dict() for s in found]},
                          ensure_ascii=False) + "\n"
    return "".join(f"{_clean(doc_id)}\t{rank}\t{_clean(s.label)}\t{_clean(s.name)}\t"
                   f"{s.score:.6f}\t{str(s.in_set).lower()}\n"
                   for rank, s in enumerate(found, start=1))


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
