"""Label files: one document per line, its labels separated by spaces (AttentionXML's format).

`xmtc eval --predictions FILE --gold FILE` reads both sides with `read_label_file`; an empty line
is a document with no labels, so line k is always document k. The JSON lines that
`xmtc predict --format jsonl` writes (`{"id": ..., "labels": [{"label": ..., "in_set": ...},
...]}`, its set being the labels marked in_set) read as well, and `{"labels": [...]}`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from xmtc_cli.errors import DataError, at
from xmtc_cli.textio import ENCODING_HINT, open_lines

log = logging.getLogger(__name__)

UTF8_HINT = ("convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 FILE`, or name its "
             "encoding with --encoding")


def read_label_file(path: str | Path, encoding: str = "utf-8") -> list[list[str]]:
    """Read a label file (or `-`, standard input) in `encoding` into one list of labels per line.

    Any run of whitespace separates labels, so stray spaces and Windows line ends are harmless.
    A file whose first line is a JSON object is read as JSON lines: one object a line, each
    with "labels". Raises DataError naming the file (and line) when it is missing, not text in
    `encoding` or a malformed JSON line; warns (logging) when labels hold commas, a likely
    wrong separator.
    """
    name = "<stdin>" if str(path) == "-" else str(path)
    hint = UTF8_HINT if encoding.replace("-", "").lower() == "utf8" else ENCODING_HINT
    with open_lines(path, encoding, what="label file", hint=hint) as lines:
        documents: list[list[str]] = []
        commas = CommaLabels(name)
        for number, line in enumerate(lines, start=1):
            if number == 1 and _is_json_object(line):
                return [_json_labels(line, name, 1), *_json_lines(lines, name)]
            labels = line.split()
            commas.check(number, labels)
            documents.append(labels)
    commas.report()
    return documents


def _is_json_object(line: str) -> bool:
    """Whether a first line makes the file JSON lines (then every line needs "labels")."""
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _json_lines(lines, name: str) -> list[list[str]]:
    return [_json_labels(line, name, number) for number, line in enumerate(lines, start=2)]


def _json_labels(line: str, name: str, number: int) -> list[str]:
    """The "labels" of one JSON line, or a DataError at its line."""
    try:
        row = json.loads(line)
    except ValueError:
        row = None
    labels = row.get("labels") if isinstance(row, dict) else None
    if isinstance(labels, list) and all(_is_suggestion(x) for x in labels):
        # `xmtc predict --format jsonl`: ranked objects; the set is those marked in_set.
        labels = [x["label"] for x in labels if x.get("in_set", True)]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise DataError(
            f"{at(name, number)}: expected a JSON object with \"labels\": [...] (the file's "
            f"first line is JSON), found {line.strip()[:40]!r}",
            "give one JSON object a line, as `xmtc predict --format jsonl` writes, or plain "
            "lines of space-separated labels",
        )
    return labels


def _is_suggestion(item: object) -> bool:
    return isinstance(item, dict) and isinstance(item.get("label"), str)


class CommaLabels:
    """Notes labels that hold a comma, to warn once per file: labels are separated by spaces,
    so `a,b c` is the two labels `a,b` and `c`, which is rarely what was meant."""

    def __init__(self, name: str):
        self.name = name
        self.first: tuple[int, str] | None = None
        self.lines = 0

    def check(self, lineno: int, labels: list[str]) -> None:
        comma = next((label for label in labels if "," in label), None)
        if comma is not None:
            self.lines += 1
            if self.first is None:
                self.first = (lineno, comma)

    def report(self) -> None:
        if self.first is None:
            return
        lineno, label = self.first
        others = self.lines - 1
        more = f" (and {others:,} more line{'s' if others > 1 else ''})" if others else ""
        log.warning(
            "%s: label %r holds a comma%s; labels are separated by spaces, so it counts as one "
            "label", at(self.name, lineno), label[:40], more,
        )
