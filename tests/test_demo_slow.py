"""The shipped demo recipe, trained in full: the README's main job learns its corpus.

Opt-in (`python -m pytest -m slow`): about a minute on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from xmtc_cli.config import load_recipe
from xmtc_cli.training import fit

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"


def test_the_demo_recipe_reaches_a_high_validation_micro_f1(tmp_path, monkeypatch):
    monkeypatch.setenv("XMTC_CACHE", str(tmp_path / "cache"))
    result = fit(load_recipe(DEMO), tmp_path / "run", device="cpu")
    # Measured 0.93 with the shipped settings; a broken model, loss or decoder lands far below.
    assert result.best_valid["micro_f1"] > 0.85
    assert result.best_valid["micro_precision"] > 0.9
