"""`preprocess`, the core of `xmtc preprocess`, on small corpora written by each test."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from xmtc_cli.data import preprocess as preprocess_module
from xmtc_cli.data.catalog import DATA_ENV
from xmtc_cli.data.preprocess import PreprocessOptions, preprocess
from xmtc_cli.data.processed import load_processed
from xmtc_cli.errors import DataError

Docs = list[tuple[str, str]]  # (text, space-separated labels)

TRAIN: Docs = [
    ("the cat sat on the mat", "pets animals"),
    ("a dog and a cat", "pets"),
    ("", "animals"),  # an empty document is legal
    ("stocks fell sharply", ""),  # so is an empty label line
    ("the dog barked at the cat", "pets animals"),
    ("markets and stocks rose", "finance"),
]
TEST: Docs = [
    ("the cat and the zebra", "pets zoo"),  # zebra: unseen word; zoo: unseen label
    ("stocks", "finance zoo"),
    ("", ""),
]


def write_corpus(folder: Path, train: Docs = TRAIN, test: Docs = TEST, valid: Docs | None = None,
                 texts: str = "{split}_texts.txt", encoding: str = "utf-8") -> Path:
    """Write a corpus in the DIR layout (or another texts-file name) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": train, "test": test} | ({"valid": valid} if valid is not None else {})
    for split, docs in splits.items():
        (folder / texts.format(split=split)).write_bytes(
            "".join(text + "\n" for text, _ in docs).encode(encoding))
        (folder / f"{split}_labels.txt").write_bytes(
            "".join(labels + "\n" for _, labels in docs).encode(encoding))
    return folder


def run(folder: Path, tmp_path: Path, **options):
    out, summary = preprocess(str(folder), PreprocessOptions(out=tmp_path / "out", **options))
    return load_processed(out), summary


def words(data, split: str, i: int) -> list[str]:
    return [data.tokens[t] for t in data.splits[split].tokens(i)]


def labels(data, split: str, i: int) -> list[str]:
    return [data.labels[x] for x in data.splits[split].labels(i)]


def test_a_dir_corpus_end_to_end(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    data, summary = run(folder, tmp_path, valid_fraction=0.0)
    assert data.tokens[:4] == ["<pad>", "<unk>", "the", "cat"]  # by count, ties first-seen
    assert data.token_counts[2] == 4
    assert data.labels == ["pets", "animals", "finance", "zoo"]
    assert data.num_labels == 3 and data.label_counts.tolist() == [3, 3, 1, 0]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "valid": 0, "test": 3}
    assert words(data, "train", 1) == ["a", "dog", "and", "a", "cat"]
    assert words(data, "test", 0) == ["the", "cat", "and", "the", "<unk>"]  # never from test
    assert labels(data, "test", 1) == ["finance", "zoo"]  # gold-only labels stay in gold sets
    assert data.token_embeddings is None and data.label_embeddings.shape == (3, 100)
    assert data.tokenizer == {"kind": "whitespace", "lowercase": False}
    assert set(data.manifest["sources"]) == {
        "train_texts.txt", "train_labels.txt", "test_texts.txt", "test_labels.txt"}

    test = summary.splits["test"]
    assert (test.unseen_labels, test.unseen_label_occurrences) == (1, 2)
    assert (test.empty_docs, test.empty_label_sets) == (1, 1)
    train = summary.splits["train"]
    assert (train.empty_docs, train.empty_label_sets, train.max_labels) == (1, 1, 2)
    corpus = summary.corpus
    assert (corpus.train_docs, corpus.test_docs, corpus.labels) == (6, 3, 3)
    assert corpus.vocabulary == 15 and corpus.docs_per_label == pytest.approx(7 / 3, abs=0.01)
    assert summary.gold_only_labels == 1 and summary.coverage is None
    assert data.manifest["stats"]["corpus"]["train_docs"] == 6
    json.dumps(summary.to_dict())  # JSON-ready


