"""The Typer application object that every command module registers itself on."""

from __future__ import annotations

from typing import Annotated

import typer

from xmtc_cli import __version__

HELP = "Extreme multi-label text classification with OTSeq2Set."

app = typer.Typer(
    name="xmtc",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain (click) help: it wraps long option names instead of cutting them as rich's
    # tables do at 80 columns ("--centroid-weight…"), and reads the same piped or not.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"xmtc {__version__}")
        raise typer.Exit()


@app.callback(help=HELP)
def _options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.",
    )] = False,
) -> None:
    """Options of `xmtc` itself, before the command."""
