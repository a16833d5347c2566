"""Ranked suggestions: each label's best probability over the decoder's steps, checked against
the training forward pass, the rules of `suggest`, and `xmtc predict`'s formats and options."""

from __future__ import annotations

import json

import pytest
import torch

from xmtc_cli.checkpoint import read_meta
from xmtc_cli.inference import Prediction, Predictor, encode_texts, predict_ids
from xmtc_cli.labelspace import NUM_SPECIALS
from xmtc_cli.suggest import rank_needed, suggest

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = ["rocket launch orbit astronaut", "whale dolphin coral reef plankton",
         "mountain summit rope glacier ice", "galaxy telescope star", "ocean wave"]


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_checkpoint(str(tiny_run.best), "cpu")


def test_best_scores_are_the_forward_passes_step_probabilities(predictor):
    """Oracle: in eval mode the training forward pass (student forcing) computes the same step
    logits through another code path; the best score is their softmax's maximum over steps."""
    docs = encode_texts(TEXTS, predictor.tokenize, predictor.token_ids)
    labels = len(predictor.labels)
    preds = predict_ids(predictor.model, docs, 40, torch.device("cpu"), amp=False, rank=labels)
    from xmtc_cli.data.batching import pad_sources
    src, lengths = pad_sources(docs, 40)
    with torch.no_grad():
        logits = predictor.model.eval()(src, lengths)  # (B, N, V)
    want = torch.softmax(logits.float(), dim=-1).amax(dim=1)[:, NUM_SPECIALS:]  # (B, L)
    for b, pred in enumerate(preds):
        got = torch.zeros(labels)
        for k, score in pred.ranked:
            got[k] = score
        assert torch.allclose(got, want[b], atol=1e-6)
        assert [s for _, s in pred.ranked] == sorted((s for _, s in pred.ranked), reverse=True)
        # A generated label's best score is at least the score of the step that produced it,
        # to float32 rounding: the two are exp(o - logsumexp o) and a softmax, a few ulps apart.
        assert all(best >= step - 1e-6 for best, step in zip(pred.best, pred.scores))
        assert pred.best == pytest.approx([want[b, k].item() for k in pred.labels], abs=1e-6)
        # Each step's probabilities add up to 1, so the best scores add up to at most N.
        assert float(want[b].sum()) <= predictor.steps + 1e-5


def test_rank_needed_holds_every_label_at_or_above_the_threshold(predictor):
    docs = encode_texts(TEXTS, predictor.tokenize, predictor.token_ids)
    every = predict_ids(predictor.model, docs, 40, torch.device("cpu"), amp=False,
                        rank=len(predictor.labels))
    for t in (0.9, 0.5, 0.3, 0.2):
        need = rank_needed(0, t, predictor.steps)
        assert need == int(predictor.steps / t)
        for pred in every:
            above = [k for k, score in pred.ranked if score >= t]
            assert len(above) <= need  # so the `need` best hold them all


def _pred() -> Prediction:
    # Labels 0..4; the set {3, 1} in generation order; scores best first.
    return Prediction(labels=[3, 1], scores=[0.5, 0.2], best=[0.6, 0.25],
                      ranked=[(3, 0.6), (0, 0.4), (1, 0.25), (4, 0.1), (2, 0.05)])


LABELS = ["a", "b", "c", "d", "e"]
NAMES = ["A a", "B b", "C c", "D d", "E e"]


def _view(found) -> list[tuple[str, float, bool]]:
    return [(s.label, s.score, s.in_set) for s in found]


