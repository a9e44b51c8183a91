"""The localizer's query-dependent part over many (sentence, motion) pairs at once, with every
query-independent tensor computed once: the search engine's fast path.

It computes what `MLPLocalizer.localize` computes, with the same weights and formulas, reordered so that
nothing is done per pair that depends on one side only:

- per motion, once per index (`MotionBank`, one padded tensor per cached quantity): the first SGPA
  block's motion-side LayerNorm, its query projection, the motion's whole self-attention branch
  (`s_proj`, `s_gate`), the motion halves of the bilinear gates, and the keys / values the text side's
  cross-attention reads from the motion;
- per sentence: the text projection, the text's self-attention branch and the keys / values the motion
  side reads from the text;
- per pair, in one padded batch: the two cross-attentions and everything after them (the remaining SGPA
  blocks, fusion, matcher, predictor).

The results equal the plain path up to float rounding (the oracle tests compare both); dropout is never
active here (eval only).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from localizer.model import _NEG, MLPLocalizer, SGPABlock, SpanProbs

# What the bank keeps per motion and snippet (each (capacity, S, d)):
#   x: the motion entering the first SGPA block (the cached S-Enc output, + PE for pos_encoding="before");
#   q: query(LN_from(x)); s_val, s_gate: the self-attention branch and sigmoid(s_gate(s_val));
#   bs, bv: bilinear_s1 / bilinear_v1 of LN_from(x); tk, tv: t_key / t_value of the text block's LN_to(x).
_FIELDS = ("x", "q", "s_val", "s_gate", "bs", "bv", "tk", "tv")


@dataclass
class FromSide:
    """The query-independent half of one SGPA block for its 'from' sequence (B, L, d) tensors."""

    x: torch.Tensor
    q: torch.Tensor  # (B, L, d): split into heads when attending
    s_val: torch.Tensor
    s_gate: torch.Tensor
    bs: torch.Tensor
    bv: torch.Tensor

    def take(self, idx: torch.Tensor) -> FromSide:
        return FromSide(*(getattr(self, f).index_select(0, idx) for f in ("x", "q", "s_val", "s_gate", "bs", "bv")))


def from_side(blk: SGPABlock, x: torch.Tensor, mask: torch.Tensor) -> FromSide:
    """Everything of `blk(x, other, mask, other_mask)` that does not depend on `other`."""
    f = blk.ln_from(x)
    q = blk.query(f)
    s_val = blk.s_proj(blk._attend(blk._heads(q), blk._heads(blk.f_key(f)), blk._heads(blk.f_value(f)), mask))
    return FromSide(x=x, q=q, s_val=s_val, s_gate=torch.sigmoid(blk.s_gate(s_val)), bs=blk.bilinear_s1(f),
                    bv=blk.bilinear_v1(f))


def to_side(blk: SGPABlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values `blk(other, x, ...)` reads from its 'to' sequence x: (B, L, d) each."""
    t = blk.ln_to(x)
    return blk.t_key(t), blk.t_value(t)


def pair_block(blk: SGPABlock, fs: FromSide, tk: torch.Tensor, tv: torch.Tensor, from_mask: torch.Tensor,
               to_mask: torch.Tensor) -> torch.Tensor:
    """The rest of `SGPABlock.forward` (eval) from the two precomputed halves."""
    x_val = blk.x_proj(blk._attend(blk._heads(fs.q), blk._heads(tk), blk._heads(tv), to_mask))
    gated = fs.s_gate * x_val + torch.sigmoid(blk.x_gate(x_val)) * fs.s_val
    gated = blk.guided_dense(gated)
    scores = fs.bs + blk.bilinear_s2(gated)
    values = fs.bv + blk.bilinear_v2(gated)
    out = torch.sigmoid(scores.masked_fill(~from_mask.unsqueeze(-1), _NEG)) * values
    out = blk.output_dense(out)
    residual = out + fs.x
    out = blk.out_layer(blk.ln_out(residual))
    return out + residual


