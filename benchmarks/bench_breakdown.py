"""Where a training step's time goes on the CPU, by wall clock (this tree only).

    python benchmarks/bench_breakdown.py [--recipe recipes/tibkat.yaml] [--data data/tibkat]
        [--threads 1] [--steps 10] [--warmup 3] [--set shortlist=null shortlist_hard=0]

Builds the recipe's trainer on a processed corpus (with model.lexical=none: the scorer joins
validation, not a step; its options still rank train.shortlist_hard's negatives, once before the
steps; --set changes train.* keys) and times --steps steps of the corpus's own batches after
--warmup. Each part is timed by wrapping the function that does it (the written-out autograd
functions, the output layer's products, the loss, the optimiser) with a wall clock that counts a
call's time less the time of the timed calls inside it, so the parts add up to the step.
torch.profiler is not used: its per-operator overhead inflated the decoder's thousands of small
operations 1.5-3x and moved the shares.

Printed: milliseconds per step and share of each part, the step's median, and the threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """Exclusive wall-clock time per name: a call's time less that of the timed calls inside."""

    def __init__(self):
        self.spent: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self._inner.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                inner = self._inner.pop()
                total = time.perf_counter() - start
                self.spent[name] += total - inner
                if self._inner:
                    self._inner[-1] += total

        return timed


def instrument(trainer, clock: Clock) -> None:
    """Wrap the parts of `trainer`'s step (see the table's rows) in `clock`."""
    import torch

    from xmtc_cli import blocked
    from xmtc_cli import model as model_module

    functions = [
        ("encoder GRU forward", model_module._GRULayers, "forward"),
        ("encoder GRU backward", model_module._GRULayers, "backward"),
        ("light conv forward", model_module._DepthwiseConv1d, "forward"),
        ("light conv backward", model_module._DepthwiseConv1d, "backward"),
        ("output layer backward", model_module._ComputedLinear, "backward"),
        ("OT expectation backward", blocked._Expectation, "backward"),
    ]
    for name, cls, method in functions:
        setattr(cls, method, staticmethod(clock.wrap(name, getattr(cls, method))))
    model_module.LabelLinear.forward = clock.wrap("output layer forward (each step's logits)",
                                                  model_module.LabelLinear.forward)
    model = trainer.model
    model.encode = clock.wrap("encoder: the rest (embedding, packing, keys)", model.encode)
    model.forward = clock.wrap("decoder forward: the rest (attention, GRU cell)", model.forward)
    trainer.criterion.forward = clock.wrap("loss forward", trainer.criterion.forward)
    trainer.optimizer.step = clock.wrap("optimiser (Adam)", trainer.optimizer.step)
    torch.nn.utils.clip_grad_norm_ = clock.wrap("gradient clip", torch.nn.utils.clip_grad_norm_)
    trainer.step = clock.wrap("the rest of the step", trainer.step)
    torch.Tensor.backward = clock.wrap("backward: the rest (decoder, loss, embeddings)",
                                       torch.Tensor.backward)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "tibkat.yaml")
    p.add_argument("--data", default="data/tibkat", help="a processed corpus (xmtc preprocess)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="train.KEY=VALUE settings over the recipe's, e.g. shortlist=null "
                        "shortlist_hard=0 for the full softmax")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch
    import yaml

    from xmtc_cli.config import recipe_from_dict
    from xmtc_cli.data.batching import Batcher
    from xmtc_cli.data.builtin import load_data
    from xmtc_cli.training import Trainer, model_sizes, resolve_recipe

    torch.set_num_threads(args.threads)
    given = yaml.safe_load(args.recipe.read_text(encoding="utf-8"))
    recipe = {k: dict(given.get(k) or {}) for k in ("data", "model", "loss", "train")}
    recipe["data"]["dir"] = args.data
    # The scorer joins validation, not a step; its options rank train.shortlist_hard's negatives.
    recipe["model"]["lexical"] = "none"
    data = load_data(args.data)
    recipe = resolve_recipe(recipe_from_dict(recipe, [f"train.{o}" for o in args.set]), data)
    extra = {}
    if recipe.train.ranks_hard_negatives:
        from xmtc_cli.training import rank_hard_negatives

        start = time.perf_counter()
        extra["hard_negatives"] = rank_hard_negatives(recipe, data)[1]
        print(f"# the hard negatives (once a run): {time.perf_counter() - start:.1f} s")
    torch.manual_seed(0)
    trainer = Trainer.build(recipe, model_sizes(recipe, data), torch.device("cpu"),
                            total_steps=1_000_000, token_embeddings=data.token_embeddings,
                            label_embeddings=data.label_embeddings, **extra)
    batcher = Batcher(data.splits["train"], recipe.data.max_src_tokens, recipe.data.max_labels,
                      data.num_labels)
    batches = []
    for batch in batcher.epoch(recipe.train.batch_size, seed=0):
        batches.append(batch)
        if len(batches) == args.warmup + args.steps:
            break
    for i in range(args.warmup):
        trainer.step(batches[i], i)
    clock = Clock()
    instrument(trainer, clock)
    steps = []
    for i in range(args.warmup, len(batches)):
        start = time.perf_counter()
        trainer.step(batches[i], i)
        steps.append(time.perf_counter() - start)
    timed = len(steps)
    total = sum(clock.spent.values())
    print(f"# {args.recipe} on {args.data}: {timed} steps after {args.warmup}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"{'part of a step':<50} {'ms':>7} {'share':>6}")
    for name, spent in sorted(clock.spent.items(), key=lambda item: -item[1]):
        print(f"{name:<50} {1000 * spent / timed:>7.1f} {spent / total:>6.1%}")
    print(f"{'step (sum of the parts)':<50} {1000 * total / timed:>7.1f}")
    print(f"{'step (median, timed apart)':<50} {1000 * statistics.median(steps):>7.1f}")


if __name__ == "__main__":
    main()
