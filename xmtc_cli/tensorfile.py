"""Write safetensors files one tensor at a time, so saving never holds a second copy of them.

`safetensors.torch.save` serialises every tensor into one `bytes` object before anything reaches
the disk: saving a model and its Adam moments briefly needs twice their memory (19 GiB for the
13 GiB of an Amazon-670K step). This writer lays the file out itself — an 8-byte little-endian
header length, the JSON header (dtype, shape and byte range of every tensor, plus string
metadata), then each tensor's bytes in header order — and streams each tensor straight from its
memory (a GPU tensor is copied to the host alone, so the extra memory is the largest tensor).
The result is an ordinary safetensors file: `safetensors.safe_open` and `load_file` read it.

Every file carries a checksum in its metadata, `xmtc_sha256`: the SHA-256 of the whole file as
written, header and tensor bytes, with the checksum's own 64 hex digits read as zeros. It is
computed while the tensors stream out (no second pass at save) and written into the header's
reserved digits before the file is renamed into place. `verify_checksum` recomputes it on load,
so a tensor edited, two tensors swapped in the header, or a metadata value changed after xmtc
wrote the file are told apart from a file as written (it is a check against damage and edits,
not a signature: whoever edits a file can recompute it with `reseal`). It costs one read of
the file; SHA-256 runs at about 1-2 GB/s on a core with SHA extensions.

Files are written atomically (`xmtc_cli.atomic`): a failure leaves any previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch

from xmtc_cli.atomic import atomic_file

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_ALIGN = 8  # safetensors pads the header with spaces so that the data starts 8-byte aligned
CHECKSUM_KEY = "xmtc_sha256"
_ZEROS = "0" * 64  # the checksum's digits while it is computed
_CHUNK = 1 << 22
MAX_HEADER_BYTES = 100_000_000  # safetensors refuses larger headers


class ChecksumMismatch(Exception):
    """The file's bytes are not those its checksum was computed over."""


def write_safetensors(path, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (any device, any layout) and string `metadata` to `path` atomically."""
    header: dict[str, object] = {}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[CHECKSUM_KEY] = _ZEROS
    header["__metadata__"] = meta
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPES:
            raise TypeError(f"{name}: safetensors cannot store dtype {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % _ALIGN)
    digest = hashlib.sha256()
    head = len(raw).to_bytes(8, "little") + raw
    slot = _slot(head)
    with atomic_file(path, "wb") as f:
        f.write(head)
        digest.update(head)
        for tensor in tensors.values():
            chunk = _bytes_of(tensor)
            f.write(chunk)
            digest.update(chunk)
        f.seek(slot)
        f.write(digest.hexdigest().encode("ascii"))
        f.seek(0, os.SEEK_END)


def _slot(head: bytes) -> int:
    """Where the checksum's 64 digits start in the file's first bytes (8 + header)."""
    marker = f'"{CHECKSUM_KEY}":"'.encode()
    at = head.find(marker)
    if at < 0 or head.find(marker, at + 1) >= 0:
        raise ValueError("the header does not hold exactly one checksum")
    return at + len(marker)


def _head(f: BinaryIO) -> bytes:
    """The file's first 8 + n bytes: the header's length n (little-endian) and the header,
    read from the start of `f`. The length comes from the file, so it is bounded before the
    read (random bytes would ask for exabytes), by the file's size and safetensors' limit;
    ValueError where it cannot be a header length."""
    prefix = f.read(8)
    length = int.from_bytes(prefix, "little")
    if len(prefix) < 8 or length > min(os.fstat(f.fileno()).st_size - 8, MAX_HEADER_BYTES):
        raise ValueError("the file is cut short, or its first 8 bytes are no header length")
    return prefix + f.read(length)


def file_checksum(path: str | Path) -> tuple[str, str] | None:
    """(stored, computed) checksum of a file that xmtc wrote; None for a file without one
    (written before xmtc kept checksums). Raises OSError, or ValueError for a file that is no
    safetensors file at all."""
    with open(path, "rb") as f:
        head = bytearray(_head(f))
        header = json.loads(bytes(head[8:]))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("the header's __metadata__ is not a JSON object")
        stored = meta.get(CHECKSUM_KEY)
        if stored is None:
            return None
        try:
            slot = _slot(bytes(head))
        except ValueError:
            return str(stored), ""
        head[slot:slot + 64] = _ZEROS.encode("ascii")
        digest = hashlib.sha256(head)
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return str(stored), digest.hexdigest()


def verify_checksum(path: str | Path) -> bool:
    """Raise ChecksumMismatch where `path` is not the file xmtc wrote; False where the file has
    no checksum (an older xmtc wrote it), True where it matches."""
    sums = file_checksum(path)
    if sums is None:
        return False
    stored, computed = sums
    if stored != computed:
        raise ChecksumMismatch(path)
    return True


def reseal(path: str | Path) -> None:
    """Recompute the checksum of `path` in place (for tests that forge files, and for tools that
    edit a file on purpose)."""
    with open(path, "rb") as f:
        head = _head(f)
    slot = _slot(head)
    with open(path, "r+b") as f:
        f.seek(slot)
        f.write(_ZEROS.encode("ascii"))
    stored = file_checksum(path)
    assert stored is not None
    with open(path, "r+b") as f:
        f.seek(slot)
        f.write(stored[1].encode("ascii"))


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in row-major order, without a copy where it is a contiguous CPU one."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # (numel,)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())  # (numel * element_size,) bytes
