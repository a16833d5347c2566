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

A checkpoint is untrusted data. `read_meta` (and so `load_checkpoint` and `load_model`) reads
the metadata into typed objects once, checking it before anything is allocated from it: field
types, sizes against the vocabularies, the decoding steps against MAX_DECODE_STEPS, the recipe
through the recipe validator (`_typed_meta`), and the name, shape and dtype of every tensor in
the header against the model that recipe and sizes describe (`check_meta`, on the meta device,
which allocates nothing). So no size a file claims can make xmtc allocate more than the file
holds, or decode for ever; and `load_model` fills that same checked model with the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from xmtc_cli import __version__
from xmtc_cli.config import MAX_DECODE_STEPS, Recipe, recipe_from_dict
from xmtc_cli.data.features import MAX_WIDTH as MAX_FEATURE_WIDTH
from xmtc_cli.data.tokenize import TOKENIZER_KINDS
from xmtc_cli.errors import CheckpointError, ConfigError, cut
from xmtc_cli.fileerrors import resolved
from xmtc_cli.lexical import PREFIX as LEXICAL_PREFIX
from xmtc_cli.lexical import TENSOR_DTYPES, LexicalIndex, scoring_options, spec_problem
from xmtc_cli.model import ModelSizes, Seq2SetModel, build_model, on_meta_device
from xmtc_cli.recipefile import MAX_INT
from xmtc_cli.tensorfile import (
    DTYPES,
    MAX_HEADER_BYTES,
    ChecksumMismatch,
    verify_checksum,
    write_safetensors,
)

CHECKPOINT_FORMAT = 1
FORMAT_MARKER = "xmtc-checkpoint"
_JSON_FIELDS = ("recipe", "sizes", "tokens", "tokenizer", "labels", "label_names", "label_counts",
                "extra")
_OPTIONAL_FIELDS = ("label_counts",)  # absent in checkpoints written before they existed
_RENAMED_SIZES = {"max_steps": "decode_steps"}
"""Size names older files use -> today's: the decoding steps were `max_steps` until the recipe's
train.max_steps (optimiser steps) took that name."""
_RETRAIN = "copy the file again if it was copied, or re-train it with `xmtc train`"
_NOT_SAFETENSORS = (
    "xmtc reads the model.safetensors files that `xmtc train` writes; PyTorch pickles "
    "(.pt, .bin) are refused because loading them can run arbitrary code"
)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its weights: how to rebuild the model and read its output.

    Every field is stored as JSON: the recipe and sizes as their dicts, read back typed and
    checked (`read_meta`); the others must hold plain JSON values and come back as such (a tuple
    returns as a list, an int dict key as a string).
    """

    recipe: Recipe
    """The resolved recipe the model was trained with."""
    sizes: ModelSizes
    """Sizes derived from the data that the model builder needs. In the file, a size it lacks
    takes `ModelSizes`' default (feature_size 0: no side features), and one under an older name
    (`_RENAMED_SIZES`) reads as today's."""
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
        **{name: json.dumps(_as_json(getattr(meta, name)), ensure_ascii=False)
           for name in _JSON_FIELDS},
    }
    write_safetensors(path, state_dict, metadata)


