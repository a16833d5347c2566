"""Read corpora in AttentionXML's text layout, with errors that name the file and the line.

One document per line: `{split}_texts.txt` holds the text, `{split}_labels.txt` the labels,
space-separated. Labels are either the labels themselves or line numbers (from 0) into a names
file (`Y.txt`, `Yf.txt`). An optional `label_names.txt` gives readable names as
`label<TAB>name`. Lines are read by `xmtc_cli.textio` (a line ends at `\\n` only, a byte-order
mark is dropped, any text encoding works, a bad byte names its line), and every file is
checksummed (sha256) while it is read, for the manifest.

Label files (`read_label_file`, what `xmtc eval --predictions FILE --gold FILE` reads on both
sides) are the labels files alone: one document per line, its labels separated by spaces; an
empty line is a document with no labels, so line k is always document k. The JSON lines that
`xmtc predict --format jsonl` writes (`{"labels": [...], "scores": [...]}`) read as well.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xmtc_cli.errors import DataError, at, short
from xmtc_cli.textio import (
    ENCODING_HINT,
    check_encoding,  # noqa: F401 (preprocess checks --encoding here)
    decode_lines,
    open_lines,
    open_source,
)

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
REQUIRED_SPLITS = ("train", "test")
LABEL_NAMES_FILE = "label_names.txt"


@dataclass(frozen=True)
class Layout:
    """The file names of one corpus layout."""

    texts: str = "{split}_texts.txt"
    """Text file of a split; `{split}` is train, valid or test."""
    labels: str = "{split}_labels.txt"
    """Label file of a split."""
    label_ids: str | None = None
    """Names file whose line numbers (from 0) the label files hold; None: labels are names."""
    label_ids_encoding: str | None = None
    """Encoding of the names file; None: the corpus encoding."""
    ampersand_is_space: bool = False
    """Read `&` in the names file as a space (AmazonCat-13K's `Yf.txt`)."""


@dataclass(frozen=True)
class CorpusFiles:
    """The files of one corpus, found on disk."""

    folder: Path
    texts: dict[str, Path]  # split -> file; "valid" only where the corpus ships one
    labels: dict[str, Path]
    label_ids: Path | None  # Y.txt / Yf.txt
    label_names: Path | None  # label_names.txt


def locate(folder: Path, layout: Layout, hint: str) -> CorpusFiles:
    """Find a corpus's files in `folder`, listing every missing one in a single error."""
    if not folder.is_dir():
        raise DataError(f"corpus folder {folder} does not exist", hint)
    texts, labels, missing = {}, {}, []
    for split in SPLIT_NAMES:
        pair = folder / layout.texts.format(split=split), folder / layout.labels.format(split=split)
        present = [_readable(p) for p in pair]
        if all(present) or split in REQUIRED_SPLITS:
            missing += [p.name for p, ok in zip(pair, present) if not ok]
            texts[split], labels[split] = pair
        elif any(present):  # a validation split needs both of its files
            missing += [p.name for p, ok in zip(pair, present) if not ok]
    label_ids = folder / layout.label_ids if layout.label_ids else None
    if label_ids is not None and not _readable(label_ids):
        missing.append(label_ids.name)
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}", hint)
    names = folder / LABEL_NAMES_FILE
    return CorpusFiles(folder, texts, labels, label_ids, names if _readable(names) else None)


def _readable(path: Path) -> bool:
    """A file to read lines from: anything but a folder, so a FIFO or a symlink to a pipe too."""
    return path.exists() and not path.is_dir()


class ChecksumReader(io.RawIOBase):
    """A binary file that feeds every byte read through sha256 on the way."""

    def __init__(self, raw: io.RawIOBase):
        self._raw = raw
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self.sha256.update(memoryview(buffer)[:n])
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_checksummed(path: Path) -> tuple[io.BufferedReader, ChecksumReader]:
    """Open `path` for binary reading; the second value's `sha256` covers what was read."""
    reader = ChecksumReader(open_source(path, buffering=0))
    return io.BufferedReader(reader, buffer_size=1 << 20), reader


