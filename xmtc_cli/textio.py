"""Text files line by line: the one reader behind corpora, label files and documents to label.

* A line ends at `\\n` only (and loses a `\\r` before it), so a stray `\\r`, form feed or U+2028
  inside a document never splits it in two. Lines are yielded without their line end.
* A byte-order mark at the start of the file is dropped, whatever the encoding, so that a file
  saved by Notepad reads as the same text as one saved by anything else.
* Any Python text codec works. UTF-8 and the other encodings in which `\\n` is the byte 0x0a are
  split in bytes and decoded line by line, so a bad byte is reported at its line and column;
  UTF-16 and UTF-32 go through an incremental decoder, since their `\\n` is not one byte.
* `-` is standard input, and anything that opens as a stream reads: pipes, FIFOs, `/dev/stdin`,
  process substitution `<(...)`. Nothing seeks, and nothing asks for a regular file.
"""

from __future__ import annotations

import codecs
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from xmtc_cli.errors import DataError, XmtcError, at
from xmtc_cli.fileerrors import STDIN, file_error, resolved

ENCODING_HINT = "pass the file's encoding, e.g. --encoding latin-1"
MAX_LINE_BYTES = 1 << 28
"""The longest line read (256 MiB): longer, a file is taken for one that never ends a line (a
device such as /dev/zero, a binary file) rather than read until memory runs out."""
_CHUNK = 1 << 16
_UTF16_32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE,
                  codecs.BOM_UTF16_BE)


def check_encoding(encoding: str) -> str:
    """The codec's canonical name, or a DataError for an encoding Python does not know."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise DataError(
            f"unknown encoding {encoding!r}", "use a Python codec name, e.g. utf-8 or latin-1"
        ) from None
    if not getattr(info, "_is_text_encoding", True):  # base64, rot13, zlib...
        raise DataError(f"{encoding!r} is not a text encoding",
                        "use a Python codec name, e.g. utf-8 or latin-1")
    return info.name


@contextlib.contextmanager
def open_lines(source: str | Path, encoding: str = "utf-8", what: str = "file",
               hint: str = ENCODING_HINT) -> Iterator[Iterator[str]]:
    """The lines of `source` (a path, or `-` for standard input), read lazily.

    Opening fails at once, before any line is read, with a DataError naming the file: missing,
    a folder, unreadable. `what` names the file in those messages ("documents file"); `hint`
    is the advice for a byte that is not text in `encoding`.
    """
    encoding = check_encoding(encoding)
    if str(source) == "-":
        stdin = sys.stdin
        if stdin is None or stdin.closed:
            raise DataError(f"cannot read {STDIN} (-): it is closed",
                            f"pipe the {what} in, or give its path instead of -")
        yield decode_lines(getattr(stdin, "buffer", stdin), "<stdin>", encoding, hint)
        return
    with open_source(Path(source), what) as stream:
        yield decode_lines(stream, str(source), encoding, hint)


def open_source(path: Path, what: str = "file", buffering: int = -1) -> BinaryIO:
    """Open `path` for binary reading, with a DataError for a missing, folder or unreadable path.

    Anything that exists and is not a folder is opened: a regular file, a FIFO, a character
    device such as /dev/stdin.
    """
    if not path.exists():
        raise DataError(f"{what} {path} does not exist{resolved(path)}", "check the path")
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder, not a file", "give the path of a file")
    try:
        return open(path, "rb", buffering=buffering)
    except OSError as exc:
        error = file_error(exc, "read", path)
        raise DataError(error.message, error.hint) from None


def decode_lines(stream: BinaryIO, name: str, encoding: str = "utf-8",
                 hint: str = ENCODING_HINT) -> Iterator[str]:
    """Decode a binary stream into lines without their line ends; errors name `name:line`."""
    encoding = check_encoding(encoding)
    if encoding in ("utf-16", "utf-32"):  # the codec itself reads (and drops) the BOM
        lines = _decoded_lines(stream, name, encoding)
    elif "\n".encode(encoding) == b"\n":
        lines = _byte_lines(stream, name, encoding, hint)
    else:  # utf-16-le, utf-32-be, EBCDIC...: "\n" is not the byte 0x0a
        lines = _decoded_lines(stream, name, encoding)
    try:
        yield from lines
    except MemoryError:
        raise DataError(f"{name}: out of memory while reading its lines",
                        "check that it is a text file with one document a line") from None
    except OSError as exc:
        if isinstance(exc, XmtcError):
            raise
        error = file_error(exc, "read", STDIN if name == "<stdin>" else name)
        raise DataError(error.message, error.hint) from None


def _byte_lines(stream: BinaryIO, name: str, encoding: str, hint: str) -> Iterator[str]:
    """Split on the byte 0x0a, then decode each line: a bad byte is found at its line."""
    if encoding == "utf-8-sig":  # its BOM is dropped below, once, not at every line
        encoding = "utf-8"
    lineno = 0
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        lineno += 1
        if lineno == 1:
            _check_first_line(raw, name, encoding)
        if len(raw) > MAX_LINE_BYTES:
            raise _endless(name, lineno)
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{at(name, lineno)}: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} "
                f"is not {encoding} text",
                hint,
            ) from None
        if lineno == 1:
            text = text.removeprefix("\ufeff")
        yield _strip_line_end(text)


def _endless(name: str, lineno: int) -> DataError:
    return DataError(
        f"{at(name, lineno)}: a line longer than {MAX_LINE_BYTES >> 20} MiB, so it is no text "
        "file with one document a line (a device such as /dev/zero, or binary data)",
        "pass a text file, one document a line",
    )


def _check_first_line(raw: bytes, name: str, encoding: str) -> None:
    """Refuse UTF-16/32 text read as a byte encoding, which decodes to garbage without error,
    and binary files (compressed, checkpoints, arrays) with a message of their own: the UTF-16
    advice only where the bytes look like UTF-16."""
    utf16 = "it looks like UTF-16: pass --encoding utf-16 (or convert it: " \
        "iconv -f utf-16 -t utf-8)"
    if raw.startswith(_UTF16_32_BOMS):
        raise DataError(f"{at(name, 1)}: starts with a UTF-16 or UTF-32 byte-order mark, so it "
                        f"is not {encoding} text", utf16)
    if raw.startswith(b"\x1f\x8b"):
        raise DataError(f"{name} is gzip-compressed, not text",
                        f"decompress it first (gunzip -k {name}), or pass <(zcat {name})")
    if b"\x00" in raw:
        if looks_like_utf16(raw):
            raise DataError(f"{at(name, 1)}: holds NUL bytes between its characters, so it is "
                            f"not {encoding} text", utf16)
        raise DataError(f"{at(name, 1)}: holds NUL bytes, so it is binary data, not text",
                        "pass a text file, one document a line")


def looks_like_utf16(raw: bytes) -> bool:
    """Whether bytes read like UTF-16 text of a Latin script: NUL bytes at every other position
    (the high bytes of the characters) and almost none at the others."""
    sample = raw[:4096]
    if len(sample) < 4:
        return False
    even, odd = sample[0::2], sample[1::2]
    share = [part.count(0) / max(len(part), 1) for part in (even, odd)]
    return max(share) >= 0.5 and min(share) <= 0.05


def _decoded_lines(stream: BinaryIO, name: str, encoding: str) -> Iterator[str]:
    """Decode chunk by chunk, then split on "\\n": for encodings whose "\\n" is not one byte."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    read = getattr(stream, "read1", stream.read)  # read1: what a pipe has, without waiting
    pending, lineno = "", 0
    while True:
        chunk = read(_CHUNK)
        state = decoder.getstate()
        try:
            text = pending + decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError:
            raise _bad_bytes(decoder, state, pending, chunk, name, lineno, encoding) from None
        *lines, pending = text.split("\n")
        if len(pending) > MAX_LINE_BYTES:
            raise _endless(name, lineno + len(lines) + 1)
        for line in lines:
            lineno += 1
            yield _strip_line_end(line.removeprefix("\ufeff") if lineno == 1 else line)
        if not chunk:
            break
    if pending:
        yield _strip_line_end(pending.removeprefix("\ufeff") if lineno == 0 else pending)


