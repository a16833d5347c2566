"""Training speed on the CPU, today's tree against this one: threads, the step at scale, a real
corpus.

    python benchmarks/bench_speed.py --baseline OLD_TREE [--new NEW_TREE] WHAT [options]

WHAT is one of:
  threads  the default `xmtc train` step (Reuters shape, recipes/reuters.yaml sizes): each tree
           with the thread count and OpenMP wait policy its `xmtc train` would use when the user
           sets nothing (OMP_NUM_THREADS, XMTC_THREADS and OMP_WAIT_POLICY removed from the
           children's environment). Today's tree: torch's default (one thread per core) with
           libgomp's spinning waits; the new tree: xmtc_cli.threads' choice (the usable cores
           less the busy ones) with the waits that go with it (passive where others keep
           cores busy, libgomp's spin-then-sleep where not).
           Also the new tree at 1 thread. --neighbour N starts N busy processes (a Python loop
           each) beside the children, the "busy neighbour" of the issue.
  steps    one training step at AmazonCat-13K's shape (bench_train.py's CPU sizes: H 128, B 8,
           T 500, N 23 of recipes/amazoncat13k.yaml, E 300) and at 100K and 670,091 labels
           (recipes/amazon670k.yaml: bottleneck 512, N 7, random 100-d label embeddings, no LC, no
           OT; H 128, B 16, T 200, as bench_scale.py), both trees at 1 thread; then the new tree
           with train.shortlist=--shortlist (the approximating switch, reported apart). Also
           each child's peak resident memory. Memory a tree keeps between steps
           (xmtc_cli/memory.py) makes its first steps slower than the rest: --warmup 2 or more.
  tibkat   a stated subsample of a TIBKAT-core epoch with recipes/reuters.yaml's sizes: --steps
           training steps on the processed corpus's own batches (--data, `xmtc preprocess` of
           tibkat_core_en), and validation (greedy decoding) of --valid-docs documents at the
           recipe's eval batch size; the epoch figure is steps/epoch x step + validation scaled
           to the whole validation split; micro-F1 on those documents after the steps. Both
           trees at the same thread count (--threads); then the new tree with train.shortlist
           (and train.shortlist_hard=--shortlist-hard, whose one-time ranking of the training
           documents is printed apart: once a run, not an epoch; with --cpu-bf16 also
           train.cpu_bf16, the GRU's bf16 products).

Every measurement runs in a fresh child (PYTHONPATH = the tree, working directory outside both),
the trees alternating (old, new, old, new, ...) for --rounds rounds so that load from other jobs
hits both alike. The children build everything with the builders both trees have
(recipe_from_dict, training.Trainer.build, Trainer.step), so the difference is the trees' code.
Printed: the median seconds of a step per tree, the ratio old/new, and the load average at the
start and end of each child (`uptime`'s 1-minute figure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRIP = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XMTC_THREADS", "OMP_WAIT_POLICY",
         "GOMP_SPINCOUNT")


# --- the child ----------------------------------------------------------------------------------

def child(spec: dict) -> dict:
    import importlib

    # As `xmtc train` does: the default count, and the OpenMP waits that go with it, chosen
    # before torch (and libgomp, which reads the waits once) loads. Trees of the first speed
    # round set passive waits when xmtc_cli is imported; today's tree sets nothing.
    xmtc_cli = importlib.import_module("xmtc_cli")
    choice, threads = None, None
    # Not `try: import`: an editable install of another tree answers for modules this tree
    # lacks.
    if spec["threads"] == "default" and (Path(xmtc_cli.__file__).parent / "threads.py").exists():
        threads = importlib.import_module("xmtc_cli.threads")
        choice = threads.choose_threads()
        if hasattr(threads, "settle_waits"):
            threads.settle_waits(choice)
    import torch

    from xmtc_cli.config import recipe_from_dict
    from xmtc_cli.model import ModelSizes
    from xmtc_cli.training import Trainer

    origin = str(Path(xmtc_cli.__file__).resolve().parent.parent)
    if choice is not None:
        threads.apply_threads(choice)
    elif spec["threads"] != "default":  # today's tree's default: torch's own
        torch.set_num_threads(int(spec["threads"]))
    recipe = recipe_from_dict(spec["recipe"], spec.get("overrides", []))
    if spec["kind"] == "tibkat":
        return {"origin": origin, "waits": _waits(), **_tibkat(spec, recipe, torch)}
    given = dict(spec["sizes"])
    if "decode_steps" in ModelSizes.__dataclass_fields__:  # N's name in the newer trees
        given["decode_steps"] = given.pop("max_steps")
    sizes = ModelSizes(**given)
    torch.manual_seed(0)
    trainer = Trainer.build(recipe, sizes, torch.device("cpu"), total_steps=1_000_000)
    batches = _random_batches(spec, sizes, torch)
    times, started = [], time.perf_counter()
    for i in range(spec["warmup"] + spec["steps"]):
        t = time.perf_counter()
        trainer.step(batches[i % len(batches)], i)
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t)
        if time.perf_counter() - started > spec["cap"] and times:
            break  # a collapsed configuration: its first timed steps say enough
    return {"origin": origin, "waits": _waits(), "step": statistics.median(times),
            "timed": len(times), "threads": torch.get_num_threads(), "fused": _fused(trainer),
            "peak_gib": _peak()}


def _waits() -> str:
    """The child's OpenMP wait policy: what it set before torch loaded, else libgomp's."""
    return os.environ.get("OMP_WAIT_POLICY", "spin")


def _peak() -> float:
    """The child's peak resident memory so far, GiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def _fused(trainer) -> bool:
    return all(bool(g.get("fused")) for g in trainer.optimizer.param_groups)


