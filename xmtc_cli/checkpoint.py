"""The checkpoint file: the only code that knows its format.

A checkpoint is one safetensors file (no pickle, so loading one never runs code) holding the
model's weights and, in the header's string-to-string metadata, everything needed to rebuild the
model and apply it to raw text, so `xmtc predict model.safetensors docs.txt` needs nothing else:

    format            "xmtc-checkpoint", what tells our files from other safetensors files
    format_version    CHECKPOINT_FORMAT, as a decimal string
    package_version   the xmtc version that wrote the file
    recipe, sizes, tokens, tokenizer, labels, label_names, label_counts, extra
                      the `CheckpointMeta` fields, each as one JSON string (label_counts may be
                      absent in files of older versions)

Large vocabularies stay cheap: 500k tokens are one JSON string of a few MB, far below
safetensors' 100 MB header limit, and `read_meta` reads the header without touching the weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from xmtc_cli import __version__
from xmtc_cli.errors import CheckpointError
from xmtc_cli.tensorfile import write_safetensors

CHECKPOINT_FORMAT = 1
FORMAT_MARKER = "xmtc-checkpoint"
MAX_HEADER_BYTES = 100_000_000  # safetensors refuses larger headers
_JSON_FIELDS = ("recipe", "sizes", "tokens", "tokenizer", "labels", "label_names", "label_counts",
                "extra")
_OPTIONAL_FIELDS = ("label_counts",)  # absent in checkpoints written before they existed
_RETRAIN = "copy the file again if it was copied, or re-train it with `xmtc train`"
_NOT_SAFETENSORS = (
    "xmtc reads the model.safetensors files that `xmtc train` writes; PyTorch pickles "
    "(.pt, .bin) are refused because loading them can run arbitrary code"
)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its weights: how to rebuild the model and read its output.

    Every field is stored as JSON, so it must hold plain JSON values and comes back as such
    (a tuple returns as a list, an int dict key as a string).
    """

    recipe: dict[str, Any]
    """The resolved recipe (`Recipe.to_dict()`) the model was trained with."""
    sizes: dict[str, Any]
    """Sizes derived from the data that the model builder needs (vocab_size, num_labels,
    max_steps, embed_size, label_embed_size, ...)."""
    tokens: list[str]
    """The source vocabulary: token id k is `tokens[k]`."""
    tokenizer: dict[str, Any]
    """Settings that turn raw text into tokens exactly as in training."""
    labels: list[str]
    """The training labels' identifiers: corpus label id k is `labels[k]`."""
    label_names: list[str] | None = None
    """Readable label names aligned with `labels`, where the dataset has them."""
    label_counts: list[int] | None = None
    """Training documents carrying each label, aligned with `labels` (for propensity-scored
    metrics); None in checkpoints written before xmtc recorded them."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping beside the weights (epoch, validation metrics, ...)."""
    format_version: int = CHECKPOINT_FORMAT
    """The file format version; only `CHECKPOINT_FORMAT` is read."""
    package_version: str = __version__
    """The xmtc version that wrote the file."""


def save_checkpoint(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], meta: CheckpointMeta
) -> None:
    """Write weights and metadata to `path` atomically: a failed save leaves any old file intact.

    Tensors are streamed to a temporary file one at a time (no second copy of the weights in
    memory) and the file is renamed into place, so readers never see a half-written checkpoint.
    Tied weights are stored once per name, so loading fills each parameter from its own copy.
    """
    metadata = {
        "format": FORMAT_MARKER,
        "format_version": str(meta.format_version),
        "package_version": meta.package_version,
        **{name: json.dumps(getattr(meta, name), ensure_ascii=False) for name in _JSON_FIELDS},
    }
    write_safetensors(path, state_dict, metadata)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read a checkpoint's weights (onto `device`) and metadata; CheckpointError if unusable."""
    meta = read_meta(path)
    try:
        tensors = load_file(path, device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {exc}", _RETRAIN) from exc
    return tensors, meta


def read_meta(path: str | Path) -> CheckpointMeta:
    """Read a checkpoint's metadata from its header alone, without loading the weights."""
    metadata = _read_header(Path(path)).get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_MARKER:
        raise CheckpointError(
            f"{path} is a safetensors file but not an xmtc checkpoint (it has no xmtc metadata)",
            "pass a model.safetensors written by `xmtc train`",
        )
    version = metadata.get("format_version")
    written_by = metadata.get("package_version", "?")
    if version != str(CHECKPOINT_FORMAT):
        raise CheckpointError(
            f"checkpoint {path} has format version {version} (written by xmtc {written_by}); "
            f"this xmtc {__version__} reads format version {CHECKPOINT_FORMAT}",
            f"use xmtc {written_by} for this checkpoint, or re-train it with this version",
        )
    try:
        fields = {name: json.loads(metadata[name]) for name in _JSON_FIELDS
                  if name in metadata or name not in _OPTIONAL_FIELDS}
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has damaged metadata: {exc!r}", _RETRAIN) from exc
    return CheckpointMeta(**fields, format_version=CHECKPOINT_FORMAT, package_version=written_by)


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors header (8-byte little-endian length, then JSON), checked against the file.

    Refuses files of another kind and files cut short, each with its own message, where
    safetensors itself would give one message for all.
    """
    _check_is_file(path)
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            length = int.from_bytes(prefix, "little")
            # Text, pickles and zip archives read as an absurd length or a header that is no
            # JSON object; a plausible length with too few bytes after it is a file cut short.
            if len(prefix) < 8 or not 2 <= length <= MAX_HEADER_BYTES:
                raise CheckpointError(f"{path} is not a safetensors file", _NOT_SAFETENSORS)
            raw = f.read(length)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read: {exc.strerror}", "check the file's permissions"
        ) from exc
    if raw[:1] not in (b"{", b""):
        raise CheckpointError(f"{path} is not a safetensors file", _NOT_SAFETENSORS)
    if len(raw) < length:
        raise _truncated(path, 8 + length, size)
    try:
        header = json.loads(raw)
        end = _data_end(header)
    except (ValueError, LookupError, AttributeError, TypeError) as exc:  # bad JSON or layout
        raise CheckpointError(f"{path} is not a safetensors file", _NOT_SAFETENSORS) from exc
    if 8 + length + end > size:
        raise _truncated(path, 8 + length + end, size)
    return header


def _check_is_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist",
            "check the path; `xmtc train` writes model.safetensors into its run folder",
        )
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file",
            f"pass the checkpoint file inside it, e.g. {path / 'model.safetensors'}",
        )


def _data_end(header: dict[str, Any]) -> int:
    """Where the last tensor's bytes end, counted from the end of the header."""
    ends = (
        int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"
    )
    return max(ends, default=0)


def _truncated(path: Path, expected: int, size: int) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is truncated: its header describes {expected} bytes "
        f"but the file has {size}",
        _RETRAIN,
    )
