"""Side features (beyond the paper, after ViXML): one precomputed embedding per document, from
the raw corpus through preprocess, batches, the model, training, checkpoints, eval and predict.

The behaviour test trains on a corpus whose texts say nothing about the labels and whose
features say everything: with the features the model must learn, without them it cannot.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import threads, write_recipe

from xmtc_cli import distributed
from xmtc_cli.checkpoint import load_checkpoint, read_meta, save_checkpoint
from xmtc_cli.config import LossConfig, ModelConfig, load_recipe
from xmtc_cli.data.batching import Batcher, pad_sources
from xmtc_cli.data.features import read_features
from xmtc_cli.data.processed import load_processed
from xmtc_cli.data.synthetic import FILLER, write_demo_corpus
from xmtc_cli.errors import CheckpointError, DataError
from xmtc_cli.inference import Predictor, decode, encode_texts
from xmtc_cli.model import ModelSizes, build_model
from xmtc_cli.prototypes import init_output_prototypes
from xmtc_cli.training import Trainer, fit, model_sizes, resolve_recipe

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (conftest.py)


def _refused(result, *fragments: str) -> str:
    """The one-line error of a refused command (non-zero exit, no traceback)."""
    assert result.code != 0, (result.code, result.err)
    assert "Traceback" not in result.err and "unexpected" not in result.err, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err
    for fragment in fragments:
        assert fragment in result.err, result.err
    return result.err


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --- preprocess --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_raw(tmp_path_factory) -> Path:
    """A 60 + 12 document demo corpus, without features (tests copy it and add them)."""
    return write_demo_corpus(tmp_path_factory.mktemp("side") / "raw", seed=1, train_docs=60,
                             test_docs=12)


def _corpus(demo_raw: Path, tmp_path: Path, width: int = 3) -> Path:
    """A copy of the demo corpus whose feature rows say which line they belong to: row k of
    a split's file starts with k (test rows negative), then `width - 1` more numbers."""
    raw = tmp_path / "raw"
    shutil.copytree(demo_raw, raw)
    for split, sign in (("train", 1), ("test", -1)):
        docs = len(_lines(raw / f"{split}_texts.txt"))
        rows = np.random.default_rng(0).normal(size=(docs, width))
        rows[:, 0] = sign * np.arange(docs)
        np.save(raw / f"{split}_features.npy", rows)
    return raw


def test_preprocess_keeps_row_k_with_document_k(demo_raw, tmp_path, cli):
    """Every document of train, the held-out valid split and test has the row of its line:
    the oracle is the raw file, matched through the row's line number and the document's words."""
    raw = _corpus(demo_raw, tmp_path)
    result = cli("preprocess", raw, "--out", tmp_path / "p", "--valid-fraction", "0.2")
    assert result.code == 0, result.err
    assert "side features: 3-d" in result.out
    data = load_processed(tmp_path / "p")
    assert data.manifest["features"] == 3 and data.feature_size == 3
    assert "train_features.npy" in data.manifest["sources"]
    seen = []
    for name, split in data.splits.items():
        source = "test" if name == "test" else "train"
        raw_rows = np.load(raw / f"{source}_features.npy")
        texts = _lines(raw / f"{source}_texts.txt")
        assert split.features.dtype == np.float32 and split.features.shape == (len(split), 3)
        for i in range(len(split)):
            line = int(abs(split.features[i, 0]))
            np.testing.assert_array_equal(split.features[i], raw_rows[line].astype(np.float32))
            assert [data.tokens[t] for t in split.tokens(i)] == texts[line].split()
            if source == "train":
                seen.append(line)
    assert sorted(seen) == list(range(60))  # train and valid share the training rows out
    assert len(data.splits["valid"]) == 12


def test_a_shipped_validation_split_brings_its_own_features(demo_raw, tmp_path, cli):
    raw = _corpus(demo_raw, tmp_path)
    for kind in ("texts", "labels"):
        shutil.copy(raw / f"test_{kind}.txt", raw / f"valid_{kind}.txt")
    result = cli("preprocess", raw, "--out", tmp_path / "p")
    _refused(result, "valid_features.npy (or .safetensors) is missing")
    np.save(raw / "valid_features.npy", np.full((12, 3), 7.0))
    assert cli("preprocess", raw, "--out", tmp_path / "p").code == 0
    valid = load_processed(tmp_path / "p").splits["valid"]
    assert (valid.features == 7.0).all() and len(valid) == 12


