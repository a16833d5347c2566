"""Corpora as documents: `{split}.jsonl`, `{split}.csv` or `{split}.tsv` in one folder.

    train.jsonl, test.jsonl (valid.jsonl optional): {"id": "...", "text": "...",
                                                     "labels": ["...", ...]} a line
    train.csv / train.tsv, ...: a header row naming the columns, then one document a row;
                                the labels cell holds the labels joined by a separator

A label is any non-empty string without a tab or line break (spaces, commas, any Unicode): it
is never split. `xmtc preprocess DIR` reads these when DIR holds `train.jsonl` (or .csv/.tsv)
and no `train_texts.txt`; `label_names.txt` may still give names. CSV follows RFC 4180 (quoted
fields may hold commas and line breaks); TSV has no quoting.

`InseparableLabels` looks at labels of the line layout (`train_labels.txt`, space-separated)
for names split at spaces: two labels that always occur together, one right after the other,
are most likely one name, and a warning says how to keep it whole.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xmtc_cli.data.formats import JSONL_HINT, Document, parse_document
from xmtc_cli.data.readers import LABEL_NAMES_FILE, CorpusFiles, iter_lines
from xmtc_cli.errors import DataError, at, short

FORMATS = ("jsonl", "csv", "tsv")


@dataclass(frozen=True)
class Columns:
    """Where a CSV/TSV corpus keeps each field (header names) and how labels are joined."""

    text: str = "text"
    labels: str = "labels"
    id: str | None = "id"  # optional column; absent: the row number
    separator: str = "|"


def locate_documents(folder: Path) -> tuple[CorpusFiles, str] | None:
    """The corpus files and format of a folder of `{split}.jsonl|csv|tsv` files, or None when
    it has none (then it is the line layout). Each split's one file stands for both its texts
    and its labels."""
    if not folder.is_dir() or (folder / "train_texts.txt").exists():
        return None
    for fmt in FORMATS:
        train = folder / f"train.{fmt}"
        if not train.exists():
            continue
        files = {split: folder / f"{split}.{fmt}" for split in ("train", "valid", "test")}
        if not files["test"].exists():
            raise DataError(f"{folder} has {train.name} but no test.{fmt}",
                            f"give the test documents as test.{fmt} beside {train.name}")
        if not files["valid"].exists():
            del files["valid"]
        names = folder / LABEL_NAMES_FILE
        return CorpusFiles(folder, dict(files), dict(files), None,
                           names if names.exists() else None), fmt
    return None


def read_corpus_documents(path: Path, fmt: str, encoding: str, checksums: dict[str, str],
                          columns: Columns = Columns()) -> Iterator[Document]:
    """The documents of one split's file, lazily, each label checked (`check_label`)."""
    if fmt == "jsonl":
        docs = _jsonl(path, encoding, checksums)
    else:
        docs = _table(path, encoding, checksums, columns, "," if fmt == "csv" else "\t")
    for number, doc in docs:
        for label in doc.labels:
            check_label(label, path, number)
        yield doc


def check_label(label: str, path: Path, number: int) -> None:
    if not label.strip():
        raise DataError(f"{at(path, number)}: an empty label", "remove it, or name the label")
    if any(c in label for c in "\t\n\r"):
        raise DataError(f"{at(path, number)}: label {short(label)} holds a tab or a line break",
                        "labels may hold any character but tabs and line breaks")


def _jsonl(path: Path, encoding: str, checksums: dict[str, str]
           ) -> Iterator[tuple[int, Document]]:
    for number, line in enumerate(iter_lines(path, encoding, checksums), start=1):
        if not line.strip():
            raise DataError(f"{at(path, number)}: an empty line in a JSON-lines corpus",
                            'remove it, or write {"text": "", "labels": []} for an empty '
                            "document")
        yield number, parse_document(line, str(path), number, need_labels=True)


def _table(path: Path, encoding: str, checksums: dict[str, str], columns: Columns,
           delimiter: str) -> Iterator[tuple[int, Document]]:
    lines = (line + "\n" for line in iter_lines(path, encoding, checksums))
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=True)
    kind = "CSV" if delimiter == "," else "TSV"
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty", f"start it with a header row naming the "
                            f"columns {columns.text!r} and {columns.labels!r}")
        where = {name: i for i, name in enumerate(header)}
        for wanted, option in ((columns.text, "--text-column"),
                               (columns.labels, "--labels-column")):
            if wanted not in where:
                raise DataError(f"{at(path, 1)}: no column {wanted!r} in the header (it has "
                                f"{', '.join(repr(h[:30]) for h in header[:6])})",
                                f"name the column with {option}")
        id_at = where.get(columns.id) if columns.id else None
        text_at, labels_at = where[columns.text], where[columns.labels]
        for row in reader:
            number = reader.line_num
            if len(row) != len(header):
                raise DataError(f"{at(path, number)}: {len(row)} fields, the header has "
                                f"{len(header)}", f"write every row of the {kind} with the "
                                "header's columns" + (" (quote fields holding commas)"
                                                      if kind == "CSV" else ""))
            cell = row[labels_at]
            labels = [x.strip() for x in cell.split(columns.separator)] if cell.strip() else []
            doc_id = row[id_at] if id_at is not None else number - 1
            yield number, Document(doc_id, row[text_at], list(dict.fromkeys(labels)))
    except csv.Error as exc:
        raise DataError(f"{at(path, reader.line_num)}: not valid {kind}: {exc}",
                        JSONL_HINT if kind == "CSV" else "TSV fields may not hold tabs or "
                        "line breaks; write the corpus as JSON lines") from None


class InseparableLabels:
    """Finds pairs of space-separated labels that look like one name split at its spaces:
    `first` occurs in at least MIN_LINES label lines and is always directly followed by
    `second` (the first word of a name split at a space always is followed by its second; a
    label of its own is rarely followed by the same label every time)."""

    MIN_LINES = 3

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.next: dict[str, str | None] = {}

    def add(self, labels: list[str]) -> None:
        for i, label in enumerate(labels):
            self.count[label] += 1
            after = labels[i + 1] if i + 1 < len(labels) else None
            if self.next.get(label, after) != after:
                after = None
            self.next[label] = after

    def pairs(self) -> list[tuple[str, str]]:
        return [(first, second) for first, second in self.next.items()
                if second is not None and self.count[first] >= self.MIN_LINES]

    def warning(self, path: Path) -> str | None:
        pairs = self.pairs()
        if not pairs:
            return None
        first, second = pairs[0]
        more = f" (and {len(pairs) - 1:,} more such pairs)" if len(pairs) > 1 else ""
        return (f"{path}: labels {short(first)} and {short(second)} always occur together, "
                f"one right after the other ({self.count[first]:,} lines){more}: if they are "
                "one name split at a space, labels are separated by spaces here, so write the "
                'corpus as train.jsonl/test.jsonl with "labels": [...] (README: your own '
                "corpus)")
