"""`xmtc plot RUN`: a run's learning curves as a picture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xmtc_cli.cli.app import app
from xmtc_cli.cli.render import stderr


@app.command()
def plot(
    run: Annotated[Path, typer.Argument(help="A run folder written by `xmtc train`.")],
    out: Annotated[Path | None, typer.Option(
        help="The picture: .svg (default RUN/curves.svg) or .png (needs matplotlib: "
        'pip install "xmtc[plot]").')] = None,
) -> None:
    """Plot training loss and validation metrics per epoch, the best epoch marked."""
    from xmtc_cli.curves import plot as draw
    from xmtc_cli.curves import write_csv

    path = draw(run, out or run / "curves.svg")
    write_csv(run)  # runs trained before curves.csv existed get it too
    stderr.print(f"wrote {path} (and {run / 'curves.csv'})")