def _random_batches(spec: dict, sizes, torch) -> list:
    import numpy as np

    from xmtc_cli.data.batching import Batch, pad_sources
    from xmtc_cli.labelspace import GOLD_PAD, NUM_SPECIALS

    rng = np.random.default_rng(0)
    out = []
    words, labels_per_doc, batch = spec["mean_words"], spec["mean_labels"], spec["batch"]
    for _ in range(4):
        lengths = rng.integers(int(0.5 * words), int(1.5 * words) + 1, batch)
        docs = [rng.integers(2, sizes.vocab_size, n) for n in lengths]
        src, lens = pad_sources(docs, spec["recipe"]["data"]["max_src_tokens"])
        steps = getattr(sizes, "decode_steps", None) or sizes.max_steps
        count = np.minimum(1 + rng.poisson(labels_per_doc - 1, batch), steps)
        gold = np.full((batch, int(count.max())), GOLD_PAD, dtype=np.int64)
        for row, n in enumerate(count):
            gold[row, :n] = rng.choice(sizes.num_labels, n, replace=False) + NUM_SPECIALS
        out.append(Batch(src, lens, torch.from_numpy(gold), np.arange(batch)))
    return out


def _tibkat(spec: dict, recipe, torch) -> dict:
    import dataclasses

    from xmtc_cli.data.batching import Batcher
    try:  # where the tree keeps it
        from xmtc_cli.data.builtin import load_data
    except ImportError:
        from xmtc_cli.data.processed import load_data
    from xmtc_cli.evaluation import evaluate_split
    from xmtc_cli.training import Trainer, model_sizes, resolve_recipe

    data = load_data(spec["data"])
    recipe = resolve_recipe(recipe, data)
    sizes = model_sizes(recipe, data)
    extra, setup_s = {}, 0.0
    if getattr(recipe.train, "shortlist_hard", 0):  # once a run: the lexical hard negatives
        from xmtc_cli.training import rank_hard_negatives

        t = time.perf_counter()
        extra["hard_negatives"] = rank_hard_negatives(recipe, data)[1]
        setup_s = time.perf_counter() - t
    trainer = Trainer.build(recipe, sizes, torch.device("cpu"), total_steps=1_000_000,
                            token_embeddings=data.token_embeddings,
                            label_embeddings=data.label_embeddings, **extra)
    batcher = Batcher(data.splits["train"], recipe.data.max_src_tokens, recipe.data.max_labels,
                      data.num_labels)
    per_epoch = batcher.num_batches(recipe.train.batch_size)
    times = []
    for i, batch in enumerate(batcher.epoch(recipe.train.batch_size, seed=0)):
        t = time.perf_counter()
        trainer.step(batch, i)
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t)
        if len(times) == spec["steps"]:
            break
    valid = data.splits["valid"]
    keep = __import__("numpy").zeros(len(valid), dtype=bool)
    keep[: spec["valid_docs"]] = True
    sub = dataclasses.replace(data, splits={**data.splits, "valid": valid.select(keep)})
    t = time.perf_counter()
    with torch.no_grad():
        metrics = evaluate_split(trainer.model, sub, "valid", recipe, torch.device("cpu"))
    valid_s = (time.perf_counter() - t) * len(valid) / spec["valid_docs"]
    step = statistics.median(times)
    return {"step": step, "timed": len(times), "steps_per_epoch": per_epoch,
            "valid_s": valid_s, "epoch_s": step * per_epoch + valid_s, "setup_s": setup_s,
            "micro_f1": metrics["micro_f1"], "p@1": metrics.get("p@1"),
            "threads": torch.get_num_threads(), "fused": _fused(trainer)}


