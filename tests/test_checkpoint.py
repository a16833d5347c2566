"""Checkpoint files: exact round trips, header-only reads, and every broken file refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import xmtc_cli.atomic
from xmtc_cli import __version__, checkpoint, tensorfile
from xmtc_cli.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointMeta,
    check_meta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from xmtc_cli.config import recipe_from_dict
from xmtc_cli.errors import CheckpointError
from xmtc_cli.model import ModelSizes, build_model

_RECIPE = recipe_from_dict({
    "name": "tiny", "data": {"dir": "d", "max_src_tokens": 10, "max_labels": 2},
    "model": {"hidden_size": 4, "encoder_layers": 1, "conv_kernels": [3, 7]},
}).to_dict()
_SIZES = {"vocab_size": 4, "num_labels": 3, "decode_steps": 2, "embed_size": 5,
          "label_embed_size": 6}


def _model():
    recipe = recipe_from_dict(_RECIPE)
    torch.manual_seed(0)
    return build_model(recipe.model, recipe.loss, ModelSizes(**_SIZES))


def _state() -> dict[str, torch.Tensor]:
    """A real (tiny) model's weights, with the layouts the writer must handle."""
    state = _model().state_dict()
    # Tied: the same tensor under two names (the shapes agree).
    state["encoder.rnn.weight_ih_l0_reverse"] = state["encoder.rnn.weight_ih_l0"]
    # Not contiguous: the same values through a transposed view.
    state["attention.U.weight"] = state["attention.U.weight"].t().contiguous().t()
    return state


def _meta(**changes) -> CheckpointMeta:
    """The tiny model's metadata; a change may be plain JSON (recipe and sizes as dicts), which
    `save_checkpoint` writes as it is, to make a file with damaged metadata."""
    fields = {
        "recipe": recipe_from_dict(_RECIPE),
        "sizes": ModelSizes(**_SIZES),
        "tokens": ["<pad>", "<unk>", "naïve", "日本"],
        "tokenizer": {"kind": "whitespace", "lowercase": True},
        "labels": ["l0", "l1", "l2"],
        "label_names": ["zero", "one", "two"],
        "label_counts": [5, 0, 2],
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
    forward, reverse = "encoder.rnn.weight_ih_l0", "encoder.rnn.weight_ih_l0_reverse"
    assert tensors[reverse].equal(tensors[forward])
    tensors[reverse].add_(1)
    assert not tensors[reverse].equal(tensors[forward])


def test_optional_fields_round_trip(tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, _state(), _meta(label_names=None, label_counts=None, extra={}))
    assert read_meta(path) == _meta(label_names=None, label_counts=None, extra={})


def test_a_checkpoint_that_names_the_decoding_steps_max_steps_still_loads(tmp_path):
    # Files written before the rename call sizes.decode_steps max_steps.
    old = {k: v for k, v in _SIZES.items() if k != "decode_steps"} | {"max_steps": 2}
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, _state(), _meta(sizes=old))
    tensors, meta = load_checkpoint(path)
    assert meta == _meta() and tensors.keys() == _state().keys()
    save_checkpoint(path, _state(), _meta(sizes={**old, "max_steps": 10_000_000}))
    _refused(path, "claims 10,000,000 decoding steps")


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
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    save_file(tensors, path, metadata={**metadata, **changes})


def test_another_format_version_is_refused(saved):
    _rewrite_metadata(saved, format_version="2", package_version="9.0.0")
    error = _refused(saved, "format version 2", "xmtc 9.0.0", f"format version {CHECKPOINT_FORMAT}")
    assert "9.0.0" in error.hint


def test_damaged_metadata_is_refused(saved):
    _rewrite_metadata(saved, tokens='["<pad>", "<un')
    _refused(saved, "damaged metadata")


def _assert_only_old_checkpoint(path) -> None:
    tensors, meta = load_checkpoint(path)
    assert meta == _meta() and tensors["output.bias"].equal(_state()["output.bias"])
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


# --- metadata is checked against bounds and against the tensors, before any allocation --------

