"""The OTSeq2Set network (docs/design.md §2, paper §2.2) and the Seq2Seq/SGM baselines.

A bidirectional GRU reads the document; a GRU decoder emits one distribution over the output
labels per step, attending (Bahdanau) to the encoder states and, with the lightweight-convolution
branch, to a convolved copy of them. The loss decides how the decoder is fed: its own arg-max for
exactly N steps (matching loss, "student forcing") or the gold labels (cross-entropy baselines,
"teacher forcing", greedy until EOS at inference).

Shape legend:
    B   batch                      T   source tokens (padded)      T'  conv-branch positions
    N   decoding steps             M   gold labels (padded)        S   steps of one decode
    V   output labels (corpus labels + 3 specials, see labelspace.py)
    H   hidden size                C   context width, 2H           A   attention width (= H)
    E   token embedding width      E_l label embedding width
    D   side-feature width (ModelSizes.feature_size)
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.overrides import TorchFunctionMode

from xmtc_cli import blocked
from xmtc_cli.config import LossConfig, ModelConfig
from xmtc_cli.data.vocab import PAD_ID
from xmtc_cli.labelspace import BOS, EMPTY, EOS, NUM_SPECIALS


@dataclass(frozen=True)
class ModelSizes:
    """The sizes that come from the data; saved in the checkpoint to rebuild the model."""

    vocab_size: int
    """Source tokens, <pad>=0 and <unk>=1 included."""
    num_labels: int
    """Corpus labels L; the decoder predicts over V = L + 3 outputs."""
    decode_steps: int
    """N: decoding steps of the set models; the cross-entropy baselines stop at EOS within N+1.
    The recipe's data.max_labels (not train.max_steps, which counts optimiser steps)."""
    embed_size: int = 300
    """E: token embedding width (the pretrained vectors' width when there are some)."""
    label_embed_size: int = 300
    """E_l: label embedding width."""
    feature_size: int = 0
    """D: width of the side features each document comes with (beyond the paper, after ViXML;
    docs/design.md §2); 0: none."""

    @property
    def num_outputs(self) -> int:
        """V: corpus labels plus the special symbols."""
        return self.num_labels + NUM_SPECIALS


def build_model(
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    sizes: ModelSizes,
    token_embeddings: np.ndarray | Tensor | None = None,
    label_embeddings: np.ndarray | Tensor | None = None,
) -> Seq2SetModel:
    """Map a recipe and the data's sizes to a model, initialised from pretrained vectors if given.

    `token_embeddings` [vocab_size, E] initialise the source embedding; `label_embeddings`
    [num_labels, E_l] the rows of the corpus labels in the label embedding (ignored when the
    recipe asks for random ones with `model.label_embedding_size`). Pass neither to rebuild a
    model whose weights a checkpoint will load.
    """
    model = Seq2SetModel(
        vocab_size=sizes.vocab_size,
        num_outputs=sizes.num_outputs,
        embed_size=sizes.embed_size,
        label_embed_size=sizes.label_embed_size,
        hidden_size=model_cfg.hidden_size,
        encoder_layers=model_cfg.encoder_layers,
        dropout=model_cfg.dropout,
        conv_kernels=model_cfg.conv_kernels if model_cfg.light_conv else None,
        conv_last_stride=model_cfg.conv_last_stride,
        bottleneck=model_cfg.bottleneck,
        global_embedding_tau=(
            model_cfg.global_embedding_tau if model_cfg.global_embedding else None
        ),
        masked_softmax=model_cfg.masked_softmax,
        teacher_forcing=loss_cfg.kind == "cross-entropy",
        decode_steps=sizes.decode_steps,
        feature_size=sizes.feature_size,
    )
    with torch.no_grad():
        if token_embeddings is not None:
            table = model.encoder.embedding.weight
            table.copy_(_as_table(token_embeddings, tuple(table.shape), "token embeddings"))
            table[PAD_ID] = 0  # <pad> reads as zeros, as nn.Embedding(padding_idx=0) starts it
        if label_embeddings is not None and model_cfg.label_embedding_size is None:
            table = model.label_embedding.weight[NUM_SPECIALS:]  # corpus labels; specials random
            table.copy_(_as_table(label_embeddings, tuple(table.shape), "label embeddings"))
    return model


def _as_table(values: np.ndarray | Tensor, shape: tuple[int, ...], what: str) -> Tensor:
    table = torch.as_tensor(values, dtype=torch.float32)
    if tuple(table.shape) != shape:
        raise ValueError(f"{what} have shape {tuple(table.shape)}, the model expects {shape}")
    return table


