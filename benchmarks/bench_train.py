"""Benchmark a training step: OTSeq2Set against Seq2Seq, and the matching + OT loss against CE.

    PYTHONPATH=. python benchmarks/bench_train.py [--repeats 5] [--device cpu|cuda|all]
        [--threads T] [--shapes Reuters Eurlex-4K AmazonCat-13K]
        [--hidden H] [--batch B] [--steps S] [--no-memory] [--profile]

One training step is `xmtc_cli.training.Trainer.step`, the step `fit` takes: forward, loss,
zero_grad, backward, clip_grad_norm_ (8), Adam step; the model and loss come from `build_model` /
`build_criterion` on recipes made with the paper's method switches (`xmtc_cli.config.METHODS`).
Three contenders, timed interleaved (A, B, C, A, B, C, ...)
so that load from other jobs hits all three alike:
  A  OTSeq2Set: BM + OT + LC, student forcing for N steps;
  B  Seq2Seq: cross-entropy, teacher forcing for M + 1 steps, no LC (the paper's baseline,
     Table 7), same encoder/decoder sizes;
  C  A's model and forward with cross-entropy on its N-step logits instead of matching + OT
     (same architecture, same decoding steps: A / C isolates the loss's own cost).
Random data at each dataset's shape (docs/design.md §5-6): document lengths uniform in 0.5-1.5x the
mean words/doc, cut at max source tokens; gold sets of 1 + Poisson(labels/doc - 1) distinct labels,
cut at N. Prints step times (median over repeats after warm-up), documents/s, the ratios A / B and A
/ C, and peak memory: on CUDA torch.cuda.max_memory_allocated per contender, on the CPU the peak RSS
of a fresh subprocess that runs `--steps` steps of one contender alone.

The paper's sizes (H=512, E=300, B=32/64, T=1000/500) take many seconds per step on a small
CPU: there the Eurlex-4K and AmazonCat-13K defaults are H=128 and B=8 (T, N and V stay the
dataset's); --hidden / --batch change them, and CUDA runs use the paper's sizes unless told.
Reuters uses recipes/reuters.yaml (hidden size, batch, max source tokens, lr, scheme), loaded at
run time.
--profile also prints where the time of one step goes (Reuters shape), for A and B.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xmtc_cli.config import Recipe, load_recipe, method_overrides, recipe_from_dict
from xmtc_cli.data.batching import Batch, pad_sources
from xmtc_cli.labelspace import GOLD_PAD, NUM_SPECIALS
from xmtc_cli.losses import teacher_targets
from xmtc_cli.model import ModelSizes, build_model
from xmtc_cli.training import Trainer

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    steps: int  # N, the dataset's largest label set
    labels: int  # L (V = L + 3)
    mean_words: float  # words/doc of the training split (docs/design.md §5)
    max_src_tokens: int  # T cap
    mean_labels: float  # labels/doc
    scheme: str  # the paper's matching scheme for the dataset
    embed: int  # E (= label embedding width: GloVe's)
    hidden: int  # H
    lr: float
    vocab: int  # source token ids: the dataset's distinct training words (docs/design.md §5) + 2
    cpu_hidden: int | None = None  # smaller CPU defaults, None: as on CUDA
    cpu_batch: int | None = None


def _from_recipe(name: str, recipe: str, labels: int, mean_words: float, mean_labels: float,
                 embed: int, vocab: int, steps: int | None = None, **cpu: int) -> Shape:
    """A dataset's shape: training sizes from its shipped recipe, corpus statistics (the paper's
    Table 1, or the Reuters corpus) given here, since no recipe holds them."""
    r = load_recipe(ROOT / "recipes" / recipe)
    return Shape(name, r.train.batch_size, steps or r.data.max_labels, labels, mean_words,
                 r.data.max_src_tokens, mean_labels, r.loss.scheme, embed, r.model.hidden_size,
                 r.train.lr, vocab, **cpu)


SHAPES = (
    # Reuters' N (15, its largest training label set) is filled in from the data at training.
    _from_recipe("Reuters", "reuters.yaml", 90, 130.0, 1.23, 50, 68_672, steps=15),
    _from_recipe("Eurlex-4K", "eurlex.yaml", 3956, 1248.58, 5.30, 300, 186_106,
                 cpu_hidden=128, cpu_batch=8),
    _from_recipe("AmazonCat-13K", "amazoncat13k.yaml", 13330, 246.61, 5.04, 300, 203_884,
                 cpu_hidden=128, cpu_batch=8),
)
CONTENDERS = ("otseq2set", "seq2seq", "otseq2set+ce")
LABELS = {"otseq2set": "A OTSeq2Set", "seq2seq": "B Seq2Seq", "otseq2set+ce": "C A-model+CE"}


def sized(shape: Shape, device: torch.device, hidden: int | None, batch: int | None) -> Shape:
    """The shape with the sizes this run uses: flags, else CPU defaults on the CPU."""
    cpu = device.type == "cpu"
    return dataclasses.replace(
        shape,
        hidden=hidden or (shape.cpu_hidden if cpu and shape.cpu_hidden else shape.hidden),
        batch=batch or (shape.cpu_batch if cpu and shape.cpu_batch else shape.batch),
    )


def recipe_for(shape: Shape, contender: str) -> Recipe:
    method = "seq2seq" if contender == "seq2seq" else "otseq2set"
    raw = {
        "name": f"bench-{shape.name}",
        "data": {"dir": "unused", "max_src_tokens": shape.max_src_tokens,
                 "max_labels": shape.steps},
        "model": {"hidden_size": shape.hidden},
        "loss": {"scheme": shape.scheme},
        "train": {"batch_size": shape.batch, "lr": shape.lr},
    }
    return recipe_from_dict(raw, method_overrides(method))


def make_batches(shape: Shape, count: int, seed: int = 0) -> list[Batch]:
    """Random batches at the dataset's shape, built as the batcher builds them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        words = rng.integers(int(0.5 * shape.mean_words), int(1.5 * shape.mean_words) + 1,
                             shape.batch)
        docs = [rng.integers(2, shape.vocab, n) for n in words]
        src, lengths = pad_sources(docs, shape.max_src_tokens)
        sizes = np.minimum(1 + rng.poisson(shape.mean_labels - 1, shape.batch), shape.steps)
        gold = np.full((shape.batch, max(int(sizes.max()), 1)), GOLD_PAD, dtype=np.int64)
        for row, n in enumerate(sizes):
            gold[row, :n] = rng.choice(shape.labels, n, replace=False) + NUM_SPECIALS
        out.append(Batch(src, lengths, torch.from_numpy(gold), np.arange(shape.batch)))
    return out


