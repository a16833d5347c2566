"""Benchmark `xmtc preprocess`: time and peak memory with GloVe-sized vector files.

    PYTHONPATH=. python benchmarks/bench_preprocess.py [--lines 400000 1600000] [--dim 50]
        [--docs 20000] [--words 130] [--tmp /tmp/xmtc-bench-preprocess] [--keep] [--no-reuters]

Writes, under --tmp (never the repository), a synthetic corpus in AttentionXML's layout
(--docs training and --docs / 4 test documents of --words words on average, drawn Zipf-like from
a 100k-word vocabulary, 1-3 of 500 labels each) and word-vector files of each --lines size with
--dim values a line (400,000 x 50 is GloVe 6B 50d; 2,200,000 x 300 is 840B), plain and gzip.
Half of the corpus's words have a vector. Each `python -m xmtc_cli preprocess` runs in its own
subprocess; its wall time and peak RSS (VmHWM, read by the subprocess itself) are printed side by
side. The vector file is streamed, so peak memory should not grow with its size: the last column is
the peak against the smallest file's. When ../shared/data/reuters21578 and glove.6B.50d.txt.gz
exist, the real Reuters preprocess is timed too. Repeats alternate the files (A, B, C, D, A, ...) so
that load from other jobs hits them alike.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
VOCAB = 100_000
LABELS = 500


def write_corpus(folder: Path, docs: int, words: int, seed: int = 0) -> None:
    """train/test texts and labels, plus label names, in AttentionXML's layout."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", docs), ("test", docs // 4)):
        lengths = rng.integers(words // 2, words * 3 // 2 + 1, count)
        ids = np.minimum(rng.zipf(1.2, int(lengths.sum())), VOCAB) - 1
        tokens = np.array([f"w{i}" for i in range(VOCAB)])[ids]
        with open(folder / f"{split}_texts.txt", "w") as f:
            start = 0
            for n in lengths:
                f.write(" ".join(tokens[start : start + n]) + "\n")
                start += n
        with open(folder / f"{split}_labels.txt", "w") as f:
            for _ in range(count):
                labels = rng.choice(LABELS, rng.integers(1, 4), replace=False)
                f.write(" ".join(f"L{j}" for j in labels) + "\n")
    with open(folder / "label_names.txt", "w") as f:
        for j in range(LABELS):
            f.write(f"L{j}\tw{2 * j} w{2 * j + 1}\n")


def write_vectors(path: Path, lines: int, dim: int, seed: int = 0) -> None:
    """`word v1 ... vD` lines: the even corpus words first, then words the corpus lacks.

    The value text of a block of lines is formatted once and reused, so that writing
    millions of lines takes seconds; the words are all distinct.
    """
    rng = np.random.default_rng(seed)
    block = [" ".join(f"{v:.5f}" for v in row) for row in rng.uniform(-1, 1, (4096, dim))]
    opener = gzip.open if path.suffix == ".gz" else open
    kwargs = {"compresslevel": 1} if path.suffix == ".gz" else {}
    partial = path.with_name(path.name + ".partial")  # an interrupted run leaves no file
    with opener(partial, "wt", **kwargs) as f:
        for i in range(lines):
            word = f"w{2 * i}" if 2 * i < VOCAB else f"x{i}"
            f.write(f"{word} {block[i % len(block)]}\n")
    partial.replace(path)


# Runs `xmtc ARGS` as `python -m xmtc_cli` does, then writes its own peak RSS (VmHWM: ru_maxrss
# survives exec on Linux and would report this parent's size) to stderr's last line.
_CHILD = """
import runpy, sys
sys.argv = ["xmtc", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("xmtc_cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
hwm = next((l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")), "0")
print("VMHWM", hwm, file=sys.stderr)
sys.exit(code)
"""


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one `xmtc ARGS` in a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"xmtc {' '.join(args)} failed:\n{proc.stderr}")
    return seconds, int(proc.stderr.strip().splitlines()[-1].split()[1]) / 1024


def preprocess_cmd(corpus: Path, out: Path, vectors: Path | None) -> list[str]:
    cmd = ["preprocess", str(corpus), "--out", str(out)]
    return cmd + (["--glove", str(vectors)] if vectors else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[400_000, 1_600_000],
                        help="vector lines of each file (400k: GloVe 6B; 2.2M: 840B)")
    parser.add_argument("--dim", type=int, default=50, help="values a line (840B: 300)")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--words", type=int, default=130, help="mean words a document")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/xmtc-bench-preprocess"))
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--no-reuters", action="store_true")
    args = parser.parse_args()
    if ROOT in args.tmp.resolve().parents:
        parser.error("--tmp must lie outside the repository")

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import describe_machine

    print(describe_machine())
    args.tmp.mkdir(parents=True, exist_ok=True)
    corpus = args.tmp / "corpus"
    start = time.perf_counter()
    write_corpus(corpus, args.docs, args.words)
    files: list[tuple[str, Path | None]] = [("no vectors", None)]
    for lines in args.lines:
        for suffix in (".txt", ".txt.gz"):
            path = args.tmp / f"vectors.{lines}x{args.dim}{suffix}"
            if not path.exists():
                write_vectors(path, lines, args.dim)
            files.append((f"{lines:,} x {args.dim} {suffix[1:]}", path))
    print(f"generated in {time.perf_counter() - start:.0f}s under {args.tmp}: corpus of "
          f"{args.docs:,} train + {args.docs // 4:,} test docs, ~{args.words} words, "
          f"{LABELS} labels")

    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in files}
    reuters = SHARED / "reuters21578"
    glove6b = SHARED / "glove.6B.50d.txt.gz"
    real = not args.no_reuters and reuters.is_dir() and glove6b.is_file()
    if real:
        results["Reuters-21578 + glove.6B.50d.txt.gz (real)"] = []
    for _ in range(args.repeats):  # interleaved: every file once per repeat
        for name, path in files:
            out = args.tmp / "out"
            results[name].append(run(preprocess_cmd(corpus, out, path)))
            shutil.rmtree(out, ignore_errors=True)
        if real:
            out = args.tmp / "out-reuters"
            results["Reuters-21578 + glove.6B.50d.txt.gz (real)"].append(
                run(preprocess_cmd(reuters, out, glove6b)))
            shutil.rmtree(out, ignore_errors=True)
    base = run(["--help"])

    sizes = {name: (path.stat().st_size / 2**20 if path else 0.0) for name, path in files}
    smallest = next(name for name, path in files if path is not None)
    print(f"\nmedian of {args.repeats} run(s); peak = VmHWM of the subprocess "
          f"(`xmtc --help` alone: {base[1]:.0f} MiB, {base[0]:.1f}s)")
    head = f"{'vectors':<44} {'file MiB':>9} {'seconds':>8} {'peak MiB':>9} {'peak vs first':>13}"
    print(head + "\n" + "-" * len(head))
    first_peak = statistics.median(p for _, p in results[smallest])
    for name, runs in results.items():
        seconds = statistics.median(s for s, _ in runs)
        peak = statistics.median(p for _, p in runs)
        size = f"{sizes[name]:.0f}" if name in sizes else "-"
        ratio = f"{peak / first_peak:.2f}" if name in sizes and sizes[name] else "-"
        print(f"{name:<44} {size:>9} {seconds:>8.1f} {peak:>9.0f} {ratio:>13}")
    if not real and not args.no_reuters:
        print(f"(no {reuters} or {glove6b}: the real Reuters preprocess was skipped)")
    if not args.keep:
        shutil.rmtree(args.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