def test_suggest_rules_on_a_hand_made_prediction():
    assert _view(suggest(_pred(), LABELS, NAMES)) == [("d", 0.6, True), ("b", 0.25, True)]
    assert suggest(_pred(), LABELS, NAMES)[0].name == "D d"
    assert _view(suggest(_pred(), LABELS, NAMES, top_k=3)) == [
        ("d", 0.6, True), ("a", 0.4, False), ("b", 0.25, True)]
    # K smaller than the set: the set's labels still show.
    assert _view(suggest(_pred(), LABELS, NAMES, top_k=1)) == [("d", 0.6, True), ("b", 0.25, True)]
    assert _view(suggest(_pred(), LABELS, NAMES, top_k=5, min_score=0.25)) == [
        ("d", 0.6, True), ("a", 0.4, False), ("b", 0.25, True)]
    # A threshold makes the set: every label at or above it, generated or not.
    assert _view(suggest(_pred(), LABELS, NAMES, threshold=0.3)) == [
        ("d", 0.6, True), ("a", 0.4, True)]
    assert _view(suggest(_pred(), LABELS, NAMES, top_k=4, generation_order=True)) == [
        ("d", 0.6, True), ("b", 0.25, True), ("a", 0.4, False), ("e", 0.1, False)]
    assert suggest(Prediction([], []), LABELS, NAMES, top_k=3) == []


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_predict_top_k_ranks_names_and_scores(tiny_run, tmp_path, cli):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n"
                            for i, t in enumerate(TEXTS)), encoding="utf-8")
    meta = read_meta(tiny_run.best)
    names = dict(zip(meta.labels, meta.label_names))
    plain = _jsonl(cli("predict", tiny_run.best, docs, "--format", "jsonl").out)
    result = cli("predict", tiny_run.best, docs, "--format", "jsonl", "--top-k", "10")
    assert result.code == 0, result.err
    rows = _jsonl(result.out)
    assert [r["id"] for r in rows] == [f"doc-{i}" for i in range(len(TEXTS))]
    for row, alone in zip(rows, plain):
        scores = [x["score"] for x in row["labels"]]
        assert len(row["labels"]) >= 10 and scores == sorted(scores, reverse=True)
        assert all(names[x["label"]] == x["name"] for x in row["labels"])
        assert [x for x in row["labels"] if x["in_set"]] == alone["labels"]
    cut = cli("predict", tiny_run.best, docs, "--format", "jsonl", "--top-k", "10",
              "--min-score", "0.05")
    for row, full in zip(_jsonl(cut.out), rows):
        assert row["labels"] == [x for x in full["labels"] if x["score"] >= 0.05]
    tsv = cli("predict", tiny_run.best, docs, "--format", "tsv", "--top-k", "3").out.splitlines()
    assert tsv[0] == "id\trank\tlabel\tname\tscore\tin_set"
    first = [line.split("\t") for line in tsv[1:] if line.startswith("doc-0\t")]
    assert [f[1] for f in first] == [str(i) for i in range(1, len(first) + 1)]
    assert first[0][2:4] == [rows[0]["labels"][0]["label"], rows[0]["labels"][0]["name"]]
    text = cli("predict", tiny_run.best, docs).out.splitlines()  # names hold spaces: tabs
    assert text[0].split("\t") == [x["name"] for x in plain[0]["labels"]]


def test_predict_threshold_options(tiny_run, tmp_path, cli):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    ranked = _jsonl(cli("predict", tiny_run.best, docs, "--format", "jsonl", "--top-k",
                        "24").out)
    cut = _jsonl(cli("predict", tiny_run.best, docs, "--format", "jsonl", "--threshold",
                     "0.1").out)
    for row, every in zip(cut, ranked):
        assert [x["label"] for x in row["labels"]] == \
            [x["label"] for x in every["labels"] if x["score"] >= 0.1]
        assert all(x["in_set"] for x in row["labels"])
    for bad in ("0", "1.5", "nan", "high"):
        refused = cli("predict", tiny_run.best, docs, "--threshold", bad)
        assert refused.code == 2 and refused.err.startswith(f"error: --threshold '{bad}'")


def test_documents_as_jsonl_are_checked_line_by_line(tiny_run, tmp_path, cli):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "rocket"}\n{"id": "b", "txt": "x"}\n')
    result = cli("predict", tiny_run.best, docs)
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.startswith(f'error: {docs}:2: no "text"')
    from_stdin = cli("predict", tiny_run.best, "-", "--input", "jsonl", "--format", "jsonl",
                     stdin=b'{"text": "rocket orbit"}\n{"id": 7, "text": ""}\n')
    assert [r["id"] for r in _jsonl(from_stdin.out)] == [1, 7]