# --- the parent ---------------------------------------------------------------------------------

def run_child(tree: Path, spec: dict, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in STRIP}
    env["PYTHONPATH"] = str(tree)
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                          cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"child failed in {tree}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(result["origin"]) != tree.resolve():
        raise SystemExit(f"child imported xmtc_cli from {result['origin']}, not {tree}")
    result["load"] = (round(load, 2), round(os.getloadavg()[0], 2))
    return result


def interleave(rows: list[tuple[str, Path, dict]], rounds: int, cwd: Path) -> dict[str, list]:
    results: dict[str, list] = {name: [] for name, _, _ in rows}
    for r in range(rounds):
        for name, tree, spec in rows:
            got = run_child(tree, spec, cwd)
            results[name].append(got)
            print(f"  round {r + 1} {name}: {json.dumps(got)}", flush=True)
    return results


def median_of(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def shapes(args) -> list[tuple[str, dict, dict, dict]]:
    """(name, recipe, sizes, batch statistics) of the step shapes."""
    amazoncat = {
        "data": {"dir": "unused", "max_src_tokens": 500, "max_labels": 23},
        "model": {"hidden_size": 128}, "loss": {"scheme": "all"},
        "train": {"batch_size": 8, "lr": 1e-3, "amp": False},
    }
    a670 = {
        "data": {"dir": "unused", "max_src_tokens": 200, "max_labels": 7},
        "model": {"hidden_size": 128, "light_conv": False, "bottleneck": 512,
                  "label_embedding_size": 100},
        "loss": {"scheme": "all", "ot_weight": 0},
        "train": {"batch_size": 16, "lr": 1e-3, "amp": False},
    }
    out = [
        ("AmazonCat-13K", amazoncat, dict(vocab_size=203_886, num_labels=13_330, max_steps=23,
                                          embed_size=300, label_embed_size=300),
         {"mean_words": 246.61, "mean_labels": 5.04, "batch": 8}),
        ("100K labels", amazoncat, dict(vocab_size=203_886, num_labels=100_000, max_steps=23,
                                        embed_size=300, label_embed_size=300),
         {"mean_words": 246.61, "mean_labels": 5.04, "batch": 8}),
        ("670K labels", a670, dict(vocab_size=135_911, num_labels=670_091, max_steps=7,
                                   embed_size=300, label_embed_size=100),
         {"mean_words": 247.33, "mean_labels": 5.45, "batch": 16}),
    ]
    return [s for s in out if s[0].split()[0] in args.shapes or s[0] in args.shapes]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["threads", "steps", "tibkat"])
    p.add_argument("--baseline", type=Path, required=True, help="today's tree")
    p.add_argument("--new", type=Path, default=ROOT, help="this tree (default)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cap", type=float, default=120.0,
                   help="stop a child's timed steps after this many seconds (a collapse)")
    p.add_argument("--neighbour", type=int, default=0, help="busy processes to start (threads)")
    p.add_argument("--shapes", nargs="+", default=["AmazonCat-13K", "100K", "670K"])
    p.add_argument("--shortlist", type=int, default=1000)
    p.add_argument("--cpu-bf16", action="store_true",
                   help="tibkat: train.cpu_bf16=true in the shortlist row (the recipe's own "
                        "train.cpu_bf16 is left out of every row)")
    p.add_argument("--shortlist-hard", type=int, default=0,
                   help="tibkat: train.shortlist_hard in the shortlist row (its lexical "
                        "options from --recipe)")
    p.add_argument("--data", default="/work/data/tibkat")
    p.add_argument("--valid-docs", type=int, default=256)
    p.add_argument("--recipe", type=Path, default=None,
                   help="tibkat: this recipe's settings (e.g. recipes/tibkat.yaml) instead of "
                        "recipes/reuters.yaml's sizes")
    p.add_argument("--threads", default="1")
    p.add_argument("--tmp", type=Path, default=Path("/tmp"))
    args = p.parse_args()
    old, new = args.baseline.resolve(), args.new.resolve()
    print(f"# {' '.join(sys.argv)}\n# machine: {os.cpu_count()} CPUs, load at start "
          f"{os.getloadavg()}", flush=True)
    spin = f"import os\nwhile os.getppid() == {os.getpid()}: pass"  # ends with this process
    neighbours = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(args.neighbour)]
    try:
        if args.what == "threads":
            _threads(args, old, new)
        elif args.what == "steps":
            _steps(args, old, new)
        else:
            _tibkat_rows(args, old, new)
    finally:
        for n in neighbours:
            n.kill()
    print(f"# load at end {os.getloadavg()}")


