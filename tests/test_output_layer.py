"""The batched output layer and the one-pass decoding against the step-by-step code they replace.

`oracle_forward` and `oracle_generate` are faithful copies of `Seq2SetModel.forward` /
`generate` as they were before the output layer was batched (issue 11): the output layer applied
to each step's features, the per-step logits stacked, the arg-max taken twice per step and the
score read from a full softmax. With dropout 0 the new code must give the same logits, loss,
gradients, labels and scores within float tolerance; benchmarks/bench_output_layer.py times the
two against each other.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from xmtc_cli import checkpoint
from xmtc_cli.checkpoint import CheckpointMeta, save_checkpoint
from xmtc_cli.config import LossConfig, ModelConfig, recipe_from_dict
from xmtc_cli.inference import Predictor, predict_ids
from xmtc_cli.labelspace import BOS, EMPTY, EOS, NUM_SPECIALS
from xmtc_cli.losses import build_criterion
from xmtc_cli.model import Memory, ModelSizes, Seq2SetModel, build_model

# --- the oracle: the step-by-step decoder as it was -----------------------------------------


def oracle_forward(model: Seq2SetModel, src: Tensor, lengths: Tensor,
                   gold: Tensor | None = None) -> Tensor:
    """`Seq2SetModel.forward` before batching: logits [B, S, V], stacked step by step."""
    memories, state = model.encode(src, lengths)
    if not model.teacher_forcing:
        return torch.stack(list(_oracle_decode(model, memories, state, model.decode_steps)), dim=1)
    if gold is None:
        raise ValueError("a cross-entropy model trains with teacher forcing: pass `gold`")
    gold = gold.to(src.device)
    bos = gold.new_full((gold.size(0), 1), BOS)  # (B, 1)
    inputs = torch.cat([bos, gold.masked_fill(gold < 0, EOS)], dim=1)  # (B, M + 1)
    steps = _oracle_decode(model, memories, state, inputs.size(1), inputs)
    return torch.stack(list(steps), dim=1)  # (B, M + 1, V)


@torch.no_grad()
def oracle_generate(model: Seq2SetModel, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """`Seq2SetModel.generate` before: two arg-maxes per step, the score from a full softmax."""
    memories, state = model.encode(src, lengths)
    num_steps = model.decode_steps + 1 if model.teacher_forcing else model.decode_steps
    ended = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)  # (B,)
    labels, scores = [], []
    for t, logits in enumerate(_oracle_decode(model, memories, state, num_steps)):
        label = logits.argmax(dim=-1)  # (B,)
        score = torch.softmax(logits.float(), dim=-1).gather(1, label.unsqueeze(1)).squeeze(1)
        if model.teacher_forcing:
            label = label.masked_fill(ended, EMPTY)
            score = score.masked_fill(ended, 0.0)
            ended = ended | (label == EOS)
        labels.append(label)
        scores.append(score)
        if model.teacher_forcing and t % 4 == 3 and bool(ended.all()):
            break
    return torch.stack(labels, dim=1), torch.stack(scores, dim=1)  # (B, S), (B, S)


def _oracle_decode(model: Seq2SetModel, memories: list[Memory], state: Tensor, num_steps: int,
                   inputs: Tensor | None = None) -> Iterator[Tensor]:
    """`Seq2SetModel.decode` before: the output layer applied to each step, with its gradient."""
    batch = state.size(0)
    table = model.label_embedding.weight  # (V, E_l)
    label = torch.full((batch,), BOS, dtype=torch.long, device=state.device)  # (B,)
    used = torch.zeros(batch, table.size(0), dtype=torch.bool, device=state.device)  # (B, V)
    logits = state.new_zeros(batch, table.size(0)) if model.global_embedding else None
    for t in range(num_steps):
        if inputs is not None:
            label = inputs[:, t]  # (B,)
        emb = model.dropout(model.label_embedding(label))  # (B, E_l)
        if model.global_embedding is not None:
            emb = model.global_embedding(emb, logits, table)  # (B, E_l)
        projected = model.attention.W(state)  # (B, A)
        contexts = [model.attention(state, memory, projected) for memory in memories]
        state = model.cell(torch.cat([emb, *contexts], dim=-1), state)  # (B, H)
        z = torch.cat([state, *contexts, emb], dim=-1)  # (B, Z)
        logits = model.output(model.dropout(z))  # (B, V)
        if model.masked_softmax:
            fed = (label >= NUM_SPECIALS).unsqueeze(1)  # (B, 1)
            used = used.scatter(1, label.unsqueeze(1), fed)  # (B, V)
            logits = logits.masked_fill(used, torch.finfo(logits.dtype).min)
        yield logits
        if inputs is None:
            label = logits.argmax(dim=-1)  # (B,)


# --- the new code against it ----------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (conftest.py)


SIZES = ModelSizes(vocab_size=30, num_labels=9, decode_steps=5, embed_size=6, label_embed_size=5)
SGM = {"none": {}, "masked": {"masked_softmax": True}, "global": {"global_embedding": True},
       "both": {"masked_softmax": True, "global_embedding": True}}


def make(kind: str, light_conv: bool, bottleneck: int | None, sgm: str, dropout: float = 0.0,
         seed: int = 0) -> tuple[Seq2SetModel, torch.nn.Module]:
    """A small model and its loss (matching with OT, or cross-entropy)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden_size=8, dropout=dropout, light_conv=light_conv,
                      bottleneck=bottleneck, **SGM[sgm])
    loss = LossConfig(kind=kind, ot_weight=8.0 if kind == "matching" else 0.0)
    return build_model(cfg, loss, SIZES), build_criterion(loss)


