"""Thread control (xmtc_cli.threads): which count wins, the default's arithmetic, and that the
commands honour the count and let idle OpenMP threads sleep, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_recipe

from xmtc_cli import threads
from xmtc_cli.errors import UsageError
from xmtc_cli.threads import THREADS_ENV, choose_threads

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def machine(monkeypatch):
    """A machine of 8 usable cores, no quota, no torchrun, no thread variables."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "RANK",
                 "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    return monkeypatch


def torchrun(machine, local: str) -> None:
    """The variables torchrun sets for rank 0 of `local` processes on one machine (a launch
    is recognised only when complete: xmtc_cli.launch)."""
    for name, value in (("WORLD_SIZE", local), ("RANK", "0"), ("LOCAL_RANK", "0"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"),
                        ("LOCAL_WORLD_SIZE", local)):
        machine.setenv(name, value)


def test_the_first_given_source_wins_in_documented_order(machine):
    machine.setenv("OMP_NUM_THREADS", "5")
    machine.setenv(THREADS_ENV, "4")
    assert (choose_threads(2, 3).count, choose_threads(2, 3).source) == (2, "--threads")
    assert (choose_threads(None, 3).count, choose_threads(None, 3).source) == (3, "train.threads")
    assert (choose_threads().count, choose_threads().source) == (4, THREADS_ENV)
    machine.delenv(THREADS_ENV)
    assert (choose_threads().count, choose_threads().source) == (5, "OMP_NUM_THREADS")
    machine.delenv("OMP_NUM_THREADS")
    assert (choose_threads().count, choose_threads().source) == (8, "cores")


@pytest.mark.parametrize(("local", "expected"), [(None, 8), ("1", 8), ("2", 4), ("3", 2),
                                                 ("8", 1), ("16", 1)])
def test_the_default_shares_the_usable_cores_among_torchruns_local_processes(
        machine, local, expected):
    if local is not None:
        torchrun(machine, local)
    choice = choose_threads()
    assert choice.count == expected
    assert choice.source == "cores"


@pytest.mark.parametrize(("busy", "local", "expected"), [
    (0.2, "1", 8), (1.0, "1", 7), (2.6, "1", 5), (7.9, "1", 1), (30.0, "1", 1), (2.0, "2", 3),
    (1.0, "4", 1)])
def test_the_default_leaves_out_the_cores_others_keep_busy(machine, busy, local, expected):
    machine.setattr(threads, "busy_cores", lambda: busy)
    torchrun(machine, local)
    assert choose_threads().count == expected


STAT_BEFORE = """cpu  900 0 300 1200 100 0 0 0 0 0
cpu0 400 0 100 500 50 0 0 0 0 0
cpu1 500 0 200 700 50 0 0 0 0 0
cpu2 0 0 0 1000 0 0 0 0 0 0
intr 12345
"""
# Over the interval: cpu0 40 busy ticks of 100 (idle 50, iowait 10: both idle); cpu1 100 of
# 100; cpu2 0 of 100.
STAT_AFTER = """cpu  1040 0 300 1360 110 0 0 0 0 0
cpu0 430 0 110 550 60 0 0 0 0 0
cpu1 560 0 240 700 50 0 0 0 0 0
cpu2 0 0 0 1100 0 0 0 0 0 0
intr 12399
"""


@pytest.mark.parametrize(("cpus", "expected"), [(None, 1.4), ({0, 1}, 1.4), ({0}, 0.4),
                                                 ({2}, 0.0), ({1, 2, 7}, 1.0)])
def test_busy_cores_are_the_non_idle_share_of_this_process_cores_between_two_snapshots(
        cpus, expected):
    """Hand-computed: busy = 1 - (idle + iowait) / total for each CPU of the mask, summed."""
    assert threads.busy_between(STAT_BEFORE, STAT_AFTER, cpus) == pytest.approx(expected)


def test_busy_cores_measure_now_not_the_last_minute(monkeypatch):
    """The rule that cost a core on a quiet machine: the 1-minute load average still counts a
    process that has finished. Busy cores come from the CPUs' time during the sample alone,
    so a high load average with idle CPUs reads as idle, and no /proc/stat falls back to it."""
    monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 1.0, 0.5))
    texts = iter([STAT_BEFORE, STAT_BEFORE])  # the same counters twice: no CPU was busy
    monkeypatch.setattr(threads, "_STAT", type("Stat", (), {
        "read_text": staticmethod(lambda encoding: next(texts))}))
    monkeypatch.setattr(threads, "_affinity", lambda: {0, 1})
    assert threads.busy_cores(0.0) == 0.0  # no CPU time passed: nothing busy, whatever the load
    monkeypatch.setattr(threads, "_STAT", Path("/nonexistent/stat"))
    assert threads.busy_cores(0.0) == pytest.approx(1.7)
    with pytest.raises(ValueError):
        threads.busy_between("intr 1\n", "intr 2\n", None)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")
