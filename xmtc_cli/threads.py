"""How many CPU threads torch uses, how its idle threads wait, and how the count follows the
machine's load while a training runs.

torch on Linux runs its CPU kernels on an OpenMP (libgomp) thread team. A training step is
thousands of small parallel regions (the GRU's time steps, the decoder's N steps), and at the
end of each the threads that finished first wait for the last. libgomp's idle threads spin a
while before they sleep, which wakes the team in microseconds for the next region: on a quiet
2-core machine two spinning threads ran a TIBKAT-shape step 1.5 times faster than two
sleeping (OMP_WAIT_POLICY=PASSIVE) ones, which were slower than one thread (BENCHMARKS.md,
"Speed on the CPU"). On a machine where another process wants a core, the spinning threads
take it from the one thread that still works: two threads ran a step 3-20 times slower than
one. So the waits and the count both follow the load:

- The count: `--threads`, else the recipe's train.threads, else XMTC_THREADS, else
  OMP_NUM_THREADS, else the cores this process may run on (its affinity mask, and a cgroup CPU
  quota where one is set) less the cores other processes keep busy *now* (their busy share
  over a tenth of a second at start, /proc/stat, while the command sleeps), divided among
  torchrun's processes on this machine. Not the load average: it decays over a minute, so a
  command run just after another counted the finished one as a neighbour.
- The waits (`settle_waits`, before torch loads: libgomp reads them once): libgomp's default
  (spin, then sleep) where the team has free cores enough, which the default count always
  has, OMP_WAIT_POLICY=PASSIVE where it has more threads than free cores.
- While a long command runs (`LoadWatch`: training and its validation, predict, eval,
  serve), a default count is checked every few seconds against the cores other processes
  kept busy meanwhile (the cores' busy time less this process's own CPU time), so that a
  neighbour which starts later gets its core within seconds, and the team grows back when it
  ends.
"""

from __future__ import annotations

import math
import os
import sys
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
        return f"{self.count} ({how}; {wait_policy()})"


SPIN_ENV = "GOMP_SPINCOUNT"


def settle_waits(choice: ThreadChoice, environ=None, torch_loaded: bool | None = None) -> None:
    """How idle OpenMP threads wait, for `choice`: OMP_WAIT_POLICY=PASSIVE where the team has
    more threads than free cores (the usable ones less the busy ones; a count the user gave
    can), else libgomp's default (spin a while, then sleep), which the default count, never
    above the free cores, always gets. Nothing where the user chose (OMP_WAIT_POLICY or
    GOMP_SPINCOUNT set) or torch, and with it libgomp, is loaded already: libgomp reads them
    once, when it loads."""
    environ = os.environ if environ is None else environ
    if torch_loaded is None:
        torch_loaded = "torch" in sys.modules
    if torch_loaded or WAIT_POLICY_ENV in environ or SPIN_ENV in environ:
        return
    if choice.count * choice.local_processes > free_cores(choice.cores, choice.busy):
        environ[WAIT_POLICY_ENV] = "PASSIVE"


def choose_before_torch(option: int | None = None, recipe: int | None = None,
                        local_processes: int | None = None) -> ThreadChoice:
    """What a command does before it imports torch: the count (`choose_threads`) and the
    waits that go with it (`settle_waits`); the command applies the count once torch is in
    (`apply_threads`)."""
    choice = choose_threads(option, recipe, local_processes)
    settle_waits(choice)
    return choice


def wait_policy() -> str:
    """The wait policy as the run header shows it."""
    policy = os.environ.get(WAIT_POLICY_ENV)
    return f"{WAIT_POLICY_ENV}={policy}" if policy else "spin, then sleep"


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


@dataclass(frozen=True)
class Snapshot:
    """What `LoadWatch` compares: a clock, /proc/stat's text and this process's CPU time."""

    wall: float  # time.monotonic()
    stat: str
    own: float  # time.process_time(): every thread of this process


def snapshot() -> Snapshot:
    """Now; OSError where there is no /proc/stat."""
    return Snapshot(time.monotonic(), _STAT.read_text(encoding="ascii"), time.process_time())


def others_between(before: Snapshot, after: Snapshot, cpus: set[int] | None) -> float:
    """Cores other processes kept busy between two snapshots: the non-idle time of the `cpus`
    less this process's own CPU time, in cores' worth of the time between them."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, busy_between(before.stat, after.stat, cpus)
               - (after.own - before.own) / wall)


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores other processes keep busy now: the non-idle time of this process's cores (its
    affinity mask) over `seconds` while this process sleeps, less what this process itself
    used meanwhile (`others_between`), from /proc/stat. Where there is none (not Linux), the
    1-minute load average; 0 without either."""
    try:
        before = snapshot()
        time.sleep(seconds)
        return others_between(before, snapshot(), _affinity())
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
    return ThreadChoice(default_count(cores, busy, procs), "cores", cores, procs, busy)


def free_cores(cores: int, busy: float) -> int:
    """`cores` less the `busy` ones, rounded, at least one."""
    return max(1, min(cores, round(cores - busy)))


def default_count(cores: int, busy: float, processes: int = 1) -> int:
    """The default: the free cores shared among `processes`, at least one each."""
    return max(1, free_cores(cores, busy) // processes)


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


WATCH_SECONDS = 10.0
"""How often `LoadWatch` looks at the machine during a long command."""


class LoadWatch:
    """Keeps a default thread count fitted to the load while a long command runs: every
    `seconds`, between two steps, batches or requests (`poll`), the cores other processes kept
    busy since the last look and the count the default would choose for them. Off for a count
    the user gave (--threads, train.threads, the environment: theirs to keep), under torchrun
    (the other processes on this machine would read as neighbours) and where /proc/stat
    cannot be read. A new count changes the rounding of some sums, as any count does, not the
    method."""

    def __init__(self, choice: ThreadChoice, seconds: float = WATCH_SECONDS):
        self.count, self.cores, self.seconds = choice.count, choice.cores, seconds
        self.others = choice.busy
        self._last: Snapshot | None = None
        if (choice.source in ("cores", "the run's own") and choice.local_processes == 1
                and choice.cores > 1):
            try:
                self._last = snapshot()
            except (OSError, ValueError):
                pass

    @property
    def active(self) -> bool:
        return self._last is not None

    def poll(self) -> int | None:
        """The new count where the load since the last look asks for another one, else None;
        looks at most every `seconds`. The caller applies it (`apply_count`)."""
        if self._last is None or time.monotonic() - self._last.wall < self.seconds:
            return None
        try:
            now = snapshot()
            self.others = others_between(self._last, now, _affinity())
        except (OSError, ValueError):
            self._last = None  # /proc/stat went away: keep the count
            return None
        self._last = now
        count = default_count(self.cores, self.others)
        if count == self.count:
            return None
        self.count = count
        return count


def apply_count(count: int) -> None:
    """Change the CPU kernels' thread count of a running process."""
    import torch

    torch.set_num_threads(count)


def follow_load(watch: LoadWatch | None, notice=None) -> int | None:
    """Between two batches of a long command: the count `watch` asks for, applied, and told to
    `notice(text)` (None: nobody); None where it asks for none."""
    count = watch.poll() if watch is not None else None
    if count is None:
        return None
    import torch

    before = torch.get_num_threads()
    apply_count(count)
    if notice is not None:
        notice(f"CPU threads: {before} -> {count} (other processes kept {watch.others:.1f} "
               f"of {watch.cores} cores busy)")
    return count
