"""Benchmark prediction: documents/s and peak memory of greedy set decoding.

    PYTHONPATH=. python benchmarks/bench_predict.py [--repeats 3] [--device cpu|cuda|all]
        [--threads T] [--shapes Reuters Eurlex-4K] [--hidden H] [--batch 64]
        [--docs 1000 4000] [--no-memory]

For Reuters-length (~130 tokens) and Eurlex-length (~1250 tokens, cut at 1000) random documents
it runs what `xmtc predict` / `evaluate_split` run per batch: `xmtc_cli.inference.predict_ids`
(eval mode, no autograd, pad, generate, decode to label sets) at batch --batch (64, the
recipes' eval batch). OTSeq2Set (N student-forced steps, LC) and Seq2Seq (greedy until EOS,
stopping once every document has ended; untrained, so it rarely ends early: an upper bound)
batches alternate. Models are untrained and built as `build_model` builds them, sized as in
benchmarks/bench_train.py (Eurlex-4K: H=128 on the CPU unless --hidden; the paper's 512 on CUDA).

Peak memory (OTSeq2Set): each (shape, number of documents) runs in a fresh subprocess that predicts
--docs documents in batches, generating each batch's documents as it goes (as reading a file
does); on CUDA torch.cuda.max_memory_allocated, on the CPU the subprocess's peak RSS (VmHWM). Memory
should stay flat as the number of documents grows: the last column compares each count's peak
with the smallest count's. On the CPU the Eurlex-length counts are a quarter of --docs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import (
    ROOT,
    SHAPES,
    Shape,
    chosen_devices,
    describe,
    describe_machine,
    peak_rss_mib,
    recipe_for,
    sized,
    sync,
)

from xmtc_cli.inference import predict_ids
from xmtc_cli.model import ModelSizes, build_model

METHODS = ("otseq2set", "seq2seq")
NAMES = {"otseq2set": "OTSeq2Set", "seq2seq": "Seq2Seq"}
PREDICT_SHAPES = [s for s in SHAPES if s.name in ("Reuters", "Eurlex-4K")]


def make_model(shape: Shape, method: str, device: torch.device):
    torch.manual_seed(0)
    recipe = recipe_for(shape, method)
    sizes = ModelSizes(shape.vocab, shape.labels, shape.steps, shape.embed, shape.embed)
    return build_model(recipe.model, recipe.loss, sizes).to(device).eval()


def documents(shape: Shape, count: int, seed: int) -> list[np.ndarray]:
    """Random token ids, lengths uniform in 0.5-1.5x the dataset's mean words/doc (uncut)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(0.5 * shape.mean_words), int(1.5 * shape.mean_words) + 1, count)
    return [rng.integers(2, shape.vocab, n) for n in lengths]


def predict_all(model, shape: Shape, docs: int, batch: int, device: torch.device) -> int:
    """Predict `docs` documents batch by batch; returns the labels predicted (kept small)."""
    labels = 0
    for start in range(0, docs, batch):
        chunk = documents(shape, min(batch, docs - start), seed=start)
        labels += sum(len(p.labels) for p in predict_ids(model, chunk, shape.max_src_tokens,
                                                           device))
    return labels


def worker(args: argparse.Namespace) -> None:
    """Subprocess entry: predict --worker-docs documents, print the peak memory as JSON."""
    device = torch.device(args.worker_device)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = sized(next(s for s in SHAPES if s.name == args.shapes[0]), device, args.hidden, None)
    model = make_model(shape, args.worker, device)
    base = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    predict_all(model, shape, args.worker_docs, args.batch, device)
    sync(device)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else peak_rss_mib())
    print(json.dumps({"base_mib": base, "peak_mib": peak}))


def peak_memory(shape: Shape, method: str, docs: int, device: torch.device,
                args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--worker", method, "--worker-device", device.type,
           "--worker-docs", str(docs), "--shapes", shape.name, "--batch", str(args.batch)]
    for flag, value in (("--hidden", args.hidden), ("--threads", args.threads)):
        if value:
            cmd += [flag, str(value)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed batches of each model")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shapes", nargs="+", choices=[s.name for s in PREDICT_SHAPES],
                        default=[s.name for s in PREDICT_SHAPES])
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--docs", type=int, nargs="+", default=[1000, 4000],
                        help="document counts of the peak-memory runs")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--worker-docs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    devices = chosen_devices(args.device, args.threads)

    print(describe_machine())
    print(f"docs/s: median over {args.repeats} batches of {args.batch} after one warm-up "
          f"batch, OTSeq2Set and Seq2Seq batches alternating; predict_ids as `xmtc predict`\n")
    rows, memory_rows = [], []
    for device in devices:
        for base in PREDICT_SHAPES:
            if base.name not in args.shapes:
                continue
            shape = dataclasses.replace(sized(base, device, args.hidden, None), batch=args.batch)
            print(f"[{device.type}] {describe(shape)} ...", file=sys.stderr, flush=True)
            models = {m: make_model(shape, m, device) for m in METHODS}
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            for r in range(args.repeats + 1):
                docs = documents(shape, args.batch, seed=1000 + r)
                for method, model in models.items():
                    sync(device)
                    start = time.perf_counter()
                    predict_ids(model, docs, shape.max_src_tokens, device)
                    sync(device)
                    if r:
                        times[method].append(time.perf_counter() - start)
            rows.append((device, shape, {m: statistics.median(t) for m, t in times.items()}))
            del models
            if args.no_memory:
                continue
            counts = args.docs
            if device.type == "cpu" and shape.mean_words > 500:
                counts = [max(args.batch, c // 4) for c in counts]
            method = "otseq2set"  # the flat-memory check: one model is enough
            peaks = [peak_memory(shape, method, c, device, args) for c in counts]
            memory_rows.append((device, shape, method, counts, peaks))

    head = f"{'shape':<58} {'dev':<4} {'model':<10} {'s/batch':>8} {'docs/s':>8}"
    print(head + "\n" + "-" * len(head))
    for device, shape, med in rows:
        for method in METHODS:
            print(f"{describe(shape):<58} {device.type:<4} {NAMES[method]:<10} "
                  f"{med[method]:>8.3f} {args.batch / med[method]:>8.1f}")
    if memory_rows:
        kind = "peak MiB (CUDA: max_memory_allocated; CPU: subprocess peak RSS)"
        print(f"\n{kind}, by number of documents predicted")
        head = f"{'shape':<58} {'dev':<4} {'model':<10} {'docs -> peak MiB':<28} {'last/first':>10}"
        print(head + "\n" + "-" * len(head))
        for device, shape, method, counts, peaks in memory_rows:
            cells = ", ".join(f"{c}: {p:.0f}" for c, p in zip(counts, peaks))
            print(f"{describe(shape):<58} {device.type:<4} {NAMES[method]:<10} {cells:<28} "
                  f"{peaks[-1] / peaks[0]:>10.2f}")


if __name__ == "__main__":
    main()