def batch(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Documents of lengths 9, 1, 0, 5 and 7 and gold sets of 2, 1, 0, 3 and 4 labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 1, 0, 5, 7])
    src = torch.randint(2, SIZES.vocab_size, (5, 9), generator=g)
    src[torch.arange(9) >= lengths.unsqueeze(1)] = 0
    gold = torch.tensor([[3, 5, -1, -1], [9, -1, -1, -1], [-1, -1, -1, -1], [4, 8, 6, -1],
                         [11, 7, 3, 10]])
    return src, lengths, gold


def loss_and_grads(model, criterion, forward, src, lengths, gold):
    logits = forward(model, src, lengths, gold)
    loss, _ = criterion(logits, gold, model.label_embedding.weight)
    model.zero_grad()
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters()}


CLOSE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.mark.parametrize("kind,light_conv,bottleneck,sgm,train", list(itertools.product(
    ("matching", "cross-entropy"), (False, True), (None, 16), tuple(SGM), (False, True))))
def test_logits_loss_and_gradients_match_the_step_by_step_oracle(kind, light_conv, bottleneck,
                                                                 sgm, train):
    new, criterion = make(kind, light_conv, bottleneck, sgm)
    old = copy.deepcopy(new)
    new.train(train)
    old.train(train)
    src, lengths, gold = batch()
    logits, loss, grads = loss_and_grads(new, criterion, Seq2SetModel.__call__, src, lengths, gold)
    want_logits, want_loss, want_grads = loss_and_grads(old, criterion, oracle_forward, src,
                                                        lengths, gold)
    torch.testing.assert_close(logits, want_logits, **CLOSE)
    torch.testing.assert_close(loss, want_loss, **CLOSE)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], **CLOSE, msg=name)


@pytest.mark.parametrize("kind,sgm", [("matching", "none"), ("cross-entropy", "none"),
                                      ("matching", "both"), ("cross-entropy", "masked")])
