"""Fusion of the lexical scorer with the decoder (model.lexical=knn): greedy decoding against a
step-by-step oracle, and the switch end to end (train, resume, checkpoint, predict, eval)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import write_recipe
from safetensors.torch import load_file
from test_training import StopAfter, assert_same_run

from xmtc_cli.checkpoint import read_meta, save_checkpoint
from xmtc_cli.config import LossConfig, ModelConfig, load_recipe
from xmtc_cli.data.builtin import load_data
from xmtc_cli.errors import CheckpointError, XmtcError
from xmtc_cli.evaluation import evaluate_checkpoint, lexical_prior
from xmtc_cli.inference import Predictor, encode_texts, predict_ids
from xmtc_cli.labelspace import BOS, EMPTY, NUM_SPECIALS
from xmtc_cli.lexical import PREFIX, LexicalIndex, prior_bonus
from xmtc_cli.model import ModelSizes, build_model
from xmtc_cli.training import fit

pytestmark = pytest.mark.usefixtures("single_thread")

LEXICAL = ["model.lexical=knn", "model.lexical_k=5", "model.lexical_centroid=0.5",
           "model.lexical_centroid_terms=8"]
BLEND = {"centroid": 0.5, "centroid_terms": 8}  # LEXICAL's, for the oracles' own index


# --- decoding -------------------------------------------------------------------------------

def small_model(masked: bool, cross_entropy: bool = False):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(hidden_size=8, encoder_layers=1, conv_kernels=(3, 3), masked_softmax=masked),
        LossConfig(kind="cross-entropy", ot_weight=0) if cross_entropy else LossConfig(),
        ModelSizes(vocab_size=30, num_labels=12, decode_steps=6, embed_size=8,
                   label_embed_size=8))
    with torch.no_grad():  # a random model mostly says ∅: make it say labels, and repeat some
        model.last_layer().bias[EMPTY] -= 1.0
        model.last_layer().bias[NUM_SPECIALS + 4] += 2.0
    return model.eval()


def oracle_decode(model, src, lengths, bonus, gate,
                  ranks: list[torch.Tensor] | None = None) -> list[list[int]]:
    """Each document alone, each step recomputed from scratch with the choices so far fed in
    (teacher forcing of the prefix), and the fusion rule applied in plain Python. `ranks`
    receives each document's highest fused probability softmax(logits + bonus) over its steps."""
    out = []
    for b in range(src.size(0)):
        if ranks is not None:
            ranks.append(torch.zeros(bonus.size(1)))
        memories, state = model.encode(src[b : b + 1], lengths[b : b + 1])
        choices, emitted = [], set()
        for t in range(model.decode_steps):
            inputs = torch.tensor([[BOS, *choices]])
            *_, step = model.decode(memories, state, t + 1, inputs)
            logits = model.last_layer()(step.features)[0]
            if model.masked_softmax:
                logits = logits.masked_fill(step.used[0], torch.finfo(logits.dtype).min)
            if ranks is not None:
                ranks[-1] = torch.maximum(ranks[-1], torch.softmax(logits + bonus[b], dim=-1))
            own = int(logits.argmax())
            if own in emitted or (own < NUM_SPECIALS and not gate):
                choices.append(own)
                continue
            first = 0 if gate else NUM_SPECIALS
            fused = {y: float(logits[y]) + float(bonus[b, y])
                     for y in range(first, logits.numel()) if y not in emitted}
            best = max(fused, key=lambda y: (fused[y], -y))
            if best >= NUM_SPECIALS:
                emitted.add(best)
            choices.append(best)
        out.append(choices)
    return out


@pytest.mark.parametrize(("masked", "gate"), [(False, False), (True, False), (False, True)])
def test_fused_greedy_decoding_matches_a_step_by_step_oracle(masked, gate):
    model = small_model(masked)
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(2, 30, (6, 9), generator=gen)
    lengths = torch.tensor([9, 7, 5, 9, 3, 1])
    bonus = torch.rand(6, 15, generator=gen) * 4 * (torch.rand(6, 15, generator=gen) < 0.5)
    bonus[:, :NUM_SPECIALS] = 1.0 if gate else 0  # the fused gate's threshold bonus
    with torch.no_grad():
        labels, _ = model.generate(src, lengths, bonus=bonus, gate=gate)
        expected = oracle_decode(model, src, lengths, bonus, gate)
    assert labels.tolist() == expected
    plain, _ = model.generate(src, lengths)
    assert not torch.equal(plain, labels)  # the prior changed some choices: the test has teeth


