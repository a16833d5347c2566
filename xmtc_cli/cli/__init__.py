"""Command-line interface: the only package that imports typer or rich.

`main()` is the single error boundary: known errors (`XmtcError`) become `error:` and `hint:`
lines on stderr with exit code 1, usage errors exit 2, and anything unexpected prints one line
asking for a re-run with XMTC_DEBUG=1, which shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

# Importing a command module registers its command on `app`.
from xmtc_cli.cli import eval, predict, preprocess, train  # noqa: F401
from xmtc_cli.cli.app import app
from xmtc_cli.errors import UsageError, XmtcError


def _debug() -> bool:
    return os.environ.get("XMTC_DEBUG", "").strip() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> None:
    """Run `xmtc`, turning every failure into a message and an exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # The arguments ride along in the context so `xmtc train` can record its own command.
        code = app(args=args, prog_name="xmtc", standalone_mode=False, obj={"argv": args})
    except XmtcError as exc:
        if _debug():
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        show = getattr(exc, "show", None)
        if show is not None:
            show(file=sys.stderr)
        else:
            print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `xmtc predict ... | head` closed our stdout: not an error of ours.
        sys.stderr.close()
        sys.exit(0)
    except Exception as exc:  # the boundary: nothing unexpected leaks a traceback
        if _debug():
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} "
            "(re-run with XMTC_DEBUG=1 to see the traceback, and please report it)",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
