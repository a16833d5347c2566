"""Benchmark how xmtc scales with the number of labels: old code against new, side by side.

    PYTHONPATH=. python benchmarks/bench_scale.py --baseline /work/wt/baseline
        [--labels 1000 10000 100000] [--huge] [--new PATH] [--rounds 2] [--warmup 1]
        [--steps 3] [--hidden 128] [--batch 16] [--max-src-tokens 200] [--words 135909]
        [--predict-docs 2048] [--threads T] [--tmp DIR] [--keep] [--json FILE]
        [--no-cli-train] [--force]

For every label count L (1K, 10K, 100K; 670,091 = Amazon-670K's with --huge) it writes a
synthetic corpus in which every label occurs, then measures each code tree in its own
subprocesses (PYTHONPATH = that tree, working directory outside both trees), alternating the trees
(old, new, old, new, ... for --rounds rounds) so that load from other jobs hits both alike:

  preprocess  `python -m xmtc_cli preprocess CORPUS --out OUT`, the tree's own CLI.
  step        a worker (the code of this file, identical for both trees) builds the model, the
              loss and Adam with the builders both trees have (xmtc_cli.config.recipe_from_dict,
              xmtc_cli.model.build_model, xmtc_cli.losses.build_criterion) and takes --warmup +
              --steps training steps on random batches: forward, loss, zero_grad, backward,
              clip_grad_norm_, Adam step, as `fit` does. So the difference between the trees is
              their model and loss code, not the benchmark's.
  save        the same worker then saves the train state (weights, Adam moments, RNG) the way
              the tree's `fit` does at an epoch end: xmtc_cli.run.RunFolder.save_state where it
              exists, else xmtc_cli.training._save_state (the code before the run folder). Then it
              loads the tree's processed corpus and writes a checkpoint with the tree's
              save_checkpoint (first round only), for `predict`.
  predict     `python -m xmtc_cli predict CKPT DOCS` on that tree's checkpoint, --predict-docs
              documents (the same file for both trees).
  cli train   (the new tree only, where it has train.max_steps; --no-cli-train skips it)
              `python -m xmtc_cli train RECIPE train.max_steps=1`: the product's whole path at
              this size (one step, validation on 64 documents, the saves of an epoch end).

The model has the Amazon-670K recipe's shape (recipes/amazon670k.yaml: bottleneck 512, N = 7,
random 100-d label embeddings, no LC, no OT term, matching loss with scheme `all`) at sizes a
2-core CPU can afford: H = --hidden (128; the paper's 512), B = --batch (16; the paper's 64),
T = --max-src-tokens (200; the paper's 500). The token vocabulary is Amazon-670K's, 135,909 words
(--words), 300-d (no GloVe: the default width), at every L, so only the label-dependent parts
grow. Step batches are random documents of Amazon-670K's length (uniform in 0.5-1.5 x 247 words,
cut at T) with 1 + Poisson(4.45) labels each (5.45 a document), cut at N.

The corpus (AttentionXML's layout, no label names, like Amazon-670K): training documents of 30-60
words from the --words vocabulary, 3-7 labels each, labels dealt from a shuffled list of all L
labels and words from a shuffled list of all words until both are used up, so every label and
every word occurs in training (about L / 5 documents, at least --words / 45); 64 validation
documents (so that `preprocess` holds nothing out and `train` validates cheaply), test documents
one tenth of training, and --predict-docs documents for `predict`. Words and labels are names
like w123 and l456.

Columns (one row per L and tree; times are medians over rounds, memory the largest):
  prep s       wall seconds of `xmtc preprocess` (python start-up and imports included)
  prep MiB     its peak RSS: ru_maxrss of the child from os.wait4 (this process stays small and
               imports no torch, so the figure is the child's own)
  step s       median seconds of one training step, over all timed steps of all rounds
  step MiB     VmHWM of the worker after its steps: python, torch, model, gradients, Adam
               moments and the largest step's activations
  save s       seconds of the train-state save
  +save MiB    peak RSS during the save above the RSS just before it: what the save itself needs
               (VmHWM reset through /proc/self/clear_refs; '?' where the kernel refuses that)
  peak MiB     VmHWM after the save: the worker's peak over steps and save
  state MiB    train_state.safetensors on disk;  ckpt MiB: the checkpoint on disk
  pred docs/s  documents / the seconds `xmtc predict` reports for its loop (after loading)
  pred s       wall seconds of the whole `xmtc predict` (start-up and checkpoint loading)
  pred MiB     its peak RSS (os.wait4)
Then new / old for every column, and the growth of every column from one L to the next, per tree.
--json FILE writes every raw figure (each round, each step).

On a shared machine pass --threads 1: with torch's default (a thread per core) a 1K-label step on
the loaded 2-core machine took 15-26 s, erratically, against 3 s with one thread.

Before each size the script estimates the step's and the save's memory and skips sizes that do
not fit in the available memory or disk (--force runs them anyway). 1K + 10K took 8 minutes on the
loaded 2-core machine; 100K should add about 15 (not yet run). --huge (670,091 labels) needs
about 20 GiB of free memory (the old save's peak: ~17 GiB estimated) and 17 GiB of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "amazon670k.yaml"
AMAZON_LABELS = 670_091  # L of Amazon-670K (docs/design.md §5)
AMAZON_WORDS = 135_909  # D, its training vocabulary
AMAZON_WORDS_PER_DOC = 247.33
AMAZON_LABELS_PER_DOC = 5.45
DEFAULT_EMBED = 300  # token embedding width without GloVe (training.DEFAULT_EMBED_SIZE)
SPECIAL_TOKENS = 2  # <pad>, <unk>
SPECIAL_LABELS = 3  # ∅, BOS, EOS
VALID_DOCS = 64
DOC_WORDS = (30, 60)
DOC_LABELS = (3, 7)
MIB = 2**20

# --- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    raw: Path  # AttentionXML layout: train/valid/test texts and labels
    docs: Path  # documents for `predict`
    labels: int
    words: int
    train_docs: int
    train_tokens: int
    seconds: float


def write_corpus(folder: Path, labels: int, words: int, predict_docs: int,
                 seed: int = 0) -> Corpus:
    """A corpus in which every one of `labels` labels and `words` words occurs in training.

    Pure Python and streamed to disk, so this process stays small (see `run_child`).
    """
    start = time.perf_counter()
    rng = random.Random(seed)
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    label_deck = _Deck(rng, labels)
    word_deck = _Deck(rng, words)
    train_docs = train_tokens = 0
    with open(raw / "train_texts.txt", "w", encoding="utf-8") as texts, \
            open(raw / "train_labels.txt", "w", encoding="utf-8") as golds:
        while not (label_deck.empty and word_deck.empty):
            length = rng.randint(*DOC_WORDS)
            texts.write(" ".join(f"w{k}" for k in word_deck.draw(length, distinct=False)) + "\n")
            golds.write(" ".join(f"l{k}" for k in label_deck.draw(rng.randint(*DOC_LABELS)))
                        + "\n")
            train_docs += 1
            train_tokens += length
    # Held-out documents draw at random: every label and word is already in training.
    _write_random(raw / "valid_texts.txt", raw / "valid_labels.txt", VALID_DOCS, rng, labels,
                  words)
    _write_random(raw / "test_texts.txt", raw / "test_labels.txt", max(64, train_docs // 10),
                  rng, labels, words)
    docs = folder / "docs.txt"
    _write_random(docs, None, predict_docs, rng, labels, words)
    return Corpus(raw, docs, labels, words, train_docs, train_tokens,
                  time.perf_counter() - start)


class _Deck:
    """Draws from 0..n-1: a shuffled pass over all of them first, then uniformly at random."""

    def __init__(self, rng: random.Random, n: int):
        self.rng, self.n = rng, n
        self.order = list(range(n))
        rng.shuffle(self.order)

    @property
    def empty(self) -> bool:
        return not self.order

    def draw(self, k: int, distinct: bool = True) -> list[int]:
        out = []
        while len(out) < k:
            x = self.order.pop() if self.order else self.rng.randrange(self.n)
            if distinct and x in out:
                if len(out) >= self.n:
                    break
                continue
            out.append(x)
        return out


def _write_random(texts: Path, golds: Path | None, count: int, rng: random.Random, labels: int,
                  words: int) -> None:
    with open(texts, "w", encoding="utf-8") as t:
        for _ in range(count):
            t.write(" ".join(f"w{rng.randrange(words)}"
                             for _ in range(rng.randint(*DOC_WORDS))) + "\n")
    if golds is not None:
        with open(golds, "w", encoding="utf-8") as g:
            for _ in range(count):
                k = min(rng.randint(*DOC_LABELS), labels)
                g.write(" ".join(f"l{x}" for x in rng.sample(range(labels), k)) + "\n")


# --- the model's shape -----------------------------------------------------------------------


def bench_recipe(args: argparse.Namespace) -> dict:
    """recipes/amazon670k.yaml with the CPU sizes of this benchmark, as plain data."""
    raw = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    raw["name"] = "bench-scale"
    raw.setdefault("data", {}).update(max_src_tokens=args.max_src_tokens, dir="unused")
    raw.setdefault("model", {})["hidden_size"] = args.hidden
    raw.setdefault("train", {})["batch_size"] = args.batch
    return raw


def describe_shape(recipe: dict, words: int) -> str:
    m, d, t, loss = recipe["model"], recipe["data"], recipe["train"], recipe["loss"]
    return (f"H={m['hidden_size']} B={t['batch_size']} T<={d['max_src_tokens']} "
            f"N={d['max_labels']} bottleneck={m.get('bottleneck')} "
            f"E_label={m.get('label_embedding_size')} E={DEFAULT_EMBED} "
            f"D={words:,}+{SPECIAL_TOKENS} light_conv={m.get('light_conv')} "
            f"loss={loss.get('kind')}/{loss.get('scheme')} ot_weight={loss.get('ot_weight')}")


def estimate_mib(recipe: dict, words: int, labels: int) -> dict[str, float]:
    """Rough memory (MiB) of a step and of the old, in-memory state save, and the disk that one
    size needs at most, from the shapes alone (calibrated on the 1K-label run: step 1,455 MiB
    measured, old save +2 x the state file)."""
    m, d, t = recipe["model"], recipe["data"], recipe["train"]
    h, e, el = m["hidden_size"], DEFAULT_EMBED, m.get("label_embedding_size") or DEFAULT_EMBED
    b, n, v = t["batch_size"], d["max_labels"], labels + SPECIAL_LABELS
    layers = m.get("encoder_layers", 2)
    encoder = 6 * h * (e + h) + 6 * h * (3 * h) * (layers - 1) + 2 * h * h
    z = h + 2 * h + el
    output = z * m["bottleneck"] + (m["bottleneck"] + 1) * v if m.get("bottleneck") else (z + 1) * v
    tables = {"tokens": (words + SPECIAL_TOKENS) * e, "labels": v * el,
              "output": m["bottleneck"] * v if m.get("bottleneck") else z * v}
    params = tables["tokens"] + encoder + tables["labels"] + 3 * h * (el + 3 * h) + output
    weights = 4 * params / MIB
    largest = 4 * max(tables.values()) / MIB  # Adam's temporaries are the size of a parameter
    logits = 4 * b * n * v / MIB  # one [B, N, V] float32 tensor
    base = 350  # python, torch, the batches
    step = base + 4 * weights + 2 * largest + 8 * logits  # weights, grads, 2 moments
    return {"params_m": params / 1e6, "step": step,
            "old_save": max(step, base + 4 * weights + 2 * 3 * weights),
            "disk": 3 * weights + 2 * weights + 5 * weights}  # state; 2 checkpoints; a run


# --- children --------------------------------------------------------------------------------


@dataclass
class Child:
    returncode: int
    seconds: float
    peak_mib: float  # ru_maxrss of the child (os.wait4)
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        if self.returncode in (-9, 137):
            return "killed (SIGKILL: out of memory?)"
        tail = self.stderr.strip().splitlines()[-6:]
        return f"exit {self.returncode}: " + " | ".join(tail)


def run_child(cmd: list[str], tree: Path, cwd: Path, threads: int | None,
              timeout: float | None = None) -> Child:
    """Run `cmd` with PYTHONPATH = `tree`; wall seconds and peak RSS from os.wait4.

    ru_maxrss of a child starts from the size of the process that started it (fork and exec
    keep the high-water mark), so this process imports no torch and holds no corpus.
    """
    env = dict(os.environ, PYTHONPATH=str(tree))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Child(proc.returncode, seconds, usage.ru_maxrss / 1024,
                     out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))


def own_peak_mib() -> float:
    return _status_mib("VmHWM") or 0.0


def _status_mib(name: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def own_tree_only() -> Path:
    """Make `import xmtc_cli...` find modules in PYTHONPATH's tree only; that tree's package.

    An editable install of another checkout (pip install -e) puts a finder on sys.meta_path
    that answers for every xmtc_cli module the tree on PYTHONPATH lacks: the old tree would
    then silently get the new xmtc_cli.run. Without it, a missing module is an ImportError.
    """
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
    import xmtc_cli

    return Path(xmtc_cli.__file__).resolve().parent


def check_origin(package: Path) -> None:
    """Every xmtc_cli module this process imported comes from `package`."""
    strays = [name for name, module in list(sys.modules.items())
              if name.split(".")[0] == "xmtc_cli" and getattr(module, "__file__", None)
              and package not in Path(module.__file__).resolve().parents]
    if strays:
        raise SystemExit(f"modules from outside {package}: {', '.join(sorted(strays))}")


def probe_worker() -> None:
    """Subprocess entry (`--probe`): what the tree on PYTHONPATH is, as JSON."""
    import dataclasses

    package = own_tree_only()
    import torch

    import xmtc_cli
    from xmtc_cli.config import TrainConfig

    check_origin(package)
    print(json.dumps({
        "package": str(package), "version": xmtc_cli.__version__,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "max_steps": "max_steps" in {f.name for f in dataclasses.fields(TrainConfig)},
        "save": ("RunFolder.save_state" if (package / "run.py").exists()
                 else "training._save_state"),
    }))


@dataclass
class Tree:
    name: str  # old | new
    path: Path
    info: dict = field(default_factory=dict)


def probe(tree: Tree, cwd: Path, threads: int | None) -> None:
    """What the tree is (git commit, xmtc version, torch), and that its code is what loads."""
    child = run_child([sys.executable, str(Path(__file__).resolve()), "--probe"], tree.path,
                      cwd, threads)
    if not child.ok:
        sys.exit(f"error: cannot import xmtc_cli from {tree.path}: {child.failure()}")
    tree.info = json.loads(child.stdout.strip().splitlines()[-1])
    package = Path(tree.info["package"]).resolve()
    if package.parent != tree.path.resolve():
        sys.exit(f"error: PYTHONPATH={tree.path} imports xmtc_cli from {package}")
    git = ["git", "-C", str(tree.path)]
    head = subprocess.run(git + ["log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    tree.info["commit"] = head.stdout.strip()[:70] or "?"
    tree.info["dirty"] = bool(dirty.stdout.strip())


# --- the step worker (runs in the tree under test; identical code for both trees) ------------


def worker(spec_path: str) -> None:
    """Subprocess entry: steps, state save, checkpoint; prints one JSON object."""
    import gc

    package = own_tree_only()
    import numpy as np
    import torch

    from xmtc_cli.config import recipe_from_dict
    from xmtc_cli.data.batching import pad_sources
    from xmtc_cli.losses import build_criterion
    from xmtc_cli.model import ModelSizes, build_model

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    recipe = recipe_from_dict(spec["recipe"])
    sizes = ModelSizes(vocab_size=spec["vocab"], num_labels=spec["labels"],
                       decode_steps=recipe.data.max_labels, embed_size=DEFAULT_EMBED,
                       label_embed_size=recipe.model.label_embedding_size)
    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    # Random batches at Amazon-670K's shape (as benchmarks/bench_train.py's make_batches).
    rng = np.random.default_rng(spec["seed"])
    batches = []
    for _ in range(4):
        b = recipe.train.batch_size
        low, high = int(0.5 * spec["doc_words"]), int(1.5 * spec["doc_words"])
        docs = [rng.integers(SPECIAL_TOKENS, sizes.vocab_size, n)
                for n in rng.integers(low, high + 1, b)]
        src, lengths = pad_sources(docs, recipe.data.max_src_tokens)
        counts = np.minimum(1 + rng.poisson(spec["labels_per_doc"] - 1, b), sizes.decode_steps)
        gold = np.full((b, int(counts.max())), -1, dtype=np.int64)  # -1: GOLD_PAD
        for row, n in enumerate(counts):
            gold[row, :n] = rng.choice(sizes.num_labels, n, replace=False) + SPECIAL_LABELS
        batches.append((src, lengths, torch.from_numpy(gold)))

    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe.model, recipe.loss, sizes)
    criterion = build_criterion(recipe.loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.train.lr,
                                 weight_decay=recipe.train.weight_decay)
    out["params"] = sum(p.numel() for p in model.parameters())
    out["rss_built_mib"] = _status_mib("VmRSS")

    def step(batch) -> float:
        src, lengths, gold = batch
        model.train()
        logits = model(src, lengths, gold)
        loss, _ = criterion(logits, gold, model.label_embedding.weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
        optimizer.step()
        return float(loss)

    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        step(batches[i % len(batches)])
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - start)
    out["step_seconds"] = times
    out["step_peak_mib"] = _status_mib("VmHWM")

    # The epoch-end save of the train state, as the tree's fit does it.
    state_dir = Path(spec["state_dir"])
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        from xmtc_cli.run import RunFolder, TrainState

        def save_state() -> Path:
            RunFolder(state_dir).save_state(TrainState(), model, optimizer, recipe)
            return state_dir / "train_state.safetensors"
        out["save_api"] = "RunFolder.save_state"
    except ImportError:
        from xmtc_cli.training import _save_state, _TrainState

        def save_state() -> Path:
            path = state_dir / "train_state.safetensors"
            _save_state(path, _TrainState(0, 0, -1.0, 0, None), model, optimizer, recipe)
            return path
        out["save_api"] = "training._save_state"
    path, seconds, extra, peak = _measured(save_state)
    out.update(save_seconds=seconds, save_extra_mib=extra, save_peak_mib=peak,
               state_bytes=path.stat().st_size)
    path.unlink()

    if spec["checkpoint"]:
        # A checkpoint that the tree's `xmtc predict` reads: the tree's own metadata and writer.
        from xmtc_cli.checkpoint import save_checkpoint
        from xmtc_cli.training import checkpoint_meta, model_sizes
        try:
            from xmtc_cli.data.processed import load_data
        except ImportError:
            from xmtc_cli.data.builtin import load_data
        data_recipe = recipe_from_dict(spec["recipe"], [f"data.dir={spec['data']}"])
        data = load_data(data_recipe.data.dir)
        found = model_sizes(data_recipe, data)
        if found != sizes:
            raise SystemExit(f"the processed corpus has sizes {found}, the model {sizes}")
        meta = checkpoint_meta(data_recipe, sizes, data, epoch=0)
        del data
        gc.collect()
        ckpt = Path(spec["checkpoint"])

        def save_ckpt() -> Path:
            save_checkpoint(ckpt, model.state_dict(), meta)
            return ckpt
        _, seconds, extra, _ = _measured(save_ckpt)
        out.update(ckpt_seconds=seconds, ckpt_extra_mib=extra, ckpt_bytes=ckpt.stat().st_size)
    check_origin(package)
    print(json.dumps(out))


def _measured(save) -> tuple[Path, float, float | None, float]:
    """Run `save`: its result, seconds, peak RSS above the RSS before it (None where the peak
    cannot be reset), and the process's peak so far."""
    import gc

    gc.collect()
    before = _status_mib("VmRSS")
    peak_before = _status_mib("VmHWM")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    result = save()
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    extra = peak - before if reset else None
    return result, seconds, extra, max(peak, peak_before)