def test_without_features_nothing_changes(demo_raw, tmp_path, cli):
    assert cli("preprocess", demo_raw, "--out", tmp_path / "p").code == 0
    data = load_processed(tmp_path / "p")
    assert data.manifest["features"] is None and data.feature_size == 0
    assert all(split.features is None for split in data.splits.values())


def _drop(raw: Path, split: str) -> None:
    (raw / f"{split}_features.npy").unlink()


def _rows(raw: Path, split: str, rows: np.ndarray) -> None:
    np.save(raw / f"{split}_features.npy", rows)


@pytest.mark.parametrize("damage, fragments", [
    (lambda raw: _drop(raw, "test"), ["train_features.npy gives side features",
                                      "test_features.npy (or .safetensors) is missing"]),
    (lambda raw: _drop(raw, "train"), ["test_features.npy gives side features",
                                       "train_features.npy (or .safetensors) is missing"]),
    (lambda raw: _rows(raw, "test", np.zeros((11, 3))), ["has 11 rows for 12 documents"]),
    (lambda raw: _rows(raw, "train", np.zeros((61, 3))), ["has 61 rows for 60 documents"]),
    (lambda raw: _rows(raw, "test", np.full((12, 3), np.nan)), ["row 1 (document 1) holds nan"]),
    (lambda raw: _rows(raw, "test", np.zeros((12, 4))),
     ["width 4, the training split's have 3"]),
    (lambda raw: _rows(raw, "valid", np.zeros((6, 3))), ["valid_features.npy gives features of "
                                                         "a validation split"]),
], ids=["no-test", "no-train", "test-rows", "train-rows", "nan", "width", "stray-valid"])
def test_bad_feature_files_are_refused(damage, fragments, demo_raw, tmp_path, cli):
    raw = _corpus(demo_raw, tmp_path)
    damage(raw)
    _refused(cli("preprocess", raw, "--out", tmp_path / "p"), *fragments)
    assert not (tmp_path / "p").exists()


def test_damaged_processed_features_are_refused(demo_raw, tmp_path, cli):
    from safetensors.numpy import load_file, save_file

    raw = _corpus(demo_raw, tmp_path)
    assert cli("preprocess", raw, "--out", tmp_path / "p").code == 0
    test_file = tmp_path / "p" / "test.safetensors"
    arrays = load_file(str(test_file))
    for changed, fragment in (
        ({**arrays, "features": arrays["features"][:-1]}, "features of shape [11, 3]"),
        ({k: v for k, v in arrays.items() if k != "features"}, "no side features"),
    ):
        save_file(changed, str(test_file))
        with pytest.raises(DataError, match="damaged") as info:
            load_processed(tmp_path / "p")
        assert fragment in info.value.message
    save_file(arrays, str(test_file))
    manifest = tmp_path / "p" / "manifest.json"
    content = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**content, "features": 4}))
    with pytest.raises(DataError, match="width 4"):
        load_processed(tmp_path / "p")
    del content["features"]  # as written before side features existed: none
    manifest.write_text(json.dumps(content))
    with pytest.raises(DataError, match="unexpected side features"):
        load_processed(tmp_path / "p")


# --- batches -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def featured_split(demo_raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("featured")
    raw = _corpus(demo_raw, root, width=5)
    from conftest import run_cli

    assert run_cli("preprocess", raw, "--out", root / "p").code == 0
    return load_processed(root / "p").splits["train"]