def test_a_busy_neighbour_is_seen_while_it_runs():
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start
        assert threads.busy_cores(0.3) >= 0.7  # one core's worth, whatever else runs
    finally:
        loop.kill()
        loop.wait()


def test_usable_cores_is_the_affinity_mask_capped_by_a_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5}, raising=False)
    quota = tmp_path / "cpu.max"
    read = threads._cgroup_quota
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: read(quota))
    quota.write_text("max 100000\n")
    assert threads.usable_cores() == 4
    quota.write_text("250000 100000\n")  # two and a half CPUs' worth of time
    assert threads.usable_cores() == 2
    quota.write_text("50000 100000\n")  # half a CPU still runs one thread
    assert threads.usable_cores() == 1


@pytest.mark.parametrize("value", ["0", "-2", "two", "99999", "1_000", "+3", "\u0663", "0x4"])
def test_a_bad_thread_variable_is_a_usage_error_naming_it(machine, value):
    machine.setenv(THREADS_ENV, value)
    with pytest.raises(UsageError, match=THREADS_ENV):
        choose_threads()


def test_a_bad_omp_num_threads_is_left_to_the_default(machine):
    machine.setenv("OMP_NUM_THREADS", "auto")  # torch's business, not ours to refuse
    assert choose_threads().count == 8


