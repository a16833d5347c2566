"""Reading AttentionXML-layout files: label formats, names, encodings, line-numbered errors."""

import hashlib
import os
from pathlib import Path

import pytest

from xmtc_cli.data.readers import (
    Layout,
    check_encoding,
    iter_lines,
    locate,
    read_label_ids,
    read_label_names,
    read_labels,
)
from xmtc_cli.errors import DataError


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_lines_end_at_newline_only_and_files_are_checksummed(tmp_path):
    data = "one\r\ntwo\x0cstill two\u2028and still\n\nlast"
    path = write(tmp_path / "t.txt", data)
    checksums = {}
    lines = list(iter_lines(path, "utf-8", checksums))
    assert [line.split() for line in lines] == [
        ["one"], ["two", "still", "two", "and", "still"], [], ["last"]
    ]
    assert checksums == {"t.txt": hashlib.sha256(data.encode()).hexdigest()}


def test_lines_lose_their_line_end_and_a_leading_byte_order_mark(tmp_path):
    path = write(tmp_path / "t.txt", "\ufeffword\r\nnext\n\ufeffkept\nlast")
    assert list(iter_lines(path, "utf-8", {})) == ["word", "next", "\ufeffkept", "last"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
def test_any_unicode_encoding_with_or_without_a_byte_order_mark(tmp_path, encoding):
    text = "Café crème\r\nmoney-fx\u2028still line two\n\nlast"
    for bom in ("", "\ufeff"):
        path = write(tmp_path / "t.txt", (bom + text).encode(encoding))
        checksums = {}
        assert list(iter_lines(path, encoding, checksums)) == [
            "Café crème", "money-fx\u2028still line two", "", "last"]
        assert checksums["t.txt"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_utf16_read_as_utf8_is_refused_at_line_1_with_the_fix(tmp_path):
    for data in ("doc one\ndoc two\n".encode("utf-16"), "doc one\n".encode("utf-16-le")):
        path = write(tmp_path / "t.txt", data)
        with pytest.raises(DataError, match=f"{path}:1: .* so it is not utf-8 text") as info:
            list(iter_lines(path, "utf-8", {}))
        assert "--encoding utf-16" in info.value.hint


def test_bad_utf16_names_its_line_and_column(tmp_path):
    data = "line one\nline two\nab".encode("utf-16-le") + b"\x00\xd8" + "c\n".encode("utf-16-le")
    path = write(tmp_path / "t.txt", data)
    with pytest.raises(DataError, match=f"{path}:3: bytes 00 d8 at column 3 are not utf-16-le"):
        list(iter_lines(path, "utf-16-le", {}))
    path = write(tmp_path / "t.txt", "one\ntwo".encode("utf-16-le")[:-1])
    with pytest.raises(DataError, match=f"{path}:2: the file ends inside a character"):
        list(iter_lines(path, "utf-16-le", {}))


def test_bytes_that_are_not_utf8_name_the_line_and_the_fix(tmp_path):
    path = write(tmp_path / "train_texts.txt", b"fine\nalso fine\ncaf\xe9 au lait\n")
    with pytest.raises(DataError) as info:
        list(iter_lines(path, "utf-8", {}))
    assert f"{path}:3:" in info.value.message
    assert "0xe9" in info.value.message and "column 4" in info.value.message
    assert "--encoding latin-1" in info.value.hint
    assert [x.split() for x in iter_lines(path, "latin-1", {})][2] == ["café", "au", "lait"]


def test_unknown_encoding_is_a_clear_error():
    assert check_encoding("LATIN-1") == "iso8859-1"
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        check_encoding("klingon")
    with pytest.raises(DataError, match="'rot13' is not a text encoding"):
        check_encoding("rot13")


def test_label_lines_hold_names_with_duplicates_dropped_and_empty_lines_kept(tmp_path, caplog):
    path = write(tmp_path / "train_labels.txt", "b a b\n\n  c \n")
    assert read_labels(path, "utf-8", {}) == [["b", "a"], [], ["c"]]
    assert caplog.records == []


def test_labels_with_commas_are_kept_with_one_warning_naming_the_first_line(tmp_path, caplog):
    path = write(tmp_path / "train_labels.txt", "a b\na,b c\nd\ne, f\n")
    assert read_labels(path, "utf-8", {}) == [["a", "b"], ["a,b", "c"], ["d"], ["e,", "f"]]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:2: label 'a,b' holds a comma (and 1 more line); labels are separated by "
        "spaces, so it counts as one label"]
    assert caplog.records[0].levelname == "WARNING"


def test_label_lines_holding_ids_into_y_txt(tmp_path):
    names = write(tmp_path / "Y.txt", "wikipedia\nmachine learning\nart\n")
    labels = write(tmp_path / "train_labels.txt", "2 0\n1\n")
    id_names = (names, read_label_ids(names, "utf-8", False, {}))
    assert id_names[1] == ["wikipedia", "machine_learning", "art"]
    assert read_labels(labels, "utf-8", {}, id_names) == [
        ["art", "wikipedia"], ["machine_learning"]]


def test_latin1_yf_txt_reads_ampersand_as_space_and_spaces_as_underscores(tmp_path):
    names = write(tmp_path / "Yf.txt", "Books\nArts & Photography\nCaf\xe9 Cr\xe8me  Br\xfbl\xe9e\n"
                  .encode("latin-1"))
    assert read_label_ids(names, "latin-1", True, {}) == [
        "Books", "Arts_Photography", "Café_Crème_Brûlée"
    ]


@pytest.mark.parametrize("token", ["3", "x", "-1", "1.0"])
def test_a_label_id_outside_the_names_file_names_file_line_and_names_file(tmp_path, token):
    names = write(tmp_path / "Y.txt", "a\nb\nc\n")
    labels = write(tmp_path / "test_labels.txt", f"0\n1 {token}\n")
    with pytest.raises(DataError) as info:
        read_labels(labels, "utf-8", {}, (names, ["a", "b", "c"]))
    assert f"{labels}:2:" in info.value.message and "Y.txt (0 to 2)" in info.value.message


def test_label_names_are_tab_separated(tmp_path):
    path = write(tmp_path / "label_names.txt",
                 "money-fx\tMoney/Foreign  Exchange\r\n\nacq\tMergers\tand more\ngold\t\n")
    warnings = []
    assert read_label_names(path, "utf-8", {}, warnings) == {
        "money-fx": ("Money/Foreign Exchange", 1), "acq": ("Mergers and more", 3),
        "gold": ("gold", 4),
    }
    assert warnings == []


def test_a_label_named_twice_keeps_its_first_name_with_a_warning(tmp_path):
    path = write(tmp_path / "label_names.txt", "acq\tMergers\ngold\tGold\nacq\tOther\n")
    warnings = []
    assert read_label_names(path, "utf-8", {}, warnings)["acq"] == ("Mergers", 1)
    assert warnings == [f"{path}: 1 line names a label again; the first name counts "
                        "('acq' on line 3, first on line 1)"]


def test_a_label_names_line_without_a_tab_is_an_error_at_its_line(tmp_path):
    path = write(tmp_path / "label_names.txt", "acq\tMergers\nmoney-fx Money\n")
    with pytest.raises(DataError, match=r"label_names.txt:2: expected `label<TAB>readable "
                       r"name`, found 'money-fx Money' \(no tab\)"):
        read_label_names(path, "utf-8", {}, [])


def make_layout(folder: Path, *names: str) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        write(folder / name, "")


DIR_FILES = ("train_texts.txt", "train_labels.txt", "test_texts.txt", "test_labels.txt")


def test_locate_the_dir_layout_with_optional_files(tmp_path):
    make_layout(tmp_path, *DIR_FILES)
    files = locate(tmp_path, Layout(), "hint")
    assert set(files.texts) == {"train", "test"} and files.label_names is None
    make_layout(tmp_path, "valid_texts.txt", "valid_labels.txt", "label_names.txt")
    files = locate(tmp_path, Layout(), "hint")
    assert files.texts["valid"] == tmp_path / "valid_texts.txt"
    assert files.label_names == tmp_path / "label_names.txt"


def test_locate_lists_every_missing_file_at_once(tmp_path):
    make_layout(tmp_path, "train_raw_texts.txt", "test_labels.txt", "valid_texts.txt")
    layout = Layout(texts="{split}_raw_texts.txt", label_ids="Y.txt")
    with pytest.raises(DataError) as info:
        locate(tmp_path, layout, "get it from https://example.org")
    message = info.value.message
    for name in ("train_labels.txt", "test_raw_texts.txt", "Y.txt"):
        assert name in message
    assert info.value.hint == "get it from https://example.org"


def test_locate_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match="corpus folder .*nowhere does not exist"):
        locate(tmp_path / "nowhere", Layout(), "hint")


def test_locate_accepts_fifos(tmp_path):
    """`mkfifo train_texts.txt; zcat ... > train_texts.txt &` is a corpus too."""
    make_layout(tmp_path, "train_labels.txt", "test_texts.txt", "test_labels.txt")
    os.mkfifo(tmp_path / "train_texts.txt")
    os.mkfifo(tmp_path / "label_names.txt")
    files = locate(tmp_path, Layout(), "hint")
    assert files.texts["train"] == tmp_path / "train_texts.txt"
    assert files.label_names == tmp_path / "label_names.txt"