def test_batches_carry_their_documents_rows(featured_split):
    batcher = Batcher(featured_split, max_src_tokens=10, max_labels=5, num_labels=24)
    picked = np.array([7, 3, 3, 40])
    batch = batcher.batch(picked)
    assert batch.features.dtype == torch.float32
    assert torch.equal(batch.features, torch.from_numpy(featured_split.features[picked]))
    for seed in (None, 5):
        seen = []
        for b in batcher.epoch(8, seed=seed):
            assert torch.equal(b.features, torch.from_numpy(featured_split.features[b.index]))
            seen += b.index.tolist()
        assert sorted(seen) == list(range(len(featured_split)))
    moved = batch.to("meta")
    assert moved.features.device.type == "meta" and moved.features.shape == (4, 5)


@pytest.mark.parametrize("size,world", [(16, 2), (7, 3), (2, 3)])
def test_a_ddp_share_takes_the_rows_of_its_documents(featured_split, size, world):
    batcher = Batcher(featured_split, max_src_tokens=10, max_labels=5, num_labels=24)
    whole = batcher.batch(np.random.default_rng(size).permutation(len(featured_split))[:size])
    for rank in range(world):
        part, standin = distributed.shard(whole, rank, world)
        mine = whole.index[rank::world] if not standin else whole.index[:1]
        assert torch.equal(part.features, torch.from_numpy(featured_split.features[mine]))
        assert torch.equal(part.features, batcher.batch(mine).features)


# --- the model ---------------------------------------------------------------------------------

SIZES = ModelSizes(vocab_size=30, num_labels=7, decode_steps=4, embed_size=6, label_embed_size=5,
                   feature_size=4)


def _model(light_conv: bool = True, feature_size: int = 4, kind: str = "matching"):
    cfg = ModelConfig(hidden_size=8, dropout=0.0, light_conv=light_conv)
    loss = LossConfig(kind=kind, ot_weight=8.0 if kind == "matching" else 0.0)
    return build_model(cfg, loss, dataclasses.replace(SIZES, feature_size=feature_size))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 1, 0, 5])
    src = torch.randint(2, SIZES.vocab_size, (4, 9), generator=g)
    src[torch.arange(9) >= lengths.unsqueeze(1)] = 0
    features = 3 * torch.randn(4, 4, generator=g)
    return src, lengths, features


def test_features_are_required_exactly_by_a_model_built_for_them():
    src, lengths, features = _batch()
    with pytest.raises(ValueError, match="pass `features`"):
        _model()(src, lengths)
    with pytest.raises(ValueError, match="without side features"):
        _model(feature_size=0)(src, lengths, features=features)
    with pytest.raises(ValueError, match=r"expects \(4, 4\)"):
        _model().eval().generate(src, lengths, features[:, :3])


@pytest.mark.parametrize("light_conv", (True, False))
def test_the_features_act_through_the_slot_and_the_start_state_alone(light_conv, monkeypatch):
    """With the feature slot masked out of attention and W_0 f = 0, the model is exactly its
    featureless twin (same weights): the features reach the output through those two paths and
    nowhere else. Either path alone changes the output, and different features change it
    differently."""
    torch.manual_seed(0)
    model = _model(light_conv).eval()
    twin = _model(light_conv, feature_size=0).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("feature_")}
    twin.load_state_dict(state)
    src, lengths, features = _batch()
    plain = twin(src, lengths)
    with_slot = model(src, lengths, features=features)
    other = model(src, lengths, features=features.flip(0))
    assert not torch.allclose(with_slot, plain, atol=1e-3)
    assert not torch.allclose(with_slot, other, atol=1e-3)

    memory = model.attention.memory
    calls = []

    def slot_masked(values, valid):
        calls.append(values.size(1))
        if len(calls) == 1:  # the word-level memory: its last position is the slot
            assert values.size(1) == src.size(1) + 1 and valid[:, -1].all()
            valid = valid.clone()
            valid[:, -1] = False
        return memory(values, valid)

    monkeypatch.setattr(model.attention, "memory", slot_masked)
    start_only = model(src, lengths, features=features)  # the slot masked: s_0's path alone
    assert not torch.allclose(start_only, plain, atol=1e-3)
    assert len(calls) == (2 if light_conv else 1)
    with torch.no_grad():
        model.feature_state.weight.zero_()
        model.feature_state.bias.zero_()
    calls.clear()
    torch.testing.assert_close(model(src, lengths, features=features), plain)


