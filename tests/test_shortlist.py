"""The training step's shortlist softmax (train.shortlist, xmtc_cli.shortlist): the candidates
are what they claim, logits over them are the full logits' columns, a shortlist holding every
label trains as the full softmax does, a run with one resumes bit for bit, and the lexical
scorer's hard negatives (train.shortlist_hard) are each document's best-scored wrong labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import write_recipe
from safetensors.torch import load_file

from xmtc_cli.config import ConfigError, load_recipe, recipe_from_dict
from xmtc_cli.data.batching import Batch
from xmtc_cli.data.processed import load_processed
from xmtc_cli.labelspace import GOLD_PAD, NUM_SPECIALS
from xmtc_cli.lexical import LexicalIndex
from xmtc_cli.model import ModelSizes
from xmtc_cli.shortlist import (
    LexicalNegatives,
    UniformNegatives,
    hard_negatives,
    to_candidates,
)
from xmtc_cli.training import Trainer, fit

pytestmark = pytest.mark.usefixtures("single_thread")

V = 40  # output indices: 37 labels and the specials
GOLD = torch.tensor([[5, 9, GOLD_PAD], [9, 30, 12], [GOLD_PAD, GOLD_PAD, GOLD_PAD]])


def test_candidates_are_the_specials_the_gold_labels_and_k_distinct_negatives():
    source = UniformNegatives(k=6, seed=0)
    cand = source.candidates(GOLD, V, step=3)
    assert cand[:NUM_SPECIALS].tolist() == list(range(NUM_SPECIALS))
    rest = cand[NUM_SPECIALS:].tolist()
    assert len(set(rest)) == len(rest) == 4 + 6
    assert {5, 9, 12, 30} <= set(rest)
    assert all(NUM_SPECIALS <= c < V for c in rest)
    assert torch.equal(cand, source.candidates(GOLD, V, step=3))  # (seed, step) decide
    assert not torch.equal(cand, source.candidates(GOLD, V, step=4))


def test_a_shortlist_longer_than_the_labels_is_every_output_in_order():
    assert torch.equal(UniformNegatives(k=1000, seed=0).candidates(GOLD, V, 0), torch.arange(V))


def test_without_hard_negatives_the_lexical_source_draws_as_the_uniform_one():
    none = torch.full((5, 3), -1, dtype=torch.long)
    docs = np.array([0, 3, 4])
    for k, step in [(6, 0), (6, 7), (1, 2), (1000, 1)]:
        assert torch.equal(LexicalNegatives(none, k, seed=2).candidates(GOLD, V, step, docs),
                           UniformNegatives(k, seed=2).candidates(GOLD, V, step))


def test_hard_negatives_come_first_by_rank_then_uniform_draws_fill_k():
    # Document rows (output indices, -1 past the last): 9 and 30 are gold in the batch.
    ranked = torch.tensor([[20, 9, 21, 22],
                           [23, 20, 24, -1],
                           [30, 25, 26, 27]])
    docs = np.array([0, 1, 2])
    by_rank = [20, 23, 25, 21, 24, 26, 22, 27]  # first choices, then second ones, ...
    positives = {5, 9, 12, 30}
    for k in (1, 3, 8, 12):
        cand = LexicalNegatives(ranked, k, seed=0).candidates(GOLD, V, 3, docs)
        assert cand[:NUM_SPECIALS].tolist() == list(range(NUM_SPECIALS))
        rest = cand[NUM_SPECIALS:].tolist()
        assert rest == sorted(rest) and len(set(rest)) == len(rest) == len(positives) + k
        assert positives <= set(rest)
        negatives = set(rest) - positives
        assert set(by_rank[:k]) <= negatives  # the best-ranked, as many as fit
        if k <= len(by_rank):
            assert negatives == set(by_rank[:k])
    # Only the batch's documents' rows count.
    cand = LexicalNegatives(ranked, 2, seed=0).candidates(GOLD, V, 3, np.array([1]))
    assert set(cand[NUM_SPECIALS:].tolist()) - positives == {23, 20}
    with pytest.raises(ValueError, match="document positions"):
        LexicalNegatives(ranked, 2, seed=0).candidates(GOLD, V, 3)


def test_hard_negatives_are_each_documents_best_scored_wrong_labels(tiny_data):
    data = load_processed(tiny_data.processed)
    train = data.splits["train"]
    index = LexicalIndex.build(train, len(data.tokens), data.num_labels, k=3, power=2.0,
                               centroid=0.5, centroid_terms=5)
    per_doc = 4
    table = hard_negatives(index, per_doc, chunk=3).numpy()  # chunks cut mid-split
    scores = index.scores(index.docs).toarray()  # the oracle: dense rows, sorted by hand
    assert table.shape == (len(train), per_doc)
    found = 0
    for doc in range(len(train)):
        gold = set(train.labels(doc).tolist())
        ranked = sorted((-scores[doc, label], label) for label in range(data.num_labels)
                        if scores[doc, label] > 0 and label not in gold)
        want = [label + NUM_SPECIALS for _, label in ranked[:per_doc]]
        want += [-1] * (per_doc - len(want))
        assert table[doc].tolist() == want, doc
        found += len(ranked) > 0
    assert found > len(train) // 2  # the oracle had labels to find


def test_a_trainer_asked_for_hard_negatives_without_them_refuses():
    recipe = recipe_from_dict({"data": {"dir": "unused", "max_labels": 4},
                               "train": {"shortlist": 5, "shortlist_hard": 2}})
    sizes = ModelSizes(vocab_size=30, num_labels=V - NUM_SPECIALS, decode_steps=4, embed_size=6,
                       label_embed_size=5)
    with pytest.raises(ValueError, match="hard negatives"):
        Trainer.build(recipe, sizes, torch.device("cpu"), total_steps=10)
    ranked = torch.full((3, 2), -1, dtype=torch.long)
    trainer = Trainer.build(recipe, sizes, torch.device("cpu"), total_steps=10,
                            hard_negatives=ranked)
    assert isinstance(trainer.shortlist, LexicalNegatives) and trainer.shortlist.k == 5


def test_hard_negatives_need_a_shortlist():
    for hard, match in [(3, "train.shortlist=K"), (-1, "shortlist_hard must be >= 0")]:
        with pytest.raises(ConfigError, match=match):
            recipe_from_dict({"data": {"dir": "x"}, "train": {"shortlist_hard": hard}})


def test_gold_labels_map_to_their_positions_among_the_candidates():
    cand = UniformNegatives(k=5, seed=1).candidates(GOLD, V, 0)
    mapped = to_candidates(GOLD, cand, V)
    for b in range(GOLD.size(0)):
        for m in range(GOLD.size(1)):
            g = GOLD[b, m].item()
            want = GOLD_PAD if g == GOLD_PAD else cand.tolist().index(g)
            assert mapped[b, m].item() == want


def _trainer(teacher: bool, shortlist: int | None = None) -> Trainer:
    method = {"loss": {"kind": "cross-entropy", "ot_weight": 0}} if teacher else {}
    recipe = recipe_from_dict({
        "data": {"dir": "unused", "max_labels": 4},
        "model": {"hidden_size": 8, "encoder_layers": 1, "conv_kernels": [2, 2],
                  "dropout": 0.0},
        "train": {"shortlist": shortlist, "lr": 1e-2},
        **method,
    })
    sizes = ModelSizes(vocab_size=30, num_labels=V - NUM_SPECIALS, decode_steps=4, embed_size=6,
                       label_embed_size=5)
    return Trainer.build(recipe, sizes, torch.device("cpu"), total_steps=100)


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    src = torch.randint(2, 30, (3, 9), generator=g)
    return Batch(src, torch.tensor([9, 5, 7]), GOLD.clone(), None)


@pytest.mark.parametrize("teacher", [True, False])
def test_logits_over_candidates_are_the_full_layers_columns_and_the_choice_is_among_them(
        teacher):
    model = _trainer(teacher).model.eval()
    batch = _batch()
    cand = UniformNegatives(k=4, seed=0).candidates(GOLD, V, 0)
    with torch.no_grad():
        memories, state = model.encode(batch.src, batch.lengths)
        inputs = None
        if teacher:
            inputs = torch.cat([torch.ones(3, 1, dtype=torch.long),
                                GOLD.masked_fill(GOLD < 0, 2)], 1)
        steps = list(model.decode(memories, state, 4 if inputs is None else 4, inputs, cand))
        last = model.last_layer()
        for step in steps:
            full = last(step.features)  # (B, V)
            if step.logits is not None:
                torch.testing.assert_close(step.logits, full[:, cand])
            if step.choice is not None:  # student forcing: the best candidate, as an index
                assert torch.equal(step.choice, cand[full[:, cand].argmax(-1)])
        out = model(batch.src, batch.lengths, batch.gold, None, cand)
        assert out.size(-1) == len(cand)


@pytest.mark.parametrize("teacher", [True, False])
def test_a_shortlist_of_every_label_trains_as_the_full_softmax(teacher):
    full, every = _trainer(teacher), _trainer(teacher, shortlist=10_000)
    for step in range(3):
        a, _ = full.step(_batch(), step)
        b, _ = every.step(_batch(), step)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(full.model.named_parameters(), every.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_a_short_shortlist_gives_gradient_to_the_candidates_rows_only():
    trainer = _trainer(False, shortlist=2)
    cand = trainer.shortlist.candidates(GOLD, V, 0)
    batch = _batch()
    gold = to_candidates(GOLD, cand, V)
    logits = trainer.model(batch.src, batch.lengths, None, None, cand)
    loss, _ = trainer.criterion(logits, gold, trainer.model.label_embedding.weight[cand])
    loss.backward()
    grad = trainer.model.last_layer().weight.grad  # (V, F)
    touched = set(torch.nonzero(grad.abs().sum(1)).flatten().tolist())
    assert touched <= set(cand.tolist()) and len(touched) > NUM_SPECIALS


def test_the_global_embedding_refuses_a_shortlist():
    with pytest.raises(ConfigError, match="train.shortlist"):
        recipe_from_dict({"data": {"dir": "x"}, "model": {"global_embedding": True},
                          "train": {"shortlist": 5}})


class _StopAfterEpoch:
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_start(self, info): ...
    def on_step(self, epoch, step, docs, loss): ...
    def on_validate(self, done, total): ...

    def on_epoch_end(self, report):
        if report.epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("hard", [0, 2])
def test_a_shortlist_run_learns_and_resumes_to_the_same_weights(tiny_data, tmp_path, hard,
                                                                 monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", tiny_data.processed, epochs=3),
                         ["train.shortlist=4", f"train.shortlist_hard={hard}"])
    asked = []  # the batches LexicalNegatives chose for: every step's, with hard negatives
    choose = LexicalNegatives.candidates
    monkeypatch.setattr(LexicalNegatives, "candidates",
                        lambda self, *args: asked.append(args[3]) or choose(self, *args))
    whole = fit(recipe, tmp_path / "whole", device="cpu")
    losses = [e.train_loss for e in whole.epochs]
    assert losses[-1] < losses[0]
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "parts", device="cpu", callback=_StopAfterEpoch(1))
    fit(recipe, tmp_path / "parts", device="cpu", resume=True)
    a, b = load_file(tmp_path / "whole" / "last.safetensors"), load_file(
        tmp_path / "parts" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert dataclasses.asdict(recipe.train)["shortlist"] == 4
    assert bool(asked) == (hard > 0) and all(docs is not None for docs in asked)
