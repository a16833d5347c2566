"""`xmtc preprocess --out` never deletes or overwrites what xmtc did not write (issue 10.1).

Every refusal is one `error:` line and one `hint:` line with exit code 1, and leaves every file
that existed before byte-identical.
"""

import json
from pathlib import Path

import pytest

from xmtc_cli.data.processed import FORMAT, MANIFEST, why_not_replaceable


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "train_texts.txt").write_text("the cat\na dog\nthe bird sang\n")
    (folder / "train_labels.txt").write_text("pets\npets animals\nbirds\n")
    (folder / "test_texts.txt").write_text("the bird\n")
    (folder / "test_labels.txt").write_text("birds\n")
    return folder


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root`: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def assert_refused(result, *phrases: str) -> None:
    assert result.code == 1 and result.out == ""
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == [lines[-2]]
    assert [line for line in lines if line.startswith("hint: ")] == [lines[-1]]
    for phrase in phrases:
        assert phrase in lines[-2], lines[-2]


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


def test_a_web_project_with_a_manifest_json_is_never_replaced(cli, tmp_path, corpus):
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text('{"name": "My App", "start_url": "/", "icons": []}\n')
    (site / "index.html").write_text("<html></html>\n")
    before = snapshot(tmp_path)
    result = cli("preprocess", corpus, "--out", site)
    assert_refused(result, f"--out {site} exists and is not an earlier output of xmtc",
                   "no manifest.json of processed data")
    assert snapshot(tmp_path) == before


def test_a_folder_holding_only_a_foreign_manifest_json_is_never_replaced(cli, tmp_path, corpus):
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text('{"format_version": 1}\n')  # not all of xmtc's keys
    before = snapshot(tmp_path)
    assert_refused(cli("preprocess", corpus, "--out", site), "no manifest.json")
    assert snapshot(tmp_path) == before


def test_a_manifest_that_does_not_parse_is_not_xmtcs(cli, tmp_path, corpus):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_bytes(b"\xff\xfe not json")
    before = snapshot(tmp_path)
    assert_refused(cli("preprocess", corpus, "--out", out), "no manifest.json")
    assert snapshot(tmp_path) == before


def test_out_equal_to_the_raw_folder_is_refused(cli, tmp_path, corpus):
    before = snapshot(tmp_path)
    result = cli("preprocess", corpus, "--out", corpus)
    assert_refused(result, f"--out {corpus} is the raw corpus folder")
    assert "--out " in result.err.splitlines()[-1]
    assert snapshot(tmp_path) == before


def test_the_default_out_equal_to_the_raw_folder_is_refused(cli, tmp_path, monkeypatch):
    # `xmtc preprocess data/mycorpus` would write data/mycorpus: its own input.
    monkeypatch.setenv("XMTC_DATA", str(tmp_path / "data"))
    corpus = write_corpus(tmp_path / "data" / "mycorpus")
    before = snapshot(tmp_path)
    assert_refused(cli("preprocess", corpus), "(the default) is the raw corpus folder")
    assert snapshot(tmp_path) == before


def test_out_inside_the_raw_folder_is_refused(cli, tmp_path, corpus):
    before = snapshot(tmp_path)
    out = corpus / "processed"
    assert_refused(cli("preprocess", corpus, "--out", out), "lies inside the raw corpus folder")
    assert snapshot(tmp_path) == before


def test_the_raw_folder_inside_out_is_refused(cli, tmp_path, corpus):
    before = snapshot(tmp_path)
    result = cli("preprocess", corpus, "--out", tmp_path)
    assert_refused(result, f"the raw corpus folder {corpus} lies inside --out {tmp_path}")
    assert snapshot(tmp_path) == before


def test_a_named_dataset_with_raw_equal_to_out_is_refused(cli, tmp_path, corpus):
    before = snapshot(tmp_path)
    assert_refused(cli("preprocess", "eurlex", "--raw", corpus, "--out", corpus),
                   "is the raw corpus folder")
    assert snapshot(tmp_path) == before


def test_the_demo_corpus_is_not_generated_into_a_refused_out(cli, tmp_path):
    raw = tmp_path / "demo"
    assert_refused(cli("preprocess", "demo", "--raw", raw, "--out", raw),
                   "is the raw corpus folder")
    assert not raw.exists()


def test_a_glove_file_inside_out_is_refused(cli, tmp_path, corpus):
    out = tmp_path / "out"
    assert cli("preprocess", corpus, "--out", out).code == 0
    glove = out / "vectors.txt"
    glove.write_text("cat 1 2\n")
    before = snapshot(tmp_path)
    assert_refused(cli("preprocess", corpus, "--out", out, "--glove", glove),
                   f"the word-vector file {glove} lies inside --out {out}")
    assert snapshot(tmp_path) == before


def test_a_users_own_file_inside_an_earlier_output_stops_the_replacement(cli, tmp_path, corpus):
    out = tmp_path / "out"
    assert cli("preprocess", corpus, "--out", out).code == 0
    (out / "notes.txt").write_text("my results, do not lose\n")
    (out / "plots").mkdir()
    before = snapshot(tmp_path)
    result = cli("preprocess", corpus, "--out", out, "--seed", "1")
    assert_refused(result, "holds files xmtc does not write: notes.txt, plots/")
    assert "move your own files out of it" in result.err
    assert snapshot(tmp_path) == before


def test_out_that_is_a_file_is_refused(cli, tmp_path, corpus):
    out = tmp_path / "out"
    out.write_text("a file\n")
    before = snapshot(tmp_path)
    assert_refused(cli("preprocess", corpus, "--out", out), "it is a file")
    assert snapshot(tmp_path) == before


def test_an_earlier_output_and_an_empty_folder_are_replaced(cli, tmp_path, corpus):
    out, empty = tmp_path / "out", tmp_path / "empty"
    empty.mkdir()
    assert cli("preprocess", corpus, "--out", empty).code == 0
    assert cli("preprocess", corpus, "--out", out).code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == FORMAT
    assert cli("preprocess", corpus, "--out", out, "--seed", "3").code == 0
    assert json.loads((out / MANIFEST).read_text())["options"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "empty", "out"]


def test_an_older_manifest_without_the_format_marker_is_still_xmtcs(cli, tmp_path, corpus):
    out = tmp_path / "out"
    assert cli("preprocess", corpus, "--out", out).code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["format"]  # as written before the marker existed
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert why_not_replaceable(out) is None
    assert cli("preprocess", corpus, "--out", out).code == 0


def test_why_not_replaceable_lists_a_few_foreign_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert why_not_replaceable(tmp_path / "missing") is None and why_not_replaceable(out) is None
    (out / MANIFEST).write_text(json.dumps({"format": FORMAT, "splits": {"train": 1}}))
    for name in ("a", "b", "c", "d", "train.safetensors", "x" * 60):
        (out / name).write_text("")
    why = why_not_replaceable(out)
    assert why == "it holds files xmtc does not write: a, b, c and 2 more"
