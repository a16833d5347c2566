"""Training on many processes, GPUs and machines (torchrun + DistributedDataParallel) with the
guarantees of one process.

`torchrun` starts the processes and tells each its place (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT); `setup` joins the process group of the place `xmtc_cli.launch` read: NCCL
with rank r on cuda:LOCAL_RANK, or gloo on the CPU. Without torchrun, or with WORLD_SIZE 1,
nothing here is used and training is the one-process code, unchanged.

* Batches. `train.batch_size` is the global batch. Every rank forms the same batches from the
  seed (`Batcher.epoch`) and keeps rows rank, rank + K, ... of each (`shard`, K the world size),
  so shares differ by at most one document. A rank whose share is empty (a last batch smaller
  than K) runs its forward on a stand-in document whose loss counts zero: it still takes part
  in the gradient all-reduce.
* Loss. A loss is `sum_k w_k * sums_k / counts_k` (`LossTerms`). One all-reduce adds every
  rank's sums and denominators (`global_loss`); rank r back-propagates
  K * sum_k w_k * sums_k(r) / counts_k(all ranks), and DDP averages gradients over the K ranks,
  so the gradient is the one-process gradient of the whole batch (to float rounding) and the
  loss that is logged is the whole batch's. Gradient clipping then sees the same, global
  gradient on every rank, and every rank takes the same Adam step.
* Files. Rank 0 alone opens (and locks) the run folder, writes checkpoints, metrics and the
  train state, validates, and draws progress; the other ranks never touch the folder. A saved
  state is read by rank 0 and broadcast (`sync_start`), so no rank reads a file another wrote
  and multi-node runs need no shared filesystem (except to restart on other machines).
* Randomness. Rank r draws its dropout masks from (train.seed, r); saves gather every rank's
  RNG state into the train state (`gather_rng`; xmtc_cli.run lays the file out), so a resumed
  run ends with the weights of one that never stopped, on the same number of processes. A
  state saved by another number of processes is refused: its dropout streams and float sums
  cannot be continued.
* Restarts. torchrun --max-restarts N starts the group again after a failure, with
  TORCHELASTIC_RESTART_COUNT > 0; a restarted run resumes by itself from the folder that this
  same launch created (`Launch.launch_id`, recorded in the run folder), never from another
  run's.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from xmtc_cli.data.batching import Batch
from xmtc_cli.device import resolve_device
from xmtc_cli.errors import XmtcError
from xmtc_cli.labelspace import GOLD_PAD
from xmtc_cli.launch import Launch
from xmtc_cli.losses import LossTerms

# Rank 0 validates and writes checkpoints while the others wait in a collective: allow for a
# long validation or a large checkpoint before a waiting rank gives up. A dead process is
# noticed by torchrun at once, whatever this says.
TIMEOUT = datetime.timedelta(hours=1)

T = TypeVar("T")


class ReplicatedError(XmtcError):
    """An error rank 0 reports for the whole group: the other ranks raise it too, to stop in the
    same place, and the command line does not print it a second time."""


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes; one process when world_size is 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    comm_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where collectives' tensors must live: the rank's GPU for NCCL, the CPU for gloo."""
    launch: Launch = field(default_factory=Launch)
    """The place torchrun gave this process (restarts, launch id), as `setup` was handed it."""

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self, device: torch.device) -> str:
        if not self.active:
            return str(device)
        return f"{self.world_size} processes ({self.backend}, {device.type})"

    # --- collectives (each a no-op for one process) ----------------------------------------

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if not self.active:
            return
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def on_main(self, fn: Callable[[], T], share: bool = False) -> T | None:
        """Run `fn` on rank 0 alone. Rank 0 returns its result; the others return it too with
        `share`, else None; if `fn` fails, the others raise `ReplicatedError` with its message,
        so that no rank waits forever for one that failed."""
        if not self.active:
            return fn()
        if self.is_main:
            try:
                value = fn()
            except XmtcError as exc:
                self.broadcast_object(("error", (exc.message, exc.hint), None))
                raise
            except BaseException as exc:
                self.broadcast_object(("abort", (f"rank 0 stopped: {exc!r}", None), None))
                raise
            self.broadcast_object(("ok", None, value if share else None))
            return value
        status, failure, shared = self.broadcast_object(None)
        if status != "ok":
            raise ReplicatedError(*failure)
        return shared if share else None