@pytest.mark.parametrize("kind,light_conv", [("matching", True), ("matching", False),
                                             ("cross-entropy", True)])
def test_a_documents_output_does_not_depend_on_its_batch(kind, light_conv):
    torch.manual_seed(0)
    model = _model(light_conv, kind=kind).eval()
    src, lengths, features = _batch(1)
    gold = torch.tensor([[3, 5, -1], [9, -1, -1], [-1, -1, -1], [4, 8, 6]])
    together = model(src, lengths, gold, features)
    labels, scores = model.generate(src, lengths, features)
    for i in range(4):
        width = max(int(lengths[i]), 1)
        alone = model(src[i : i + 1, :width], lengths[i : i + 1], gold[i : i + 1],
                      features[i : i + 1])
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)
        one_labels, one_scores = model.generate(src[i : i + 1, :width], lengths[i : i + 1],
                                                features[i : i + 1])
        assert torch.equal(labels[i, : one_labels.size(1)], one_labels[0])
        torch.testing.assert_close(scores[i, : one_scores.size(1)], one_scores[0], atol=1e-5,
                                   rtol=1e-5)


# --- training on features that carry the labels -------------------------------------------------

LABELS, WIDTH = 12, 16


def write_feature_corpus(folder: Path, train: int = 300, test: int = 60, seed: int = 0) -> Path:
    """Texts of filler words alone; each document's features are the sum of a fixed random
    vector per gold label, plus a little noise. 1 to 3 labels of 12 a document."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    prototypes = rng.normal(size=(LABELS, WIDTH))
    for split, docs in (("train", train), ("test", test)):
        texts, golds, rows = [], [], []
        for _ in range(docs):
            gold = rng.choice(LABELS, size=rng.integers(1, 4), replace=False)
            texts.append(" ".join(rng.choice(FILLER, size=rng.integers(10, 30))))
            golds.append(" ".join(f"label{g}" for g in gold))
            rows.append(prototypes[gold].sum(0) + 0.1 * rng.normal(size=WIDTH))
        (folder / f"{split}_texts.txt").write_text("\n".join(texts) + "\n")
        (folder / f"{split}_labels.txt").write_text("\n".join(golds) + "\n")
        np.save(folder / f"{split}_features.npy", np.asarray(rows, dtype=np.float32))
    return folder


@dataclasses.dataclass(frozen=True)
class FeatureRuns:
    raw: Path
    data: dict[str, Path]  # "with", "without": processed folders
    runs: dict[str, Path]  # run folders of the tiny recipe on each
    valid: dict[str, list[float]]  # validation micro-F1 of every epoch

    def best(self, name: str) -> Path:
        return self.runs[name] / "model.safetensors"


@pytest.fixture(scope="module")
def feature_runs(tmp_path_factory) -> FeatureRuns:
    """The tiny recipe trained 5 epochs on the feature corpus, with and without its features
    (about 4 s and 2 s)."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("feature-runs")
    raw = write_feature_corpus(root / "raw")
    bare = root / "bare"
    shutil.copytree(raw, bare, ignore=shutil.ignore_patterns("*_features.npy"))
    data, runs, valid = {}, {}, {}
    for name, source in (("with", raw), ("without", bare)):
        data[name] = root / f"data-{name}"
        assert run_cli("preprocess", source, "--out", data[name]).code == 0
        recipe = write_recipe(root / f"{name}.yaml", data[name], epochs=5)
        runs[name] = root / f"run-{name}"
        with threads(1):
            result = fit(load_recipe(recipe), runs[name], device="cpu")
        valid[name] = [report.valid["micro_f1"] for report in result.epochs]
    return FeatureRuns(raw, data, runs, valid)


def test_features_that_carry_the_labels_are_learnt(feature_runs):
    """The texts carry no label signal, the features all of it: with them validation micro-F1
    must be far above what the texts alone give (measured: 0.92 against 0.16 at the best
    epoch; 0.87 before the features also entered s_0)."""
    with_, without = max(feature_runs.valid["with"]), max(feature_runs.valid["without"])
    assert with_ > without + 0.30, feature_runs.valid
    assert with_ > 0.6, feature_runs.valid


