"""The model: every paper variant's shapes and gradients, masks, the conv branch, decoding, and
overfitting a tiny corpus."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmtc_cli.config import LossConfig, ModelConfig
from xmtc_cli.labelspace import EMPTY, EOS, NUM_SPECIALS
from xmtc_cli.losses import build_criterion
from xmtc_cli.model import ModelSizes, build_model, conv_min_length

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (conftest.py)


SIZES = ModelSizes(vocab_size=30, num_labels=7, decode_steps=4, embed_size=6, label_embed_size=5)
V = SIZES.num_outputs


def tiny(kind: str = "matching", **model) -> torch.nn.Module:
    """A small model of the given loss kind; `model` overrides ModelConfig fields."""
    cfg = ModelConfig(**{"hidden_size": 8, "dropout": 0.1, **model})
    loss = LossConfig(kind=kind, ot_weight=8.0 if kind == "matching" else 0.0)
    return build_model(cfg, loss, SIZES)


def ragged_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Documents of lengths 9, 1, 0 and 5 (T = 9, shorter than the conv stack's 52), and gold
    sets of 2, 1, 0 and 3 labels (output indices, padded with -1)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 1, 0, 5])
    src = torch.randint(2, SIZES.vocab_size, (4, 9), generator=g)
    src[torch.arange(9) >= lengths.unsqueeze(1)] = 0
    gold = torch.tensor([[3, 5, -1], [9, -1, -1], [-1, -1, -1], [4, 8, 6]])
    return src, lengths, gold


VARIANTS = list(itertools.product(("matching", "cross-entropy"), (True, False), (None, 16),
                                  (True, False)))


@pytest.mark.parametrize("kind,light_conv,bottleneck,sgm", VARIANTS)
def test_every_variant_trains(kind, light_conv, bottleneck, sgm):
    torch.manual_seed(0)
    model = tiny(kind, light_conv=light_conv, bottleneck=bottleneck, global_embedding=sgm,
                 masked_softmax=sgm)
    src, lengths, gold = ragged_batch()
    logits = model(src, lengths, gold)
    steps = SIZES.decode_steps if kind == "matching" else gold.size(1) + 1
    assert logits.shape == (4, steps, V)
    assert torch.isfinite(logits).all()
    loss, _ = build_criterion(LossConfig(kind=kind, ot_weight=8.0 * (kind == "matching")))(
        logits, gold, model.label_embedding.weight)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for table in (model.encoder.embedding.weight, model.label_embedding.weight):
        assert table.grad.abs().sum() > 0
    model.eval()
    labels, scores = model.generate(src, lengths)
    assert labels.shape == scores.shape and labels.size(0) == 4
    assert labels.size(1) == SIZES.decode_steps or kind == "cross-entropy"
    assert ((scores >= 0) & (scores <= 1)).all()


def test_teacher_forcing_needs_gold():
    src, lengths, _ = ragged_batch()
    with pytest.raises(ValueError, match="gold"):
        tiny("cross-entropy")(src, lengths)


@pytest.mark.parametrize(
    "kind,light_conv", list(itertools.product(("matching", "cross-entropy"), (True, False)))
)
def test_padding_is_invisible(kind, light_conv):
    """A document's logits do not depend on the batch's padding or on what fills it."""
    torch.manual_seed(0)
    model = tiny(kind, light_conv=light_conv, global_embedding=True, masked_softmax=True).eval()
    doc = torch.randint(2, SIZES.vocab_size, (1, 5))
    gold = torch.tensor([[4, 3, -1]])
    alone = model(doc, torch.tensor([5]), gold)
    src = torch.randint(2, SIZES.vocab_size, (2, 70))  # junk in doc's padding region
    src[0, :5] = doc
    together = model(src, torch.tensor([5, 70]), torch.tensor([[4, 3, -1], [5, 6, 7]]))
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("light_conv", (True, False))
def test_empty_documents_read_as_one_pad(light_conv):
    model = tiny(light_conv=light_conv).eval()
    junk = torch.randint(2, SIZES.vocab_size, (2, 3))
    empty = model(junk, torch.tensor([0, 0]))
    torch.testing.assert_close(empty, model(torch.zeros(2, 0, dtype=torch.long),
                                            torch.tensor([0, 0])))
    assert torch.isfinite(empty).all()


@pytest.mark.parametrize("light_conv", (True, False))
def test_keys_projected_once_per_document(light_conv):
    model = tiny(light_conv=light_conv)
    calls = []
    model.attention.U.register_forward_hook(lambda *_: calls.append(1))
    src, lengths, gold = ragged_batch()
    model(src, lengths, gold)
    assert len(calls) == (2 if light_conv else 1)


def test_conv_kernels_are_softmax_normalised():
    conv = tiny(light_conv=True).conv
    for kernel, width in zip(conv.kernels(), ModelConfig().conv_kernels):
        assert kernel.shape == (16, 1, width)  # one kernel per channel of h (2H = 16)
        torch.testing.assert_close(kernel.sum(-1), torch.ones(16, 1))


@pytest.mark.parametrize("kernels,strides", [
    ((3, 7, 15, 30), (1, 1, 1, 3)),
    ((3, 7, 15, 30), (1, 1, 1, 4)),
    ((5,), (2,)),
    ((2, 4, 3), (3, 2, 5)),
])
def test_conv_min_length_is_the_shortest_input_that_convolves(kernels, strides):
    def outputs(length: int) -> int:
        x = torch.zeros(1, 1, length)
        for k, s in zip(kernels, strides):
            if x.size(-1) < k:
                return 0
            x = F.conv1d(x, torch.ones(1, 1, k), stride=s)
        return x.size(-1)

    shortest = next(length for length in range(1, 500) if outputs(length) > 0)
    assert conv_min_length(kernels, strides) == shortest
    if kernels == (3, 7, 15, 30) and strides[-1] == 3:
        assert shortest == 52  # docs/design.md §2


def test_conv_mask_keeps_windows_inside_the_document():
    conv = tiny(light_conv=True).conv  # windows of 52 inputs, 3 apart
    h = torch.rand(3, 60, 16)
    out, valid = conv(h, torch.tensor([60, 52, 1]))
    assert out.shape == (3, 3, 16)  # 60 -> 58 -> 52 -> 38 -> 3
    assert valid.tolist() == [[True, True, True], [True, False, False], [True, False, False]]


@pytest.mark.parametrize("sgm", (True, False))
def test_generate_follows_the_training_path(sgm):
    """Student forcing decodes in training exactly as at inference."""
    torch.manual_seed(0)
    model = tiny(global_embedding=sgm, masked_softmax=sgm).eval()
    src, lengths, _ = ragged_batch()
    logits = model(src, lengths)
    labels, scores = model.generate(src, lengths)
    assert torch.equal(labels, logits.argmax(-1))
    expected = logits.softmax(-1).gather(2, labels.unsqueeze(2)).squeeze(2)
    torch.testing.assert_close(scores, expected)


@pytest.mark.parametrize("kind", ("matching", "cross-entropy"))
def test_masked_softmax_never_repeats_a_label(kind):
    torch.manual_seed(0)
    model = tiny(kind, masked_softmax=True).eval()
    model.decode_steps = 6
    with torch.no_grad():  # a decoder that would otherwise repeat label 3, then 4, ...
        model.output.bias[NUM_SPECIALS:] += 20 - torch.arange(SIZES.num_labels).float()
    src, lengths, _ = ragged_batch()
    labels, _ = model.generate(src, lengths)
    for row in labels.tolist():
        corpus = [x for x in row if x >= NUM_SPECIALS]
        assert len(corpus) == len(set(corpus)) >= 5


def test_cross_entropy_generation_stops_at_eos():
    torch.manual_seed(0)
    model = tiny("cross-entropy").eval()
    model.decode_steps = 8
    src, lengths, _ = ragged_batch()
    labels, scores = model.generate(src, lengths)
    for row, score in zip(labels.tolist(), scores.tolist()):  # untrained: whatever it ends on
        if EOS in row:
            end = row.index(EOS)
            assert all(x == EMPTY for x in row[end + 1:]) and not any(score[end + 1:])
    with torch.no_grad():
        model.output.bias[EOS] += 50  # EOS first: decoding stops at the first end check
    labels, scores = model.generate(src, lengths)
    assert labels.shape == (4, 4)
    assert (labels[:, 0] == EOS).all() and (labels[:, 1:] == EMPTY).all()
    assert (scores[:, 1:] == 0).all()
    with torch.no_grad():
        model.output.bias[EOS] -= 100  # never EOS: all N + 1 steps
    assert model.generate(src, lengths)[0].shape == (4, 9)


def test_sizes_round_trip_through_json():
    sizes = ModelSizes(**json.loads(json.dumps(dataclasses.asdict(SIZES))))
    assert sizes == SIZES
    a = tiny(light_conv=True, bottleneck=16, global_embedding=True).state_dict()
    b = build_model(ModelConfig(hidden_size=8, bottleneck=16, global_embedding=True),
                    LossConfig(), sizes).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_pretrained_embeddings_initialise_the_tables():
    tokens = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    labels = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    model = build_model(ModelConfig(hidden_size=8), LossConfig(), SIZES, tokens, labels)
    source = model.encoder.embedding.weight.detach()
    assert (source[0] == 0).all()  # <pad>
    torch.testing.assert_close(source[1:], torch.from_numpy(tokens[1:]))
    torch.testing.assert_close(model.label_embedding.weight[NUM_SPECIALS:].detach(),
                               torch.from_numpy(labels))
    random_labels = build_model(ModelConfig(hidden_size=8, label_embedding_size=5), LossConfig(),
                                SIZES, tokens, labels)
    assert not torch.equal(random_labels.label_embedding.weight[NUM_SPECIALS:],
                           torch.from_numpy(labels))
    with pytest.raises(ValueError, match="token embeddings"):
        build_model(ModelConfig(hidden_size=8), LossConfig(), SIZES, tokens[:, :4])


# --- overfitting a tiny corpus -------------------------------------------------------------

def overfit(kind: str, scheme: str = "all", light_conv: bool = False, seed: int = 0) -> None:
    """Train on 8 random documents with 1-3 labels each until the decoded sets are the gold."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sizes = ModelSizes(vocab_size=40, num_labels=10, decode_steps=3, embed_size=16,
                       label_embed_size=16)
    lengths = torch.from_numpy(rng.integers(4, 13, size=8))
    src = torch.from_numpy(rng.integers(2, 40, size=(8, 12)))
    src[torch.arange(12) >= lengths.unsqueeze(1)] = 0
    gold_sets = [rng.choice(10, size=rng.integers(1, 4), replace=False) + NUM_SPECIALS
                 for _ in range(8)]
    gold = torch.full((8, 3), -1)
    for i, labels in enumerate(gold_sets):
        gold[i, :len(labels)] = torch.from_numpy(labels)
    loss_cfg = LossConfig(kind=kind, scheme=scheme, ot_weight=8.0 if kind == "matching" else 0)
    model = build_model(ModelConfig(hidden_size=32, encoder_layers=1, dropout=0.0,
                                    light_conv=light_conv), loss_cfg, sizes)
    criterion = build_criterion(loss_cfg)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss, _ = criterion(model(src, lengths, gold), gold, model.label_embedding.weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    labels, _ = model.eval().generate(src, lengths)
    for row, expected in zip(labels.tolist(), gold_sets):
        if kind == "cross-entropy":
            row = row[:row.index(EOS)] if EOS in row else row
        assert {x for x in row if x >= NUM_SPECIALS} == set(expected.tolist())


@pytest.mark.parametrize("scheme,light_conv", [("all", False), ("first-n", False), ("all", True)])
def test_matching_with_transport_overfits(scheme, light_conv):
    overfit("matching", scheme, light_conv)


@pytest.mark.parametrize("light_conv", (False, True))
def test_cross_entropy_overfits(light_conv):
    overfit("cross-entropy", light_conv=light_conv)


@pytest.mark.parametrize("directions,lengths", [(1, [11, 11, 11]), (2, [11, 4, 7, 1, 11]),
                                                (2, [2, 9, 9, 5]), (1, [3, 11, 1])])
def test_written_out_gru_backward_matches_autograd_through_torchs_gru(directions, lengths):
    """_GRULayers (a layer's directions in lockstep, each document over its own length, the
    second direction reading it backwards) against torch.gru one direction and one document
    at a time (autograd's gradients), in float64: the states (zeros past each document), and
    the gradients of the input, both weights and both biases of every direction; ties and a
    one-token document included."""
    from xmtc_cli.model import _GRULayers

    g = torch.Generator().manual_seed(directions + len(lengths))
    batch, steps, width, hidden = len(lengths), 11, 5, 4
    x = torch.randn(batch, steps, width, dtype=torch.float64, generator=g).requires_grad_()
    weights = [(0.5 * torch.randn(directions, *shape, dtype=torch.float64, generator=g))
               .requires_grad_() for shape in ((3 * hidden, width), (3 * hidden, hidden),
                                               (3 * hidden,), (3 * hidden,))]
    upstream = torch.randn(batch, steps, directions * hidden, dtype=torch.float64, generator=g)
    h0 = torch.zeros(1, 1, hidden, dtype=torch.float64)
    expected = torch.zeros(batch, steps, directions * hidden, dtype=torch.float64)
    for d in range(directions):
        for b, n in enumerate(lengths):
            source = x[b : b + 1, :n] if d == 0 else x[b : b + 1, :n].flip(1)
            states = torch.gru(source, h0, [w[d] for w in weights], True, 1, 0.0, True, False,
                               True)[0][0]
            expected[b, :n, d * hidden:(d + 1) * hidden] = states if d == 0 else states.flip(0)
    got = _GRULayers.apply(x, torch.tensor(lengths), *weights, None)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    for a, b in zip(torch.autograd.grad((got * upstream).sum(), [x, *weights]),
                    torch.autograd.grad((expected * upstream).sum(), [x, *weights])):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("length,width,stride", [(20, 5, 1), (20, 5, 3), (21, 5, 3),
                                                  (22, 5, 3), (9, 9, 1), (13, 4, 2)])
def test_depthwise_conv_backward_matches_autograd_through_torchs_conv(length, width, stride):
    """_DepthwiseConv1d against F.conv1d(groups=C) and autograd, in float64, for strides that
    leave 0, 1 or 2 input positions past the last window (the transposed convolution's output
    padding and the kernel gradient's cut)."""
    from xmtc_cli.model import _DepthwiseConv1d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, length, dtype=torch.float64, generator=g).requires_grad_()
    kernel = torch.randn(4, 1, width, dtype=torch.float64, generator=g).requires_grad_()
    expected = F.conv1d(x, kernel, stride=stride, groups=4)
    got = _DepthwiseConv1d.apply(x, kernel, stride)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    upstream = torch.randn(expected.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad((got * upstream).sum(), [x, kernel]),
                    torch.autograd.grad((expected * upstream).sum(), [x, kernel])):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_tanh_through_the_sigmoid_is_torchs_tanh_to_float32_rounding():
    """model.tanh (2σ(2x) - 1 in float32 on the CPU) against torch.tanh in float64 over
    [-30, 30], tiny and subnormal inputs and ±inf: within 3e-7 (a few ulps of 1), exactly ±1
    at the ends, NaN kept; its gradient g (1 - y²) as tanh's. Elsewhere torch.tanh itself."""
    from xmtc_cli.model import tanh

    tiny_values = [0.0, 1e-30, -1e-30, 1e-8, -1e-8, 1e-40, -1e-40]
    x = torch.cat([torch.linspace(-30, 30, 200_001), torch.tensor(tiny_values),
                   torch.tensor([float("inf"), float("-inf")])]).requires_grad_()
    y = tanh(x)
    truth = torch.tanh(x.detach().double())
    assert (y.detach().double() - truth).abs().max() <= 3e-7
    assert y[-2].item() == 1.0 and y[-1].item() == -1.0
    assert torch.isnan(tanh(torch.tensor([float("nan")]))).all()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((y * upstream).sum(), x)
    torch.testing.assert_close(grad.double(), upstream.double() * (1 - truth * truth),
                               atol=1e-6, rtol=0)
    wide = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert torch.equal(tanh(wide), torch.tanh(wide))