# --- one label count -------------------------------------------------------------------------


@dataclass
class Cell:
    """One tree's figures at one label count (lists: one entry per round or step)."""

    prep_s: list[float] = field(default_factory=list)
    prep_mib: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    step_mib: list[float] = field(default_factory=list)
    save_s: list[float] = field(default_factory=list)
    save_extra_mib: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)
    state_mib: list[float] = field(default_factory=list)
    ckpt_mib: list[float] = field(default_factory=list)
    pred_docs_s: list[float] = field(default_factory=list)
    pred_s: list[float] = field(default_factory=list)
    pred_mib: list[float] = field(default_factory=list)
    worker: dict = field(default_factory=dict)  # the first round's extra facts
    errors: list[str] = field(default_factory=list)


# column -> (heading, how rounds combine, format)
COLUMNS = {
    "prep_s": ("prep s", "median", "{:.2f}"),
    "prep_mib": ("prep MiB", "max", "{:.0f}"),
    "step_s": ("step s", "median", "{:.3f}"),
    "step_mib": ("step MiB", "max", "{:.0f}"),
    "save_s": ("save s", "median", "{:.2f}"),
    "save_extra_mib": ("+save MiB", "max", "{:.0f}"),
    "peak_mib": ("peak MiB", "max", "{:.0f}"),
    "state_mib": ("state MiB", "max", "{:.0f}"),
    "ckpt_mib": ("ckpt MiB", "max", "{:.0f}"),
    "pred_docs_s": ("pred docs/s", "median", "{:.1f}"),
    "pred_s": ("pred s", "median", "{:.2f}"),
    "pred_mib": ("pred MiB", "max", "{:.0f}"),
}


