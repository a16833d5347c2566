"""Recipes: typed, frozen training configuration loaded from YAML with KEY=VALUE overrides.

A recipe has four sections. Every field has a default, so a recipe names only what it changes;
unknown keys are refused with a "did you mean", and every problem is reported at once. Sizes
that come from the data (vocabularies, label count, embedding widths) are arguments to the
builders (`model.ModelSizes`), never written into the recipe. Two keys may be left blank for the
data to decide, data.max_src_tokens and data.max_labels (N, the decoding steps); a run fills them
once, when it starts (`training.resolve_recipe`), and records the filled recipe in its run
folder and checkpoints, so that a resumed run and `xmtc predict` use the same values. The
recipe's train.max_steps counts optimiser steps, never decoding steps.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xmtc_cli.errors import ConfigError, short
from xmtc_cli.recipefile import build, dump_recipe, read_recipe_file
from xmtc_cli.threads import MAX_THREADS


@dataclass(frozen=True)
class DataConfig:
    dir: str = ""
    """Processed-data folder written by `xmtc preprocess`, or `builtin:demo` for the corpus the
    package generates itself."""
    max_src_tokens: int | None = None
    """Source tokens kept per document (the rest is cut); None: 500."""
    max_labels: int | None = None
    """N, the decoding steps (`ModelSizes.decode_steps`); None: the largest training label set,
    filled in when a run starts. Longer gold sets are cut."""
    label_order: Literal["file", "frequency"] = "file"
    """Order of gold labels for the cross-entropy baselines: as in the file (Seq2Seq) or by
    descending training frequency (MLC2Seq, SGM). Ignored by the matching loss."""


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 512
    """GRU hidden size, per direction in the encoder."""
    encoder_layers: int = 2
    """Stacked bidirectional GRU layers in the encoder."""
    dropout: float = 0.2
    """Dropout on embeddings, between encoder layers and before the output layer."""
    light_conv: bool = True
    """The lightweight-convolution attention branch (the paper's "+ LC")."""
    conv_kernels: tuple[int, ...] = (3, 7, 15, 30)
    """Kernel size of each depth-wise convolution layer."""
    conv_last_stride: int = 3
    """Stride of the last convolution layer (4 on Wiki10-31K); the others use 1."""
    bottleneck: int | None = None
    """Output bottleneck width b (XML-CNN style); None: a full output layer."""
    label_embedding_size: int | None = None
    """Width of randomly initialised label embeddings; None: the processed data's width."""
    global_embedding: bool = False
    """SGM's global-embedding gate on the decoder input."""
    global_embedding_tau: float = 0.1
    """Softmax temperature of the global embedding."""
    masked_softmax: bool = False
    """SGM's masked softmax: a label already generated cannot be generated again."""
    output_init: Literal["random", "prototype"] = "random"
    """How the output layer's label rows start: `random` (the paper), or `prototype`, each
    label's row the centred mean of the freshly built model's features over its training
    documents (beyond the paper, for rare labels; docs/design.md §10)."""
    lexical: Literal["none", "knn"] = "none"
    """A lexical scorer beside the decoder (beyond the paper, for rare labels; docs/design.md
    §11): `none` (the paper), or `knn`, TF-IDF kNN label propagation over the training
    documents, whose scores join each decoding step's choice of label with the weight chosen
    on validation from `lexical_weights`. The decoder still decides how many labels."""
    lexical_gate: Literal["decoder", "fused"] = "decoder"
    """Who decides whether a decoding step emits a label: `decoder`, its own arg-max (the
    lexical scores only choose which label), or `fused`, the arg-max of logits + lexical bonus
    over ∅, the end and the labels, so that a label the neighbours vouch for can outbid ∅
    (`lexical_threshold`)."""
    lexical_threshold: float = 0.2
    """With lexical_gate=fused: the lexical score τ at which a label's bonus equals ∅'s, so
    that a label whose score q exceeds τ gains on ∅ and one below loses."""
    lexical_k: int = 20
    """Neighbours (training documents) of the kNN scorer."""
    lexical_power: float = 2.0
    """Exponent p of the neighbour weights similarity^p."""
    lexical_max_df: float = 0.2
    """Tokens in more than this share of the training documents weigh 0 in the TF-IDF vectors
    (stop words); 1: every token counts."""
    lexical_centroid: float = 0.0
    """Share a of label-centroid similarity in the lexical score, q = (1 - a) kNN + a cos(x,
    centroid): each label's centroid is the sum of its training documents' TF-IDF rows, which
    still ranks a label whose few documents are only loosely like the query. 0: the kNN
    alone."""
    lexical_centroid_terms: int = 50
    """Tokens kept per label centroid (its heaviest), which bounds the centroids' memory at
    50 x L values."""
    lexical_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    """Fusion weights tried on the validation split at every epoch; the best by micro-F1 goes
    into the checkpoint. One value: that weight, no search (and no validation split needed).
    0 is the decoder alone."""


@dataclass(frozen=True)
class LossConfig:
    kind: Literal["matching", "cross-entropy"] = "matching"
    """`matching`: Hungarian bipartite matching with student forcing (OTSeq2Set, BM rows).
    `cross-entropy`: teacher forcing on the ordered gold labels plus an end label (Seq2Seq,
    MLC2Seq, SGM)."""
    scheme: Literal["all", "first-n"] = "all"
    """Which steps the gold labels may be matched to: any of the N steps, or the first n."""
    empty_weight: float = 0.2
    """λ_∅: weight of the ∅ target in the matching loss."""
    ot_weight: float = 8.0
    """λ: weight of the optimal-transport term; 0 disables it."""
    ot_beta: float = 1.0
    """IPOT proximal step size β."""
    ot_iters: int = 50
    """IPOT outer iterations."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    """Adam learning rate at the start of the cosine schedule."""
    min_lr: float = 0.0
    """Learning rate the cosine schedule ends at."""
    weight_decay: float = 0.0
    grad_clip: float = 8.0
    """Gradient-norm clipping threshold."""
    seed: int = 0
    eval_batch_size: int = 64
    """Documents per batch of greedy decoding in validation."""
    valid_every: int = 1
    """Validate after every this many epochs, and after the last; epochs in between are not
    candidates for the best checkpoint. Validation is greedy decoding through the full output
    layer: at 16K labels on a CPU it costs about a third of a 10-epoch run's time at 1."""
    valid_docs: int | None = None
    """Validate on this many documents of the validation split, the same ones every epoch
    (drawn with train.seed); None: all of them."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    cpu_bf16: bool = False
    """Beyond the paper, on the CPU: the encoder GRU's products over all of a batch's positions
    (the input's projection; the gradients of the input and of the weights) in bf16 with float32
    sums, where the CPU computes bf16 natively (AVX-512 BF16, AMX); the step-by-step recurrence
    and everything else stay float32 (docs/design.md §12). About 1.1x a TIBKAT-core step on one
    core. Ignored, with a notice in the run's header, on a CPU without native bf16 (emulated,
    it is slower) and on CUDA (train.amp)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps in all (a smoke run, a time-boxed job); the run
    stays resumable, with a larger value. None: train all epochs."""
    checkpoint_every: int | None = None
    """Also save the train state every this many optimiser steps inside an epoch, so that a kill
    loses at most that much work; --resume continues from the step. None: at epoch ends only."""
    early_stop: int | None = None
    """Stop once this many validations in a row have not improved validation micro-F1 (the
    best checkpoint stays model.safetensors); epochs train.valid_every skips do not count.
    None: train all epochs."""
    log_every: float = 60.0
    """Seconds between progress lines when stderr is not a terminal (a log file, a scheduler)."""
    threads: int | None = None
    """CPU threads torch uses; None: `--threads`, else XMTC_THREADS or OMP_NUM_THREADS, else
    the cores this process may use divided among torchrun's processes on the machine
    (xmtc_cli/threads.py). --threads overrides it."""
    shortlist: int | None = None
    """Beyond the paper, an approximation (docs/design.md §12): each training step's softmax
    over the batch's gold labels plus this many negatives (uniform draws, after
    train.shortlist_hard's) and the special symbols instead of all labels; predicting still
    scores all. None: the full softmax."""
    shortlist_hard: int = 0
    """With train.shortlist: each document's this many hard negatives join the shortlist
    first, the labels the lexical scorer (model.lexical_* options) ranks highest for it
    without their being its gold labels; uniform draws fill the rest of the K. Ranked once a
    run, each training document against all of them: 30 s for 21,748 documents on one core,
    growing with the square of their number. 0: uniform draws only."""
    fused_adam: bool = True
    """Adam's fused kernel where torch has one (CPU, CUDA): the same update in one pass over
    each tensor, about 10x faster than the per-tensor loop on the CPU; weights agree with the
    loop's to float32 rounding. false: torch's default loop."""
    ddp_bf16_grads: bool = False
    """Under torchrun (many processes), send gradients between processes in bf16: half the bytes
    of the all-reduce, at bf16's rounding of the summed gradient. Ignored by one process."""

    @property
    def ranks_hard_negatives(self) -> bool:
        """Whether a run ranks train.shortlist_hard's negatives before its first step."""
        return self.shortlist is not None and self.shortlist_hard > 0


@dataclass(frozen=True)
class Recipe:
    name: str = ""
    """A short name for the run (letters, digits, `.`, `_`, `-`): the default run folder is
    runs/NAME. Empty: the recipe file's name."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return dump_recipe(self.to_dict())


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# The rows of the paper's Table 3 as recipe overrides: every baseline and ablation is a switch
# of the one model, applied before the user's own KEY=VALUE overrides (which win).
_SEQ2SEQ = ["loss.kind=cross-entropy", "loss.ot_weight=0"]
_SET = ["loss.kind=matching"]
_PLAIN = ["model.global_embedding=false", "model.masked_softmax=false"]  # SGM's parts off
# SGM's gate reads every label's probability: its row trains the full softmax, whatever
# shortlist the recipe has (recipes/tibkat.yaml's).
_SGM = ["model.global_embedding=true", "model.masked_softmax=true", "train.shortlist=null",
        "train.shortlist_hard=0"]
_LC, _NO_LC = ["model.light_conv=true"], ["model.light_conv=false"]
_FILE, _FREQ = ["data.label_order=file"], ["data.label_order=frequency"]
METHODS: dict[str, list[str]] = {
    "seq2seq": [*_SEQ2SEQ, *_NO_LC, *_FILE, *_PLAIN],
    "mlc2seq": [*_SEQ2SEQ, *_NO_LC, *_FREQ, *_PLAIN],
    "sgm": [*_SEQ2SEQ, *_NO_LC, *_FREQ, *_SGM],
    "seq2seq-lc": [*_SEQ2SEQ, *_LC, *_FILE, *_PLAIN],
    "bm": [*_SET, "loss.ot_weight=0", *_NO_LC, *_PLAIN],
    "bm-lc": [*_SET, "loss.ot_weight=0", *_LC, *_PLAIN],
    "bm-ot": [*_SET, *_NO_LC, *_PLAIN],
    "otseq2set": [*_SET, *_LC, *_PLAIN],
}
"""Paper method -> overrides. `bm-ot` and `otseq2set` keep the recipe's OT weight (8 in the
paper's recipes), so a recipe with loss.ot_weight=0 (Amazon-670K) stays without OT; every row
but `sgm` keeps the recipe's train.shortlist."""


def method_overrides(method: str) -> list[str]:
    """The overrides that turn a recipe into one of the paper's methods (Table 3 rows)."""
    if method not in METHODS:
        close = difflib.get_close_matches(method, METHODS, n=1)
        tip = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown method {method!r}{tip}",
                          "choose one of " + ", ".join(METHODS))
    return list(METHODS[method])