def _reuters_spec(threads: str, args) -> dict:
    recipe = {"data": {"dir": "unused", "max_src_tokens": 200, "max_labels": 15},
              "model": {"hidden_size": 128, "light_conv": True, "conv_last_stride": 3},
              "loss": {"kind": "matching", "scheme": "first-n", "ot_weight": 8},
              "train": {"batch_size": 32, "lr": 3e-3}}
    return {"kind": "step", "recipe": recipe, "threads": threads, "steps": args.steps,
            "warmup": args.warmup, "cap": args.cap, "mean_words": 130.0, "mean_labels": 1.23,
            "batch": 32, "sizes": dict(vocab_size=68_674, num_labels=90, max_steps=15,
                                       embed_size=50, label_embed_size=50)}


def _threads(args, old: Path, new: Path) -> None:
    rows = [("today, default", old, _reuters_spec("default", args)),
            ("new, default", new, _reuters_spec("default", args)),
            ("new, 1 thread", new, _reuters_spec("1", args))]
    res = interleave(rows, args.rounds, args.tmp)
    base = median_of(res["today, default"], "step")
    print(f"\n{'Reuters-shape step':<18} {'threads':>7} {'step s':>8} {'today/this':>10}")
    for name, got in res.items():
        s = median_of(got, "step")
        print(f"{name:<18} {got[0]['threads']:>7} {s:>8.2f} {base / s:>10.2f}")


