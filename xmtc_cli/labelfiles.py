"""Label files: one document per line, its labels separated by spaces (AttentionXML's format).

`xmtc eval --predictions FILE --gold FILE` reads both sides with `read_label_file`; an empty line
is a document with no labels, so line k is always document k.
"""

from __future__ import annotations

from pathlib import Path

from xmtc_cli.errors import DataError, at


def read_label_file(path: str | Path) -> list[list[str]]:
    """Read a UTF-8 label file into one list of labels per line, in file order.

    Any run of whitespace separates labels, so stray spaces and Windows line ends are harmless.
    Raises DataError naming the file (and line) when it is missing or not valid UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {path} does not exist", "check the path")
    documents = []
    # Binary lines so that only "\n" ends a line and a bad byte can be traced to its line.
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{at(path, number)} is not valid UTF-8 (byte {exc.start + 1} of the line)",
                    "convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 FILE`",
                ) from exc
            documents.append(line.split())
    return documents
