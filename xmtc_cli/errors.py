"""One exception family for everything a user can cause and fix.

Core code raises these; only the CLI boundary (`xmtc_cli.cli.main`) turns them into an
`error: ...` / `hint: ...` pair on stderr and exit code 1.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Any


class XmtcError(Exception):
    """A failure the user can fix: `message` says what failed, `hint` what to do next."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(XmtcError):
    """A command called with arguments that do not go together (exit code 2)."""


class DataError(XmtcError):
    """Raw or processed data that cannot be read."""


class ConfigError(XmtcError):
    """A recipe or override that does not validate."""


class CheckpointError(XmtcError):
    """A checkpoint file that is missing, truncated, foreign or from another format version."""


def at(path: str | Path, line: int | None = None) -> str:
    """Format a location as `path:line` (1-based line) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


class _ShortRepr(reprlib.Repr):
    """reprlib's bounded repr, also for integers too long to print (Python refuses to turn one
    of more than 4300 digits into text)."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return super().repr_int(x, level)


_REPR = _ShortRepr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 4, 4, 3
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def short(value: Any, limit: int = 40) -> str:
    """repr of `value`, cut to `limit` characters: error messages never echo a huge value.

    Bounded in time and memory too: reprlib looks at a few items of a container and a few
    levels of nesting, never at the whole of an expanded YAML alias bomb.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # a value whose repr fails is named by its type
        text = f"<{type(value).__name__}>"
    return cut(text, limit)


def cut(text: str, limit: int = 40) -> str:
    """`text` cut to `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
