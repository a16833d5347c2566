"""Benchmark the batched output layer against the step-by-step one it replaced (issue 11).

    PYTHONPATH=. python benchmarks/bench_output_layer.py [--labels 10000 100000] [--full]
        [--repeats 5] [--threads T] [--src-len 500] [--no-memory] [--load]

One training step is forward, the loss and backward (no optimiser) on the Amazon-670K recipe's
model (recipes/amazon670k.yaml: bottleneck 512, N = 7, E_l = 100, no LC, matching loss without
OT) at CPU sizes: H = 128, B = 16, T = 500 tokens, E = 300, a 50K-word vocabulary. OLD is the
step-by-step forward kept as the oracle in tests/test_output_layer.py, NEW is
`Seq2SetModel.forward`; both run on the same model and batch, interleaved (OLD, NEW, OLD, NEW,
...) so that load from other jobs hits both alike, and must give the same loss. `--full` adds
V = 670K (OLD's steps peak near 7 GiB of RSS). Also times `generate` (OLD: two arg-maxes per
step and a full softmax for the score; NEW: one arg-max and a logsumexp). On a machine shared
with other jobs use --threads 1: two OpenMP threads that wait for each other turn every
preempted step into seconds of spinning.

Peak memory is the peak RSS of a fresh subprocess that builds the model, resets the kernel's
peak counter, runs two steps of one contender and reports its RSS before the first step and the
peak during the steps; the difference is what the steps add on top of the model.

--load instead saves a checkpoint of the largest V's model to a temporary folder and loads it in
fresh subprocesses: OLD builds a random model and copies the weights in, NEW is
`Predictor.from_checkpoint` (meta device, assign); each reports the peak RSS the load adds, and
the peak after every weight has been read once. Prints one table; nothing is kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from xmtc_cli.config import Recipe, load_recipe, recipe_from_dict
from xmtc_cli.labelspace import NUM_SPECIALS
from xmtc_cli.losses import build_criterion
from xmtc_cli.model import ModelSizes, build_model

ROOT = Path(__file__).resolve().parent.parent


def oracle():
    """tests/test_output_layer.py, where the step-by-step forward lives (tests is no package)."""
    spec = importlib.util.spec_from_file_location("oracle", ROOT / "tests" / "test_output_layer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_and_sizes(labels: int, args: argparse.Namespace) -> tuple[Recipe, ModelSizes]:
    """The Amazon-670K recipe at hidden size `args.hidden`, and the sizes of its model."""
    raw = load_recipe(ROOT / "recipes" / "amazon670k.yaml").to_dict()
    raw["model"]["hidden_size"] = args.hidden
    recipe = recipe_from_dict(raw)
    sizes = ModelSizes(vocab_size=args.vocab, num_labels=labels,
                       decode_steps=recipe.data.max_labels, embed_size=args.embed,
                       label_embed_size=recipe.model.label_embedding_size)
    return recipe, sizes


def setup(labels: int, args: argparse.Namespace, seed: int = 0):
    """Model, loss and one random batch at the Amazon-670K shape with `labels` corpus labels."""
    recipe, sizes = recipe_and_sizes(labels, args)
    torch.manual_seed(seed)
    model = build_model(recipe.model, recipe.loss, sizes)
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(args.src_len // 2, args.src_len + 1, (args.batch,), generator=gen)
    src = torch.randint(2, args.vocab, (args.batch, args.src_len), generator=gen)
    src[torch.arange(args.src_len) >= lengths.unsqueeze(1)] = 0
    gold = torch.full((args.batch, sizes.decode_steps), -1)
    for b in range(args.batch):  # 1-7 distinct labels per document
        n = int(torch.randint(1, sizes.decode_steps + 1, (1,), generator=gen))
        gold[b, :n] = torch.randperm(labels, generator=gen)[:n] + NUM_SPECIALS
    return model, build_criterion(recipe.loss), (src, lengths, gold)


def step(model, criterion, forward, batch) -> float:
    """One training step without the optimiser; returns the loss."""
    src, lengths, gold = batch
    loss, _ = criterion(forward(model, src, lengths, gold), gold, model.label_embedding.weight)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return float(loss.detach())


def contenders():
    old = oracle()
    train = {"OLD": old.oracle_forward,
             "NEW": lambda model, src, lengths, gold: model(src, lengths, gold)}
    generate = {"OLD": old.oracle_generate,
                "NEW": lambda model, src, lengths: model.generate(src, lengths)}
    return train, generate


def time_interleaved(labels: int, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds of a training step and of a generate call, per contender."""
    model, criterion, batch = setup(labels, args)
    train, generate = contenders()
    model.train()
    losses = {}
    for name, fn in train.items():  # warm-up; the same dropout masks for both (same seed)
        torch.manual_seed(1)
        losses[name] = step(model, criterion, fn, batch)
    if abs(losses["OLD"] - losses["NEW"]) > 1e-4 * abs(losses["OLD"]):
        raise AssertionError(f"OLD and NEW disagree: {losses}")
    times: dict[str, list[float]] = {f"train {n}": [] for n in train}
    times.update({f"generate {n}": [] for n in generate})
    for _ in range(args.repeats):
        for name, fn in train.items():
            start = time.perf_counter()
            step(model, criterion, fn, batch)
            times[f"train {name}"].append(time.perf_counter() - start)
    model.eval()
    src, lengths, _ = batch
    for _ in range(args.repeats):
        for name, fn in generate.items():
            start = time.perf_counter()
            fn(model, src, lengths)
            times[f"generate {name}"].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def rss_gib(field: str) -> float:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), Linux only."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(contender: str, labels: int, args: argparse.Namespace) -> None:
    """Run in a fresh process: two steps of one contender; print its RSS before and at peak."""
    model, criterion, batch = setup(labels, args)
    train, _ = contenders()
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the RSS now
    before = rss_gib("VmRSS")
    for _ in range(2):
        step(model, criterion, train[contender], batch)
    print(json.dumps({"before": before, "peak": rss_gib("VmHWM")}))


