"""PSP@k and PSnDCG@k through `xmtc_cli.evaluation` and `xmtc eval`: which training counts and
which N they use, the dataset defaults of A and B, and the CLI options."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from xmtc_cli.data.processed import load_processed
from xmtc_cli.errors import DataError
from xmtc_cli.evaluation import (
    label_file_inverse_propensities,
    training_documents,
    training_inverse_propensities,
)
from xmtc_cli.metrics import METRIC_KEYS, PS_METRIC_KEYS, inverse_propensities, score_label_sets

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_counts_cover_the_training_file_so_n_does_too(tiny_data):
    data = load_processed(tiny_data.processed)
    assert data.manifest["options"]["valid_from"] == "held-out"
    train, valid = data.splits["train"], data.splits["valid"]
    # label_counts were taken before the validation split was held out of the training file:
    # N must count those documents as well, or rare labels would weigh too little.
    both = np.concatenate([train.label_ids, valid.label_ids])
    assert data.label_counts.tolist() == np.bincount(both, minlength=len(data.labels)).tolist()
    assert training_documents(data) == len(train) + len(valid) == 200


def test_a_separate_validation_file_is_not_counted(tiny_data):
    data = load_processed(tiny_data.processed)
    options = {**data.manifest["options"], "valid_from": "valid_texts.txt"}
    separate = dataclasses.replace(data, manifest={**data.manifest, "options": options})
    assert training_documents(separate) == len(data.splits["train"])


def test_processed_data_and_its_raw_training_labels_give_the_same_weights(tiny_data):
    data = load_processed(tiny_data.processed)
    by_id = training_inverse_propensities(data)
    by_name = training_inverse_propensities(data, keys="names")
    from_file = label_file_inverse_propensities(tiny_data.raw / "train_labels.txt")
    assert by_name == from_file and by_name.unseen == from_file.unseen
    assert by_id == {i: by_name[label] for i, label in enumerate(data.labels)}
    assert by_id == inverse_propensities(data.label_counts, 200, 0.55, 1.5)


def test_label_ids_score_as_label_names(tiny_data):
    """The training loop scores label ids with id-keyed weights; `eval` scores names."""
    data = load_processed(tiny_data.processed)
    part = data.splits["valid"]
    rng = np.random.default_rng(0)
    gold = [part.labels(i).tolist() for i in range(len(part))]
    predicted = [rng.permutation(g + rng.integers(0, data.num_labels, 3).tolist()).tolist()[:4]
                 for g in gold]
    by_id = score_label_sets(predicted, gold, inv_propensity=training_inverse_propensities(data))
    names = [[data.labels[k] for k in doc] for doc in predicted]
    gold_names = [[data.labels[k] for k in doc] for doc in gold]
    by_name = score_label_sets(names, gold_names,
                               inv_propensity=training_inverse_propensities(data, keys="names"))
    assert {k: by_id[k] for k in PS_METRIC_KEYS} == {k: by_name[k] for k in PS_METRIC_KEYS}
    assert 0 < by_id["psp@5"] < 1


@pytest.mark.parametrize("dataset, a, b", [
    ("amazoncat13k", 0.6, 2.6), ("amazon670k", 0.6, 2.6), ("eurlex", 0.55, 1.5),
])
def test_a_and_b_follow_the_dataset_unless_given(tiny_data, dataset, a, b):
    data = load_processed(tiny_data.processed)
    data = dataclasses.replace(data, manifest={**data.manifest, "dataset": dataset})
    counts, n = data.label_counts, training_documents(data)
    assert training_inverse_propensities(data) == inverse_propensities(counts, n, a, b)
    assert training_inverse_propensities(data, a=0.5, b=0.4) == \
        inverse_propensities(counts, n, 0.5, 0.4)
    # One given, the other from the dataset.
    assert training_inverse_propensities(data, b=1.0) == inverse_propensities(counts, n, a, 1.0)


def test_unusable_counts_are_a_data_error(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("a\nb\n")  # two documents: the formula needs three
    with pytest.raises(DataError, match="at least 3 training documents") as info:
        label_file_inverse_propensities(path)
    assert info.value.hint


# --- the CLI ---------------------------------------------------------------------------------

def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    """Predictions, gold and training labels whose PSP@k can be worked out by hand."""
    # 10 training documents: a in 9, b in 1, c in none (c occurs only in the test gold).
    train = write(tmp_path / "train.txt", "a b\n" + "a\n" * 8 + "\n")
    pred = write(tmp_path / "pred.txt", "a c\nb a a\n\n")
    gold = write(tmp_path / "gold.txt", "a c\nb\n\n")
    return pred, gold, train


def test_eval_files_with_training_labels(files, cli):
    pred, gold, train = files
    result = cli("eval", "--predictions", pred, "--gold", gold, "--train-labels", train, "--json")
    assert result.code == 0, result.err
    got = json.loads(result.out)
    assert set(got) == set(METRIC_KEYS) | set(PS_METRIC_KEYS)
    w = inverse_propensities({"a": 9, "b": 1}, 10)  # c: a count of 0
    assert w["c"] > w["b"] > w["a"]
    # d0: gold {a, c}, ranked [a c]: best order c, a. d1: gold {b}, ranked [b a]. d2: nothing.
    assert got["psp@1"] == pytest.approx((w["a"] + w["b"]) / (w["c"] + w["b"]))
    assert got["psp@3"] == pytest.approx(1.0)
    d2 = 1 / np.log2(3)
    dcg, ideal = w["a"] + w["c"] * d2, w["c"] + w["a"] * d2
    # Each over its document's binary ideal DCG: 1 + d2 for d0, 1 for d1 (gaining w_b of w_b).
    assert got["psndcg@3"] == pytest.approx(
        (dcg / (1 + d2) + w["b"]) / (ideal / (1 + d2) + w["b"]))
    # A and B change the weights.
    other = json.loads(cli("eval", "--predictions", pred, "--gold", gold, "--train-labels", train,
                           "--propensity-a", "0.6", "--propensity-b", "2.6", "--json").out)
    w = inverse_propensities({"a": 9, "b": 1}, 10, 0.6, 2.6)
    assert other["psp@1"] == pytest.approx((w["a"] + w["b"]) / (w["c"] + w["b"]))
    assert other["psp@1"] != got["psp@1"]


def test_eval_files_without_training_labels_has_no_ps_metrics(files, cli):
    pred, gold, _ = files
    got = json.loads(cli("eval", "--predictions", pred, "--gold", gold, "--json").out)
    assert set(got) == set(METRIC_KEYS)


def test_the_table_shows_the_ps_rows(files, cli):
    pred, gold, train = files
    result = cli("eval", "--predictions", pred, "--gold", gold, "--train-labels", train)
    assert result.code == 0, result.err
    for row in ("PSP@1", "PSP@5", "PSnDCG@3", "100.00"):
        assert row in result.out


@pytest.mark.parametrize("args", [
    ["--propensity-a", "0.6"],  # no --train-labels to count
    ["--propensity-b", "-1", "--train-labels", "t.txt"],
])
def test_propensity_options_that_cannot_apply(files, args, cli):
    pred, gold, _ = files
    result = cli("eval", "--predictions", pred, "--gold", gold, *args)
    assert result.code == 2 and result.out == ""


def test_a_b_of_zero_is_refused_cleanly(files, cli):
    pred, gold, train = files
    result = cli("eval", "--predictions", pred, "--gold", gold, "--train-labels", train,
                 "--propensity-b", "0")
    assert result.code == 1 and result.out == ""
    assert "A >= 0 and B > 0" in result.err and "hint: " in result.err


def test_train_labels_do_not_go_with_a_checkpoint(tiny_run, tiny_data, files, cli):
    result = cli("eval", tiny_run.best, "--data", tiny_data.processed, "--train-labels", files[2])
    assert result.code == 2 and result.err.startswith("error: ")


def test_eval_checkpoint_takes_a_and_b(tiny_run, tiny_data, tmp_path, cli):
    """CHECKPOINT --data weighs labels as the raw training labels do, with any A and B."""
    predictions = tmp_path / "predictions.txt"
    assert cli("predict", tiny_run.best, tiny_data.raw / "test_texts.txt", "--out",
               predictions, "--label-ids", "--order", "generation").code == 0
    options = ("--propensity-a", "0.6", "--propensity-b", "2.6", "--json")
    from_checkpoint = json.loads(cli("eval", tiny_run.best, "--data", tiny_data.processed,
                                     *options).out)
    from_files = json.loads(cli("eval", "--predictions", predictions, "--gold",
                                tiny_data.raw / "test_labels.txt", "--train-labels",
                                tiny_data.raw / "train_labels.txt", *options).out)
    assert {k: from_checkpoint[k] for k in PS_METRIC_KEYS} == \
        {k: from_files[k] for k in PS_METRIC_KEYS}  # exactly: the same sums in the same order
    assert 0 < from_checkpoint["psp@1"] < 1


def test_the_help_states_the_dataset_defaults(cli):
    result = cli("eval", "--help")
    assert result.code == 0
    text = " ".join(result.out.replace("│", " ").split())
    assert "0.6 when --data is amazoncat13k or amazon670k" in text
    assert "2.6 when --data is amazoncat13k or" in text
