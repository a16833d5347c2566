"""Documents as JSON lines: `{"id": ..., "text": ..., "labels": [...]}`, one object a line.

`xmtc predict` reads documents to label this way (ids carried to the output), and `xmtc
preprocess` reads corpora in it (`corpus.py`). A label is any non-empty string: spaces, commas,
any Unicode. An id is a string or an integer; a document without one is known by its line
number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from xmtc_cli.errors import DataError, at, short

JSONL_HINT = ('write one JSON object a line: {"id": "d1", "text": "...", "labels": ["...", '
              '...]} ("labels" only in a corpus)')


@dataclass(frozen=True)
class Document:
    id: str | int  # the document's id, or its line number (1-based) where it has none
    text: str
    labels: list[str] = field(default_factory=list)


def parse_document(line: str, name: str, number: int, need_labels: bool = False) -> Document:
    """One JSON line as a `Document`, or a DataError naming the file, line and fix."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise DataError(f"{at(name, number)}: not a JSON object ({exc.msg}): {short(line)}",
                        JSONL_HINT) from None
    if not isinstance(row, dict):
        raise DataError(f"{at(name, number)}: not a JSON object: {short(line)}", JSONL_HINT)
    text = row.get("text")
    if not isinstance(text, str):
        found = "no \"text\"" if text is None else f"\"text\" of type {type(text).__name__}"
        raise DataError(f"{at(name, number)}: {found}; a document needs \"text\": a string",
                        JSONL_HINT)
    doc_id = row.get("id", number)
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise DataError(f"{at(name, number)}: \"id\" must be a string or an integer, found "
                        f"{type(doc_id).__name__}", JSONL_HINT)
    labels = row.get("labels", [])
    if need_labels and "labels" not in row:
        raise DataError(f"{at(name, number)}: no \"labels\"; a corpus document needs "
                        "\"labels\": a list of strings (empty for none)", JSONL_HINT)
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise DataError(f"{at(name, number)}: \"labels\" must be a list of non-empty strings",
                        JSONL_HINT)
    return Document(doc_id, text, list(dict.fromkeys(labels)))


def read_documents(lines: Iterable[str], name: str, need_labels: bool = False
                   ) -> Iterator[Document]:
    """The documents of JSON lines, lazily; blank lines are refused (a document is a line)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(f"{at(name, number)}: an empty line in a JSON-lines file",
                            'remove it, or write {"text": ""} for an empty document')
        yield parse_document(line, name, number, need_labels)


def plain_documents(lines: Iterable[str]) -> Iterator[Document]:
    """Plain text, one document a line, known by its line number."""
    for number, line in enumerate(lines, start=1):
        yield Document(number, line)
