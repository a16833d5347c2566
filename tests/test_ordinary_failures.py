"""Ordinary failures are ordinary errors: what the machine refuses (a full disk, a read-only file
system, a permission, a folder where a file belongs, a closed or full stdout) is one `error:`
line and a `hint:`, exit code 1, no traceback, and whatever existed before is byte-identical
afterwards; a reader that stops early (`| head -1`) is no error at all. And the conventions:
`--version`, XMTC_DEBUG as a boolean, the user's umask."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from xmtc_cli import __version__
from xmtc_cli.atomic import atomic_write_text
from xmtc_cli.errors import XmtcError

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).parents[1]  # subprocesses run this checkout, not an installed xmtc
DEMO = REPO / "recipes" / "demo.yaml"


def one_error(result, code: int = 1) -> str:
    """The `error:` line of a failed command that ended with exactly that and a hint (after
    progress lines, if any)."""
    lines = result.err.splitlines()
    assert result.code == code, result.err
    assert "Traceback" not in result.err and "unexpected" not in result.err
    assert [line for line in lines if line.startswith(("error:", "hint:"))] == lines[-2:], lines
    assert lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), lines
    return lines[-2]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def docs(tmp_path) -> Path:
    path = tmp_path / "docs.txt"
    path.write_text("rocket launch orbit\nwhale coral reef\n", encoding="utf-8")
    return path


@pytest.fixture
def old_output(tmp_path) -> Path:
    out = tmp_path / "out" / "labels.txt"
    out.parent.mkdir()
    out.write_text("the previous run's labels\n")
    return out


def raising(code: int, message: str):
    def fail(*args, **kwargs):
        raise OSError(code, message)
    return fail


# --- the write layer -------------------------------------------------------------------------

@pytest.mark.parametrize("code,reason", [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.EIO, "input/output error"),
])
def test_a_failing_disk_leaves_the_old_file_and_no_temporary_one(tiny_run, docs, old_output,
                                                                  monkeypatch, cli, code, reason):
    before = snapshot(old_output.parent)
    monkeypatch.setattr("xmtc_cli.atomic.os.fsync", raising(code, os.strerror(code)))
    error = one_error(cli("predict", tiny_run.best, docs, "--out", old_output))
    assert error == f"error: cannot write {old_output}: {reason}"
    assert snapshot(old_output.parent) == before


def test_an_explained_os_error_is_still_an_os_error(tmp_path, monkeypatch):
    """Code that catches OSError around a write keeps working; the boundary gets the message."""
    monkeypatch.setattr("xmtc_cli.atomic.os.fsync", raising(errno.ENOSPC, "No space"))
    with pytest.raises(OSError) as info:
        atomic_write_text(tmp_path / "f.txt", "x")
    assert isinstance(info.value, XmtcError) and info.value.errno == errno.ENOSPC
    assert info.value.message == f"cannot write {tmp_path / 'f.txt'}: no space left on the device"
    assert info.value.filename == str(tmp_path / "f.txt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code,reason,hint", [
    (errno.EROFS, "the file system is read-only", "hint: write somewhere else"),
    (errno.EACCES, "permission denied", "hint: check the permissions of {out} and of its folder"),
])
def test_a_file_system_that_refuses_to_create_files(tiny_run, docs, old_output, monkeypatch, cli,
                                                    code, reason, hint):
    before = snapshot(old_output.parent)
    monkeypatch.setattr("xmtc_cli.atomic.tempfile.mkstemp", raising(code, os.strerror(code)))
    result = cli("predict", tiny_run.best, docs, "--out", old_output)
    assert one_error(result) == f"error: cannot write {old_output}: {reason}"
    assert result.err.splitlines()[-1] == hint.format(out=old_output)
    assert snapshot(old_output.parent) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_without_write_permission(tiny_run, docs, old_output, cli):
    before = snapshot(old_output.parent)
    old_output.parent.chmod(0o555)
    try:
        error = one_error(cli("predict", tiny_run.best, docs, "--out", old_output))
    finally:
        old_output.parent.chmod(0o755)
    assert error == f"error: cannot write {old_output}: permission denied"
    assert snapshot(old_output.parent) == before


def test_a_full_disk_while_preprocessing_keeps_the_previous_folder(tiny_data, tmp_path,
                                                                   monkeypatch, cli):
    out = tmp_path / "data"
    assert cli("preprocess", tiny_data.raw, "--out", out).code == 0
    before = snapshot(tmp_path)
    monkeypatch.setattr("xmtc_cli.data.processed.save_file", raising(errno.ENOSPC, "No space"))
    error = one_error(cli("preprocess", tiny_data.raw, "--out", out))
    assert error == f"error: cannot write {out}: no space left on the device"
    assert snapshot(tmp_path) == before


def test_out_that_is_a_folder(tiny_run, docs, tmp_path, cli):
    result = cli("predict", tiny_run.best, docs, "--out", tmp_path)
    assert one_error(result) == f"error: cannot write {tmp_path}: it is a folder, not a file"
    assert result.err.splitlines()[-1] == f"hint: give the path of a file, e.g. {tmp_path}/FILE"


def test_out_under_a_file(tiny_run, docs, cli):
    out = docs / "labels.txt"
    error = one_error(cli("predict", tiny_run.best, docs, "--out", out))
    assert error == f"error: cannot create the folder {docs}: {docs} is a file, not a folder"
    assert docs.read_text() == "rocket launch orbit\nwhale coral reef\n"


def test_xmtc_cache_pointing_at_a_file(tmp_path, monkeypatch, cli):
    cache = tmp_path / "cache"
    cache.write_text("not a folder\n")
    monkeypatch.setenv("XMTC_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    result = cli("train", DEMO, "--device", "cpu")
    assert one_error(result) == (f"error: cannot create the folder {cache}: {cache} is a file, "
                                 "not a folder")
    assert result.err.splitlines()[-1] == (f"hint: move {cache} out of the way, or choose "
                                          "another path")
    assert cache.read_text() == "not a folder\n"


def test_out_dev_full_is_written_in_place_not_replaced(tiny_run, docs, cli):
    error = one_error(cli("predict", tiny_run.best, docs, "--out", "/dev/full"))
    assert error == "error: cannot write /dev/full: no space left on the device"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_documents_that_are_not_a_file(tiny_run, tmp_path, cli, kind):
    path = tmp_path / "nope.txt" if kind == "missing" else tmp_path
    error = one_error(cli("predict", tiny_run.best, path))
    assert error == (f"error: documents file {path} does not exist" if kind == "missing" else
                     f"error: documents file {path} is a folder, not a file")


# --- standard streams, as a shell sets them up -----------------------------------------------

def shell(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("XMTC_DEBUG", None)
    return subprocess.run(["bash", "-c", f"set -o pipefail; {script}"], capture_output=True,
                          env=env, timeout=300, check=False)


def xmtc() -> str:
    return f"{sys.executable} -m xmtc_cli"


def test_a_reader_that_stops_early_is_no_error(tiny_run, tmp_path):
    docs = tmp_path / "docs.txt"
    docs.write_text("rocket launch orbit\n" * 5000)  # more than a pipe holds
    proc = shell(f"{xmtc()} predict {tiny_run.best} {docs} --batch-size 8 | head -1")
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(proc.stdout.decode().splitlines()) == 1
    assert proc.stderr.decode() == ""  # no traceback, no "Exception ignored", no error


@pytest.mark.parametrize("redirect,message", [
    (">/dev/full", "error: cannot write to standard output: no space left on the device"),
    (">&-", "error: cannot write to standard output: it is closed"),
    ("<&-", "error: cannot read standard input (-): it is closed"),
])
def test_standard_streams_that_are_full_or_closed(tiny_run, redirect, message):
    stdin = "" if redirect.startswith("<") else "<<< 'rocket launch'"
    proc = shell(f"{xmtc()} predict {tiny_run.best} - {stdin} {redirect}")
    err = proc.stderr.decode().splitlines()
    assert proc.returncode == 1
    assert len(err) == 2 and err[0] == message and err[1].startswith("hint: "), err


def test_closed_stdout_with_out_is_fine(tiny_run, docs, tmp_path):
    out = tmp_path / "labels.txt"
    proc = shell(f"{xmtc()} predict {tiny_run.best} {docs} --out {out} >&-")
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(out.read_text().splitlines()) == 2


# --- conventions -----------------------------------------------------------------------------

def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and result.out == f"xmtc {__version__}\n" and result.err == ""


@pytest.mark.parametrize("value,traceback", [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("", False), ("0", False), ("false", False), ("no", False), ("off", False), ("OFF", False),
])
def test_xmtc_debug_is_a_boolean(tiny_run, tmp_path, monkeypatch, cli, value, traceback):
    monkeypatch.setenv("XMTC_DEBUG", value)
    missing = tmp_path / "missing.safetensors"
    result = cli("predict", missing, "-", stdin=b"x\n")
    assert result.code == 1
    assert result.err.startswith("Traceback (most recent call last):") is traceback
    assert f"error: checkpoint {missing} does not exist" in result.err.splitlines()


def test_xmtc_debug_that_is_not_a_boolean_warns_and_stays_off(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("XMTC_DEBUG", "verbose")
    result = cli("predict", tmp_path / "missing.safetensors", "-", stdin=b"x\n")
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.splitlines()[0] == ("warning: XMTC_DEBUG='verbose' is not one of "
                                          "1/true/yes/on or 0/false/no/off: no traceback")


@pytest.mark.parametrize("args", [["eval"], ["eval", "--no-such-option"]])
def test_a_usage_error_keeps_exit_code_2_under_xmtc_debug(monkeypatch, cli, args):
    monkeypatch.setenv("XMTC_DEBUG", "1")
    assert cli(*args).code == 2


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_outputs_get_the_permissions_of_the_umask(tiny_run, tiny_data, docs, tmp_path, cli,
                                                  umask):
    before = os.umask(umask)
    try:
        out = tmp_path / "labels.txt"
        assert cli("predict", tiny_run.best, docs, "--out", out).code == 0
        data = tmp_path / "data"
        assert cli("preprocess", tiny_data.raw, "--out", data).code == 0
    finally:
        os.umask(before)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(data.stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()} == {0o666 & ~umask}
