"""The layering the code relies on: the core never imports the command-line libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CORE = ("xmtc_cli.training", "xmtc_cli.inference", "xmtc_cli.evaluation",
        "xmtc_cli.data.preprocess", "xmtc_cli.run", "xmtc_cli.checkpoint")


def test_importing_the_core_loads_neither_typer_nor_rich():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', "
            "'click')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"