class Encoder(nn.Module):
    """Reads the source tokens with a stacked bidirectional GRU (docs/design.md §2 Encoder)."""

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int,
                 dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size, padding_idx=PAD_ID)
        # Words without a pretrained vector start U(-0.1, 0.1) (docs/design.md §2).
        with torch.no_grad():
            self.embedding.weight.uniform_(-0.1, 0.1)
            self.embedding.weight[PAD_ID] = 0
        self.dropout = nn.Dropout(dropout)
        self.rnn = nn.GRU(embed_size, hidden_size, num_layers, batch_first=True,
                          bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.bridge = nn.Linear(2 * hidden_size, hidden_size)  # W_s

    def forward(self, src: Tensor, lengths: Tensor,
                start: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """src [B, T], lengths [B] (CPU, in 1..T) -> states h [B, T, C] (zeros past each
        document) and the decoder's start state s_0 [B, H]; `start` [B, H] is added inside
        s_0's tanh (the side features' share of it)."""
        x = dropout(self.embedding(src), self.dropout.p, self.training)  # (B, T, E)
        # cuDNN reads packed sequences natively, and without autograd the CPU's packed GRU is
        # the faster one (no padding computed); training on the CPU avoids it (_padded_gru).
        if x.is_cuda or not (torch.is_grad_enabled() and x.requires_grad):
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, last = self.rnn(packed)  # last: (layers * 2, B, H), in the batch's order
            h, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        else:
            h, last = _padded_gru(self.rnn, x, lengths)  # (B, T, C), (layers * 2, B, H)
        # s_0 = tanh(W_s [h_fwd_last ; h_bwd_last]) of the top layer (docs/design.md §2).
        s0 = self.bridge(torch.cat([last[-2], last[-1]], dim=-1))  # (B, H)
        s0 = torch.tanh(s0 if start is None else s0 + start.to(s0.dtype))  # (B, H)
        return h, s0


def _padded_gru(rnn: nn.GRU, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """What `rnn` returns for x packed by `lengths`, computed on padded tensors (CPU).

    x [B, T, E], lengths [B] (CPU, in 1..T) -> out [B, T, C] (zeros past each document) and the
    last states [layers * 2, B, H]. On the CPU, torch runs a packed GRU one step at a time on
    slices of the projected input, and the backward of every slice writes a zero tensor of the
    whole input: quadratic in T (most of a training step at T = 200, worse at 1000). Here each
    layer runs its two directions in lockstep with the module's own weights (`_bidirectional`),
    the backward direction reading each document reversed within its length, so padding never
    reaches a real position. Inter-layer dropout multiplies the padded states, whose zeros
    past each document stay zeros: the real positions' distribution is nn.GRU's.
    """
    batch = x.size(0)
    hidden = rnn.hidden_size
    finals = []
    first = torch.arange(batch, device=x.device)
    last = (lengths - 1).to(x.device)  # (B,): each document's last position
    for layer in range(rnn.num_layers):
        weights = [[getattr(rnn, f"{name}_l{layer}{suffix}")
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                   for suffix in ("", "_reverse")]
        x = _bidirectional(x, lengths, weights, rnn.training)  # (B, T, 2H)
        # The forward direction ends at the last position, the backward one at the first.
        finals += [x[first, last, :hidden], x[:, 0, hidden:]]  # (B, H) each
        if rnn.training and rnn.dropout > 0 and layer < rnn.num_layers - 1:
            x = dropout(x, rnn.dropout, True)  # zeros past each document stay zeros
    return x, torch.stack(finals)  # (B, T, C), (layers * 2, B, H)


def _written_out_applies(*tensors: Tensor) -> bool:
    """Whether the functions written out here (`_GRULayers`, `_DepthwiseConv1d`, `_Tanh`)
    take over from torch's: float32 tensors on the CPU, outside autocast (elsewhere torch's
    own kernels, cuDNN's among them, are the ones to use)."""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not torch.is_autocast_enabled("cpu"))


# The dtype of _GRULayers' products over all positions at once; None: float32 (bf16_products).
_PRODUCTS: ContextVar[torch.dtype | None] = ContextVar("xmtc_gru_products", default=None)


@contextlib.contextmanager
def bf16_products(enabled: bool = True) -> Iterator[None]:
    """Inside, when `enabled`, the written-out GRU (`_GRULayers`) takes its products over all
    positions at once in bf16 with float32 sums: the input's projection, and in the backward
    the gradients of the input and of both weights. The step-by-step recurrence and every other
    operation stay float32 (train.cpu_bf16, docs/design.md §12). Meant for CPUs that compute
    bf16 natively (`device.cpu_has_native_bf16`); elsewhere bf16 products are emulated and
    slower."""
    token = _PRODUCTS.set(torch.bfloat16 if enabled else None)
    try:
        yield
    finally:
        _PRODUCTS.reset(token)


def _bidirectional(x: Tensor, lengths: Tensor, weights: list[list[Tensor]],
                   training: bool) -> Tensor:
    """One bidirectional GRU layer from a zero state: x [B, T, in] (each document's first
    `lengths` positions), weights (W_ih, W_hh, b_ih, b_hh) of the forward then the backward
    direction -> [B, T, 2H], the forward direction's states then the backward one's (which
    reads each document from its last position to its first), zeros past each document.
    `_GRULayers` where it applies (float32 on the CPU, biases), else torch's own GRU on the
    input and on its reversal."""
    if all(len(w) == 4 for w in weights) and _written_out_applies(x):
        return _GRULayers.apply(x, lengths, *[torch.stack(parts) for parts in zip(*weights)],
                                _PRODUCTS.get())
    batch, width = x.shape[:2]
    lengths = lengths.to(x.device)
    steps = torch.arange(width, device=x.device)  # (T,)
    valid = (steps < lengths.unsqueeze(1)).unsqueeze(2)  # (B, T, 1)
    # Reverses each document within its length; positions past it stay where they are.
    reverse = torch.where(valid.squeeze(2), lengths.unsqueeze(1) - 1 - steps, steps)  # (B, T)
    h0 = x.new_zeros(1, batch, weights[0][1].size(1))
    forward, backward = [
        torch.gru(source, h0, w, len(w) == 4, 1, 0.0, training, False, True)[0]
        for source, w in zip([x, x.gather(1, reverse.unsqueeze(2).expand_as(x))], weights)]
    backward = backward.gather(1, reverse.unsqueeze(2).expand_as(backward))  # (B, T, H)
    return torch.cat([forward, backward], dim=2).masked_fill(~valid, 0.0)


class _GRULayers(torch.autograd.Function):
    """A GRU layer's D directions (2; 1 reads forwards only): torch.gru's math run in
    lockstep from a zero state over each document's own length, the second direction reading
    it backwards, with a backward written out (docs/design.md §12).

    x [B, T, in], lengths [B] (CPU, in 1..T), W_ih [D, 3H, in], W_hh [D, 3H, H], b_ih,
    b_hh [D, 3H], `low` (None, or bf16 for `bf16_products`) -> states [B, T, D H] (direction d
    in columns d H .. (d + 1) H), zeros past each document. Gates in torch's order (reset r,
    update z, new n):
    r, z = σ(W_i x_t + b_i + W_h h_{t-1} + b_h),
    n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn)), h_t = n + z ⊙ (h_{t-1} - n).

    As a packed sequence does, the documents are sorted by length and step t computes only
    the n_t documents still running, so no padding is computed (a quarter of TIBKAT-core's
    batches at 200 tokens). Every tensor is kept packed, [D, Σ n_t, .], step t's rows one
    contiguous block whose first rows continue the previous block's; a direction's packed
    rows are read from x, and written to the output, through its own map to the positions
    b T + t of the (B, T) layout (t counted from the end for the backward direction), so no
    reversed copy of x or of the states is made. A step is one batched product with W_hh and
    four element-wise operations for both directions; autograd through torch's GRU records a
    dozen per step and direction and takes the weights' gradient one step at a time. The
    backward runs the recurrence with three operations a step and takes the gradients of
    W_ih, W_hh, the biases and x once, for all steps. The same sums as torch's up to the
    order of float rounding. With `low`, the products over all positions (the input's share,
    the gradients of x, W_ih and W_hh) take bf16 operands and sum in float32; the recurrence's
    products stay float32.
    """

    @staticmethod
    def forward(ctx, x: Tensor, lengths: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                b_hh: Tensor, low: torch.dtype | None) -> Tensor:
        batch, width, size = x.shape
        layers, hidden = w_hh.size(0), w_hh.size(2)
        order = torch.argsort(lengths, descending=True, stable=True)  # (B,)
        steps = torch.arange(width)
        sorted_lengths = lengths[order]
        running = steps.unsqueeze(1) < sorted_lengths.unsqueeze(0)  # (T, B), row t: n_t first
        counts = running.sum(1)
        counts = counts[counts > 0].tolist()  # n_t, for t < the longest document
        offsets = [0]
        for n in counts:
            offsets.append(offsets[-1] + n)
        # Packed row -> the position b T + t of x's (B, T) layout that each direction reads
        # at its step t, and -> the packed row of the same document at t - 1 in
        # [h_0 = 0; states] (0 at t = 0).
        start = order.unsqueeze(0) * width  # (1, B)
        rows = torch.stack([(start + steps.unsqueeze(1))[running],
                            (start + sorted_lengths.unsqueeze(0) - 1 - steps.unsqueeze(1))
                            [running]][:layers])  # (D, N)
        total = rows.size(1)
        block = torch.arange(batch).expand(width, batch)[running]  # (N,), rank in its step
        starts = torch.tensor([0] + offsets[:-2]).repeat_interleave(torch.tensor(counts))
        previous = torch.where(torch.arange(total) < counts[0], 0, starts + block + 1)
        packed = x.reshape(batch * width, size).index_select(0, rows.flatten())
        packed = packed.view(layers, total, size)  # (D, N, in)
        # The input's share of every step at once: (D, N, 3H).
        if low is None:
            gi = torch.baddbmm(b_ih.unsqueeze(1), packed, w_ih.transpose(1, 2))
        else:  # packed and W_ih stay bf16 for the backward's products
            packed, w_ih = packed.to(low), w_ih.to(low)
            gi = torch.bmm(packed, w_ih.transpose(1, 2)).float().add_(b_ih.unsqueeze(1))
        gh = x.new_empty(layers, total, 3 * hidden)  # W_h h_{t-1} + b_h
        rz = x.new_empty(layers, total, 2 * hidden)
        new = x.new_empty(layers, total, hidden)
        states = x.new_empty(layers, total, hidden)
        w_hh_t, b_hh, two = w_hh.transpose(1, 2), b_hh.unsqueeze(1), 2 * hidden
        h = x.new_zeros(layers, counts[0], hidden)
        for begin, n in zip(offsets, counts):
            at, h = slice(begin, begin + n), h[:, :n]
            g = torch.baddbmm(b_hh, h, w_hh_t, out=gh[:, at])  # (D, n, 3H)
            gates = torch.add(gi[:, at, :two], g[..., :two], out=rz[:, at]).sigmoid_()
            n_t = torch.addcmul(gi[:, at, two:], gates[..., :hidden], g[..., two:],
                                out=new[:, at]).tanh_()
            h = torch.lerp(n_t, h, gates[..., hidden:], out=states[:, at])  # n + z (h - n)
        ctx.save_for_backward(packed, rows, previous, w_ih, w_hh, states, rz, new, gh)
        ctx.blocks, ctx.shape, ctx.low = list(zip(offsets, counts)), (batch, width, size), low
        out = x.new_zeros(batch * width, layers * hidden)
        for d in range(layers):
            out[:, d * hidden:(d + 1) * hidden].index_copy_(0, rows[d], states[d])
        return out.view(batch, width, layers * hidden)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # grad: (B, T, D H)
        packed, rows, previous, w_ih, w_hh, states, rz, n, gh = ctx.saved_tensors
        batch, width, size = ctx.shape
        layers, hidden = w_hh.size(0), w_hh.size(2)
        flat = grad.reshape(batch * width, layers * hidden)
        grad = torch.stack([flat[:, d * hidden:(d + 1) * hidden].index_select(0, rows[d])
                            for d in range(layers)])  # (D, N, H)
        before = torch.cat([states.new_zeros(layers, 1, hidden), states], 1)
        before = before.index_select(1, previous)  # h_{t-1} of every packed row
        r, z = rz[..., :hidden], rz[..., hidden:]  # (D, N, H) each
        # Each step's gradients are dh ⊙ these factors, which do not depend on it, for all
        # steps at once: the pre-activations of r (through n), z, and n's hidden part.
        to_new = (1 - n * n).mul_(1 - z)  # dL/d(n's pre-activation) = dh ⊙ this
        factors = n.new_empty(*n.shape[:2], 3, hidden)
        torch.mul(to_new, gh[..., 2 * hidden:], out=factors[..., 0, :]).mul_(r).mul_(1 - r)
        torch.sub(before, n, out=factors[..., 1, :]).mul_(z).mul_(1 - z)
        torch.mul(to_new, r, out=factors[..., 2, :])
        d_state = torch.empty_like(n)  # dL/dh_t, all paths
        d_hidden = n.new_empty(*n.shape[:2], 3 * hidden)  # of W_h h_{t-1} + b_h
        blocks = ctx.blocks
        last = slice(blocks[-1][0], None)
        d_state[:, last] = grad[:, last]
        for (start, count), (earlier, running) in zip(blocks[:0:-1], blocks[-2::-1]):
            at, dh = slice(start, start + count), d_state[:, start:start + count]
            torch.mul(dh.unsqueeze(2), factors[:, at],
                      out=d_hidden[:, at].view(layers, count, 3, hidden))
            # dL/dh_{t-1}: its own gradient + dh ⊙ z + d_hidden W_hh for the documents still
            # running at t; its own gradient alone for those that ended at t - 1.
            kept = slice(earlier, earlier + count)
            torch.baddbmm(torch.addcmul(grad[:, kept], dh, z[:, at]), d_hidden[:, at], w_hh,
                          out=d_state[:, kept])
            if count < running:
                ended = slice(earlier + count, earlier + running)
                d_state[:, ended] = grad[:, ended]
        start, count = blocks[0]
        torch.mul(d_state[:, :count].unsqueeze(2), factors[:, :count],
                  out=d_hidden[:, :count].view(layers, count, 3, hidden))
        d_new = d_state.mul_(to_new)  # n's input share
        d_gates = d_hidden[..., : 2 * hidden]  # r's and z's input shares equal their hidden
        grads = [None] * 7
        low = ctx.low
        if low is not None:  # bf16_products: the input's shares as one bf16 tensor
            d_input = torch.cat([d_gates, d_new], dim=2).to(low)  # (D, N, 3H)
        if ctx.needs_input_grad[0]:  # both directions read the same x: their shares add up
            if low is None:
                d_x = (torch.bmm(d_gates, w_ih[:, : 2 * hidden])
                       .baddbmm_(d_new, w_ih[:, 2 * hidden:]))
            else:
                d_x = torch.bmm(d_input, w_ih).float()  # W_ih saved in bf16
            grads[0] = (d_x.new_zeros(batch * width, size)
                        .index_add_(0, rows.flatten(), d_x.view(-1, size))
                        .view(batch, width, size))
        if ctx.needs_input_grad[2]:  # (D, 3H, in)
            if low is None:
                grads[2] = torch.cat([d_gates.transpose(1, 2) @ packed,
                                      d_new.transpose(1, 2) @ packed], dim=1)
            else:
                grads[2] = torch.bmm(d_input.transpose(1, 2), packed).float()
        if ctx.needs_input_grad[3]:  # (D, 3H, H)
            if low is None:
                grads[3] = d_hidden.transpose(1, 2) @ before
            else:
                grads[3] = torch.bmm(d_hidden.to(low).transpose(1, 2), before.to(low)).float()
        if ctx.needs_input_grad[4]:
            grads[4] = torch.cat([d_gates.sum(1), d_new.sum(1)], dim=1)  # (D, 3H)
        if ctx.needs_input_grad[5]:
            grads[5] = d_hidden.sum(1)
        return tuple(grads)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """F.dropout(x, p, training): each element kept with probability 1 - p and scaled by
    1 / (1 - p). On the CPU in float32 the mask is torch.rand(...) >= p, about 4x faster there
    than the bernoulli_ draws of F.dropout (docs/design.md §12): the same distribution, other
    random numbers."""
    if not training or not 0 < p < 1 or not _written_out_applies(x):
        return F.dropout(x, p, training)
    return x * torch.rand_like(x).ge_(p).mul_(1 / (1 - p))


def tanh(x: Tensor) -> Tensor:
    """torch.tanh(x), as 2σ(2x) - 1 where that is faster (`_Tanh`: float32 on the CPU)."""
    return _Tanh.apply(x) if _written_out_applies(x) else torch.tanh(x)


class _Tanh(torch.autograd.Function):
    """tanh(x) = 2σ(2x) - 1, with tanh's own backward g (1 - y²) (docs/design.md §12).

    torch's CPU tanh is accurate to an ulp and slow: 2.1 ms over attention's [32, 200, 128]
    energies, where its sigmoid takes 0.3 ms; every decoding step takes one or two (the LC
    branch's). Through the sigmoid the whole is ~0.6 ms, and differs from tanh by at most a
    few float32 ulps of 1 (2e-7), far below what attention's softmax can tell apart.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.mul(x, 2).sigmoid_().mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def depthwise_conv1d(x: Tensor, kernel: Tensor, stride: int) -> Tensor:
    """F.conv1d(x, kernel, stride=stride, groups=C) for x [B, C, T] and kernel [C, 1, k]:
    `_DepthwiseConv1d` where it applies (float32 on the CPU), else torch's own."""
    if _written_out_applies(x, kernel):
        return _DepthwiseConv1d.apply(x, kernel, stride)
    return F.conv1d(x, kernel, stride=stride, groups=x.size(1))


class _DepthwiseConv1d(torch.autograd.Function):
    """A depth-wise 1-D convolution whose backward is two more convolutions (docs/design.md
    §12). torch's CPU backward of a grouped convolution took 15-30 ms at [32, 256, 200] where
    the forward takes 2: the input's gradient is the transposed convolution of the output's
    gradient, and the kernel's, sum_{b,t} g[b, c, t] x[b, c, t s + j], is one depth-wise
    convolution of x over the B C rows with g as the kernels (dilated by the stride), summed
    over the batch. The same sums up to the order of float rounding."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, stride: int) -> Tensor:
        ctx.save_for_backward(x, kernel)
        ctx.stride = stride
        return F.conv1d(x, kernel, stride=stride, groups=x.size(1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # grad: (B, C, T')
        x, kernel = ctx.saved_tensors
        stride, (batch, channels, length), width = ctx.stride, x.shape, kernel.size(-1)
        grad = grad.contiguous()
        d_x = d_kernel = None
        if ctx.needs_input_grad[0]:
            # (T' - 1) s + k + output_padding = T: the positions the last window leaves out.
            d_x = F.conv_transpose1d(grad, kernel, stride=stride, groups=channels,
                                     output_padding=(length - width) % stride)
        if ctx.needs_input_grad[1]:
            rows = batch * channels
            spans = F.conv1d(x.reshape(1, rows, length), grad.view(rows, 1, grad.size(-1)),
                             groups=rows, dilation=stride)  # (1, B C, k + (T - k) mod s)
            d_kernel = spans[0, :, :width].view(batch, channels, width).sum(0).unsqueeze(1)
        return d_x, d_kernel, None


def conv_min_length(kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """The shortest input a stack of unpadded 1-D convolutions turns into one output position."""
    length = 1
    for kernel, stride in zip(reversed(kernels), reversed(strides)):
        length = (length - 1) * stride + kernel
    return length


class LightConv(nn.Module):
    """Depth-wise 1-D convolutions over time with softmax-normalised kernels, each followed by
    ReLU (Wu et al. 2019; docs/design.md §2): the "label-level" states ĥ of the + LC branch."""

    def __init__(self, channels: int, kernels: tuple[int, ...], last_stride: int):
        super().__init__()
        self.strides = (1,) * (len(kernels) - 1) + (last_stride,)
        # One kernel per channel (docs/design.md §2 and the published code: as many heads as
        # channels, where Wu et al. share one kernel among the channels of a head).
        self.weights = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(channels, 1, k))) for k in kernels
        )
        self.min_length = conv_min_length(tuple(kernels), self.strides)  # 52 with the defaults
        self.jump = math.prod(self.strides)  # input steps between two output positions

    def kernels(self) -> list[Tensor]:
        """The normalised kernels [C, 1, k]: each channel's weights sum to 1 over the width."""
        return [torch.softmax(w, dim=-1) for w in self.weights]

    def forward(self, h: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """h [B, T, C] (zeros past each document), lengths [B] in 1..T -> ĥ [B, T', C] and
        its validity mask [B, T']."""
        x = h.transpose(1, 2)  # (B, C, T)
        # Short documents: pad this branch's input only, with zeros (the published code feeds
        # literal <pad> tokens through the encoder instead; docs/design.md §9).
        x = F.pad(x, (0, max(0, self.min_length - x.size(-1))))  # (B, C, max(T, min_length))
        for kernel, stride in zip(self.kernels(), self.strides):
            x = F.relu(depthwise_conv1d(x, kernel, stride))  # (B, C, T_i)
        # Output j reads inputs j * jump .. j * jump + min_length - 1. It is valid when that
        # window lies inside the document, which makes a document's ĉ_t independent of what
        # it is batched with; position 0 always is, reading a short document plus zeros.
        positions = torch.arange(x.size(-1), device=x.device)  # (T',)
        ends = positions * self.jump + self.min_length  # (T',)
        valid = (ends <= lengths.unsqueeze(1)) | (positions == 0)  # (B, T')
        return x.transpose(1, 2), valid  # (B, T', C), (B, T')


class Memory(NamedTuple):
    """What the decoder attends to, prepared once per document."""

    values: Tensor  # h [B, T, C]
    keys: Tensor  # U h [B, T, A]
    padding: Tensor  # bool [B, T], True where no real position


class AdditiveAttention(nn.Module):
    """Bahdanau attention e_ti = vᵀ tanh(W s_{t-1} + U h_i), α = softmax_i(e), c = Σ α h
    (docs/design.md §2), over a masked memory whose keys U h are computed once per document."""

    def __init__(self, query_size: int, memory_size: int, attn_size: int):
        super().__init__()
        self.W = nn.Linear(query_size, attn_size, bias=False)
        self.U = nn.Linear(memory_size, attn_size)  # its bias stands for those the paper omits
        self.v = nn.Linear(attn_size, 1, bias=False)

    def memory(self, values: Tensor, valid: Tensor) -> Memory:
        """values [B, T, C], valid [B, T] -> the memory with its keys projected once."""
        return Memory(values, self.U(values), ~valid)  # keys: (B, T, A)

    def forward(self, query: Tensor, memory: Memory, projected: Tensor | None = None) -> Tensor:
        """query s_{t-1} [B, H] -> context c_t [B, C]. `projected` is W s_{t-1} [B, A] when the
        caller has it already (one query attends to two memories with the LC branch)."""
        if projected is None:
            projected = self.W(query)  # (B, A)
        scores = self.v(tanh(memory.keys + projected.unsqueeze(1))).squeeze(-1)  # (B, T)
        # Every row keeps a valid position (lengths >= 1, conv position 0): no all -inf row.
        alpha = torch.softmax(scores.masked_fill(memory.padding, float("-inf")), dim=-1)  # (B, T)
        return torch.bmm(alpha.unsqueeze(1).to(memory.values.dtype), memory.values).squeeze(1)


class GlobalEmbedding(nn.Module):
    """SGM's global embedding (Yang et al. 2018; docs/design.md §4): the decoder input becomes
    G ⊙ e(ŷ) + (1 − G) ⊙ ē, with ē = softmax(o_{t-1} / τ) · E and G = σ(W_1 e(ŷ) + W_2 ē)."""

    def __init__(self, size: int, tau: float):
        super().__init__()
        self.tau = tau
        self.W1 = nn.Linear(size, size)
        self.W2 = nn.Linear(size, size)

    def forward(self, emb: Tensor, prev_logits: Tensor, table: Tensor) -> Tensor:
        """emb e(ŷ) [B, E_l], prev_logits o_{t-1} [B, V], table E [V, E_l] -> [B, E_l]."""
        probs = torch.softmax(prev_logits.float() / self.tau, dim=-1)  # (B, V)
        mean = probs.to(table.dtype) @ table  # ē: (B, E_l)
        gate = torch.sigmoid(self.W1(emb) + self.W2(mean))  # (B, E_l)
        return gate * emb + (1 - gate) * mean


def _columns(mask: Tensor, candidates: Tensor | None) -> Tensor:
    """mask [B, V] restricted to the columns of `candidates` [K'] (all of them without)."""
    return mask if candidates is None else mask.index_select(1, candidates)  # (B, K')


class DecoderStep(NamedTuple):
    """What one decoding step yields (`Seq2SetModel.decode`)."""

    features: Tensor  # u_t [B, F], the input of the output layer's last (V-wide) linear map
    logits: Tensor | None  # o_t [B, V] (masked), where computed step by step; else None
    choice: Tensor | None  # arg-max of o_t [B], the label fed next (student forcing); else None
    used: Tensor | None  # bool [B, V], the labels masked at this step (masked softmax); else None


class _ComputedLinear(torch.autograd.Function):
    """A linear map y = u Wᵀ + b whose result y was already computed without autograd: returns
    y as it is, with the linear map's gradient.

    Student forcing computes each step's logits to choose its arg-max; recomputing all of them
    with autograd for the loss would repeat the largest matmul of a training step. Arguments:
    u [B, S, F], W [V, F], b [V], y [B, S, V] in the dtype the map ran in (bf16 under
    autocast), and a bool mask [B, S, V] or None: masked entries were overwritten with a
    constant and get no gradient.
    """

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, bias: Tensor, logits: Tensor,
                mask: Tensor | None) -> Tensor:
        ctx.save_for_backward(features, weight, mask)
        return logits

    @staticmethod
    def backward(ctx, grad: Tensor):  # grad: (B, S, V)
        features, weight, mask = ctx.saved_tensors
        if mask is not None:
            grad = grad.masked_fill(mask, 0)
        flat = grad.flatten(0, 1)  # (B * S, V)
        grads = [None] * 5
        if ctx.needs_input_grad[0]:
            grads[0] = (flat @ weight.to(flat.dtype)).view_as(features).to(features.dtype)
        if ctx.needs_input_grad[1]:  # one [V, F] gradient for all S steps
            rows = features.flatten(0, 1).to(flat.dtype)  # (B * S, F)
            grads[1] = blocked.outer(flat, rows).to(weight.dtype)  # (V, F)
        if ctx.needs_input_grad[2]:
            grads[2] = flat.sum(0).to(weight.dtype)  # (V,), the bias has the weight's dtype
        return tuple(grads)


class LabelLinear(nn.Linear):
    """The output layer's V-wide linear map: nn.Linear (the same parameters and state), its
    product taken a block of labels at a time where that is faster (`xmtc_cli.blocked`)."""

    def forward(self, x: Tensor) -> Tensor:
        return blocked.linear(x, self.weight, self.bias)


class _DenseGradient(torch.autograd.Function):
    """The identity on a table, whose gradient may arrive sparse and leaves dense.

    The decoder looks a label embedding up at every step. A dense lookup gradient is a whole
    [V, E_l] table per step, N of them summed (268 MB each at 670K labels); looked up through
    this with `sparse=True`, each step's gradient holds its B rows and the table's gradient is
    made dense once.
    """

    @staticmethod
    def forward(ctx, table: Tensor) -> Tensor:
        return table

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.to_dense() if grad.is_sparse else grad


class Seq2SetModel(nn.Module):
    """Encoder, attention (+ LC branch), GRU decoder and output layer (docs/design.md §2)."""

    def __init__(
        self,
        *,
        vocab_size: int,
        num_outputs: int,
        embed_size: int,
        label_embed_size: int,
        hidden_size: int,
        encoder_layers: int,
        dropout: float,
        conv_kernels: tuple[int, ...] | None,
        conv_last_stride: int,
        bottleneck: int | None,
        global_embedding_tau: float | None,
        masked_softmax: bool,
        teacher_forcing: bool,
        decode_steps: int,
        feature_size: int = 0,
    ):
        super().__init__()
        self.teacher_forcing = teacher_forcing
        self.masked_softmax = masked_softmax
        self.decode_steps = decode_steps
        self.feature_size = feature_size
        context = 2 * hidden_size * (2 if conv_kernels else 1)  # [c_t ; ĉ_t]
        self.encoder = Encoder(vocab_size, embed_size, hidden_size, encoder_layers, dropout)
        self.conv = (
            LightConv(2 * hidden_size, conv_kernels, conv_last_stride) if conv_kernels else None
        )
        self.attention = AdditiveAttention(hidden_size, 2 * hidden_size, hidden_size)
        # Side features [B, D] -> one more position of the word-level memory [B, C]. The tanh
        # puts it in the range of the GRU states beside it (-1..1), whatever the scale of the
        # user's embeddings (CLIP's rows have norms in the tens): neither its keys U f nor its
        # share of c_t can swamp the words'.
        self.feature_projection = (
            nn.Sequential(nn.Linear(feature_size, 2 * hidden_size), nn.Tanh())
            if feature_size > 0 else None
        )
        # ... and W_0 f inside s_0's tanh: a direct path to every step's state. Through the
        # slot alone, attention at first gives it about 1/T of its weight, and its gradient is
        # as small (docs/design.md §2).
        self.feature_state = nn.Linear(feature_size, hidden_size) if feature_size > 0 else None
        self.label_embedding = nn.Embedding(num_outputs, label_embed_size)
        # Label embeddings start as unknown words do (docs/design.md §2).
        nn.init.uniform_(self.label_embedding.weight, -0.1, 0.1)
        self.global_embedding = (
            GlobalEmbedding(label_embed_size, global_embedding_tau)
            if global_embedding_tau is not None else None
        )
        self.cell = nn.GRUCell(label_embed_size + context, hidden_size)
        self.dropout = nn.Dropout(dropout)
        z = hidden_size + context + label_embed_size  # [s_t ; c_t ; ĉ_t ; e(ŷ_{t-1})]
        self.output = (
            LabelLinear(z, num_outputs) if bottleneck is None
            # XML-CNN bottleneck (paper Eq. 10): O((V + z) b) parameters instead of O(V z).
            else nn.Sequential(
                nn.Linear(z, bottleneck), nn.Tanh(), LabelLinear(bottleneck, num_outputs)
            )
        )

    def forward(self, src: Tensor, lengths: Tensor, gold: Tensor | None = None,
                features: Tensor | None = None, candidates: Tensor | None = None) -> Tensor:
        """Training logits [B, S, V] for src [B, T], lengths [B] and, for a model with side
        features, features [B, D] (`encode`).

        `candidates` [K'] (output indices, xmtc_cli.shortlist): logits [B, S, K'] over those
        labels only, and student forcing feeds the arg-max among them (train.shortlist).

        Student forcing (matching loss): S = N steps, each fed the previous arg-max; `gold` is
        ignored. Teacher forcing (cross-entropy): gold [B, M] output indices (left-aligned,
        padded with -1) are fed after BOS, S = M + 1, the last step's target being EOS.

        The decoder runs step by step, but the gradient of the output layer's last, V-wide
        linear map is taken once, for all S steps together: one [V, F] weight gradient instead
        of S of them, and no stack of per-step logits in the graph (docs/design.md §2). Teacher
        forcing applies that map once to all steps' features. Student forcing needs each step's
        logits to choose its arg-max: `decode` computes them without autograd and they are
        used as they are, with the map's gradient attached (`_ComputedLinear`). SGM's global
        embedding reads the previous step's logits with their gradient, so with it the output
        layer stays step by step.
        """
        if candidates is not None and self.global_embedding is not None:
            raise ValueError("a shortlist of candidates does not apply to SGM's global "
                             "embedding, which reads every label's logit")
        memories, state = self.encode(src, lengths, features)
        inputs = None
        if self.teacher_forcing:
            if gold is None:
                raise ValueError("a cross-entropy model trains with teacher forcing: pass `gold`")
            gold = gold.to(src.device)
            bos = gold.new_full((gold.size(0), 1), BOS)  # (B, 1)
            # Slots past a gold sequence read EOS; their targets are padding, ignored by the loss.
            inputs = torch.cat([bos, gold.masked_fill(gold < 0, EOS)], dim=1)  # (B, M + 1)
        num_steps = self.decode_steps if inputs is None else inputs.size(1)
        steps = self.decode(memories, state, num_steps, inputs, candidates)
        if self.global_embedding is not None:
            return torch.stack([step.logits for step in steps], dim=1)  # (B, S, V)
        weight, bias = self._output_rows(candidates)  # (V or K', F), (V or K',)
        if inputs is not None:  # teacher forcing: no step needed its logits
            features, used = zip(*((step.features, step.used) for step in steps))
            features = torch.stack(features, dim=1)  # (B, S, F)
            logits = (self.last_layer()(features) if candidates is None
                      else F.linear(features, weight, bias))  # (B, S, V or K')
            if self.masked_softmax:
                logits = logits.masked_fill(torch.stack(used, dim=1),  # (B, S, V)
                                            torch.finfo(logits.dtype).min)
            return logits
        # Student forcing: each step computed its logits to choose its arg-max; they are copied
        # into one tensor and given the last linear map's gradient for all steps at once.
        logits = None
        features, used = [], []
        for t, step in enumerate(steps):
            if logits is None:
                logits = step.logits.new_empty(src.size(0), num_steps, step.logits.size(1))
            logits[:, t] = step.logits  # logits: (B, N, V)
            features.append(step.features)
            used.append(step.used)
        mask = torch.stack(used, dim=1) if self.masked_softmax else None  # (B, N, V)
        features = torch.stack(features, dim=1)  # (B, N, F)
        return _ComputedLinear.apply(features, weight, bias, logits, mask)

    @torch.no_grad()
    def generate(self, src: Tensor, lengths: Tensor, features: Tensor | None = None,
                 bonus: Tensor | None = None, gate: bool = False,
                 best: list[Tensor] | None = None,
                 encoded: tuple[list[Memory], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Greedy decoding (the caller sets eval mode): labels [B, S] output indices and scores
        [B, S], the probability each label had at the step that produced it. `features` [B, D]:
        the side features of a model that has them (`encode`). `bonus` [B, V]: a lexical
        prior that joins each step's choice of label, and with `gate` its choice of whether a
        label comes (`xmtc_cli.lexical.fused_choice`); None: the decoder's own arg-max.

        Set models: S = N, each step fed the previous arg-max as in training. Cross-entropy
        models: at most N + 1 steps; the first EOS is kept, every step after it is EMPTY with
        score 0, and decoding stops once every document has ended.

        `best`, a list, receives one tensor [B, V]: every output's highest probability over the
        steps decoded (for a cross-entropy model, the steps up to its EOS), which ranks labels
        the set left out (`xmtc predict --top-k`); with a `bonus`, of the fused distribution
        softmax(o + bonus), so that the labels the lexical scorer vouches for rank as they
        would be chosen. Decoding itself is unchanged.

        `encoded`: what `encode(src, lengths, features)` returned for these documents, to
        decode them again (with another `bonus`) without reading them again.
        """
        memories, state = self.encode(src, lengths, features) if encoded is None else encoded
        num_steps = self.decode_steps + 1 if self.teacher_forcing else self.decode_steps
        ended = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)  # (B,)
        labels, scores = [], []
        best_so_far = None
        for t, step in enumerate(self.decode(memories, state, num_steps, bonus=bonus,
                                             gate=gate)):
            label = step.choice  # (B,): the arg-max (or fused choice) decode feeds back
            # p(label) = exp(o_label - logsumexp(o)): no softmax over all V outputs.
            logits = step.logits.float()  # (B, V)
            chosen = logits.gather(1, label.unsqueeze(1)).squeeze(1)  # (B,)
            score = (chosen - torch.logsumexp(logits, dim=-1)).exp()  # (B,)
            if best is not None:
                fused = logits if bonus is None else logits + bonus
                probs = torch.softmax(fused, dim=-1)  # (B, V)
                if self.teacher_forcing:  # a document that has ended adds nothing
                    probs = probs.masked_fill(ended.unsqueeze(1), 0.0)
                best_so_far = probs if best_so_far is None else torch.maximum(best_so_far, probs)
            if self.teacher_forcing:
                label = label.masked_fill(ended, EMPTY)
                score = score.masked_fill(ended, 0.0)
                ended = ended | (label == EOS)
            labels.append(label)
            scores.append(score)
            # Checking for the end waits on the device: do it every few steps only.
            if self.teacher_forcing and t % 4 == 3 and bool(ended.all()):
                break
        if best is not None:
            best.append(best_so_far)  # (B, V)
        return torch.stack(labels, dim=1), torch.stack(scores, dim=1)  # (B, S), (B, S)

    def encode(self, src: Tensor, lengths: Tensor,
               features: Tensor | None = None) -> tuple[list[Memory], Tensor]:
        """The memories every decoding step attends to, and the start state s_0 [B, H].

        A model with side features (feature_size D > 0) needs `features` [B, D], and one
        without refuses them (ValueError). Their projection tanh(W_f f) [B, C] becomes one more
        position of the word-level memory, after the padding: h [B, T + 1, C], always valid;
        and W_0 f [B, H] joins the start state, s_0 = tanh(W_s [h_fwd; h_bwd] + W_0 f). The
        conv branch convolves the words only (docs/design.md §2).
        """
        self._check_features(features, src.size(0))
        # An empty document is read as one <pad> token (a zero vector), so that the encoder
        # state is defined and attention always has a position; the paper keeps such documents.
        src = F.pad(src, (0, max(0, 1 - src.size(1))), value=PAD_ID)  # (B, max(T, 1))
        # Packing needs the lengths on the host: clamp them there (a no-op copy for the CPU
        # tensors the batcher makes) and send them to the device, rather than reading them
        # back from it, which would wait for the device.
        host_lengths = lengths.cpu()
        src = src.masked_fill((lengths.to(src.device) == 0).unsqueeze(1), PAD_ID)  # (B, T)
        host_lengths = host_lengths.clamp(1, src.size(1))  # (B,)
        lengths = host_lengths.to(src.device, non_blocking=True)  # (B,)
        start = None
        if self.feature_state is not None:
            features = features.to(src.device, torch.float32)  # (B, D)
            start = self.feature_state(features)  # W_0 f: (B, H)
        h, state = self.encoder(src, host_lengths, start)  # (B, T, C), (B, H)
        valid = torch.arange(src.size(1), device=src.device) < lengths.unsqueeze(1)  # (B, T)
        words = h
        if self.feature_projection is not None:
            slot = self.feature_projection(features)  # (B, C)
            h = torch.cat([h, slot.to(h.dtype).unsqueeze(1)], dim=1)  # (B, T + 1, C)
            valid = F.pad(valid, (0, 1), value=True)  # (B, T + 1)
        memories = [self.attention.memory(h, valid)]
        if self.conv is not None:  # ĉ_t uses the same W, U, v (paper Eq. 7)
            memories.append(self.attention.memory(*self.conv(words, lengths)))  # T' positions
        return memories, state

    def _check_features(self, features: Tensor | None, batch: int) -> None:
        """ValueError unless `features` is what this model reads: [B, D] or, without side
        features, None."""
        if self.feature_projection is None:
            if features is not None:
                raise ValueError("this model was built without side features (feature_size 0) "
                                 "and was given some")
            return
        if features is None:
            raise ValueError(f"this model reads side features of width {self.feature_size}: "
                             "pass `features` [B, D]")
        if tuple(features.shape) != (batch, self.feature_size):
            raise ValueError(f"side features of shape {tuple(features.shape)}, the model "
                             f"expects ({batch}, {self.feature_size})")

    def decode(self, memories: list[Memory], state: Tensor, num_steps: int,
               inputs: Tensor | None = None, candidates: Tensor | None = None,
               bonus: Tensor | None = None, gate: bool = False) -> Iterator[DecoderStep]:
        """Run the decoder one step at a time, feeding `inputs` [B, S] if given (teacher
        forcing: BOS then gold), else BOS then the previous step's arg-max (student forcing),
        or with a lexical `bonus` [B, V] the previous step's fused choice (`generate`).

        Each step yields the input u_t of the output layer's last linear map (its bottleneck
        applied); the step's logits are computed here only where they are needed step by step:
        to choose the next label (student forcing), or to feed SGM's global embedding, the one
        case where they carry a gradient. With `candidates` [K'] the logits (and the mask of
        the masked softmax) are over those output indices only, and the arg-max is mapped back
        to its output index.
        """
        batch = state.size(0)
        table = self.label_embedding.weight  # (V, E_l)
        # One dense gradient of the table for all steps' lookups, not one per step.
        rows = _DenseGradient.apply(table) if torch.is_grad_enabled() else table  # (V, E_l)
        label = torch.full((batch,), BOS, dtype=torch.long, device=state.device)  # ŷ_0: (B,)
        used = torch.zeros(batch, table.size(0), dtype=torch.bool, device=state.device)  # (B, V)
        # SGM before any prediction: uniform weights, ē = the mean label (the published code).
        logits = state.new_zeros(batch, table.size(0)) if self.global_embedding else None
        step_logits = self.global_embedding is not None or inputs is None
        # Without the global embedding the step's logits only choose the next label: they are
        # computed without autograd, and forward gives all steps' logits the gradient at once.
        track = nullcontext if self.global_embedding is not None else torch.no_grad
        last = self.last_layer()
        if candidates is not None:
            candidates = candidates.to(state.device)
            with torch.no_grad():
                weight = last.weight.index_select(0, candidates)  # (K', F)
                bias = last.bias.index_select(0, candidates)  # (K',)
            last = functools.partial(blocked.linear, weight=weight, bias=bias)
        emitted = None
        if bonus is not None:
            from xmtc_cli.lexical import fused_choice  # scipy's import only where it is used

            emitted = torch.zeros(batch, table.size(0), dtype=torch.bool,
                                  device=state.device)  # (B, V)
            bonus = bonus.to(state.device, torch.float32)
        for t in range(num_steps):
            if inputs is not None:
                label = inputs[:, t]  # (B,)
            emb = self.dropout(F.embedding(label, rows, sparse=True))  # e(ŷ_{t-1}): (B, E_l)
            if self.global_embedding is not None:
                emb = self.global_embedding(emb, logits, table)  # (B, E_l)
            # Bahdanau: the contexts of step t attend with s_{t-1}.
            projected = self.attention.W(state)  # W s_{t-1}, shared by the memories: (B, A)
            contexts = [self.attention(state, memory, projected) for memory in memories]
            state = self.cell(torch.cat([emb, *contexts], dim=-1), state)  # s_t: (B, H)
            z = torch.cat([state, *contexts, emb], dim=-1)  # (B, H + 2C + E_l) with LC
            features = self._output_head(self.dropout(z))  # u_t: (B, F)
            if self.masked_softmax:
                # SGM: a corpus label fed earlier (generated, or gold under teacher forcing)
                # cannot come again; ∅ and EOS stay available. Training logits are masked too,
                # so that they are the distributions decoding samples from (SGM's and the
                # OTSeq2Set authors' code mask at inference only). A finite floor rather than
                # -inf gives probability 0 without 0 · (-inf) = NaN in a loss.
                fed = (label >= NUM_SPECIALS).unsqueeze(1)  # (B, 1)
                used = used.scatter(1, label.unsqueeze(1), fed)  # (B, V), out of place
            choice = logits = None
            if step_logits:
                with track():
                    logits = last(features)  # (B, V or K')
                    if self.masked_softmax:
                        logits = logits.masked_fill(_columns(used, candidates),
                                                    torch.finfo(logits.dtype).min)
                if inputs is None:  # (B,); not differentiable, nor needs to be
                    choice = (logits.argmax(dim=-1) if emitted is None
                              else fused_choice(logits, bonus, emitted, gate))
                    if candidates is not None:
                        choice = candidates[choice]  # position among candidates -> output index
            yield DecoderStep(features, logits, choice,
                              _columns(used, candidates) if self.masked_softmax else None)
            if inputs is None:  # teacher forcing reads the next label from `inputs`
                label = choice

    def _output_head(self, x: Tensor) -> Tensor:
        """The output layer up to its last linear map: tanh(W_1 x) with the bottleneck
        [.., b], else x itself [.., Z]."""
        if isinstance(self.output, nn.Sequential):
            for layer in list(self.output)[:-1]:
                x = layer(x)
        return x

    def _output_rows(self, candidates: Tensor | None) -> tuple[Tensor, Tensor]:
        """The last linear map's weight [V, F] and bias [V], or their rows of `candidates`
        [K'] (with the gradient to the full tables)."""
        last = self.last_layer()
        if candidates is None:
            return last.weight, last.bias
        candidates = candidates.to(last.weight.device)
        return last.weight.index_select(0, candidates), last.bias.index_select(0, candidates)

    def last_layer(self) -> nn.Linear:
        """The output layer's last, V-wide linear map (W_2 with the bottleneck, else W_o)."""
        return self.output[-1] if isinstance(self.output, nn.Sequential) else self.output


_INITIALISERS = frozenset({
    "normal_", "uniform_", "zero_", "fill_", "copy_", "xavier_uniform_", "xavier_normal_",
    "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "trunc_normal_", "__setitem__",
})


class _SkipInitialisers(TorchFunctionMode):
    """Makes in-place initialisers no-ops: on the meta device they have nothing to fill, and
    running them there goes through torch's Python decompositions, whose first use imports
    torch._dynamo (about 3 s of every `xmtc predict`)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _INITIALISERS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta_device() -> Iterator[None]:
    """Build modules with shapes and no storage (nothing allocated, nothing initialised): for
    checking shapes, or for `load_state_dict(..., assign=True)` from a checkpoint."""
    with torch.device("meta"), _SkipInitialisers():
        yield