def _as_json(value: Any) -> Any:
    """A field as the JSON it is stored as: the recipe and the sizes as their dicts."""
    if isinstance(value, Recipe):
        return value.to_dict()
    if isinstance(value, ModelSizes):
        return dataclasses.asdict(value)
    return value


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read a checkpoint's weights (onto `device`) and metadata; CheckpointError if unusable,
    or if its checksum says it was changed after xmtc wrote it (`verify`)."""
    meta = read_meta(path)
    verify(path)
    try:
        tensors = load_file(path, device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {exc}", _RETRAIN) from exc
    return tensors, meta


def verify(path: str | Path) -> None:
    """Refuse a checkpoint whose bytes are not those xmtc wrote (`tensorfile` checksums);
    a file written before checksums existed passes."""
    try:
        verify_checksum(path)
    except ChecksumMismatch:
        raise CheckpointError(
            f"checkpoint {path} was changed after xmtc wrote it: its checksum does not match "
            "its tensors and metadata", _RETRAIN) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {cut(str(exc), 80)}",
                              _RETRAIN) from None


def load_model(path: str | Path,
               device: str | torch.device = "cpu") -> tuple[Seq2SetModel, CheckpointMeta]:
    """The model a checkpoint holds, with its weights on `device`, and its metadata: the file
    is read and checked once, and the model checked against its tensors is the one returned."""
    meta, model = _read_checked(path)
    verify(path)
    try:
        tensors = load_file(path, device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {exc}", _RETRAIN) from exc
    # Built on the meta device the model holds no weights, and the file's tensors become its
    # parameters (assign=True): loading holds one copy of the weights, not a random model's as
    # well. Safe because the model ties no weights and has no buffers outside its state dict
    # (tests/test_output_layer.py checks both). The lexical index is not the model's.
    model.load_state_dict({k: v for k, v in tensors.items() if not _is_lexical(k)}, assign=True)
    return model.to(device), meta


def load_lexical_index(path: str | Path, meta: CheckpointMeta) -> LexicalIndex | None:
    """The lexical index (`xmtc_cli.lexical.LexicalIndex`) of a checkpoint whose recipe has one
    (model.lexical), read from its lexical.* tensors alone; None for one without."""
    model = meta.recipe.model
    if model.lexical == "none":
        return None
    try:
        with safe_open(str(path), "pt") as f:
            tensors = {LEXICAL_PREFIX + n: f.get_tensor(LEXICAL_PREFIX + n)
                       for n in TENSOR_DTYPES}
        index = LexicalIndex.from_tensors(tensors, **scoring_options(model))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged: {exc}", _RETRAIN) from exc
    except ValueError as exc:  # read_meta checked names, dtypes and shapes; this, the values
        raise CheckpointError(f"checkpoint {path} holds a damaged lexical index: {exc}",
                              _RETRAIN) from None
    return index.with_num_labels(meta.sizes.num_labels)


def read_meta(path: str | Path) -> CheckpointMeta:
    """Read a checkpoint's metadata from its header alone, without loading the weights, and
    check it against the tensors the header lists (`check_meta`)."""
    return _read_checked(path)[0]


def _read_checked(path: str | Path) -> tuple[CheckpointMeta, Seq2SetModel]:
    """The typed, checked metadata and the model it describes, on the meta device."""
    header = _read_header(Path(path))
    meta = _typed_meta(_parse_meta(path, header.get("__metadata__")), path)
    return meta, check_meta(meta, _tensor_specs(path, header), path)


def _parse_meta(path: str | Path, metadata: Any) -> dict[str, Any]:
    """The metadata's fields as JSON values, read from a file of our format and version."""
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
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        what = "is nested too deeply" if isinstance(exc, RecursionError) else cut(repr(exc))
        raise CheckpointError(f"checkpoint {path} has damaged metadata: {what}", _RETRAIN) from exc
    return {**fields, "package_version": cut(str(written_by))}


# --- what the metadata may claim --------------------------------------------------------------

TensorSpec = tuple[str, tuple[int, ...]]
"""A tensor as the safetensors header lists it: dtype name ("F32", ...) and shape."""


def check_meta(meta: CheckpointMeta, tensors: Mapping[str, TensorSpec],
               path: str | Path = "checkpoint") -> Seq2SetModel:
    """Refuse metadata that cannot describe `tensors` (name -> dtype and shape, as listed in the
    header): they must be exactly the model its recipe and sizes describe, the same names and
    shapes (so the token embedding has vocab_size rows and the output layer num_labels + 3), all
    float32; and the lexical index and its weight where the recipe has one (`_check_lexical`).
    Returns that model, built on the meta device (nothing allocated)."""
    refuse = _refuser(path)
    _check_lexical(meta, tensors, refuse)
    return _check_tensors(meta.recipe, meta.sizes,
                          {n: s for n, s in tensors.items() if not _is_lexical(n)}, refuse)


def _is_lexical(name: str) -> bool:
    return name.startswith(LEXICAL_PREFIX)


def _check_lexical(meta: CheckpointMeta, tensors: Mapping[str, TensorSpec], refuse) -> None:
    """The lexical index (lexical.* tensors) and its fusion weight (extra.lexical_weight) are
    there exactly when the recipe's model.lexical is on, with the shapes of an index over the
    model's vocabulary (`xmtc_cli.lexical.spec_problem`); its values are checked on loading."""
    wanted = meta.recipe.model.lexical != "none"
    specs = {n: s for n, s in tensors.items() if _is_lexical(n)}
    if not wanted and not specs:
        return
    problem = spec_problem(specs, meta.sizes.vocab_size, wanted)
    if problem:
        raise refuse(problem)
    weight = meta.extra.get("lexical_weight", 0.0)
    if (isinstance(weight, bool) or not isinstance(weight, (int, float))
            or not math.isfinite(weight) or weight < 0):
        raise refuse(f"has damaged metadata: extra.lexical_weight is {_short_json(weight)}, not "
                     "a number >= 0")