def test_the_checkpoint_keeps_feature_size_and_predict_matches_generate(feature_runs, tmp_path,
                                                                        cli):
    best = feature_runs.best("with")
    assert read_meta(best).sizes.feature_size == WIDTH
    assert read_meta(feature_runs.best("without")).sizes.feature_size == 0
    texts, rows = feature_runs.raw / "test_texts.txt", feature_runs.raw / "test_features.npy"
    # In process: the whole test split in one batch, straight through generate.
    predictor = Predictor.from_checkpoint(str(best), "cpu")
    docs = encode_texts(_lines(texts), predictor.tokenize, predictor.token_ids)
    src, lengths = pad_sources(docs, predictor.recipe.data.max_src_tokens)
    with torch.no_grad():
        labels, scores = predictor.model.eval().generate(
            src, lengths, torch.from_numpy(np.load(rows)))
    want = [" ".join(predictor.labels[k] for k in p.labels) for p in decode(labels, scores)]
    assert sum(bool(line) for line in want) > 50  # the model does label them
    # The command: batches of 7, each reading its own rows of the file.
    result = cli("predict", best, texts, "--features", rows, "--batch-size", "7",
                 "--device", "cpu", "--label-ids", "--order", "generation")
    assert result.code == 0, result.err
    assert result.out.splitlines() == want
    # A copy of the checkpoint saved again predicts the same.
    state, meta = load_checkpoint(best)
    copy = tmp_path / "copy.safetensors"
    save_checkpoint(copy, state, meta)
    again = cli("predict", copy, texts, "--features", rows, "--device", "cpu", "--label-ids",
                "--order", "generation")
    assert again.out.splitlines() == want


def test_eval_reads_the_splits_features(feature_runs, cli):
    """`eval CHECKPOINT --data` on the validation split gives what training recorded."""
    best = feature_runs.best("with")
    result = cli("eval", best, "--data", feature_runs.data["with"], "--split", "valid",
                 "--json", "--device", "cpu")
    assert result.code == 0, result.err
    recorded = read_meta(best).extra["valid"]["micro_f1"]
    assert json.loads(result.out)["micro_f1"] == pytest.approx(recorded, abs=1e-9)
    _refused(cli("eval", best, "--data", feature_runs.data["without"], "--device", "cpu"),
             "trained with side features of width 16", "has none")
    # A model without side features reads the text of data that has them, and ignores them.
    plain = cli("eval", feature_runs.best("without"), "--data", feature_runs.data["with"],
                "--json", "--device", "cpu")
    assert plain.code == 0, plain.err


def _save(path: Path, rows: np.ndarray) -> Path:
    np.save(path, rows)
    return path


def test_predict_refuses_features_that_do_not_fit(feature_runs, tmp_path, cli):
    best, bare = feature_runs.best("with"), feature_runs.best("without")
    texts, rows = feature_runs.raw / "test_texts.txt", np.load(feature_runs.raw /
                                                               "test_features.npy")
    good = _save(tmp_path / "good.npy", rows)
    cases = [
        ((best, texts), ["trained with side features of width 16", "pass --features"]),
        ((bare, texts, "--features", good), ["trained without side features",
                                             "leave out --features"]),
        ((best, texts, "--features", _save(tmp_path / "few.npy", rows[:59])),
         ["has 59 rows, and the documents go on past line 59"]),
        ((best, texts, "--features", _save(tmp_path / "many.npy", np.concatenate([rows] * 2))),
         ["has 120 rows for 60 documents"]),
        ((best, texts, "--features", _save(tmp_path / "wide.npy", rows[:, :8])),
         ["width 8, the model was trained with 16"]),
        ((best, texts, "--features", _save(tmp_path / "nan.npy", np.where(
            np.arange(60)[:, None] == 41, np.nan, rows))), ["row 42 (document 42) holds nan"]),
        ((best, texts, "--features", tmp_path / "missing.npy"), ["does not exist"]),
        ((best, texts, "--features", "-"), ["cannot read standard input", "save the features"]),
    ]
    for args, fragments in cases:
        out = tmp_path / "out.txt"
        _refused(cli("predict", *args, "--device", "cpu", "--out", out), *fragments)
        assert not out.exists()  # --out is written atomically: nothing of a refused run


