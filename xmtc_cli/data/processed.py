"""The processed-data folder: what `xmtc preprocess` writes and `xmtc train` loads.

Layout (FORMAT_VERSION 1)::

    manifest.json          "format": "xmtc-processed", format version, dataset name, options,
                           source checksums, statistics, tokenizer settings; written last
    tokens.tsv             token<TAB>training count, one per line, line k = token id k;
                           id 0 is <pad>, id 1 is <unk>
    labels.tsv             label<TAB>readable name<TAB>training count; line k = label id k.
                           The first `num_labels` are the training labels (the model's label
                           vocabulary); any after them occur only in gold sets of other splits
    embeddings.safetensors "tokens" float32 [tokens, E] (absent without word vectors) and
                           "labels" float32 [num_labels, E_label] (absent where labels get
                           random embeddings that training draws itself: Amazon-670K's item
                           numbers, unless label embeddings come from document centroids);
                           the file is always there, possibly holding no tensor
    {split}.safetensors    for split in train, valid, test: "token_ids" int32 [all tokens],
                           "token_offsets" int64 [docs + 1], "label_ids" int32 [all labels],
                           "label_offsets" int64 [docs + 1]; document i is
                           token_ids[token_offsets[i]:token_offsets[i + 1]]; and, where the
                           raw corpus had side features (`xmtc_cli.data.features`), "features"
                           float32 [docs, D]: row i belongs to document i

The manifest's "features" is D, or null without side features (every split has them or none;
a manifest written before they existed has no key and reads as null).

Label ids are corpus ids (0..); the decoder's output space adds special symbols in front of
them (`xmtc_cli.labelspace`).

A folder is only ever replaced when it is provably one of these (`why_not_replaceable`): its
manifest says so and it holds nothing else, so a mistyped `--out` never deletes a user's files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from xmtc_cli.atomic import atomic_dir
from xmtc_cli.errors import DataError, cut

FORMAT_VERSION = 1
FORMAT = "xmtc-processed"  # manifest["format"]: marks a folder xmtc wrote (and may replace)
MANIFEST = "manifest.json"
SPLIT_NAMES = ("train", "valid", "test")
# Keys every manifest has carried since format version 1, before the "format" marker existed.
_MANIFEST_KEYS = frozenset({"format_version", "num_labels", "splits", "tokenizer"})


@dataclass(frozen=True)
class Split:
    """One split's documents as flat arrays with offsets (a CSR layout)."""

    token_ids: np.ndarray  # int32 [total tokens]
    token_offsets: np.ndarray  # int64 [docs + 1]
    label_ids: np.ndarray  # int32 [total labels]
    label_offsets: np.ndarray  # int64 [docs + 1]
    # float32 [docs, D]: the side features of each document (row i, document i); None without
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.token_offsets) - 1

    def tokens(self, i: int) -> np.ndarray:
        return self.token_ids[self.token_offsets[i] : self.token_offsets[i + 1]]

    def labels(self, i: int) -> np.ndarray:
        return self.label_ids[self.label_offsets[i] : self.label_offsets[i + 1]]

    def select(self, keep: np.ndarray) -> Split:
        """The documents where the bool mask `keep` [docs] is true, in order, without a loop
        (their feature rows with them)."""
        token_ids, token_offsets = _rows(self.token_ids, self.token_offsets, keep)
        label_ids, label_offsets = _rows(self.label_ids, self.label_offsets, keep)
        features = None if self.features is None else self.features[keep]
        return Split(token_ids, token_offsets, label_ids, label_offsets, features)


def flatten(rows: list[list[int]]) -> np.ndarray:
    """int32 [sum of lengths]: the rows one after the other."""
    return np.fromiter((x for row in rows for x in row), dtype=np.int32)