class _CrossEntropyOnSteps(torch.nn.Module):
    """Contender C's loss: cross-entropy (gold in file order, then EOS) on N-step logits."""

    def forward(self, logits, gold, label_embeddings):
        steps = logits.size(1)
        gold = F.pad(gold[:, : steps - 1], (0, max(0, steps - 1 - gold.size(1))), value=GOLD_PAD)
        targets = teacher_targets(gold)  # (B, N)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                               ignore_index=GOLD_PAD)
        return loss, {"cross_entropy": loss.detach()}


def make_trainer(shape: Shape, contender: str, device: torch.device, amp: bool) -> Trainer:
    """One contender: the product's `Trainer` (model, loss, Adam and its step, as `fit` takes
    it), with C's cross-entropy swapped in for the matching loss."""
    recipe = recipe_for(shape, contender)
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, amp=amp))
    sizes = ModelSizes(vocab_size=shape.vocab, num_labels=shape.labels, decode_steps=shape.steps,
                       embed_size=shape.embed, label_embed_size=shape.embed)
    # A long schedule: the benchmark's few steps run at (nearly) the recipe's learning rate.
    trainer = Trainer.build(recipe, sizes, device, total_steps=1_000_000)
    if contender == "otseq2set+ce":
        trainer = dataclasses.replace(trainer, criterion=_CrossEntropyOnSteps())
    return trainer


class _Stepper:
    """Counts the optimiser steps of one trainer, as fit does, for the learning rate."""

    def __init__(self) -> None:
        self.steps: dict[int, int] = {}

    def __call__(self, trainer: Trainer, batch: Batch) -> None:
        step = self.steps.get(id(trainer), 0)
        trainer.step(batch, step)
        self.steps[id(trainer)] = step + 1