class _Evil:
    """Unpickled, it would create the file PWNED in the current folder."""

    def __reduce__(self):
        return (Path.touch, (Path("PWNED"),))


@pytest.mark.parametrize("make, fragment", [
    (lambda p: np.savez(p, features=np.ones((3, 2))), "(a zip archive: .npz?)"),
    (lambda p: p.write_bytes(__import__("pickle").dumps(_Evil())), "is not a .npy file"),
    (lambda p: p.write_text("0.5,0.5\n0.1,0.2\n"), "is not a .npy file"),
    (lambda p: p.write_bytes(b""), "is not a .npy file"),
    (lambda p: p.mkdir(), "is a folder, not a file"),
], ids=["npz", "pickle", "csv", "empty", "folder"])
def test_what_is_not_a_npy_file_is_refused_before_numpy_reads_it(make, fragment, tmp_path,
                                                                  monkeypatch):
    """numpy would take a .npz for an archive (and fail later on .ndim) and anything else for a
    pickle, with a message that suggests allow_pickle: refused as not .npy, never unpickled."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "f.npy"
    make(path)
    if not path.exists():  # np.savez appends .npz
        (tmp_path / "f.npy.npz").rename(path)
    with pytest.raises(DataError) as info:
        read_features(path)
    assert fragment in info.value.message
    assert "allow_pickle" not in info.value.message
    assert not (tmp_path / "PWNED").exists()


def test_a_pipe_is_refused_and_a_float32_overflow_names_its_row(tmp_path, recwarn):
    import os

    fifo = tmp_path / "f.npy"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is a pipe or a device, not a file"):
        read_features(fifo)  # memory-mapped: it must be a file (and opening it would block)
    rows = np.zeros((4, 2))
    rows[2, 1] = 1e300  # finite in float64, inf in float32
    with pytest.raises(DataError, match=r"row 3 \(document 3\) holds nan or inf \(or a number "
                       "beyond float32's range"):
        read_features(_save(tmp_path / "big.npy", rows))
    assert not [w for w in recwarn if "overflow" in str(w.message)]  # no stray warning line


def test_old_checkpoints_read_as_without_features_and_sizes_are_bounded(feature_runs,
                                                                         tmp_path):
    state, meta = load_checkpoint(feature_runs.best("without"))
    sizes = {k: v for k, v in dataclasses.asdict(meta.sizes).items() if k != "feature_size"}
    old = tmp_path / "old.safetensors"
    save_checkpoint(old, state, dataclasses.replace(meta, sizes=sizes))
    assert Predictor.from_checkpoint(str(old), "cpu").feature_size == 0
    huge = tmp_path / "huge.safetensors"
    save_checkpoint(huge, state, dataclasses.replace(meta, sizes={**sizes,
                                                                  "feature_size": 10**6}))
    with pytest.raises(CheckpointError, match="side features of width 1,000,000"):
        read_meta(huge)


def test_prototype_rows_read_the_side_features(feature_runs):
    """model.output_init=prototype runs the new model on each document with its features: the
    rows set differ from those of the same documents with their features zeroed."""
    data = load_processed(feature_runs.data["with"])
    recipe = resolve_recipe(load_recipe(feature_runs.runs["with"] / "recipe.yaml"), data)
    rows = {}
    for name in ("features", "zeros"):
        split = data.splits["train"]
        if name == "zeros":
            split = dataclasses.replace(split, features=np.zeros_like(split.features))
        batcher = Batcher(split, recipe.data.max_src_tokens, recipe.data.max_labels,
                          data.num_labels)
        trainer = Trainer.build(recipe, model_sizes(recipe, data), torch.device("cpu"), 1,
                                data.token_embeddings, data.label_embeddings)
        assert init_output_prototypes(trainer.model, batcher, 32, torch.device("cpu")) == LABELS
        rows[name] = trainer.model.output.weight.detach().clone()
    assert not torch.allclose(rows["features"], rows["zeros"], atol=1e-3)