def _bad_bytes(decoder: codecs.IncrementalDecoder, state: tuple, pending: str, chunk: bytes,
               name: str, lineno: int, encoding: str) -> DataError:
    """The error for the first undecodable bytes of `chunk`, at their line and column.

    The longest prefix of the chunk that decodes is bisected for (a longer prefix can only fail
    if a shorter one does); the text it decodes to ends where the bad bytes begin.
    """
    good, bad = 0, len(chunk)
    while bad - good > 1:
        middle = (good + bad) // 2
        decoder.setstate(state)
        try:
            decoder.decode(chunk[:middle])
            good = middle
        except UnicodeDecodeError:
            bad = middle
    decoder.setstate(state)
    text = pending + decoder.decode(chunk[:good])
    line, column = lineno + text.count("\n") + 1, len(text) - text.rfind("\n")
    hint = "pass the file's encoding with --encoding, or convert the file to UTF-8 with iconv"
    if not chunk:
        return DataError(f"{at(name, line)}: the file ends inside a character, so it is not "
                         f"{encoding} text", hint)
    decoder.setstate(state)
    try:
        decoder.decode(chunk[:bad])
        shown = chunk[good:bad]
    except UnicodeDecodeError as exc:
        shown = exc.object[exc.start:exc.end]
    return DataError(f"{at(name, line)}: bytes {shown[:8].hex(' ')} at column {column} are not "
                     f"{encoding} text", hint)


def _strip_line_end(line: str) -> str:
    line = line.removesuffix("\n")
    return line.removesuffix("\r")
