"""Trust, round three: checksums, nothing followed or waited on, leftovers and modes, named
faults, options without effect, and what a resumed run records."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli, threads

from xmtc_cli import atomic, tensorfile, textio
from xmtc_cli.errors import DataError
from xmtc_cli.fileerrors import resolved

# --- checksums --------------------------------------------------------------------------------


def _header_and_data(path: Path) -> tuple[dict, bytearray]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])


def _rewrite(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-(8 + len(h)) % 8)
    path.write_bytes(len(h).to_bytes(8, "little") + h + bytes(data))


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"a": torch.randn(3, 4), "b": torch.randn(3, 4), "c": torch.arange(5)}


def test_the_checksum_is_the_sha256_of_the_file_with_its_digits_zeroed(tmp_path):
    path = tmp_path / "t.safetensors"
    tensorfile.write_safetensors(path, _tensors(), {"k": "v"})
    raw = path.read_bytes()
    stored = _header_and_data(path)[0]["__metadata__"][tensorfile.CHECKSUM_KEY]
    oracle = hashlib.sha256(raw.replace(stored.encode(), b"0" * 64)).hexdigest()
    assert stored == oracle
    assert tensorfile.verify_checksum(path) is True


@pytest.mark.parametrize("edit", ["flip-first", "flip-last", "swap", "metadata", "shape-name"])
def test_any_edit_after_writing_is_a_mismatch(tmp_path, edit):
    path = tmp_path / "t.safetensors"
    tensorfile.write_safetensors(path, _tensors(), {"k": "v"})
    header, data = _header_and_data(path)
    if edit == "flip-first":
        data[0] ^= 1
    elif edit == "flip-last":
        data[-1] ^= 0x80
    elif edit == "swap":
        header["a"]["data_offsets"], header["b"]["data_offsets"] = (
            header["b"]["data_offsets"], header["a"]["data_offsets"])
    elif edit == "metadata":
        header["__metadata__"]["k"] = "w"
    else:
        header["a"], header["b"] = header["b"], header["a"]  # names swapped with the ranges
        header = {("b" if k == "a" else "a" if k == "b" else k): v for k, v in header.items()}
    _rewrite(path, header, data)
    with pytest.raises(tensorfile.ChecksumMismatch):
        tensorfile.verify_checksum(path)
    tensorfile.reseal(path)  # a deliberate edit, sealed again, passes
    assert tensorfile.verify_checksum(path) is True


def test_a_file_without_a_checksum_is_accepted_as_older(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file(_tensors(), str(path), metadata={"k": "v"})
    assert tensorfile.verify_checksum(path) is False


def test_an_edited_checkpoint_is_refused_as_changed(tiny_run, tmp_path, cli):
    path = tmp_path / "m.safetensors"
    shutil.copy(tiny_run.best, path)
    header, data = _header_and_data(path)
    labels = json.loads(header["__metadata__"]["labels"])
    header["__metadata__"]["labels"] = json.dumps([labels[1], labels[0], *labels[2:]])
    _rewrite(path, header, data)
    docs = tmp_path / "d.txt"
    docs.write_text("a b c\n")
    result = cli("predict", path, docs, "--device", "cpu")
    assert result.code == 1
    assert "was changed after xmtc wrote it" in result.err


@pytest.mark.parametrize("field,change,problem", [
    ("labels", lambda v: [v[0], *v[:-1]], "twice"),
    ("labels", lambda v: ["a\tb", *v[1:]], "tab or line break"),
    ("labels", lambda v: ["", *v[1:]], "empty"),
    ("tokens", lambda v: [*v[:2], "x\ty", *v[3:]], "space, tab or line break"),
])
def test_forged_label_and_token_lists_are_refused(tiny_run, tmp_path, field, change, problem):
    from xmtc_cli.checkpoint import read_meta
    from xmtc_cli.errors import CheckpointError

    path = tmp_path / "m.safetensors"
    shutil.copy(tiny_run.best, path)
    header, data = _header_and_data(path)
    header["__metadata__"][field] = json.dumps(change(json.loads(header["__metadata__"][field])))
    _rewrite(path, header, data)
    tensorfile.reseal(path)
    with pytest.raises(CheckpointError, match=problem):
        read_meta(path)


def _resume_after(tiny_run, tmp_path, edit) -> tuple[int, str]:
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run, run, ignore=shutil.ignore_patterns(".lock"))
    edit(run)
    with threads(1):
        result = run_cli("train", tiny_run.recipe, "--out", run, "--resume", "--device", "cpu")
    return result.code, result.err


def test_an_edited_train_state_is_refused_as_changed(tiny_run, tmp_path):
    def flip(run):
        state = run / "train_state.safetensors"
        header, data = _header_and_data(state)
        data[len(data) // 2] ^= 0xFF
        _rewrite(state, header, data)
    code, err = _resume_after(tiny_run, tmp_path, flip)
    assert code == 1 and "was changed after xmtc wrote it" in err


@pytest.mark.parametrize("change,problem", [
    (lambda v: {**v, "step": -1}, "step is -1"),
    (lambda v: {**v, "step": "3"}, "step is \"3\""),
    (lambda v: {**v, "colour": 1}, "unknown keys colour"),
    (lambda v: {**v, "best_epoch": v["epoch"] + 1}, "is after epoch"),
    (lambda v: {k: x for k, x in v.items() if k != "step"}, "no step"),
])
def test_forged_train_state_values_are_refused(tiny_run, tmp_path, change, problem):
    def forge(run):
        state = run / "train_state.safetensors"
        header, data = _header_and_data(state)
        header["__metadata__"]["state"] = json.dumps(
            change(json.loads(header["__metadata__"]["state"])))
        _rewrite(state, header, data)
        tensorfile.reseal(state)
    code, err = _resume_after(tiny_run, tmp_path, forge)
    assert code == 1 and "damaged train state" in err and problem in err, err


# --- nothing followed, nothing waited on -------------------------------------------------------

@pytest.mark.parametrize("name", ["metrics.jsonl", ".lock", "train_state.safetensors"])
@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_planted_links_and_fifos_in_a_run_folder_are_refused(tiny_run, tmp_path, name, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")

    def plant(run):
        (run / name).unlink(missing_ok=True)
        if kind == "link":
            os.symlink(victim, run / name)
        else:
            os.mkfifo(run / name)
    code, err = _resume_after(tiny_run, tmp_path, plant)
    assert code == 1 and f"{name} is a" in err
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("out,problem", [("", "is empty"), ("/", "root of the file system"),
                                         ("~", "home folder")])
def test_dangerous_out_is_refused(cli, tmp_path, monkeypatch, out, problem):
    monkeypatch.setenv("HOME", str(tmp_path))
    value = str(tmp_path) if out == "~" else out
    for command in (["train", "r.yaml"], ["preprocess", "x"], ["predict", "m", "d"]):
        result = cli(*command, "--out", value)
        assert result.code == 2 and problem in result.err, (command, result.err)


# --- leftovers and modes -----------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_writers_go_and_those_of_live_ones_stay(tmp_path):
    dead = tmp_path / f".out.txt.{_dead_pid()}.abcd1234.tmp"
    live = tmp_path / f".out.txt.{os.getpid()}.efgh5678.tmp"
    other = tmp_path / f".other.txt.{_dead_pid()}.abcd1234.tmp"
    for path in (dead, live, other):
        path.write_text("x")
    atomic.atomic_write_text(tmp_path / "out.txt", "new\n")
    assert not dead.exists() and live.exists() and other.exists()
    assert (tmp_path / "out.txt").read_text() == "new\n"


def test_a_folder_moved_aside_by_a_killed_writer_comes_back(tmp_path):
    aside = tmp_path / f".data.{_dead_pid()}.abcd1234.old"
    (aside / "previous").mkdir(parents=True)
    (aside / "previous" / "f").write_text("kept")
    atomic.remove_leftovers(tmp_path / "data")
    assert (tmp_path / "data" / "f").read_text() == "kept" and not aside.exists()


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o755])
def test_replacing_a_file_keeps_its_mode(tmp_path, mode):
    path = tmp_path / "f.txt"
    path.write_text("old")
    path.chmod(mode)
    atomic.atomic_write_text(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == "new"


def test_a_new_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.atomic_write_text(tmp_path / "f.txt", "new")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o640


# --- faults named ------------------------------------------------------------------------------

@pytest.mark.parametrize("data,utf16", [
    ("doc one\n".encode("utf-16-le"), True),
    ("doc one\n".encode("utf-16-be"), True),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", False),
    (b"word\x00word\n", False),
    (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}\n", False),
])
def test_the_utf16_hint_only_where_the_bytes_look_like_utf16(tmp_path, data, utf16):
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        with textio.open_lines(path) as lines:
            list(lines)
    assert ("utf-16" in (info.value.hint or "").lower()) == utf16, info.value


def test_a_line_that_never_ends_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(textio, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "t.txt"
    path.write_bytes(b"ok\n" + b"x" * 5000)
    with pytest.raises(DataError, match=f"{path}:2: a line longer than"):
        with textio.open_lines(path) as lines:
            list(lines)


def test_how_a_missing_path_was_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolved("/abs/x") == ""
    assert str(tmp_path) in resolved("rel/x")
    assert "does not expand ~" in resolved("~/x")
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert "no longer exists" in resolved("x")


@pytest.mark.parametrize("content", [b"{oops\n", b"{\"loss\": 1}\n", b"{\"epoch\": \"1\"}\n",
                                     b"\xff\xfe\n"])
def test_a_damaged_metrics_file_is_named(tiny_run, tmp_path, content):
    code, err = _resume_after(tiny_run, tmp_path,
                              lambda run: (run / "metrics.jsonl").write_bytes(content))
    assert code == 1 and "metrics.jsonl:1: damaged" in err, err


# --- options without effect --------------------------------------------------------------------

def test_eval_files_refuse_checkpoint_options(cli, tmp_path):
    for option in (["--split", "valid"], ["--batch-size", "8"], ["--data", "x"]):
        result = cli("eval", "--predictions", "p", "--gold", "g", *option)
        assert result.code == 2 and f"{option[0]} has no effect" in result.err


def test_train_warns_of_values_without_effect(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {dir: d}\n")
    result = cli("train", recipe, "train.epochs=2", "train.epochs=3", "loss.ot_weight=0",
                 "loss.ot_iters=9", "--dry-run")
    assert result.code == 0
    assert "warning: train.epochs is overridden 2 times" in result.err
    assert "warning: loss.ot_iters has no effect with loss.ot_weight=0" in result.err
    assert "epochs: 3" in result.out


# --- what a resumed run records ----------------------------------------------------------------

def test_a_resumed_run_rewrites_an_edited_recipe_yaml(tiny_run, tmp_path):
    def edit(run):
        path = run / "recipe.yaml"
        path.write_text(path.read_text().replace("hidden_size: 16", "hidden_size: 99"))
    code, err = _resume_after(tiny_run, tmp_path, edit)
    shown = (tmp_path / "run" / "recipe.yaml").read_text()
    assert code == 0, err
    assert "did not show the recipe this run uses (model.hidden_size)" in err
    assert "hidden_size: 16" in shown and "# resumed: xmtc train" in shown


# --- torchrun's variables ----------------------------------------------------------------------

_LAUNCH = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500"}


def _env(monkeypatch, values: dict[str, str]) -> None:
    from xmtc_cli import distributed
    from xmtc_cli.launch import LAUNCH_VARIABLES

    for name in (*LAUNCH_VARIABLES, "LOCAL_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT",
                 distributed.RENDEZVOUS_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("values,named", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc'"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0'"),
    ({"WORLD_SIZE": "1.5"}, "WORLD_SIZE='1.5'"),
    ({"RANK": "-1"}, "RANK='-1'"),
    ({"TORCHELASTIC_RESTART_COUNT": "x"}, "TORCHELASTIC_RESTART_COUNT='x'"),
    ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set"),
    ({"RANK": "1"}, "RANK=1 is set, but WORLD_SIZE is not"),
    ({**_LAUNCH, "RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
    ({**_LAUNCH, "MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a port"),
    ({**_LAUNCH, "LOCAL_WORLD_SIZE": "1"}, "LOCAL_RANK=1 and LOCAL_WORLD_SIZE=1 do not fit"),
])
def test_torchrun_variables_half_set_or_malformed_are_usage_errors(monkeypatch, values, named):
    from xmtc_cli.errors import UsageError
    from xmtc_cli.launch import Launch

    _env(monkeypatch, values)
    with pytest.raises(UsageError) as info:
        Launch.from_environ()
    assert named in info.value.message


def test_a_complete_launch_is_recognised(monkeypatch):
    from xmtc_cli.launch import Launch

    _env(monkeypatch, {**_LAUNCH, "TORCHELASTIC_RESTART_COUNT": "2"})
    assert Launch.from_environ() == Launch(by_torchrun=True, world_size=2, rank=1, local_rank=1,
                                           restarts=2)
    _env(monkeypatch, {"WORLD_SIZE": "1", "RANK": "0"})
    assert Launch.from_environ().world_size == 1 and Launch.from_environ().rank == 0


def test_a_rendezvous_whose_peers_never_come_ends_naming_the_variables(monkeypatch):
    import socket

    from xmtc_cli import distributed
    from xmtc_cli.errors import XmtcError

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _env(monkeypatch, {**_LAUNCH, "RANK": "0", "LOCAL_RANK": "0", "MASTER_PORT": str(port),
                       distributed.RENDEZVOUS_ENV: "1"})
    from xmtc_cli.launch import Launch

    with pytest.raises(XmtcError) as info:
        distributed.setup("cpu", Launch.from_environ())
    assert "did not meet within 1 s" in info.value.message
    assert f"MASTER_PORT={port}" in info.value.message


def test_a_fifo_as_checkpoint_is_refused_not_waited_on(tmp_path):
    from xmtc_cli.checkpoint import read_meta
    from xmtc_cli.errors import CheckpointError

    os.mkfifo(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_meta(tmp_path / "m.safetensors")


def test_writing_a_fifo_that_nobody_reads_is_an_error_not_a_wait(tmp_path):
    from xmtc_cli.fileerrors import FileError

    os.mkfifo(tmp_path / "out")
    with pytest.raises(FileError, match="FIFO .* that no process reads"):
        atomic.atomic_write_text(tmp_path / "out", "x\n")


def test_a_glove_file_that_never_ends_a_line_is_refused(tmp_path, monkeypatch):
    from xmtc_cli.data import glove

    monkeypatch.setattr(glove, "MAX_LINE_BYTES", 100)
    path = tmp_path / "v.txt"
    path.write_bytes(b"word 0.1 0.2\n" + b"7" * 1000)
    with pytest.raises(DataError, match="binary file"):
        glove.read_word_vectors(path, ["word"])


def test_a_block_device_is_never_written(tmp_path, monkeypatch):
    from xmtc_cli.fileerrors import FileError

    target = tmp_path / "disk"
    target.write_text("the disk\n")
    monkeypatch.setattr(Path, "is_block_device", lambda self: self == target)
    with pytest.raises(FileError, match="block device"):
        atomic.atomic_write_text(target, "x\n")
    assert target.read_text() == "the disk\n"


@pytest.mark.parametrize("folder", ["/etc", "/usr", "/dev", "/tmp"])
def test_out_naming_a_system_folder_is_refused(cli, folder):
    result = cli("train", "r.yaml", "--out", folder)
    assert result.code == 2 and "is a system folder" in result.err