def test_validation_is_a_seeded_deterministic_tenth_of_the_training_file(tmp_path):
    train = [(f"doc{i} word", f"l{i % 3}") for i in range(50)]
    folder = write_corpus(tmp_path / "corpus", train=train)

    def valid_docs(seed: int, out: str) -> list[str]:
        out_dir, _ = preprocess(str(folder), PreprocessOptions(out=tmp_path / out, seed=seed))
        data = load_processed(out_dir)
        return [words(data, "valid", i)[0] for i in range(len(data.splits["valid"]))]

    first = valid_docs(0, "a")
    assert len(first) == 5 and first == valid_docs(0, "b")
    assert first != valid_docs(1, "c")
    data = load_processed(tmp_path / "a")
    assert len(data.splits["train"]) == 45
    assert data.token_counts[data.tokens.index(first[0])] == 1  # counted: part of the train file
    kept = {words(data, "train", i)[0] for i in range(45)}
    assert kept.isdisjoint(first) and len(kept | set(first)) == 50


def test_a_shipped_validation_split_is_used_whole_and_not_counted(tmp_path):
    folder = write_corpus(tmp_path / "corpus", valid=[("the newword", "pets brandnew")])
    data, summary = run(folder, tmp_path)
    assert len(data.splits["train"]) == 6 and len(data.splits["valid"]) == 1
    assert words(data, "valid", 0) == ["the", "<unk>"]
    assert labels(data, "valid", 0) == ["pets", "brandnew"]
    assert summary.valid_from == "valid_texts.txt"
    assert data.manifest["options"]["valid_fraction"] is None


def test_vocabulary_cap_tokenizer_and_lowercase_are_applied_and_recorded(tmp_path):
    folder = write_corpus(tmp_path / "corpus", train=[("The cat. THE cat, the end", "x")])
    data, _ = run(folder, tmp_path, tokenizer="punct", lowercase=True, max_vocab=2)
    assert data.tokens == ["<pad>", "<unk>", "the", "cat"]
    assert data.token_counts.tolist() == [0, 3, 3, 2]  # `.`, `,`, `end` read as <unk>
    assert data.tokenizer == {"kind": "punct", "lowercase": True}
    assert data.manifest["options"]["max_vocab"] == 2


