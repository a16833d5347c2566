"""Command-line interface: the only package that imports typer or rich.

`main()` is the single error boundary: known errors (`XmtcError`) become `error:` and `hint:`
lines on stderr with exit code 1 (2 for usage errors); what the operating system refuses (a
full disk, a permission, a closed stdout) is such an error too; a reader that stops early
(`xmtc predict ... | head`) ends the command quietly with exit code 0; anything unexpected
prints one line asking for a re-run with XMTC_DEBUG=1. XMTC_DEBUG (1/true/yes/on) adds the
traceback and changes nothing else, exit codes included. Warnings that the core logs under
`xmtc_cli` become `warning:` lines on stderr.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import signal
import sys
import threading
import traceback

import typer

# Importing a command module registers its command on `app`.
from xmtc_cli.cli import eval, plot, predict, preprocess, serve, train  # noqa: F401
from xmtc_cli.cli.app import app
from xmtc_cli.errors import UsageError, XmtcError
from xmtc_cli.fileerrors import STDOUT, file_error

DEBUG_ENV = "XMTC_DEBUG"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def main(argv: list[str] | None = None) -> None:
    """Run `xmtc`, turning every failure into a message and an exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    _replace_closed_streams()
    _show_core_warnings()
    previous = _catch_sigterm()
    try:
        command = typer.main.get_command(app)
        # Not `app(...)`: click's own main turns a broken pipe into exit code 1 before we see it.
        # The arguments ride along in the context so `xmtc train` can record its own command.
        with command.make_context("xmtc", args, obj={"argv": args}) as ctx:
            command.invoke(ctx)
        code = _flush_stdout()
    except SystemExit:
        raise
    except BaseException as exc:  # the boundary: every failure gets its message and exit code
        code = _report(exc, args)
        _flush_stdout(quiet=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code)


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler's time limit, `kill`): unwound like Ctrl-C, so files being
    written are left as they were and the run folder's lock is released, then reported."""


def _catch_sigterm():
    """Turn SIGTERM into `Terminated` (in the main thread; elsewhere signals cannot be set).
    Returns the handler it replaced, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminated(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, terminated)
    except (ValueError, OSError):
        return None


def _report(exc: BaseException, args: list[str] | None = None) -> int:
    """Print what failed (and the traceback under XMTC_DEBUG); return the exit code."""
    if isinstance(exc, typer.Exit):  # --help, --version
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):  # the reader of our stdout is gone: not an error of ours
        _silence_stdout()
        return 0
    debug = _debug()
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, Terminated):
        print("error: terminated (SIGTERM)", file=sys.stderr)
        if args and args[0] == "train":
            print("hint: every save is whole; `xmtc train RECIPE --out RUN --resume` continues "
                  "from the last one (train.checkpoint_every saves inside epochs)",
                  file=sys.stderr)
        return 143
    if isinstance(exc, (typer.Abort, KeyboardInterrupt)):
        print("error: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, typer.TyperException):  # usage: unknown option, bad value, missing argument
        show = getattr(exc, "show", None)
        if show is not None:
            show(file=sys.stderr)
        else:
            print(f"error: {exc.format_message()}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, XmtcError):
        exc = _os_error(exc)
    if isinstance(exc, RuntimeError) and "symlink loop" in str(exc).lower():
        exc = XmtcError(str(exc)[:300], "replace the looping link with a file or a folder")
    if isinstance(exc, UnicodeError):
        exc = XmtcError(f"cannot decode the input: {str(exc)[:200]}",
                        "check --encoding (utf-16 files start with a byte-order mark)")
    if isinstance(exc, MemoryError) or (
            isinstance(exc, RuntimeError) and "allocate" in str(exc).lower()):
        exc = XmtcError("out of memory: " + (str(exc).splitlines() or ["?"])[0][:200],
                        "use smaller sizes (model.hidden_size, train.batch_size, "
                        "data.max_src_tokens) or a machine with more memory")
    if isinstance(exc, XmtcError):
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    advice = ("please report it, with the traceback above" if debug else
              "re-run with XMTC_DEBUG=1 to see the traceback, and please report it")
    print(f"error: unexpected {type(exc).__name__}: {exc} ({advice})", file=sys.stderr)
    return 1


def _os_error(exc: OSError) -> XmtcError:
    if exc.filename is None:
        return XmtcError((exc.strerror or str(exc)).lower(),
                         "check the files and devices this command reads and writes")
    return file_error(exc, "write to" if exc.filename == STDOUT else "open", exc.filename)


def _debug() -> bool:
    """XMTC_DEBUG as a boolean; anything else is warned about and read as off."""
    value = os.environ.get(DEBUG_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        print(f"warning: {DEBUG_ENV}={value[:20]!r} is not one of {'/'.join(_TRUE)} or "
              f"{'/'.join(_FALSE[1:])}: no traceback", file=sys.stderr)
    return False


def _flush_stdout(quiet: bool = False) -> int:
    """Flush what commands printed; a failure is an error (or, quietly, ignored) and the stdout
    file descriptor is pointed at /dev/null so that Python's own final flush cannot fail."""
    try:
        sys.stdout.flush()
        return 0
    except OSError as exc:
        _silence_stdout()
        if quiet or isinstance(exc, BrokenPipeError):
            return 0
        return _report(file_error(exc, "write to", STDOUT))


def _silence_stdout() -> None:
    """Point the stdout file descriptor at /dev/null, as the Python docs advise for SIGPIPE."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests, a closed stdout)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class _ClosedStdout(io.TextIOBase):
    """Stands for a stdout that was closed when xmtc started (`>&-`): writing fails with EBADF,
    so that a command with results to print says so instead of printing them into nothing."""

    closed = True  # so that Python's final flush passes it by

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "Bad file descriptor", STDOUT)

    def flush(self) -> None:
        return None


def _replace_closed_streams() -> None:
    """Python sets sys.stdout/sys.stderr to None when file descriptor 1/2 is closed."""
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()
    if sys.stderr is None:  # nowhere to report anything; the exit code still tells
        sys.stderr = open(os.devnull, "w", encoding="utf-8")


class _WarningLines(logging.Handler):
    """A core warning (logging.WARNING and up) as one `warning: ...` line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"warning: {record.getMessage()}", file=sys.stderr)  # stderr of the moment
        except Exception:
            self.handleError(record)


def _show_core_warnings() -> None:
    logger = logging.getLogger("xmtc_cli")
    if not any(isinstance(h, _WarningLines) for h in logger.handlers):
        logger.addHandler(_WarningLines(logging.WARNING))
