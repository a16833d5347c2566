"""Checkpoint files: exact round trips, header-only reads, and every broken file refused."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import xmtc_cli.atomic
from xmtc_cli import __version__, checkpoint, tensorfile
from xmtc_cli.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointMeta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from xmtc_cli.errors import CheckpointError


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(7, 5, generator=generator)
    return {
        "embedding.weight": embedding,
        "output.weight": embedding,  # tied: the same tensor under two names
        "encoder.weight": torch.randn(5, 3, generator=generator).t(),  # not contiguous
        "decoder.bias": torch.randn(4, generator=generator).to(torch.bfloat16),
        "steps": torch.tensor([3, -1], dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }


def _meta(**changes) -> CheckpointMeta:
    fields = {
        "recipe": {"model": {"hidden_size": 8, "conv_kernels": [3, 7]}, "name": "tiny"},
        "sizes": {"vocab_size": 4, "num_labels": 3, "max_steps": 2, "embed_size": 5},
        "tokens": ["<pad>", "<unk>", "naïve", "日本"],
        "tokenizer": {"lowercase": True},
        "labels": ["l0", "l1", "l2"],
        "label_names": ["zero", "one", "two"],
        "extra": {"epoch": 2, "valid": {"micro_f1": 0.25}},
    }
    return CheckpointMeta(**{**fields, **changes})


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, _state(), _meta())
    return path


def test_round_trip_is_exact(saved):
    tensors, meta = load_checkpoint(saved)
    assert meta == _meta()
    assert meta.format_version == CHECKPOINT_FORMAT and meta.package_version == __version__
    want = _state()
    assert tensors.keys() == want.keys()
    for name, tensor in want.items():
        assert tensors[name].dtype == tensor.dtype and tensors[name].shape == tensor.shape, name
        # Compare bytes, not values: bit-identical, whatever the dtype.
        assert (
            tensors[name]
            .contiguous()
            .view(torch.uint8)
            .equal(tensor.contiguous().view(torch.uint8))
        ), name


def test_tied_weights_load_as_separate_equal_tensors(saved):
    tensors, _ = load_checkpoint(saved)
    assert tensors["output.weight"].equal(tensors["embedding.weight"])
    tensors["output.weight"].add_(1)
    assert not tensors["output.weight"].equal(tensors["embedding.weight"])


def test_optional_fields_round_trip(tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, _meta(label_names=None, extra={}))
    assert read_meta(path) == _meta(label_names=None, extra={})


def test_read_meta_reads_no_weights(saved, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("read_meta loaded the weights")

    monkeypatch.setattr(checkpoint, "load_file", no_weights)
    assert read_meta(saved) == _meta()


def _refused(path, *fragments: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        read_meta(path)
    error = info.value
    assert str(path) in error.message and error.hint
    for fragment in fragments:
        assert fragment in error.message
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    return error


def test_missing_file_and_folder_are_refused(tmp_path):
    _refused(tmp_path / "nope.safetensors", "does not exist")
    _refused(tmp_path, "is a folder")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"short",
        b"hello, this is a text file\n" * 4,
        b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
        b'\x08\x00\x00\x00\x00\x00\x00\x00{"w": 1}',
        b"\x00\x01\x00\x00\x00\x00\x00\x00binary",  # a plausible length, then no JSON
    ],
    ids=["empty", "short", "text", "json-list", "bad-layout", "binary"],
)
def test_files_of_another_kind_are_refused(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    _refused(path, "not a safetensors file")


def test_a_pickle_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_state(), path)
    _refused(path, "not a safetensors file")


@pytest.mark.parametrize("cut", [1, 100, "into-header"])
def test_truncated_files_are_refused(saved, cut):
    data = saved.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    keep = header_end // 2 if cut == "into-header" else len(data) - cut
    saved.write_bytes(data[:keep])
    _refused(saved, "truncated", f"the file has {keep}")


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}], ids=["none", "foreign"])
def test_safetensors_without_xmtc_metadata_is_refused(tmp_path, metadata):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2)}, path, metadata=metadata)
    _refused(path, "not an xmtc checkpoint")


def _rewrite_metadata(path, **changes: str) -> None:
    """Replace `path` by a safetensors file whose xmtc metadata has `changes` applied."""
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    save_file({"w": torch.ones(2)}, path, metadata={**metadata, **changes})


def test_another_format_version_is_refused(saved):
    _rewrite_metadata(saved, format_version="2", package_version="9.0.0")
    error = _refused(saved, "format version 2", "xmtc 9.0.0", f"format version {CHECKPOINT_FORMAT}")
    assert "9.0.0" in error.hint


def test_damaged_metadata_is_refused(saved):
    _rewrite_metadata(saved, tokens='["<pad>", "<un')
    _refused(saved, "damaged metadata")


def _assert_only_old_checkpoint(path) -> None:
    tensors, meta = load_checkpoint(path)
    assert meta == _meta() and tensors["steps"].tolist() == [3, -1]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_failure_midway_through_the_tensors_leaves_the_old_checkpoint(saved, monkeypatch):
    original, written = tensorfile._bytes_of, []

    def fails_on_the_second(tensor):
        if written:
            raise RuntimeError("out of memory")
        written.append(tensor)
        return original(tensor)

    monkeypatch.setattr(tensorfile, "_bytes_of", fails_on_the_second)
    with pytest.raises(RuntimeError):
        save_checkpoint(saved, {"w": torch.ones(2), "v": torch.ones(3)}, _meta(labels=["new"]))
    assert len(written) == 1  # the first tensor was already in the temporary file
    _assert_only_old_checkpoint(saved)


def test_a_failing_write_leaves_the_old_checkpoint(saved, monkeypatch):
    # The new bytes are already in the temporary file when syncing it to disk fails.
    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xmtc_cli.atomic.os, "fsync", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(saved, {"w": torch.ones(2)}, _meta(labels=["new"]))
    monkeypatch.undo()
    _assert_only_old_checkpoint(saved)


def test_metadata_that_is_not_json_is_refused_before_writing(tmp_path):
    path = tmp_path / "model.safetensors"
    with pytest.raises(TypeError):
        save_checkpoint(path, {"w": torch.ones(2)}, _meta(extra={"when": object()}))
    assert list(tmp_path.iterdir()) == []