def _fresh_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (THREADS_ENV, "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "LOCAL_WORLD_SIZE")}
    env.update(extra)
    return env


PROBE = """
import sys
from xmtc_cli.cli import main  # torch loads inside the command, after the waits are settled
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code or 0
import os, torch
print("PROBE", torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY"), code)
"""


def _probe(args: list[str], env: dict[str, str]) -> tuple[int, str, int]:
    """Run `xmtc ARGS` in a fresh python; torch's thread count and the wait policy after it."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE")][-1].split()
    return int(line[1]), line[2], int(line[3])


def test_train_honours_threads_in_a_fresh_process_and_records_them(tiny_data, tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=1)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "xmtc_cli", "train", str(recipe), "--out", str(run),
         "--device", "cpu", "--threads", "3", "train.max_steps=2"],
        env=_fresh_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"CPU threads: 3 (--threads; {_waits_for(3)})" in done.stderr
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["threads"] == 3


@pytest.mark.slow  # six fresh pythons that import torch: a minute on a busy machine
@pytest.mark.parametrize("command", ["train", "predict", "eval"])
def test_every_model_command_sets_the_count_it_is_given(command, tiny_run, tiny_data, tmp_path):
    args = {
        "train": [str(tiny_run.recipe), "--out", str(tmp_path / "run"), "--device", "cpu",
                  "train.max_steps=1"],
        "predict": [str(tiny_run.run / "model.safetensors"),
                    str(tiny_data.raw / "test_texts.txt"), "--device", "cpu"],
        "eval": [str(tiny_run.run / "model.safetensors"), "--data", str(tiny_data.processed),
                 "--device", "cpu"],
    }[command]
    count, policy, code = _probe([command, *args, "--threads", "3"], _fresh_env())
    assert (count, code) == (3, 0)
    assert policy == ("PASSIVE" if 3 > threads.usable_cores() else "None")
    # The environment's count when the option is not given.
    if command == "train":
        args[2] = str(tmp_path / "run2")
    count, _, code = _probe([command, *args], _fresh_env(**{THREADS_ENV: "2"}))
    assert (count, code) == (2, 0)


def _waits_for(count: int) -> str:
    """The header's wait policy of `count` threads on this machine, if quiet."""
    return "OMP_WAIT_POLICY=PASSIVE" if count > threads.usable_cores() else "spin, then sleep"


@pytest.mark.parametrize(("count", "busy", "cores", "local", "expected"), [
    (2, 0.0, 2, 1, None),  # the team has its cores: libgomp's spin, then sleep
    (2, 0.4, 2, 1, None),
    (1, 1.0, 2, 1, None),  # the default beside a busy core: one thread, on the free core
    (2, 1.0, 2, 1, "PASSIVE"),  # a count given beside a busy core: more than the free one
    (3, 0.0, 2, 1, "PASSIVE"),  # more threads than cores
    (3, 0.9, 4, 1, None), (4, 0.9, 4, 1, "PASSIVE"),
    (2, 0.0, 4, 2, None), (3, 0.0, 4, 2, "PASSIVE"),  # torchrun's processes share the cores
])
def test_threads_spin_while_they_have_free_cores_and_sleep_when_they_outnumber_them(
        count, busy, cores, local, expected):
    env: dict[str, str] = {}
    choice = threads.ThreadChoice(count, "cores", cores, local, busy)
    threads.settle_waits(choice, env, torch_loaded=False)
    assert env.get("OMP_WAIT_POLICY") == expected


@pytest.mark.parametrize("busy", [0.0, 0.3, 0.5, 1.0, 1.49, 1.5, 2.6, 7.9])
@pytest.mark.parametrize(("cores", "local"), [(1, 1), (2, 1), (8, 1), (8, 3)])
def test_the_default_count_spins_unless_torchruns_processes_outnumber_the_free_cores(
        busy, cores, local):
    """The rule: the default has no more threads than free cores, so it spins a while (a quiet
    machine needs it; LoadWatch keeps it off others' cores); only torchrun's processes, one
    thread each at least, can outnumber them."""
    env: dict[str, str] = {}
    count = threads.default_count(cores, busy, local)
    threads.settle_waits(threads.ThreadChoice(count, "cores", cores, local, busy), env,
                         torch_loaded=False)
    outnumbered = local > threads.free_cores(cores, busy)
    assert env == ({"OMP_WAIT_POLICY": "PASSIVE"} if outnumbered else {})


@pytest.mark.parametrize("chosen", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10"}])
def test_a_wait_policy_the_user_chose_is_kept(chosen):
    env = dict(chosen)
    threads.settle_waits(threads.ThreadChoice(1, "cores", 2, 1, 1.5), env, torch_loaded=False)
    assert env == chosen
    env = {}  # and nothing once torch (libgomp) is loaded: it read its settings already
    threads.settle_waits(threads.ThreadChoice(1, "cores", 2, 1, 1.5), env, torch_loaded=True)
    assert env == {}


WAITS_PROBE = """
import sys
from xmtc_cli import threads
threads.busy_cores = lambda: 1.5  # a busy machine, and two threads asked for
seen = []
real = threads.settle_waits
threads.settle_waits = lambda choice: seen.append("torch" in sys.modules) or real(choice)
from xmtc_cli.cli import main
try:
    main(["train", sys.argv[1], "--out", sys.argv[2], "--device", "cpu", "--threads", "2",
          "train.max_steps=1"])
except SystemExit as exit:
    code = exit.code or 0
import os
print("PROBE", seen, os.environ.get("OMP_WAIT_POLICY"), code)
"""


def test_train_chooses_the_waits_before_torch_loads(tiny_data, tmp_path):
    """In a fresh python on a busy machine, two threads asked for: `xmtc train` settles the
    waits once, before torch is imported (libgomp reads them once, when torch loads it), to
    PASSIVE."""
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=1)
    done = subprocess.run([sys.executable, "-c", WAITS_PROBE, str(recipe), str(tmp_path / "r")],
                          env=_fresh_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE")]
    assert line, done.stderr
    assert line[-1] == "PROBE [False] PASSIVE 0"


class _StopAfterFirstEpoch:
    def on_start(self, info): ...
    def on_step(self, epoch, step, docs, loss): ...
    def on_validate(self, done, total): ...

    def on_epoch_end(self, report):
        raise KeyboardInterrupt


def test_a_resumed_run_keeps_its_thread_count_when_the_default_would_change(
        machine, tiny_data, tmp_path, single_thread):
    from xmtc_cli.config import load_recipe
    from xmtc_cli.training import fit

    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=2))
    machine.setattr(threads, "usable_cores", lambda: 2)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "run", device="cpu", callback=_StopAfterFirstEpoch())
    machine.setattr(threads, "busy_cores", lambda: 1.6)  # the default would now be 1
    assert choose_threads().count == 1
    fit(recipe, tmp_path / "run", device="cpu", resume=True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["threads"] for line in lines] == [2, 2]
    fit(recipe, tmp_path / "again", device="cpu", threads=1)  # given: it wins
    assert json.loads((tmp_path / "again" / "metrics.jsonl").read_text().splitlines()[-1])[
        "threads"] == 1