def _steps(args, old: Path, new: Path) -> None:
    print(f"\n{'shape':<14} {'today s':>8} {'new s':>8} {'today/new':>9} "
          f"{'shortlist s':>11} {'today/sl':>8}  peak GiB today/new/shortlist")
    for name, recipe, sizes, stats in shapes(args):
        spec = {"kind": "step", "recipe": recipe, "sizes": sizes, "threads": "1",
                "steps": args.steps, "warmup": args.warmup, "cap": 10 * args.cap, **stats}
        short = {**spec, "overrides": [f"train.shortlist={args.shortlist}"]}
        print(f"# {name}", flush=True)
        res = interleave([("today", old, spec), ("new", new, spec),
                          ("new+shortlist", new, short)], args.rounds, args.tmp)
        t, n, s = (median_of(res[k], "step") for k in ("today", "new", "new+shortlist"))
        peaks = "/".join(f"{max(r['peak_gib'] for r in res[k]):.1f}"
                         for k in ("today", "new", "new+shortlist"))
        print(f"{name:<14} {t:>8.2f} {n:>8.2f} {t / n:>9.2f} {s:>11.2f} {t / s:>8.2f}  {peaks}",
              flush=True)


def _tibkat_recipe(args, today: bool = True) -> dict:
    """recipes/reuters.yaml's sizes (the issue's figure), or --recipe's sections; for today's
    tree (and the rows compared with it) less its model.lexical* keys (the scorer changes
    validation, not a step, and today's tree has none), its train.shortlist* keys and its
    train.cpu_bf16 (the third row's approximations come from the command line). Else
    the model section whole with the scorer off (model.lexical=none), its options kept: they
    rank train.shortlist_hard's negatives."""
    if args.recipe is None:
        return {"data": {"dir": args.data, "max_src_tokens": 200},
                "model": {"hidden_size": 128, "light_conv": True, "conv_last_stride": 3},
                "loss": {"kind": "matching", "scheme": "first-n", "ot_weight": 8},
                "train": {"batch_size": 32, "lr": 3e-3}}
    import yaml

    given = yaml.safe_load(args.recipe.read_text(encoding="utf-8"))
    recipe = {k: dict(given.get(k) or {}) for k in ("data", "model", "loss", "train")}
    recipe["data"]["dir"] = args.data
    recipe["train"].pop("epochs", None)  # not a step's
    # The approximations are the third row's (--shortlist, --shortlist-hard, --cpu-bf16).
    recipe["train"] = {k: v for k, v in recipe["train"].items()
                       if not k.startswith("shortlist") and k != "cpu_bf16"}
    if today:
        recipe["model"] = {k: v for k, v in recipe["model"].items()
                           if not k.startswith("lexical")}
    else:
        recipe["model"]["lexical"] = "none"
    return recipe


def _tibkat_rows(args, old: Path, new: Path) -> None:
    recipe = _tibkat_recipe(args)
    print(f"# recipe: {json.dumps(recipe)}", flush=True)
    spec = {"kind": "tibkat", "recipe": recipe, "data": args.data, "threads": args.threads,
            "steps": args.steps, "warmup": args.warmup, "valid_docs": args.valid_docs}
    short = {**spec, "recipe": _tibkat_recipe(args, today=False),
             "overrides": [f"train.shortlist={args.shortlist}",
                           f"train.shortlist_hard={args.shortlist_hard}"]
             + (["train.cpu_bf16=true"] if args.cpu_bf16 else [])}
    res = interleave([("today", old, spec), ("new", new, spec), ("new+shortlist", new, short)],
                     args.rounds, args.tmp)
    print(f"\n{'TIBKAT core':<14} {'step s':>7} {'valid s':>8} {'epoch min':>9} "
          f"{'micro-F1':>8} {'once s':>7} (micro-F1 after the timed steps, on the valid "
          f"subset; once: the hard negatives, once a run)")
    for name, got in res.items():
        print(f"{name:<14} {median_of(got, 'step'):>7.2f} {median_of(got, 'valid_s'):>8.1f} "
              f"{median_of(got, 'epoch_s') / 60:>9.1f} {100 * median_of(got, 'micro_f1'):>8.2f} "
              f"{median_of(got, 'setup_s'):>7.1f}")
    t, n, sl = (median_of(res[k], "epoch_s") for k in ("today", "new", "new+shortlist"))
    print(f"epoch today/new: {t / n:.2f}, today/new+shortlist: {t / sl:.2f}")


if __name__ == "__main__":
    main()
