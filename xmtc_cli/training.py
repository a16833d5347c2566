"""fit(): train a model from a recipe into a run folder, resumably.

`fit` reads as set up -> epochs -> result. The pieces:
  Trainer      the model, its loss and its optimiser; `Trainer.step` is one optimiser step, the
               one that benchmarks and tests take too
  _Epochs      the epoch loop's state: batches, validation, saving into the run folder
  RunFolder    the files of a run and the rules that keep them one run's (xmtc_cli.run)

Every epoch's batch order is drawn from (seed, epoch) and the RNG state is saved with the
weights, so a run resumed from an epoch's end, or from a save inside an epoch
(train.checkpoint_every), ends with the same weights as one that never stopped.

Under torchrun every process runs `fit` alike: each trains on its share of every global batch
with the gradient of the whole batch, and rank 0 alone opens the run folder, validates, writes
and reports (xmtc_cli.distributed). One process takes exactly the code path it always took.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from xmtc_cli import distributed
from xmtc_cli.checkpoint import CheckpointMeta, save_checkpoint
from xmtc_cli.config import Recipe, TrainConfig
from xmtc_cli.data.batching import Batch, Batcher, frequency_rank
from xmtc_cli.data.builtin import load_data
from xmtc_cli.data.processed import ProcessedData, data_fingerprint
from xmtc_cli.device import autocast, cpu_has_native_bf16
from xmtc_cli.distributed import SINGLE, Group, ReplicatedError
from xmtc_cli.errors import XmtcError
from xmtc_cli.evaluation import evaluate_split, lexical_prior
from xmtc_cli.launch import Launch
from xmtc_cli.lexical import LexicalIndex
from xmtc_cli.losses import build_criterion
from xmtc_cli.memory import keep_freed_memory
from xmtc_cli.model import ModelSizes, Seq2SetModel, bf16_products, build_model
from xmtc_cli.optim import build_adam
from xmtc_cli.prototypes import init_output_prototypes
from xmtc_cli.run import (
    BEST_FILE,
    LAST_FILE,
    EpochReport,
    RunFolder,
    TrainState,
    rng_state,
    set_rng_state,
)
from xmtc_cli.shortlist import (
    CandidateSource,
    LexicalNegatives,
    UniformNegatives,
    hard_negatives,
    to_candidates,
)
from xmtc_cli.threads import LoadWatch, ThreadChoice, apply_threads, choose_threads, follow_load

DEFAULT_EMBED_SIZE = 300  # the paper's GloVe width, used when no vectors were given
DEFAULT_MAX_SRC_TOKENS = 500
MAX_LOSS = 1e6  # a mean loss this large means the run has diverged, even if still finite
MAX_GROWTH = 100.0  # ... and so does one 100 times the first step's (or 100, if that was < 1)
LOSS_READ_EVERY = 10  # steps between reads of the running loss (each read waits for the device)


@dataclass(frozen=True)
class RunInfo:
    """What a run is about to do, for the progress display."""

    run_dir: Path
    device: str  # the device, or how many processes on which devices
    epochs: int
    start_epoch: int  # 1-based epoch the run starts at (> 1 when resuming)
    start_batch: int  # batches of start_epoch already trained (> 0 when resuming mid-epoch)
    steps_per_epoch: int
    train_docs: int
    valid_docs: int
    parameters: int
    log_every: float  # seconds between progress lines off a terminal
    threads: str = ""  # the CPU threads torch uses and why (ThreadChoice.describe)
    precision: str = ""  # what train.cpu_bf16 does here, when the recipe asks for it


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_valid: dict[str, float] | None
    epochs: list[EpochReport] = field(default_factory=list)


class Callback(Protocol):
    """What a run reports as it goes. A callback may also have `on_notice(text)`, for a line
    that is not progress (a new thread count); `fit` calls it where it exists."""

    def on_start(self, info: RunInfo) -> None: ...
    def on_step(self, epoch: int, step: int, docs: int, loss: float | None) -> None: ...
    def on_validate(self, done: int, total: int) -> None: ...
    def on_epoch_end(self, report: EpochReport) -> None: ...


class Silent:
    """A callback that shows nothing."""

    def on_start(self, info: RunInfo) -> None:
        pass

    def on_step(self, epoch: int, step: int, docs: int, loss: float | None) -> None:
        pass

    def on_validate(self, done: int, total: int) -> None:
        pass

    def on_epoch_end(self, report: EpochReport) -> None:
        pass


# --- from data and recipe to a model ---------------------------------------------------------

def resolve_recipe(recipe: Recipe, data: ProcessedData) -> Recipe:
    """Fill the two blanks a recipe may leave to the data (data.max_src_tokens, data.max_labels:
    N) once, when a run starts; the run records the filled recipe (config.py's docstring)."""
    max_src = recipe.data.max_src_tokens or DEFAULT_MAX_SRC_TOKENS
    max_labels = recipe.data.max_labels or _largest_label_set(data)
    return dataclasses.replace(
        recipe, data=dataclasses.replace(recipe.data, max_src_tokens=int(max_src),
                                         max_labels=int(max_labels))
    )


def _largest_label_set(data: ProcessedData) -> int:
    train = data.splits["train"]
    return max(int(np.diff(train.label_offsets).max(initial=0)), 1)


def rank_hard_negatives(recipe: Recipe, data: ProcessedData) -> tuple[LexicalIndex, torch.Tensor]:
    """The lexical index of the training split (the recipe's model.lexical_* options) and,
    ranked by it, train.shortlist_hard's negatives of every training document [N, M]
    (`shortlist.hard_negatives`; `Trainer.build`'s `hard_negatives`)."""
    index = LexicalIndex.for_recipe(data.splits["train"], len(data.tokens), data.num_labels,
                                    recipe.model)
    return index, hard_negatives(index, recipe.train.shortlist_hard)


def model_sizes(recipe: Recipe, data: ProcessedData) -> ModelSizes:
    """The sizes the model is built with, all derived from the data and the resolved recipe."""
    emb = data.token_embeddings
    label_width = recipe.model.label_embedding_size
    if label_width is None:
        if data.label_embeddings is None:
            raise XmtcError(
                f"{data.path} has no label embeddings, and the recipe asks for them "
                "(model.label_embedding_size is null)",
                "set model.label_embedding_size to train random label embeddings of that width, "
                "or preprocess again with --glove",
            )
        label_width = data.label_embeddings.shape[1]
    return ModelSizes(
        vocab_size=len(data.tokens),
        num_labels=data.num_labels,
        decode_steps=recipe.data.max_labels,
        embed_size=emb.shape[1] if emb is not None else DEFAULT_EMBED_SIZE,
        label_embed_size=int(label_width),
        feature_size=data.feature_size,
    )


def checkpoint_meta(recipe: Recipe, sizes: ModelSizes, data: ProcessedData,
                    **extra: Any) -> CheckpointMeta:
    """Everything `xmtc predict` needs beside the weights."""
    return CheckpointMeta(
        recipe=recipe,
        sizes=sizes,
        tokens=list(data.tokens),
        tokenizer=dict(data.tokenizer),
        labels=list(data.labels[: data.num_labels]),
        label_names=list(data.label_names[: data.num_labels]),
        label_counts=[int(c) for c in data.label_counts[: data.num_labels]],
        extra=extra,
    )


def cosine_lr(train: TrainConfig, step: int, total: int) -> float:
    """The learning rate at optimiser step `step` of `total`: cosine from lr to min_lr."""
    progress = min(step, total) / max(total, 1)
    return train.min_lr + (train.lr - train.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- one step ---------------------------------------------------------------------------------

@dataclass
class Trainer:
    """A model, its loss and its optimiser; `step` is one training step."""

    model: Seq2SetModel  # the model itself, never its DDP wrapper: what checkpoints hold
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train: TrainConfig
    total_steps: int  # the length of the learning-rate schedule
    device: torch.device
    group: Group = SINGLE  # the processes training together (one by default)
    ddp: torch.nn.parallel.DistributedDataParallel | None = None  # `model` in DDP, if several
    shortlist: CandidateSource | None = None  # the softmax's candidates (train.shortlist)
    keep_token_gradient: bool = True  # the token table's gradient buffer kept between steps
    bf16_products: bool = False  # train.cpu_bf16 where it applies (model.bf16_products)

    @classmethod
    def build(cls, recipe: Recipe, sizes: ModelSizes, device: torch.device, total_steps: int,
              token_embeddings: np.ndarray | None = None,
              label_embeddings: np.ndarray | None = None, group: Group = SINGLE,
              hard_negatives: torch.Tensor | None = None) -> Trainer:
        """Seed torch with train.seed, then build the model (from pretrained vectors if given),
        the recipe's loss and Adam; with several processes, wrap the model in DDP and give each
        rank its own dropout stream. `hard_negatives` [N, m]: each training document's hard
        negatives for train.shortlist (`shortlist.hard_negatives`; None: uniform draws)."""
        if recipe.train.ranks_hard_negatives and hard_negatives is None:
            raise ValueError("train.shortlist_hard needs each training document's hard "
                             "negatives (shortlist.hard_negatives)")
        torch.manual_seed(recipe.train.seed)
        if device.type == "cpu":  # a step's large tensors reuse the last step's memory
            keep_freed_memory()
        if recipe.model.label_embedding_size is not None:
            label_embeddings = None  # the recipe asks for random ones
        model = build_model(recipe.model, recipe.loss, sizes, token_embeddings, label_embeddings)
        model = model.to(device)
        optimizer = build_adam(model.parameters(), recipe.train.lr, recipe.train.weight_decay,
                               fused=recipe.train.fused_adam)
        ddp = None
        if group.active:
            ddp = distributed.wrap(model, group, device, recipe.train.ddp_bf16_grads)
            distributed.seed_rank(recipe.train.seed, group.rank)
        shortlist: CandidateSource | None = None
        if recipe.train.ranks_hard_negatives:
            shortlist = LexicalNegatives(hard_negatives, recipe.train.shortlist,
                                         recipe.train.seed)
        elif recipe.train.shortlist is not None:
            shortlist = UniformNegatives(recipe.train.shortlist, recipe.train.seed)
        bf16 = recipe.train.cpu_bf16 and device.type == "cpu" and cpu_has_native_bf16()
        return cls(model, build_criterion(recipe.loss), optimizer, recipe.train, total_steps,
                   device, group, ddp, shortlist, bf16_products=bf16)

    def describe_precision(self) -> str:
        """What train.cpu_bf16 does in this run, for its header; empty when not asked for."""
        if not self.train.cpu_bf16:
            return ""
        if self.bf16_products:
            return "bf16 products in the encoder GRU, float32 sums (train.cpu_bf16)"
        if self.device.type != "cpu":
            return f"train.cpu_bf16 ignored on {self.device.type} (train.amp applies there)"
        return ("train.cpu_bf16 ignored: this CPU has no native bf16 (AVX-512 BF16 or AMX), "
                "where bf16 products are slower than float32")

    def step(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Train on `batch` as optimiser step `step` (0-based; it sets the learning rate).

        With several processes `batch` is the global batch: each rank trains on its share, and
        the gradient, loss and parts are the whole batch's (xmtc_cli.distributed).
        Returns the loss and its parts, detached and still on the device: reading them waits
        for the device, so callers read them only now and then.
        """
        lr = cosine_lr(self.train, step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        standin = False
        outputs = self.model.label_embedding.num_embeddings  # V
        candidates = None  # drawn from the global batch: every rank has the same
        if self.shortlist is not None:
            candidates = self.shortlist.candidates(batch.gold, outputs, step,
                                                   batch.index)  # (K',)
        if self.ddp is not None:
            batch, standin = distributed.shard(batch, self.group.rank, self.group.world_size)
        net = self.ddp if self.ddp is not None else self.model
        net.train()
        batch = batch.to(self.device)
        tokens = self.model.encoder.embedding  # the token table: (vocab, E)
        # On the CPU without DDP its gradient lives in one buffer kept between steps: the
        # lookup's gradient arrives sparse (B·T rows) and is added into it, and after the step
        # those rows are zeroed again. A fresh dense [vocab, E] gradient each step (245 MB at
        # AmazonCat-13K's vocabulary) costs more to allocate and fill than the rest of the
        # table's update (docs/design.md §12). The same sums.
        kept = None
        if self.keep_token_gradient and self.ddp is None and self.device.type == "cpu":
            kept = tokens.weight.grad
            if kept is None or kept.is_sparse or kept.shape != tokens.weight.shape:
                kept = torch.zeros_like(tokens.weight)
        tokens.sparse = kept is not None
        gold, table = batch.gold, self.model.label_embedding.weight
        if candidates is not None:  # the loss sees the candidates' columns and rows only
            candidates = candidates.to(self.device)
            gold = to_candidates(gold, candidates, outputs)  # (B, M) positions
            table = table.index_select(0, candidates)  # (K', E_l)
        with autocast(self.device, self.train.amp), bf16_products(self.bf16_products):
            logits = net(batch.src, batch.lengths, batch.gold, batch.features, candidates)
            if self.ddp is None:
                loss, parts = self.criterion(logits, gold, table)
                value = loss
            else:
                terms = self.criterion.terms(logits, gold, table)
                loss, value, parts = distributed.global_loss(terms, self.group, standin)
        self.optimizer.zero_grad(set_to_none=True)
        if kept is not None:
            tokens.weight.grad = kept  # all zeros
        loss.backward()
        # After DDP's all-reduce every rank holds the same, global gradient: the same clip.
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        self.optimizer.step()
        if kept is not None:  # all zeros again for the next step
            if bool(torch.isfinite(norm)):  # else the clip scaled the zeros to NaN too
                kept.index_fill_(0, batch.src.flatten(), 0.0)
            else:
                kept.zero_()
        return value.detach().float(), {k: v.detach().float() for k, v in parts.items()}

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


# --- the run ----------------------------------------------------------------------------------

def fit(recipe: Recipe, run_dir: str | Path, *, device: str = "auto", resume: bool = False,
        command: str = "", callback: Callback | None = None,
        launch: Launch | None = None, init: str | Path | None = None,
        threads: int | ThreadChoice | None = None) -> FitResult:
    """Train `recipe` into `run_dir`; `resume` continues the interrupted run there.

    `threads`: CPU threads for torch (--threads), or the choice already made (the command
    makes it before torch loads, xmtc_cli.threads.settle_waits); None: train.threads, else
    the environment's or the usable cores' default (xmtc_cli.threads.choose_threads). A
    default count follows the load while the run trains (xmtc_cli.threads.LoadWatch).

    Under torchrun every process calls `fit` with the same arguments; it joins the process group
    (and leaves it at the end), and rank 0 alone writes `run_dir` and reports to `callback`.
    `launch`: this process's place (None: read from the environment).
    """
    launch = launch or Launch.from_environ()
    choice = (threads if isinstance(threads, ThreadChoice)
              else choose_threads(threads, recipe.train.threads, launch.local_world_size))
    apply_threads(choice)
    group, dev, joined = distributed.setup(device, launch)
    try:
        return _fit(recipe, Path(run_dir), dev, group, resume, command, callback or Silent(),
                    init, choice)
    except RuntimeError as exc:
        if not (group.active and distributed.lost_contact(exc)):
            raise
        raise XmtcError(
            f"process {group.rank} lost contact with the other training processes "
            f"({str(exc).splitlines()[0][:200]})",
            "another process stopped or died: its own error comes first; torchrun "
            "--max-restarts N starts the group again, and the run resumes from its last save",
        ) from exc
    finally:
        if joined:
            distributed.teardown()


def _fit(recipe: Recipe, run_dir: Path, device: torch.device, group: Group, resume: bool,
         command: str, callback: Callback, init: str | Path | None = None,
         threads: ThreadChoice | None = None) -> FitResult:
    if not group.is_main:
        callback = Silent()
    run_dir = Path(group.broadcast_object(str(run_dir)))  # rank 0's choice of folder
    data = load_data(recipe.data.dir)
    recipe = resolve_recipe(recipe, data)
    if "train" not in data.splits or len(data.splits["train"]) == 0:
        raise XmtcError(f"{data.path} has no training documents", "re-run `xmtc preprocess`")
    _check_agreement(recipe, data, group)
    _check_lexical(recipe, data)
    epochs = _Epochs.start(recipe, data, run_dir, resume, command, device, group, callback,
                           init, threads)
    with epochs.folder or contextlib.nullcontext():
        reports = []
        for epoch in range(epochs.state.epoch + 1, recipe.train.epochs + 1):
            if epochs.out_of_steps or epochs.out_of_patience:
                break
            reports.append(epochs.run(epoch))
        # Tuned on the documents validation scored: train.valid_docs bounds this decoding too.
        # model.lexical: validation's lexical scores of those documents, scored once already.
        prior = epochs.lexical[1] if epochs.lexical is not None else None
        group.on_main(lambda: _tune_threshold(recipe, epochs.validation_data,
                                              run_dir / BEST_FILE, device, prior))
        group.barrier()  # no rank returns before rank 0 has written the run's last files
        state = epochs.state
        return FitResult(run_dir=run_dir, best_checkpoint=run_dir / BEST_FILE,
                         last_checkpoint=run_dir / LAST_FILE, best_epoch=state.best_epoch,
                         best_valid=state.best_valid, epochs=reports)


def _tune_threshold(recipe: Recipe, data: ProcessedData, best: Path,
                    device: torch.device, prior: Any = None) -> None:
    """The best checkpoint gets the score threshold tuned on `data`'s validation split, the
    documents validation scores (train.valid_docs of them, if set; `threshold.py`), with
    their lexical scores `prior` where validation computed them."""
    valid = data.splits.get("valid")
    if valid is not None and len(valid) and best.exists():
        from xmtc_cli.threshold import tune_checkpoint

        tune_checkpoint(best, valid, recipe.train.eval_batch_size, device, prior)


def _check_agreement(recipe: Recipe, data: ProcessedData, group: Group) -> None:
    """Every process must train the same recipe on the same data (each node reads its own)."""
    if not group.active:
        return
    mine = (recipe.to_dict(), data_fingerprint(data))  # "the same data" as --resume means it
    differing = [r for r, theirs in enumerate(group.all_gather_object(mine)) if theirs != mine]
    if differing:
        raise XmtcError(
            f"the training processes disagree on the recipe or the data: process {group.rank} "
            f"and process(es) {', '.join(map(str, differing))} differ",
            "start every process with the same recipe and overrides, and the same processed data "
            "(data.dir) on every machine",
        )


def _check_lexical(recipe: Recipe, data: ProcessedData) -> None:
    """A lexical scorer chooses its weight on validation, unless the recipe gives it one."""
    if recipe.model.lexical == "none" or len(recipe.model.lexical_weights) == 1:
        return
    valid = data.splits.get("valid")
    if valid is None or not len(valid):
        raise XmtcError(
            f"model.lexical={recipe.model.lexical} chooses its weight from "
            f"model.lexical_weights on the validation split, and {data.path} has none",
            "give one weight (e.g. model.lexical_weights=[1.0]), or preprocess again with "
            "--valid-fraction",
        )


def _open_folder(run_dir: Path, recipe: Recipe, resume: bool, command: str,
                 launch: Launch) -> RunFolder:
    if not resume and launch.restarts > 0 and RunFolder.started_by(run_dir, launch.launch_id):
        resume = True  # torchrun restarted this launch after a failure: continue its run
    if resume:
        return RunFolder.reopen(run_dir, recipe, command)
    return RunFolder.create(run_dir, recipe, command, launch=launch.launch_id)


@dataclass
class _Epochs:
    """The epoch loop of one run: what `fit` would otherwise pass to every helper."""

    recipe: Recipe
    data: ProcessedData
    sizes: ModelSizes
    trainer: Trainer
    batcher: Batcher
    folder: RunFolder | None  # open on rank 0 alone
    state: TrainState
    callback: Callback
    steps_per_epoch: int  # batches (optimiser steps) in one epoch
    reference_loss: float | None = None  # this process's first step's loss: what growth means
    # model.lexical: the index over the training documents and the validation split's label
    # scores, built once on rank 0 when first needed (they depend on the data alone)
    lexical: tuple[LexicalIndex, Any] | None = None
    lexical_index: LexicalIndex | None = None  # built early for train.shortlist_hard
    watch: LoadWatch | None = None  # a default thread count's look at the load (CPU runs)

    @property
    def group(self) -> Group:
        return self.trainer.group

    @classmethod
    def start(cls, recipe: Recipe, data: ProcessedData, run_dir: Path, resume: bool,
              command: str, device: torch.device, group: Group,
              callback: Callback, init: str | Path | None = None,
              threads: ThreadChoice | None = None) -> _Epochs:
        """Build everything from the recipe, open the run folder (rank 0) and load the saved
        state when it has one (rank 0, which then hands it to the other ranks)."""
        sizes = model_sizes(recipe, data)
        rank = (frequency_rank(data.label_counts[: data.num_labels])
                if recipe.data.label_order == "frequency" else None)
        batcher = Batcher(data.splits["train"], recipe.data.max_src_tokens,
                          recipe.data.max_labels, data.num_labels, rank)
        steps_per_epoch = batcher.num_batches(recipe.train.batch_size)
        index = hard = None
        if recipe.train.ranks_hard_negatives:
            # Every rank ranks the same documents the same way: the same candidates.
            begun = time.perf_counter()
            index, hard = rank_hard_negatives(recipe, data)
            notice = getattr(callback, "on_notice", None)
            if notice is not None:
                notice(f"shortlist: {recipe.train.shortlist_hard} hard negatives for each of "
                       f"{len(hard):,} training documents from the lexical scorer "
                       f"({time.perf_counter() - begun:.0f} s)")
        trainer = Trainer.build(recipe, sizes, device, steps_per_epoch * recipe.train.epochs,
                                data.token_embeddings, data.label_embeddings, group, hard)
        # The folder (and its lock) is closed here if starting fails, and otherwise stays open
        # for the run: `fit` closes it.
        with contextlib.ExitStack() as on_failure:

            def open_and_load(
            ) -> tuple[RunFolder, TrainState, list[dict[str, torch.Tensor]] | None]:
                folder = on_failure.enter_context(_open_folder(run_dir, recipe, resume, command,
                                                                group.launch))
                fingerprint = data_fingerprint(data)
                state, rngs = TrainState(data=fingerprint), None
                if folder.has_state:
                    state, rngs = folder.load_state(trainer.model, trainer.optimizer, device,
                                                    (recipe.data.dir, fingerprint))
                    state.data = fingerprint  # states saved before fingerprints had none
                    _check_world_size(folder, len(rngs), group)
                elif init is not None:  # --init: a checkpoint's weights, matched by name
                    from xmtc_cli.warmstart import init_from_checkpoint

                    init_from_checkpoint(trainer.model, init, list(data.tokens),
                                         list(data.labels[: data.num_labels]))
                elif recipe.model.output_init == "prototype":
                    # Rank 0's rows reach the other ranks with its weights (sync_start).
                    init_output_prototypes(trainer.model, batcher, recipe.train.eval_batch_size,
                                           device)
                folder.truncate_metrics(state.epoch)
                return folder, state, rngs

            folder, state, rngs = group.on_main(open_and_load) or (None, TrainState(), None)
            if group.active:
                state, rngs = distributed.sync_start(trainer.model, trainer.optimizer, state,
                                                     rngs, group)
            if rngs is not None:  # as many as there are ranks (_check_world_size)
                set_rng_state(rngs[group.rank], device)
            if threads is not None:
                threads = _resumed_threads(threads, state)
                state.threads = threads.count
            valid = data.splits.get("valid")
            callback.on_start(RunInfo(
                run_dir=run_dir, device=group.describe(device), epochs=recipe.train.epochs,
                start_epoch=state.epoch + 1, start_batch=state.batches_done,
                steps_per_epoch=steps_per_epoch, train_docs=len(batcher.split),
                valid_docs=(min(len(valid), recipe.train.valid_docs or len(valid))
                            if valid is not None else 0),
                parameters=sum(p.numel() for p in trainer.model.parameters()),
                log_every=recipe.train.log_every,
                threads=threads.describe() if threads is not None else "",
                precision=trainer.describe_precision(),
            ))
            on_failure.pop_all()
        watch = LoadWatch(threads) if threads is not None and device.type == "cpu" else None
        return cls(recipe, data, sizes, trainer, batcher, folder, state, callback,
                   steps_per_epoch, watch=watch, lexical_index=index)

    @property
    def out_of_patience(self) -> bool:
        """train.early_stop validations in a row have finished without a new best. Patience
        counts validations, not epochs: an epoch train.valid_every skips cannot improve, so it
        uses none. Counted: the multiples of valid_every after the best epoch (the run's last
        epoch, validated too, ends it; a run --resume extends does not count the old last
        epoch's validation unless it was a multiple)."""
        patience = self.recipe.train.early_stop
        if patience is None or self.state.best_epoch <= 0:
            return False
        every = self.recipe.train.valid_every
        return self.state.epoch // every - self.state.best_epoch // every >= patience

    @property
    def out_of_steps(self) -> bool:
        """train.max_steps optimiser steps are done."""
        limit = self.recipe.train.max_steps
        return limit is not None and self.state.step >= limit

    def run(self, epoch: int) -> EpochReport:
        """Train epoch `epoch` (from where a save inside it left off), validate, save."""
        start = time.perf_counter()
        first = self.state.batches_done
        loss_sum, parts_sum = self._train(epoch)
        done = self.state.batches_done
        complete = done == self.steps_per_epoch
        train_seconds = time.perf_counter() - start
        loss = loss_sum.item() / done
        _check_finite(loss, epoch, self.trainer.model, self.group, self.reference_loss)
        metrics = self._validate() if self._validates(epoch) else None
        trained_docs = min(done * self.recipe.train.batch_size, len(self.batcher.split))
        trained_docs -= first * self.recipe.train.batch_size
        report = EpochReport(
            epoch=epoch, train_loss=loss,
            loss_parts={k: v.item() / done for k, v in parts_sum.items()}, valid=metrics,
            seconds=0.0, docs_per_second=trained_docs / max(train_seconds, 1e-9),
            lr=self.trainer.lr, best=False, steps=self.state.step, partial=not complete,
            threads=torch.get_num_threads(),
        )
        report = self._save(epoch, report, complete, time.perf_counter() - start)
        self.callback.on_epoch_end(report)
        return report

    def _train(self, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The epoch's remaining batches, saving inside it as the recipe asks; the loss sums."""
        train, state = self.recipe.train, self.state
        device = self.trainer.device
        loss_sum = torch.tensor(state.loss_sum, dtype=torch.float32, device=device)
        parts_sum = {k: torch.tensor(v, dtype=torch.float32, device=device)
                     for k, v in state.parts_sum.items()}
        steps = self.steps_per_epoch
        batches = self.batcher.epoch(train.batch_size, seed=_epoch_seed(train, epoch),
                                     start=state.batches_done)
        for i, batch in enumerate(batches, start=state.batches_done):
            loss, parts = self.trainer.step(batch, state.step)
            state.step += 1
            state.batches_done = i + 1
            loss_sum += loss
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0) + v
            if self.reference_loss is None:  # this process's first step: taken before any update
                self.reference_loss = loss.item()
            shown = None
            if (i + 1) % LOSS_READ_EVERY == 0 or i + 1 == steps:
                shown = loss_sum.item() / (i + 1)
                _check_finite(shown, epoch, group=self.group, reference=self.reference_loss)
            self.callback.on_step(epoch, i + 1, len(batch), shown)
            self._follow_load()
            if i + 1 == steps:
                break
            every = train.checkpoint_every
            if self.out_of_steps or (every and state.step % every == 0):
                state.loss_sum = loss_sum.item()
                state.parts_sum = {k: v.item() for k, v in parts_sum.items()}
                rngs = distributed.gather_rng(rng_state(), self.group)  # every rank's
                if self.folder is not None:
                    self.folder.save_state(state, self.trainer.model, self.trainer.optimizer,
                                           self.recipe, rngs)
            if self.out_of_steps:
                break
        return loss_sum, parts_sum

    def _follow_load(self) -> None:
        """A default thread count follows the cores other processes keep busy (LoadWatch): a
        neighbour that starts during the run gets its core within seconds, instead of this
        run's waiting threads taking it from both. Saved states record the count."""
        count = follow_load(self.watch, getattr(self.callback, "on_notice", None))
        if count is not None:
            self.state.threads = count

    @property
    def has_validation(self) -> bool:
        valid = self.data.splits.get("valid")
        return valid is not None and len(valid) > 0

    def _validates(self, epoch: int) -> bool:
        """Whether epoch `epoch` ends with a validation: every train.valid_every-th epoch, and
        the run's last (the last of the recipe, or where train.max_steps ends it)."""
        every = self.recipe.train.valid_every
        return (self.has_validation and (epoch % every == 0 or epoch == self.recipe.train.epochs
                                         or self.out_of_steps))

    def _validate(self) -> dict[str, float] | None:
        """Validation metrics (on train.valid_docs of the split, if set), computed by rank 0
        alone exactly as one process computes them, and handed to the other ranks, which
        wait."""
        if not self.has_validation:
            return None
        data = self.validation_data

        def progress(done: int, total: int) -> None:
            self.callback.on_validate(done, total)
            self._follow_load()  # validation can take minutes: the count follows there too

        return self.group.on_main(
            lambda: evaluate_split(self.trainer.model, data, "valid", self.recipe,
                                   self.trainer.device, progress=progress,
                                   prior=self._lexical()[1]),
            share=True,
        )

    @functools.cached_property
    def validation_data(self) -> ProcessedData:
        """What validation decodes: the data with its validation split cut to train.valid_docs
        (the same documents every epoch, so drawn once)."""
        return validation_subset(self.data, self.recipe.train.valid_docs, self.recipe.train.seed)

    def _lexical(self) -> tuple[LexicalIndex | None, Any]:
        """The lexical index and the label scores of the documents validation decodes (rows
        aligned with `validation_data`'s split); (None, None) without."""
        model = self.recipe.model
        if model.lexical == "none":
            return None, None
        if self.lexical is None:
            index = self.lexical_index or LexicalIndex.for_recipe(
                self.data.splits["train"], len(self.data.tokens), self.data.num_labels, model)
            valid = self.validation_data.splits.get("valid")
            prior = lexical_prior(index, valid) if valid is not None and len(valid) else None
            self.lexical = (index, prior)
        return self.lexical

    def _save(self, epoch: int, report: EpochReport, complete: bool,
              seconds: float) -> EpochReport:
        """Checkpoints, the metrics line, then the state: in that order (see xmtc_cli.run).
        Every rank keeps the same `TrainState`; rank 0 alone writes."""
        state = self.state
        # No validation: the last epoch is the best. A partial epoch (train.max_steps) is never
        # the best, but it writes model.safetensors when there is none yet, so the run can be
        # tried with `xmtc predict`.
        score = report.valid["micro_f1"] if report.valid else float(epoch)
        skipped = self.has_validation and report.valid is None  # train.valid_every
        best = complete and not skipped and score > state.best_f1
        if best:
            state.best_f1, state.best_epoch, state.best_valid = score, epoch, report.valid
        report = dataclasses.replace(report, best=best, seconds=seconds)
        rngs = distributed.gather_rng(rng_state(), self.group) if complete else None
        if self.folder is not None:
            self._write(epoch, report, complete, rngs)
        if complete:
            state.epoch, state.batches_done, state.loss_sum, state.parts_sum = epoch, 0, 0.0, {}
        return report

    def _write(self, epoch: int, report: EpochReport, complete: bool,
               rngs: list[dict[str, torch.Tensor]] | None) -> None:
        state, model, folder = self.state, self.trainer.model, self.folder
        extra: dict[str, Any] = {}
        tensors = model.state_dict()
        index, _ = self._lexical()
        if index is not None:  # the weight validation chose, or the recipe's only one
            weights = self.recipe.model.lexical_weights
            extra["lexical_weight"] = (report.valid["lexical_weight"]
                                       if report.valid and len(weights) > 1 else weights[0])
            tensors = {**tensors, **index.tensors()}
        meta = checkpoint_meta(self.recipe, self.sizes, self.data, epoch=epoch,
                               valid=report.valid, steps=state.step, partial=not complete,
                               **extra)
        if report.best or not folder.best.exists():
            save_checkpoint(folder.best, tensors, meta)
        save_checkpoint(folder.last, tensors, meta)
        folder.append_metrics(report)
        if complete:
            done = dataclasses.replace(state, epoch=epoch, batches_done=0, loss_sum=0.0,
                                       parts_sum={})
            folder.save_state(done, model, self.trainer.optimizer, self.recipe, rngs)


def _resumed_threads(choice: ThreadChoice, state: TrainState) -> ThreadChoice:
    """A resumed run keeps the thread count it was saved with unless one is given (--threads,
    train.threads, the environment): the default follows the machine's load, and another count
    rounds some sums differently, so the run would not end with the uninterrupted run's
    weights."""
    if choice.source != "cores" or not state.threads or state.threads == choice.count:
        return choice
    kept = dataclasses.replace(choice, count=state.threads, source="the run's own")
    apply_threads(kept)
    return kept


def validation_subset(data: ProcessedData, docs: int | None, seed: int) -> ProcessedData:
    """`data` with its validation split cut to `docs` documents drawn with `seed` (kept in
    their order), the same ones at every call; `data` itself when it has no more than that."""
    valid = data.splits.get("valid")
    if docs is None or valid is None or len(valid) <= docs:
        return data
    keep = np.zeros(len(valid), dtype=bool)
    keep[np.random.default_rng(seed).choice(len(valid), docs, replace=False)] = True
    return dataclasses.replace(data, splits={**data.splits, "valid": valid.select(keep)})


def _check_world_size(folder: RunFolder, saved: int, group: Group) -> None:
    """A run continues on as many processes as it was saved by: each has its own dropout
    stream, and the float sums of a batch depend on how it is split."""
    if saved == group.world_size:
        return
    how = ("xmtc train ... --resume without torchrun" if saved == 1
           else f"torchrun with {saved} processes in all (--nnodes x --nproc-per-node)")
    raise XmtcError(
        f"{folder.path} holds a run trained by {_processes(saved)}; this run has "
        f"{_processes(group.world_size)}, and resuming on another number would not end with "
        "the weights of the uninterrupted run",
        f"resume it with {how}, or start a new run with another --out",
    )


def _processes(n: int) -> str:
    return "one process" if n == 1 else f"{n} processes"


def _epoch_seed(train: TrainConfig, epoch: int) -> int:
    return train.seed * 1_000_003 + epoch


def _check_finite(loss: float, epoch: int, model: torch.nn.Module | None = None,
                  group: Group = SINGLE, reference: float | None = None) -> None:
    """Stop a run whose loss (or, at an epoch's end, whose weights) are no longer finite, or
    whose loss has grown MAX_GROWTH-fold over the first one it read (`reference`): a healthy
    run's loss falls. Every rank sees the same loss and weights, so all stop together; rank 0
    reports it."""
    broken = not math.isfinite(loss) or loss > MAX_LOSS
    if reference is not None and loss > MAX_GROWTH * max(reference, 1.0):
        broken = True
    if model is not None and not broken:
        broken = not all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if broken:
        raise (XmtcError if group.is_main else ReplicatedError)(
            f"training diverged in epoch {epoch} (loss {loss:.4g}); nothing of this epoch was "
            "saved",
            "start a new run (another --out) with a lower train.lr or train.grad_clip, or "
            "train.amp=false; --resume keeps the recipe, so it would diverge again",
        )