def _snap(wall: float, stat: str, own: float) -> threads.Snapshot:
    return threads.Snapshot(wall, stat, own)


@pytest.mark.parametrize(("cpus", "own", "expected"), [
    ({0, 1}, 0.6, 0.8),  # 1.4 cores busy over the second, 0.6 of them this process's
    ({0, 1}, 2.0, 0.0),  # more than the cores' busy time (another core): nobody else
    (None, 0.0, 1.4), ({0}, 0.1, 0.3)])
def test_others_are_the_cores_busy_time_less_this_process_own(cpus, own, expected):
    """Hand-computed on STAT_BEFORE/STAT_AFTER (one second apart): busy 1.4 on cpus 0-1."""
    before, after = _snap(10.0, STAT_BEFORE, 5.0), _snap(11.0, STAT_AFTER, 5.0 + own)
    assert threads.others_between(before, after, cpus) == pytest.approx(expected)
    assert threads.others_between(after, after, cpus) == 0.0  # no time passed


def _watch(monkeypatch, choice, others: list[float], seconds: float = 0.0):
    """A LoadWatch whose looks find `others` busy cores in turn (and no /proc/stat reads)."""
    marks = iter(range(100))
    monkeypatch.setattr(threads, "snapshot", lambda: _snap(float(next(marks)), "", 0.0))
    found = iter(others)
    monkeypatch.setattr(threads, "others_between", lambda a, b, cpus: next(found))
    return threads.LoadWatch(choice, seconds)


def test_a_default_count_follows_a_neighbour_that_comes_and_goes(monkeypatch):
    choice = threads.ThreadChoice(2, "cores", 2, 1, 0.0)
    watch = _watch(monkeypatch, choice, [0.1, 0.7, 0.9, 1.0, 0.2])
    assert watch.active
    # quiet; a neighbour takes 0.7 of a core (2 of ours spin beside it); it stays; it leaves
    assert [watch.poll() for _ in range(5)] == [None, 1, None, None, 2]
    assert watch.count == 2 and watch.others == pytest.approx(0.2)


def test_a_resumed_runs_own_count_follows_the_load_too(monkeypatch):
    watch = _watch(monkeypatch, threads.ThreadChoice(1, "the run's own", 4, 1, 0.0), [0.0])
    assert watch.poll() == 4


@pytest.mark.parametrize("choice", [
    threads.ThreadChoice(2, "--threads", 2, 1, 0.0),  # the user's count is theirs
    threads.ThreadChoice(2, "train.threads", 2, 1, 0.0),
    threads.ThreadChoice(2, "XMTC_THREADS", 2, 1, 0.0),
    threads.ThreadChoice(2, "OMP_NUM_THREADS", 2, 1, 0.0),
    threads.ThreadChoice(1, "cores", 4, 2, 0.0),  # torchrun: the other ranks look busy
    threads.ThreadChoice(1, "cores", 1, 1, 0.0),  # one core: nothing to change
])
def test_a_count_the_user_gave_or_torchrun_shares_is_never_changed(monkeypatch, choice):
    watch = _watch(monkeypatch, choice, [1.0, 0.0, 3.0])
    assert not watch.active
    assert [watch.poll() for _ in range(3)] == [None, None, None]


