"""Benchmark training on many processes: documents/s of 1 process against K (DDP), and where the
time of a step goes (the gradient all-reduce's share).

    PYTHONPATH=. python benchmarks/bench_distributed.py [--device cpu|cuda|all] [--steps 8]
        [--warmup 2] [--rounds 2] [--batch B] [--processes 1 2]

A step is `xmtc_cli.training.Trainer.step`, the step `fit` takes; with K processes each rank
builds its Trainer with the process group, takes its share (rows r::K) of the same global batch
(train.batch_size stays the global batch), and DDP all-reduces the gradients during backward,
as `torchrun -m xmtc_cli train` does. One process is the plain one-process step, no DDP.
Shape: the Reuters recipe (recipes/reuters.yaml: H=128, T<=200, B=32, N=15, V=93, OTSeq2Set),
random data as bench_train.py's `make_batches`.

On the CPU every process gets one torch thread (K processes use K cores) and the group talks
over gloo; on CUDA (when GPUs exist) K goes up to the number of GPUs, one process each, NCCL.
The process counts are timed in alternating rounds (1, 2, 1, 2, ...) so that load from other
jobs hits them alike; each figure is the median over the rounds of a round's mean step time.

Per process count it prints: s/step, documents/s (global), the speed-up over one process and
the scaling efficiency (docs/s of K / (K x docs/s of 1)); the CPU time of all processes per
step, which a machine shared with other jobs does not inflate; then where the time goes, from a
second run of the same steps whose DDP comm hook does each bucket's all-reduce synchronously
and times it: gradient all-reduce ms/step (blocking, so an upper bound of what it costs when
overlapped with backward), its share of that step, the bytes all-reduced per step, and the
latency of the small all-reduce of the loss's sums and denominators.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_train import SHAPES, describe, describe_machine, make_batches, recipe_for

from xmtc_cli import distributed
from xmtc_cli.launch import Launch
from xmtc_cli.model import ModelSizes
from xmtc_cli.training import Trainer

REUTERS = SHAPES[0]


class _BlockingTimer:
    """DDP comm hook state: each bucket is all-reduced synchronously and the time added up."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.bytes = 0


def _timed_allreduce(state, bucket):  # DDP checks real annotations (see distributed.py)
    buffer = bucket.buffer()
    start = time.perf_counter()
    buffer.div_(dist.get_world_size())
    dist.all_reduce(buffer)
    if buffer.is_cuda:
        torch.cuda.synchronize(buffer.device)
    state.seconds += time.perf_counter() - start
    state.bytes += buffer.numel() * buffer.element_size()
    future = torch.futures.Future()
    future.set_result(buffer)
    return future


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker(rank: int, world: int, port: int, device_type: str, shape, steps: int, warmup: int,
            out: str) -> None:
    """One process of a K-process measurement; rank 0 writes the result as JSON."""
    if device_type == "cpu":
        torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    group, device, joined = distributed.setup(device_type, Launch.from_environ())
    recipe = recipe_for(shape, "otseq2set")
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, amp=True))
    sizes = ModelSizes(vocab_size=shape.vocab, num_labels=shape.labels, decode_steps=shape.steps,
                       embed_size=shape.embed, label_embed_size=shape.embed)
    batches = make_batches(shape, 4)
    result: dict = {"world": world, "device": str(device)}

    def timed(trainer: Trainer) -> tuple[float, float]:
        """Wall seconds per step, and CPU seconds per step of all processes together."""
        for i in range(warmup):
            trainer.step(batches[i % len(batches)], i)
        _sync(device)
        group.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(steps):
            trainer.step(batches[i % len(batches)], warmup + i)
        _sync(device)
        cpu = time.process_time() - cpu
        group.barrier()
        wall = time.perf_counter() - start
        return wall / steps, sum(group.all_gather_object(cpu)) / steps

    trainer = Trainer.build(recipe, sizes, device, 1_000_000, group=group)
    result["step"], result["cpu"] = timed(trainer)
    result["parameters"] = sum(p.numel() for p in trainer.model.parameters())
    if group.active:
        # The same steps again, every bucket's all-reduce done synchronously and timed.
        trainer = Trainer.build(recipe, sizes, device, 1_000_000, group=group)
        timer = _BlockingTimer()
        trainer.ddp.register_comm_hook(timer, _timed_allreduce)
        result["blocking_step"] = timed(trainer)[0]
        runs = warmup + steps
        result["grad_allreduce"] = timer.seconds / runs
        result["grad_bytes"] = timer.bytes / runs
        # The loss's own all-reduce: a handful of floats, once a step.
        small = torch.zeros(4, device=group.comm_device)
        group.barrier()
        start = time.perf_counter()
        for _ in range(50):
            dist.all_reduce(small)
        _sync(device)
        result["loss_allreduce"] = (time.perf_counter() - start) / 50
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    if joined:
        distributed.teardown()