def summary(cell: Cell, column: str) -> float | None:
    values = [v for v in getattr(cell, column) if v is not None]
    if not values:
        return None
    return statistics.median(values) if COLUMNS[column][1] == "median" else max(values)


def measure(labels: int, trees: list[Tree], args: argparse.Namespace, recipe: dict,
            work: Path) -> tuple[dict[str, Cell], dict]:
    """Every measurement at `labels` labels, trees alternating; the cells and the extras."""
    folder = work / f"L{labels}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    corpus = write_corpus(folder, labels, args.words, args.predict_docs)
    extras: dict = {"corpus": {"train_docs": corpus.train_docs,
                               "train_tokens": corpus.train_tokens,
                               "seconds": round(corpus.seconds, 2)}}
    log(f"  corpus: {corpus.train_docs:,} training documents, {corpus.train_tokens:,} words "
        f"({corpus.seconds:.1f} s)")
    cells = {t.name: Cell() for t in trees}

    def each_round(what: str, fn) -> None:
        for r in range(args.rounds):
            for tree in trees:
                cell = cells[tree.name]
                log(f"  {what} {tree.name} (round {r + 1}/{args.rounds})")
                try:
                    fn(tree, cell, r)
                except RuntimeError as exc:
                    cell.errors.append(f"{what}: {exc}")
                    log(f"    failed: {exc}")

    processed = {t.name: folder / f"processed-{t.name}" for t in trees}

    def preprocess(tree: Tree, cell: Cell, r: int) -> None:
        out = folder / f"processed-{tree.name}-{r}"
        child = run_child([sys.executable, "-m", "xmtc_cli", "preprocess", str(corpus.raw),
                           "--out", str(out)], tree.path, folder, args.threads)
        if not child.ok:
            raise RuntimeError(child.failure())
        cell.prep_s.append(child.seconds)
        cell.prep_mib.append(child.peak_mib)
        shutil.rmtree(processed[tree.name], ignore_errors=True)
        out.rename(processed[tree.name])

    each_round("preprocess", preprocess)

    def step(tree: Tree, cell: Cell, r: int) -> None:
        if not processed[tree.name].exists():
            raise RuntimeError("no processed corpus (preprocess failed)")
        spec = {
            "recipe": recipe, "vocab": args.words + SPECIAL_TOKENS, "labels": labels,
            "doc_words": AMAZON_WORDS_PER_DOC, "labels_per_doc": AMAZON_LABELS_PER_DOC,
            "warmup": args.warmup, "steps": args.steps, "seed": r, "threads": args.threads,
            "state_dir": str(folder / f"state-{tree.name}"), "data": str(processed[tree.name]),
            "checkpoint": str(folder / f"model-{tree.name}.safetensors") if r == 0 else None,
        }
        spec_path = folder / f"spec-{tree.name}.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        child = run_child([sys.executable, str(Path(__file__).resolve()), "--worker",
                           str(spec_path)], tree.path, folder, args.threads)
        if not child.ok:
            raise RuntimeError(child.failure())
        got = json.loads(child.stdout.strip().splitlines()[-1])
        cell.step_s += got["step_seconds"]
        cell.step_mib.append(got["step_peak_mib"])
        cell.save_s.append(got["save_seconds"])
        cell.save_extra_mib.append(got["save_extra_mib"])
        cell.peak_mib.append(got["save_peak_mib"])
        cell.state_mib.append(got["state_bytes"] / MIB)
        if "ckpt_bytes" in got:
            cell.ckpt_mib.append(got["ckpt_bytes"] / MIB)
        if r == 0:
            cell.worker = {k: v for k, v in got.items() if k != "step_seconds"}

    each_round("step + save", step)
    for tree in trees:  # the preprocessed corpus of the old tree is not needed any more
        if tree.name != "new" and not args.keep:
            shutil.rmtree(processed[tree.name], ignore_errors=True)

    def predict(tree: Tree, cell: Cell, r: int) -> None:
        ckpt = folder / f"model-{tree.name}.safetensors"
        if not ckpt.exists():
            raise RuntimeError("no checkpoint (the step worker failed)")
        out = folder / f"predicted-{tree.name}.txt"
        child = run_child([sys.executable, "-m", "xmtc_cli", "predict", str(ckpt),
                           str(corpus.docs), "--out", str(out), "--device", "cpu"],
                          tree.path, folder, args.threads)
        if not child.ok:
            raise RuntimeError(child.failure())
        with open(out, "rb") as f:
            lines = sum(1 for _ in f)
        out.unlink()
        if lines != args.predict_docs:
            raise RuntimeError(f"{lines} output lines for {args.predict_docs} documents")
        found = re.search(r"predicted ([\d,]+) documents in ([\d.]+)\s*s", child.stderr)
        loop = float(found.group(2)) if found else child.seconds
        cell.pred_docs_s.append(args.predict_docs / max(loop, 0.05))
        cell.pred_s.append(child.seconds)
        cell.pred_mib.append(child.peak_mib)

    if args.predict_docs:
        each_round("predict", predict)

    new = next((t for t in trees if t.name == "new"), None)
    if new is not None and not args.no_cli_train and new.info.get("max_steps") \
            and processed["new"].exists():
        log("  cli train new (train.max_steps=1)")
        extras["cli_train"] = cli_train(new, processed["new"], recipe, folder, args)

    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return cells, extras