def offsets(lengths: list[int] | np.ndarray) -> np.ndarray:
    """int64 [rows + 1]: where each row starts in the flattened array, then the total."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _rows(values: np.ndarray, starts: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, ...]:
    lengths = np.diff(starts)
    return values[np.repeat(keep, lengths)], offsets(lengths[keep])


@dataclass(frozen=True)
class ProcessedData:
    """Everything training needs from a corpus, loaded from one processed-data folder."""

    tokens: list[str]  # id -> token
    token_counts: np.ndarray  # int64 [tokens]
    labels: list[str]  # id -> label (training labels first, then gold-only labels)
    label_names: list[str]  # id -> readable name (for GloVe means and display)
    label_counts: np.ndarray  # int64 [labels]: training documents carrying the label
    num_labels: int  # training labels: the model's label vocabulary
    splits: dict[str, Split]
    # float32 [num_labels, E_label]; None where the labels' embeddings are random and training
    # draws them itself (`model.label_embedding_size`), so no table is stored
    label_embeddings: np.ndarray | None
    token_embeddings: np.ndarray | None = None  # float32 [tokens, E], None without GloVe
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def feature_size(self) -> int:
        """D, the width of the side features every split carries; 0 without them."""
        return _feature_width(self.splits) or 0

    @property
    def tokenizer(self) -> dict[str, Any]:
        """Tokenizer settings, for `xmtc_cli.data.tokenize.tokenizer_from_settings`."""
        return self.manifest["tokenizer"]


def data_fingerprint(data: ProcessedData) -> str:
    """A digest of what the manifest says the processed data is: source checksums, options,
    split sizes, statistics, labels, tokenizer, features. The same corpus preprocessed the same
    way gives the same digest wherever it lies (paths and the xmtc version are left out); a run
    records it so that `--resume` refuses data that changed under the same path."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "path"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    kept = {k: v for k, v in data.manifest.items() if k not in ("xmtc_version", "title")}
    text = json.dumps(strip(kept), sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def save_processed(data: ProcessedData, dest: str | Path) -> Path:
    """Write `data` to the folder `dest` atomically (a crash leaves no folder that loads)."""
    dest = Path(dest)
    manifest = dict(data.manifest)
    manifest["format"] = FORMAT
    manifest["format_version"] = FORMAT_VERSION
    manifest["num_labels"] = data.num_labels
    manifest["splits"] = {name: len(split) for name, split in data.splits.items()}
    manifest["features"] = _feature_width(data.splits)
    with atomic_dir(dest) as tmp:
        with open(tmp / "tokens.tsv", "w", encoding="utf-8") as f:
            counts = data.token_counts.tolist()
            f.writelines(f"{tok}\t{count}\n" for tok, count in zip(data.tokens, counts))
        with open(tmp / "labels.tsv", "w", encoding="utf-8") as f:
            rows = zip(data.labels, data.label_names, data.label_counts.tolist())
            f.writelines(f"{lab}\t{name}\t{count}\n" for lab, name, count in rows)
        emb = {}
        if data.label_embeddings is not None:
            emb["labels"] = np.ascontiguousarray(data.label_embeddings, dtype=np.float32)
        if data.token_embeddings is not None:
            emb["tokens"] = np.ascontiguousarray(data.token_embeddings, dtype=np.float32)
        _save_arrays(emb, tmp / "embeddings.safetensors")
        for name, split in data.splits.items():
            arrays = {
                "token_ids": split.token_ids.astype(np.int32, copy=False),
                "token_offsets": split.token_offsets.astype(np.int64, copy=False),
                "label_ids": split.label_ids.astype(np.int32, copy=False),
                "label_offsets": split.label_offsets.astype(np.int64, copy=False),
            }
            if split.features is not None:
                arrays["features"] = np.ascontiguousarray(split.features, dtype=np.float32)
            _save_arrays(arrays, tmp / f"{name}.safetensors")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dest


def _feature_width(splits: dict[str, Split]) -> int | None:
    """D of the splits' side features, None without; ValueError unless all agree (a caller's
    mistake: preprocess checks the user's files before it gets here)."""
    widths = {None if s.features is None else int(s.features.shape[1]) for s in splits.values()}
    if len(widths) > 1:
        raise ValueError(f"splits disagree on their side features: widths {widths}")
    return widths.pop() if widths else None


def _save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """safetensors' save_file, whose I/O failures (a full disk) are its own error type: made
    the OSError they are, so that the CLI names the file and the fix."""
    try:
        save_file(arrays, str(path))
    except SafetensorError as exc:
        text = str(exc)
        code = errno.ENOSPC if "os error 28" in text else errno.EFBIG if "os error 27" in text \
            else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from exc


def why_not_replaceable(folder: str | Path) -> str | None:
    """Why `folder` must not be replaced by new processed data; None if it may be.

    It may when it does not exist, is empty, or is provably xmtc's: its manifest parses and says
    it is processed data (the "format" marker, or an older manifest's keys), and it holds
    nothing but the files `save_processed` writes. Anything else may be someone's work.
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return None
    if not folder.is_dir():
        return "it is a file, not a folder"
    entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    if not entries:
        return None
    manifest = _manifest_or_none(folder / MANIFEST)
    if manifest is None:
        return f"it has no {MANIFEST} of processed data"
    splits = manifest.get("splits")
    split_names = set(splits) if isinstance(splits, dict) else set()
    ours = {MANIFEST, "tokens.tsv", "labels.tsv", "embeddings.safetensors"} | {
        f"{name}.safetensors" for name in set(SPLIT_NAMES) | split_names
    }
    foreign = [cut(e.name) + ("/" if e.is_dir(follow_symlinks=False) else "")
               for e in entries if e.name not in ours or not e.is_file(follow_symlinks=False)]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return f"it holds files xmtc does not write: {', '.join(foreign[:3])}{more}"
    return None


def _manifest_or_none(path: Path) -> dict[str, Any] | None:
    """The manifest at `path` if it is a processed-data manifest, else None."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("format") == FORMAT or _MANIFEST_KEYS <= manifest.keys():
        return manifest
    return None


def load_processed(path: str | Path) -> ProcessedData:
    """Load a folder written by `save_processed`, refusing anything incomplete or foreign."""
    path = Path(path)
    hint = f"run `xmtc preprocess DATASET --out {path}` first"
    if not path.is_dir():
        raise DataError(f"processed-data folder {path} does not exist", hint)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{path} is not a processed-data folder (no {MANIFEST})", hint)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"{manifest_path} cannot be read: {str(exc)[:200]}", hint) from exc
    if not isinstance(manifest, dict):
        raise DataError(f"{manifest_path} is not an xmtc manifest (not a JSON object)", hint)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path} holds processed data of format version {version}; "
            f"this xmtc reads version {FORMAT_VERSION}",
            f"re-run `xmtc preprocess` with this version of xmtc to rebuild {path}",
        )
    try:
        tokens, token_counts = _read_tsv(path / "tokens.tsv", 2)
        labels, label_names, label_counts = _read_tsv(path / "labels.tsv", 3)
        emb = load_file(str(path / "embeddings.safetensors"))
        splits = {}
        width = _manifest_width(manifest.get("features"))
        for name in manifest.get("splits", {}):
            arrays = load_file(str(path / f"{name}.safetensors"))
            splits[name] = _checked(Split(**arrays), name, len(tokens), len(labels), width)
        num_labels = int(manifest["num_labels"])
        if not 0 <= num_labels <= len(labels):
            raise ValueError(f"num_labels {num_labels} for {len(labels)} labels")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as exc:
        raise DataError(f"processed data in {path} is damaged: {str(exc)[:200]}", hint) from exc
    return ProcessedData(
        tokens=tokens,
        token_counts=np.asarray(token_counts, dtype=np.int64),
        labels=labels,
        label_names=label_names,
        label_counts=np.asarray(label_counts, dtype=np.int64),
        num_labels=num_labels,
        splits=splits,
        label_embeddings=emb.get("labels"),
        token_embeddings=emb.get("tokens"),
        manifest=manifest,
        path=path,
    )