take_step = _Stepper()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(trainers: dict[str, Trainer], batches: list[Batch], repeats: int,
                     warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per step of each contender, contenders alternating within every repeat."""
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(warmup + repeats):
        batch = batches[r % len(batches)]
        for key, trainer in trainers.items():
            sync(device)
            start = time.perf_counter()
            take_step(trainer, batch)
            sync(device)
            if r >= warmup:
                times[key].append(time.perf_counter() - start)
    return times


# --- peak memory ---------------------------------------------------------------------------

def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    VmHWM of /proc/self/status where there is one: ru_maxrss survives exec on Linux, so a
    subprocess started from a big parent would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    """Subprocess entry: run `--steps` steps of one contender, print peak RSS as JSON."""
    device = torch.device(args.worker_device)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = sized(next(s for s in SHAPES if s.name == args.shapes[0]), device, args.hidden,
                  args.batch)
    base = peak_rss_mib()
    batches = make_batches(shape, 2)
    trainer = make_trainer(shape, args.worker, device, amp=not args.no_amp)
    for i in range(args.steps):
        take_step(trainer, batches[i % 2])
    sync(device)
    print(json.dumps({"base_mib": base, "peak_mib": peak_rss_mib()}))


def cpu_peak_rss(shape_name: str, contender: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", contender, "--worker-device", "cpu",
           "--shapes", shape_name, "--steps", str(args.steps)]
    for flag, value in (("--hidden", args.hidden), ("--batch", args.batch),
                        ("--threads", args.threads)):
        if value:
            cmd += [flag, str(value)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- profile -------------------------------------------------------------------------------

def profile(shape: Shape, device: torch.device, amp: bool, repeats: int) -> None:
    """Where one step's time goes, by phase (wall clock, synchronised) and by operator."""
    import xmtc_cli.losses.criterion as criterion_module

    batches = make_batches(shape, 4, seed=1)
    for contender in ("otseq2set", "seq2seq"):
        trainer = make_trainer(shape, contender, device, amp)
        model = trainer.model
        phases: dict[str, list[float]] = {}

        def timed(name, fn, phases=phases):
            def wrapper(*a, **k):
                sync(device)
                start = time.perf_counter()
                out = fn(*a, **k)
                sync(device)
                phases.setdefault(name, []).append(time.perf_counter() - start)
                return out
            return wrapper

        # Phases of the forward pass and loss: wrap the building blocks, not the model's code.
        model.encoder.forward = timed("encoder GRU fwd", model.encoder.forward)
        if model.conv is not None:
            model.conv.forward = timed("light conv fwd", model.conv.forward)
        model.attention.forward = timed("attention fwd (per step)", model.attention.forward)
        model.cell.forward = timed("decoder GRUCell fwd", model.cell.forward)
        # The output layer's V-wide map runs inside the decoder loop (once per step without
        # autograd, its gradient once per batch): part of "forward total"; what can be timed
        # apart is the head before it (the bottleneck, where there is one).
        model._output_head = timed("output head fwd", model._output_head)
        saved = criterion_module.assign, criterion_module.ipot
        criterion_module.assign = timed("matching (host + scipy)", saved[0])
        criterion_module.ipot = timed("IPOT", saved[1])
        forward, criterion = model.forward, trainer.criterion.forward
        model.forward = timed("forward total", forward)
        trainer.criterion.forward = timed("loss total", criterion)
        backward = torch.Tensor.backward
        torch.Tensor.backward = timed("backward", backward)
        clip = torch.nn.utils.clip_grad_norm_
        torch.nn.utils.clip_grad_norm_ = timed("clip", clip)
        trainer.optimizer.step = timed("Adam", trainer.optimizer.step)
        try:
            take_step(trainer, batches[0])  # warm-up
            phases.clear()
            total = []
            for r in range(repeats):
                sync(device)
                start = time.perf_counter()
                take_step(trainer, batches[r % len(batches)])
                sync(device)
                total.append(time.perf_counter() - start)
            measured = {name: list(values) for name, values in phases.items()}
            with torch.profiler.profile() as prof:
                take_step(trainer, batches[0])
        finally:
            criterion_module.assign, criterion_module.ipot = saved
            torch.Tensor.backward = backward
            torch.nn.utils.clip_grad_norm_ = clip
        step = statistics.median(total)
        print(f"\n{LABELS[contender]} at {describe(shape)}: step {1e3 * step:.1f} ms "
              f"(median of {repeats}, phases timed with a sync around each)")
        for name, values in measured.items():
            per_step = sum(values) / repeats
            print(f"  {name:<28} {1e3 * per_step:8.2f} ms  {100 * per_step / step:5.1f} %"
                  f"  ({len(values) // repeats} call(s) a step)")
        print("  top operators (torch.profiler, one step, self CPU time):")
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)
        print("\n".join("    " + line for line in table.splitlines()))


# --- report --------------------------------------------------------------------------------

def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = (f"torch {torch.__version__}; CPU {cpu}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads; Python {platform.python_version()}")
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    else:
        text += "; no GPU"
    return text


def describe(shape: Shape) -> str:
    return (f"{shape.name} B={shape.batch} T<={shape.max_src_tokens} (~{shape.mean_words:.0f}) "
            f"N={shape.steps} V={shape.labels + NUM_SPECIALS} H={shape.hidden} E={shape.embed}")


