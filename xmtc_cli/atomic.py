"""Write files and folders so that a crash never leaves a half-written one behind.

Everything is first written under a temporary name beside its destination, flushed, and then
renamed into place; a rename within one folder is atomic on POSIX and Windows filesystems. A
file that replaces another keeps the mode of the one it replaces (a private 0600 file stays
private); a new one gets the permissions the user's umask gives a new file or folder (not the
0600 / 0700 of a temporary one), everything inside a written folder included. A destination
that exists and is neither a regular file nor a folder (a device such as /dev/stdout, a FIFO)
cannot be replaced and is written in place.

Temporary names carry the writer's process id (`.NAME.PID.RANDOM.tmp`): a writer that was
killed leaves one behind, and the next write to the same destination removes the leftovers of
processes that no longer run (a folder moved aside by a killed `atomic_dir` is put back if
nothing replaced it). Leftovers of a writer that still runs are left alone.

What the operating system refuses (a full disk, a read-only file system, a permission, a folder
where a file belongs) comes out as an `XmtcError` naming the destination (`fileerrors`), and
nothing is left behind: an existing destination stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from xmtc_cli.errors import XmtcError
from xmtc_cli.fileerrors import FileError, file_error


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or no pid at all: leave its files alone
    return True


def remove_leftovers(path: str | Path) -> None:
    """Remove what killed writers of `path` left beside it: `.NAME.PID.*.tmp` files and folders
    of processes that no longer run; a folder that a killed `atomic_dir` moved aside
    (`.NAME.PID.*.old/previous`) goes back to `path` if `path` is gone, else is removed."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[A-Za-z0-9_]+\.(tmp|old)")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        leftover = Path(entry.path)
        with contextlib.suppress(OSError):
            if match.group(2) == "old" and (leftover / "previous").is_dir() \
                    and not os.path.lexists(path):
                os.replace(leftover / "previous", path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(leftover)
            else:
                leftover.unlink()


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


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
    if path.exists() and path.is_block_device():  # a disk: writing it in place would wreck it
        raise FileError(f"cannot write {path}: it is a block device (a disk or partition)",
                        "write to a file", errno.EPERM, path)
    if path.exists() and not path.is_file():
        with _in_place(path, mode, encoding) as handle:
            yield handle
        return
    if path.is_file() and not path.stat().st_mode & 0o222:  # read-only: a rename would not ask
        raise file_error(OSError(errno.EACCES, "Permission denied"), "write", path)
    _make_parent(path)
    remove_leftovers(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise file_error(exc, "write", path) from None
    try:
        os.chmod(tmp, _mode_of(path, 0o666 & ~_umask()))
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


def _mode_of(path: Path, default: int) -> int:
    """The permission bits of the regular file `path`, or `default` where there is none."""
    try:
        info = os.lstat(path)
    except OSError:
        return default
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else default


@contextlib.contextmanager
def _in_place(path: Path, mode: str, encoding: str | None) -> Iterator:
    try:
        with _open_in_place(path, mode, encoding) as handle:
            yield handle
    except OSError as exc:
        if _about(exc, path):
            raise file_error(exc, "write", path) from None
        raise


def _open_in_place(path: Path, mode: str, encoding: str | None):
    """`open(path, mode)`, except that a FIFO no process reads is an error, not a wait for ever:
    it is opened without blocking first (ENXIO says nobody reads), then written as usual."""
    if not stat.S_ISFIFO(os.stat(path).st_mode):
        return open(path, mode, encoding=encoding)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        raise FileError(f"cannot write {path}: it is a FIFO (named pipe) that no process reads",
                        "start its reader first, or write to a file", exc.errno, path) from None
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode, encoding=encoding)


def _umask_modes(folder: Path, top: int | None = None) -> None:
    """Give `folder` and everything in it the modes the umask gives new files and folders: not
    mkdtemp's 0700, nor the 0600 that some writers (safetensors' save_file) use; `top`, the
    mode of the folder it replaces, for `folder` itself."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask if top is None else top)
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
    remove_leftovers(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise file_error(exc, "create the folder", path) from None
    old = None
    try:
        yield tmp
        top = stat.S_IMODE(os.stat(path).st_mode) if path.is_dir() else None
        _umask_modes(tmp, top)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
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
