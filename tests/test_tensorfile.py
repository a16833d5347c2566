"""The streaming safetensors writer: files that safetensors itself reads back exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from xmtc_cli import tensorfile
from xmtc_cli.tensorfile import DTYPES, write_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    out = {f"t.{dtype}".replace("torch.", ""): (base * 10).to(dtype) for dtype in DTYPES}
    out["transposed"] = base.t()  # not contiguous
    out["sliced"] = base[::2, 1:3]  # strided view of a larger storage
    out["tied"] = base  # the same storage as `transposed`
    out["empty"] = torch.zeros(0, 3)
    out["scalar"] = torch.tensor(7.5)
    return out


def test_safetensors_reads_back_every_dtype_layout_and_the_metadata(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, _tensors(), {"format": "x", "n": "3"})
    got = load_file(path)
    want = _tensors()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        assert len(metadata.pop(tensorfile.CHECKSUM_KEY)) == 64  # tests/test_trust.py
        assert metadata == {"format": "x", "n": "3"}


def test_the_layout_is_the_one_safetensors_writes(tmp_path):
    """Same header entries and data bytes as safetensors' own serialiser (order aside)."""
    tensors = {"b": torch.arange(5, dtype=torch.int32), "a": torch.ones(2, 2)}
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors)
    ours, theirs = path.read_bytes(), save(tensors)

    def parts(raw: bytes) -> tuple[dict, dict]:
        length = int.from_bytes(raw[:8], "little")
        assert (8 + length) % 8 == 0  # data starts aligned
        header = json.loads(raw[8 : 8 + length])
        header.pop("__metadata__", None)  # ours always holds the checksum
        data = {k: raw[8 + length + v["data_offsets"][0] : 8 + length + v["data_offsets"][1]]
                for k, v in header.items()}
        return {k: (v["dtype"], v["shape"]) for k, v in header.items()}, data

    assert parts(ours) == parts(theirs)


def test_an_unstorable_dtype_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="complex"):
        write_safetensors(tmp_path / "t.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("head", [
    (2 ** 64 - 1).to_bytes(8, "little"),  # a length no file holds (OverflowError in read)
    (2 ** 40).to_bytes(8, "little"),  # a terabyte: MemoryError if read as asked
    (200).to_bytes(8, "little"),  # longer than the file
    (4).to_bytes(8, "little") + b"[1] " + b"\0" * 16,  # JSON, but not an object
    (30).to_bytes(8, "little") + b'{"__metadata__": [1, 2, 3]}   ' + b"\0" * 16,
])
def test_a_header_length_or_header_from_a_damaged_file_is_a_value_error(tmp_path, head):
    """The checksum reader takes the header's length from the file itself: whatever the first
    bytes say, it answers ValueError (reported as a damaged file), never a read of that size."""
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(head + b"\0" * 64)
    with pytest.raises(ValueError):
        tensorfile.verify_checksum(path)


def test_random_bytes_are_a_value_error_for_the_checksum_reader(tmp_path):
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "random.safetensors"
    for _ in range(50):
        path.write_bytes(bytes(torch.randint(0, 256, (5000,), generator=generator).tolist()))
        with pytest.raises(ValueError):
            tensorfile.verify_checksum(path)
