"""Side features: one precomputed embedding per document (an image's, another encoder's).

Beyond the paper, after ViXML (Ortego et al. 2025): a user who has, say, a pooled image
embedding for every item puts it beside the texts as `{split}_features.npy` (or
`.safetensors` with one tensor named "features"), float [documents, D], row k belonging to line
k of `{split}_texts.txt`. The model projects it to its own width and attends to it as one more
memory slot (docs/design.md §2). This module reads and checks such files; nothing here loads
pickles (`allow_pickle=False`), and a file is checked for shape and finiteness before use.

`read_features` reads a whole file (preprocess); `open_features` checks a file's shape without
reading its rows (a memory map, for .npy) and `checked_rows` reads and checks a range of them,
so that `xmtc predict` holds one batch's rows at a time.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from xmtc_cli.errors import DataError
from xmtc_cli.fileerrors import file_error

SUFFIXES = (".npy", ".safetensors")
MAX_WIDTH = 65_536  # a bound on D: a header claiming more is not an embedding
NPY_MAGIC = b"\x93NUMPY"  # how every .npy file starts


def features_file(folder: Path, split: str) -> Path | None:
    """`{split}_features.npy` or `.safetensors` in `folder`, if there is one (not both)."""
    found = [folder / f"{split}_features{suffix}" for suffix in SUFFIXES]
    found = [path for path in found if path.exists()]
    if len(found) > 1:
        raise DataError(f"{folder} has both {found[0].name} and {found[1].name}",
                        "keep one features file per split")
    return found[0] if found else None


def corpus_feature_files(folder: Path, texts: Collection[str]) -> dict[str, Path]:
    """split -> its side-features file in the corpus `folder`, for every split with texts
    (`texts`: the splits preprocess reads), or {} without any; refused before anything is read
    unless every such split has one."""
    splits = [split for split in ("train", "valid", "test") if split in texts]
    found = {split: features_file(folder, split) for split in splits}
    found = {split: path for split, path in found.items() if path is not None}
    stray = features_file(folder, "valid") if "valid" not in texts else None
    if stray is not None:
        raise DataError(
            f"{stray} gives features of a validation split, but {folder} has no "
            "validation texts: validation is held out of the training file",
            f"remove {stray.name}; the held-out documents take their rows of the training "
            "split's features",
        )
    if not found:
        return {}
    missing = [split for split in splits if split not in found]
    if missing:
        have, lack = next(iter(found)), missing[0]
        wanted = folder / f"{lack}_features.npy"
        raise DataError(
            f"{found[have]} gives side features, but {wanted} (or .safetensors) is missing",
            f"give every split ({', '.join(splits)}) a {{split}}_features file of one row per "
            "document, or remove them all",
        )
    return found


def read_features(path: str | Path, documents: int | None = None,
                  width: int | None = None) -> np.ndarray:
    """Read a features file as float32 [documents, D], checking it against what is expected.

    `documents`: the rows the file must have (the split's documents, the lines of DOCS);
    `width`: the D it must have (a checkpoint's). Errors name the file and the fix.
    """
    return checked_rows(open_features(path, documents, width), path)


def open_features(path: str | Path, documents: int | None = None,
                  width: int | None = None) -> np.ndarray:
    """A features file's array [rows, D], its shape and type checked as `read_features` checks
    them, its values not read: a read-only memory map for .npy (safetensors are read whole).
    Read rows with `checked_rows`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"features file {path} does not exist",
                        "pass a .npy or .safetensors file of shape [documents, D]")
    if not path.is_file():  # a folder; a pipe or a device cannot be memory-mapped
        kind = "folder" if path.is_dir() else "pipe or a device"
        raise DataError(f"features file {path} is a {kind}, not a file",
                        "save the features to a .npy or .safetensors file")
    array = _load(path)
    if array.ndim != 2:
        raise DataError(f"{path} holds an array of shape {tuple(array.shape)}, not "
                        "[documents, D]", "save one row per document, e.g. np.save(f, X)")
    if not 1 <= array.shape[1] <= MAX_WIDTH:
        raise DataError(f"{path}: a feature width of {array.shape[1]} is out of range",
                        f"rows of 1 to {MAX_WIDTH:,} numbers")
    if documents is not None and array.shape[0] != documents:
        raise DataError(f"{path} has {array.shape[0]:,} rows for {documents:,} documents",
                        "write one row per document, in the documents' order")
    if width is not None and array.shape[1] != width:
        raise DataError(f"{path} has features of width {array.shape[1]}, the model was "
                        f"trained with {width}", "compute the features as for training")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype,
                                                                          np.integer):
        raise DataError(f"{path} holds {array.dtype} values, not numbers",
                        "save a float array")
    return array


def checked_rows(array: np.ndarray, path: str | Path, start: int = 0,
                 stop: int | None = None) -> np.ndarray:
    """Rows start..stop of an `open_features` array as float32 [rows, D], refused (naming the
    first bad row, counted from 1 over the whole file) if any holds nan or inf."""
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused below
        out = np.asarray(array[start:stop], dtype=np.float32)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        row = start + int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {row + 1} (document {row + 1}) holds nan or inf (or "
                        "a number beyond float32's range)",
                        "replace missing features, e.g. by zeros")
    return out


def _load(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
            if set(tensors) != {"features"}:
                raise DataError(f"{path} holds {sorted(tensors)[:3]}, not one tensor named "
                                "'features'", "save {'features': X} with safetensors")
            return tensors["features"]
        with open(path, "rb") as f:  # numpy reads what is not .npy as a pickle (then refuses)
            magic = f.read(len(NPY_MAGIC))
        if magic != NPY_MAGIC:
            kind = " (a zip archive: .npz?)" if magic.startswith(b"PK") else ""
            raise DataError(f"{path} is not a .npy file{kind}: it does not start as one",
                            "save one array with numpy.save, or a .safetensors file holding "
                            "one tensor named 'features'")
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except DataError:
        raise
    except OSError as exc:  # permission denied, an I/O error: the file, not its content
        if exc.errno is None:
            raise DataError(f"{path} is not a readable .npy array ({exc})"[:300],
                            "save the features with numpy.save") from exc
        raise file_error(exc, "read", path) from None
    except (ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npy or .safetensors array ({exc})"[:300],
                        "save the features with numpy.save (no pickled objects)") from exc
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise DataError(f"{path} is not a readable safetensors file ({exc})"[:300],
                        "save the features with safetensors.numpy.save_file") from exc
