"""Ranked label suggestions: a predicted set turned into labels with names, scores and ranks.

OTSeq2Set generates a set; an indexer also wants the labels it nearly chose. Every label is
scored by its highest probability over the decoder's steps (`Seq2SetModel.generate`'s `best`):
a label in the generated set scores at least the probability of the step that produced it,
and a label outside it scores what the model gave it where it came closest to being chosen.
Over S steps these scores add up to at most S (each step's probabilities add up to 1), so at
most S / t labels score t or more: `rank_needed` asks the device for exactly that many.

`suggest` applies the choices of `xmtc predict` and `xmtc serve` in one place:

* the set: the generated labels (`in_set`), or, with a threshold, every label scoring at least
  the threshold (the set a checkpoint's tuned threshold gives, `threshold.py`);
* `top_k` K: the K best-scoring labels, whether in the set or not (the set's labels outside the
  K best are still listed: a suggestion list never hides what the model chose);
* `min_score`: labels scoring less are left out, set or not;
* the result is ranked by score, best first (ties: in-set first, then label), or with
  `generation_order` the set first in the decoder's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xmtc_cli.inference import Prediction


@dataclass(frozen=True)
class Suggestion:
    label: str  # the label's identifier in the corpus
    name: str  # its readable name (the identifier where the corpus has none)
    score: float  # its highest probability over the decoder's steps
    in_set: bool  # part of the predicted set

    def to_dict(self) -> dict:
        return {"label": self.label, "name": self.name, "score": round(self.score, 6),
                "in_set": self.in_set}


def rank_needed(top_k: int, threshold: float | None, steps: int) -> int:
    """How many of the best-scoring labels `suggest` needs from `predict_ids(rank=...)`:
    `top_k`, and with a threshold t every label that can score t or more, at most steps / t.
    At least 1, so that the set's own scores are always computed."""
    need = max(top_k, 1)
    if threshold is not None:
        need = max(need, math.floor(steps / threshold) if threshold > 0 else 10**9)
    return need


def suggest(pred: Prediction, labels: list[str], names: list[str], top_k: int = 0,
            min_score: float = 0.0, threshold: float | None = None,
            generation_order: bool = False) -> list[Suggestion]:
    """Ranked suggestions for one document from a `Prediction` made with `rank` at least
    `rank_needed(top_k, threshold, steps)` (the module's rules).

    `generation_order` lists the generated set first, in the order the decoder produced it
    (the ranking the paper's P@k reads), then the other suggestions by score."""
    scores: dict[int, float] = dict(pred.ranked)
    if threshold is None:
        in_set = set(pred.labels)
        scores.update(zip(pred.labels, pred.best or pred.scores))
    else:
        in_set = {k for k, score in pred.ranked if score >= threshold}
    chosen = set(in_set)
    if top_k:
        chosen.update(k for k, _ in pred.ranked[:top_k])
    out = [Suggestion(labels[k], names[k], scores[k], k in in_set)
           for k in chosen if scores[k] >= min_score]
    out.sort(key=lambda s: (-s.score, not s.in_set, s.label))
    if generation_order and threshold is None:
        position = {labels[k]: i for i, k in enumerate(pred.labels)}
        out.sort(key=lambda s: position.get(s.label, len(position)))  # stable: scores after
    return out