def test_the_watch_looks_at_most_every_so_many_seconds(monkeypatch):
    watch = _watch(monkeypatch, threads.ThreadChoice(2, "cores", 2, 1, 0.0), [1.0],
                   seconds=3600.0)
    monkeypatch.setattr(threads.time, "monotonic", lambda: 5.0)  # 5 s after its first look
    assert watch.poll() is None
    monkeypatch.setattr(threads.time, "monotonic", lambda: 3600.0)
    assert watch.poll() == 1


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")
def test_this_process_own_work_is_not_a_neighbour():
    """A third of a second of this process's CPU time spent spinning reads as busy cores, and
    its own CPU time takes it out again, whatever else runs on the machine: the spin is
    counted in CPU time, not wall time, which a loaded machine stretches."""
    before = threads.snapshot()
    deadline = time.monotonic() + 30.0
    while time.process_time() - before.own < 0.3 and time.monotonic() < deadline:
        pass
    after = threads.snapshot()
    assert after.own - before.own >= 0.3
    own = (after.own - before.own) / (after.wall - before.wall)
    busy = threads.busy_between(before.stat, after.stat, threads._affinity())
    assert busy >= own - 0.1, (own, busy)  # the spinning core, by both clocks
    others = threads.others_between(before, after, threads._affinity())
    assert others == pytest.approx(max(0.0, busy - own), abs=1e-9)


class _Notes(_StopAfterFirstEpoch):
    def __init__(self):
        self.notes = []

    def on_epoch_end(self, report): ...

    def on_notice(self, text):
        self.notes.append(text)


def test_training_applies_and_records_the_count_the_load_asks_for(
        machine, tiny_data, tmp_path, single_thread):
    import torch

    from xmtc_cli.config import load_recipe
    from xmtc_cli.training import fit

    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=1))
    machine.setattr(threads, "usable_cores", lambda: 2)
    looks = iter([1])  # the first look finds a neighbour: one thread; then nothing changes
    machine.setattr(threads.LoadWatch, "poll", lambda self: next(looks, None))
    notes = _Notes()
    fit(recipe, tmp_path / "run", device="cpu", callback=notes)
    assert torch.get_num_threads() == 1
    assert notes.notes == ["CPU threads: 2 -> 1 (other processes kept 0.0 of 2 cores busy)"]
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["threads"] == 1


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_predict_and_eval_follow_the_load_between_batches(
        command, machine, tiny_run, tiny_data, single_thread):
    """A default count on the CPU is looked at between batches: the count the watch asks for
    is applied and told on stderr, and the output is the same as without."""
    import torch
    from conftest import run_cli

    machine.setattr(threads, "usable_cores", lambda: 2)
    args = {
        "predict": ["predict", str(tiny_run.run / "model.safetensors"),
                    str(tiny_data.raw / "test_texts.txt"), "--device", "cpu",
                    "--batch-size", "2"],
        "eval": ["eval", str(tiny_run.run / "model.safetensors"), "--data",
                 str(tiny_data.processed), "--device", "cpu", "--batch-size", "2"],
    }[command]
    looks = []
    machine.setattr(threads.LoadWatch, "poll", lambda self: looks.append(self.active) or (
        1 if len(looks) == 1 else None))
    done = run_cli(*args)
    assert done.code == 0, done.err
    assert len(looks) > 1 and looks[0]  # every batch, the watch of a default count
    assert torch.get_num_threads() == 1
    assert "CPU threads: 2 -> 1 (other processes kept 0.0 of 2 cores busy)" in done.err
    machine.setattr(threads.LoadWatch, "poll", lambda self: None)
    assert run_cli(*args).out == done.out