def measure_memory(contender: str, labels: int, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", contender, "--labels", str(labels),
               *forwarded(args)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def forwarded(args: argparse.Namespace) -> list[str]:
    return ["--threads", str(args.threads), "--hidden", str(args.hidden), "--batch",
            str(args.batch), "--src-len", str(args.src_len), "--vocab", str(args.vocab),
            "--embed", str(args.embed)]


def load_child(contender: str, path: str) -> None:
    """Run in a fresh process: load the checkpoint at `path` one way; print the peaks it adds."""
    from xmtc_cli.checkpoint import load_checkpoint
    from xmtc_cli.inference import Predictor

    Path("/proc/self/clear_refs").write_text("5")
    before = rss_gib("VmRSS")
    start = time.perf_counter()
    if contender == "NEW":
        model = Predictor.from_checkpoint(path, device="cpu").model
    else:  # before: a randomly initialised model, then the weights copied into it
        state, meta = load_checkpoint(path)
        model = build_model(meta.recipe.model, meta.recipe.loss, meta.sizes)
        model.load_state_dict(state)
        del state
        model = Predictor(model, meta, torch.device("cpu")).model  # what NEW builds around it
    seconds = time.perf_counter() - start
    loaded = rss_gib("VmHWM") - before
    for tensor in model.state_dict().values():  # read every weight once
        float(tensor.sum())
    print(json.dumps({"seconds": seconds, "loaded": loaded, "used": rss_gib("VmHWM") - before}))


def measure_load(labels: int, args: argparse.Namespace) -> None:
    """Save the model of `labels` labels, then load it OLD and NEW in fresh processes."""
    import tempfile

    from xmtc_cli.checkpoint import CheckpointMeta, save_checkpoint

    model, _, _ = setup(labels, args)
    recipe, sizes = recipe_and_sizes(labels, args)
    meta = CheckpointMeta(recipe=recipe, sizes=sizes,
                          tokens=[f"w{i}" for i in range(args.vocab)],
                          tokenizer={"kind": "whitespace"},
                          labels=[f"l{i}" for i in range(labels)])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_checkpoint(path, model.state_dict(), meta)
        del model
        print(f"V={labels}: checkpoint {path.stat().st_size / 2**30:.2f} GiB; peak RSS added (GiB)")
        print(f"{'':>4} {'load':>7} {'loading':>8} {'+ reading':>10}")
        for contender in ("OLD", "NEW"):
            command = [sys.executable, __file__, "--load-child", contender, str(path)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(f"{contender:>4} {row['seconds']:>6.1f}s {row['loaded']:>8.2f} "
                  f"{row['used']:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--full", action="store_true", help="also V = 670K labels")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--src-len", type=int, default=500)
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--embed", type=int, default=300)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--load", action="store_true", help="time loading a checkpoint")
    parser.add_argument("--child", choices=("OLD", "NEW"), help=argparse.SUPPRESS)
    parser.add_argument("--load-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.labels[0], args)
        return
    if args.load_child:
        load_child(*args.load_child)
        return
    labels = list(args.labels) + ([670_091] if args.full else [])
    if args.load:
        measure_load(max(labels), args)
        return
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads; H={args.hidden} B={args.batch} T<={args.src_len} "
          f"E={args.embed} vocab={args.vocab}, bottleneck 512, N=7, E_l=100; "
          f"median of {args.repeats}")
    header = (f"{'V':>9} {'step OLD':>9} {'step NEW':>9} {'speed-up':>8} "
              f"{'gen OLD':>8} {'gen NEW':>8} {'speed-up':>8}")
    if not args.no_memory:
        header += f" {'peak OLD':>9} {'peak NEW':>9} {'+OLD':>6} {'+NEW':>6} (GiB)"
    print(header)
    for count in labels:
        t = time_interleaved(count, args)
        line = (f"{count:>9} {t['train OLD']:>8.2f}s {t['train NEW']:>8.2f}s "
                f"{t['train OLD'] / t['train NEW']:>7.2f}x "
                f"{t['generate OLD']:>7.3f}s {t['generate NEW']:>7.3f}s "
                f"{t['generate OLD'] / t['generate NEW']:>7.2f}x")
        if not args.no_memory:
            old, new = (measure_memory(name, count, args) for name in ("OLD", "NEW"))
            line += (f" {old['peak']:>9.2f} {new['peak']:>9.2f} "
                     f"{old['peak'] - old['before']:>6.2f} {new['peak'] - new['before']:>6.2f}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
