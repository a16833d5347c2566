"""benchmarks/bench_breakdown.py's clock: each part's time is exclusive of the timed calls inside
it, so the parts add up to the wall time of the outermost call."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_breakdown


def test_nested_parts_are_exclusive_and_add_up_to_the_outer_call(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(bench_breakdown.time, "perf_counter", lambda: now[0])
    clock = bench_breakdown.Clock()

    def wait(seconds):
        now[0] += seconds

    inner = clock.wrap("inner", lambda: wait(2.0))
    middle = clock.wrap("middle", lambda: (wait(1.0), inner(), wait(0.5), inner()))
    outer = clock.wrap("outer", lambda: (wait(3.0), middle(), inner()))
    outer()
    middle()  # again, outside: its own time and its inner calls' are added
    assert dict(clock.spent) == {"inner": 2.0 * 5, "middle": 1.5 * 2, "outer": 3.0}
    assert sum(clock.spent.values()) == now[0]


def test_a_call_that_raises_still_counts_and_leaves_the_stack_balanced(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(bench_breakdown.time, "perf_counter", lambda: now[0])
    clock = bench_breakdown.Clock()

    def fail():
        now[0] += 1.0
        raise ValueError

    failing = clock.wrap("failing", fail)
    outer = clock.wrap("outer", lambda: (now.__setitem__(0, now[0] + 2.0), _swallow(failing)))
    outer()
    assert dict(clock.spent) == {"failing": 1.0, "outer": 2.0} and clock._inner == []


def _swallow(fn):
    try:
        fn()
    except ValueError:
        pass