def scheme_override(scheme: str, overrides: list[str]) -> list[str]:
    """`overrides` plus loss.scheme=SCHEME (the --scheme shorthand); a different
    loss.scheme among them is an error, not silently overridden."""
    given = [o.partition("=")[2].strip() for o in overrides if o.startswith("loss.scheme=")]
    conflicting = [g for g in given if g != scheme]
    if conflicting:
        raise ConfigError(f"--scheme {scheme} conflicts with loss.scheme={conflicting[0]}",
                          "give the scheme once")
    return [*overrides, f"loss.scheme={scheme}"]


# --- loading and checks ------------------------------------------------------------------

MAX_DECODE_STEPS = 10_000
"""The most decoding steps N (data.max_labels) a recipe or checkpoint may ask for."""


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `KEY=VALUE` overrides, validate, and return it frozen
    (the file is read as untrusted data: `xmtc_cli.recipefile`)."""
    return recipe_from_dict(read_recipe_file(path), overrides or [], source=str(path))


def recipe_from_dict(raw: dict, overrides: list[str] = (), source: str = "recipe") -> Recipe:
    """Build a Recipe from nested plain data plus overrides; list every problem at once."""
    return build(Recipe, raw, overrides, source, _check)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""What `name` may be: it names the run folder."""


def _check(r: Recipe) -> list[str]:
    """Cross-field and range checks, beyond types."""
    p = []
    if r.name and not _NAME.fullmatch(r.name):
        p.append(f"name {short(r.name)} must be 1-100 letters, digits, '.', '_' or '-', "
                 "starting with a letter or digit (it names the run folder)")
    if not r.data.dir:
        p.append("data.dir is required: the folder written by `xmtc preprocess` (or builtin:demo)")
    positive = {
        "data.max_src_tokens": r.data.max_src_tokens,
        "data.max_labels": r.data.max_labels,
        "model.hidden_size": r.model.hidden_size,
        "model.encoder_layers": r.model.encoder_layers,
        "model.conv_last_stride": r.model.conv_last_stride,
        "model.bottleneck": r.model.bottleneck,
        "model.label_embedding_size": r.model.label_embedding_size,
        "train.epochs": r.train.epochs,
        "train.batch_size": r.train.batch_size,
        "train.eval_batch_size": r.train.eval_batch_size,
        "loss.ot_iters": r.loss.ot_iters,
        "train.max_steps": r.train.max_steps,
        "train.checkpoint_every": r.train.checkpoint_every,
        "model.lexical_k": r.model.lexical_k,
        "model.lexical_centroid_terms": r.model.lexical_centroid_terms,
        "train.early_stop": r.train.early_stop,
        "train.threads": r.train.threads,
        "train.valid_every": r.train.valid_every,
        "train.valid_docs": r.train.valid_docs,
        "train.shortlist": r.train.shortlist,
    }
    p += [f"{k} must be a positive integer, not {short(v)}" for k, v in positive.items()
          if v is not None and v < 1]
    if r.data.max_labels is not None and r.data.max_labels > MAX_DECODE_STEPS:
        p.append(f"data.max_labels must be at most {MAX_DECODE_STEPS:,} (the decoding steps "
                 f"N), not {short(r.data.max_labels)}")
    if r.train.threads is not None and r.train.threads > MAX_THREADS:
        p.append(f"train.threads must be at most {MAX_THREADS}, not {short(r.train.threads)}")
    if r.train.seed < 0:
        p.append(f"train.seed must be >= 0, not {short(r.train.seed)}")
    if not 0 <= r.model.dropout < 1:
        p.append(f"model.dropout must be in [0, 1), not {short(r.model.dropout)}")
    if not r.model.conv_kernels or any(k < 1 for k in r.model.conv_kernels):
        p.append("model.conv_kernels must be a non-empty list of positive integers")
    for key, value in (("loss.empty_weight", r.loss.empty_weight),
                       ("loss.ot_weight", r.loss.ot_weight), ("train.min_lr", r.train.min_lr),
                       ("train.weight_decay", r.train.weight_decay)):
        if value < 0:
            p.append(f"{key} must be >= 0, not {short(value)}")
    for key, value in (("loss.ot_beta", r.loss.ot_beta), ("train.lr", r.train.lr),
                       ("train.grad_clip", r.train.grad_clip),
                       ("model.global_embedding_tau", r.model.global_embedding_tau),
                       ("train.log_every", r.train.log_every)):
        if value <= 0:
            p.append(f"{key} must be > 0, not {short(value)}")
    if r.train.shortlist_hard < 0:
        p.append(f"train.shortlist_hard must be >= 0, not {short(r.train.shortlist_hard)}")
    elif r.train.shortlist_hard and r.train.shortlist is None:
        p.append("train.shortlist_hard picks negatives for train.shortlist, which is off: set "
                 "train.shortlist=K too, or train.shortlist_hard=0")
    if r.train.shortlist is not None and r.model.global_embedding:
        p.append("train.shortlist does not apply to model.global_embedding (SGM's gate reads "
                 "every label's logit): set one of them off")
    if not r.model.lexical_weights or any(w < 0 for w in r.model.lexical_weights):
        p.append("model.lexical_weights must be a non-empty list of numbers >= 0")
    if not 0 < r.model.lexical_max_df <= 1:
        p.append(f"model.lexical_max_df must be in (0, 1], not {short(r.model.lexical_max_df)}")
    if not 0 < r.model.lexical_threshold <= 1:
        p.append(f"model.lexical_threshold must be in (0, 1], not "
                 f"{short(r.model.lexical_threshold)}")
    if not 0 <= r.model.lexical_centroid <= 1:
        p.append(f"model.lexical_centroid must be in [0, 1], not {short(r.model.lexical_centroid)}")
    if r.model.lexical_power <= 0:
        p.append(f"model.lexical_power must be > 0, not {short(r.model.lexical_power)}")
    if r.loss.kind == "cross-entropy" and r.loss.ot_weight > 0:
        p.append("loss.ot_weight applies to the matching loss only: set loss.ot_weight=0 with "
                 "loss.kind=cross-entropy")
    return p


def without_effect(recipe: Recipe) -> list[str]:
    """Values a recipe sets (away from their defaults) that nothing reads in its combination,
    each as a sentence: `xmtc train` warns of them rather than ignore them in silence."""
    defaults, out = Recipe(), []
    if recipe.data.label_order != defaults.data.label_order and recipe.loss.kind == "matching":
        out.append(f"data.label_order={recipe.data.label_order} has no effect with "
                   "loss.kind=matching (the matching loss does not depend on label order)")
    if (recipe.model.global_embedding_tau != defaults.model.global_embedding_tau
            and not recipe.model.global_embedding):
        out.append("model.global_embedding_tau has no effect without "
                   "model.global_embedding=true")
    if recipe.loss.ot_weight == 0:
        for key in ("ot_beta", "ot_iters"):
            if getattr(recipe.loss, key) != getattr(defaults.loss, key):
                out.append(f"loss.{key} has no effect with loss.ot_weight=0 (no transport loss)")
    return out