def _manifest_width(value: Any) -> int | None:
    """The manifest's "features": D, or None (null, or absent in older folders)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"manifest.json: features is {value!r}, not a width")
    return value


def _checked(split: Split, name: str, tokens: int, labels: int,
             width: int | None = None) -> Split:
    """`split` if its offsets and ids are consistent with each other and the vocabularies, and
    its side features with its documents and the manifest's width `width` (a truncated or
    foreign file is refused here, not as an IndexError in the middle of training)."""
    for ids, offsets, limit, what in ((split.token_ids, split.token_offsets, tokens, "token"),
                                      (split.label_ids, split.label_offsets, labels, "label")):
        if (offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0
                or offsets[-1] != len(ids) or (np.diff(offsets) < 0).any()):
            raise ValueError(f"{name}.safetensors: {what} offsets do not index its {what} ids")
        if len(ids) and (ids.min() < 0 or ids.max() >= limit):
            raise ValueError(f"{name}.safetensors: {what} ids outside the vocabulary")
    if len(split.token_offsets) != len(split.label_offsets):
        raise ValueError(f"{name}.safetensors: token and label offsets disagree on documents")
    features = split.features
    if (features is None) != (width is None):
        raise ValueError(f"{name}.safetensors: {'no' if features is None else 'unexpected'} "
                         f"side features (manifest.json says features: {width})")
    if features is not None:
        if features.ndim != 2 or features.shape != (len(split), width):
            raise ValueError(f"{name}.safetensors: features of shape {list(features.shape)} for "
                             f"{len(split)} documents of width {width}")
        if features.dtype != np.float32 or not np.isfinite(features).all():
            raise ValueError(f"{name}.safetensors: features are not finite float32 numbers")
    return split


def _read_tsv(path: Path, columns: int) -> list[list]:
    cols: list[list] = [[] for _ in range(columns)]
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != columns:
                raise ValueError(f"{path.name} line {len(cols[0]) + 1} has {len(parts)} fields")
            for col, value in zip(cols, parts):
                col.append(value)
    cols[-1] = [int(x) for x in cols[-1]]
    return cols

