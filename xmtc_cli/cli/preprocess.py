"""`xmtc preprocess`: turn a raw corpus into processed data, and print its statistics."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from xmtc_cli.cli.app import app
from xmtc_cli.data.catalog import DATA_ENV, DATASETS
from xmtc_cli.data.preprocess import (
    LabelEmbeddingStats,
    PreprocessOptions,
    PreprocessSummary,
    preprocess,
)
from xmtc_cli.errors import UsageError

_DEFAULTS = PreprocessOptions()


class LabelEmbeddings(str, Enum):
    """The `--label-embeddings` choices (`xmtc_cli.data.embeddings.label_table`)."""

    names = "names"
    centroid = "centroid"
    names_centroid = "names+centroid"


class CentroidWeighting(str, Enum):
    """The `--centroid-weighting` choices (`xmtc_cli.data.embeddings.label_centroids`)."""

    uniform = "uniform"
    tfidf = "tfidf"


class Tokenizer(str, Enum):
    """The `--tokenizer` choices (`xmtc_cli.data.tokenize`)."""

    whitespace = "whitespace"
    punct = "punct"


@app.command("preprocess")
def preprocess_command(
    source: Annotated[str, typer.Argument(
        metavar="NAME|DIR",
        help=f"A dataset name ({', '.join(DATASETS)}) or a folder with train_texts.txt, "
        "train_labels.txt, test_texts.txt, test_labels.txt (optionally valid_* and "
        "label_names.txt), or with train.jsonl and test.jsonl (or .csv/.tsv; valid.* "
        "optional).",
    )],
    raw: Annotated[Path | None, typer.Option(
        "--raw", help=f"Folder with the raw files of a named dataset "
        f"(default: ${DATA_ENV}/raw/NAME, else data/raw/NAME).",
    )] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help=f"Processed-data folder to write "
        f"(default: ${DATA_ENV}/NAME, else data/NAME).",
    )] = None,
    glove: Annotated[Path | None, typer.Option(
        "--glove", help="GloVe word vectors (.txt or .txt.gz) for word and label "
        "embeddings; without it label embeddings are random.",
    )] = None,
    label_embeddings: Annotated[LabelEmbeddings, typer.Option(
        "--label-embeddings", help="names: mean vector of the label name's words (the paper); "
        "centroid: normalised mean of the label's training documents (each the mean of its "
        "word vectors; for labels whose names mean nothing, e.g. amazon670k); names+centroid: "
        "normalised sum of both. Centroids need --glove.",
    )] = LabelEmbeddings.names,
    centroid_weighting: Annotated[CentroidWeighting, typer.Option(
        "--centroid-weighting", help="How a document's words make its centroid "
        "representation: uniform mean, or tfidf-weighted mean.",
    )] = CentroidWeighting.uniform,
    tokenizer: Annotated[Tokenizer, typer.Option(
        "--tokenizer", help="whitespace: split on spaces, as the paper's code; punct: also "
        "split off punctuation (for raw text).",
    )] = Tokenizer.whitespace,
    lowercase: Annotated[bool, typer.Option(
        "--lowercase/--keep-case", help="Lower-case text before tokenizing.",
    )] = _DEFAULTS.lowercase,
    max_vocab: Annotated[int, typer.Option(
        "--max-vocab", min=1, help="Most frequent training words kept.",
    )] = _DEFAULTS.max_vocab,
    valid_fraction: Annotated[float, typer.Option(
        "--valid-fraction", min=0.0, max=0.99,
        help="Share of training documents held out for validation (unless valid_* exist).",
    )] = _DEFAULTS.valid_fraction,
    seed: Annotated[int, typer.Option(
        "--seed", min=0, help="Seed of the validation split and random embeddings.",
    )] = _DEFAULTS.seed,
    encoding: Annotated[str, typer.Option(
        "--encoding", help="Encoding of text and label files, e.g. latin-1.",
    )] = _DEFAULTS.encoding,
    text_column: Annotated[str, typer.Option(
        "--text-column", help="CSV/TSV corpus: the column holding the text.")] = "text",
    labels_column: Annotated[str, typer.Option(
        "--labels-column", help="CSV/TSV corpus: the column holding the labels.")] = "labels",
    id_column: Annotated[str, typer.Option(
        "--id-column", help="CSV/TSV corpus: the column holding document ids (optional).",
    )] = "id",
    label_separator: Annotated[str, typer.Option(
        "--label-separator", help="CSV/TSV corpus: what joins the labels of a cell.")] = "|",
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the statistics as JSON.",
    )] = False,
) -> None:
    """Read a raw corpus, build vocabularies and embeddings, write a processed-data folder."""
    log = Console(stderr=True, highlight=False, markup=False)
    options = PreprocessOptions(
        raw=raw, out=out, glove=glove, tokenizer=tokenizer.value, lowercase=lowercase,
        max_vocab=max_vocab, valid_fraction=valid_fraction, seed=seed, encoding=encoding,
        label_embeddings=label_embeddings.value, centroid_weighting=centroid_weighting.value,
        columns=_columns(text_column, labels_column, id_column, label_separator),
    )
    path, summary = preprocess(source, options, progress=lambda message: log.print(message))
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        _render(Console(highlight=False, markup=False), summary)
    for warning in summary.warnings:
        log.print(f"warning: {warning}", soft_wrap=True)  # one line each, for grep
    if not as_json:
        log.print(f"wrote {path} in {summary.seconds:.1f} s; train with data.dir={path}")


def _columns(text: str, labels: str, id: str, separator: str):
    from xmtc_cli.data.corpus import Columns

    if not separator:
        raise UsageError("--label-separator cannot be empty", "give e.g. --label-separator '|'")
    if len({text, labels, id}) < 3:
        raise UsageError("--text-column, --labels-column and --id-column name the same column",
                         "give each its own column")
    return Columns(text=text, labels=labels, id=id, separator=separator)


def _render(console: Console, s: PreprocessSummary) -> None:
    """The paper's Table 1 statistics, one column per split, then vocabulary and vectors."""
    c = s.corpus
    table = Table(title=f"{s.dataset}: corpus statistics (as the paper's Table 1)")
    table.add_column("")
    for column in ("train file", *s.splits):
        table.add_column(column, justify="right")
    rows = {
        "documents": (f"{c.train_docs:,}", *(f"{x.docs:,}" for x in s.splits.values())),
        "words/doc": (f"{c.words_per_doc_train:.2f}",
                      *(f"{x.words_per_doc:.2f}" for x in s.splits.values())),
        "labels/doc": (f"{c.labels_per_doc:.2f}",
                       *(f"{x.labels_per_doc:.2f}" for x in s.splits.values())),
        "max labels": (f"{c.max_labels:,}", *(f"{x.max_labels:,}" for x in s.splits.values())),
        "empty documents": ("", *(f"{x.empty_docs:,}" for x in s.splits.values())),
        "empty label lines": ("", *(f"{x.empty_label_sets:,}" for x in s.splits.values())),
        "unseen labels (times)": ("", *(f"{x.unseen_labels:,} ({x.unseen_label_occurrences:,})"
                                        for x in s.splits.values())),
    }
    for name, cells in rows.items():
        table.add_row(name, *cells)
    console.print(table)
    console.print(f"validation: {s.valid_from}")
    console.print(f"vocabulary D: {c.vocabulary:,} training words "
                  f"({s.token_ids:,} token ids with <pad> and <unk>)")
    console.print(f"labels L: {c.labels:,} ({c.docs_per_label:.2f} docs/label); "
                  f"{s.gold_only_labels:,} more only in validation or test gold sets")
    if s.coverage is None:
        console.print("word vectors: none")
    else:
        v = s.coverage
        console.print(
            f"word vectors: {v.dim}-d, cover {v.token_share:.1%} of training tokens, "
            f"{v.word_share:.1%} of words, {v.label_share:.1%} of labels; "
            f"{v.malformed_lines:,} of {v.vector_lines:,} lines malformed (skipped)"
        )
    if s.label_embeddings is not None:
        console.print(_label_line(s.label_embeddings))
    if s.features is not None:
        console.print(f"side features: {s.features}-d, one row per document of every split "
                      "(the model attends to them as one more memory slot)")


def _label_line(e: LabelEmbeddingStats) -> str:
    """Where the label embeddings came from, in one line."""
    if e.dim is None:
        return (f"label embeddings ({e.kind}): none stored; these labels' names mean nothing, "
                "so training draws random ones (model.label_embedding_size)")
    parts = [f"{count:,} {source}" for count, source in (
        (e.from_centroids, "from document centroids"), (e.from_both, "from names + centroids"),
        (e.from_names, "from names"), (e.random, "random"),
    ) if count]
    return f"label embeddings ({e.kind}, {e.dim}-d): {', '.join(parts)}"
