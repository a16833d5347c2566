"""Benchmark the OTSeq2Set loss: batched against the authors' per-sample loop, and against CE.

    PYTHONPATH=. python benchmarks/bench_losses.py [--repeats 15] [--device cpu|cuda|all]
        [--threads T] [--shapes Eurlex-4K AmazonCat-13K]

For Eurlex-4K and AmazonCat-13K batch shapes (docs/design.md §5-6) it times, as medians over repeats
after warm-up:
  * `assign` (one host transfer, scipy per document) against a loop that slices, copies and
    solves one document at a time, as the published code does;
  * `ipot` (batched, masked, on the device) against NumPy IPOT per document on the host;
  * the whole matching + OT loss, forward + backward, against that per-sample loss and against
    cross-entropy on logits of the same shape [B, N, V].
Gold sets are random with the dataset's mean size, padded to the batch's largest (as the batcher
does). Prints two tables; nothing is written.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from references import naive_ipot

from xmtc_cli.labelspace import EMPTY, NUM_SPECIALS
from xmtc_cli.losses import CrossEntropyLoss, MatchingLoss, assign, cosine_cost, ipot

EMBED = 300


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    steps: int  # N, the dataset's largest label set
    labels: int  # L
    mean_labels: float
    scheme: str  # the paper's choice for the dataset (docs/design.md §6)


SHAPES = (
    Shape("Eurlex-4K", 32, 24, 3956, 5.30, "all"),
    Shape("AmazonCat-13K", 64, 57, 13330, 5.04, "first-n"),
)


def make_batch(shape: Shape, device: torch.device, seed: int = 0):
    """Logits [B, N, V] (a leaf), gold [B, M] padded with -1, label embeddings [V, E]."""
    gen = torch.Generator().manual_seed(seed)
    vocab = shape.labels + NUM_SPECIALS
    sizes = (1 + torch.poisson(torch.full((shape.batch,), shape.mean_labels - 1), gen)).long()
    sizes = sizes.clamp(1, shape.steps)
    gold = torch.full((shape.batch, int(sizes.max())), -1, dtype=torch.long)
    for b, n in enumerate(sizes.tolist()):
        gold[b, :n] = torch.randperm(shape.labels, generator=gen)[:n] + NUM_SPECIALS
    logits = torch.randn(shape.batch, shape.steps, vocab, generator=gen)
    table = torch.randn(vocab, EMBED, generator=gen)
    return logits.to(device).requires_grad_(True), gold.to(device), table.to(device)


# --- the published code's per-sample loop, for comparison ----------------------------------

def per_sample_assign(p: torch.Tensor, gold: torch.Tensor, scheme: str) -> torch.Tensor:
    """One slice, one host copy and one scipy call per document; returns targets [B, N]."""
    targets = torch.full(p.shape[:2], EMPTY, dtype=torch.long)
    for b in range(p.size(0)):
        n = int((gold[b] >= 0).sum())
        score = p[b][:, gold[b, :n]] if scheme == "all" else p[b][:n, gold[b, :n]]
        rows, cols = linear_sum_assignment(score.detach().cpu().numpy(), maximize=True)
        targets[b, rows] = gold[b, cols].cpu()
    return targets.to(p.device)


def per_sample_plans(cost: torch.Tensor, gold: torch.Tensor) -> list[torch.Tensor]:
    """NumPy IPOT per document on its real columns, each plan copied back to the device."""
    plans = []
    for b in range(cost.size(0)):
        n = int((gold[b] >= 0).sum())
        plan = naive_ipot(cost[b, :, :n].detach().cpu().numpy())
        plans.append(torch.tensor(plan, device=cost.device, dtype=torch.float))
    return plans


def per_sample_loss(logits, gold, table, scheme, empty_weight=0.2, ot_weight=8.0):
    """The whole matching + OT loss written as the published code's per-sample loop."""
    p = logits.float().softmax(-1)  # (B, N, V)
    targets = per_sample_assign(p.detach(), gold, scheme)
    weight = torch.ones(p.size(-1), device=p.device)
    weight[EMPTY] = empty_weight
    loss = F.nll_loss(p.log().flatten(0, 1), targets.flatten(), weight=weight)
    expected = p @ table.detach()  # (B, N, E)
    ot = 0
    for b in range(p.size(0)):
        labels = gold[b, : int((gold[b] >= 0).sum())]
        cost = cosine_cost(expected[b][None], table[labels][None].detach())[0]  # (N, n)
        plan = torch.tensor(naive_ipot(cost.detach().cpu().numpy()), device=p.device,
                            dtype=torch.float)
        ot = ot + (cost * plan).sum()
    return loss + ot_weight * ot / p.size(0)


