"""Write files and folders so that a crash never leaves a half-written one behind.

Everything is first written under a temporary name beside its destination, flushed, and then
renamed into place; a rename within one folder is atomic on POSIX and Windows filesystems. The
result gets the permissions the user's umask gives a new file or folder (not the 0600 / 0700 of
a temporary one), everything inside a written folder included. A destination that exists and
is neither a regular file nor a folder (a device such as /dev/stdout, a FIFO) cannot be
replaced and is written in place.

What the operating system refuses (a full disk, a read-only file system, a permission, a folder
where a file belongs) comes out as an `XmtcError` naming the destination (`fileerrors`), and
nothing is left behind: an existing destination stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from xmtc_cli.errors import XmtcError
from xmtc_cli.fileerrors import file_error


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform lets a folder be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_error(exc, "create the folder", path.parent) from None


def _about(exc: BaseException, *paths: str | Path) -> bool:
    """Whether `exc` is an OSError on one of `paths` (or inside them), or on no named file: the
    errors of writing the destination, as opposed to, say, failing to read an input."""
    if not isinstance(exc, OSError) or isinstance(exc, (BrokenPipeError, XmtcError)):
        return False  # not an OS error, a quiet one, or one explained already
    if exc.filename is None:
        return True
    name = os.fspath(exc.filename)
    return any(name == os.fspath(p) or name.startswith(os.fspath(p) + os.sep) for p in paths)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator:
    """Open a temporary file beside `path`; on success rename it onto `path`, else delete it."""
    path = Path(path)
    if path.is_dir():
        raise file_error(OSError(errno.EISDIR, "Is a directory"), "write", path)
    if path.exists() and not path.is_file():
        with _in_place(path, mode, encoding) as handle:
            yield handle
        return
    if path.is_file() and not path.stat().st_mode & 0o222:  # read-only: a rename would not ask
        raise file_error(OSError(errno.EACCES, "Permission denied"), "write", path)
    _make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise file_error(exc, "write", path) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if _about(exc, tmp, path):
            raise file_error(exc, "write", path) from None
        raise


@contextlib.contextmanager
def _in_place(path: Path, mode: str, encoding: str | None) -> Iterator:
    try:
        with open(path, mode, encoding=encoding) as handle:
            yield handle
    except OSError as exc:
        if _about(exc, path):
            raise file_error(exc, "write", path) from None
        raise


def _umask_modes(folder: Path) -> None:
    """Give `folder` and everything in it the modes the umask gives new files and folders: not
    mkdtemp's 0700, nor the 0600 that some writers (safetensors' save_file) use."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole.

    An existing `path` is moved aside first and deleted only after the new folder is in place,
    so at every moment either the old or the new complete folder exists under its name.
    """
    path = Path(path)
    _make_parent(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise file_error(exc, "create the folder", path) from None
    old = None
    try:
        yield tmp
        _umask_modes(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "previous").exists() and not path.exists():
            with contextlib.suppress(OSError):  # the new folder did not land: the old one back
                os.replace(old / "previous", path)
        if old is not None and not (old / "previous").exists():
            shutil.rmtree(old, ignore_errors=True)
        if _about(exc, tmp, path):
            raise file_error(exc, "write", path) from None
        raise