def test_dropout_draws_the_same_masks_as_before(kind, sgm):
    """The dropout masks are drawn in the same order and shapes as the step-by-step code drew
    them, so a seeded training run still sees the same ones."""
    new, criterion = make(kind, True, 16, sgm, dropout=0.3)
    old = copy.deepcopy(new)
    src, lengths, gold = batch()
    torch.manual_seed(1)
    logits, loss, grads = loss_and_grads(new, criterion, Seq2SetModel.__call__, src, lengths, gold)
    torch.manual_seed(1)
    want_logits, want_loss, want_grads = loss_and_grads(old, criterion, oracle_forward, src,
                                                        lengths, gold)
    torch.testing.assert_close(logits, want_logits, **CLOSE)
    torch.testing.assert_close(loss, want_loss, **CLOSE)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], **CLOSE, msg=name)


@pytest.mark.parametrize("kind,light_conv,bottleneck,sgm", list(itertools.product(
    ("matching", "cross-entropy"), (False, True), (None, 16), tuple(SGM))))
def test_generation_matches_the_oracle(kind, light_conv, bottleneck, sgm):
    model, _ = make(kind, light_conv, bottleneck, sgm)
    model.eval()
    model.decode_steps = 7
    src, lengths, _ = batch()
    labels, scores = model.generate(src, lengths)
    want_labels, want_scores = oracle_generate(model, src, lengths)
    assert torch.equal(labels, want_labels)
    torch.testing.assert_close(scores, want_scores, **CLOSE)


def gradient_uses(output: Tensor, parameter: Tensor) -> int:
    """How many edges of the autograd graph of `output` deliver a gradient to `parameter`: the
    number of weight gradients the backward builds and sums."""
    uses, seen, todo = 0, set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            if getattr(child, "variable", None) is parameter:
                uses += 1
            elif child not in seen:
                seen.add(child)
                todo.append(child)
    return uses


@pytest.mark.parametrize("kind,bottleneck,sgm", [
    ("matching", 16, "none"), ("matching", None, "masked"), ("cross-entropy", 16, "none"),
    ("cross-entropy", None, "masked")])
def test_the_output_weight_and_label_table_get_one_gradient_for_all_steps(kind, bottleneck, sgm):
    model, _ = make(kind, False, bottleneck, sgm)
    last = model.output[-1] if bottleneck else model.output
    calls = []
    last.register_forward_hook(lambda module, args, out: calls.append(
        (torch.is_grad_enabled(), tuple(args[0].shape))))
    src, lengths, gold = batch()
    logits = model(src, lengths, gold)
    width = bottleneck or 8 + 16 + 5  # b, or H + C + E_l
    if kind == "matching":  # one arg-max per step, without autograd, and nothing else
        assert calls == [(False, (5, width))] * SIZES.decode_steps
    else:  # teacher forcing: one call on all steps' features
        assert calls == [(True, (5, gold.size(1) + 1, width))]
    assert gradient_uses(logits, last.weight) == gradient_uses(logits, last.bias) == 1
    table = model.label_embedding.weight  # looked up at every step: one dense gradient too
    assert gradient_uses(logits, table) == 1
    before = oracle_forward(model, src, lengths, gold)  # one gradient per step, then summed
    assert gradient_uses(before, last.weight) == gradient_uses(before, table) == logits.size(1)


def test_training_logits_are_those_generation_chose_from():
    """Student forcing returns the very logits each step took its arg-max from."""
    model, _ = make("matching", True, 16, "masked")
    model.eval()
    src, lengths, _ = batch()
    logits = model(src, lengths)
    labels, scores = model.generate(src, lengths)
    assert torch.equal(labels, logits.argmax(-1))
    want = logits.log_softmax(-1).gather(2, labels.unsqueeze(2)).squeeze(2).exp()
    torch.testing.assert_close(scores, want, **CLOSE)


# --- loading a checkpoint -------------------------------------------------------------------


