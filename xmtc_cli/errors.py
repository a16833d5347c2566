"""One exception family for everything a user can cause and fix.

Core code raises these; only the CLI boundary (`xmtc_cli.cli.main`) turns them into an
`error: ...` / `hint: ...` pair on stderr and exit code 1.
"""

from __future__ import annotations

from pathlib import Path


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