def _typed_meta(raw: dict[str, Any], path: str | Path) -> CheckpointMeta:
    """The metadata's JSON fields checked and typed, before anything is built from them.

    Checks, in order: the type of every field; the sizes (vocab_size == len(tokens),
    num_labels == len(labels) == len(label_names) == len(label_counts), 1 <= decode_steps <=
    MAX_DECODE_STEPS, feature_size <= the features reader's MAX_WIDTH, 0 in checkpoints older
    than side features); the tokenizer settings; the recipe (it must validate).
    """
    refuse = _refuser(path)
    meta = CheckpointMeta(**raw)  # JSON values for now; typed on return
    for name, kind in (("recipe", dict), ("sizes", dict), ("tokens", list),
                       ("tokenizer", dict), ("labels", list), ("extra", dict)):
        if not isinstance(getattr(meta, name), kind):
            raise refuse(f"has damaged metadata: {name} is not a JSON "
                         f"{'object' if kind is dict else 'array'}")
    for name in ("label_names", "label_counts"):
        if getattr(meta, name) is not None and not isinstance(getattr(meta, name), list):
            raise refuse(f"has damaged metadata: {name} is not a JSON array")
    sizes = _check_sizes(meta.sizes, refuse)
    lengths = [("tokens", meta.tokens, sizes.vocab_size, "vocab_size"),
               ("labels", meta.labels, sizes.num_labels, "num_labels"),
               ("label_names", meta.label_names, sizes.num_labels, "num_labels"),
               ("label_counts", meta.label_counts, sizes.num_labels, "num_labels")]
    for name, values, size, size_name in lengths:
        if values is not None and len(values) != size:
            raise refuse(f"is inconsistent: it lists {len(values):,} {name} but its sizes say "
                         f"{size_name} = {size:,}")
    for name in ("tokens", "labels", "label_names"):
        values = getattr(meta, name) or []
        if not all(isinstance(v, str) for v in values):
            raise refuse(f"has damaged metadata: {name} holds a value that is not a string")
    for name in ("tokens", "labels"):
        values = getattr(meta, name)
        # A token is whitespace-free (tokenizers split on it); a label may hold spaces but no
        # tab or line break (they separate labels and documents in xmtc's files and outputs).
        bad = next((v for v in values if not v or (
            v.split() != [v] if name == "tokens" else any(c in v for c in "\t\n\r"))), None)
        if bad is not None:
            raise refuse(f"has damaged metadata: {name} holds {_short_json(bad)}, which is "
                         "empty or holds a " + ("space, " if name == "tokens" else "")
                         + "tab or line break")
        if len(set(values)) != len(values):
            seen: set[str] = set()
            twice = next(v for v in values if v in seen or seen.add(v))
            raise refuse(f"has damaged metadata: {name} holds {_short_json(twice)} twice")
    if meta.label_names is not None and any("\n" in n or "\r" in n for n in meta.label_names):
        raise refuse("has damaged metadata: label_names holds a line break")
    if meta.label_counts is not None and not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in meta.label_counts):
        raise refuse("has damaged metadata: label_counts holds a value that is not a count")
    kind, lowercase = meta.tokenizer.get("kind"), meta.tokenizer.get("lowercase", False)
    if kind not in TOKENIZER_KINDS or not isinstance(lowercase, bool):
        raise refuse(f"has unknown tokenizer settings {_short_json(meta.tokenizer)} "
                     f"(kinds: {', '.join(TOKENIZER_KINDS)})")
    try:
        recipe = recipe_from_dict(meta.recipe, source="its recipe")
    except ConfigError as exc:
        raise refuse(f"holds a recipe that does not validate: {exc.message}") from None
    return dataclasses.replace(meta, recipe=recipe, sizes=sizes)


def _refuser(path: str | Path):
    """The CheckpointError for a problem with the file at `path`."""
    return lambda problem: CheckpointError(f"checkpoint {path} {problem}", _RETRAIN)