@pytest.mark.parametrize("light_conv,sgm", [(True, "none"), (False, "both")])
def test_a_loaded_predictor_predicts_as_the_saved_model(light_conv, sgm, tmp_path, monkeypatch):
    recipe = recipe_from_dict({"data": {"dir": "x", "max_src_tokens": 9},
                               "model": {"hidden_size": 8, "light_conv": light_conv,
                                         "bottleneck": 16, **SGM[sgm]}})
    torch.manual_seed(0)
    model = build_model(recipe.model, recipe.loss, SIZES).eval()
    meta = CheckpointMeta(recipe=recipe, sizes=SIZES,
                          tokens=[f"w{i}" for i in range(SIZES.vocab_size)],
                          tokenizer={"kind": "whitespace"},
                          labels=[f"l{i}" for i in range(SIZES.num_labels)])
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model.state_dict(), meta)

    loaded_state = {}
    real_load = checkpoint.load_file

    def spy(*args, **kwargs):
        state = real_load(*args, **kwargs)
        loaded_state.update(state)
        return state

    monkeypatch.setattr(checkpoint, "load_file", spy)
    predictor = Predictor.from_checkpoint(str(path), device="cpu")
    # The parameters are the tensors read from the file, not copies into a second model.
    for name, tensor in predictor.model.state_dict().items():
        assert tensor.device.type == "cpu", name
        assert tensor.data_ptr() == loaded_state[name].data_ptr(), name
    src, lengths, _ = batch()
    docs = [row[:n].tolist() for row, n in zip(src, lengths)]
    got = predict_ids(predictor.model, docs, 9, torch.device("cpu"))
    want = predict_ids(model, docs, 9, torch.device("cpu"))
    assert_same_predictions(got, want)
    assert [p.labels for p in got] != [[]] * len(docs)
    texts = [" ".join(f"w{i}" for i in doc) for doc in docs]
    assert_same_predictions(predictor.predict_texts(texts), want)


def assert_same_predictions(got, want) -> None:
    """The same labels; scores equal up to float rounding (the file's tensors sit at other
    addresses than the saved model's, and CPU kernels may sum in another order there)."""
    assert [p.labels for p in got] == [p.labels for p in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.tensor(g.scores), torch.tensor(w.scores),
                                   rtol=1e-5, atol=1e-7)


def test_the_model_has_no_tied_weights_or_unsaved_buffers():
    """Loading assigns the file's tensors by name: two names sharing one parameter would come
    back untied, and a buffer the state dict leaves out would stay on the meta device."""
    for sgm, light_conv in itertools.product(SGM, (False, True)):
        model, _ = make("matching", light_conv, 16, sgm)
        params = list(model.named_parameters(remove_duplicate=False))
        assert len(params) == len({id(p) for _, p in params})
        assert len(list(model.buffers())) == len(
            [n for n in model.state_dict() if n not in dict(model.named_parameters())])


@pytest.mark.parametrize("kind,sgm", [("matching", "none"), ("matching", "masked"),
                                      ("cross-entropy", "none")])
def test_bf16_autocast_gradients_match_the_oracle(kind, sgm):
    """Under autocast the output layer runs in bf16: the gradient is taken in that dtype too,
    as the step-by-step linear layers took it, and reaches the float32 weights as float32."""
    new, criterion = make(kind, False, 16, sgm)
    old = copy.deepcopy(new)
    src, lengths, gold = batch()

    def autocast_forward(forward):
        def run(model, src, lengths, gold):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return forward(model, src, lengths, gold)
        return run

    logits, loss, grads = loss_and_grads(new, criterion, autocast_forward(Seq2SetModel.__call__),
                                         src, lengths, gold)
    want_logits, want_loss, want_grads = loss_and_grads(old, criterion,
                                                        autocast_forward(oracle_forward),
                                                        src, lengths, gold)
    assert logits.dtype == want_logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits, want_logits)
    torch.testing.assert_close(loss, want_loss, rtol=1e-3, atol=1e-3)
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
        torch.testing.assert_close(grad, want_grads[name], rtol=2e-2, atol=1e-3, msg=name)
