"""How a training process gets its memory (xmtc_cli/memory.py): freed memory kept for the next
step. Each probe runs in a fresh python, since the setting acts once per process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from xmtc_cli.memory import MALLOC_ENV

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc's malloc is Linux's")


def _run(code: str, *args: str, **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    env.update(extra)
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


KEEP_PROBE = """
import sys, torch
from xmtc_cli.memory import keep_freed_memory

def resident():  # MiB
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // 2**20

kept = keep_freed_memory() if sys.argv[1] == "keep" else False
big = torch.ones(256 * 2**20 // 4)  # 256 MiB, touched
held = resident()
del big
print(kept, held - resident())
"""


@pytest.mark.parametrize("how", ["keep", "default", "user's malloc settings"])
def test_freed_memory_stays_with_the_process_once_kept(how):
    """After keep_freed_memory a freed tensor's memory stays in the process, for the next
    allocations to reuse without page faults; by default, or when the user set malloc's
    variables, glibc hands it back to the kernel at once."""
    extra = {"MALLOC_TRIM_THRESHOLD_": "131072"} if how == "user's malloc settings" else {}
    kept, returned = _run(KEEP_PROBE, how, **extra).split()
    assert kept == str(how == "keep")
    if how == "keep":
        assert int(returned) < 16, returned
    else:
        assert int(returned) > 200, returned


def test_a_trainer_on_the_cpu_keeps_freed_memory(monkeypatch):
    import torch

    from xmtc_cli import training
    from xmtc_cli.config import recipe_from_dict
    from xmtc_cli.model import ModelSizes

    calls = []
    monkeypatch.setattr(training, "keep_freed_memory", lambda: calls.append(1))
    recipe = recipe_from_dict({"data": {"dir": "unused"}, "model": {"hidden_size": 4}}, [])
    training.Trainer.build(recipe, ModelSizes(10, 3, 2, 4, 4), torch.device("cpu"), 10)
    assert calls == [1]
