"""Word vectors: stream a GloVe file for the words needed (the tables built from them:
`xmtc_cli.data.embeddings`).

Format: one `word v1 ... vD` per line, space-separated, `.txt` or gzip-compressed (recognised by
its magic bytes, whatever its name); a leading word2vec header `COUNT DIM` is skipped. The file
is never loaded whole (GloVe 840B is 5.6 GB in 2.2 M lines): each line's first field is split
off and looked up as bytes, and only the lines of wanted words are decoded and parsed. Lines
with a word containing spaces or with non-numeric values (840B has a few) are skipped and
counted. Errors, each naming the line: a line of a different number of values (the file mixes
dimensions, or disagrees with its header); a nan or inf value (in any line; a value beyond
float32's range only in a wanted line, the only ones parsed). A file with no vector line at all
(empty, header only, or a binary word2vec .bin file) is refused rather than read as 0% coverage.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmtc_cli.data.readers import open_checksummed
from xmtc_cli.errors import DataError, at

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class WordVectors:
    """The vectors a word-vector file holds for the words that were asked for."""

    path: Path
    dim: int
    vectors: dict[str, np.ndarray]  # word -> float32 [dim]
    lines: int  # vector lines read (a header excluded)
    malformed: int  # lines skipped: a word with spaces, a missing or non-numeric value
    sha256: str  # of the file as stored (compressed or not)

    def get(self, word: str) -> np.ndarray | None:
        """The vector of `word`, else of its lower-case form (lower-cased vectors: GloVe 6B)."""
        vector = self.vectors.get(word)
        return vector if vector is not None else self.vectors.get(word.lower())


def read_word_vectors(path: str | Path, words: Iterable[str]) -> WordVectors:
    """Read the vectors of `words` (and of their lower-case forms) from a GloVe file."""
    path = Path(path)
    # Anything that reads as a stream will do: a file, or a pipe (`--glove <(zcat FILE)`).
    if not path.exists() or path.is_dir():
        raise DataError(
            f"word-vector file {path} " + ("is a folder" if path.is_dir() else "does not exist"),
            "pass a GloVe .txt or .txt.gz file (e.g. glove.840B.300d.txt), or leave out --glove",
        )
    wanted: dict[bytes, str] = {}
    for word in words:
        for form in (word, word.lower()):
            wanted.setdefault(form.encode("utf-8"), form)
    stream, checksum = open_checksummed(path)
    with stream:
        dim, vectors, lines, malformed = _scan(path, _lines(path, stream), wanted)
    return WordVectors(path, dim, vectors, lines, malformed, checksum.sha256.hexdigest())


def _lines(path: Path, stream: io.BufferedReader) -> Iterator[bytes]:
    """The file's lines, decompressed if it is gzip, with damage reported as a DataError."""
    source = gzip.GzipFile(fileobj=stream) if stream.peek(2)[:2] == _GZIP_MAGIC else stream
    try:
        yield from source
    except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip
        raise DataError(
            f"{path} is damaged: {exc}", "download the file again (`gzip -t FILE` checks a .gz)"
        ) from None


def _scan(path: Path, lines: Iterator[bytes],
          wanted: dict[bytes, str]) -> tuple[int, dict[str, np.ndarray], int, int]:
    """(dimension, wanted vectors, vector lines, malformed lines) of the file's lines."""
    dim = 0
    header = False
    vectors: dict[str, np.ndarray] = {}
    count = malformed = 0
    for lineno, line in enumerate(lines, 1):
        if lineno <= _SNIFF_LINES and b"\0" in line:
            raise _binary(path)
        line = line.rstrip()
        if not dim:
            dim = _dimension(path, line)
            if _is_header(line):
                header = True
                continue
        count += 1
        word, _, rest = line.partition(b" ")
        # Fast path: a well-formed line has exactly dim - 1 spaces after the word.
        if rest.count(b" ") != dim - 1 and not _has_values(path, lineno, rest, dim, header):
            malformed += 1
            continue
        # Every number format has no `n`; nan, inf and infinity have one (in any case).
        if b"n" in rest or b"N" in rest:
            _check_finite(path, lineno, rest)
        form = wanted.get(word)
        if form is None or form in vectors:  # unwanted, or a duplicate: the first one wins
            continue
        try:
            with np.errstate(over="ignore"):  # a value too large for float32 becomes inf
                vector = np.array(rest.split(), dtype=np.float32)
        except ValueError:
            malformed += 1
            continue
        if not np.isfinite(vector).all():
            raise _not_finite(path, lineno)
        vectors[form] = vector
    _check_vectors_found(path, dim, count, malformed)
    return dim, vectors, count, malformed


_SNIFF_LINES = 100  # lines checked for NUL bytes, the mark of a binary file


def _binary(path: Path) -> DataError:
    return DataError(
        f"{path} is a binary file, not GloVe text (a word2vec .bin file?)",
        "pass vectors as text, one `word v1 ... vD` a line; gensim converts a .bin file: "
        "KeyedVectors.load_word2vec_format(BIN, binary=True).save_word2vec_format(TXT)",
    )


def _check_vectors_found(path: Path, dim: int, count: int, malformed: int) -> None:
    """Refuse a file with no usable vector line (which would give 0% coverage silently)."""
    fix = "pass a GloVe file with one `word v1 ... vD` a line"
    if not dim:
        raise DataError(f"{path} is empty", fix)
    if not count:
        raise DataError(f"{path} holds a header line but no vectors", fix)
    if malformed == count:
        raise DataError(
            f"none of the {count:,} lines of {path} is `word v1 ... v{dim}`",
            f"{fix}, separated by single spaces (a binary .bin file must be converted to text)",
        )


def _check_finite(path: Path, lineno: int, rest: bytes) -> None:
    """Refuse a line of numbers that holds nan or inf (a word with such a vector poisons
    training); a line with other non-numeric values is merely malformed."""
    try:
        with np.errstate(over="ignore"):
            values = np.array(rest.split(), dtype=np.float32)
    except ValueError:
        return
    if not np.isfinite(values).all():
        raise _not_finite(path, lineno)


def _not_finite(path: Path, lineno: int) -> DataError:
    return DataError(
        f"{at(path, lineno)}: the vector holds nan or inf values",
        "the file is damaged or was written by a diverged training run: use another copy",
    )


def _is_header(line: bytes) -> bool:
    fields = line.split()
    return len(fields) == 2 and all(f.isdigit() for f in fields)


def _dimension(path: Path, first: bytes) -> int:
    """The vector size announced by the first line (a word2vec header or a first vector)."""
    fields = first.split()
    dim = int(fields[1]) if _is_header(first) else len(fields) - 1
    if dim < 1:
        raise DataError(
            f"{at(path, 1)}: expected `word v1 ... vD`, found {first[:60]!r}",
            "pass a GloVe text file (.txt or .txt.gz)",
        )
    return dim


def _has_values(path: Path, lineno: int, rest: bytes, dim: int, header: bool) -> bool:
    """Whether an irregularly spaced line still holds `dim` values (else it is malformed).

    A line of only numbers but a different count means the file disagrees with itself on the
    dimension (mixed or truncated files): that is an error, not a line to skip.
    """
    fields = rest.split()
    if len(fields) == dim:
        return True
    if fields and all(_is_number(f) for f in fields):
        where = "the header (line 1) announces" if header else "the file's vectors have"
        raise DataError(
            f"{at(path, lineno)}: {len(fields)} values where {where} {dim}",
            "the file mixes vectors of different sizes or is cut short: download it again",
        )
    return False


def _is_number(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True
