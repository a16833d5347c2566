"""Probe `xmtc` with bad input, faults and misuse: does every case end cleanly?

    PYTHONPATH=. python benchmarks/probe_bad_input.py [--jobs 2] [-k SUBSTRING] [--family F,G]
        [--timeout 90]
        [--memory-gib 4] [--json FILE] [--keep] [--list]

Each case runs the real command line (`python -m xmtc_cli ...`) in a subprocess, in its own
folder of a fresh temporary directory, with a wall-clock limit and an address-space limit
(RLIMIT_AS), against fixtures made once per probe run: a tiny demo corpus, its processed folder
and a checkpoint trained on it for three epochs. A case is CLEAN when every step of it

  * exits with the expected code (1 for a refused input, 2 for a usage error, 130 for SIGINT,
    0 for input that is odd but fine),
  * prints exactly one `error:` line (and at most one `hint:` line) when it fails, none when it
    succeeds, and neither a traceback nor an "unexpected" error,
  * finishes within the time limit and the memory limit,
  * and, over the whole case, leaves every file that existed before it byte-identical (except
    the outputs the case asks for) and no temporary file behind.

Otherwise it is NOT CLEAN, with the reason (traceback, unexpected error, hang, memory, data
loss, wrong exit, message). The probe prints a table (case, family, verdict, reason) and the
summary line "N cases, M clean (P%)". It is not part of the test run: tests/test_bad_input.py
holds the key cases as tests.

Permission cases run without CAP_DAC_OVERRIDE (`setpriv`), so file modes apply to root too.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from references import TINY_RECIPE  # noqa: E402 (the tests' tiny recipe)

GIB = 1 << 30
FEATURE_WIDTH = 6  # D of the side-features fixtures
HINT = "hint:"
MEMORY_WORDS = ("MemoryError", "can't allocate memory", "not enough memory", "out of memory",
                "bad_alloc", "Cannot allocate memory")

# --- what a case is ----------------------------------------------------------------------------

@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float
    timed_out: bool = False


@dataclass
class Step:
    """One `xmtc ARGS` run of a case."""

    args: list
    expect: tuple[int, ...] = (1,)
    stdin: bytes | None = None
    stdout: str | None = None
    """None: captured; "closed": a pipe nobody reads (broken pipe); a path: written there."""
    interrupt: tuple[int, Callable[[Path], bool]] | None = None
    """(signal, condition): send the signal once the condition on the case folder holds."""
    wait_for: Callable[[Path], bool] | None = None
    """Start only once this holds (e.g. another step holds a lock)."""
    background: bool = False
    """Leave it running beside the next steps; it is sent SIGINT at the end (exit 130)."""
    no_dac: bool = False
    """Run without CAP_DAC_OVERRIDE: file permissions apply even to root."""
    fsize: int | None = None
    """RLIMIT_FSIZE in bytes: a disk that is full after that much."""
    check: Callable[[Path, Result], str | None] | None = None
    """A further condition; returns the reason the step is not clean, or None."""
    cwd: str = "."
    timeout: float | None = None
    env: dict[str, str] | None = None
    """Variables added to (or, with value None, removed from) the command's environment."""


@dataclass
class Case:
    name: str
    family: str
    build: Callable[[Path], list[Step]]
    """Writes the case's files into its folder and returns its steps."""
    may_change: tuple[str, ...] = ()
    """Globs (relative to the case folder) of existing files the case may replace."""


@dataclass
class Verdict:
    case: Case
    clean: bool
    reason: str = ""
    seconds: float = 0.0


CASES: list[Case] = []


def case(name: str, family: str, *, may_change: tuple[str, ...] = ()):
    def register(build: Callable[[Path], list[Step]]) -> Callable[[Path], list[Step]]:
        CASES.append(Case(name, family, build, may_change))
        return build
    return register


def add(name: str, family: str, build: Callable[[Path], list[Step]],
        may_change: tuple[str, ...] = ()) -> None:
    CASES.append(Case(name, family, build, may_change))


# --- fixtures ----------------------------------------------------------------------------------

@dataclass
class Fixtures:
    root: Path
    raw: Path = field(init=False)
    proc: Path = field(init=False)
    proc_punct: Path = field(init=False)
    recipe: Path = field(init=False)
    run: Path = field(init=False)
    docs: Path = field(init=False)
    gold: Path = field(init=False)
    pred: Path = field(init=False)
    # Side features: the raw corpus with {split}_features.npy of width FEATURE_WIDTH, its
    # processed folder, a 1-epoch run on it, and the rows of `docs` (test rows 1..20).
    raw_feat: Path = field(init=False)
    proc_feat: Path = field(init=False)
    run_feat: Path = field(init=False)
    docs_feat: Path = field(init=False)

    def __post_init__(self) -> None:
        fx = self.root
        self.raw, self.proc, self.proc_punct = fx / "raw", fx / "proc", fx / "proc-punct"
        self.recipe, self.run = fx / "tiny.yaml", fx / "run"
        self.docs, self.gold, self.pred = fx / "docs.txt", fx / "gold.txt", fx / "pred.txt"
        self.raw_feat, self.proc_feat = fx / "raw-feat", fx / "proc-feat"
        self.run_feat, self.docs_feat = fx / "run-feat", fx / "docs_features.npy"

    @property
    def ckpt(self) -> Path:
        return self.run / "model.safetensors"

    @property
    def ckpt_feat(self) -> Path:
        return self.run_feat / "model.safetensors"


FX: Fixtures  # set by main()


def build_fixtures(root: Path, env: dict[str, str]) -> Fixtures:
    from xmtc_cli.data.synthetic import write_demo_corpus

    fx = Fixtures(root)
    root.mkdir(parents=True)
    write_demo_corpus(fx.raw, seed=0, train_docs=200, test_docs=40)
    for out, extra in ((fx.proc, []), (fx.proc_punct, ["--tokenizer", "punct"])):
        _must([*_xmtc(), "preprocess", fx.raw, "--out", out, "--glove", fx.raw / "vectors.txt",
               *extra], env)
    recipe(fx.recipe, fx.proc, epochs=3)
    _must([*_xmtc(), "train", fx.recipe, "--out", fx.run, "--device", "cpu"], env)
    texts = (fx.raw / "test_texts.txt").read_text().splitlines()[:20]
    labels = (fx.raw / "test_labels.txt").read_text().splitlines()[:20]
    fx.docs.write_text("\n".join(texts) + "\n")
    fx.gold.write_text("\n".join(labels) + "\n")
    fx.pred.write_text("\n".join(" ".join(line.split()[:1]) for line in labels) + "\n")
    # Side features (about 7 s more): the same corpus with random rows, one epoch.
    shutil.copytree(fx.raw, fx.raw_feat)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        docs = len((fx.raw / f"{split}_texts.txt").read_text().splitlines())
        np.save(fx.raw_feat / f"{split}_features.npy",
                rng.normal(size=(docs, FEATURE_WIDTH)).astype(np.float32))
    _must([*_xmtc(), "preprocess", fx.raw_feat, "--out", fx.proc_feat, "--glove",
           fx.raw_feat / "vectors.txt"], env)
    _must([*_xmtc(), "train", recipe(fx.root / "tiny-feat.yaml", fx.proc_feat, epochs=1),
           "--out", fx.run_feat, "--device", "cpu"], env)
    np.save(fx.docs_feat, np.load(fx.raw_feat / "test_features.npy")[:20])
    return fx


def recipe(path: Path, data: Path | str | None = None, epochs: int = 1) -> Path:
    """The tiny recipe over `data` (the fixture's processed folder by default)."""
    path.write_text(TINY_RECIPE.format(data=FX.proc if data is None else data, epochs=epochs))
    return path


def _xmtc() -> list[str]:
    return [sys.executable, "-m", "xmtc_cli"]


def _must(cmd: list, env: dict[str, str]) -> None:
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"fixture command failed: {' '.join(map(str, cmd))}\n{proc.stderr}")


# --- running and judging -----------------------------------------------------------------------

@dataclass
class Options:
    root: Path
    timeout: float
    memory: int
    env: dict[str, str]


# Sets the limits, then becomes the command. A tiny exec wrapper rather than preexec_fn, which is
# unsafe in a process with threads (the pool runs cases from several). It also restores SIGINT:
# a shell starts a background job with SIGINT ignored, and that is inherited across exec.
_LIMITS = ("import os, resource, signal, sys\n"
           "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
           "memory, fsize = int(sys.argv[1]), int(sys.argv[2])\n"
           "resource.setrlimit(resource.RLIMIT_AS, (memory, memory))\n"
           "if os.environ.pop('PROBE_RMCWD', None):\n"
           "    os.rmdir(os.getcwd())\n"
           "if fsize >= 0:\n"
           "    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))\n"
           "os.execv(sys.argv[3], sys.argv[3:])\n")