@pytest.mark.parametrize("gate", [False, True])
def test_suggestions_rank_by_the_fused_distribution(gate):
    """`best` (what `xmtc predict --top-k` ranks by) is each output's highest probability
    under softmax(logits + bonus) over the fused decode's steps, not the decoder's own."""
    model = small_model(False)
    gen = torch.Generator().manual_seed(2)
    src = torch.randint(2, 30, (5, 8), generator=gen)
    lengths = torch.tensor([8, 6, 4, 8, 2])
    bonus = torch.rand(5, 15, generator=gen) * 6 * (torch.rand(5, 15, generator=gen) < 0.5)
    bonus[:, :NUM_SPECIALS] = 1.0 if gate else 0
    got, expected, plain = [], [], []
    with torch.no_grad():
        model.generate(src, lengths, bonus=bonus, gate=gate, best=got)
        oracle_decode(model, src, lengths, bonus, gate, ranks=expected)
    torch.testing.assert_close(got[0], torch.stack(expected), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        model.generate(src, lengths, best=plain)
    assert not torch.allclose(plain[0], got[0])  # the bonus moved the ranking: the test has teeth


@pytest.mark.parametrize("cross_entropy", [False, True])
def test_a_zero_prior_decodes_exactly_as_the_decoder(cross_entropy):
    model = small_model(False, cross_entropy)
    src = torch.randint(2, 30, (5, 8), generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([8, 6, 4, 2, 8])
    labels, scores = model.generate(src, lengths)
    fused, fused_scores = model.generate(src, lengths, bonus=torch.zeros(5, 15))
    assert torch.equal(labels, fused) and torch.equal(scores, fused_scores)


# --- end to end -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recipe_file(tiny_data, tmp_path_factory):
    return write_recipe(tmp_path_factory.mktemp("lexical") / "tiny.yaml", tiny_data.processed,
                        epochs=2)


@pytest.fixture(scope="module")
def lexical_run(recipe_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("lexical-run") / "run"
    fit(load_recipe(recipe_file, LEXICAL), run, device="cpu")
    return run


def metrics_lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_checkpoint_holds_the_index_and_the_weight_validation_chose(lexical_run,
                                                                        tiny_data):
    data = load_data(str(tiny_data.processed))
    fresh = LexicalIndex.build(data.splits["train"], len(data.tokens), data.num_labels, 5, 2.0,
                               0.2, **BLEND)
    saved = load_file(lexical_run / "model.safetensors")
    for name, tensor in fresh.tensors().items():
        assert torch.equal(saved[name], tensor), name
    best = next(line for line in reversed(metrics_lines(lexical_run)) if line["best"])
    valid = best["valid"]
    tried = {float(k.split("=")[1]): v for k, v in valid.items() if k.startswith("micro_f1_w=")}
    assert sorted(tried) == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert valid["micro_f1"] == max(tried.values()) == tried[valid["lexical_weight"]]
    assert read_meta(lexical_run / "model.safetensors").extra["lexical_weight"] == \
        valid["lexical_weight"]


def test_predict_fuses_with_the_stored_index_and_eval_reproduces_validation(lexical_run,
                                                                            tiny_data):
    predictor = Predictor.from_checkpoint(str(lexical_run / "model.safetensors"), "cpu")
    weight = predictor.lexical_weight
    assert weight > 0  # the tiny corpus gains from its prior; else this test would test nothing
    texts = (tiny_data.raw / "test_texts.txt").read_text(encoding="utf-8").splitlines()
    data = load_data(str(tiny_data.processed))
    fresh = LexicalIndex.build(data.splits["train"], len(data.tokens), data.num_labels, 5, 2.0,
                               0.2, **BLEND)
    docs = encode_texts(texts, predictor.tokenize, predictor.token_ids)
    model, recipe = predictor.model, predictor.recipe
    # The oracle: the fresh index's scores, as the bonus of each document decoded alone.
    scores = fresh.scores_of_docs(docs)
    expected = []
    for i, doc in enumerate(docs):
        src = torch.as_tensor(doc[: recipe.data.max_src_tokens]).unsqueeze(0)
        bonus = prior_bonus(scores[[i]], weight, model.label_embedding.num_embeddings)
        labels, _ = model.generate(src, torch.tensor([src.size(1)]), bonus=bonus)
        seen = []
        for y in labels[0].tolist():
            if y >= NUM_SPECIALS and y not in seen:
                seen.append(y)
        expected.append([y - NUM_SPECIALS for y in seen])
    got = [p.labels for p in predictor.predict_texts(texts)]
    assert got == expected
    plain = [p.labels for p in predict_ids(model, docs, recipe.data.max_src_tokens,
                                           torch.device("cpu"))]
    assert plain != got  # fusion changed some sets
    best = next(line for line in reversed(metrics_lines(lexical_run)) if line["best"])
    metrics = evaluate_checkpoint(lexical_run / "model.safetensors", tiny_data.processed,
                                  "valid", device="cpu")
    assert metrics["micro_f1"] == pytest.approx(best["valid"]["micro_f1"], abs=1e-12)


@pytest.mark.parametrize("gate", [None, 0.1])
def test_every_weight_decoded_from_one_encoding_is_each_weight_decoded_alone(
        lexical_run, tiny_data, gate):
    """predict_ids_by_weight encodes a batch once and decodes it once per weight: the same
    sets, scores and rankings as decoding it alone with each weight (a document without tokens
    included), and validation's metrics for every weight are those of its own decoding."""
    from xmtc_cli.evaluation import evaluate_split
    from xmtc_cli.inference import predict_ids_by_weight, predict_split
    from xmtc_cli.metrics import score_label_sets

    predictor = Predictor.from_checkpoint(str(lexical_run / "model.safetensors"), "cpu")
    model, recipe = predictor.model, predictor.recipe
    data = load_data(str(tiny_data.processed))
    valid = data.splits["valid"]
    docs = [valid.tokens(i) for i in range(len(valid))] + [np.zeros(0, dtype=np.int64)]
    prior = predictor.lexical.scores_of_docs(docs)
    weights = [0.0, 0.25, 1.0, 4.0]
    encodes = []
    real = model.encode
    model.encode = lambda *a, **k: encodes.append(1) or real(*a, **k)
    cpu, tokens = torch.device("cpu"), recipe.data.max_src_tokens
    together = predict_ids_by_weight(model, docs, tokens, cpu, rank=3, prior=prior,
                                     weights=weights, gate=gate)
    assert len(encodes) == 1
    alone = [predict_ids(model, docs, tokens, cpu, rank=3, prior=prior, weight=w, gate=gate)
             for w in weights]
    assert len(encodes) == 1 + len(weights)
    assert together == alone
    assert together[-1][-1] == together[0][-1] and not together[0][-1].labels
    assert len({tuple(tuple(p.labels) for p in preds) for preds in together}) > 1  # fused

    gold = [valid.labels(i).tolist() for i in range(len(valid))]
    split_prior = lexical_prior(predictor.lexical, valid)
    run_recipe = load_recipe(lexical_run / "recipe.yaml")
    run_recipe = dataclasses.replace(run_recipe, model=dataclasses.replace(
        run_recipe.model, lexical_weights=tuple(weights),
        lexical_gate="fused" if gate else "decoder", lexical_threshold=gate or 0.0))
    metrics = evaluate_split(model, data, "valid", run_recipe, cpu, prior=split_prior)
    for w in weights:
        own = predict_split(model, valid, tokens, run_recipe.train.eval_batch_size, cpu,
                            prior=split_prior, weight=w, gate=gate)
        assert metrics[f"micro_f1_w={w:g}"] == score_label_sets(own, gold)["micro_f1"]


def test_the_switch_off_trains_and_predicts_as_the_paper_model(recipe_file, lexical_run,
                                                               tmp_path):
    """The scorer never touches training: a run with it and one weight of 0 ends with the
    weights, metrics and predictions of a run without it."""
    fit(load_recipe(recipe_file, [*LEXICAL, "model.lexical_weights=[0]"]), tmp_path / "zero",
        device="cpu")
    fit(load_recipe(recipe_file), tmp_path / "off", device="cpu")
    zero = load_file(tmp_path / "zero" / "last.safetensors")
    off = load_file(tmp_path / "off" / "last.safetensors")
    assert {k for k in zero if not k.startswith(PREFIX)} == off.keys()
    assert all(torch.equal(zero[k], off[k]) for k in off)
    assert [m["valid"]["micro_f1"] for m in metrics_lines(tmp_path / "zero")] == \
        [m["valid"]["micro_f1"] for m in metrics_lines(tmp_path / "off")]
    # ... and the learnt weights are those of the lexical run: only the choice of w differs.
    fused = load_file(lexical_run / "last.safetensors")
    assert all(torch.equal(fused[k], off[k]) for k in off)


def test_resume_ends_with_the_uninterrupted_lexical_run(recipe_file, lexical_run, tmp_path):
    recipe = load_recipe(recipe_file, LEXICAL)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "run", device="cpu", callback=StopAfter(epoch=1))
    fit(recipe, tmp_path / "run", device="cpu", resume=True)
    assert_same_run(tmp_path / "run", lexical_run)


def test_a_checkpoint_whose_index_disagrees_with_its_recipe_is_refused(lexical_run, tmp_path):
    state = load_file(lexical_run / "model.safetensors")
    meta = read_meta(lexical_run / "model.safetensors")
    path = tmp_path / "bad.safetensors"
    without = {k: v for k, v in state.items() if k != PREFIX + "idf"}
    save_checkpoint(path, without, meta)
    with pytest.raises(CheckpointError, match="lacks lexical.idf"):
        read_meta(path)
    recipe = meta.recipe
    off = dataclasses.replace(meta, recipe=dataclasses.replace(
        recipe, model=dataclasses.replace(recipe.model, lexical="none")))
    save_checkpoint(path, state, off)
    with pytest.raises(CheckpointError, match="does not use"):
        read_meta(path)
    save_checkpoint(path, state, dataclasses.replace(meta, extra={**meta.extra,
                                                                  "lexical_weight": -1}))
    with pytest.raises(CheckpointError, match="lexical_weight"):
        read_meta(path)
    broken = dict(state)
    broken[PREFIX + "docs.indices"] = state[PREFIX + "docs.indices"] + 10**6
    save_checkpoint(path, broken, meta)
    with pytest.raises(CheckpointError, match="damaged lexical index"):
        Predictor.from_checkpoint(str(path), "cpu")


def test_a_weight_search_without_a_validation_split_is_refused(recipe_file, tiny_data,
                                                               tmp_path, monkeypatch):
    import xmtc_cli.training as training

    data = load_data(str(tiny_data.processed))
    no_valid = dataclasses.replace(data, splits={k: v for k, v in data.splits.items()
                                                 if k != "valid"})
    monkeypatch.setattr(training, "load_data", lambda _: no_valid)
    with pytest.raises(XmtcError, match="validation split") as info:
        fit(load_recipe(recipe_file, LEXICAL), tmp_path / "run", device="cpu")
    assert "model.lexical_weights=[" in info.value.hint
    assert not (tmp_path / "run").exists()


def test_the_validation_prior_is_the_index_scores_of_the_split(tiny_data):
    data = load_data(str(tiny_data.processed))
    index = LexicalIndex.build(data.splits["train"], len(data.tokens), data.num_labels, 5, 2.0,
                               0.2, **BLEND)
    valid = data.splits["valid"]
    got = lexical_prior(index, valid).toarray()
    docs = [valid.tokens(i) for i in range(len(valid))]
    np.testing.assert_array_equal(got, index.scores_of_docs(docs).toarray())


def test_the_fused_gate_with_a_fixed_weight_runs_end_to_end(recipe_file, tiny_data, tmp_path):
    """lexical_gate=fused and one weight (no search): the checkpoint keeps that weight, predict
    decodes with the threshold's bonus on the specials, eval reproduces validation."""
    run = tmp_path / "gated"
    fit(load_recipe(recipe_file, [*LEXICAL, "model.lexical_gate=fused",
                                  "model.lexical_threshold=0.3", "model.lexical_weights=[1.5]",
                                  "train.epochs=1"]), run, device="cpu")
    predictor = Predictor.from_checkpoint(str(run / "model.safetensors"), "cpu")
    assert predictor.lexical_weight == 1.5
    texts = (tiny_data.raw / "test_texts.txt").read_text(encoding="utf-8").splitlines()[:12]
    docs = encode_texts(texts, predictor.tokenize, predictor.token_ids)
    scores = predictor.lexical.scores_of_docs(docs)
    model, max_src = predictor.model, predictor.recipe.data.max_src_tokens
    expected = []
    for i, doc in enumerate(docs):
        src = torch.as_tensor(doc[:max_src]).unsqueeze(0)
        bonus = prior_bonus(scores[[i]], 1.5, model.label_embedding.num_embeddings,
                            threshold=0.3)
        labels, _ = model.generate(src, torch.tensor([src.size(1)]), bonus=bonus, gate=True)
        seen = []
        for y in labels[0].tolist():
            if y >= NUM_SPECIALS and y not in seen:
                seen.append(y)
        expected.append([y - NUM_SPECIALS for y in seen])
    assert [p.labels for p in predictor.predict_texts(texts)] == expected
    (line,) = metrics_lines(run)
    metrics = evaluate_checkpoint(run / "model.safetensors", tiny_data.processed, "valid",
                                  device="cpu")
    assert metrics["micro_f1"] == pytest.approx(line["valid"]["micro_f1"], abs=1e-12)
    assert line["valid"]["lexical_weight"] == 1.5 and "micro_f1_w=1.5" in line["valid"]


def test_the_threshold_is_tuned_on_the_fused_sets_and_scores(lexical_run, tiny_data):
    """A lexical checkpoint's threshold is tuned on what predict gives: the record's
    set_micro_f1 is validation's fused micro-F1 (the decoder alone scores otherwise), its
    valid_micro_f1 is what cutting predict's fused ranking at the threshold scores, and the
    batches' slices of the prior do not matter."""
    from xmtc_cli.lexical import gate_threshold
    from xmtc_cli.threshold import MIN_THRESHOLD, micro_f1, tune

    data = load_data(str(tiny_data.processed))
    valid = data.splits["valid"]
    predictor = Predictor.from_checkpoint(str(lexical_run / "model.safetensors"), "cpu")
    assert predictor.lexical_weight > 0
    recipe = predictor.recipe
    fused = {"prior": lexical_prior(predictor.lexical, valid),
             "weight": predictor.lexical_weight, "gate": gate_threshold(recipe.model)}
    args = (predictor.model, valid, recipe.data.max_src_tokens)
    rest = (torch.device("cpu"), False, predictor.steps, len(predictor.labels))
    # tune keeps a record only where a threshold beats the set: compare its parts directly.
    records = [tune(*args, size, *rest, **fused) for size in (3, len(valid))]
    assert records[0] == records[1]
    gold = [set(valid.labels(i).tolist()) for i in range(len(valid))]
    docs = [valid.tokens(i) for i in range(len(valid))]
    preds = predict_ids(predictor.model, docs, recipe.data.max_src_tokens, torch.device("cpu"),
                        False, rank=len(predictor.labels), **fused)
    best = next(line for line in reversed(metrics_lines(lexical_run)) if line["best"])
    assert micro_f1([p.labels for p in preds], gold) == pytest.approx(best["valid"]["micro_f1"])
    alone = predict_ids(predictor.model, docs, recipe.data.max_src_tokens, torch.device("cpu"),
                        False)
    assert micro_f1([p.labels for p in alone], gold) != pytest.approx(
        best["valid"]["micro_f1"])  # the decoder alone: another score, so the above can fail
    assert records[0] is not None  # this tiny run's fused sets are poor; a cut beats them
    cut = records[0]["threshold"]
    assert records[0]["set_micro_f1"] == pytest.approx(best["valid"]["micro_f1"])
    kept = [[k for k, score in p.ranked if score >= max(cut, MIN_THRESHOLD)] for p in preds]
    assert micro_f1(kept, gold) == pytest.approx(records[0]["valid_micro_f1"])
    # and training stored it: `xmtc predict --threshold tuned` uses it
    assert read_meta(lexical_run / "model.safetensors").extra["threshold"] == records[0]
