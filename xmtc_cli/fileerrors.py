"""What the operating system says when a file cannot be read or written, as errors a user can fix.

A full disk, a read-only file system, a permission, a folder where a file belongs: these are
ordinary failures of the machine, not bugs of xmtc. `file_error` turns the `OSError` into a
`FileError` (an `XmtcError`, and still an `OSError`) whose message names the path and the
reason and whose hint says what to do; the write layer (`xmtc_cli.atomic`), the line reader
(`xmtc_cli.textio`) and the CLI boundary use it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from xmtc_cli.errors import XmtcError

STDOUT = "standard output"
STDIN = "standard input"

_SPACE = "free some space, or write somewhere else"
_ELSEWHERE = "write somewhere else, or ask for write access"
# errno -> (reason, hint); the hint may name the path as {path}.
_REASONS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", _SPACE),
    errno.EDQUOT: ("disk quota exceeded", _SPACE),
    errno.EFBIG: ("the file is too large for the file system", _SPACE),
    errno.EROFS: ("the file system is read-only", "write somewhere else"),
    errno.EACCES: ("permission denied", "check the permissions of {path} and of its folder"),
    errno.EPERM: ("operation not permitted", "check the permissions of {path} and of its folder"),
    errno.EISDIR: ("it is a folder, not a file", "give the path of a file, e.g. {path}/FILE"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EBADF: ("it is closed", "run the command with it open, or redirect it to a file"),
    errno.EIO: ("input/output error", "check the device and the file system (dmesg)"),
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter path"),
    errno.ENXIO: ("no such device", "check the path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and run again"),
    errno.ETXTBSY: ("the file is busy", "wait for the program using it, or write elsewhere"),
}


class FileError(XmtcError, OSError):
    """An `OSError` explained for the user: an `XmtcError` to the CLI boundary, and still an
    `OSError` (errno, strerror, filename) to code that catches those."""

    def __init__(self, message: str, hint: str, code: int | None, filename: str | Path):
        XmtcError.__init__(self, message, hint)
        self.errno, self.filename = code, str(filename)
        self.strerror = os.strerror(code) if code is not None else None


def file_error(exc: OSError, action: str, path: str | Path) -> FileError:
    """`cannot ACTION PATH: reason` with a hint, for an `OSError` raised on `path`.

    `action` is a verb phrase such as "write" or "create the folder"; `path` may be `STDOUT` or
    `STDIN`. An errno without its own wording keeps the operating system's.
    """
    code = exc.errno
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(Path(path))
        if blocker is not None:
            return FileError(
                f"cannot {action} {path}: {blocker} is a file, not a folder",
                f"move {blocker} out of the way, or choose another path", code, path,
            )
    if code == errno.ENOTDIR:
        reason, hint = "a part of the path is not a folder", "check the path"
    elif code == errno.EEXIST:
        reason, hint = "it exists and is not a folder", "choose another path"
    else:
        reason, hint = _REASONS.get(
            code, ((exc.strerror or str(exc)).lower(), "check the path and the device"))
        if code == errno.ENOENT and path not in (STDOUT, STDIN):
            reason += resolved(path)
    return FileError(f"cannot {action} {path}: {reason}", hint.format(path=path), code, path)


def resolved(path: str | Path) -> str:
    """How a path that was not found was looked up, for the end of a "does not exist" message:
    relative to which working folder (or that the working folder itself was deleted), or that a
    leading `~` was taken literally (the shell expands it, xmtc does not). "" for a plain
    absolute path."""
    text = str(path)
    if text.startswith("~"):
        return (" (xmtc does not expand ~: the shell does, and only when it is unquoted; "
                "give the full path, e.g. with $HOME)")
    if os.path.isabs(text):
        return ""
    try:
        cwd = os.getcwd()
    except OSError:
        return " (relative to the working folder, which no longer exists: it was deleted or " \
               "moved; cd to an existing folder and run the command again)"
    return f" (relative to the working folder {cwd})"


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest of `path` and its parents that exists and is not a folder, if any."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return None if candidate.is_dir() else candidate
        except OSError:
            return None
    return None