# --- timing -------------------------------------------------------------------------------

def median_ms(fn: Callable[[], object], device: torch.device, repeats: int,
              warmup: int = 3) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def backward(loss_fn: Callable[[], torch.Tensor], logits: torch.Tensor) -> Callable[[], None]:
    def step():
        logits.grad = None
        loss_fn().backward()
    return step


def bench(shape: Shape, device: torch.device, repeats: int) -> dict[str, float]:
    """Median milliseconds of every contender for one shape on one device."""
    logits, gold, table = make_batch(shape, device)
    valid = gold >= 0
    n_targets = valid.sum(1)
    with torch.no_grad():
        p = logits.softmax(-1)
        scores = p.gather(2, gold.clamp_min(0).unsqueeze(1).expand(-1, shape.steps, -1))
        cost = cosine_cost(p @ table, table[gold.clamp_min(0)])
    ms = {
        "assign": median_ms(lambda: assign(scores, n_targets, shape.scheme), device, repeats),
        "assign_ref": median_ms(lambda: per_sample_assign(p, gold, shape.scheme), device, repeats),
        "ipot": median_ms(lambda: ipot(cost, valid), device, repeats),
        "ipot_ref": median_ms(lambda: per_sample_plans(cost, gold), device, repeats),
    }
    matching = MatchingLoss(scheme=shape.scheme)
    bm_only = MatchingLoss(scheme=shape.scheme, ot_weight=0.0)
    # Cross-entropy on logits of the same [B, N, V]: N - 1 gold slots plus EOS.
    ce_gold = torch.cat([gold, gold.new_full((shape.batch, shape.steps - 1 - gold.size(1)), -1)], 1)
    ce = CrossEntropyLoss()
    losses = {
        "loss": lambda: matching(logits, gold, table)[0],
        "loss_ref": lambda: per_sample_loss(logits, gold, table, shape.scheme),
        "bm": lambda: bm_only(logits, gold, table)[0],
        "ce": lambda: ce(logits, ce_gold, table)[0],
    }
    for key, fn in losses.items():
        ms[key] = median_ms(backward(fn, logits), device, repeats)
    # The comparison is only fair if both compute the same loss.
    with torch.no_grad():
        ms["loss_gap"] = (losses["loss"]() - losses["loss_ref"]()).abs().item()
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 gives steadier "
                             "figures on a machine shared with other jobs")
    parser.add_argument("--shapes", nargs="+", choices=[s.name for s in SHAPES],
                        default=[s.name for s in SHAPES])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))

    print(f"torch {torch.__version__}; CPU {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads"
          + (f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"median ms of {args.repeats} runs after 3 warm-up runs\n")
    results = [(shape, device, bench(shape, device, args.repeats))
               for device in devices for shape in SHAPES if shape.name in args.shapes]

    print("Batched against the published per-sample loop (speed-up = per-sample / batched)")
    head = (f"{'shape':<34} {'dev':<5} {'part':<24} {'batched':>9} {'per-sample':>11} "
            f"{'speed-up':>9}")
    print(head + "\n" + "-" * len(head))
    for shape, device, ms in results:
        parts = (("assign", "assign", "assign_ref"), ("ipot", "ipot", "ipot_ref"),
                 ("assign + ipot", None, None), ("BM+OT loss, fwd+bwd", "loss", "loss_ref"))
        for label, ours, ref in parts:
            a = ms[ours] if ours else ms["assign"] + ms["ipot"]
            b = ms[ref] if ref else ms["assign_ref"] + ms["ipot_ref"]
            print(f"{_describe(shape):<34} {device.type:<5} {label:<24} {a:>9.2f} {b:>11.2f} "
                  f"{b / a:>8.1f}x")
    print("\nLoss against cross-entropy on the same logits [B, N, V], forward + backward")
    head = (f"{'shape':<34} {'dev':<5} {'CE':>8} {'BM':>8} {'BM+OT':>8} {'BM/CE':>6} "
            f"{'(BM+OT)/CE':>10} {'|loss - per-sample|':>20}")
    print(head + "\n" + "-" * len(head))
    for shape, device, ms in results:
        print(f"{_describe(shape):<34} {device.type:<5} {ms['ce']:>8.2f} {ms['bm']:>8.2f} "
              f"{ms['loss']:>8.2f} {ms['bm'] / ms['ce']:>6.2f} {ms['loss'] / ms['ce']:>10.2f} "
              f"{ms['loss_gap']:>20.1e}")


def _describe(shape: Shape) -> str:
    return f"{shape.name} B={shape.batch} N={shape.steps} V={shape.labels + NUM_SPECIALS}"


if __name__ == "__main__":
    main()
