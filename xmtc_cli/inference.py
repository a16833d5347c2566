"""Greedy set decoding: from token ids or raw text to label sets with their scores."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xmtc_cli.checkpoint import CheckpointMeta, load_checkpoint
from xmtc_cli.config import recipe_from_dict
from xmtc_cli.data.batching import pad_sources
from xmtc_cli.data.processed import UNK_ID, Split
from xmtc_cli.data.tokenize import tokenizer_from_settings
from xmtc_cli.device import autocast, resolve_device
from xmtc_cli.labelspace import EOS, NUM_SPECIALS
from xmtc_cli.model import ModelSizes, Seq2SetModel, build_model, on_meta_device


@dataclass(frozen=True)
class Prediction:
    labels: list[int]  # corpus label ids in generation order, distinct
    scores: list[float]  # probability at the step that produced each label


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
                max_src_tokens: int, device: torch.device,
                amp: bool = True) -> list[Prediction]:
    """Label sets for a batch of documents given as token-id arrays.

    A document with no tokens gets the empty set: there is nothing to read labels from, and
    the model would otherwise answer with whatever its decoder favours a priori.
    """
    model.eval()
    out = [Prediction([], []) for _ in docs]
    filled = [i for i, doc in enumerate(docs) if len(doc)]
    if filled:
        src, lengths = pad_sources([docs[i] for i in filled], max_src_tokens)
        with autocast(device, amp):
            labels, scores = model.generate(src.to(device), lengths)  # lengths stay on the host
        for i, pred in zip(filled, decode(labels, scores)):
            out[i] = pred
    return out


def predict_split(model: Seq2SetModel, split: Split, max_src_tokens: int, batch_size: int,
                  device: torch.device, amp: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Predicted corpus label ids, in generation order, for every document of a split.

    `progress(done, total)` is called after every batch with the documents done so far.
    """
    # Batching documents of similar length wastes less work on padding; order is restored after.
    lengths = np.diff(split.token_offsets)
    order = np.argsort(-np.minimum(lengths, max_src_tokens), kind="stable")
    result: list[list[int]] = [[] for _ in range(len(split))]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        preds = predict_ids(model, [split.tokens(i) for i in idx], max_src_tokens, device, amp)
        for i, p in zip(idx, preds):
            result[i] = p.labels
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

    def __init__(self, model: Seq2SetModel, meta: CheckpointMeta, device: torch.device):
        self.model = model.eval()
        self.meta = meta
        self.device = device
        self.recipe = recipe_from_dict(meta.recipe, source="checkpoint recipe")
        self.tokenize = tokenizer_from_settings(meta.tokenizer)
        self.token_ids = {token: i for i, token in enumerate(meta.tokens)}
        self.labels = meta.labels

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto") -> Predictor:
        dev = resolve_device(device)
        state, meta = load_checkpoint(path, device=str(dev))
        recipe = recipe_from_dict(meta.recipe, source=f"{path} (its recipe)")
        # Built on the meta device the model allocates no weights, and the file's tensors
        # become its parameters (assign=True): loading holds one copy of the weights, not a
        # random model's as well. Safe because the model ties no weights and has no buffers
        # outside its state dict (tests/test_output_layer.py checks both).
        with on_meta_device():
            model = build_model(recipe.model, recipe.loss, ModelSizes(**meta.sizes))
        model.load_state_dict(state, assign=True)
        return cls(model.to(dev), meta, dev)

    def predict_texts(self, texts: Sequence[str]) -> list[Prediction]:
        """Label sets for raw texts, tokenized as the training data was."""
        docs = encode_texts(texts, self.tokenize, self.token_ids)
        return predict_ids(self.model, docs, self.recipe.data.max_src_tokens, self.device,
                           self.recipe.train.amp)


def label_lines(predictor: Predictor, texts: Iterable[str],
                batch_size: int) -> Iterator[tuple[list[str], list[float]]]:
    """(label names, scores) for each text, in input order, predicted `batch_size` at a time.

    Texts are read lazily, one batch ahead at most, so memory stays flat however many come in
    and a reader of the output sees a batch's labels before the next batch is read.
    """
    for chunk in chunks(texts, batch_size):
        for pred in predictor.predict_texts(chunk):
            yield [predictor.labels[k] for k in pred.labels], pred.scores