@dataclass
class FastWeights:
    """Weights of one model rearranged for the fast path (split or stacked copies, made once per model)."""

    sv_w: torch.Tensor  # first motion block: [bilinear_s2; bilinear_v2] stacked, (2d, d)
    sv_b: torch.Tensor
    cqa_w: tuple[torch.Tensor, ...]  # ContextQueryAttention.out split by input block: 4 x (d, d)
    concat_w: tuple[torch.Tensor, torch.Tensor]  # SentenceConcat.out split: motion half, sentence half


_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_weights(model: MLPLocalizer) -> FastWeights:
    """The model's FastWeights (cached per model object: inference only, weights must not change after)."""
    w = _WEIGHTS.get(model)
    if w is None:
        mb, _ = _blocks(model)
        d = model.cfg.d_model
        w = FastWeights(
            sv_w=torch.cat([mb.bilinear_s2.weight, mb.bilinear_v2.weight]).detach().contiguous(),
            sv_b=torch.cat([mb.bilinear_s2.bias, mb.bilinear_v2.bias]).detach().contiguous(),
            cqa_w=tuple(x.detach().contiguous() for x in model.cqa.out.weight.split(d, dim=1)),
            concat_w=tuple(x.detach().contiguous() for x in model.concat.out.weight.split(d, dim=1)))
        _WEIGHTS[model] = w
    return w