SINGLE = Group()


# --- joining the group torchrun started -------------------------------------------------------

def setup(device_name: str, launch: Launch) -> tuple[Group, torch.device, bool]:
    """The group this process belongs to at its place `launch`, and its device; joins the
    process group (NCCL on CUDA, gloo on the CPU) when there are several processes. The flag
    says whether this call joined it, and so must leave it (`teardown`)."""
    world, rank, local_rank = launch.world_size, launch.rank, launch.local_rank
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is None and launch.by_torchrun:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise XmtcError(
                f"process {rank} (LOCAL_RANK {local_rank}) has no GPU: torch sees {count}",
                "start at most one process per GPU (torchrun --nproc-per-node), or --device cpu",
            )
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world == 1:
        return Group(launch=launch), device, False
    backend = "nccl" if device.type == "cuda" else "gloo"
    joined = False
    if not dist.is_initialized():
        store = _restart_store(launch)
        if store is None:
            dist.init_process_group(backend, timeout=TIMEOUT)
        else:
            dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                    timeout=TIMEOUT)
        joined = True
    group = Group(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                  backend=backend, comm_device=device if backend == "nccl" else torch.device("cpu"),
                  launch=launch)
    return group, device, joined


def _restart_store(launch: Launch) -> dist.Store | None:
    """The store a restarted group of one machine joins through, or None for torch's own.

    torchrun's agent keeps one store for all attempts of a launch, and the keys that the
    process group of a killed attempt left there (its ranks' addresses) are read again by the
    next attempt, which then connects to a dead process and fails (pytorch issue 135712). On
    one machine every worker has the same restart count, so each attempt takes its own
    namespace of that store. Several machines' agents count restarts apart: there, set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun, which gives each attempt a new store.
    """
    one_agent = os.environ.get("GROUP_WORLD_SIZE", "1") == "1"  # one machine, one agent
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    if launch.restarts == 0 or not shared or not one_agent:
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          launch.world_size, is_master=False, timeout=TIMEOUT)
    return dist.PrefixStore(f"xmtc/attempt_{launch.restarts}", store)


def lost_contact(exc: BaseException) -> bool:
    """Whether a collective failed because another process is gone (gloo and NCCL raise plain
    RuntimeErrors, or torch.distributed's own errors)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return "gloo" in text.lower() or "NCCL" in text or "Connection reset by peer" in text


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# --- the model and the step -------------------------------------------------------------------

def wrap(model: torch.nn.Module, group: Group, device: torch.device,
         bf16_grads: bool = False) -> torch.nn.parallel.DistributedDataParallel:
    """`model` in DDP (which broadcasts rank 0's weights); gradients sent in bf16 if asked."""
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
    )
    if bf16_grads:
        # Imported on the one path that uses it: importing this module never depends on
        # torch's DDP communication-hook package.
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
            bf16_compress_hook,
        )

        ddp.register_comm_hook(None, bf16_compress_hook if group.backend == "nccl"
                               else _bf16_gloo_hook)
    return ddp


def _bf16_gloo_hook(state, bucket):  # DDP checks real annotations; ours would be strings
    """torch's bf16_compress_hook for gloo, which torch's own hook refuses (it wants NCCL):
    each bucket (a dist.GradBucket) travels in bf16, averaged over the ranks, and returns to
    float32; returns a torch.futures.Future of the bucket."""
    buffer = bucket.buffer()
    compressed = buffer.to(torch.bfloat16).div_(dist.get_world_size())
    future = dist.all_reduce(compressed, async_op=True).get_future()

    def decompress(done):
        buffer.copy_(done.value()[0])
        return buffer

    return future.then(decompress)