def measure(world: int, device_type: str, shape, steps: int, warmup: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.start_processes(_worker, (world, port, device_type, shape, steps, warmup, out),
                           nprocs=world, start_method="spawn")
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--processes", type=int, nargs="+", default=None,
                        help="process counts to compare (default: 1 2 on the CPU; 1 to the "
                             "number of GPUs, doubling, on CUDA)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating rounds of every process count")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default 32)")
    args = parser.parse_args()

    shape = dataclasses.replace(REUTERS, batch=args.batch or REUTERS.batch)
    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    print(describe_machine())
    print(f"{describe(shape)}; OTSeq2Set (BM+OT+LC); global batch {shape.batch}; "
          f"{args.steps} timed steps after {args.warmup} warm-up, {args.rounds} rounds; "
          "CPU: one torch thread per process, gloo; CUDA: one GPU per process, NCCL\n")
    for device_type in devices:
        if args.processes:
            counts = args.processes
        elif device_type == "cpu":
            counts = [1, 2]
        else:
            gpus = torch.cuda.device_count()
            counts = [k for k in (1, 2, 4, 8, 16) if k <= gpus]
        runs: dict[int, list[dict]] = {k: [] for k in counts}
        for r in range(args.rounds):
            for k in counts:
                print(f"[{device_type}] round {r + 1}: {k} process(es) ...", file=sys.stderr,
                      flush=True)
                runs[k].append(measure(k, device_type, shape, args.steps, args.warmup))
        base = statistics.median(x["step"] for x in runs[counts[0]]) * counts[0]
        base_cpu = statistics.median(x["cpu"] for x in runs[counts[0]]) / counts[0]
        print(f"{'dev':<5} {'procs':>5} {'s/step':>8} {'docs/s':>8} {'speed-up':>9} "
              f"{'efficiency':>10} {'CPU s/step':>10} {'CPU x':>6} {'grad AR ms':>10} "
              f"{'AR share':>8} {'MB/step':>8} {'loss AR ms':>10}")
        for k in counts:
            step = statistics.median(x["step"] for x in runs[k])
            cpu = statistics.median(x["cpu"] for x in runs[k])
            docs = shape.batch / step
            speed = base / step
            line = (f"{device_type:<5} {k:>5} {step:>8.3f} {docs:>8.1f} {speed:>9.2f} "
                    f"{speed / k:>10.0%} {cpu:>10.3f} {cpu / base_cpu:>6.2f}")
            if k > 1:
                ar = statistics.median(x["grad_allreduce"] for x in runs[k])
                blocking = statistics.median(x["blocking_step"] for x in runs[k])
                mb = runs[k][0]["grad_bytes"] / 2**20
                small = statistics.median(x["loss_allreduce"] for x in runs[k])
                line += (f" {1e3 * ar:>10.1f} {ar / blocking:>8.0%} {mb:>8.1f} "
                         f"{1e3 * small:>10.2f}")
            print(line)
        print("  every round's s/step: "
              + "; ".join(f"{k}: " + ", ".join(f"{x['step']:.3f}" for x in runs[k])
                          for k in counts))
        print(f"  parameters: {runs[counts[0]][0]['parameters'] / 1e6:.2f} M "
              f"(float32 gradient {4 * runs[counts[0]][0]['parameters'] / 2**20:.1f} MiB)\n")
    print("speed-up = docs/s of K processes / docs/s of the first count; efficiency = speed-up / "
          "K. CPU s/step = CPU time of all processes together per step (load from other jobs "
          "does not change it), CPU x = that over one process's: the work that splitting "
          "adds. grad AR = the gradient all-reduce per step when done synchronously in the comm "
          "hook (DDP normally overlaps it with backward), AR share = its share of that "
          "synchronous step; loss AR = one all-reduce of the loss's sums and denominators.")


if __name__ == "__main__":
    main()