def softmax_short(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last dimension (a sentence's tokens), overwriting x: torch's kernel is slow
    there (it does not vectorise across rows); max-shifted exp over its sum is the same formula."""
    e = x.sub_(x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


def attention_maps(blk: SGPABlock, tk: torch.Tensor, tv: torch.Tensor, mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A short key sequence (U, N, d) read by many long query sequences, folded into two matrices per
    sentence, so that attention plus `x_proj` is two matrix products without any head transposes:

    - keys (U, d, H*N): block-diagonal, head h's keys (scaled by 1/sqrt(d_head)) in rows h*dh.. and
      columns h*N..; `q @ keys` is every head's scores side by side;
    - values (U, H*N, d): head h's values times its slice of x_proj; softmax(scores) per head @ values
      is x_proj(attention) without its bias;
    - bias (U, 1, H*N): -inf at padded keys."""
    u, n, d = tk.shape
    h, dh = blk.n_heads, blk.head_dim
    keys = tk.new_zeros((u, d, h * n))
    vals = tk.new_empty((u, h * n, d))
    wx = blk.x_proj.weight  # (d, d): y @ wx.T
    scale = 1.0 / math.sqrt(dh)
    for i in range(h):
        keys[:, i * dh:(i + 1) * dh, i * n:(i + 1) * n] = tk[:, :, i * dh:(i + 1) * dh].transpose(1, 2) * scale
        vals[:, i * n:(i + 1) * n] = tv[:, :, i * dh:(i + 1) * dh] @ wx[:, i * dh:(i + 1) * dh].t()
    bias = torch.zeros((u, 1, h * n), dtype=tk.dtype, device=tk.device)
    bias.masked_fill_(~mask.repeat(1, h).unsqueeze(1), float("-inf"))
    return keys, vals, bias


def motion_block(blk: SGPABlock, fw: FastWeights, fs: FromSide, keys: torch.Tensor, vals: torch.Tensor,
                 bias: torch.Tensor, mask: torch.Tensor, full: bool = False) -> torch.Tensor:
    """`pair_block` for the long (motion) side, reading the text through `attention_maps`; `full`: no
    padded snippet in the batch (the mask is all True)."""
    b, t, d = fs.x.shape
    h = blk.n_heads
    sc = torch.baddbmm(bias, fs.q, keys)  # (B, T, H*N)
    a = softmax_short(sc.view(b, t, h, -1)).view(b, t, -1)
    x_val = torch.baddbmm(blk.x_proj.bias, a, vals)  # x_proj(attention)
    g = torch.sigmoid_(blk.x_gate(x_val)).mul_(fs.s_val)
    gated = blk.guided_dense(g.addcmul_(fs.s_gate, x_val))
    sv = F.linear(gated, fw.sv_w, fw.sv_b)  # (B, T, 2d): bilinear_s2 | bilinear_v2
    scores = sv[..., :d].add_(fs.bs)
    if not full:
        scores.masked_fill_(~mask.unsqueeze(-1), _NEG)
    out = torch.sigmoid_(scores).mul_(sv[..., d:].add_(fs.bv))
    residual = blk.output_dense(out).add_(fs.x)
    return blk.out_layer(blk.ln_out(residual)).add_(residual)


def context_query(model: MLPLocalizer, fw: FastWeights, c: torch.Tensor, q: torch.Tensor, c_mask: torch.Tensor,
                  q_mask: torch.Tensor, full: bool = False) -> torch.Tensor:
    """`ContextQueryAttention` (eval) with its products reassociated: q2c = s_row (s_col^T c) instead of
    (s_row s_col^T) c, the c2q block of `out` applied to q before the attention; `full`: c_mask all True."""
    cqa = model.cqa
    d = c.shape[-1]
    w1, w2, w3, w4 = fw.cqa_w
    score = torch.baddbmm((q @ cqa.w_q).transpose(1, 2), c, (q * cqa.w_cq).transpose(1, 2))  # (B, T, N)
    score += c @ cqa.w_c
    s_row = softmax_short(score.masked_fill(~q_mask[:, None, :], _NEG))
    s_col = torch.softmax(score if full else score.masked_fill_(~c_mask[:, :, None], _NEG), dim=1)
    c2q = s_row @ q  # (B, T, d)
    q2c = s_row @ (s_col.transpose(1, 2) @ c)
    out = torch.baddbmm(F.linear(c, w1, cqa.out.bias), s_row, q @ w2.t())
    flat = out.view(-1, d)
    flat.addmm_(c2q.mul_(c).view(-1, d), w3.t())
    flat.addmm_(q2c.mul_(c).view(-1, d), w4.t())
    return out


def sentence_concat(model: MLPLocalizer, fw: FastWeights, m: torch.Tensor, q: torch.Tensor,
                    q_mask: torch.Tensor) -> torch.Tensor:
    """`SentenceConcat`: the sentence half of `out` applied once per pair, not per snippet."""
    s = model.concat.pool(q, q_mask)  # (B, d)
    wm, ws = fw.concat_w
    return F.linear(m, wm).add_(F.linear(s, ws, model.concat.out.bias).unsqueeze(1))


def _blocks(model: MLPLocalizer) -> tuple[SGPABlock, SGPABlock]:
    tenc = model.tenc
    text_blocks = tenc.motion_blocks if tenc.text_blocks is None else tenc.text_blocks
    return tenc.motion_blocks[0], text_blocks[0]


class MotionBank:
    """The query-independent tensors of encoded motions, padded to the model's S snippets, one slot per motion
    id (filled on first use, kept until `clear`): what `pair_probs` reads instead of recomputing per pair."""

    def __init__(self, model: MLPLocalizer, device: torch.device | str = "cpu", batch_size: int = 64):
        self.model = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.s = model.cfg.n_snippets
        self.d = model.cfg.d_model
        self.slot: dict[int, int] = {}
        self.n = 0
        self._alloc(0)

    def _alloc(self, cap: int) -> None:
        self.cap = cap
        self.t = {f: torch.zeros((cap, self.s, self.d), device=self.device) for f in _FIELDS}
        self.mask = torch.zeros((cap, self.s), dtype=torch.bool, device=self.device)
        self.length = torch.zeros(cap, dtype=torch.long, device=self.device)

    def _grow(self, need: int) -> None:
        if need <= self.cap:
            return
        cap = max(need, 2 * self.cap, 64)
        old, old_mask, old_len, n = self.t, self.mask, self.length, self.n
        self._alloc(cap)
        for f in _FIELDS:
            self.t[f][:n] = old[f][:n]
        self.mask[:n], self.length[:n] = old_mask[:n], old_len[:n]

    def __len__(self) -> int:
        return self.n

    def clear(self) -> None:
        self.slot.clear()
        self.n = 0
        self._alloc(0)

    @torch.inference_mode()
    def slots(self, motions: Sequence) -> torch.Tensor:
        """(B,) slot of each EncodedMotion (motion_id set), adding the ones not held yet."""
        new: dict[int, object] = {}
        for em in motions:
            if em.motion_id is None:
                raise ValueError("MotionBank: every EncodedMotion needs a motion_id")
            mid = int(em.motion_id)
            if mid not in self.slot and mid not in new:
                if em.n_snippets > self.s or em.features.shape[-1] != self.d:
                    raise ValueError(f"motion {mid}: encoding of shape {em.features.shape} does not fit the "
                                     f"localizer ({self.s} snippets x {self.d})")
                new[mid] = em
        if new:
            self._add(list(new.values()))
        return torch.tensor([self.slot[int(em.motion_id)] for em in motions], dtype=torch.long, device=self.device)

    def _add(self, motions: list) -> None:
        from localizer.data import pad_snippets

        model = self.model
        mb, tb = _blocks(model)
        self._grow(self.n + len(motions))
        for a in range(0, len(motions), self.batch_size):
            chunk = motions[a: a + self.batch_size]
            x, mask = pad_snippets([np.asarray(em.features, dtype=np.float32) for em in chunk])
            x, mask = x.to(self.device), mask.to(self.device)
            if model.cfg.pos_encoding == "before":
                x = x + model.pe[: x.shape[1]].unsqueeze(0).to(x.dtype)
            fs = from_side(mb, x, mask)
            tk, tv = to_side(tb, x)
            rows = slice(self.n, self.n + len(chunk))
            t = x.shape[1]
            for f, v in (("x", fs.x), ("q", fs.q), ("s_val", fs.s_val), ("s_gate", fs.s_gate), ("bs", fs.bs),
                         ("bv", fs.bv), ("tk", tk), ("tv", tv)):
                self.t[f][rows, :t] = v
            self.mask[rows, :t] = mask
            self.length[rows] = mask.sum(dim=1)
            for i, em in enumerate(chunk):
                self.slot[int(em.motion_id)] = self.n + i
            self.n += len(chunk)

    def take(self, slots: torch.Tensor, t: int) -> tuple[FromSide, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The motion side of a batch: its first-block half, the text block's keys / values and the mask, over
        the first t snippets."""
        g = {f: self.t[f][:, :t].index_select(0, slots) for f in _FIELDS}
        fs = FromSide(x=g["x"], q=g["q"], s_val=g["s_val"], s_gate=g["s_gate"], bs=g["bs"], bv=g["bv"])
        return fs, g["tk"], g["tv"], self.mask[:, :t].index_select(0, slots)


@dataclass
class TextSide:
    """Per distinct sentence (U of them, padded to N tokens): what the pairs read from the text."""

    q: torch.Tensor  # (U, N, d): the projected tokens
    mask: torch.Tensor  # (U, N)
    fs: FromSide  # the text block's first-block half
    keys: torch.Tensor  # the motion block's reading of the text (`attention_maps`)
    vals: torch.Tensor
    bias: torch.Tensor


@torch.inference_mode()
def text_side(model: MLPLocalizer, tokens: Sequence[np.ndarray], device: torch.device | str = "cpu") -> TextSide:
    """TextSide of U sentences from their (n_i, text_dim) token embeddings."""
    from localizer.data import pad_snippets

    tok, mask = pad_snippets([np.asarray(t, dtype=np.float32) for t in tokens])
    tok, mask = tok.to(device), mask.to(device)
    mb, tb = _blocks(model)
    q = model.text_proj(tok)
    keys, vals, bias = attention_maps(mb, *to_side(mb, q), mask)
    return TextSide(q=q, mask=mask, fs=from_side(tb, q, mask), keys=keys, vals=vals, bias=bias)


@torch.inference_mode()
def pair_probs(model: MLPLocalizer, bank: MotionBank, slots: torch.Tensor, text: TextSide,
               text_idx: torch.Tensor) -> tuple[SpanProbs, torch.Tensor]:
    """Start / end / highlight distributions of pair b = (sentence text_idx[b], motion in bank slot slots[b]),
    padded to the longest motion of the batch, and the (B, T) mask of valid snippets."""
    t = int(bank.length.index_select(0, slots).max())
    m_fs, m_tk, m_tv, m_mask = bank.take(slots, t)
    q_fs = text.fs.take(text_idx)
    q_mask = text.mask.index_select(0, text_idx)
    mb, tb = _blocks(model)
    fw = fast_weights(model)
    if text.q.shape[0] == 1:  # one sentence: broadcast its maps (one matrix product each, no gather)
        keys, vals, bias = (x.expand((len(slots),) + x.shape[1:]) for x in (text.keys, text.vals, text.bias))
    else:
        keys, vals, bias = (x.index_select(0, text_idx) for x in (text.keys, text.vals, text.bias))
    full = bool(m_mask.all())
    m = motion_block(mb, fw, m_fs, keys, vals, bias, m_mask, full)
    q = pair_block(tb, q_fs, m_tk, m_tv, q_mask, m_mask)
    tenc = model.tenc
    text_blocks = tenc.motion_blocks if tenc.text_blocks is None else tenc.text_blocks
    for mblk, tblk in list(zip(tenc.motion_blocks, text_blocks))[1:]:
        m, q = mblk(m, q, m_mask, q_mask), tblk(q, m, q_mask, m_mask)
    # The rest of MLPLocalizer.forward_encoded (eval) and localize.
    x = context_query(model, fw, m, q, m_mask, q_mask, full)
    x = sentence_concat(model, fw, x, q, q_mask)
    h_logits = model.matcher(x, m_mask, None).float()
    h = torch.sigmoid(h_logits.masked_fill(~m_mask, _NEG))
    x = x * h.unsqueeze(-1).to(x.dtype)
    start, end, _, _ = model.predictor(x, m_mask)
    return SpanProbs(p_start=torch.softmax(start.float(), dim=-1), p_end=torch.softmax(end.float(), dim=-1),
                     highlight=h.float()), m_mask


def pair_flops(cfg, t: int, n: int, fast: bool = True) -> int:
    """Multiply-add FLOPs (2 per multiply-add, matrix products only) of one (sentence, motion) pair with
    t snippets and n tokens, counted from the architecture (`MLPConfig`): on the fast path (`pair_probs`,
    the first block's one-sided halves excluded: they are per motion or per sentence) or the plain one
    (`MLPLocalizer.localize` after the cached S-Enc). The text encoder and the sentence's own projection
    are not counted (once per query, not per pair)."""
    d, h = cfg.d_model, cfg.n_heads
    lin_t, lin_n = 2 * t * d * d, 2 * n * d * d  # one d x d linear over the snippets / the tokens
    full_block = (14 * lin_t + 2 * lin_n + 4 * t * t * d + 4 * t * n * d  # motion side (keys/values of text)
                  + 14 * lin_n + 2 * lin_t + 4 * n * n * d + 4 * n * t * d)  # text side
    if fast:
        first = (2 * t * d * h * n + 2 * t * h * n * d + 6 * lin_t  # motion side: maps, 6 linears
                 + 4 * n * t * d + 7 * lin_n)  # text side: attention over the motion, 7 linears
        cqa = 3 * lin_t + 10 * t * n * d + 2 * n * d * d
        concat = lin_t + 2 * d * d
    else:
        first = full_block
        cqa = 4 * lin_t + 2 * t * n * d + 2 * t * t * n + 2 * t * t * d + 2 * t * n * d
        concat = 2 * lin_t
    rest = (cfg.n_sgpa - 1) * full_block
    gru = 2 * 6 * lin_t  # two GRUs: input and hidden products of three gates
    heads = 2 * (lin_t + 2 * t * d)
    return int(first + rest + cqa + concat + 2 * t * d + gru + heads)


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """This process's fp32 matrix-product rate (GFLOP/s) on an n x n x n product, at torch's thread count:
    the denominator of a bench's achieved fraction of peak."""
    import time

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9