def _refused_on_save(tmp_path, state=None, **changes) -> CheckpointError:
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, _state() if state is None else state, _meta(**changes))
    return _refused(path)


@pytest.mark.parametrize("changes, fragment", [
    ({"sizes": {**_SIZES, "decode_steps": 10_000_000}},
     "claims 10,000,000 decoding steps (sizes.decode_steps); xmtc decodes at most 10,000"),
    ({"sizes": {**_SIZES, "decode_steps": 0}}, "claims 0 decoding steps"),
    ({"sizes": {**_SIZES, "vocab_size": 10**9}},
     "lists 4 tokens but its sizes say vocab_size = 1,000,000,000"),
    ({"sizes": {**_SIZES, "num_labels": 10**9}},
     "lists 3 labels but its sizes say num_labels = 1,000,000,000"),
    ({"sizes": {**_SIZES, "vocab_size": 1}, "tokens": ["<pad>"]}, "a vocabulary of 1 tokens"),
    ({"sizes": {**_SIZES, "vocab_size": -4}}, "sizes.vocab_size is -4, not a count"),
    ({"sizes": {**_SIZES, "vocab_size": "4"}}, 'sizes.vocab_size is "4", not a count'),
    ({"sizes": {**_SIZES, "embed_size": 2**40}}, "sizes.embed_size is 1099511627776"),
    ({"sizes": {**_SIZES, "layers": 2}}, "has unknown sizes: layers"),
    ({"sizes": {"vocab_size": 4, "num_labels": 3}}, "sizes lacks decode_steps"),
    ({"sizes": [4, 3, 2]}, "sizes is not a JSON object"),
    ({"tokens": "<pad> <unk>"}, "tokens is not a JSON array"),
    ({"tokens": ["<pad>", "<unk>", 3, "x"]}, "tokens holds a value that is not a string"),
    ({"label_names": ["zero", "one"]}, "lists 2 label_names but its sizes say num_labels = 3"),
    ({"label_counts": [1, 2, 3, 4]}, "lists 4 label_counts"),
    ({"label_counts": [1, -2, 3]}, "label_counts holds a value that is not a count"),
    ({"tokenizer": {"kind": "bpe"}}, 'unknown tokenizer settings {"kind": "bpe"}'),
    ({"tokenizer": {"kind": "punct", "lowercase": "yes"}}, "unknown tokenizer settings"),
    ({"recipe": {**_RECIPE, "train": {**_RECIPE["train"], "lr": float("nan")}}},
     "holds a recipe that does not validate: its recipe: 1 problem:\n  train.lr: nan is not a "
     "finite number"),
    ({"recipe": {**_RECIPE, "data": {**_RECIPE["data"], "max_labels": 10**7}}},
     "data.max_labels must be at most 10,000"),
    ({"recipe": {**_RECIPE, "model": {**_RECIPE["model"], "hidden_size": 10**6}}},
     "tensor encoder.rnn.weight_ih_l0 has shape [12, 5], the model [3000000, 5]"),
    ({"recipe": {**_RECIPE, "model": {**_RECIPE["model"], "light_conv": False}}},
     "has tensors the model does not: conv.weights.0, conv.weights.1"),
    ({"recipe": {**_RECIPE, "model": {**_RECIPE["model"], "bottleneck": 8}}},
     "lacks output.0.weight, output.0.bias, output.2.weight and 1 more; it has tensors the "
     "model does not: output.weight, output.bias"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_metadata_that_cannot_describe_the_tensors_is_refused(tmp_path, changes, fragment):
    error = _refused_on_save(tmp_path, **changes)
    assert fragment in error.message, error.message
    assert len(error.message) < 400


def test_tensors_that_disagree_with_consistent_sizes_are_refused(tmp_path):
    # Five tokens and vocab_size 5 agree, but the token embedding has the 4 rows it was saved with.
    tokens = ["<pad>", "<unk>", "a", "b", "c"]
    error = _refused_on_save(tmp_path, tokens=tokens, sizes={**_SIZES, "vocab_size": 5})
    assert "tensor encoder.embedding.weight has shape [4, 5], the model [5, 5]" in error.message
    # Four labels: the output layer has 3 + 3 rows, the model would have 4 + 3.
    error = _refused_on_save(tmp_path, labels=["a", "b", "c", "d"], label_names=None,
                             label_counts=None, sizes={**_SIZES, "num_labels": 4})
    assert "tensor label_embedding.weight has shape [6, 6], the model [7, 6]" in error.message


def test_missing_extra_and_retyped_tensors_are_refused(tmp_path):
    state = _state()
    del state["output.bias"]
    assert "it lacks output.bias" in _refused_on_save(tmp_path, state).message
    state = {**_state(), "backdoor": torch.ones(1)}
    assert "has tensors the model does not: backdoor" in _refused_on_save(tmp_path, state).message
    state = {**_state(), "output.bias": _state()["output.bias"].to(torch.bfloat16)}
    assert "stores tensor output.bias as BF16; xmtc checkpoints store F32" in _refused_on_save(
        tmp_path, state).message
    state = {**_state(), "output.bias": _state()["output.bias"].to(torch.int64)}
    assert "stores tensor output.bias as I64" in _refused_on_save(tmp_path, state).message


def _rewrite_header(path, change) -> None:
    """Rewrite `path`'s JSON header with `change(header)` applied, keeping the tensor bytes."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])


def test_a_header_whose_shape_lies_about_its_bytes_is_refused(saved):
    def huge(header):
        header["encoder.embedding.weight"]["shape"] = [10**9, 5]

    _rewrite_header(saved, huge)
    _refused(saved, "is damaged: tensor encoder.embedding.weight has shape [1000000000, 5] "
                    "but 80 bytes")


@pytest.mark.parametrize("offsets", [[-8, 0], [80, 0], ["0", "80"], [0]],
                         ids=["negative", "reversed", "strings", "one"])
def test_a_header_with_bad_offsets_is_refused(saved, offsets):
    def bad(header):
        header["encoder.embedding.weight"]["data_offsets"] = offsets

    _rewrite_header(saved, bad)
    _refused(saved, "not a safetensors file")


def test_deeply_nested_json_is_refused_not_a_recursion_error(saved, tmp_path):
    _rewrite_metadata(saved, extra="[" * 100_000 + "]" * 100_000)
    _refused(saved, "damaged metadata: is nested too deeply")
    deep = tmp_path / "deep.safetensors"
    raw = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep.write_bytes(len(raw).to_bytes(8, "little") + raw)
    _refused(deep, "not a safetensors file")


def test_check_meta_is_what_read_meta_runs(saved):
    meta = read_meta(saved)
    with safe_open(saved, framework="pt") as f:
        specs = {name: ("F32", tuple(f.get_slice(name).get_shape())) for name in f.keys()}
    check_meta(meta, specs)  # a consistent checkpoint passes
    specs["output.bias"] = ("F32", (7,))
    with pytest.raises(CheckpointError, match=r"output.bias has shape \[7\], the model \[6\]"):
        check_meta(meta, specs)


def test_a_name_too_long_for_the_file_system_is_refused(tmp_path):
    _refused(tmp_path / ("x" * 300), "cannot be read: File name too long")


def test_a_predictor_reads_the_file_once_and_builds_one_model(saved, monkeypatch):
    # The recipe and sizes are typed when the file is read, and the model checked against the
    # file's tensors is the model that gets its weights: nothing is parsed or built twice.
    from xmtc_cli.inference import Predictor
    from xmtc_cli.model import Seq2SetModel

    built = []
    real_init = Seq2SetModel.__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(Seq2SetModel, "__init__", counting_init)
    predictor = Predictor.from_checkpoint(str(saved), device="cpu")
    assert built == [predictor.model]
    assert predictor.recipe is predictor.meta.recipe and predictor.meta == _meta()
    assert isinstance(predictor.meta.sizes, ModelSizes)
    assert next(predictor.model.parameters()).device.type == "cpu"