def run_step(step: Step, folder: Path, opts: Options) -> tuple[subprocess.Popen, Callable]:
    """Start a step; returns the process and a function that waits for its Result."""
    fsize = -1 if step.fsize is None else step.fsize
    cmd = [sys.executable, "-c", _LIMITS, str(opts.memory), str(fsize),
           *_xmtc(), *[str(a) for a in step.args]]
    if step.no_dac and os.geteuid() == 0:
        cmd = ["/usr/bin/setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--",
               *cmd]

    stdout, sink = subprocess.PIPE, None
    if step.stdout == "closed":
        read_end, write_end = os.pipe()
        os.close(read_end)
        stdout = sink = write_end
    elif step.stdout is not None:
        stdout = sink = open(step.stdout, "wb")  # closed once the child has it
    start = time.perf_counter()
    env = dict(opts.env)
    for key, value in (step.env or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value.replace("{case}", str(folder))
    proc = subprocess.Popen(cmd, cwd=folder / step.cwd, env=env,
                            stdin=subprocess.PIPE if step.stdin is not None else subprocess.DEVNULL,
                            stdout=stdout, stderr=subprocess.PIPE, start_new_session=True)
    if isinstance(sink, int):
        os.close(sink)
    elif sink is not None:
        sink.close()
    limit = step.timeout or opts.timeout

    def wait(grace: float | None = None) -> Result:
        """The result; `grace`: seconds from now to finish (else the step's own limit)."""
        timed_out = False
        if step.interrupt is not None:
            sig, when = step.interrupt
            while proc.poll() is None and time.perf_counter() - start < limit:
                if when(folder):
                    proc.send_signal(sig)
                    break
                time.sleep(0.05)
        left = grace if grace is not None else limit - (time.perf_counter() - start)
        try:
            out, err = proc.communicate(step.stdin, timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return Result(proc.returncode, (out or b"").decode("utf-8", "replace"),
                      (err or b"").decode("utf-8", "replace"), time.perf_counter() - start,
                      timed_out)

    return proc, wait


def judge(step: Step, res: Result, folder: Path, limit: float) -> str | None:
    """Why a step's result is not clean, or None."""
    err = res.err
    first = next((ln for ln in err.splitlines() if ln.startswith("error:")),
                 err.strip().splitlines()[-1] if err.strip() else "")
    memory = any(word in err for word in MEMORY_WORDS)
    if res.timed_out:
        return f"hang: still running after {limit:.0f}s"
    if "Traceback" in err:
        last = err.strip().splitlines()[-1]
        return ("memory: " if memory else "traceback: ") + _cut(last, 110)
    if "error: unexpected" in err:
        return ("memory: " if memory else "unexpected error: ") + _cut(
            first.removeprefix("error: unexpected "), 110)
    if res.code not in step.expect:
        if res.code < 0:
            name = signal.Signals(-res.code).name
            what = "memory" if memory or name == "SIGKILL" else "crash"
            return f"{what}: killed by {name}"
        want = "/".join(str(c) for c in step.expect)
        return f"wrong exit: {res.code}, want {want}" + (f" ({_cut(first, 90)})" if first else "")
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    hints = [ln for ln in err.splitlines() if ln.startswith(HINT)]
    if res.code == 0 and errors:
        return f"exit 0 but printed {_cut(errors[0], 90)}"
    if res.code in (1, 130) and len(errors) != 1:
        shown = f" (stderr: {_cut(err.strip(), 80)!r})" if not errors else ""
        return f"exit {res.code} with {len(errors)} error: lines{shown}"
    if res.code == 2 and not errors and "Usage:" not in err + res.out:
        return "usage error without a message"
    if len(hints) > 1:
        return f"{len(hints)} hint: lines"
    if step.check is not None:
        return step.check(folder, res)
    return None


def run_case(case: Case, opts: Options) -> Verdict:
    try:
        return _run_case(case, opts)
    except Exception as exc:  # the probe's own fault: say so, and do not count it as clean
        return Verdict(case, False, f"probe error: {exc!r}")


def _run_case(case: Case, opts: Options) -> Verdict:
    folder = opts.root / "cases" / f"{CASES.index(case):03d}-{_slug(case.name)}"
    folder.mkdir(parents=True)
    start = time.perf_counter()
    try:
        steps = case.build(folder)
    except Exception as exc:
        return Verdict(case, False, f"probe setup failed: {exc!r}")
    before = snapshot(folder)
    reasons, background = [], []
    for number, step in enumerate(steps, start=1):
        if step.wait_for is not None:
            deadline = time.perf_counter() + (step.timeout or opts.timeout)
            while not step.wait_for(folder) and time.perf_counter() < deadline:
                if any(p.poll() is not None for p, _ in background):
                    break
                time.sleep(0.05)
        proc, wait = run_step(step, folder, opts)
        if step.background:
            background.append((proc, wait))
            continue
        res = wait()
        why = judge(step, res, folder, step.timeout or opts.timeout)
        if why:  # the later steps still run: does a resume work after a bad interrupt?
            reasons.append(why if len(steps) == 1 else f"step {number}: {why}")
    for proc, wait in background:  # the run beside: interrupted, it must end as SIGINT says
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        res = wait(grace=60)
        why = judge(Step([], expect=(130, 0)), res, folder, opts.timeout)
        if why:
            reasons.append(f"background run: {why}")
    after = snapshot(folder)
    changed = [p for p, digest in before.items() if after.get(p) != digest
               and not any(Path(p).match(g) for g in case.may_change)]
    if changed:
        reasons.append(f"data loss: {', '.join(changed[:3])} changed or vanished")
    leftovers = [p for p in after if p not in before and re.search(r"\.tmp$|^\.tmp|/\.tmp", p)]
    if leftovers:
        reasons.append(f"temporary file left behind: {leftovers[0]}")
    return Verdict(case, not reasons, "; ".join(reasons), time.perf_counter() - start)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every regular file (and the target of every link) under `folder`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                out[rel] = "link:" + os.readlink(path)
            elif os.path.isfile(path):
                try:
                    with open(path, "rb") as f:
                        out[rel] = hashlib.sha256(f.read()).hexdigest()
                except OSError as exc:
                    out[rel] = f"unreadable:{exc.errno}"
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:80]


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- helpers for building cases ----------------------------------------------------------------

def write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def loop(folder: Path, name: str = "loop") -> Path:
    """A symlink that points to itself."""
    path = folder / name
    os.symlink(name, path)
    return path


def unreadable(path: Path) -> Path:
    path.chmod(0)
    return path


def copy_raw(folder: Path) -> Path:
    raw = folder / "raw"
    shutil.copytree(FX.raw, raw)
    return raw


def copy_run(folder: Path, name: str = "run") -> Path:
    run = folder / name
    shutil.copytree(FX.run, run, ignore=shutil.ignore_patterns(".lock"))
    return run


def lines_out(n_lines: Callable[[Path], int]) -> Callable[[Path, Result], str | None]:
    """A check: stdout has as many lines as the input."""
    def check(folder: Path, res: Result) -> str | None:
        want, got = n_lines(folder), len(res.out.splitlines())
        return None if want == got else f"{got} output lines for {want} documents"
    return check


def exists(*names: str) -> Callable[[Path], bool]:
    return lambda folder: all((folder / n).exists() for n in names)


def err_has(*fragments: str) -> Callable[[Path, Result], str | None]:
    def check(folder: Path, res: Result) -> str | None:
        missing = [f for f in fragments if f not in res.err]
        return f"message lacks {missing[0]!r}" if missing else None
    return check


def no_file(*names: str) -> Callable[[Path, Result], str | None]:
    def check(folder: Path, res: Result) -> str | None:
        there = [n for n in names if (folder / n).exists() or Path(n).is_absolute()
                 and Path(n).exists()]
        return f"wrote {there[0]}" if there else None
    return check


def both(*checks: Callable[[Path, Result], str | None]) -> Callable[[Path, Result], str | None]:
    def check(folder: Path, res: Result) -> str | None:
        return next((r for c in checks if (r := c(folder, res))), None)
    return check


def predict(ckpt, docs, *extra, **kw) -> Step:
    return Step(["predict", ckpt, docs, "--device", "cpu", *extra], **kw)


def evalc(ckpt, data=None, *extra, **kw) -> Step:
    return Step(["eval", ckpt, "--data", data or FX.proc, "--device", "cpu", *extra], **kw)


def evalf(pred, gold, *extra, **kw) -> Step:
    return Step(["eval", "--predictions", pred, "--gold", gold, *extra], **kw)


def train(recipe_path, *extra, **kw) -> Step:
    return Step(["train", recipe_path, "--device", "cpu", *extra], **kw)


def preprocess(source, *extra, **kw) -> Step:
    return Step(["preprocess", source, *extra], **kw)


# --- family: bad paths -------------------------------------------------------------------------

BAD_FILES: dict[str, Callable[[Path], Path]] = {
    "missing": lambda d: d / "missing.txt",
    "dir-for-file": lambda d: (d / "adir").mkdir() or d / "adir",
    "symlink-loop": lambda d: loop(d),
    "broken-symlink": lambda d: (os.symlink("nowhere", d / "dangling"), d / "dangling")[1],
    "unreadable": lambda d: unreadable(write(d / "secret.txt", "a b\n")),
    "dev-null": lambda d: Path("/dev/null"),
    "too-long-name": lambda d: d / ("x" * 300),
}


def _file_slot(command: str, make: Callable[[Callable[[Path], Path]], Callable[[Path], Step]],
               kinds: dict[str, tuple[int, ...]], family: str = "paths") -> None:
    for kind, expect in kinds.items():
        def build(d: Path, kind=kind, expect=expect) -> list[Step]:
            step = make(BAD_FILES[kind])(d)
            step.no_dac = kind == "unreadable"
            step.expect = (1, 2) if step.no_dac else expect  # click checks readable paths
            return [step]
        add(f"{command} {kind}", family, build)


_ALL_FAIL = {k: (1,) for k in BAD_FILES}
_file_slot("train RECIPE", lambda bad: lambda d: train(bad(d), "--dry-run"), _ALL_FAIL)
_file_slot("predict CHECKPOINT", lambda bad: lambda d: predict(bad(d), FX.docs), _ALL_FAIL)
_file_slot("predict DOCS", lambda bad: lambda d: predict(FX.ckpt, bad(d)),
           {**_ALL_FAIL, "dev-null": (0,)})
_FEW = {k: (1,) for k in ("missing", "dir-for-file", "unreadable")}
_file_slot("eval CHECKPOINT", lambda bad: lambda d: evalc(bad(d)), _FEW)
_file_slot("eval --predictions", lambda bad: lambda d: evalf(bad(d), FX.gold),
           {**_ALL_FAIL, "dev-null": (1,)})
_file_slot("eval --gold", lambda bad: lambda d: evalf(FX.pred, bad(d)), _FEW)
_file_slot("preprocess --glove", lambda bad: lambda d: preprocess(FX.raw, "--out", d / "out",
                                                                  "--glove", bad(d)),
           {**_ALL_FAIL, "dev-null": (0, 1)})

BAD_DIRS: dict[str, Callable[[Path], Path]] = {
    "missing": lambda d: d / "nope",
    "file-for-dir": lambda d: write(d / "afile.txt", "hello\n"),
    "symlink-loop": lambda d: loop(d),
    "empty-dir": lambda d: (d / "empty").mkdir() or d / "empty",
    "unreadable-dir": lambda d: unreadable((d / "locked").mkdir() or d / "locked"),
    "dev-null": lambda d: Path("/dev/null"),
}
for _kind in BAD_DIRS:
    add(f"preprocess DIR {_kind}", "paths",
        lambda d, k=_kind: [preprocess(BAD_DIRS[k](d), "--out", d / "out",
                                       no_dac=k == "unreadable-dir")])
    add(f"train data.dir {_kind}", "paths",
        lambda d, k=_kind: [train(recipe(d / "r.yaml", BAD_DIRS[k](d)), "--out", d / "run",
                                  no_dac=k == "unreadable-dir")])
    add(f"eval --data {_kind}", "paths",
        lambda d, k=_kind: [evalc(FX.ckpt, BAD_DIRS[k](d), no_dac=k == "unreadable-dir",
                                  expect=(1, 2) if k == "unreadable-dir" else (1,))])


@case("preprocess --out is a file", "paths")
def _(d):
    return [preprocess(FX.raw, "--out", write(d / "out", "keep me\n"))]


@case("preprocess --out is a folder of other files", "paths")
def _(d):
    write(d / "out" / "thesis.tex", "years of work\n")
    return [preprocess(FX.raw, "--out", d / "out")]


@case("preprocess --out replaces an earlier output", "paths", may_change=("out/*",))
def _(d):
    shutil.copytree(FX.proc, d / "out")
    return [preprocess(FX.raw, "--out", d / "out", expect=(0,))]


@case("preprocess --out under /dev/full", "paths")
def _(d):
    return [preprocess(FX.raw, "--out", "/dev/full/out")]


@case("preprocess --out in an unwritable folder", "paths")
def _(d):
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return [preprocess(FX.raw, "--out", d / "ro" / "out", no_dac=True)]


@case("preprocess --out through a symlink loop", "paths")
def _(d):
    return [preprocess(FX.raw, "--out", loop(d) / "out")]


@case("train --out is a file", "paths")
def _(d):
    return [train(FX.recipe, "--out", write(d / "out", "keep me\n"))]


@case("train --out under /dev/full", "paths")
def _(d):
    return [train(FX.recipe, "--out", "/dev/full/run")]


@case("train --out in an unwritable folder", "paths")
def _(d):
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return [train(FX.recipe, "--out", d / "ro" / "run", no_dac=True)]


@case("train --out holds a finished run", "paths")
def _(d):
    copy_run(d)
    return [train(FX.recipe, "--out", d / "run", check=err_has("already holds a training run"))]


@case("train default folder runs/ is a file", "paths")
def _(d):
    write(d / "runs", "not a folder\n")
    return [train(FX.recipe)]


@case("predict --out is a folder", "paths")
def _(d):
    (d / "outdir").mkdir()
    return [predict(FX.ckpt, FX.docs, "--out", d / "outdir")]


@case("predict --out in a missing folder", "paths")
def _(d):
    return [predict(FX.ckpt, FX.docs, "--out", d / "no" / "such" / "out.txt", expect=(0, 1))]


@case("predict --out in an unwritable folder", "paths")
def _(d):
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return [predict(FX.ckpt, FX.docs, "--out", d / "ro" / "out.txt", no_dac=True)]


@case("predict --out over an unwritable file", "paths")
def _(d):
    write(d / "out.txt", "old\n").chmod(0o444)
    return [predict(FX.ckpt, FX.docs, "--out", d / "out.txt", no_dac=True, expect=(0, 1))]


# --- family: encodings -------------------------------------------------------------------------

SAMPLE = ["rocket launch orbit", "café au lait naïve", "galaxy star telescope"]
ENCODINGS: dict[str, tuple[Callable[[list[str]], bytes], bool]] = {
    # name: (encode lines, valid for a UTF-8 reader)
    "latin-1": (lambda ls: ("\n".join(ls) + "\n").encode("latin-1"), False),
    "utf-16": (lambda ls: ("\n".join(ls) + "\n").encode("utf-16"), False),
    "utf-8-bom": (lambda ls: b"\xef\xbb\xbf" + ("\n".join(ls) + "\n").encode(), True),
    # NUL is no text: refused with its file:line (and a hint at UTF-16 read as UTF-8).
    "nul-bytes": (lambda ls: ("\n".join(ls) + "\n").encode().replace(b" ", b"\0", 1), False),
    "crlf": (lambda ls: ("\r\n".join(ls) + "\r\n").encode(), True),
    "no-final-newline": (lambda ls: "\n".join(ls).encode(), True),
    "cr-only": (lambda ls: ("\r".join(ls) + "\r").encode(), True),
    "invalid-utf8-seq": (lambda ls: ("\n".join(ls) + "\n").encode() + b"\xc0\xaf\xed\xa0\x80\n",
                         False),
    "empty": (lambda ls: b"", True),
    "only-newlines": (lambda ls: b"\n" * len(ls), True),
}


def _n_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


for _enc, (_encode, _valid) in ENCODINGS.items():
    def _predict_docs(d, encode=_encode, valid=_valid):
        data = encode(SAMPLE)
        docs = write(d / "docs.txt", data)
        lines = _n_lines(data)
        return [predict(FX.ckpt, docs, expect=(0,) if valid else (1,),
                        check=lines_out(lambda _: lines) if valid else None)]

    def _predict_stdin(d, encode=_encode, valid=_valid):
        data = encode(SAMPLE)
        lines = _n_lines(data)
        return [predict(FX.ckpt, "-", stdin=data, expect=(0,) if valid else (1,),
                        check=lines_out(lambda _: lines) if valid else None)]

    def _eval_gold(d, encode=_encode, valid=_valid, enc=_enc):
        gold = write(d / "gold.txt", encode(["café b", "c", "d e naïve"]))
        pred = write(d / "pred.txt", encode(["café", "c d", "naïve"]))
        # eval refuses files with no document or no gold label: they could only score zeros.
        ok = valid and enc not in ("empty", "only-newlines")
        return [evalf(pred, gold, "--json", expect=(0,) if ok else (1,))]

    def _recipe(d, encode=_encode, valid=_valid, enc=_enc):
        lines = ["# recette légère", f"data: {{dir: {FX.proc}}}", "train:", "  epochs: 2"]
        ok = valid and enc not in ("empty", "only-newlines", "nul-bytes")  # YAML reads a CR
        return [train(write(d / "r.yaml", encode(lines)), "--dry-run",
                      expect=(0,) if ok else (1,))]

    def _corpus(d, encode=_encode, valid=_valid, enc=_enc):
        raw = copy_raw(d)
        texts = (raw / "train_texts.txt").read_text().splitlines()
        labels = (raw / "train_labels.txt").read_text().splitlines()
        texts[5] = texts[5] + " café naïve"
        write(raw / "train_texts.txt", encode(texts))
        if enc in ("crlf", "no-final-newline", "utf-8-bom", "cr-only", "empty", "only-newlines"):
            write(raw / "train_labels.txt", encode(labels))
        ok = valid and enc not in ("empty", "only-newlines")  # CR-only: one line in each file
        return [preprocess(raw, "--out", d / "out", expect=(0,) if ok else (1,))]

    add(f"predict DOCS {_enc}", "encodings", _predict_docs)
    if _enc in ("latin-1", "utf-16", "crlf", "no-final-newline", "empty"):
        add(f"predict stdin {_enc}", "encodings", _predict_stdin)
    add(f"eval files {_enc}", "encodings", _eval_gold)
    add(f"train RECIPE {_enc}", "encodings", _recipe)
    add(f"preprocess train_texts {_enc}", "encodings", _corpus)


@case("preprocess --encoding latin-1 on latin-1 text", "encodings")
def _(d):
    raw = copy_raw(d)
    text = (raw / "train_texts.txt").read_text().replace("space", "spàce", 3)
    write(raw / "train_texts.txt", text.encode("latin-1"))
    return [preprocess(raw, "--out", d / "out", "--encoding", "latin-1", expect=(0,))]


@case("preprocess --encoding bogus", "encodings")
def _(d):
    return [preprocess(FX.raw, "--out", d / "out", "--encoding", "klingon")]


@case("preprocess --encoding utf-16 on utf-8 text", "encodings")
def _(d):
    return [preprocess(FX.raw, "--out", d / "out", "--encoding", "utf-16")]


@case("preprocess label_names.txt latin-1", "encodings")
def _(d):
    raw = copy_raw(d)
    write(raw / "label_names.txt", "space_travel\tVoyage spatial à la lune\n".encode("latin-1"))
    return [preprocess(raw, "--out", d / "out")]


@case("preprocess --glove latin-1 words", "encodings")
def _(d):
    vectors = write(d / "v.txt", "caf\xe9 0.1 0.2 0.3\nspace 0.1 0.2 0.3\n".encode("latin-1"))
    return [preprocess(FX.raw, "--out", d / "out", "--glove", vectors, expect=(0, 1))]


@case("preprocess --glove binary garbage", "encodings")
def _(d):
    vectors = write(d / "v.txt", os.urandom(100_000))
    return [preprocess(FX.raw, "--out", d / "out", "--glove", vectors, expect=(0, 1))]


@case("preprocess --glove gz that is not gzip", "encodings")
def _(d):
    vectors = write(d / "v.txt.gz", b"space 0.1 0.2\n")
    return [preprocess(FX.raw, "--out", d / "out", "--glove", vectors, expect=(0, 1))]


@case("preprocess --glove truncated gzip", "encodings")
def _(d):
    import gzip
    data = gzip.compress((FX.raw / "vectors.txt").read_bytes())
    vectors = write(d / "v.txt.gz", data[: len(data) // 2])
    return [preprocess(FX.raw, "--out", d / "out", "--glove", vectors)]


# --- family: malformed corpora -----------------------------------------------------------------

def _corpus_case(name: str, change: Callable[[Path], None], expect=(1,), **kw) -> None:
    def build(d: Path) -> list[Step]:
        raw = copy_raw(d)
        change(raw)
        return [preprocess(raw, "--out", d / "out", "--glove", raw / "vectors.txt",
                           expect=expect, **kw)]
    add(f"preprocess {name}", "corpus", build)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _put(path: Path, lines: list[str]) -> None:
    path.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")


_corpus_case("train labels one line short",
             lambda r: _put(r / "train_labels.txt", _lines(r / "train_labels.txt")[:-1]))
_corpus_case("train labels one line long",
             lambda r: _put(r / "train_labels.txt", _lines(r / "train_labels.txt") + ["x"]))
_corpus_case("test texts one line short",
             lambda r: _put(r / "test_texts.txt", _lines(r / "test_texts.txt")[:-1]))
_corpus_case("every train label line empty",
             lambda r: _put(r / "train_labels.txt", [""] * len(_lines(r / "train_labels.txt"))),
             expect=(0, 1))
_corpus_case("some label lines empty",
             lambda r: _put(r / "train_labels.txt",
                            ["" if i % 3 == 0 else ln
                             for i, ln in enumerate(_lines(r / "train_labels.txt"))]),
             expect=(0,))
_corpus_case("every train text empty",
             lambda r: _put(r / "train_texts.txt", [""] * len(_lines(r / "train_texts.txt"))),
             expect=(0, 1))
_corpus_case("a 20 MB document",
             lambda r: _put(r / "train_texts.txt",
                            ["space " * 3_500_000] + _lines(r / "train_texts.txt")[1:]),
             expect=(0,))
_corpus_case("a line of 50,000 labels",
             lambda r: _put(r / "train_labels.txt",
                            [" ".join(f"l{i}" for i in range(50_000))]
                            + _lines(r / "train_labels.txt")[1:]),
             expect=(0,))
_corpus_case("labels separated by tabs and runs of spaces",
             lambda r: _put(r / "train_labels.txt",
                            ["\t  ".join(ln.split()) for ln in _lines(r / "train_labels.txt")]),
             expect=(0,))
_corpus_case("missing train_texts.txt", lambda r: (r / "train_texts.txt").unlink())
_corpus_case("missing test_labels.txt", lambda r: (r / "test_labels.txt").unlink())
_corpus_case("train_texts.txt is a folder",
             lambda r: ((r / "train_texts.txt").unlink(), (r / "train_texts.txt").mkdir()))
_corpus_case("train_labels.txt is a symlink loop",
             lambda r: ((r / "train_labels.txt").unlink(), loop(r, "train_labels.txt")))
_corpus_case("valid_texts.txt without valid_labels.txt",
             lambda r: _put(r / "valid_texts.txt", ["rocket launch"]), expect=(0, 1))
_corpus_case("valid split with mismatched lines",
             lambda r: (_put(r / "valid_texts.txt", ["rocket launch", "galaxy"]),
                        _put(r / "valid_labels.txt", ["space_travel"])))
_corpus_case("label_names.txt without tabs",
             lambda r: _put(r / "label_names.txt", ["space_travel Space travel"]), expect=(0, 1))
_corpus_case("label_names.txt with duplicate labels",
             lambda r: _put(r / "label_names.txt",
                            ["space_travel\tSpace travel", "space_travel\tOther"]),
             expect=(0, 1))
_corpus_case("label_names.txt binary",
             lambda r: write(r / "label_names.txt", os.urandom(5000)))
_corpus_case("one training document",
             lambda r: (_put(r / "train_texts.txt", ["rocket launch"]),
                        _put(r / "train_labels.txt", ["space_travel"])), expect=(0, 1))
_corpus_case("train_texts.txt binary",
             lambda r: write(r / "train_texts.txt", os.urandom(20_000)))
_corpus_case("NUL bytes in labels",
             lambda r: write(r / "train_labels.txt",
                             (r / "train_labels.txt").read_bytes().replace(b" ", b"\0", 5)),
             expect=(1,))
_corpus_case("labels with a million-character label",
             lambda r: _put(r / "train_labels.txt",
                            ["x" * 1_000_000] + _lines(r / "train_labels.txt")[1:]),
             expect=(0,))


@case("preprocess --valid-fraction 0.99 of 3 documents", "corpus")
def _(d):
    raw = copy_raw(d)
    _put(raw / "train_texts.txt", ["rocket", "galaxy", "opera"])
    _put(raw / "train_labels.txt", ["space_travel", "star_gazing", "classical_music"])
    return [preprocess(raw, "--out", d / "out", "--valid-fraction", "0.99", expect=(0, 1))]


def _processed_case(name: str, change: Callable[[Path], None], expect=(1,)) -> None:
    def build(d: Path) -> list[Step]:
        proc = d / "proc"
        shutil.copytree(FX.proc, proc)
        change(proc)
        return [train(recipe(d / "r.yaml", proc), "--out", d / "run", expect=expect),
                evalc(FX.ckpt, proc, expect=expect)]
    add(f"train+eval on processed data: {name}", "corpus", build)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


_processed_case("manifest.json missing", lambda p: (p / "manifest.json").unlink())
_processed_case("manifest.json not JSON", lambda p: write(p / "manifest.json", "{not json"))
_processed_case("manifest.json a list", lambda p: write(p / "manifest.json", "[1, 2]"))
_processed_case("tokens.tsv missing", lambda p: (p / "tokens.tsv").unlink())
_processed_case("tokens.tsv truncated", lambda p: _truncate(p / "tokens.tsv"))
_processed_case("labels.tsv with a short row", lambda p: write(p / "labels.tsv", "x\n"))
_processed_case("train.safetensors truncated", lambda p: _truncate(p / "train.safetensors"))
_processed_case("test.safetensors random bytes",
                lambda p: write(p / "test.safetensors", os.urandom(4000)))
_processed_case("embeddings.safetensors truncated",
                lambda p: _truncate(p / "embeddings.safetensors"))
_processed_case("train.safetensors from another split",  # well-formed: may train
                lambda p: shutil.copy(FX.proc / "test.safetensors", p / "train.safetensors"),
                expect=(0, 1))


# --- family: bad recipes -----------------------------------------------------------------------

def _override(name: str, *overrides: str, expect=(1,), fragment: str | None = None) -> None:
    add(f"train {name}", "recipe",
        lambda d: [train(FX.recipe, *overrides, "--dry-run", expect=expect,
                         check=err_has(fragment) if fragment else None)])


for _ov, _frag in [
    ("train.epochs=three", "is not an integer"), ("train.epochs=2.5", "is not an integer"),
    ("train.epochs=true", "is not an integer"), ("train.epochs=0", "positive integer"),
    ("train.epochs=-3", "positive integer"), ("train.batch_size=0", "positive integer"),
    ("train.batch_size=null", "is not an integer"), ("model.light_conv=maybe", "true or false"),
    ("model.conv_kernels=3", "a list of an integer"), ("model.conv_kernels=[]", "non-empty"),
    ("model.conv_kernels=[0,3]", "positive integers"), ("model.conv_kernels=[a]", "list"),
    ("loss.kind=foo", "one of"), ("loss.scheme=first_n", "one of"),
    ("data.label_order=random", "one of"), ("train.lr=fast", "is not a number"),
    ("train.lr=0", "must be > 0"), ("train.lr=-1", "must be > 0"),
    ("train.grad_clip=0", "must be > 0"), ("train.min_lr=-1e-3", "must be >= 0"),
    ("model.dropout=1", "[0, 1)"), ("model.dropout=-0.1", "[0, 1)"),
    ("loss.ot_iters=0", "positive integer"), ("model.hidden_size=0", "positive integer"),
    ("data.max_src_tokens=0", "positive integer"), ("train.seed=-1", ">= 0"),
    ("name=5", "is not a string"), ("name=null", "is not a string"),
    ("data.dir=5", "is not a string"), ("data.dir=", "is not a string"),
    ("data=5", "data must be a mapping"), ("model=[1,2]", "model must be a mapping"),
    ("loss.kind=cross-entropy", "applies to the matching loss only"),
    ("train.epoch=3", "did you mean train.epochs"), ("trian.epochs=3", "did you mean train"),
    ("foo=1", "unknown key foo"), ("data.dir.sub=1", "is not a section"),
    ("train.epochs", "is not KEY=VALUE"), ("=3", "is not KEY=VALUE"),
    (".lr=3", "unknown key"), ("train..lr=3", "unknown key"),
    ("train.lr=[unclosed", "not valid YAML"), ("train.lr={a: 1}", "is not a number"),
    ("train.lr=!!python/object:os.system x", "not valid YAML"),
    ("train.lr=*alias", "aliases"), ("train.lr=&a 1", None),
]:
    _override(_ov, _ov, expect=(0,) if _frag is None else (1,), fragment=_frag)

_override("train.lr=nan", "train.lr=nan", fragment="is not a number")  # text: numbers are digits
for _ov in ["train.lr=.nan", "train.lr=.inf", "train.lr=-.inf", "train.lr=1e999",
            "train.grad_clip=.nan", "train.weight_decay=.nan", "loss.ot_weight=.inf",
            "loss.ot_beta=.nan", "loss.empty_weight=.nan", "model.global_embedding_tau=.nan",
            "train.log_every=.inf", "model.dropout=.nan", "train.min_lr=.nan"]:
    _override(_ov, _ov, fragment="is not a finite number")

for _name, _ov, _frag in [
    ("train.epochs=10^30", "train.epochs=" + "9" * 30, "larger than"),
    ("train.epochs=<5000 digits>", "train.epochs=" + "9" * 5000, "cannot be read"),
    ("data.max_labels=10^7", "data.max_labels=10000000", "at most 10,000"),
    ("model.hidden_size=2^40", "model.hidden_size=1099511627776", "larger than"),
    ("train.lr=<60,000 nested brackets>", "train.lr=" + "[" * 60_000 + "]" * 60_000,
     "nested deeper"),
    ("train.lr=<100 KB of x>", "train.lr=" + "x" * 100_000, "is not a number"),
]:
    _override(_name, _ov, fragment=_frag)

def only_files(*names: str) -> Callable[[Path, Result], str | None]:
    """A check: the case folder holds these files and nothing else (and /abs does not exist)."""
    def check(folder: Path, res: Result) -> str | None:
        there = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        extra = [p for p in there if p not in names]
        if extra or Path("/abs").exists():
            return f"wrote {extra[0] if extra else '/abs'}"
        return None
    return check


for _name in ["/abs/path", "../x", "..", "a/b", "a/../../x", "-rf", ".hidden", "x" * 101,
              "new\nline", "nul\0byte", "tab\tname"]:
    def _bad_name(d, name=_name):
        r = write(d / "w" / "r.yaml", FX.recipe.read_text().replace(
            "name: tiny", "name: " + json.dumps(name)))
        return [Step(["train", r, "--device", "cpu"], cwd="w",
                     check=both(err_has("name"), only_files("w/r.yaml")))]
    add(f"train name {json.dumps(_name)[:30]}", "recipe", _bad_name)


@case("train name override ../escape", "recipe")
def _(d):
    (d / "w").mkdir()
    return [Step(["train", FX.recipe, "name=../escape", "--device", "cpu"], cwd="w",
                 check=only_files())]


def _recipe_file(name: str, text: str | bytes, expect=(1,), fragment: str | None = None) -> None:
    add(f"train recipe {name}", "recipe",
        lambda d: [train(write(d / "r.yaml", text), "--dry-run", expect=expect,
                         check=err_has(fragment) if fragment else None)])


def _alias_bomb(levels: int = 9) -> str:
    rows = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(rows) + f"\nname: *a{levels - 1}\n"


_recipe_file("alias bomb (434 bytes, 9 levels)", _alias_bomb(), fragment="aliases")
_recipe_file("merge key <<: *x", "base: &b {epochs: 2}\ntrain:\n  <<: *b\n", fragment="aliases")
_recipe_file("deep flow nesting 10^5", "name: " + "[" * 100_000 + "]" * 100_000,
             fragment="nested deeper")
_recipe_file("deep block nesting", "data:\n" + "".join("  " * i + f"k{i}:\n"
                                                       for i in range(1, 200)),
             fragment="nested deeper")
_recipe_file("2 MB file", "data: {dir: x}\n" + "#" * 2_000_000 + "\n", fragment="larger than")
_recipe_file("two documents", "data: {dir: x}\n---\ndata: {dir: y}\n", fragment="not valid YAML")
_recipe_file("a list", "- 1\n- 2\n", fragment="mapping")
_recipe_file("a scalar", "hello\n", fragment="mapping")
_recipe_file("tab indentation", "data:\n\tdir: x\n", fragment="not valid YAML")
_recipe_file("python object tag", "data: !!python/object/apply:os.system ['touch PWNED']\n",
             fragment="not valid YAML")
_recipe_file("binary tag", "data: {dir: x}\nname: !!binary aGk=\n", fragment="not a string")
_recipe_file("list as a key", "? [a, b]\n: 1\n", fragment="not valid YAML")
_recipe_file("a 5000-digit integer", "data: {dir: x}\ntrain: {epochs: " + "9" * 5000 + "}\n",
             fragment="cannot be read")
_recipe_file("a million-character key", "data: {dir: x}\n" + "k" * 999_000 + ": 1\n")
_recipe_file("duplicate keys", "data: {dir: x}\ntrain: {epochs: 2, epochs: 3}\n", expect=(0, 1))
_recipe_file("huge list value", "data: {dir: x}\nmodel: {conv_kernels: [" + "3," * 300_000
             + "3]}\n", expect=(0, 1))


@case("train --method bogus", "recipe")
def _(d):
    return [train(FX.recipe, "--method", "sgn", "--dry-run", check=err_has("did you mean sgm"))]


@case("train --scheme conflicts with loss.scheme", "recipe")
def _(d):
    return [train(FX.recipe, "--scheme", "all", "loss.scheme=first-n", "--dry-run")]


@case("train --scheme bogus", "recipe")
def _(d):
    return [train(FX.recipe, "--scheme", "some", "--dry-run", expect=(2,))]


@case("train data.dir a raw corpus, not processed", "recipe")
def _(d):
    return [train(recipe(d / "r.yaml", FX.raw), "--out", d / "run")]


@case("train model.label_embedding_size null without label vectors", "recipe")
def _(d):
    proc = d / "proc"
    shutil.copytree(FX.proc, proc)
    return [train(recipe(d / "r.yaml", proc), "model.label_embedding_size=null",
                  "--out", d / "run", expect=(0, 1))]


@case("train model.hidden_size=100000 (a 120 GB model)", "recipe")
def _(d):
    return [train(FX.recipe, "model.hidden_size=100000", "--out", d / "run")]


@case("train model.conv_kernels=[1000000]", "recipe")
def _(d):
    return [train(FX.recipe, "model.conv_kernels=[1000000]", "--out", d / "run")]


@case("train data.max_labels=10000 (legal, large)", "recipe")
def _(d):
    return [train(FX.recipe, "data.max_labels=10000", "train.max_steps=1", "--out", d / "run",
                  expect=(0, 1), timeout=240)]


@case("train train.lr=1e9 diverges", "recipe")
def _(d):
    return [train(FX.recipe, "train.lr=1e9", "--out", d / "run",
                  check=both(err_has("diverged"), no_file("run/model.safetensors")))]


@case("train train.lr=10 diverges with a finite loss", "recipe")
def _(d):
    def loss_sane(folder: Path, res: Result) -> str | None:
        lines = (folder / "run" / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(ln)["train_loss"] for ln in lines]
        if res.code == 0 and losses and max(losses) > 100:
            return (f"exit 0 with train loss {max(losses):.0f} (a healthy one is < 5): a diverged "
                    "run saved model.safetensors as its best epoch")
        return None
    return [train(FX.recipe, "train.lr=10", "train.epochs=2", "--out", d / "run", expect=(0, 1),
                  check=loss_sane)]


@case("train succeeds (sanity)", "recipe")
def _(d):
    return [train(FX.recipe, "--out", d / "run", expect=(0,),
                  check=lambda f, r: None if (f / "run" / "model.safetensors").exists()
                  else "no checkpoint")]


# --- family: bad checkpoints -------------------------------------------------------------------

def _ckpt_bytes() -> bytes:
    return FX.ckpt.read_bytes()


def _header(data: bytes) -> tuple[dict, bytes]:
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _with_header(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


def _header_case(name: str, change: Callable[[dict], None], also_eval: bool = False) -> None:
    def build(d: Path) -> list[Step]:
        header, body = _header(_ckpt_bytes())
        change(header)
        path = write(d / "bad.safetensors", _with_header(header, body))
        return [predict(path, FX.docs)] + ([evalc(path)] if also_eval else [])
    add(f"checkpoint header {name}", "checkpoint", build)


def _meta_case(name: str, fragment: str | None = None, also_eval: bool = False,
               expect: tuple[int, ...] = (1,), **changes) -> None:
    def build(d: Path) -> list[Step]:
        header, body = _header(_ckpt_bytes())
        meta = header["__metadata__"]
        for key, value in changes.items():
            if callable(value):
                value = value(json.loads(meta[key]) if key in meta else None)
            if value is None:
                meta.pop(key, None)
            else:
                meta[key] = value if isinstance(value, str) else json.dumps(value)
        path = write(d / "bad.safetensors", _with_header(header, body))
        check = err_has(fragment) if fragment else None
        steps = [predict(path, FX.docs, check=check, expect=expect)]
        return steps + ([evalc(path, check=check, expect=expect)] if also_eval else [])
    add(f"checkpoint meta {name}", "checkpoint", build)


def _bytes_case(name: str, make: Callable[[], bytes], **kw) -> None:
    def build(d: Path) -> list[Step]:
        path = write(d / "bad.safetensors", make())
        return [predict(path, FX.docs, **kw)]
    add(f"checkpoint {name}", "checkpoint", build)


for _cut_at in ["1 byte", "7 bytes", "8 bytes", "mid-header", "header only", "mid-data",
                "last byte missing"]:
    def _truncated(cut_at=_cut_at) -> bytes:
        data = _ckpt_bytes()
        end = 8 + int.from_bytes(data[:8], "little")
        keep = {"1 byte": 1, "7 bytes": 7, "8 bytes": 8, "mid-header": end // 2,
                "header only": end, "mid-data": (end + len(data)) // 2,
                "last byte missing": len(data) - 1}[cut_at]
        return data[:keep]
    _bytes_case(f"truncated: {_cut_at}", _truncated)

_bytes_case("empty file", lambda: b"")
_bytes_case("random bytes (1 MB)", lambda: os.urandom(1 << 20))
_bytes_case("text file", lambda: b"this is not a model\n" * 100)
_bytes_case("header length 2^63", lambda: (1 << 63).to_bytes(8, "little") + b"{}")
_bytes_case("header length beyond the file", lambda: (5000).to_bytes(8, "little") + b"{}")
_bytes_case("header length 1", lambda: (1).to_bytes(8, "little") + b"{")
_bytes_case("header not JSON", lambda: (10).to_bytes(8, "little") + b"{not json}")
_bytes_case("header a JSON list", lambda: (2).to_bytes(8, "little") + b"[]")
_bytes_case("header nested 10^5 deep",
            lambda: (200_006).to_bytes(8, "little") + b'{"a":' + b"[" * 100_000
            + b"]" * 100_000 + b"}")
_bytes_case("gzip of a checkpoint", lambda: __import__("gzip").compress(_ckpt_bytes()))


def _pickle_bytes() -> bytes:
    import torch
    from safetensors.torch import load_file
    path = FX.root / "pickle.pt"
    if not path.exists():
        torch.save(load_file(FX.ckpt), path)
    return path.read_bytes()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


_bytes_case("a torch.save pickle (zip)", _pickle_bytes)
_bytes_case("a pickle that runs code when loaded", lambda: pickle.dumps(_Evil()),
            check=no_file("PWNED"))


@case("checkpoint named model.pt, a pickle that runs code", "checkpoint")
def _(d):
    path = write(d / "model.pt", pickle.dumps(_Evil()))
    return [predict(path, FX.docs, check=no_file("PWNED")), evalc(path, check=no_file("PWNED"))]


_header_case("shape claims 10^9 rows",
             lambda h: h["encoder.embedding.weight"].update(shape=[10**9, 300]), also_eval=True)
_header_case("negative data offsets",
             lambda h: h["output.bias"].update(data_offsets=[-8, 0]))
_header_case("offsets beyond the file",
             lambda h: h["output.bias"].update(data_offsets=[0, 10**12]))
_header_case("reversed offsets",
             lambda h: h["output.bias"].update(data_offsets=[100, 0]))
_header_case("overlapping offsets",
             lambda h: h["output.bias"].update(data_offsets=h["output.weight"]["data_offsets"][:1]
                                               + [h["output.weight"]["data_offsets"][0]
                                                  + 4 * h["output.bias"]["shape"][0]]))
_header_case("dtype F128", lambda h: h["output.bias"].update(dtype="F128"))
_header_case("dtype I64 with matching bytes",
             lambda h: h["output.bias"].update(dtype="I32"))
_header_case("shape a string", lambda h: h["output.bias"].update(shape="[27]"))
_header_case("entry not an object", lambda h: h.update({"output.bias": 7}))
_header_case("metadata not an object", lambda h: h.update(__metadata__=["x"]))
_header_case("metadata values not strings",
             lambda h: h["__metadata__"].update(format_version=1))
_header_case("tensor removed", lambda h: h.pop("output.bias"))

_meta_case("decode_steps 10^7", "decoding steps", also_eval=True,
           sizes=lambda s: {**s, "decode_steps": 10**7})
_meta_case("decode_steps 0", "decoding steps", sizes=lambda s: {**s, "decode_steps": 0})
_meta_case("vocab_size 10^9", "vocab_size", also_eval=True,
           sizes=lambda s: {**s, "vocab_size": 10**9})
_meta_case("num_labels 10^9", "num_labels", sizes=lambda s: {**s, "num_labels": 10**9})
_meta_case("embed_size 10^6", None, sizes=lambda s: {**s, "embed_size": 10**6})
_meta_case("sizes unknown key", "unknown sizes", sizes=lambda s: {**s, "layers": 3})
_meta_case("sizes missing decode_steps", "lacks", sizes=lambda s: {
    k: v for k, v in s.items() if k != "decode_steps"})
_meta_case("sizes a string", None, sizes=lambda s: {**s, "vocab_size": "many"})
_meta_case("sizes a list", None, sizes=[1, 2, 3])
_meta_case("tokens one short", "tokens", tokens=lambda t: t[:-1])
_meta_case("tokens not strings", None, tokens=lambda t: [1] * len(t))
_meta_case("labels one short", "labels", labels=lambda t: t[:-1])
_meta_case("label_names one long", "label_names", label_names=lambda t: t + ["x"])
_meta_case("label_counts negative", None, label_counts=lambda t: [-1] * len(t))
_meta_case("label_counts absent (older file)", None, label_counts=None, xmtc_sha256=None,
           expect=(0,))  # a file of an older xmtc has no checksum either
_meta_case("tokenizer unknown", "tokenizer", tokenizer={"kind": "bpe"})
_meta_case("tokenizer a list", None, tokenizer=["whitespace"])
_meta_case("recipe lr nan", "does not validate",
           recipe=lambda r: {**r, "train": {**r["train"], "lr": float("nan")}})
_meta_case("recipe max_labels 10^7", "does not validate",
           recipe=lambda r: {**r, "data": {**r["data"], "max_labels": 10**7}})
_meta_case("recipe hidden_size 10^6", "does not hold the model", also_eval=True,
           recipe=lambda r: {**r, "model": {**r["model"], "hidden_size": 10**6}})
_meta_case("recipe without light_conv", "does not hold the model",
           recipe=lambda r: {**r, "model": {**r["model"], "light_conv": False}})
_meta_case("recipe with an unknown key", "does not validate", recipe=lambda r: {**r, "x": 1})
_meta_case("recipe a string", None, recipe="hello")
_meta_case("recipe nested 10^5 deep", None, recipe="[" * 100_000 + "]" * 100_000)
_meta_case("format_version 2", "format version 2", format_version="2")
_meta_case("format marker missing", "not an xmtc checkpoint", format=None)
_meta_case("tokens field missing", "damaged metadata", tokens=None)
_meta_case("tokens not JSON", "damaged metadata", tokens='["<pad>", "<un')
_meta_case("package_version 10 KB", "changed after xmtc wrote it",
           package_version="9" * 10_000)  # an edit the checksum sees


def _state_case(name: str, change: Callable[[dict], None], expect=(1,)) -> None:
    def build(d: Path) -> list[Step]:
        from safetensors.torch import load_file

        from xmtc_cli.checkpoint import read_meta, save_checkpoint
        state = load_file(FX.ckpt)
        change(state)
        path = d / "bad.safetensors"
        save_checkpoint(path, state, read_meta(FX.ckpt))
        return [predict(path, FX.docs, expect=expect)]
    add(f"checkpoint tensors {name}", "checkpoint", build)


def _to(name: str, dtype: str) -> Callable[[dict], None]:
    def change(state: dict) -> None:
        import torch
        state[name] = state[name].to(getattr(torch, dtype))
    return change


_state_case("an extra tensor", lambda s: s.update(backdoor=s["output.bias"].clone()))
_state_case("output.bias stored as bfloat16", _to("output.bias", "bfloat16"))
_state_case("output.bias stored as int64", _to("output.bias", "int64"))
_state_case("output.weight transposed", lambda s: s.update({"output.weight": s[
    "output.weight"].t().contiguous()}))
_state_case("weights all NaN", lambda s: [t.fill_(float("nan")) for t in s.values()],
            expect=(0, 1))


@case("checkpoint: a processed-data safetensors file", "checkpoint")
def _(d):
    return [predict(FX.proc / "train.safetensors", FX.docs, check=err_has("not an xmtc")),
            evalc(FX.proc / "embeddings.safetensors")]


@case("checkpoint: train_state.safetensors", "checkpoint")
def _(d):
    return [predict(FX.run / "train_state.safetensors", FX.docs)]


@case("checkpoint: a plain safetensors file", "checkpoint")
def _(d):
    import torch
    from safetensors.torch import save_file
    save_file({"w": torch.ones(3)}, d / "plain.safetensors")
    return [predict(d / "plain.safetensors", FX.docs, check=err_has("not an xmtc"))]


@case("train --resume with a truncated train state", "checkpoint", may_change=("run/*",))
def _(d):
    run = copy_run(d)
    _truncate(run / "train_state.safetensors")
    return [train(FX.recipe, "train.epochs=2", "--out", run, "--resume")]


@case("train --resume with random bytes as train state", "checkpoint", may_change=("run/*",))
def _(d):
    run = copy_run(d)
    write(run / "train_state.safetensors", os.urandom(5000))
    return [train(FX.recipe, "train.epochs=2", "--out", run, "--resume")]


@case("train --resume with a checkpoint as train state", "checkpoint", may_change=("run/*",))
def _(d):
    run = copy_run(d)
    shutil.copy(run / "model.safetensors", run / "train_state.safetensors")
    return [train(FX.recipe, "train.epochs=2", "--out", run, "--resume")]


@case("train --resume with a damaged recipe.yaml and no state", "checkpoint",
      may_change=("run/*",))
def _(d):
    run = d / "run"
    run.mkdir()
    write(run / "recipe.yaml", _alias_bomb())
    return [train(FX.recipe, "--out", run, "--resume")]


# --- family: misuse ----------------------------------------------------------------------------

@case("train --resume on a folder that does not exist", "misuse")
def _(d):
    return [train(FX.recipe, "--out", d / "nope", "--resume",
                  check=no_file("nope"))]


@case("train --resume on an empty folder", "misuse")
def _(d):
    (d / "empty").mkdir()
    return [train(FX.recipe, "--out", d / "empty", "--resume")]


@case("train --resume with another recipe", "misuse")
def _(d):
    run = copy_run(d)
    return [train(FX.recipe, "train.lr=0.5", "--out", run, "--resume",
                  check=err_has("differs"))]


@case("train --resume of a finished run", "misuse", may_change=("run/*",))
def _(d):
    run = copy_run(d)
    return [train(FX.recipe, "--out", run, "--resume", expect=(0,))]


@case("train --resume extends a finished run", "misuse", may_change=("run/*",))
def _(d):
    run = copy_run(d)
    return [train(FX.recipe, "train.epochs=2", "--out", run, "--resume", expect=(0, 1))]


@case("train without --resume into a run folder", "misuse")
def _(d):
    run = copy_run(d)
    return [train(FX.recipe, "--out", run)]


@case("two trainings into one folder at once", "misuse", may_change=("run/*",))
def _(d):
    r = recipe(d / "r.yaml", epochs=200)
    return [train(r, "--out", d / "run", background=True),
            train(r, "--out", d / "run", wait_for=exists("run/recipe.yaml"),
                  check=err_has("in use by another xmtc train"))]


@case("--dry-run with --resume", "misuse")
def _(d):
    return [train(FX.recipe, "--dry-run", "--resume", expect=(0,))]


@case("train --device tpu", "misuse")
def _(d):
    return [train(FX.recipe, "--device", "tpu", expect=(2,))]


@case("train --device cuda without CUDA", "misuse")
def _(d):
    return [train(FX.recipe, "--out", d / "run", "--device", "cuda", expect=(1,))]


@case("predict --device cuda without CUDA", "misuse")
def _(d):
    return [predict(FX.ckpt, FX.docs, "--device", "cuda", expect=(1,))]


@case("train without a recipe", "misuse")
def _(d):
    return [Step(["train"], expect=(2,))]


@case("xmtc without a command", "misuse")
def _(d):
    return [Step([], expect=(0, 2))]


@case("xmtc unknown command", "misuse")
def _(d):
    return [Step(["fit", "x"], expect=(2,))]


@case("xmtc unknown option", "misuse")
def _(d):
    return [Step(["predict", "--frobnicate"], expect=(2,))]


for _opt in [("--batch-size", "0"), ("--batch-size", "-1"), ("--batch-size", "lots"),
             ("--format", "xml"), ("--device", "tpu")]:
    add(f"predict {' '.join(_opt)}", "misuse",
        lambda d, o=_opt: [predict(FX.ckpt, FX.docs, *o, expect=(2,))])


@case("predict without DOCS", "misuse")
def _(d):
    return [Step(["predict", FX.ckpt], expect=(2,))]


@case("predict of an empty file", "misuse")
def _(d):
    return [predict(FX.ckpt, write(d / "e.txt", b""), expect=(0,),
                    check=lambda f, r: "printed output" if r.out else None)]


@case("predict of 100,000 empty lines", "misuse")
def _(d):
    return [predict(FX.ckpt, write(d / "e.txt", b"\n" * 100_000), expect=(0,),
                    check=lines_out(lambda _: 100_000))]


@case("predict of whitespace-only lines", "misuse")
def _(d):
    return [predict(FX.ckpt, write(d / "e.txt", b"  \n\t\n \r\n"), expect=(0,),
                    check=lines_out(lambda _: 3))]


@case("predict of a 50 MB single line", "misuse")
def _(d):
    return [predict(FX.ckpt, write(d / "big.txt", b"rocket " * 7_000_000 + b"\n"),
                    expect=(0,), check=lines_out(lambda _: 1))]


@case("predict of unknown words only", "misuse")
def _(d):
    return [predict(FX.ckpt, write(d / "u.txt", "zzqx ☃ 🚀 \u202e\n"), expect=(0,),
                    check=lines_out(lambda _: 1))]


@case("predict stdin closed", "misuse")
def _(d):
    return [predict(FX.ckpt, "-", expect=(0,))]  # stdin is /dev/null


@case("predict stdin binary", "misuse")
def _(d):
    return [predict(FX.ckpt, "-", stdin=os.urandom(10_000))]


@case("predict reads /dev/zero (an endless line)", "misuse")
def _(d):
    return [predict(FX.ckpt, "/dev/zero", timeout=60)]


@case("predict --out is the DOCS file", "misuse")
def _(d):
    docs = write(d / "docs.txt", FX.docs.read_bytes())
    return [predict(FX.ckpt, docs, "--out", docs, expect=(2,))]  # a usage error


@case("predict --out is the checkpoint", "misuse")
def _(d):
    ckpt = d / "model.safetensors"
    shutil.copy(FX.ckpt, ckpt)
    return [predict(ckpt, FX.docs, "--out", ckpt, expect=(2,))]


@case("predict --out replaces an old output", "misuse", may_change=("out.txt",))
def _(d):
    write(d / "out.txt", "old\n")
    return [predict(FX.ckpt, FX.docs, "--out", d / "out.txt", expect=(0,))]


@case("predict --out on a full disk", "misuse")
def _(d):
    write(d / "out.txt", "old output\n")
    docs = write(d / "docs.txt", (FX.docs.read_text() * 50).encode())
    return [predict(FX.ckpt, docs, "--out", d / "out.txt", fsize=2000)]


@case("predict to stdout on /dev/full", "misuse")
def _(d):
    return [predict(FX.ckpt, FX.docs, stdout="/dev/full")]


@case("predict to a closed pipe", "misuse")
def _(d):
    return [predict(FX.ckpt, FX.docs, stdout="closed", expect=(0,))]


@case("eval --json to a closed pipe", "misuse")
def _(d):
    return [evalf(FX.pred, FX.gold, "--json", stdout="closed", expect=(0,))]


@case("eval to stdout on /dev/full", "misuse")
def _(d):
    return [evalf(FX.pred, FX.gold, "--json", stdout="/dev/full")]


@case("train --dry-run to stdout on /dev/full", "misuse")
def _(d):
    return [train(FX.recipe, "--dry-run", stdout="/dev/full")]


@case("preprocess on a full disk", "misuse")
def _(d):
    return [preprocess(FX.raw, "--out", d / "out", "--glove", FX.raw / "vectors.txt",
                       fsize=20_000)]


@case("train on a full disk", "misuse")
def _(d):
    return [train(FX.recipe, "--out", d / "run", fsize=30_000)]


@case("eval with mismatched files", "misuse")
def _(d):
    return [evalf(write(d / "p.txt", "a\nb\n"), write(d / "g.txt", "a\n"))]


@case("eval of two empty files", "misuse")
def _(d):
    return [evalf(write(d / "p.txt", ""), write(d / "g.txt", ""), "--json", expect=(0, 1))]


@case("eval with CHECKPOINT and --predictions", "misuse")
def _(d):
    return [Step(["eval", FX.ckpt, "--data", FX.proc, "--predictions", FX.pred,
                  "--gold", FX.gold], expect=(2,))]


@case("eval without arguments", "misuse")
def _(d):
    return [Step(["eval"], expect=(2,))]


@case("eval --predictions without --gold", "misuse")
def _(d):
    return [Step(["eval", "--predictions", FX.pred], expect=(2,))]


@case("eval CHECKPOINT without --data", "misuse")
def _(d):
    return [Step(["eval", FX.ckpt], expect=(2,))]


@case("eval --split bogus", "misuse")
def _(d):
    return [evalc(FX.ckpt, FX.proc, "--split", "bogus", check=err_has("no 'bogus' split"))]


@case("eval --split valid", "misuse")
def _(d):
    return [evalc(FX.ckpt, FX.proc, "--split", "valid", "--json", expect=(0,))]


@case("eval --batch-size 0", "misuse")
def _(d):
    return [evalc(FX.ckpt, FX.proc, "--batch-size", "0", expect=(2,))]


@case("eval on data preprocessed with another tokenizer", "misuse")
def _(d):
    return [evalc(FX.ckpt, FX.proc_punct, "--json", expect=(1,))]


@case("eval --data is a raw corpus", "misuse")
def _(d):
    return [evalc(FX.ckpt, FX.raw)]


@case("preprocess unknown dataset name", "misuse")
def _(d):
    return [preprocess("eurlux", "--out", d / "out")]


@case("preprocess named dataset without raw files", "misuse")
def _(d):
    return [preprocess("eurlex", "--raw", d / "nothing", "--out", d / "out")]


for _opt in [("--valid-fraction", "1.5"), ("--valid-fraction", "-1"), ("--max-vocab", "0"),
             ("--tokenizer", "bpe"), ("--seed", "-1"), ("--valid-fraction", "nan")]:
    add(f"preprocess {' '.join(_opt)}", "misuse",
        lambda d, o=_opt: [preprocess(FX.raw, "--out", d / "out", *o, expect=(2,))])


@case("preprocess --valid-fraction 0", "misuse")
def _(d):
    return [preprocess(FX.raw, "--out", d / "out", "--valid-fraction", "0", expect=(0,))]


@case("preprocess --out is the raw folder", "misuse")
def _(d):
    raw = copy_raw(d)
    return [preprocess(raw, "--out", raw)]


@case("preprocess --out is the processed input of a running train", "misuse",
      may_change=("proc/*", "run/*"))
def _(d):
    proc = d / "proc"
    shutil.copytree(FX.proc, proc)
    r = recipe(d / "r.yaml", proc, epochs=200)
    return [train(r, "--out", d / "run", background=True),
            preprocess(FX.raw, "--out", proc, wait_for=exists("run/metrics.jsonl"),
                       expect=(0, 1))]


# --- family: signals ---------------------------------------------------------------------------

@case("SIGINT during train, then --resume", "signals", may_change=("run/*",))
def _(d):
    r = recipe(d / "r.yaml", epochs=4)
    return [train(r, "--out", d / "run", expect=(130,),
                  interrupt=(signal.SIGINT, exists("run/train_state.safetensors")),
                  check=err_has("error: interrupted")),
            train(r, "--out", d / "run", "--resume", expect=(0,), timeout=240,
                  check=lambda f, res: _epochs_done(f / "run", 4))]


@case("SIGINT during train before any save, then --resume", "signals", may_change=("run/*",))
def _(d):
    r = recipe(d / "r.yaml", epochs=1)
    return [train(r, "--out", d / "run", expect=(130,),
                  interrupt=(signal.SIGINT, exists("run/recipe.yaml"))),
            train(r, "--out", d / "run", "--resume", expect=(0,), timeout=240,
                  check=lambda f, res: _epochs_done(f / "run", 1))]


@case("SIGTERM during train, then --resume", "signals", may_change=("run/*",))
def _(d):
    r = recipe(d / "r.yaml", epochs=3)
    return [train(r, "--out", d / "run", expect=(-signal.SIGTERM, 143, 130),
                  interrupt=(signal.SIGTERM, exists("run/train_state.safetensors"))),
            train(r, "--out", d / "run", "--resume", expect=(0,), timeout=240,
                  check=lambda f, res: _epochs_done(f / "run", 3))]


@case("SIGKILL during train, then --resume", "signals", may_change=("run/*",))
def _(d):
    r = recipe(d / "r.yaml", epochs=3)
    return [train(r, "--out", d / "run", expect=(-signal.SIGKILL,),
                  interrupt=(signal.SIGKILL, exists("run/train_state.safetensors"))),
            train(r, "--out", d / "run", "--resume", expect=(0,), timeout=240,
                  check=lambda f, res: _epochs_done(f / "run", 3))]


@case("SIGINT during predict --out", "signals")
def _(d):
    write(d / "out.txt", "old output\n")
    docs = write(d / "docs.txt", (FX.docs.read_text() * 1000).encode())
    return [predict(FX.ckpt, docs, "--out", d / "out.txt", "--batch-size", "8", expect=(130,),
                    interrupt=(signal.SIGINT, lambda f: any(f.glob(".out.txt*"))))]


@case("SIGINT during predict to stdout", "signals")
def _(d):
    docs = write(d / "docs.txt", (FX.docs.read_text() * 1000).encode())
    return [predict(FX.ckpt, docs, "--batch-size", "8", expect=(130,), stdout=str(d / "o.txt"),
                    interrupt=(signal.SIGINT, lambda f: (f / "o.txt").stat().st_size > 0))]


def _epochs_done(run: Path, epochs: int) -> str | None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    done = [json.loads(ln)["epoch"] for ln in lines]
    if done != list(range(1, epochs + 1)):
        return f"metrics.jsonl has epochs {done} after --resume, want 1..{epochs}"
    if not (run / "model.safetensors").exists():
        return "no model.safetensors after --resume"
    return None


# --- family: side features ---------------------------------------------------------------------
# A raw corpus may carry {split}_features.npy/.safetensors, float [documents, D]; a model trained
# on it needs `predict --features FILE` (a row per line of DOCS, width D) and processed data with
# features of its width for `eval`. Every case name starts with "features" (-k features).

def feats(path: Path, rows) -> Path:
    """`rows` saved with np.save at `path` (a .npy whatever the name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, rows)
    return path


def _doc_rows(rows: int | None = None, width: int = FEATURE_WIDTH) -> np.ndarray:
    """The rows of FX.docs (20), cut or repeated to `rows` and `width`."""
    base = np.load(FX.docs_feat)
    rows = len(base) if rows is None else rows
    out = np.resize(base, (rows, base.shape[1]))
    return np.resize(out.T, (width, rows)).T.astype(np.float32).copy()


def fpredict(d: Path, rows, *extra, ckpt=None, docs=None, **kw) -> Step:
    """`predict` of the features-trained checkpoint on DOCS (FX.docs) with --features `rows`
    (an array, saved as f.npy in the case folder, or a path)."""
    path = rows if isinstance(rows, (Path, str)) else feats(d / "f.npy", rows)
    return predict(ckpt or FX.ckpt_feat, docs or FX.docs, "--features", path, *extra, **kw)


def _fcase(name: str, build: Callable[[Path], list[Step]], may_change=()) -> None:
    add(f"features {name}", "features", build, may_change)


# predict: the model and the option must agree
_fcase("predict: features model without --features",
       lambda d: [predict(FX.ckpt_feat, FX.docs, expect=(2,), check=err_has(
           f"trained with side features of width {FEATURE_WIDTH}", "pass --features"))])
_fcase("predict: plain model given --features",
       lambda d: [fpredict(d, _doc_rows(), ckpt=FX.ckpt, expect=(2,),
                           check=err_has("trained without side features"))])
_fcase("predict: sanity, rows of DOCS (jsonl, batches of 7)",
       lambda d: [fpredict(d, _doc_rows(), "--format", "jsonl", "--batch-size", "7",
                           expect=(0,), check=lines_out(lambda _: 20))])
_fcase("predict: sanity, DOCS from stdin",
       lambda d: [fpredict(d, _doc_rows(), docs="-", stdin=FX.docs.read_bytes(), expect=(0,),
                           check=lines_out(lambda _: 20))])
_fcase("predict: integer features are numbers",
       lambda d: [fpredict(d, np.ones((20, FEATURE_WIDTH), dtype=np.int16), expect=(0,),
                           check=lines_out(lambda _: 20))])
_fcase("predict: an empty line with features is labelled",  # README: still labelled
       lambda d: [fpredict(d, _doc_rows(3), docs=write(d / "docs.txt", "rocket\n\ngalaxy\n"),
                           expect=(0,), check=lines_out(lambda _: 3))])

# predict: --features as each kind of bad path (the option is a plain Path: xmtc checks it)
_file_slot("features predict --features",
           lambda bad: lambda d: predict(FX.ckpt_feat, FX.docs, "--features", bad(d)),
           _ALL_FAIL, family="features")


@case("features predict: --features - (stdin is no file)", "features")
def _(d):
    return [predict(FX.ckpt_feat, FX.docs, "--features", "-", stdin=b"", expect=(2,),
                    check=err_has("cannot read standard input"))]


# predict: rows and lines must agree, as DOCS streams in
_fcase("predict: one row too few",
       lambda d: [fpredict(d, _doc_rows(19), check=err_has("has 19 rows"))])
_fcase("predict: one row too many",
       lambda d: [fpredict(d, _doc_rows(21), check=err_has("has 21 rows for 20 documents"))])
_fcase("predict: one row too few, --out not written",
       lambda d: [fpredict(d, _doc_rows(19), "--out", d / "out.txt", "--batch-size", "8",
                           check=both(err_has("has 19 rows"), no_file("out.txt")))])
_fcase("predict: one row too many, --out not written",
       lambda d: [fpredict(d, _doc_rows(21), "--out", d / "out.txt",
                           check=both(err_has("has 21 rows"), no_file("out.txt")))])
_fcase("predict: rows too few, DOCS from stdin",
       lambda d: [fpredict(d, _doc_rows(5), "--batch-size", "4", docs="-",
                           stdin=FX.docs.read_bytes(), check=err_has("has 5 rows"))])
_fcase("predict: rows too many, DOCS from stdin",
       lambda d: [fpredict(d, _doc_rows(40), docs="-", stdin=FX.docs.read_bytes(),
                           check=err_has("has 40 rows for 20 documents"))])
_fcase("predict: no rows for DOCS",
       lambda d: [fpredict(d, _doc_rows(0), check=err_has("has 0 rows"))])
# An empty DOCS with a 0-row file is consistent (0 rows for 0 documents): nothing to label,
# exit 0 and no output, as `predict` of an empty file without features.
_fcase("predict: empty DOCS, 0-row features",
       lambda d: [fpredict(d, _doc_rows(0), docs=write(d / "e.txt", b""), expect=(0,),
                           check=lambda f, r: "printed output" if r.out else None)])
_fcase("predict: empty DOCS, 20 rows",
       lambda d: [fpredict(d, _doc_rows(), docs=write(d / "e.txt", b""),
                           check=err_has("has 20 rows for 0 documents"))])

# predict: the array itself
# numpy reads what is not .npy as a pickle and says "load it unsafely using allow_pickle":
# advice a features file must not get.
_not_pickle = err_has("is not a .npy file")
_fcase("predict: width one more",
       lambda d: [fpredict(d, _doc_rows(width=FEATURE_WIDTH + 1), check=err_has(
           f"width {FEATURE_WIDTH + 1}, the model was trained with {FEATURE_WIDTH}"))])
_fcase("predict: width one less",
       lambda d: [fpredict(d, _doc_rows(width=FEATURE_WIDTH - 1), check=err_has(
           f"width {FEATURE_WIDTH - 1}"))])
_fcase("predict: width 0",
       lambda d: [fpredict(d, np.zeros((20, 0), np.float32), check=err_has("out of range"))])
_fcase("predict: a nan row",
       lambda d: [fpredict(d, np.where(np.arange(20)[:, None] == 4, np.nan, _doc_rows()),
                           check=err_has("row 5 (document 5) holds nan"))])
_fcase("predict: an inf row in the second batch, --out not written",
       lambda d: [fpredict(d, np.where(np.arange(20)[:, None] == 12, -np.inf, _doc_rows()),
                           "--batch-size", "8", "--out", d / "out.txt",
                           check=both(err_has("row 13 (document 13)"), no_file("out.txt")))])
_fcase("predict: float64 overflowing float32",
       lambda d: [fpredict(d, np.full((20, FEATURE_WIDTH), 1e300),
                           check=err_has("row 1 (document 1) holds nan or inf"))])
_fcase("predict: a 1-D array",
       lambda d: [fpredict(d, np.zeros(20, np.float32), check=err_has("not [documents, D]"))])
_fcase("predict: a 3-D array",
       lambda d: [fpredict(d, np.zeros((20, FEATURE_WIDTH, 1), np.float32),
                           check=err_has("not [documents, D]"))])
_fcase("predict: a 0-D array",
       lambda d: [fpredict(d, np.float32(1.0), check=err_has("not [documents, D]"))])
_fcase("predict: a string array",
       lambda d: [fpredict(d, np.full((20, FEATURE_WIDTH), "0.5"), check=err_has("not numbers"))])
_fcase("predict: a bool array",
       lambda d: [fpredict(d, np.ones((20, FEATURE_WIDTH), bool), expect=(0, 1))])
_fcase("predict: a complex array",
       lambda d: [fpredict(d, np.ones((20, FEATURE_WIDTH), np.complex64),
                           check=err_has("not numbers"))])
_fcase("predict: a structured array",
       lambda d: [fpredict(d, np.zeros((20, FEATURE_WIDTH), [("a", "f4"), ("b", "f4")]),
                           check=err_has("not numbers"))])
_fcase("predict: an object array (np.save pickles it)",
       lambda d: [fpredict(d, np.array([[0.5] * FEATURE_WIDTH] * 20, dtype=object),
                           check=err_has("pickle"))])
_fcase("predict: a pickle that runs code, named .npy",
       lambda d: [fpredict(d, write(d / "f.npy", pickle.dumps(_Evil())),
                           check=both(no_file("PWNED"), _not_pickle))])
_fcase("predict: a .npy holding a pickled object that runs code",
       lambda d: [fpredict(d, feats(d / "f.npy", np.array([_Evil()], dtype=object)),
                           check=no_file("PWNED"))])
_fcase("predict: a .npz archive",
       lambda d: [fpredict(d, (np.savez(d / "f.npz", features=_doc_rows()), d / "f.npz")[1],
                           check=err_has("(a zip archive: .npz?)"))])
_fcase("predict: a .npz archive named .npy",
       lambda d: [fpredict(d, (np.savez(d / "f.npz", features=_doc_rows()),
                               (d / "f.npz").rename(d / "f.npy"), d / "f.npy")[2],
                           check=err_has("(a zip archive: .npz?)"))])
_fcase("predict: a CSV file",
       lambda d: [fpredict(d, write(d / "f.csv", "\n".join(
           ",".join(map(str, row)) for row in _doc_rows()) + "\n"), check=_not_pickle)])
_fcase("predict: an empty file", lambda d: [fpredict(d, write(d / "f.npy", b""))])
_fcase("predict: random bytes named .npy",
       lambda d: [fpredict(d, write(d / "f.npy", os.urandom(5000)), check=_not_pickle)])
_fcase("predict: --features /dev/stdin, a pipe",  # memory-mapped: a pipe cannot be
       lambda d: [fpredict(d, "/dev/stdin", stdin=_npy_bytes(_doc_rows()),
                           check=err_has("not a file"))])


def _npy_bytes(rows: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, rows)
    return buf.getvalue()


_fcase("predict: .npy truncated mid-header",
       lambda d: [fpredict(d, write(d / "f.npy", _npy_bytes(_doc_rows())[:40]))])
_fcase("predict: .npy truncated mid-data",
       lambda d: [fpredict(d, write(d / "f.npy", _npy_bytes(_doc_rows())[:-100]))])
_fcase("predict: .npy header claims 10^12 rows",
       lambda d: [fpredict(d, write(d / "f.npy", _npy_bytes(_doc_rows()).replace(
           b"(20, ", b"(1000000000000, ", 1)))])
# Refused by numpy's memory map (the file is far shorter than the header says) before the
# width is compared with MAX_WIDTH: "not a readable .npy array", not "out of range".
_fcase("predict: .npy header claims a width of 10^9",
       lambda d: [fpredict(d, write(d / "f.npy", _npy_bytes(_doc_rows()).replace(
           f"(20, {FEATURE_WIDTH})".encode(), b"(20, 1000000000)", 1)),
           check=err_has("mmap length"))])
_fcase("predict: a big-endian float64 array",
       lambda d: [fpredict(d, _doc_rows().astype(">f8"), expect=(0,),
                           check=lines_out(lambda _: 20))])
_fcase("predict: a Fortran-order array",
       lambda d: [fpredict(d, np.asfortranarray(_doc_rows()), expect=(0,),
                           check=lines_out(lambda _: 20))])


def _st(path: Path, tensors: dict) -> Path:
    from safetensors.numpy import save_file
    save_file(tensors, str(path))
    return path


_fcase("predict: .safetensors (sanity)",
       lambda d: [fpredict(d, _st(d / "f.safetensors", {"features": _doc_rows()}),
                           expect=(0,), check=lines_out(lambda _: 20))])
_fcase("predict: .safetensors with a wrong tensor name",
       lambda d: [fpredict(d, _st(d / "f.safetensors", {"embeddings": _doc_rows()}),
                           check=err_has("not one tensor named 'features'"))])
_fcase("predict: .safetensors with two tensors",
       lambda d: [fpredict(d, _st(d / "f.safetensors", {"features": _doc_rows(),
                                                        "extra": _doc_rows()}),
                           check=err_has("not one tensor named 'features'"))])
_fcase("predict: .safetensors with no tensor",
       lambda d: [fpredict(d, _st(d / "f.safetensors", {}))])
_fcase("predict: .safetensors truncated",
       lambda d: [fpredict(d, write(d / "f.safetensors", _st(
           d / "f.safetensors", {"features": _doc_rows()}).read_bytes()[:-50]))])
_fcase("predict: .safetensors random bytes",
       lambda d: [fpredict(d, write(d / "f.safetensors", os.urandom(5000)))])
_fcase("predict: .safetensors of float16",
       lambda d: [fpredict(d, _st(d / "f.safetensors", {"features": _doc_rows().astype(
           np.float16)}), expect=(0,), check=lines_out(lambda _: 20))])
_fcase("predict: .safetensors of int64",
       lambda d: [fpredict(d, _st(d / "f.safetensors", {"features": _doc_rows().astype(
           np.int64)}), expect=(0,), check=lines_out(lambda _: 20))])
_fcase("predict: a .npy named .safetensors",
       lambda d: [fpredict(d, feats(d / "f.safetensors", _doc_rows()))])
_fcase("predict: a .safetensors named .npy",
       lambda d: [fpredict(d, _st(d / "f.npy", {"features": _doc_rows()}), check=_not_pickle)])
_fcase("predict: --out is the features file",
       lambda d: [fpredict(d, _doc_rows(), "--out", d / "f.npy", expect=(2,),
                           check=err_has("is the --features file"))])
_fcase("predict: --out is the features file through a symlink",
       lambda d: [fpredict(d, feats(d / "f.npy", _doc_rows()), "--out",
                           (os.symlink("f.npy", d / "link.npy"), d / "link.npy")[1],
                           expect=(2,))])
_fcase("predict: --features is the checkpoint",
       lambda d: [fpredict(d, FX.ckpt_feat)])
_fcase("predict: --features is the DOCS file",
       lambda d: [fpredict(d, FX.docs, check=_not_pickle)])


# preprocess: the raw corpus's feature files
def _feat_corpus(name: str, change: Callable[[Path], object], expect=(1,),
                 fragment: str | None = None, extra: tuple = (), check=None, **kw) -> None:
    """preprocess of a copy of the featured raw corpus changed by `change`; a refusal writes
    no output folder."""
    def build(d: Path) -> list[Step]:
        raw = d / "raw"
        shutil.copytree(FX.raw_feat, raw)
        change(raw)
        checks = [c for c in (check, err_has(fragment) if fragment else None,
                              no_file("out") if expect == (1,) else None) if c]
        return [preprocess(raw, "--out", d / "out", *extra, expect=expect,
                           check=both(*checks) if checks else None, **kw)]
    _fcase(f"preprocess: {name}", build)


def _raw_rows(raw: Path, split: str) -> np.ndarray:
    return np.load(raw / f"{split}_features.npy")


def _valid_has_rows(folder: Path, res: Result) -> str | None:
    """A check: the processed valid split has its held-out documents' rows of train's file."""
    from xmtc_cli.data.processed import load_processed
    data = load_processed(folder / "out")
    valid = data.splits.get("valid")
    if valid is None or valid.features is None:
        return "no valid split with features"
    train_rows = np.load(folder / "raw" / "train_features.npy")
    if not all((train_rows == row).all(axis=1).any() for row in valid.features):
        return "a valid row is not a row of train_features.npy"
    if len(valid) + len(data.splits["train"]) != len(train_rows):
        return "documents dropped between train and valid"
    return None


_feat_corpus("sanity", lambda r: None, expect=(0,))
_feat_corpus("valid held out of train keeps its rows", lambda r: None, expect=(0,),
             extra=("--valid-fraction", "0.2"), check=_valid_has_rows)
_feat_corpus("features for train only", lambda r: (r / "test_features.npy").unlink(),
             fragment="test_features.npy (or .safetensors) is missing")
_feat_corpus("features for test only", lambda r: (r / "train_features.npy").unlink(),
             fragment="train_features.npy (or .safetensors) is missing")
_feat_corpus("a nan in a train row", lambda r: feats(
    r / "train_features.npy",
    np.where(np.arange(200)[:, None] == 16, np.nan, _raw_rows(r, "train"))),
    fragment="row 17 (document 17) holds nan")
_feat_corpus("an inf in a test row", lambda r: feats(
    r / "test_features.npy",
    np.where(np.arange(40)[:, None] == 39, np.inf, _raw_rows(r, "test"))),
    fragment="row 40 (document 40)")
_feat_corpus("test one row short",
             lambda r: feats(r / "test_features.npy", _raw_rows(r, "test")[:-1]),
             fragment="has 39 rows for 40 documents")
_feat_corpus("train one row long",
             lambda r: feats(r / "train_features.npy", np.concatenate(
                 [_raw_rows(r, "train"), _raw_rows(r, "train")[:1]])),
             fragment="has 201 rows for 200 documents")
_feat_corpus("test of another width",
             lambda r: feats(r / "test_features.npy", np.zeros((40, FEATURE_WIDTH + 1))),
             fragment=f"width {FEATURE_WIDTH + 1}, the training split's have {FEATURE_WIDTH}")
_feat_corpus("both .npy and .safetensors for train",
             lambda r: _st(r / "train_features.safetensors",
                           {"features": _raw_rows(r, "train")}), fragment="has both")
_feat_corpus(".safetensors for test (and .npy for train)",
             lambda r: (_st(r / "test_features.safetensors", {"features": _raw_rows(r, "test")}),
                        (r / "test_features.npy").unlink()), expect=(0,))
_feat_corpus("valid_features.npy with valid held out of train",
             lambda r: feats(r / "valid_features.npy", np.zeros((20, FEATURE_WIDTH))),
             fragment="gives features of a validation split")
_feat_corpus("a shipped valid split without its features",
             lambda r: [shutil.copy(r / f"test_{k}.txt", r / f"valid_{k}.txt")
                        for k in ("texts", "labels")],
             fragment="valid_features.npy (or .safetensors) is missing")
_feat_corpus("a shipped valid split with its features",
             lambda r: [shutil.copy(r / f"test_{k}", r / f"valid_{k}")
                        for k in ("texts.txt", "labels.txt", "features.npy")], expect=(0,))
_feat_corpus("train_features.npy is a folder",
             lambda r: ((r / "train_features.npy").unlink(), (r / "train_features.npy").mkdir()),
             fragment="is a folder, not a file")
_feat_corpus("test_features.npy is a broken symlink",
             lambda r: ((r / "test_features.npy").unlink(),
                        os.symlink("nowhere.npy", r / "test_features.npy")))
_feat_corpus("test_features.npy is a symlink loop",
             lambda r: ((r / "test_features.npy").unlink(), loop(r, "test_features.npy")))
_feat_corpus("train_features.npy unreadable",
             lambda r: unreadable(r / "train_features.npy"), no_dac=True,
             fragment="permission denied")
_feat_corpus("train_features.npy a pickle that runs code",
             lambda r: write(r / "train_features.npy", pickle.dumps(_Evil())),
             fragment="is not a .npy file", check=no_file("PWNED"))
_feat_corpus("train_features.npy a 1-D array",
             lambda r: feats(r / "train_features.npy", np.zeros(200)),
             fragment="not [documents, D]")
_feat_corpus("train_features.npy strings",
             lambda r: feats(r / "train_features.npy", np.full((200, 3), "x")),
             fragment="not numbers")
_feat_corpus("train_features.npy truncated",
             lambda r: _truncate(r / "train_features.npy", 0.7))
_feat_corpus("test_features.safetensors with a wrong tensor name",
             lambda r: (_st(r / "test_features.safetensors", {"x": _raw_rows(r, "test")}),
                        (r / "test_features.npy").unlink()), fragment="'features'")


# eval: a features-trained checkpoint and the processed data's features
def _other_width(d: Path, width: int = FEATURE_WIDTH + 2) -> Path:
    """A copy of the featured processed data whose stored features are `width` wide."""
    from safetensors.numpy import load_file, save_file
    proc = d / "proc"
    shutil.copytree(FX.proc_feat, proc)
    manifest = json.loads((proc / "manifest.json").read_text())
    for split in manifest["splits"]:
        arrays = load_file(str(proc / f"{split}.safetensors"))
        arrays["features"] = np.zeros((len(arrays["token_offsets"]) - 1, width), np.float32)
        save_file(arrays, str(proc / f"{split}.safetensors"))
    write(proc / "manifest.json", json.dumps({**manifest, "features": width}))
    return proc


_fcase("eval: sanity, on its own data",
       lambda d: [evalc(FX.ckpt_feat, FX.proc_feat, "--json", expect=(0,))])
_fcase("eval: on processed data without features",
       lambda d: [evalc(FX.ckpt_feat, FX.proc, check=err_has("has none"))])
_fcase("eval: on processed data of another width",
       lambda d: [evalc(FX.ckpt_feat, _other_width(d),
                        check=err_has(f"has features of width {FEATURE_WIDTH + 2}"))])
_fcase("eval: plain model on data with features",  # README: it reads the text alone
       lambda d: [evalc(FX.ckpt, FX.proc_feat, "--json", expect=(0,))])


# train (and eval) on damaged stored features
def _damaged_feat(name: str, change: Callable[[Path], None], expect=(1,)) -> None:
    def build(d: Path) -> list[Step]:
        proc = d / "proc"
        shutil.copytree(FX.proc_feat, proc)
        change(proc)
        return [train(recipe(d / "r.yaml", proc), "--out", d / "run", expect=expect,
                      check=no_file("run/model.safetensors") if expect == (1,) else None),
                evalc(FX.ckpt_feat, proc, expect=expect)]
    _fcase(f"train+eval on processed data: {name}", build)


def _split_arrays(proc: Path, split: str, change: Callable[[dict], None]) -> None:
    from safetensors.numpy import load_file, save_file
    arrays = load_file(str(proc / f"{split}.safetensors"))
    change(arrays)
    save_file(arrays, str(proc / f"{split}.safetensors"))


def _manifest_features(proc: Path, value) -> None:
    manifest = json.loads((proc / "manifest.json").read_text())
    if value is None:
        manifest.pop("features")
    else:
        manifest["features"] = value
    write(proc / "manifest.json", json.dumps(manifest))


_damaged_feat("features tensor missing from train",
              lambda p: _split_arrays(p, "train", lambda a: a.pop("features")))
_damaged_feat("features tensor missing from test",
              lambda p: _split_arrays(p, "test", lambda a: a.pop("features")))
_damaged_feat("features tensor one row short",
              lambda p: _split_arrays(p, "train", lambda a: a.update(
                  features=a["features"][:-1].copy())))
_damaged_feat("features tensor 1-D",
              lambda p: _split_arrays(p, "valid", lambda a: a.update(
                  features=a["features"][:, 0].copy())))
_damaged_feat("features tensor holds nan",
              lambda p: _split_arrays(p, "train", lambda a: a["features"].__setitem__(
                  (3, 1), np.nan)))
_damaged_feat("features tensor float64",
              lambda p: _split_arrays(p, "train", lambda a: a.update(
                  features=a["features"].astype(np.float64))))
_damaged_feat("manifest features one wider",
              lambda p: _manifest_features(p, FEATURE_WIDTH + 1))
_damaged_feat("manifest features removed", lambda p: _manifest_features(p, None))
_damaged_feat("manifest features a string", lambda p: _manifest_features(p, "six"))
_damaged_feat("manifest features true", lambda p: _manifest_features(p, True))
_damaged_feat("manifest features 0", lambda p: _manifest_features(p, 0))
_damaged_feat("manifest features 10^12", lambda p: _manifest_features(p, 10**12))


# --- round three: integrity, links, leftovers, named faults, ignored options, strict values, ----
# --- the torchrun environment, what a run folder records (case names start with "r3 ") -------

def st_read(path: Path) -> tuple[dict, bytearray]:
    """A safetensors file's header (JSON) and its data bytes."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])


def st_write(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * (-(8 + len(h)) % 8)
    path.write_bytes(len(h).to_bytes(8, "little") + h + bytes(data))


def reseal(path: Path) -> None:
    """Give an edited file a checksum that matches it, where this xmtc has checksums: a forger's
    file, so that the checks of the values themselves are what is probed."""
    try:
        from xmtc_cli.tensorfile import reseal as _reseal
    except ImportError:
        return
    _reseal(path)


def edit_meta(path: Path, name: str, change: Callable, forge: bool = False) -> None:
    header, data = st_read(path)
    meta = header["__metadata__"]
    value = json.loads(meta[name]) if name not in ("format", "format_version") else meta[name]
    value = change(value)
    meta[name] = value if isinstance(value, str) and name in ("format", "format_version") \
        else json.dumps(value)
    st_write(path, header, data)
    if forge:
        reseal(path)


def flip_byte(path: Path, where: float) -> None:
    """Flip the bits of one data byte, `where` (0..1) of the way into the data."""
    header, data = st_read(path)
    i = min(int(len(data) * where), len(data) - 1)
    data[i] ^= 0xFF
    st_write(path, header, data)


def swap_tensors(path: Path, prefix: str = "") -> None:
    """Swap the byte ranges of two tensors of the same dtype and shape (and other contents)."""
    header, data = st_read(path)
    groups: dict = {}
    for name, e in header.items():
        if name != "__metadata__" and name.startswith(prefix):
            groups.setdefault((e["dtype"], tuple(e["shape"])), []).append(name)
    for names in groups.values():
        for a in names:
            for b in names:
                ea, eb = header[a]["data_offsets"], header[b]["data_offsets"]
                if a < b and data[ea[0]:ea[1]] != data[eb[0]:eb[1]]:
                    header[a]["data_offsets"], header[b]["data_offsets"] = eb, ea
                    st_write(path, header, data)
                    return
    raise RuntimeError("no two tensors to swap")


def err_lacks(*fragments: str) -> Callable[[Path, Result], str | None]:
    def check(folder: Path, res: Result) -> str | None:
        err = res.err.replace(str(folder), "<case>").lower()  # the case's name is no message
        there = [f for f in fragments if f.lower() in err]
        return f"message has {there[0]!r}" if there else None
    return check


def err_any(*fragments: str) -> Callable[[Path, Result], str | None]:
    def check(folder: Path, res: Result) -> str | None:
        low = res.err.lower()
        return None if any(f.lower() in low for f in fragments) else \
            f"message has none of {list(fragments)}"
    return check


def out_has(*fragments: str) -> Callable[[Path, Result], str | None]:
    def check(folder: Path, res: Result) -> str | None:
        missing = [f for f in fragments if f not in res.out]
        return f"output lacks {missing[0]!r}" if missing else None
    return check


def refused_or(check_ok: Callable[[Path, Result], str | None]) -> Callable:
    """A refusal is fine; a success must pass `check_ok`."""
    def check(folder: Path, res: Result) -> str | None:
        return None if res.code != 0 else check_ok(folder, res)
    return check


def warned_or_refused(folder: Path, res: Result) -> str | None:
    if res.code == 0 and "warning:" not in res.err:
        return "the option had no effect and nothing said so"
    return None


def mode_is(name: str, mode: int) -> Callable[[Path, Result], str | None]:
    def check(folder: Path, res: Result) -> str | None:
        got = (folder / name).stat().st_mode & 0o7777
        return None if got == mode else f"{name} has mode {got:o}, was {mode:o}"
    return check


def none_left(pattern: str) -> Callable[[Path, Result], str | None]:
    def check(folder: Path, res: Result) -> str | None:
        left = sorted(p.name for p in folder.glob(pattern))
        return f"leftover {left[0]} not cleaned up" if left else None
    return check


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def big_docs(folder: Path, times: int = 3000) -> Path:
    text = FX.docs.read_text()
    return write(folder / "big.txt", text * times)


RESUME = ("--resume",)


# integrity: checkpoints and train states carry a checksum; edits are refused as "changed"
for _where in (0.0, 0.37, 0.999):
    add(f"r3 predict with a checkpoint byte flipped at {_where:.0%}", "r3-integrity",
        lambda d, w=_where: (shutil.copy(FX.ckpt, d / "m.safetensors"),
                             flip_byte(d / "m.safetensors", w),
                             [predict(d / "m.safetensors", FX.docs, check=err_has("changed"))])[2])
add("r3 eval with a checkpoint byte flipped", "r3-integrity",
    lambda d: (shutil.copy(FX.ckpt, d / "m.safetensors"), flip_byte(d / "m.safetensors", 0.5),
               [evalc(d / "m.safetensors", check=err_has("changed"))])[2])
add("r3 predict with two checkpoint tensors swapped", "r3-integrity",
    lambda d: (shutil.copy(FX.ckpt, d / "m.safetensors"), swap_tensors(d / "m.safetensors"),
               [predict(d / "m.safetensors", FX.docs, check=err_has("changed"))])[2])
for _field, _change in (
        ("labels", lambda v: [v[1], v[0], *v[2:]]),
        ("label_names", lambda v: None if v is None else [v[1], v[0], *v[2:]]),
        ("tokens", lambda v: [*v[:2], v[3], v[2], *v[4:]]),
        ("extra", lambda v: {**v, "epoch": 99}),
        ("recipe", lambda v: {**v, "name": "edited"}),
        ("tokenizer", lambda v: {**v, "lowercase": not v.get("lowercase", False)}),
        ("label_counts", lambda v: None if v is None else [c + 1 for c in v])):
    add(f"r3 predict with checkpoint metadata {_field} edited", "r3-integrity",
        lambda d, f=_field, c=_change: (
            shutil.copy(FX.ckpt, d / "m.safetensors"), edit_meta(d / "m.safetensors", f, c),
            [predict(d / "m.safetensors", FX.docs, check=err_has("changed"))])[2])
add("r3 predict with last.safetensors edited", "r3-integrity",
    lambda d: (shutil.copy(FX.run / "last.safetensors", d / "m.safetensors"),
               flip_byte(d / "m.safetensors", 0.2),
               [predict(d / "m.safetensors", FX.docs, check=err_has("changed"))])[2])


def _state_case(edit: Callable[[Path], None], *fragments: str):
    def build(d: Path) -> list[Step]:
        run = copy_run(d)
        edit(run / "train_state.safetensors")
        return [train(FX.recipe, "train.epochs=4", "--out", run, "--resume",
                      check=err_any(*fragments) if fragments else None)]
    return build


for _where in (0.01, 0.5, 0.99):
    add(f"r3 resume with a train-state byte flipped at {_where:.0%}", "r3-integrity",
        _state_case(lambda p, w=_where: flip_byte(p, w), "changed"), may_change=("run/*",))
add("r3 resume with two optimiser moments swapped", "r3-integrity",
    _state_case(lambda p: swap_tensors(p, "optim."), "changed"), may_change=("run/*",))
add("r3 resume with two weights swapped in the train state", "r3-integrity",
    _state_case(lambda p: swap_tensors(p, "model."), "changed"), may_change=("run/*",))
add("r3 resume with the train state's step edited", "r3-integrity",
    _state_case(lambda p: edit_meta(p, "state", lambda v: {**v, "step": v["step"] + 7}),
                "changed"), may_change=("run/*",))
add("r3 resume with the train state's recipe edited", "r3-integrity",
    _state_case(lambda p: edit_meta(p, "recipe", lambda v: {**v, "name": "x"}), "changed"),
    may_change=("run/*",))
add("r3 resume with the train state's best_f1 edited", "r3-integrity",
    _state_case(lambda p: edit_meta(p, "state", lambda v: {**v, "best_f1": 1.0}), "changed"),
    may_change=("run/*",))


# strict values restored from files: forged files (checksum recomputed) with impossible values
# (a label may hold spaces: corpora in JSONL/CSV carry any string without a tab or line break)
for _name, _change in (
        ("duplicate tokens", lambda v: [*v[:2], v[2], v[2], *v[4:]]),
        ("duplicate labels", lambda v: [v[0], v[0], *v[2:]] if v else v),
        ("a label with a tab", lambda v: ["a\tb", *v[1:]]),
        ("a label with a newline", lambda v: ["a\nb", *v[1:]]),
        ("an empty label", lambda v: ["", *v[1:]]),
        ("a token with a space", lambda v: [*v[:2], "x y", *v[3:]])):
    _f = "tokens" if "token" in _name else "labels"
    add(f"r3 predict with a forged checkpoint: {_name}", "r3-values",
        lambda d, f=_f, c=_change: (
            shutil.copy(FX.ckpt, d / "m.safetensors"),
            edit_meta(d / "m.safetensors", f, c, forge=True),
            [predict(d / "m.safetensors", FX.docs)])[2])
for _name, _change in (
        ("a negative step", lambda v: {**v, "step": -3}),
        ("a step that is text", lambda v: {**v, "step": "12"}),
        ("an epoch beyond int64", lambda v: {**v, "epoch": 2 ** 70}),
        ("a negative batches_done", lambda v: {**v, "batches_done": -1}),
        ("an unknown key", lambda v: {**v, "colour": "red"}),
        ("a best epoch after the epoch", lambda v: {**v, "best_epoch": v["epoch"] + 5}),
        ("a best_f1 of NaN text", lambda v: {**v, "best_f1": "nan"}),
        ("no step at all", lambda v: {k: x for k, x in v.items() if k != "step"})):
    add(f"r3 resume with a forged train state: {_name}", "r3-values",
        _state_case(lambda p, c=_change: edit_meta(p, "state", c, forge=True)),
        may_change=("run/*",))
add("r3 resume with a forged train state: recipe not JSON", "r3-faults",
    _state_case(lambda p: (lambda h, dd: (h["__metadata__"].__setitem__("recipe", "{oops"),
                                          st_write(p, h, dd), reseal(p)))(*st_read(p))),
    may_change=("run/*",))
add("r3 resume with a forged train state: state not JSON", "r3-faults",
    _state_case(lambda p: (lambda h, dd: (h["__metadata__"].__setitem__("state", "[1,"),
                                          st_write(p, h, dd), reseal(p)))(*st_read(p))),
    may_change=("run/*",))
add("r3 resume with a forged train state: recipe an array", "r3-faults",
    _state_case(lambda p: edit_meta(p, "recipe", lambda v: [1, 2], forge=True)),
    may_change=("run/*",))


# strict values: overrides and recipe files
def _dry(*overrides: str, expect=(0,), check=None):
    return lambda d: [train(FX.recipe, *overrides, "--dry-run", expect=expect, check=check)]


for _ov in ("train.epochs=0x10", "train.epochs=0o17", "train.epochs=1:30", "train.epochs=3.0",
            "train.epochs=1e1", "train.epochs=٣", "train.epochs=.inf", "train.batch_size=0b11",
            "train.seed=12:00:00", "train.lr=.nan", "train.lr=1e999", "train.lr=0x1p-3",
            "train.epochs=99999999999999999999999", "train.epochs=true", "model.hidden_size=16.5",
            "train.checkpoint_every=1:00", "model.dropout=1:2", "train.max_steps=0x7FFF",
            "train.shortlist_hard=-1", "train.shortlist_hard=2.5"):
    add(f"r3 override {_ov} is refused", "r3-values", _dry(_ov, expect=(1, 2)))
for _ov, _want in (("train.epochs=010", "epochs: 10"), ("train.lr=1e-3", "lr: 0.001"),
                   ("train.lr=5E-4", "lr: 0.0005"), ("name=1e3", "name: '1e3'"),
                   ("name=0x1F", "name: '0x1F'"), ("name=1:30", "name: '1:30'"),
                   ("name=2024-01-02", "name: '2024-01-02'"), ("name=yes", "name: 'yes'"),
                   ("name=null", "name: 'null'"), ("name=010", "name: '010'"),
                   ("train.epochs= 7", "epochs: 7"), ("train.lr=+0.5", "lr: 0.5"),
                   ("model.dropout=0", "dropout: 0.0")):
    add(f"r3 override {_ov} means what it says", "r3-values",
        _dry(_ov, expect=(0, 1), check=refused_or(out_has(_want))))
add("r3 a section override merges", "r3-values",
    _dry("train={epochs: 2}", expect=(0, 1),
         check=refused_or(out_has("epochs: 2", "batch_size: 16", "lr: 0.01"))))
add("r3 an empty section override changes nothing", "r3-values",
    _dry("model={}", expect=(0, 1), check=refused_or(out_has("hidden_size: 16"))))
add("r3 a flow section override with two keys merges", "r3-values",
    _dry("model={hidden_size: 8, dropout: 0.5}", expect=(0, 1),
         check=refused_or(out_has("hidden_size: 8", "light_conv: true", "encoder_layers: 1"))))


def _recipe_with(line: str, want: str | None):
    def build(d: Path) -> list[Step]:
        text = TINY_RECIPE.format(data=FX.proc, epochs=1).replace("  epochs: 1\n", line)
        write(d / "r.yaml", text)
        check = refused_or(out_has(want)) if want else None
        return [train(d / "r.yaml", "--dry-run", expect=(0, 1) if want else (1,), check=check)]
    return build


for _line, _want in (("  epochs: 0x10\n", None), ("  epochs: 1:30\n", None),
                     ("  epochs: 1_0\n", None), ("  epochs: 0o7\n", None),
                     ("  epochs: 2.0\n", None), ("  epochs: 1\n  seed: 0b101\n", None),
                     ("  epochs: 1\n  seed: 010\n", "seed: 10"),
                     ("  epochs: 1\n  min_lr: 3e-4\n", "min_lr: 0.0003"),
                     ("  epochs: 1\n  epochs: 2\n", None)):
    add(f"r3 recipe file with {_line.strip()!r}", "r3-values", _recipe_with(_line, _want))


# nothing followed, nothing waited on: planted links, FIFOs and devices in a run folder
def _planted(name: str, kind: str, resume: bool):
    def build(d: Path) -> list[Step]:
        if resume:
            run = copy_run(d)
        else:
            run = d / "run"
            run.mkdir()
        victim = write(d / "victim.txt", "precious\n")
        target = run / name
        if target.exists():
            target.unlink()
        if kind == "link":
            os.symlink(victim, target)
        elif kind == "fifo":
            fifo(target)
        elif kind == "devnull":
            os.symlink("/dev/null", target)
        elif kind == "dir-link":
            (d / "elsewhere").mkdir()
            os.symlink(d / "elsewhere", target)
        extra = ("train.epochs=4", "--resume") if resume else ()
        return [train(FX.recipe, *extra, "--out", run, timeout=60)]
    return build


for _name in ("metrics.jsonl", "recipe.yaml", "train_state.safetensors", "last.safetensors",
              "model.safetensors", ".lock"):
    for _kind in ("link", "fifo"):
        add(f"r3 resume with {_name} a {_kind}", "r3-links", _planted(_name, _kind, True),
            may_change=("run/*",))
for _name in (".lock", ".launch"):
    for _kind in ("link", "fifo"):
        add(f"r3 new run with {_name} a {_kind}", "r3-links", _planted(_name, _kind, False),
            may_change=("run/*",))
add("r3 resume with metrics.jsonl a link to /dev/null", "r3-links",
    _planted("metrics.jsonl", "devnull", True), may_change=("run/*",))
add("r3 resume with metrics.jsonl a link to a folder", "r3-links",
    _planted("metrics.jsonl", "dir-link", True), may_change=("run/*",))
add("r3 predict with a FIFO as the checkpoint", "r3-links",
    lambda d: [predict(fifo(d / "m.safetensors"), FX.docs, timeout=60)])
add("r3 eval with a FIFO as the checkpoint", "r3-links",
    lambda d: [evalc(fifo(d / "m.safetensors"), timeout=60)])
add("r3 predict with /dev/zero as the checkpoint", "r3-links",
    lambda d: [predict("/dev/zero", FX.docs, timeout=60)])


def _proc_with(name: str, kind: str):
    def build(d: Path) -> list[Step]:
        proc = d / "proc"
        shutil.copytree(FX.proc, proc)
        (proc / name).unlink()
        if kind == "fifo":
            fifo(proc / name)
        else:
            os.symlink(FX.proc / name, proc / name)
        return [evalc(FX.ckpt, proc, expect=(0, 1) if kind == "link" else (1,), timeout=60)]
    return build


for _name in ("test.safetensors", "tokens.tsv", "labels.tsv", "manifest.json"):
    add(f"r3 eval on processed data with {_name} a FIFO", "r3-links", _proc_with(_name, "fifo"))
add("r3 train --out '' (the empty string)", "r3-links",
    lambda d: [train(FX.recipe, "--out", "", expect=(1, 2), check=no_file("recipe.yaml"))])
add("r3 train --out $HOME", "r3-links",
    lambda d: ((d / "home").mkdir(), write(d / "home" / "notes.txt", "mine\n"),
               [train(FX.recipe, "--out", d / "home", expect=(1, 2),
                      env={"HOME": "{case}/home"}, check=no_file("home/recipe.yaml"))])[2])
add("r3 preprocess --out $HOME (empty)", "r3-links",
    lambda d: ((d / "home").mkdir(),
               [preprocess(FX.raw, "--out", d / "home", expect=(1, 2),
                           env={"HOME": "{case}/home"}, check=no_file("home/manifest.json"))])[1])
add("r3 preprocess --out ''", "r3-links",
    lambda d: [preprocess(FX.raw, "--out", "", expect=(1, 2))])
add("r3 preprocess --out /", "r3-links",
    lambda d: [preprocess(FX.raw, "--out", "/", expect=(1, 2))])
add("r3 predict --out ''", "r3-links",
    lambda d: [predict(FX.ckpt, FX.docs, "--out", "", expect=(1, 2))])
add("r3 predict --out /", "r3-links",
    lambda d: [predict(FX.ckpt, FX.docs, "--out", "/", expect=(1, 2))])

add("r3 predict --out a FIFO that nobody reads", "r3-links",
    lambda d: [predict(FX.ckpt, FX.docs, "--out", fifo(d / "out.fifo"), timeout=60)])
add("r3 preprocess --glove /dev/zero", "r3-faults",
    lambda d: [preprocess(FX.raw, "--out", d / "p", "--glove", "/dev/zero", timeout=120)])
add("r3 recipe file with a section twice", "r3-values",
    lambda d: [train(write(d / "r.yaml", TINY_RECIPE.format(data=FX.proc, epochs=1)
                           + "train:\n  epochs: 2\n"), "--dry-run")])


# leftovers and permissions
def _killed_then_again(kind: str):
    def build(d: Path) -> list[Step]:
        docs = big_docs(d)
        has_tmp = lambda f: any(f.glob(".pred.txt.*"))  # noqa: E731
        return [predict(FX.ckpt, docs, "--out", d / "pred.txt", expect=(-9, 0),
                        interrupt=(signal.SIGKILL, has_tmp)),
                predict(FX.ckpt, FX.docs, "--out", d / "pred.txt", expect=(0,),
                        check=none_left(".pred.txt.*"))]
    return build


add("r3 predict --out killed, then run again", "r3-leftovers", _killed_then_again("kill"))


def _planted_leftover(name: str, pid: int):
    def build(d: Path) -> list[Step]:
        write(d / f".pred.txt.{pid}.abc123.tmp" if pid else d / f".pred.txt.{name}.tmp", "x\n")
        return [predict(FX.ckpt, FX.docs, "--out", d / "pred.txt", expect=(0,),
                        check=none_left(".pred.txt.*.tmp"))]
    return build


add("r3 predict --out with a leftover of a killed writer (dead pid)", "r3-leftovers",
    _planted_leftover("", 4_000_000), may_change=(".pred.txt.*.tmp", "pred.txt"))
add("r3 preprocess --out killed, then run again", "r3-leftovers",
    lambda d: [preprocess(FX.raw, "--out", d / "p", "--glove", FX.raw / "vectors.txt",
                          expect=(-9, 0),
                          interrupt=(signal.SIGKILL, lambda f: any(f.glob(".p.*.tmp*")))),
               preprocess(FX.raw, "--out", d / "p", expect=(0,), check=none_left(".p.*"))])
for _mode in (0o600, 0o640, 0o660, 0o604, 0o700, 0o755):
    add(f"r3 predict --out keeps mode {_mode:o}", "r3-leftovers",
        lambda d, m=_mode: (write(d / "pred.txt", "old\n"), (d / "pred.txt").chmod(m),
                            [predict(FX.ckpt, FX.docs, "--out", d / "pred.txt", expect=(0,),
                                     check=mode_is("pred.txt", m))])[2],
        may_change=("pred.txt",))
add("r3 preprocess --out keeps the folder's mode 700", "r3-leftovers",
    lambda d: [preprocess(FX.raw, "--out", d / "p", expect=(0,)),
               Step(["preprocess", FX.raw, "--out", d / "p"], expect=(0,),
                    wait_for=lambda f: (f / "p").chmod(0o700) or True,
                    check=mode_is("p", 0o700))])
add("r3 train keeps recipe.yaml's mode 600 on resume", "r3-leftovers",
    lambda d: (copy_run(d), (d / "run" / "recipe.yaml").chmod(0o600),
               [train(FX.recipe, "--out", d / "run", "--resume", expect=(0, 1),
                      check=mode_is("run/recipe.yaml", 0o600))])[2],
    may_change=("run/*",))
add("r3 train keeps metrics.jsonl's mode 600", "r3-leftovers",
    lambda d: (copy_run(d), (d / "run" / "metrics.jsonl").chmod(0o600),
               [train(FX.recipe, "train.max_steps=40", "--out", d / "run", "--resume",
                      expect=(0, 1), check=mode_is("run/metrics.jsonl", 0o600))])[2],
    may_change=("run/*",))


# ordinary faults are named
def _metrics_case(content: bytes):
    def build(d: Path) -> list[Step]:
        run = copy_run(d)
        write(run / "metrics.jsonl", content)
        return [train(FX.recipe, "--out", run, "--resume", expect=(0, 1),
                      check=lambda f, r: None if r.code == 0 or "metrics.jsonl" in r.err
                      else "message does not name metrics.jsonl")]
    return build


for _label, _content in (("not JSON", b"{\"epoch\": 1, oops\n"),
                         ("a line without epoch", b"{\"train_loss\": 1.0}\n"),
                         ("an epoch that is text", b"{\"epoch\": \"one\"}\n"),
                         ("a JSON array line", b"[1, 2]\n"),
                         ("bytes that are not UTF-8", b"{\"epoch\": 1}\n\xff\xfe\n"),
                         ("a NUL-filled tail", b"{\"epoch\": 1}\n" + b"\0" * 64),
                         ("an epoch of null", b"{\"epoch\": null}\n")):
    add(f"r3 resume with metrics.jsonl holding {_label}", "r3-faults", _metrics_case(_content),
        may_change=("run/*",))
for _label, _make in (("gzip data", lambda d: write(d / "docs.txt", b"\x1f\x8b\x08\x00" + bytes(
        range(256)) * 4)), ("the checkpoint", lambda d: FX.ckpt),
        ("a NUL in line 1", lambda d: write(d / "docs.txt", b"some words\x00here\nmore\n")),
        ("a .npy file", lambda d: FX.docs_feat)):
    add(f"r3 predict docs that are {_label}: no UTF-16 hint", "r3-faults",
        lambda d, m=_make: [predict(FX.ckpt, m(d), expect=(1,), check=err_lacks("utf-16"))])
add("r3 predict docs in UTF-16 without a BOM: the hint says UTF-16", "r3-faults",
    lambda d: [predict(FX.ckpt, write(d / "docs.txt", FX.docs.read_text().encode("utf-16-le")),
                       expect=(1,), check=err_has("utf-16"))])
add("r3 eval --gold that is gzip data: no UTF-16 hint", "r3-faults",
    lambda d: [evalf(FX.pred, write(d / "g.gz", b"\x1f\x8b\x08\x00\x00\x00" + b"\0" * 50),
                     check=err_lacks("utf-16"))])
for _where, _make in (("docs", lambda d: predict(FX.ckpt, "/dev/zero", timeout=120)),
                      ("--gold", lambda d: evalf(FX.pred, "/dev/zero", timeout=120)),
                      ("--predictions", lambda d: evalf("/dev/zero", FX.gold, timeout=120))):
    add(f"r3 {_where} /dev/zero: a line that never ends is named", "r3-faults",
        lambda d, m=_make: [(s := m(d), setattr(s, "check", err_has("/dev/zero")), s)[2]])
add("r3 recipe /dev/zero", "r3-faults",
    lambda d: [train("/dev/zero", "--dry-run", check=err_has("/dev/zero"), timeout=120)])
add("r3 relative checkpoint path that does not exist names the folder", "r3-faults",
    lambda d: [predict("nope/model.safetensors", FX.docs, check=err_has(str(d)))])
add("r3 relative docs path that does not exist names the folder", "r3-faults",
    lambda d: [predict(FX.ckpt, "nope.txt", check=err_has(str(d)))])
add("r3 ~ in a checkpoint path is explained", "r3-faults",
    lambda d: [predict("~/model.safetensors", FX.docs, check=err_has("~"))])
add("r3 ~user in a docs path is explained", "r3-faults",
    lambda d: [predict(FX.ckpt, "~nobody/docs.txt", check=err_has("~"))])
add("r3 ~ in a recipe path is explained", "r3-faults",
    lambda d: [train("~/tiny.yaml", "--dry-run", check=err_has("~"))])
add("r3 deleted working folder: predict relative docs", "r3-faults",
    lambda d: ((d / "w").mkdir(),
               [predict(FX.ckpt, "docs.txt", cwd="w", env={"PROBE_RMCWD": "1"},
                        check=err_any("working folder", "current folder"))])[1])
add("r3 deleted working folder: train into runs/", "r3-faults",
    lambda d: ((d / "w").mkdir(),
               [train(FX.recipe, cwd="w", env={"PROBE_RMCWD": "1"},
                      check=err_any("working folder", "current folder"))])[1])
add("r3 deleted working folder: eval files by absolute path", "r3-faults",
    lambda d: ((d / "w").mkdir(),
               [evalf(FX.pred, FX.gold, cwd="w", env={"PROBE_RMCWD": "1"}, expect=(0, 1))])[1])
add("r3 deleted working folder: preprocess with relative --out", "r3-faults",
    lambda d: ((d / "w").mkdir(),
               [preprocess(FX.raw, "--out", "p", cwd="w", env={"PROBE_RMCWD": "1"},
                           check=err_any("working folder", "current folder"))])[1])
for _opt, _val in (("--propensity-a", "1e400"), ("--propensity-b", "inf"),
                   ("--propensity-a", "nan")):
    add(f"r3 eval {_opt} {_val}", "r3-faults",
        lambda d, o=_opt, v=_val: [evalf(FX.pred, FX.gold, "--train-labels", FX.gold, o, v,
                                         expect=(1, 2))])
add("r3 predict --batch-size beyond int64", "r3-faults",
    lambda d: [predict(FX.ckpt, FX.docs, "--batch-size", "1" + "0" * 25, expect=(1, 2))])
add("r3 preprocess --max-vocab beyond int64", "r3-faults",
    lambda d: [preprocess(FX.raw, "--out", d / "p", "--max-vocab", "9" * 30, expect=(1, 2))])
add("r3 preprocess --seed beyond 2**32", "r3-faults",
    lambda d: [preprocess(FX.raw, "--out", d / "p", "--seed", str(2 ** 40), expect=(0, 1, 2))])
add("r3 eval CHECKPOINT --batch-size beyond int64", "r3-faults",
    lambda d: [evalc(FX.ckpt, None, "--batch-size", "9" * 22, expect=(1, 2))])


# the environment: torchrun's variables left in a shell
_FULL = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
         "MASTER_PORT": "29731"}
for _label, _env, _expect in (
        ("WORLD_SIZE=abc", {"WORLD_SIZE": "abc"}, (2,)),
        ("WORLD_SIZE=0", {"WORLD_SIZE": "0"}, (2,)),
        ("WORLD_SIZE=-2", {"WORLD_SIZE": "-2"}, (2,)),
        ("WORLD_SIZE=1.5", {"WORLD_SIZE": "1.5"}, (2,)),
        ("WORLD_SIZE=2 alone", {"WORLD_SIZE": "2"}, (0, 1, 2)),
        ("RANK=1 alone", {"RANK": "1"}, (0, 1, 2)),
        ("RANK=abc", {"RANK": "abc"}, (0, 2)),
        ("LOCAL_RANK=x", {"LOCAL_RANK": "x"}, (0, 2)),
        ("TORCHELASTIC_RESTART_COUNT=abc", {"TORCHELASTIC_RESTART_COUNT": "abc"}, (0, 2)),
        ("TORCHELASTIC_RESTART_COUNT=-1", {"TORCHELASTIC_RESTART_COUNT": "-1"}, (0, 2)),
        ("a complete launch with RANK beyond WORLD_SIZE", {**_FULL, "RANK": "5"}, (2,)),
        ("a complete launch with MASTER_PORT=99999", {**_FULL, "MASTER_PORT": "99999"}, (2,)),
        ("a complete launch with MASTER_PORT=http", {**_FULL, "MASTER_PORT": "http"}, (2,)),
        ("WORLD_SIZE=2 RANK=0 without MASTER_ADDR", {"WORLD_SIZE": "2", "RANK": "0"}, (0, 1, 2)),
        ("WORLD_SIZE=1 RANK=0", {"WORLD_SIZE": "1", "RANK": "0"}, (0,)),
        ("LOCAL_RANK=3 alone", {"LOCAL_RANK": "3"}, (0, 1, 2))):
    add(f"r3 train with {_label} left in the shell", "r3-env",
        lambda d, e=_env, x=_expect: [train(recipe(d / "r.yaml"), "--out", d / "run", env=e,
                                            expect=x, timeout=150)])
add("r3 train with a complete launch whose peers never come", "r3-env",
    lambda d: [train(recipe(d / "r.yaml"), "--out", d / "run", env=_FULL, expect=(1, 2),
                     timeout=240, check=err_has("WORLD_SIZE"))])
add("r3 train RANK=1 alone still reports", "r3-env",
    lambda d: [train(recipe(d / "r.yaml"), "--out", d / "run", env={"RANK": "1"}, expect=(0, 2),
                     timeout=150, check=lambda f, r: None if r.code == 2 or "checkpoint:" in r.out
                     else "exit 0 but nothing reported (a run of rank 1 alone)")])


# no option ignored in silence
add("r3 eval --predictions/--gold with --split valid", "r3-options",
    lambda d: [evalf(FX.pred, FX.gold, "--split", "valid", expect=(0, 2),
                     check=warned_or_refused)])
add("r3 eval --predictions/--gold with --data", "r3-options",
    lambda d: [evalf(FX.pred, FX.gold, "--data", FX.proc, expect=(0, 2), check=warned_or_refused)])
add("r3 eval --predictions/--gold with --batch-size", "r3-options",
    lambda d: [evalf(FX.pred, FX.gold, "--batch-size", "8", expect=(0, 2),
                     check=warned_or_refused)])
add("r3 eval --predictions/--gold with --device cuda", "r3-options",
    lambda d: [evalf(FX.pred, FX.gold, "--device", "cuda", expect=(0, 2),
                     check=warned_or_refused)])
add("r3 eval CHECKPOINT with --json and --split train", "r3-options",
    lambda d: [evalc(FX.ckpt, None, "--split", "train", expect=(0, 1, 2))])
add("r3 preprocess --centroid-weighting tfidf with name embeddings", "r3-options",
    lambda d: [preprocess(FX.raw, "--out", d / "p", "--centroid-weighting", "tfidf",
                          "--glove", FX.raw / "vectors.txt", expect=(0, 2),
                          check=warned_or_refused)])


def _with_valid(d: Path) -> Path:
    raw = copy_raw(d)
    for kind in ("texts", "labels"):
        lines = (raw / f"train_{kind}.txt").read_text().splitlines()
        write(raw / f"valid_{kind}.txt", "\n".join(lines[:20]) + "\n")
    return raw


add("r3 preprocess --valid-fraction with valid files", "r3-options",
    lambda d: [preprocess(_with_valid(d), "--out", d / "p", "--valid-fraction", "0.3",
                          expect=(0, 2), check=warned_or_refused)])
add("r3 preprocess --raw with a folder source", "r3-options",
    lambda d: [preprocess(FX.raw, "--raw", d, "--out", d / "p", expect=(0, 1, 2),
                          check=warned_or_refused)])
for _ov in ("data.label_order=frequency", "train.ddp_bf16_grads=true",
            "model.global_embedding_tau=0.5", "loss.ot_beta=2", "train.shortlist_hard=2"):
    extra = ("loss.ot_weight=0",) if _ov.startswith("loss.ot_") else ()
    add(f"r3 train {_ov} where it has no effect", "r3-options",
        lambda d, o=_ov, e=extra: [train(recipe(d / "r.yaml"), o, *e, "--out", d / "run",
                                         expect=(0, 1, 2), check=warned_or_refused)])
add("r3 train a shortlist with hard negatives trains", "r3-options",
    lambda d: [train(recipe(d / "r.yaml"), "train.shortlist=3", "train.shortlist_hard=2",
                     "--out", d / "run", expect=(0,), check=out_has("checkpoint:"))])
add("r3 train --method sgm with train.shortlist given", "r3-options",
    lambda d: [train(recipe(d / "r.yaml"), "--method", "sgm", "train.shortlist=3",
                     "--out", d / "run", expect=(0, 1, 2), check=warned_or_refused)])
add("r3 train --max-restarts with --dry-run", "r3-options",
    lambda d: [train(FX.recipe, "--max-restarts", "2", "--dry-run", expect=(0, 2),
                     check=warned_or_refused)])
add("r3 train --nproc 2 with --dry-run", "r3-options",
    lambda d: [train(FX.recipe, "--nproc", "2", "--dry-run", expect=(0, 2),
                     check=warned_or_refused)])
add("r3 train the same override twice", "r3-options",
    lambda d: [train(FX.recipe, "train.epochs=2", "train.epochs=5", "--dry-run", expect=(0, 2),
                     check=warned_or_refused)])
add("r3 train --out with --dry-run", "r3-options",
    lambda d: [train(FX.recipe, "--out", d / "run", "--dry-run", expect=(0, 2),
                     check=warned_or_refused)])


# what a run folder records is what ran
def _edited_recipe(edit: Callable[[str], str], *extra: str):
    def build(d: Path) -> list[Step]:
        run = copy_run(d)
        path = run / "recipe.yaml"
        path.write_text(edit(path.read_text()))
        def check(f: Path, r: Result) -> str | None:
            import yaml

            if r.code != 0:
                return None
            # What ran: the run's own recipe.yaml as the fixture wrote it (data-derived sizes
            # resolved), with the resume's overrides applied.
            ran = yaml.safe_load((FX.run / "recipe.yaml").read_text())
            for item in extra:
                key, _, value = item.partition("=")
                *parents, leaf = key.split(".")
                node = ran
                for part in parents:
                    node = node[part]
                node[leaf] = yaml.safe_load(value)
            try:
                shown = yaml.safe_load((f / "run" / "recipe.yaml").read_text())
            except yaml.YAMLError:
                shown = None
            return None if shown == ran else \
                "recipe.yaml does not show the recipe the resumed run used"
        return [train(FX.recipe, *extra, "--out", run, "--resume", expect=(0, 1), check=check)]
    return build


add("r3 resume after recipe.yaml was edited (lr)", "r3-record",
    _edited_recipe(lambda t: t.replace("lr: 0.01", "lr: 0.5")), may_change=("run/*",))
add("r3 resume after recipe.yaml was edited (epochs)", "r3-record",
    _edited_recipe(lambda t: t.replace("epochs: 3", "epochs: 9")), may_change=("run/*",))
add("r3 resume after recipe.yaml was emptied", "r3-record",
    _edited_recipe(lambda t: ""), may_change=("run/*",))
add("r3 resume after recipe.yaml became garbage", "r3-record",
    _edited_recipe(lambda t: "{{{ not yaml"), may_change=("run/*",))
add("r3 resume with a new max_steps shows it", "r3-record",
    _edited_recipe(lambda t: t, "train.max_steps=1000"), may_change=("run/*",))
add("r3 resume with a new log_every shows it", "r3-record",
    _edited_recipe(lambda t: t, "train.log_every=5"), may_change=("run/*",))
add("r3 resume after a comment was added to recipe.yaml", "r3-record",
    _edited_recipe(lambda t: t + "# my note\n"), may_change=("run/*",))
add("r3 resume after recipe.yaml's name was edited", "r3-record",
    _edited_recipe(lambda t: t.replace("name: tiny", "name: other")), may_change=("run/*",))


# --- main --------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("-k", dest="only", default="",
                        help="only cases whose name has this (A|B: either)")
    parser.add_argument("--family", default="",
                        help="only cases of these families (comma-separated)")
    parser.add_argument("--timeout", type=float, default=90, help="seconds per step")
    parser.add_argument("--memory-gib", type=float, default=4, help="RLIMIT_AS per command")
    parser.add_argument("--json", type=Path, help="also write the verdicts here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args()
    families = {f.strip() for f in args.family.split(",") if f.strip()}
    wanted = [part for part in args.only.lower().split("|")]  # a|b: either substring
    cases = [c for c in CASES if any(part in c.name.lower() for part in wanted)
             and (not families or c.family in families)]
    if args.list:
        for c in cases:
            print(f"{c.family:10} {c.name}")
        print(f"{len(cases)} cases")
        return
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"

    root = Path(tempfile.mkdtemp(prefix="xmtc-probe-"))
    root.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "XMTC_CACHE": str(root / "cache"), "LANG": "C.UTF-8", "COLUMNS": "120",
           "PYTHONDONTWRITEBYTECODE": "1", "TERM": "dumb"}
    start = time.perf_counter()
    global FX
    print(f"building fixtures in {root} ...", file=sys.stderr)
    FX = build_fixtures(root / "fx", env)
    fixtures_before = snapshot(FX.root)
    opts = Options(root, args.timeout, int(args.memory_gib * GIB), env)
    verdicts: list[Verdict] = []
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_case, c, opts): c for c in cases}
        for future in concurrent.futures.as_completed(futures):
            v = future.result()
            with lock:
                verdicts.append(v)
                done = len(verdicts)
                if not v.clean:  # as they come, so that a long run shows its findings early
                    print(f"[{done}/{len(cases)}] NOT CLEAN {v.case.name}: {v.reason}",
                          file=sys.stderr, flush=True)
                elif done % 25 == 0:
                    print(f"[{done}/{len(cases)}] {time.perf_counter() - start:.0f}s",
                          file=sys.stderr, flush=True)
    changed = [p for p, h in fixtures_before.items() if snapshot(FX.root).get(p) != h]

    order = {c.name: i for i, c in enumerate(CASES)}
    verdicts.sort(key=lambda v: order[v.case.name])
    width = max(len(v.case.name) for v in verdicts)
    print(f"{'case':{width}}  {'family':10}  {'verdict':9}  reason")
    for v in verdicts:
        print(f"{v.case.name:{width}}  {v.case.family:10}  "
              f"{'CLEAN' if v.clean else 'NOT CLEAN':9}  {v.reason}")
    if changed:
        print(f"\nshared fixtures changed during the probe: {', '.join(changed[:5])}")
    clean = sum(v.clean for v in verdicts)
    families = sorted({v.case.family for v in verdicts})
    print("\n" + "  ".join(f"{f}: {sum(v.clean for v in verdicts if v.case.family == f)}/"
                           f"{sum(v.case.family == f for v in verdicts)}" for f in families))
    print(f"{len(verdicts)} cases, {clean} clean ({100 * clean / max(len(verdicts), 1):.1f}%) "
          f"in {time.perf_counter() - start:.0f}s")
    if args.json:
        args.json.write_text(json.dumps([
            {"case": v.case.name, "family": v.case.family, "clean": v.clean,
             "reason": v.reason, "seconds": round(v.seconds, 1)} for v in verdicts], indent=1))
    if args.keep:
        print(f"kept {root}", file=sys.stderr)
    else:
        for path in root.rglob("*"):  # unlock what the cases locked, so rmtree can go in
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if clean == len(verdicts) and not changed else 1)


if __name__ == "__main__":
    main()