def chosen_devices(device: str, threads: int | None) -> list[torch.device]:
    """The devices `--device cpu|cuda|all` asks for (CUDA only where present); sets `--threads`."""
    if threads:
        torch.set_num_threads(threads)
    devices = [torch.device("cpu")] if device in ("cpu", "all") else []
    if device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--shapes", nargs="+", choices=[s.name for s in SHAPES],
                        default=[s.name for s in SHAPES])
    parser.add_argument("--hidden", type=int, default=None,
                        help="H for every shape (default: the recipe's; 128 on the CPU for "
                             "Eurlex-4K and AmazonCat-13K)")
    parser.add_argument("--batch", type=int, default=None,
                        help="B for every shape (default: the recipe's; 8 on the CPU for "
                             "Eurlex-4K and AmazonCat-13K)")
    parser.add_argument("--steps", type=int, default=2,
                        help="training steps of each peak-memory subprocess (CPU)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 on CUDA (default: bf16 autocast, as train.amp=true)")
    parser.add_argument("--profile", action="store_true",
                        help="also break a Reuters-shape step down by phase and operator")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    devices = chosen_devices(args.device, args.threads)

    print(describe_machine())
    print(f"median seconds of {args.repeats} interleaved steps after {args.warmup} warm-up "
          f"step(s); a step = forward + loss + backward + clip + Adam, as xmtc_cli.training.fit")
    print("A = OTSeq2Set (BM+OT+LC, N student-forced steps); B = Seq2Seq (CE, teacher forcing, "
          "no LC); C = A's model with CE on its N steps\n")
    rows = []
    for device in devices:
        for base in SHAPES:
            if base.name not in args.shapes:
                continue
            shape = sized(base, device, args.hidden, args.batch)
            print(f"[{device.type}] {describe(shape)} ...", file=sys.stderr, flush=True)
            batches = make_batches(shape, 4)
            trainers = {c: make_trainer(shape, c, device, not args.no_amp) for c in CONTENDERS}
            times = time_interleaved(trainers, batches, args.repeats, args.warmup, device)
            memory = {}
            for c, trainer in trainers.items():
                if args.no_memory:
                    memory[c] = None
                elif device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    take_step(trainer, batches[0])
                    sync(device)
                    memory[c] = torch.cuda.max_memory_allocated(device) / 2**20
            del trainers
            if device.type == "cpu" and not args.no_memory:
                for c in CONTENDERS:
                    memory[c] = cpu_peak_rss(shape.name, c, args)["peak_mib"]
            rows.append((device, shape, {c: statistics.median(t) for c, t in times.items()},
                         memory))

    print(f"{'shape':<58} {'dev':<4} {'contender':<13} {'s/step':>8} {'docs/s':>8} "
          f"{'peak MiB':>9} {'params M':>8}")
    for device, shape, med, memory in rows:
        for c in CONTENDERS:
            mem = memory[c]
            mem_text = "-" if mem is None else f"{mem:.0f}"
            params = sum(p.numel() for p in build_model(
                recipe_for(shape, c).model, recipe_for(shape, c).loss,
                ModelSizes(shape.vocab, shape.labels, shape.steps, shape.embed, shape.embed),
            ).parameters()) / 1e6
            print(f"{describe(shape):<58} {device.type:<4} {LABELS[c]:<13} {med[c]:>8.3f} "
                  f"{shape.batch / med[c]:>8.1f} {mem_text:>9} {params:>8.2f}")
    print("\nPeak memory: CUDA torch.cuda.max_memory_allocated over one step; CPU the peak RSS "
          f"(VmHWM) of a subprocess running {args.steps} steps of that contender alone (python "
          "and torch included).")
    print("\nRatios of median step time (target on CUDA <= 1.10, on this CPU <= 1.25 for A/B)")
    print(f"{'shape':<58} {'dev':<4} {'A/B OTSeq2Set/Seq2Seq':>22} {'A/C loss overhead':>18}")
    for device, shape, med, _ in rows:
        ab = med["otseq2set"] / med["seq2seq"]
        target = 1.10 if device.type == "cuda" else 1.25
        verdict = "met" if ab <= target else "NOT met"
        print(f"{describe(shape):<58} {device.type:<4} {ab:>15.2f} ({verdict}) "
              f"{med['otseq2set'] / med['otseq2set+ce']:>18.2f}")

    if args.profile:
        for device in devices:
            shape = sized(SHAPES[0], device, args.hidden, args.batch)
            profile(shape, device, not args.no_amp, max(args.repeats, 5))


if __name__ == "__main__":
    main()
