"""`xmtc eval --per-label FILE`: each label's support, precision, recall and F1, as TSV.

Columns: `label name support precision recall f1 train_count`. support is the number of
documents whose gold set holds the label; precision, recall and F1 are fractions in [0, 1]
(a ratio 0/0 is 0, as in the summary metrics), computed from the same counts as micro- and
macro-F1 (`metrics.score_label_sets`' `per_label`), so averaging the f1 column gives macro-F1.
train_count is the number of training documents carrying the label (empty where unknown).
Rows: most support first, then label. Written atomically.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

from xmtc_cli.atomic import atomic_file

HEADER = ("label", "name", "support", "precision", "recall", "f1", "train_count")


def rows(counts: Mapping[Hashable, tuple[int, int, int]], names: Mapping[str, str] | None = None,
         train_counts: Mapping[str, int] | None = None) -> list[tuple]:
    """One row per label of `counts` (label -> (TP, FP, FN)), in the file's order."""
    out = []
    for label, (tp, fp, fn) in counts.items():
        label = str(label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        name = (names or {}).get(label, label)
        train = "" if train_counts is None else train_counts.get(label, 0)
        out.append((label, name, tp + fn, precision, recall, f1, train))
    out.sort(key=lambda row: (-row[2], row[0]))
    return out


def write(path: str | Path, table: list[tuple]) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write("\t".join(HEADER) + "\n")
        for label, name, support, precision, recall, f1, train in table:
            f.write(f"{_clean(label)}\t{_clean(name)}\t{support}\t{precision:.6f}\t"
                    f"{recall:.6f}\t{f1:.6f}\t{train}\n")


def _clean(value: str) -> str:
    return value.replace("\t", " ").replace("\n", " ").replace("\r", " ")