def test_glove_embeddings_and_coverage(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    (folder / "label_names.txt").write_text("pets\tPet animals\nfinance\tMoney matters\n")
    glove = tmp_path / "glove.txt.gz"
    glove.write_bytes(gzip.compress(
        b"the 1 0\ncat 0 1\nbroken line here 1\nanimals 2 2\npet 4 0\nstocks 1 1\n"))
    data, summary = run(folder, tmp_path, glove=glove, valid_fraction=0.0)
    tokens = data.tokens
    assert data.token_embeddings.shape == (len(tokens), 2)
    np.testing.assert_array_equal(data.token_embeddings[0], 0)
    np.testing.assert_array_equal(data.token_embeddings[tokens.index("cat")], [0, 1])
    np.testing.assert_allclose(data.label_embeddings[0], [3, 1])  # "Pet animals": pet + animals
    np.testing.assert_allclose(data.label_embeddings[1], [2, 2])  # "animals"
    assert np.all(np.abs(data.label_embeddings[2]) <= 0.1)  # "Money matters": none known
    assert data.label_names == ["Pet animals", "animals", "Money matters", "zoo"]
    coverage = summary.coverage
    assert coverage.dim == 2 and coverage.malformed_lines == 1
    assert coverage.token_share == pytest.approx(9 / 24, abs=1e-4)  # the 4, cat 3, stocks 2
    assert coverage.label_share == pytest.approx(2 / 3, abs=1e-4)
    assert data.manifest["options"]["glove"] == {"path": str(glove), "dim": 2}
    assert "glove.txt.gz" in data.manifest["sources"]


def test_the_same_input_gives_the_same_output(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    paths = [preprocess(str(folder), PreprocessOptions(out=tmp_path / o))[0] for o in "ab"]
    for name in ("tokens.tsv", "labels.tsv", "embeddings.safetensors", "train.safetensors",
                 "valid.safetensors", "test.safetensors", "manifest.json"):
        assert (paths[0] / name).read_bytes() == (paths[1] / name).read_bytes(), name


# --- named datasets --------------------------------------------------------------------------

def test_wiki10_reads_raw_texts_and_label_ids_into_y_txt(tmp_path):
    raw = write_corpus(tmp_path / "raw", train=[("a b", "1 0"), ("c", "1")],
                       test=[("a", "2")], texts="{split}_raw_texts.txt")
    (raw / "Y.txt").write_text("wikipedia\nmachine learning\nart\n")
    out, _ = preprocess("wiki10", PreprocessOptions(raw=raw, out=tmp_path / "out"))
    data = load_processed(out)
    assert data.labels == ["machine_learning", "wikipedia", "art"] and data.num_labels == 2
    assert data.manifest["dataset"] == "wiki10" and data.manifest["title"] == "Wiki10-31K"


def test_amazoncat13k_reads_a_latin1_yf_txt(tmp_path):
    raw = write_corpus(tmp_path / "raw", train=[("a", "0 1")], test=[("b", "1")],
                       texts="{split}_raw_texts.txt")
    (raw / "Yf.txt").write_bytes("Caf\xe9\nArts & Photography\n".encode("latin-1"))
    out, _ = preprocess("amazoncat13k", PreprocessOptions(raw=raw, out=tmp_path / "out"))
    data = load_processed(out)
    assert data.labels == ["Café", "Arts_Photography"]


@pytest.mark.parametrize("with_glove", [True, False])
def test_amazon670k_stores_no_label_table_its_labels_are_random(tmp_path, with_glove):
    raw = write_corpus(tmp_path / "raw", train=[("a b", "123 456")], test=[("b", "456")],
                       texts="{split}_raw_texts.txt")
    glove = tmp_path / "g.txt"
    glove.write_text("a 1 2 3\n123 1 1 1\n")
    out, summary = preprocess("amazon670k", PreprocessOptions(
        raw=raw, out=tmp_path / "out", glove=glove if with_glove else None))
    data = load_processed(out)
    assert data.label_embeddings is None  # training draws them (model.label_embedding_size)
    assert data.manifest["options"]["label_embeddings"] == "names"
    assert data.manifest["stats"]["label_embeddings"]["dim"] is None
    assert summary.label_embeddings.random == 2
    if with_glove:
        assert data.token_embeddings.shape == (4, 3) and summary.coverage.label_share == 0.0
    else:
        assert data.token_embeddings is None


def test_default_folders_come_from_xmtc_data(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "root"))
    write_corpus(tmp_path / "root" / "raw" / "eurlex")
    out, _ = preprocess("eurlex")
    assert out == tmp_path / "root" / "eurlex" and (out / "manifest.json").is_file()


def test_demo_generates_its_corpus_and_uses_its_vectors(tmp_path):
    raw = tmp_path / "raw"
    out, summary = preprocess("demo", PreprocessOptions(raw=raw, out=tmp_path / "out"))
    assert (raw / "vectors.txt").is_file()
    data = load_processed(out)
    assert summary.corpus.train_docs == 2000 and summary.corpus.test_docs == 400
    assert 20 <= data.num_labels <= 30 and summary.coverage.label_share == 1.0
    assert data.token_embeddings.shape[1] == 50 == data.label_embeddings.shape[1]
    assert len(data.splits["valid"]) == 200


# --- bad input -------------------------------------------------------------------------------

def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    (folder / "test_labels.txt").write_text("pets\n")
    with pytest.raises(DataError) as info:
        run(folder, tmp_path)
    assert info.value.message == (
        f"{folder / 'test_texts.txt'} has 3 lines but {folder / 'test_labels.txt'} has 1")
    assert info.value.hint


def test_missing_files_of_a_named_dataset_list_them_and_the_source(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(DataError) as info:
        preprocess("wiki10", PreprocessOptions(raw=raw, out=tmp_path / "out"))
    for name in ("train_raw_texts.txt", "train_labels.txt", "test_raw_texts.txt", "Y.txt"):
        assert name in info.value.message
    assert "github.com/yourh/AttentionXML" in info.value.hint and str(raw) in info.value.hint


def test_a_missing_raw_folder_says_where_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        preprocess("eurlex", PreprocessOptions(raw=tmp_path / "none", out=tmp_path / "out"))
    assert "AttentionXML" in info.value.hint


def test_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match="corpus folder .*nowhere does not exist"):
        preprocess(str(tmp_path / "nowhere"), PreprocessOptions(out=tmp_path / "out"))


def test_raw_is_for_dataset_names_only(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    with pytest.raises(DataError, match="--raw applies to a dataset name"):
        preprocess(str(folder), PreprocessOptions(raw=folder, out=tmp_path / "out"))


def test_an_unknown_name_suggests_the_close_one():
    with pytest.raises(DataError, match=r"'eurlex-4k' is neither .*did you mean eurlex\?") as info:
        preprocess("eurlex-4k")
    assert "amazoncat13k" in info.value.hint


def test_non_utf8_bytes_name_the_line_and_latin1_reads_them(tmp_path):
    folder = write_corpus(tmp_path / "corpus", train=[("plain", "a"), ("café", "b")],
                          encoding="latin-1")
    with pytest.raises(DataError) as info:
        run(folder, tmp_path)
    assert f"{folder / 'train_texts.txt'}:2:" in info.value.message
    assert "--encoding latin-1" in info.value.hint
    data, _ = run(folder, tmp_path, encoding="latin-1")
    assert "café" in data.tokens and data.manifest["options"]["encoding"] == "iso8859-1"


def test_an_empty_training_split_is_an_error(tmp_path):
    folder = write_corpus(tmp_path / "corpus", train=[])
    with pytest.raises(DataError, match="training split is empty"):
        run(folder, tmp_path)


def test_training_labels_all_empty_is_an_error(tmp_path):
    folder = write_corpus(tmp_path / "corpus", train=[("text", ""), ("more", "")])
    with pytest.raises(DataError, match="no line holds a label"):
        run(folder, tmp_path)


def test_a_glove_path_that_does_not_exist(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    with pytest.raises(DataError, match="word-vector file .*missing.txt does not exist"):
        run(folder, tmp_path, glove=tmp_path / "missing.txt")


def test_glove_lines_that_disagree_on_the_dimension(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    glove = tmp_path / "g.txt"
    glove.write_text("the 1 2\ncat 1 2 3\n")
    with pytest.raises(DataError, match=r"g.txt:2: 3 values where the file's vectors have 2"):
        run(folder, tmp_path, glove=glove)


def test_an_existing_folder_that_is_not_processed_data_is_never_replaced(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="is not an earlier output of xmtc"):
        run(folder, tmp_path)
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_an_interrupted_run_leaves_no_folder_that_loads(tmp_path, monkeypatch):
    folder = write_corpus(tmp_path / "corpus")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("xmtc_cli.data.processed.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        run(folder, tmp_path)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]


def test_progress_goes_to_the_callback_and_nothing_is_printed(tmp_path, capsys):
    folder = write_corpus(tmp_path / "corpus")
    messages = []
    preprocess(str(folder), PreprocessOptions(out=tmp_path / "out"), progress=messages.append)
    assert any("train_texts.txt" in m for m in messages)
    assert capsys.readouterr() == ("", "")
    assert preprocess_module.__doc__  # the module documents its choices


# --- label_names.txt and encodings (issue 10.7) -----------------------------------------------

def test_label_names_named_twice_keep_the_first_name_with_a_warning(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    (folder / "label_names.txt").write_text(
        "pets\tPet animals\nfinance\tMoney\n\npets\tDomestic animals\nfinance\tMoney\n")
    data, summary = run(folder, tmp_path)
    assert data.label_names[:3] == ["Pet animals", "animals", "Money"]
    path = folder / "label_names.txt"
    assert summary.warnings == (
        f"{path}: 2 lines name a label again; the first name counts "
        f"('pets' on line 4, first on line 1)",)
    assert data.manifest["stats"]["warnings"] == list(summary.warnings)


def test_names_of_labels_in_no_label_file_are_warned_about(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    path = folder / "label_names.txt"
    path.write_text("pets\tPets\nzoo\tZoo animals\nPETS\tPets again\ncars\tCars\n")
    data, summary = run(folder, tmp_path)
    assert data.label_names == ["Pets", "animals", "finance", "Zoo animals"]  # zoo: a test label
    assert summary.warnings == (f"{path}: 2 of its 4 labels occur in no label file; their names "
                                f"are unused (the first: 'PETS' on line 3)",)
    path.write_text("Pets\tPets\nFinance\tFinance\n")
    _, summary = run(folder, tmp_path)
    assert summary.warnings == (f"{path}: none of its 2 labels occurs in the label files, so no "
                                f"name is used; its first column must hold the labels as "
                                f"train_labels.txt writes them",)


@pytest.mark.parametrize("content, line, why", [
    ("pets\tPets\nPet animals\n", 2, "no tab"),  # a list of names alone
    ("pets Pet animals\n", 1, "no tab"),  # spaces for the tab
    ("\tPets\n", 1, "nothing before the tab"),
    ("pet s\tPets\n", 1, "spaces in the label"),
])
def test_a_label_names_line_without_label_and_tab_shows_the_expected_format(tmp_path, content,
                                                                          line, why):
    folder = write_corpus(tmp_path / "corpus")
    path = folder / "label_names.txt"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        run(folder, tmp_path)
    assert info.value.message.startswith(f"{path}:{line}: expected `label<TAB>readable name`, ")
    assert info.value.message.endswith(f"({why})")
    assert "`money-fx<TAB>Money/Foreign Exchange`" in info.value.hint
    assert not (tmp_path / "out").exists()


def test_a_long_bad_line_is_quoted_short(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    (folder / "label_names.txt").write_text("x" * 5000 + "\n")
    with pytest.raises(DataError) as info:
        run(folder, tmp_path)
    assert len(info.value.message) < len(str(folder)) + 160


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_encodings_whose_newline_is_not_one_byte_read_as_their_utf8_twin(tmp_path, encoding):
    """Lines end at the decoded newline (xmtc_cli.textio), not at the byte 0x0a."""
    wide, _ = run(write_corpus(tmp_path / "wide", encoding=encoding), tmp_path / "a",
                  encoding=encoding)
    plain, _ = run(write_corpus(tmp_path / "plain"), tmp_path / "b")
    assert wide.tokens == plain.tokens and wide.labels == plain.labels
    for name, split in plain.splits.items():
        assert np.array_equal(wide.splits[name].token_ids, split.token_ids)
        assert np.array_equal(wide.splits[name].label_offsets, split.label_offsets)


# --- label embeddings from document centroids (issue 13.1) -----------------------------------

CENTROID_TRAIN: Docs = [
    ("cat dog", "pets"),
    ("dog cat cat", "pets animals"),
    ("stocks bank", "finance"),
    ("zzz", "mystery"),  # no word with a vector: mystery falls back to its name
    ("qqq", "void"),  # nor has void's name: random
    ("cat stocks", "animals"),
]
CENTROID_GLOVE = b"cat 1 0 0\ndog 0 1 0\nstocks 0 0 1\nbank 0 0 2\nkitten 2 2 0\n"


def centroid_corpus(tmp_path: Path) -> tuple[Path, Path]:
    folder = write_corpus(tmp_path / "corpus", train=CENTROID_TRAIN)
    (folder / "label_names.txt").write_text("pets\tkitten\nmystery\tkitten dog\nvoid\tnothing\n")
    glove = tmp_path / "glove.txt"
    glove.write_bytes(CENTROID_GLOVE)
    return folder, glove


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_centroid_label_embeddings_with_name_and_random_fallbacks(tmp_path):
    folder, glove = centroid_corpus(tmp_path)
    data, summary = run(folder, tmp_path, glove=glove, valid_fraction=0.0,
                        label_embeddings="centroid")
    emb = dict(zip(data.labels, data.label_embeddings))
    reps = {"pets": [[.5, .5, 0], [2 / 3, 1 / 3, 0]], "animals": [[2 / 3, 1 / 3, 0], [.5, 0, .5]],
            "finance": [[0, 0, 1.5]]}
    overall = np.mean([[.5, .5, 0], [2 / 3, 1 / 3, 0], [0, 0, 1.5], [.5, 0, .5]], axis=0)
    for label, docs in reps.items():
        np.testing.assert_allclose(emb[label], unit(np.mean(docs, axis=0) - overall), atol=1e-6)
    np.testing.assert_allclose(emb["mystery"], unit([1, 1.5, 0]), atol=1e-6)  # its name, unit
    assert np.all(np.abs(emb["void"]) <= 0.1)
    stats = summary.label_embeddings
    assert (stats.kind, stats.dim, stats.from_centroids, stats.from_names, stats.random) == (
        "centroid", 3, 3, 1, 1)
    assert stats.centroid_docs == 5  # pets 2, animals 2, finance 1
    assert summary.coverage.label_share == pytest.approx(4 / 5)
    assert data.manifest["options"]["label_embeddings"] == "centroid"
    assert data.manifest["options"]["centroid_weighting"] == "uniform"
    assert data.manifest["stats"]["label_embeddings"]["from_centroids"] == 3


def test_names_plus_centroid_is_the_normalised_sum_of_both_normalised(tmp_path):
    folder, glove = centroid_corpus(tmp_path)
    names_only, _ = run(folder, tmp_path, glove=glove, valid_fraction=0.0)
    centroid, _ = run(folder, tmp_path, glove=glove, valid_fraction=0.0,
                      label_embeddings="centroid")
    both, summary = run(folder, tmp_path, glove=glove, valid_fraction=0.0,
                        label_embeddings="names+centroid")
    pets = both.labels.index("pets")
    np.testing.assert_allclose(
        both.label_embeddings[pets],
        unit(unit(names_only.label_embeddings[pets]) + centroid.label_embeddings[pets]), atol=1e-6)
    finance = both.labels.index("finance")  # no name word with a vector: the centroid alone
    np.testing.assert_allclose(both.label_embeddings[finance],
                               centroid.label_embeddings[finance], atol=1e-6)
    stats = summary.label_embeddings
    assert (stats.from_both, stats.from_centroids, stats.from_names, stats.random) == (1, 2, 1, 1)


def test_centroids_use_only_the_training_split_not_the_held_out_part(tmp_path):
    train = [(f"cat doc{i}", "common") for i in range(18)] + [("dog", "rare"), ("stocks", "x")]
    folder = write_corpus(tmp_path / "corpus", train=train)
    glove = tmp_path / "g.txt"
    glove.write_bytes(CENTROID_GLOVE)
    for seed in range(20):  # a seed that holds out rare's only document
        data, summary = run(folder, tmp_path, glove=glove, seed=seed,
                            label_embeddings="centroid")
        valid = data.splits["valid"]
        if any(data.labels[x] == "rare" for i in range(len(valid)) for x in valid.labels(i)):
            break
    else:
        pytest.fail("no seed held out the rare label's document")
    # rare's only document is held out; its name ("rare") has no vector: random, not centroid.
    assert summary.label_embeddings.from_centroids == 2 and summary.label_embeddings.random == 1


def test_tfidf_weighting_changes_centroids_not_the_token_ids(tmp_path):
    folder, glove = centroid_corpus(tmp_path)
    plain, _ = run(folder, tmp_path, glove=glove, label_embeddings="centroid")
    tfidf, _ = run(folder, tmp_path, glove=glove, label_embeddings="centroid",
                   centroid_weighting="tfidf")
    assert tfidf.manifest["options"]["centroid_weighting"] == "tfidf"
    assert not np.allclose(plain.label_embeddings, tfidf.label_embeddings)
    for name, split in plain.splits.items():
        np.testing.assert_array_equal(split.token_ids, tfidf.splits[name].token_ids)
        np.testing.assert_array_equal(split.label_ids, tfidf.splits[name].label_ids)


def test_centroids_without_word_vectors_are_refused_before_reading(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    (folder / "train_texts.txt").write_bytes(b"\xff broken\n")  # never read
    for kind in ("centroid", "names+centroid"):
        with pytest.raises(DataError) as info:
            run(folder, tmp_path, label_embeddings=kind)
        assert info.value.message == f"--label-embeddings {kind} needs word vectors: centroids " \
                                     "are means of them"
        assert "--glove" in info.value.hint


def test_amazon670k_may_take_centroids_but_not_names(tmp_path):
    raw = write_corpus(tmp_path / "raw", train=[("cat dog", "123"), ("stocks", "456"),
                                                ("bank", "456")],
                       test=[("cat", "456")], texts="{split}_raw_texts.txt")
    glove = tmp_path / "g.txt"
    glove.write_bytes(CENTROID_GLOVE + b"123 9 9 9\n")
    out, summary = preprocess("amazon670k", PreprocessOptions(
        raw=raw, out=tmp_path / "out", glove=glove, valid_fraction=0.0,
        label_embeddings="centroid"))
    data = load_processed(out)
    assert data.label_embeddings.shape == (2, 3)
    np.testing.assert_allclose(np.linalg.norm(data.label_embeddings, axis=1), 1, rtol=1e-6)
    assert summary.label_embeddings.from_centroids == 2
    with pytest.raises(DataError, match=r"names\+centroid: the labels of amazon670k are item"):
        preprocess("amazon670k", PreprocessOptions(raw=raw, out=tmp_path / "out2", glove=glove,
                                                   label_embeddings="names+centroid"))


def test_vectors_that_cover_no_training_token_give_a_warning(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    glove = tmp_path / "g.txt"
    glove.write_text("Cat 1 2\nDog 3 4\n")  # cased words: the corpus's never match
    _, summary = run(folder, tmp_path, glove=glove)
    assert summary.coverage.token_share == 0
    assert summary.warnings == (f"{glove} has a vector for none of the training words, so every "
                                "word embedding is random; check the file's language and case "
                                "(GloVe 6B is lower-case: add --lowercase)",)


def test_vectors_that_cover_no_label_name_give_a_warning(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    glove = tmp_path / "g.txt"
    glove.write_text("cat 1 2\n")
    _, summary = run(folder, tmp_path, glove=glove)
    assert len(summary.warnings) == 1 and "no word of any label name" in summary.warnings[0]
    _, summary = run(folder, tmp_path, glove=glove, label_embeddings="centroid")
    assert summary.warnings == ()


def test_options_refuse_unknown_label_embedding_choices():
    with pytest.raises(ValueError, match="label_embeddings must be one of"):
        PreprocessOptions(label_embeddings="mean")
    with pytest.raises(ValueError, match="centroid_weighting must be uniform or tfidf"):
        PreprocessOptions(centroid_weighting="bm25")