def cli_train(tree: Tree, data: Path, recipe: dict, folder: Path,
              args: argparse.Namespace) -> dict:
    """`xmtc train` for one optimiser step: the whole product path at this size."""
    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    run = folder / "run"
    child = run_child([sys.executable, "-m", "xmtc_cli", "train", str(recipe_path),
                       f"data.dir={data}", "train.max_steps=1", "--out", str(run),
                       "--device", "cpu"], tree.path, folder, args.threads)
    if not child.ok:
        return {"error": child.failure()}
    files = {p.name: round(p.stat().st_size / MIB, 1) for p in sorted(run.glob("*.safetensors"))}
    return {"seconds": round(child.seconds, 1), "peak_mib": round(child.peak_mib), "files": files}


# --- report ----------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe_machine(trees: list[Tree]) -> str:
    cpu = platform.processor() or platform.machine()
    memory = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    info = trees[0].info
    return (f"torch {info.get('torch')}; CPU {cpu}, {os.cpu_count()} cores, "
            f"{info.get('threads')} torch threads; {memory} RAM; Python "
            f"{platform.python_version()}; load average {load_average()}")


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def available_mib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def print_tables(results: list[tuple[int, dict[str, Cell]]], trees: list[Tree]) -> None:
    width = 11
    head = f"{'labels':>9} {'tree':<4} " + " ".join(f"{h:>{width}}" for h, _, _ in
                                                     COLUMNS.values())
    print(head + "\n" + "-" * len(head))
    for labels, cells in results:
        for tree in trees:
            cell = cells[tree.name]
            row = " ".join(f"{cell_text(cell, c):>{width}}" for c in COLUMNS)
            print(f"{labels:>9,} {tree.name:<4} {row}")

    print("\nspread of the timings: min-max (count) over rounds, or over all timed steps")
    for labels, cells in results:
        for tree in trees:
            cell = cells[tree.name]
            parts = []
            for column in ("prep_s", "step_s", "save_s", "pred_docs_s"):
                values = getattr(cell, column)
                if values:
                    pattern = COLUMNS[column][2]
                    parts.append(f"{COLUMNS[column][0]} {pattern.format(min(values))}-"
                                 f"{pattern.format(max(values))} ({len(values)})")
            print(f"{labels:>9,} {tree.name:<4} " + "; ".join(parts))

    names = [t.name for t in trees]
    if "old" in names and "new" in names:
        print("\nnew / old (below 1: the new code is faster or smaller; docs/s: above 1 is "
              "faster)")
        print(head.replace(" tree", "     ") + "\n" + "-" * len(head))
        for labels, cells in results:
            row = " ".join(f"{fmt(ratio(cells['new'], cells['old'], c)):>{width}}"
                           for c in COLUMNS)
            print(f"{labels:>9,} {'':<4} {row}")

    if len(results) > 1:
        print("\ngrowth from one label count to the next, per tree (labels grow by the first "
              "column's factor)")
        print(head.replace("   labels", "    x lab") + "\n" + "-" * len(head))
        for (l0, c0), (l1, c1) in zip(results, results[1:]):
            for tree in trees:
                row = " ".join(f"{fmt(ratio(c1[tree.name], c0[tree.name], c)):>{width}}"
                               for c in COLUMNS)
                print(f"{l1 / l0:>9.1f} {tree.name:<4} {row}")


