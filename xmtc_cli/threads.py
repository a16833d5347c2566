"""How many CPU threads torch uses, and how its idle threads wait.

torch on Linux runs its CPU kernels on an OpenMP (libgomp) thread team. By default libgomp's
idle threads spin for a while before they sleep: at the end of every parallel region the threads
that finished first busy-wait for the last. A training step is thousands of small regions (the
GRU's time steps, the decoder's N steps), so on a machine where another process wants a core,
the spinning threads take the core from the one thread that still works (or from the neighbour,
which then preempts that thread in turn): on a busy 2-core machine a step with two threads ran
17-20 times slower than with one (BENCHMARKS.md, "Speed on the CPU"). With
OMP_WAIT_POLICY=PASSIVE the threads sleep as soon as they wait; libgomp reads it once, when
torch loads it, so `passive_wait` must run before torch is imported (`xmtc_cli/__init__.py`
calls it).

Passive waiting stops the spinning, not the cost of sharing: every parallel region waits for
its slowest thread, so a thread that shares its core with a busy process still stalls the
region each time it is preempted. Under a load of a dozen processes on two cores, two passive
threads were as slow as two spinning ones; one thread was twenty times faster. So the default
count leaves out the cores other processes keep busy *now*: the busy share of this process's
cores over a tenth of a second at start (/proc/stat), while the command itself sleeps. Not the
load average: it decays over a minute, so a command run just after another (a preprocess, a
benchmark's previous child) counted the finished one as a neighbour and dropped a core on a
quiet machine (BENCHMARKS.md, "Speed on the CPU").

The count: `--threads`, else the recipe's train.threads, else XMTC_THREADS, else
OMP_NUM_THREADS, else the cores this process may run on (its affinity mask, and a cgroup CPU
quota where one is set) less the busy ones, divided among torchrun's processes on this machine.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

THREADS_ENV = "XMTC_THREADS"
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
MAX_THREADS = 1024


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a command uses and where it came from (for the run header)."""

    count: int
    source: str  # "--threads", "train.threads", "XMTC_THREADS", "OMP_NUM_THREADS", "cores"
    # or "the run's own" (a resumed run's saved count)
    cores: int  # the cores this process may use (affinity, quota)
    local_processes: int  # torchrun's processes on this machine (1 without torchrun)
    busy: float = 0.0  # cores other processes kept busy at the start (`busy_cores`)

    def describe(self) -> str:
        if self.source == "cores":
            share = (f" / {self.local_processes} processes" if self.local_processes > 1 else "")
            how = f"{self.cores} usable cores, {self.busy:.1f} busy{share}"
        else:
            how = self.source
        return f"{self.count} ({how}; {WAIT_POLICY_ENV}={os.environ.get(WAIT_POLICY_ENV, '?')})"


def passive_wait() -> None:
    """Let idle OpenMP threads sleep instead of spin, unless the user chose a policy. Has an
    effect only before torch (and its libgomp) is loaded."""
    os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    mask = _affinity()
    cores = len(mask) if mask is not None else os.cpu_count() or 1  # no mask: not Linux
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(cores, 1)


def _cgroup_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs' worth of time the cgroup may use (`cpu.max`: "QUOTA PERIOD", or "max ...")."""
    try:
        quota, period = path.read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


SAMPLE_SECONDS = 0.1
"""How long `busy_cores` watches the cores: 10 ticks of the kernel's 100 Hz accounting."""
_STAT = Path("/proc/stat")


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores other processes keep busy now: the non-idle time of this process's cores (its
    affinity mask) over `seconds`, in cores, read from /proc/stat while this process sleeps.
    Where there is no /proc/stat (not Linux), the 1-minute load average; 0 without either."""
    try:
        before = _STAT.read_text(encoding="ascii")
        time.sleep(seconds)
        after = _STAT.read_text(encoding="ascii")
        return busy_between(before, after, _affinity())
    except (OSError, ValueError):
        try:
            return max(0.0, os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0


def busy_between(before: str, after: str, cpus: set[int] | None) -> float:
    """Cores' worth of non-idle time between two /proc/stat snapshots, over the `cpus` (None:
    all): for each, 1 - (idle + iowait) / total of its time between the snapshots, summed.
    ValueError where a snapshot has no per-CPU lines."""
    first, second = _cpu_times(before), _cpu_times(after)
    if not first or not second:
        raise ValueError("no per-CPU lines in /proc/stat")
    busy = 0.0
    for cpu, now in second.items():
        if (cpus is not None and cpu not in cpus) or cpu not in first:
            continue
        delta = [b - a for a, b in zip(first[cpu], now)]
        total = sum(delta[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
        if total > 0:
            busy += 1.0 - (delta[3] + delta[4]) / total
    return max(0.0, busy)


def _cpu_times(stat: str) -> dict[int, list[int]]:
    """cpuN -> its counters (USER_HZ ticks), from /proc/stat's text."""
    out = {}
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and len(fields) >= 8:
            out[int(name[3:])] = [int(x) for x in fields[:8]]
    return out


def _affinity() -> set[int] | None:
    """The CPUs this process may run on (its affinity mask); None where the OS has none."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def choose_threads(option: int | None = None, recipe: int | None = None,
                   local_processes: int | None = None) -> ThreadChoice:
    """The thread count: the first given of --threads, train.threads, XMTC_THREADS,
    OMP_NUM_THREADS; else the usable cores less the busy ones, shared among torchrun's
    `local_processes` on this machine (None: the launch's, xmtc_cli.launch), at least one."""
    if local_processes is None:
        from xmtc_cli.launch import Launch

        local_processes = Launch.from_environ().local_world_size
    cores, procs, busy = usable_cores(), max(1, local_processes), busy_cores()
    for value, source in ((option, "--threads"), (recipe, "train.threads"),
                          (_env_count(THREADS_ENV), THREADS_ENV),
                          (_positive(os.environ.get("OMP_NUM_THREADS")), "OMP_NUM_THREADS")):
        if value is not None:
            return ThreadChoice(int(value), source, cores, procs, busy)
    free = max(1, min(cores, round(cores - busy)))
    return ThreadChoice(max(1, free // procs), "cores", cores, procs, busy)


def _env_count(name: str) -> int | None:
    """A thread count from the environment variable `name` (blank: unset); an error for
    anything else, by the rule every count read from the environment follows (launch.py)."""
    from xmtc_cli.launch import count_variable

    if not os.environ.get(name, "").strip():
        return None
    return count_variable(name, least=1, most=MAX_THREADS, why=" (a thread count)",
                          fix=f"or set it to an integer from 1 to {MAX_THREADS}")


def _positive(text: str | None) -> int | None:
    """OMP_NUM_THREADS as one count, the same rule (ASCII digits); None for anything else:
    OpenMP reads forms of its own (nested lists "4,2"), which stay torch's business."""
    text = str(text).strip()
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) else None


def apply_threads(choice: ThreadChoice) -> None:
    """Make torch use `choice.count` threads for its CPU kernels (and as many for inter-op
    work, which torch lets a process set once, before it first runs any)."""
    import torch

    torch.set_num_threads(choice.count)
    try:
        torch.set_num_interop_threads(choice.count)
    except RuntimeError:  # already set, or parallel work already ran: keep torch's
        pass