def _check_sizes(raw: dict[str, Any], refuse) -> ModelSizes:
    raw = {_RENAMED_SIZES[k] if k in _RENAMED_SIZES and _RENAMED_SIZES[k] not in raw else k: v
           for k, v in raw.items()}
    fields = {f.name: f for f in dataclasses.fields(ModelSizes)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise refuse(f"has unknown sizes: {cut(', '.join(map(str, unknown)))}")
    missing = [name for name, f in fields.items()
               if name not in raw and f.default is dataclasses.MISSING]
    if missing:
        raise refuse(f"has damaged metadata: sizes lacks {', '.join(missing)}")
    for name, value in raw.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
            raise refuse(f"has damaged metadata: sizes.{name} is {_short_json(value)}, not a "
                         "count")
    sizes = ModelSizes(**raw)
    if not 1 <= sizes.decode_steps <= MAX_DECODE_STEPS:
        raise refuse(f"claims {sizes.decode_steps:,} decoding steps (sizes.decode_steps); xmtc "
                     f"decodes at most {MAX_DECODE_STEPS:,}")
    if sizes.feature_size > MAX_FEATURE_WIDTH:
        raise refuse(f"claims side features of width {sizes.feature_size:,} "
                     f"(sizes.feature_size); xmtc reads at most {MAX_FEATURE_WIDTH:,}")
    if sizes.vocab_size < 2:  # <pad> and <unk> are always there
        raise refuse(f"claims a vocabulary of {sizes.vocab_size} tokens; every vocabulary holds "
                     "<pad> and <unk>")
    return sizes


def _check_tensors(recipe: Recipe, sizes: ModelSizes, tensors: Mapping[str, TensorSpec],
                   refuse) -> Seq2SetModel:
    """The header's tensors are those of the model `recipe` and `sizes` build, all float32;
    returns that model, on the meta device."""
    try:
        with on_meta_device():  # shapes only: nothing is allocated
            model = build_model(recipe.model, recipe.loss, sizes)
    except Exception as exc:  # sizes no model can have (a tensor beyond int64 elements, ...)
        raise refuse(f"describes a model that cannot be built ({cut(str(exc), 80)})") from None
    expected = {name: (DTYPES[t.dtype], tuple(t.shape))
                for name, t in model.state_dict().items()}
    missing = [name for name in expected if name not in tensors]
    extra = [name for name in tensors if name not in expected]
    if missing or extra:
        parts = ([f"lacks {_names(missing)}"] if missing else []) + (
            [f"has tensors the model does not: {_names(extra)}"] if extra else [])
        raise refuse("does not hold the model its metadata describes: it " + "; it ".join(parts))
    for name, (dtype, shape) in expected.items():
        got_dtype, got_shape = tensors[name]
        if got_shape != shape:
            raise refuse(f"does not hold the model its metadata describes: tensor {name} has "
                         f"shape {list(got_shape)}, the model {list(shape)}")
        if got_dtype != dtype:
            raise refuse(f"stores tensor {name} as {cut(got_dtype)}; xmtc checkpoints store "
                         f"{dtype}")
    return model


def _tensor_specs(path: str | Path, header: dict[str, Any]) -> dict[str, TensorSpec]:
    """The dtype and shape of every tensor in a header, each checked against its byte range."""
    specs = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = entry.get("dtype"), entry.get("shape")
        begin, end = entry["data_offsets"]
        size = _ITEM_SIZES.get(dtype)
        if (size is None or not isinstance(shape, list)
                or not all(isinstance(d, int) and d >= 0 for d in shape)):
            raise CheckpointError(f"{path} is not a safetensors file", _NOT_SAFETENSORS)
        if math.prod(shape) * size != end - begin:
            raise CheckpointError(
                f"checkpoint {path} is damaged: tensor {cut(name)} has shape {cut(str(shape))} "
                f"but {end - begin:,} bytes", _RETRAIN)
        specs[name] = (dtype, tuple(shape))
    return specs


_ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(cut(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _short_json(value: Any) -> str:
    try:
        return cut(json.dumps(value))
    except (TypeError, ValueError, RecursionError):
        return f"<{type(value).__name__}>"



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
    except (ValueError, LookupError, AttributeError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not a safetensors file", _NOT_SAFETENSORS) from exc
    if 8 + length + end > size:
        raise _truncated(path, 8 + length + end, size)
    return header


def _check_is_file(path: Path) -> None:
    try:  # pathlib's checks raise for a name too long, a permission on the way, ...
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror or exc}",
                              "check the path and its permissions") from exc
    if not exists:
        raise CheckpointError(
            f"checkpoint {path} does not exist{resolved(path)}",
            "check the path; `xmtc train` writes model.safetensors into its run folder",
        )
    if is_dir:
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file",
            f"pass the checkpoint file inside it, e.g. {path / 'model.safetensors'}",
        )
    if not path.is_file():  # a FIFO would block, a device never end: neither is a checkpoint
        raise CheckpointError(
            f"checkpoint {path} is not a regular file (a FIFO, a socket or a device)",
            "pass the model.safetensors file itself: a checkpoint is read in place, not streamed",
        )


def _data_end(header: dict[str, Any]) -> int:
    """Where the last tensor's bytes end, counted from the end of the header; ValueError for
    byte ranges that are not two ordered non-negative integers."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, stop = entry["data_offsets"]
        if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop):
            raise ValueError(f"bad data_offsets for {name}")
        end = max(end, stop)
    return end


def _truncated(path: Path, expected: int, size: int) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is truncated: its header describes {expected} bytes "
        f"but the file has {size}",
        _RETRAIN,
    )