def cell_text(cell: Cell, column: str) -> str:
    value = summary(cell, column)
    if value is None and column == "save_extra_mib" and cell.save_s:
        return "?"  # saved, but the peak could not be reset
    return fmt(value, COLUMNS[column][2])


def ratio(a: Cell, b: Cell, column: str) -> float | None:
    """a / b; none below 1 MiB (the new save's +0.1 MiB: a ratio of noise)."""
    x, y = summary(a, column), summary(b, column)
    floor = 1.0 if column.endswith("_mib") else 0.0
    return None if x is None or y is None or y <= floor else x / y


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of the old code (omit: measure the new tree alone)")
    parser.add_argument("--new", type=Path, default=ROOT,
                        help="a checkout of the new code (default: this checkout)")
    parser.add_argument("--labels", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                        help="label counts L (default: 1K, 10K, 100K)")
    parser.add_argument("--huge", action="store_true",
                        help=f"add Amazon-670K's {AMAZON_LABELS:,} labels")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of every measurement per tree, trees alternating")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per step worker")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per step worker")
    parser.add_argument("--hidden", type=int, default=128, help="H (the paper's: 512)")
    parser.add_argument("--batch", type=int, default=16, help="B (the recipe's: 64)")
    parser.add_argument("--max-src-tokens", type=int, default=200,
                        help="T, source tokens kept (the recipe's: 500)")
    parser.add_argument("--words", type=int, default=AMAZON_WORDS,
                        help="token vocabulary (default: Amazon-670K's)")
    parser.add_argument("--predict-docs", type=int, default=2048,
                        help="documents of each `xmtc predict` (0: no predict)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of every child (default: torch's choice)")
    parser.add_argument("--tmp", type=Path, default=None,
                        help="work folder (default: a new folder under the system's temp)")
    parser.add_argument("--keep", action="store_true", help="keep corpora, checkpoints, runs")
    parser.add_argument("--json", type=Path, default=None, help="write all raw figures here")
    parser.add_argument("--no-cli-train", action="store_true",
                        help="skip the `xmtc train train.max_steps=1` run of the new tree")
    parser.add_argument("--force", action="store_true",
                        help="run sizes whose estimated memory exceeds what is available")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return probe_worker()
    if args.worker:
        return worker(args.worker)
    if "torch" in sys.modules:  # keep this process small: see run_child
        sys.exit("error: the benchmark's main process must not import torch")

    labels = sorted(set(args.labels + ([AMAZON_LABELS] if args.huge else [])))
    work = args.tmp or Path(tempfile.mkdtemp(prefix="xmtc-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    trees = ([Tree("old", args.baseline.resolve())] if args.baseline else []) + \
        [Tree("new", args.new.resolve())]
    for tree in trees:
        probe(tree, work, args.threads)
    recipe = bench_recipe(args)

    print(describe_machine(trees))
    for tree in trees:
        i = tree.info
        dirty = " (uncommitted changes)" if i["dirty"] else ""
        print(f"{tree.name}: {tree.path} @ {i['commit']}{dirty}; xmtc {i['version']}; "
              f"train-state save: {i['save']}")
    print(f"model: recipes/amazon670k.yaml at {describe_shape(recipe, args.words)}")
    print(f"step: median of {args.rounds} x {args.steps} timed steps after {args.warmup} "
          f"warm-up step(s) per worker, random batches of ~{AMAZON_WORDS_PER_DOC:.0f} words "
          f"(cut at T) and ~{AMAZON_LABELS_PER_DOC} labels; forward + loss + zero_grad + backward "
          "+ clip + Adam")
    print(f"predict: {args.predict_docs} documents of {DOC_WORDS[0]}-{DOC_WORDS[1]} words, "
          f"batch 64; trees alternate, {args.rounds} round(s) of every measurement\n")

    results, extras = [], {}
    for count in labels:
        estimate = estimate_mib(recipe, args.words, count)
        free = available_mib()
        disk = shutil.disk_usage(work).free / MIB
        log(f"L = {count:,}: ~{estimate['params_m']:.0f} M parameters; estimated step "
            f"{estimate['step']:,.0f} MiB, old save {estimate['old_save']:,.0f} MiB "
            f"(available {fmt(free, '{:,.0f}')} MiB), disk {estimate['disk']:,.0f} MiB "
            f"(free {disk:,.0f} MiB)")
        if not args.force and ((free is not None and estimate["old_save"] > 0.9 * free)
                               or estimate["disk"] > 0.9 * disk):
            log("  skipped: not enough memory or disk (--force runs it anyway)")
            continue
        cells, extra = measure(count, trees, args, recipe, work)
        results.append((count, cells))
        extras[count] = extra

    print_tables(results, trees)
    print(f"\nthis process's own peak RSS {own_peak_mib():.0f} MiB (a child's ru_maxrss is at "
          f"least that); load average at the end {load_average()}")
    for count, cells in results:
        for tree in trees:
            w = cells[tree.name].worker
            if w:
                print(f"L={count:,} {tree.name}: {w['params'] / 1e6:.1f} M parameters, RSS "
                      f"after build {fmt(w['rss_built_mib'], '{:.0f}')} MiB; state saved by "
                      f"{w['save_api']}; checkpoint save {fmt(w.get('ckpt_seconds'))} s, "
                      f"+{fmt(w.get('ckpt_extra_mib'), '{:.0f}')} MiB")
        extra = extras[count]
        if "cli_train" in extra:
            c = extra["cli_train"]
            text = (c["error"] if "error" in c else
                    f"{c['seconds']} s, peak {c['peak_mib']} MiB, files MiB {c['files']}")
            print(f"L={count:,} new `xmtc train train.max_steps=1`: {text}")
    failed = [(count, name, e) for count, cells in results for name, cell in cells.items()
              for e in cell.errors]
    for count, name, error in failed:
        print(f"FAILED L={count:,} {name}: {error}")

    if args.json:
        raw = {"machine": describe_machine(trees), "recipe": recipe, "words": args.words,
               "trees": {t.name: {"path": str(t.path), **t.info} for t in trees},
               "results": {str(c): {n: vars(cell) for n, cell in cells.items()}
                           for c, cells in results},
               "extras": {str(k): v for k, v in extras.items()}}
        args.json.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    if not args.keep and args.tmp is None:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