def test_attention_through_the_fast_tanh_matches_torchs_tanh(monkeypatch):
    """Attention's context and gradients with model.tanh equal those with torch.tanh to float32
    rounding, on a masked memory."""
    from xmtc_cli import model as model_module

    g = torch.Generator().manual_seed(1)
    attention = model_module.AdditiveAttention(6, 8, 5)
    values = torch.randn(3, 7, 8, generator=g, requires_grad=True)
    query = torch.randn(3, 6, generator=g, requires_grad=True)
    valid = torch.arange(7) < torch.tensor([[7], [3], [1]])
    params = [values, query, *attention.parameters()]

    def run():
        context = attention(query, attention.memory(values, valid))
        return context, torch.autograd.grad((context * context).sum(), params)

    got, got_grads = run()
    monkeypatch.setattr(model_module, "tanh", torch.tanh)
    ref, ref_grads = run()
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_light_conv_takes_the_written_out_backward_in_float32_on_the_cpu(monkeypatch):
    """LightConv's float32 CPU path goes through _DepthwiseConv1d (and agrees with torch's)."""
    from xmtc_cli import model as model_module

    conv = tiny(light_conv=True).conv
    h = torch.randn(2, 60, conv.weights[0].size(0), requires_grad=True)
    lengths = torch.tensor([60, 55])
    calls = []
    real = model_module._DepthwiseConv1d.apply
    monkeypatch.setattr(model_module._DepthwiseConv1d, "apply",
                        lambda *a: calls.append(1) or real(*a))
    got, _ = conv(h, lengths)
    assert len(calls) == len(conv.weights)
    grads = torch.autograd.grad(got.sum(), [h, *conv.weights])
    monkeypatch.setattr(model_module, "depthwise_conv1d",
                        lambda x, k, s: F.conv1d(x, k, stride=s, groups=x.size(1)))
    ref, _ = conv(h, lengths)
    torch.testing.assert_close(got, ref)
    for a, b in zip(grads, torch.autograd.grad(ref.sum(), [h, *conv.weights])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_training_encoder_matches_torchs_packed_gru():
    """The CPU training path (_padded_gru: unpacked, length-reversed, the written-out backward)
    gives the packed nn.GRU's states, last states and gradients on a ragged batch."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from xmtc_cli.model import _padded_gru

    torch.manual_seed(0)
    rnn = torch.nn.GRU(6, 5, 2, batch_first=True, bidirectional=True).train()
    lengths = torch.tensor([9, 1, 4, 6])
    x = torch.randn(4, 9, 6, requires_grad=True)
    upstream = torch.randn(4, 9, 10)
    final_upstream = torch.randn(4, 4, 5)  # (layers * 2, B, H) -> transposed below

    out, last = _padded_gru(rnn, x, lengths)
    packed, last_ref = rnn(pack_padded_sequence(x, lengths, batch_first=True,
                                                enforce_sorted=False))
    ref, _ = pad_packed_sequence(packed, batch_first=True, total_length=9)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(last, last_ref, atol=1e-6, rtol=1e-5)
    params = [x, *rnn.parameters()]
    loss = lambda o, h: (o * upstream).sum() + (h.transpose(0, 1) * final_upstream).sum()  # noqa: E731
    for a, b in zip(torch.autograd.grad(loss(out, last), params),
                    torch.autograd.grad(loss(ref, last_ref), params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _gru_case(seed: int, dtype: torch.dtype, integral: bool = False):
    """A two-direction _GRULayers case: x, lengths, weights (requiring gradients), upstream."""
    g = torch.Generator().manual_seed(seed)
    batch, steps, width, hidden = 5, 9, 16, 8
    lengths = torch.tensor([9, 4, 7, 1, 9])

    def draw(*shape, scale):
        if integral:  # small integers: their products and sums are exact in bf16
            return torch.randint(-2, 3, shape, generator=g).to(dtype)
        return scale * torch.randn(*shape, dtype=dtype, generator=g)

    x = draw(batch, steps, width, scale=1.0).requires_grad_()
    weights = [draw(2, 3 * hidden, width, scale=0.5).requires_grad_(),
               (0.5 * torch.randn(2, 3 * hidden, hidden, dtype=dtype, generator=g))
               .requires_grad_(),
               (0.5 * torch.randn(2, 3 * hidden, dtype=dtype, generator=g)).requires_grad_(),
               (0.5 * torch.randn(2, 3 * hidden, dtype=dtype, generator=g)).requires_grad_()]
    upstream = torch.randn(batch, steps, 2 * hidden, dtype=dtype, generator=g)
    return x, lengths, weights, upstream


def _gru_run(x, lengths, weights, upstream, low):
    from xmtc_cli.model import _GRULayers

    out = _GRULayers.apply(x, lengths, *weights, low)
    return out, torch.autograd.grad((out * upstream).sum(), [x, *weights])


def test_bf16_products_stay_within_bf16_rounding_of_the_float64_gru():
    """With bf16 products (train.cpu_bf16) the written-out GRU's states and every gradient stay
    within bf16's rounding (relative error under 2%) of the float64 computation, and differ
    from the float32 path's (the bf16 products were taken)."""
    x, lengths, weights, upstream = _gru_case(0, torch.float64)
    exact, exact_grads = _gru_run(x, lengths, weights, upstream, None)
    x32, w32, up32 = x.detach().float().requires_grad_(), [
        w.detach().float().requires_grad_() for w in weights], upstream.float()
    low, low_grads = _gru_run(x32, lengths, w32, up32, torch.bfloat16)
    full, full_grads = _gru_run(x32, lengths, w32, up32, None)
    assert low.dtype == torch.float32 and all(g.dtype == torch.float32 for g in low_grads)
    for got, want in zip([low, *low_grads], [exact, *exact_grads]):
        error = (got.double() - want).norm() / want.norm()
        assert error < 2e-2
    assert not torch.equal(low, full)
    assert all(not torch.equal(a, b) for a, b in zip(low_grads[:3], full_grads[:3]))


def test_bf16_products_leave_the_recurrence_in_float32():
    """Operands exact in bf16 whose products and sums are too (small integers for x and W_ih):
    the input's projection is then exact, so the states equal the float32 path's to float32
    rounding (a bf16 recurrence would round them at every step), and so do the biases'
    gradients, which no bf16 product reaches; the weights' gradients do take bf16 products."""
    x, lengths, weights, upstream = _gru_case(1, torch.float32, integral=True)
    low, low_grads = _gru_run(x, lengths, weights, upstream, torch.bfloat16)
    full, full_grads = _gru_run(x, lengths, weights, upstream, None)
    torch.testing.assert_close(low, full, rtol=1e-6, atol=1e-6)
    for a, b in zip(low_grads[3:], full_grads[3:]):  # b_ih, b_hh
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.equal(low_grads[2], full_grads[2])  # W_hh's gradient: bf16 operands


def test_bf16_products_apply_inside_their_context_only():
    """model.bf16_products switches the training path's GRU products for its block alone."""
    from xmtc_cli.model import _padded_gru, bf16_products

    torch.manual_seed(0)
    rnn = torch.nn.GRU(6, 5, 2, batch_first=True, bidirectional=True).train()
    rnn.dropout = 0.0
    x = torch.randn(3, 7, 6, requires_grad=True)
    lengths = torch.tensor([7, 3, 5])
    before = _padded_gru(rnn, x, lengths)[0]
    with bf16_products():
        inside = _padded_gru(rnn, x, lengths)[0]
        with bf16_products(False):
            nested = _padded_gru(rnn, x, lengths)[0]
    after = _padded_gru(rnn, x, lengths)[0]
    assert torch.equal(before, after) and torch.equal(before, nested)
    assert not torch.equal(before, inside)
    torch.testing.assert_close(inside, before, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_each_element_with_probability_one_minus_p_scaled(p):
    """model.dropout (torch.rand's mask on the CPU): every element is 0 or x / (1 - p), kept
    with probability 1 - p (within 5 standard deviations over 200,000 elements, each half of
    the tensor alike), and the gradient is the same mask; outside training, or at p = 0, it is
    the identity."""
    from xmtc_cli.model import dropout

    torch.manual_seed(0)
    x = (torch.rand(400, 500) + 0.5).requires_grad_()  # no zeros of its own
    y = dropout(x, p, True)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    for part in (kept[:200], kept[200:]):
        sigma = (p * (1 - p) * part.numel()) ** 0.5
        assert abs(part.sum().item() - (1 - p) * part.numel()) < 5 * sigma
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, kept.float() / (1 - p))
    assert not torch.equal(kept, dropout(x, p, True) != 0)  # fresh draws each call
    assert torch.equal(dropout(x, p, False), x) and torch.equal(dropout(x, 0.0, True), x)


def test_inter_layer_dropout_leaves_positions_past_a_document_zero():
    """_padded_gru's inter-layer dropout multiplies the padded states (no longer the packed
    rows alone): what it returns past each document stays zero, for the decoder's attention
    and the light-conv branch to read as padding."""
    from xmtc_cli.model import _padded_gru

    torch.manual_seed(0)
    rnn = torch.nn.GRU(6, 5, 2, batch_first=True, bidirectional=True, dropout=0.5).train()
    lengths = torch.tensor([9, 1, 4, 6])
    out, _ = _padded_gru(rnn, torch.randn(4, 9, 6), lengths)
    past = torch.arange(9) >= lengths.unsqueeze(1)  # (B, T)
    assert not out[past].any() and out[~past].abs().min() > 0
