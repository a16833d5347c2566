"""Train and evaluate every method of the paper's Table 3 on Reuters-21578; print RESULTS rows.

Each row is one `xmtc train recipes/reuters.yaml --method M [--scheme S]` run, evaluated on the
test split with the checkpoint chosen on validation (`model.safetensors`). Runs that already
finished are reused (their folder holds a complete run), so the script can be stopped and
started again; an interrupted run is resumed.

    python benchmarks/reuters_results.py --data data/reuters --runs runs/reuters-table
    python benchmarks/reuters_results.py --only otseq2set-all bm-all   # some rows only
    python benchmarks/reuters_results.py --table        # print the table of the finished rows

Each finished row leaves its figures in ROW/result.json, so several copies of the script can
run disjoint rows side by side (one torch thread each: OMP_NUM_THREADS=1).

Training time is the sum of the epochs' wall-clock seconds recorded in metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "reuters.yaml"

# (row id, paper row, xmtc train arguments after the recipe)
ROWS = [
    ("seq2seq", "Seq2Seq", ["--method", "seq2seq"]),
    ("mlc2seq", "MLC2Seq", ["--method", "mlc2seq"]),
    ("sgm", "SGM", ["--method", "sgm"]),
    ("seq2seq-lc", "Seq2Seq + LC", ["--method", "seq2seq-lc"]),
    ("bm-all", "BM (all)", ["--method", "bm", "--scheme", "all"]),
    ("bm-first-n", "BM (first-n)", ["--method", "bm", "--scheme", "first-n"]),
    ("bm-lc-all", "BM + LC (all)", ["--method", "bm-lc", "--scheme", "all"]),
    ("bm-lc-first-n", "BM + LC (first-n)", ["--method", "bm-lc", "--scheme", "first-n"]),
    ("bm-ot-all", "BM + OT (all)", ["--method", "bm-ot", "--scheme", "all"]),
    ("bm-ot-first-n", "BM + OT (first-n)", ["--method", "bm-ot", "--scheme", "first-n"]),
    ("otseq2set-all", "BM + OT + LC (all)", ["--method", "otseq2set", "--scheme", "all"]),
    ("otseq2set-first-n", "BM + OT + LC (first-n)",
     ["--method", "otseq2set", "--scheme", "first-n"]),
]


def xmtc(*args: str) -> str:
    """Run an xmtc command in a child process and return its stdout."""
    done = subprocess.run([sys.executable, "-m", "xmtc_cli", *args], check=True,
                          stdout=subprocess.PIPE, text=True)
    return done.stdout


def run_row(row: str, args: list[str], data: Path, runs: Path, extra: list[str]) -> dict:
    out = runs / row
    train = ["train", str(RECIPE), *args, f"data.dir={data}", *extra, "--out", str(out)]
    metrics_file = out / "metrics.jsonl"
    # A folder with a train state holds a started run: resume it (a no-op when it finished).
    resume = ["--resume"] if (out / "train_state.safetensors").exists() else []
    xmtc(*train, *resume)
    test = json.loads(xmtc("eval", str(out / "model.safetensors"), "--data", str(data),
                           "--split", "test", "--json"))
    log = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    best = max(log, key=lambda r: r["valid"]["micro_f1"] if r["valid"] else -1)
    result = {
        "test": test,
        "best_epoch": best["epoch"],
        "valid_micro_f1": best["valid"]["micro_f1"] if best["valid"] else None,
        "train_seconds": sum(r["seconds"] for r in log),
        "command": "xmtc " + " ".join(train),
        "hardware": _hardware(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _hardware() -> str:
    """The CPU model, cores and torch threads, for the table's hardware column."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    model = names[0] if names else platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"{model}, {os.cpu_count()} cores, {threads} torch thread{'s' * (threads != 1)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/reuters"))
    parser.add_argument("--runs", type=Path, default=Path("runs/reuters-table"))
    parser.add_argument("--only", nargs="*", help="row ids to run (default: all)")
    parser.add_argument("--table", action="store_true", help="only print the finished rows")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides for every row")
    opts = parser.parse_args()
    rows = [r for r in ROWS if not opts.only or r[0] in opts.only]
    if not opts.table:
        for row, name, args in rows:
            print(f"== {name}", file=sys.stderr, flush=True)
            run_row(row, args, opts.data, opts.runs, opts.overrides)
    done = {row: json.loads((opts.runs / row / "result.json").read_text())
            for row, _, _ in ROWS if (opts.runs / row / "result.json").exists()}
    print("| method | micro-P | micro-R | micro-F1 | macro-F1 | example-F1 | P@1 | "
          "valid micro-F1 (epoch) | train time | hardware |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row, name, _ in ROWS:
        if row not in done:
            continue
        r, t = done[row], done[row]["test"]
        print(f"| {name} | {100 * t['micro_precision']:.2f} | {100 * t['micro_recall']:.2f} | "
              f"{100 * t['micro_f1']:.2f} | {100 * t['macro_f1']:.2f} | "
              f"{100 * t['example_f1']:.2f} | {100 * t['p@1']:.2f} | "
              f"{100 * r['valid_micro_f1']:.2f} ({r['best_epoch']}) | "
              f"{r['train_seconds'] / 60:.0f} min | {r['hardware']} |")
    print()
    for row, name, _ in ROWS:
        if row in done:
            print(f"- {name}: `{done[row]['command']}`")


if __name__ == "__main__":
    main()
