"""Greedy set decoding: from token ids or raw text to label sets with their scores."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from xmtc_cli.checkpoint import CheckpointMeta, load_lexical_index, load_model
from xmtc_cli.data.batching import feature_rows, pad_sources
from xmtc_cli.data.features import checked_rows, open_features
from xmtc_cli.data.processed import Split
from xmtc_cli.data.tokenize import tokenizer_from_settings
from xmtc_cli.data.vocab import UNK_ID
from xmtc_cli.device import autocast, resolve_device
from xmtc_cli.errors import DataError, UsageError
from xmtc_cli.labelspace import EOS, NUM_SPECIALS
from xmtc_cli.lexical import LexicalIndex, gate_threshold, prior_bonus
from xmtc_cli.model import Seq2SetModel


@dataclass(frozen=True)
class Prediction:
    labels: list[int]  # corpus label ids in generation order, distinct
    scores: list[float]  # probability at the step that produced each label
    # With `predict_ids(..., rank=K)`: each label's highest probability over the decoder's
    # steps, for the set's labels (aligned with `labels`) and for the K best labels overall
    # (corpus ids and scores, best first). Empty otherwise.
    best: list[float] = field(default_factory=list)
    ranked: list[tuple[int, float]] = field(default_factory=list)


def decode(labels: torch.Tensor, scores: torch.Tensor) -> list[Prediction]:
    """Turn generated output indices (B, S) into label sets: specials dropped, duplicates collapsed.

    Generation stops at the first EOS (Seq2Seq baselines); a label generated twice keeps the
    score of the step that first produced it.
    """
    out = []
    for row, row_scores in zip(labels.tolist(), scores.float().tolist()):
        seen: dict[int, float] = {}
        for index, score in zip(row, row_scores):
            if index == EOS:
                break
            if index >= NUM_SPECIALS and index not in seen:
                seen[index] = score
        out.append(Prediction([i - NUM_SPECIALS for i in seen], list(seen.values())))
    return out


@torch.no_grad()
def predict_ids(model: Seq2SetModel, docs: Sequence[np.ndarray | Sequence[int]],
                max_src_tokens: int, device: torch.device, amp: bool = True,
                features: np.ndarray | None = None, rank: int = 0,
                prior: sp.csr_matrix | None = None, weight: float = 0.0,
                gate: float | None = None) -> list[Prediction]:
    """Label sets for a batch of documents given as token-id arrays, with their side features
    float32 [len(docs), D] for a model that reads them, and their lexical label scores
    [len(docs), L] (`LexicalIndex.scores`) fused with `weight` (0 or None: the decoder alone), and
    with a `gate` threshold into the choice of whether a label comes too (`lexical.fused_choice`,
    `lexical.prior_bonus`).

    Without side features a document with no tokens gets the empty set: there is nothing to
    read labels from, and the model would otherwise answer with whatever its decoder favours
    a priori. With them it is decoded like any other: its features are something to read.

    `rank` > 0 also scores every label by its highest probability over the decoder's steps
    (`Seq2SetModel.generate`'s `best`) and keeps the `rank` best (`Prediction.ranked`) and
    the set's own (`Prediction.best`). Only those leave the device.
    """
    return predict_ids_by_weight(model, docs, max_src_tokens, device, amp, features, rank,
                                 prior, (weight,), gate)[0]


@torch.no_grad()
def predict_ids_by_weight(model: Seq2SetModel, docs: Sequence[np.ndarray | Sequence[int]],
                          max_src_tokens: int, device: torch.device, amp: bool = True,
                          features: np.ndarray | None = None, rank: int = 0,
                          prior: sp.csr_matrix | None = None,
                          weights: Sequence[float] = (0.0,),
                          gate: float | None = None) -> list[list[Prediction]]:
    """`predict_ids` once per weight of `weights`, in that order: the documents are encoded
    once and decoded once per weight (the encoder is over half of greedy decoding's time at
    TIBKAT's 200 tokens and 16K labels)."""
    model.eval()
    out = [[Prediction([], []) for _ in docs] for _ in weights]
    filled = [i for i, doc in enumerate(docs) if len(doc) or features is not None]
    if not filled:
        return out
    src, lengths = pad_sources([docs[i] for i in filled], max_src_tokens)
    rows = feature_rows(features, filled)
    src, rows = src.to(device), None if rows is None else rows.to(device)
    with autocast(device, amp):
        encoded = model.encode(src, lengths, rows)  # lengths stay on the host
    lexical = None if prior is None else prior[filled]  # the decoded documents' rows
    for weight, got in zip(weights, out):
        bonus = None
        if lexical is not None and weight:
            bonus = prior_bonus(lexical, weight, model.label_embedding.num_embeddings, device,
                                gate)  # (B, V)
        best: list[torch.Tensor] | None = [] if rank > 0 else None
        with autocast(device, amp):
            labels, scores = model.generate(src, lengths, rows, bonus, gate is not None,
                                            best=best, encoded=encoded)
        preds = decode(labels, scores)
        if best:
            preds = _with_ranking(preds, best[0].float()[:, NUM_SPECIALS:], rank)
        for i, pred in zip(filled, preds):
            got[i] = pred
    return out


def _with_ranking(preds: list[Prediction], best: torch.Tensor, rank: int) -> list[Prediction]:
    """`preds` with `best` and `ranked` filled from best [B, L], corpus labels' best-step
    probabilities."""
    top_scores, top_ids = best.topk(min(rank, best.size(1)), dim=1)  # (B, K)
    top_scores, top_ids = top_scores.cpu().tolist(), top_ids.cpu().tolist()
    width = max((len(p.labels) for p in preds), default=0)
    own = [[] for _ in preds]
    if width:
        index = torch.tensor([p.labels + [0] * (width - len(p.labels)) for p in preds],
                             device=best.device)  # (B, W)
        own = best.gather(1, index).cpu().tolist()
    return [replace(p, best=own[b][:len(p.labels)], ranked=list(zip(top_ids[b], top_scores[b])))
            for b, p in enumerate(preds)]


def predict_split(model: Seq2SetModel, split: Split, max_src_tokens: int, batch_size: int,
                  device: torch.device, amp: bool = True,
                  progress: Callable[[int, int], None] | None = None,
                  prior: sp.csr_matrix | None = None, weight: float = 0.0,
                  gate: float | None = None) -> list[list[int]]:
    """Predicted corpus label ids, in generation order, for every document of a split, fused
    with the lexical label scores `prior` [docs, L] with `weight` (`predict_ids`).

    `progress(done, total)` is called after every batch with the documents done so far.
    """
    return predict_split_by_weight(model, split, max_src_tokens, batch_size, device, amp,
                                   progress, prior, (weight,), gate)[0]


def predict_split_by_weight(model: Seq2SetModel, split: Split, max_src_tokens: int,
                            batch_size: int, device: torch.device, amp: bool = True,
                            progress: Callable[[int, int], None] | None = None,
                            prior: sp.csr_matrix | None = None,
                            weights: Sequence[float] = (0.0,),
                            gate: float | None = None) -> list[list[list[int]]]:
    """`predict_split` once per weight of `weights`, in that order, each batch encoded once
    (`predict_ids_by_weight`)."""
    # Batching documents of similar length wastes less work on padding; order is restored after.
    lengths = np.diff(split.token_offsets)
    order = np.argsort(-np.minimum(lengths, max_src_tokens), kind="stable")
    result: list[list[list[int]]] = [[[] for _ in range(len(split))] for _ in weights]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        rows = None if split.features is None else split.features[idx]
        by_weight = predict_ids_by_weight(
            model, [split.tokens(i) for i in idx], max_src_tokens, device, amp, rows,
            prior=None if prior is None else prior[idx], weights=weights, gate=gate)
        for preds, got in zip(by_weight, result):
            for i, p in zip(idx, preds):
                got[i] = p.labels
        if progress is not None:
            progress(start + len(idx), len(order))
    return result


def encode_texts(texts: Iterable[str], tokenize: Callable[[str], list[str]],
                 token_ids: dict[str, int]) -> list[np.ndarray]:
    """Token-id arrays for raw texts, unknown words mapped to <unk>."""
    return [np.fromiter((token_ids.get(t, UNK_ID) for t in tokenize(text)), dtype=np.int64)
            for text in texts]


def chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of `size` lines (the last may be shorter), read lazily."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Predictor:
    """A trained model with everything needed to label raw text, loaded from one checkpoint."""

    def __init__(self, model: Seq2SetModel, meta: CheckpointMeta, device: torch.device,
                 lexical: LexicalIndex | None = None):
        self.model = model.eval()
        self.lexical = lexical
        """The lexical scorer the model fuses its choices with (model.lexical), or None."""
        self.meta = meta
        self.device = device
        self.recipe = meta.recipe
        self.tokenize = tokenizer_from_settings(meta.tokenizer)
        self.token_ids = {token: i for i, token in enumerate(meta.tokens)}
        self.labels = meta.labels

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto") -> Predictor:
        dev = resolve_device(device)
        model, meta = load_model(path, dev)
        return cls(model, meta, dev, load_lexical_index(path, meta))

    @property
    def lexical_weight(self) -> float:
        """The weight the lexical scores join each step's choice with (0: the decoder alone)."""
        return float(self.meta.extra.get("lexical_weight", 0.0)) if self.lexical else 0.0

    def lexical_scores(self, docs: Sequence[np.ndarray]) -> sp.csr_matrix | None:
        """The lexical label scores [len(docs), L] of token-id arrays, where they count."""
        if self.lexical is None or not self.lexical_weight:
            return None
        return self.lexical.scores_of_docs(docs)

    @property
    def steps(self) -> int:
        """The most decoding steps a document gets (N; N + 1 for a cross-entropy model)."""
        return self.model.decode_steps + (1 if self.model.teacher_forcing else 0)

    @property
    def names(self) -> list[str]:
        """Each label's readable name (its identifier where the checkpoint has none)."""
        names = self.meta.label_names
        return list(names) if names and len(names) == len(self.labels) else list(self.labels)

    @property
    def threshold(self) -> dict | None:
        """The score threshold tuned on validation (`threshold.py`), where the checkpoint
        holds one: {"threshold", "valid_micro_f1", "set_micro_f1"} and, in checkpoints
        written since it was recorded, "valid_docs"."""
        tuned = self.meta.extra.get("threshold")
        return tuned if isinstance(tuned, dict) and "threshold" in tuned else None

    @property
    def feature_size(self) -> int:
        """D of the side features the model reads; 0: none."""
        return self.model.feature_size

    def predict_texts(self, texts: Sequence[str], features: np.ndarray | None = None,
                      rank: int = 0) -> list[Prediction]:
        """Label sets for raw texts, tokenized as the training data was, with their side
        features float32 [len(texts), D] for a model trained with them (`predict_ids`)."""
        docs = encode_texts(texts, self.tokenize, self.token_ids)
        return predict_ids(self.model, docs, self.recipe.data.max_src_tokens, self.device,
                           self.recipe.train.amp, features, rank,
                           prior=self.lexical_scores(docs), weight=self.lexical_weight,
                           gate=gate_threshold(self.recipe.model))

    def open_features(self, path: str | Path | None, checkpoint: str | Path) -> np.ndarray | None:
        """The side-features file `path` (None: none given) opened for `label_lines`, refused
        unless the model reads side features of its width: a model trained with them needs
        them, one trained without cannot use them."""
        if path is None:
            if self.feature_size:
                raise UsageError(
                    f"{checkpoint} was trained with side features of width {self.feature_size}, "
                    "and no --features file was given",
                    "pass --features FILE: one row of the same features per line of DOCS",
                )
            return None
        if not self.feature_size:
            raise UsageError(f"{checkpoint} was trained without side features, so --features "
                             f"{path} cannot be used", "leave out --features")
        if str(path) == "-":  # rows are read by position, a batch at a time: a file, not a pipe
            raise UsageError("--features cannot read standard input (-)",
                             "save the features to a .npy file and pass its path")
        return open_features(path, width=self.feature_size)


def label_lines(predictor: Predictor, texts: Iterable[str], batch_size: int,
                features: np.ndarray | None = None,
                features_path: str | Path = "--features", rank: int = 0
                ) -> Iterator[Prediction]:
    """The `Prediction` of each text (`predict_ids`, with `rank`), in input order, predicted
    `batch_size` at a time.

    Texts are read lazily, one batch ahead at most, so memory stays flat however many come in
    and a reader of the output sees a batch's labels before the next batch is read. `features`
    (`Predictor.open_features`, read from `features_path`) holds a row per text; each batch
    reads its rows only. A text past its last row is refused before its batch is predicted,
    and rows left over once the texts end are refused then (texts may come from a pipe, whose
    lines cannot be counted first).
    """
    done = 0
    for chunk in chunks(texts, batch_size):
        rows = None
        if features is not None:
            if done + len(chunk) > len(features):
                raise DataError(f"{features_path} has {len(features):,} rows, and the "
                                f"documents go on past line {len(features):,}",
                                "write one row per document, in the documents' order")
            rows = checked_rows(features, features_path, done, done + len(chunk))
        done += len(chunk)
        yield from predictor.predict_texts(chunk, rows, rank)
    if features is not None and done != len(features):
        raise DataError(f"{features_path} has {len(features):,} rows for {done:,} documents",
                        "write one row per document, in the documents' order")