def seed_rank(seed: int, rank: int) -> None:
    """Give each rank its own dropout stream, drawn from (seed, rank)."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def shard(batch: Batch, rank: int, world_size: int) -> tuple[Batch, bool]:
    """Rank `rank`'s share of a global batch, rows rank, rank + K, ...: the batch that
    `Batcher.batch` builds for those documents (padding cut to the share's own longest). An
    empty share is the batch's first document, flagged True: a stand-in whose loss counts 0."""
    rows = torch.arange(rank, len(batch), world_size)
    standin = len(rows) == 0
    if standin:
        rows = torch.zeros(1, dtype=torch.long)
    lengths = batch.lengths[rows]
    gold = batch.gold[rows]
    width = max(int(lengths.max()), 1)
    slots = max(int((gold != GOLD_PAD).sum(1).max()), 1)
    features = None if batch.features is None else batch.features[rows].contiguous()
    part = Batch(batch.src[rows, :width].contiguous(), lengths.contiguous(),
                 gold[:, :slots].contiguous(), batch.index[rows.numpy()], features)
    return part, standin


def global_loss(terms: LossTerms, group: Group, standin: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """From this rank's loss terms: the loss to back-propagate (scaled so that DDP's average
    of the ranks' gradients is the gradient of the whole batch's loss), and the whole batch's
    loss and parts, detached, the same on every rank."""
    names = list(terms.sums)
    local = torch.stack([terms.sums[k].detach().float() for k in names]
                        + [terms.counts[k].float() for k in names])
    if standin:
        local = torch.zeros_like(local)
    dist.all_reduce(local)
    sums, counts = local[: len(names)], local[len(names):].clamp_min(1e-12)
    scale = 0.0 if standin else float(group.world_size)
    loss = sum(terms.weights[k] * terms.sums[k] / counts[i] for i, k in enumerate(names)) * scale
    parts = {k: sums[i] / counts[i] for i, k in enumerate(names)}
    value = sum(terms.weights[k] * parts[k] for k in names)
    return loss, value, parts


# --- starting and saving ----------------------------------------------------------------------

def sync_start(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: Any,
               rngs: list[dict[str, torch.Tensor]] | None, group: Group
               ) -> tuple[Any, list[dict[str, torch.Tensor]] | None]:
    """Rank 0's weights, Adam moments, `state` and RNG states on every rank (rank 0 has read
    them from the run folder); returns the state and every rank's RNG state, in rank order
    (None when the run starts afresh)."""
    layout = None
    if group.is_main:
        layout = {pid: {key: (tuple(v.shape), v.dtype, v.device.type) for key, v in slots.items()}
                  for pid, slots in optimizer.state_dict()["state"].items()}
    state, layout, rngs = group.broadcast_object((state, layout, rngs))
    for tensor in model.state_dict().values():
        _broadcast_tensor(tensor, group)
    if layout:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        ours = optimizer.state_dict()["state"]
        filled: dict[int, dict[str, torch.Tensor]] = {}
        for pid, slots in layout.items():
            for key, (shape, dtype, kind) in slots.items():
                if group.is_main:
                    value = ours[pid][key]
                else:
                    place = params[pid].device if kind != "cpu" else torch.device("cpu")
                    value = torch.empty(shape, dtype=dtype, device=place)
                _broadcast_tensor(value, group)
                filled.setdefault(pid, {})[key] = value
        if not group.is_main:
            current = optimizer.state_dict()
            optimizer.load_state_dict({"state": filled, "param_groups": current["param_groups"]})
    return state, rngs


def _broadcast_tensor(tensor: torch.Tensor, group: Group) -> None:
    """Rank 0's values into `tensor` in place, through the communication device if need be."""
    if tensor.device == group.comm_device:
        dist.broadcast(tensor, src=0)
        return
    carrier = tensor.to(group.comm_device)
    dist.broadcast(carrier, src=0)
    tensor.copy_(carrier)


def gather_rng(own: dict[str, torch.Tensor], group: Group) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state, in rank order, for the train state (xmtc_cli.run lays it out)."""
    if not group.active:
        return [own]
    return group.all_gather_object({k: v.cpu() for k, v in own.items()})