def file_sha256(path: Path) -> str:
    """The sha256 of a whole file, read through the same checksummed stream as the corpus."""
    stream, reader = open_checksummed(path)
    with stream:
        while stream.read(1 << 20):
            pass
    return reader.sha256.hexdigest()


def iter_lines(path: Path, encoding: str, checksums: dict[str, str]) -> Iterator[str]:
    """Yield the lines of `path` without their line ends; once all are read, record its sha256
    in `checksums`."""
    stream, reader = open_checksummed(path)
    with stream:
        yield from decode_lines(stream, str(path), encoding)
    checksums[path.name] = reader.sha256.hexdigest()


def read_label_ids(path: Path, encoding: str, ampersand_is_space: bool,
                   checksums: dict[str, str]) -> list[str]:
    """The labels of a names file (`Y.txt`, `Yf.txt`), one per line, made whitespace-free.

    Inner whitespace becomes `_`, as the paper's code does for AmazonCat-13K, so that a label
    stays one token of a label line.
    """
    names = []
    for text in iter_lines(path, encoding, checksums):
        if ampersand_is_space:
            text = text.replace("&", " ")
        names.append("_".join(text.split()))
    return names


def read_labels(path: Path, encoding: str, checksums: dict[str, str],
                id_names: tuple[Path, list[str]] | None = None) -> list[list[str]]:
    """The label set of each line, duplicates dropped, first occurrences kept in order.

    With `id_names` = (names file, its labels), the lines hold line numbers into that file.
    Labels with a comma are kept as they are, with a warning (logging) naming the first line.
    """
    sets = []
    commas = CommaLabels(str(path))
    for lineno, text in enumerate(iter_lines(path, encoding, checksums), 1):
        labels = text.split()
        if id_names is not None:
            labels = [_label_by_id(token, id_names, path, lineno) for token in labels]
        else:
            commas.check(lineno, labels)
        sets.append(list(dict.fromkeys(labels)))
    commas.report()
    return sets


def _label_by_id(token: str, id_names: tuple[Path, list[str]], path: Path, lineno: int) -> str:
    names_file, names = id_names
    if token.isdecimal() and int(token) < len(names):
        return names[int(token)]
    raise DataError(
        f"{at(path, lineno)}: label {token!r} is not a line number of {names_file.name} "
        f"(0 to {len(names) - 1})",
        f"label lines of this corpus hold line numbers into {names_file}; check that the two "
        "files come from the same download",
    )


def read_label_names(path: Path, encoding: str, checksums: dict[str, str],
                      warnings: list[str]) -> dict[str, tuple[str, int]]:
    """label -> (readable name, line) from `label<TAB>name` lines; blank lines are skipped.

    A label named twice keeps its first name, with a warning. A line without a tab (a list of
    names alone, or spaces for the tab) is an error: nothing says which label it names.
    """
    names: dict[str, tuple[str, int]] = {}
    repeats: list[tuple[str, int]] = []
    for lineno, text in enumerate(iter_lines(path, encoding, checksums), 1):
        if not text.strip():
            continue
        label, tab, name = text.rstrip("\r\n").partition("\t")
        label = label.strip()
        if not tab or not label or len(label.split()) > 1:
            why = ("no tab" if not tab else "nothing before the tab" if not label
                   else "spaces in the label")
            raise DataError(
                f"{at(path, lineno)}: expected `label<TAB>readable name`, found "
                f"{short(text.strip(), 60)} ({why})",
                f"each line of {path.name} is one label as the label files write it, a tab, and "
                "its readable name, e.g. `money-fx<TAB>Money/Foreign Exchange`; "
                "labels without a line keep the label as their name",
            )
        if label in names:
            repeats.append((label, lineno))
            continue
        names[label] = (" ".join(name.split()) or label, lineno)
    if repeats:
        label, line = repeats[0]
        warnings.append(
            f"{path}: {_lines(len(repeats))} a label again; the first name counts "
            f"({short(label)} on line {line}, first on line {names[label][1]})"
        )
    return names


def _lines(count: int) -> str:
    return "1 line names" if count == 1 else f"{count:,} lines name"


# --- label files (`xmtc eval`) ------------------------------------------------------------------

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
