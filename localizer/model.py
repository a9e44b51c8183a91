"""MLP: Motion Label Prior localizer (Yan et al.), one model in one file, its config at the top.

Encoding -> fusion -> match -> prediction:

- Joint Recover (done outside the model, see `localizer.snippets`): (T, 22, 12) snippets,
  standardised here with training-set statistics held in buffers (`input_mean`, `input_std`).
- S-Enc: 7 graph convolutions ``A_l (X W)`` (an input layer 12 -> d and 3 residual blocks of two layers),
  each with its own learnable 22 x 22 adjacency initialised to the SMPL tree plus self-loops, BatchNorm,
  tanh; mean over joints -> (T, d). BatchNorm only ever sees valid snippets: the encoder runs on the
  valid rows gathered out of the padded batch. Variants without S-Enc (MLP-S, MLPBase) use one linear
  layer over the flattened 22 x 12 input ("an FFN for dimension alignment").
- T-Enc: N SGPA blocks; the same blocks encode text -> motion and motion -> text (`shared_tenc`).
  Text tokens are frozen transformer embeddings projected to d. No positional encoding inside.
- Fusion: VSLNet context-query attention ``[M; A; M*A; M*B] -> d``, then additive attention pooling of
  the sentence concatenated to every snippet, ``2d -> d``.
- LP-Matcher: label embeddings (background, foreground, [PAD]) + sinusoidal PE added to the fused
  features, kernel-1 conv + sigmoid = highlight h; features * h. The training step replaces one
  contiguous block of alpha * L valid labels by [PAD] (`perturb_labels`); inference uses [PAD] everywhere.
- LP-Predictor: start GRU -> head, end GRU over the start GRU's outputs -> head; softmax over valid
  snippets. Recovering part (training only): flipped start / end label embeddings appended after each
  sample's *valid* snippets (so a sample's packing never depends on the batch's padding); the
  unidirectional GRUs guarantee the predicting outputs never see the labels.
- Losses (`mlp_loss`): 5 * BCE(h) (fg weight 2) + 1 * span CE + 1 * recovery CE + 1 * KL(P_rec || P_pred);
  options: the official start + end sums, the paper's KL direction, a stop-gradient into P_rec.

Padded snippets never enter softmaxes (masked with -inf / a large negative before softmax), BatchNorm
statistics or losses, so batched padded inference equals one-at-a-time inference (tested).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

N_JOINTS = 22
JOINT_CHANNELS = 12
BACKGROUND, FOREGROUND, PAD_LABEL = 0, 1, 2
_NEG = -1e30  # "minus infinity" that stays finite (attention rows whose keys are all padded stay finite)
# Parents of the 22 SMPL joints (engine.corpus.skeleton.PARENTS; repeated so the model file stands alone).
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)


@dataclass
class MLPConfig:
    """Architecture and loss settings; the variant switches choose MLP / MLP-S / MLPBase and ablations."""

    d_model: int = 256
    n_heads: int = 4
    n_sgpa: int = 4
    n_snippets: int = 256  # S: longer motions are mean-pooled into S snippets
    text_dim: int = 384  # token embedding size of the text encoder (MiniLM 384, MPNet/RoBERTa 768, GloVe 50)
    dropout: float = 0.1
    # --- variant switches
    spatial_encoder: bool = True  # S-Enc (GCN); False = linear layer over the flattened 22 x 12 input
    gcn_layers: int = 7  # 1 input layer + residual blocks of 2 layers (odd)
    shared_tenc: bool = True  # one set of SGPA blocks for both modalities
    label_prior: bool = True  # LP-Matcher with label embeddings; False = plain sequence matcher (Eq. 4)
    pos_encoding: str = "after"  # "after" (at the matcher), "before" (T-Enc input) or "none"
    perturb_start: float = 0.8  # alpha at step 0 ...
    perturb_end: float = 1.0  # ... rising linearly to this at the last step
    recovering: bool = True  # LP-Predictor recovering part
    alignment: bool = True  # dual-alignment KL (only with the recovering part)
    flip_rate: float = 0.1  # beta (paper: BABEL 0.1, HumanML3D 0.2)
    # "xor": every valid position flipped with probability beta (this project's first recipe);
    # "replace": the official code's `apply_label_noise`: at rate beta a label is replaced by randint(0, 2),
    # so it flips with probability beta / 2.
    flip_mode: str = "xor"
    # --- alignment (dual-alignment KL)
    align_direction: str = "rec_pred"  # "rec_pred": KL(P_rec || P_pred) (official code); "pred_rec": Eq. 11
    align_detach: bool = False  # stop the gradient into P_rec (the recovering part is the teacher)
    # --- losses
    fg_weight: float = 2.0
    lambda_seq: float = 5.0
    lambda_span: float = 1.0
    lambda_rec: float = 1.0
    lambda_align: float = 1.0
    kl_temperature: float = 1.0
    # "mean": L_span, L_rec and L_align are 1/2 (start + end) (Eq. 12); "sum": start + end (official losses)
    loss_reduce: str = "mean"

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.gcn_layers < 1 or self.gcn_layers % 2 != 1:
            raise ValueError(f"gcn_layers must be odd and >= 1 (input layer + blocks of two), got {self.gcn_layers}")
        if self.pos_encoding not in ("after", "before", "none"):
            raise ValueError(f"pos_encoding must be 'after', 'before' or 'none', got {self.pos_encoding!r}")
        if not (0.0 <= self.perturb_start <= 1.0 and 0.0 <= self.perturb_end <= 1.0):
            raise ValueError("perturb_start / perturb_end must lie in [0, 1]")
        for name, value, allowed in (("flip_mode", self.flip_mode, ("xor", "replace")),
                                     ("align_direction", self.align_direction, ("rec_pred", "pred_rec")),
                                     ("loss_reduce", self.loss_reduce, ("mean", "sum"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MLPConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MLPConfig fields: {sorted(unknown)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------- outputs
@dataclass
class MLPOutput:
    """Logits over snippets; padded positions of the span logits are -inf."""

    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor  # (B, T)
    highlight_logits: torch.Tensor  # (B, T) (valid positions only are meaningful)
    highlight: torch.Tensor  # (B, T) sigmoid scores, 0 at padding
    rec_start_logits: torch.Tensor | None = None  # (B, T) recovering part (training only)
    rec_end_logits: torch.Tensor | None = None


@dataclass
class SpanProbs:
    """Inference output: start / end distributions over the valid snippets (0 at padding)."""

    p_start: torch.Tensor  # (B, T)
    p_end: torch.Tensor  # (B, T)
    highlight: torch.Tensor  # (B, T)


@dataclass
class LossTerms:
    total: torch.Tensor
    seq: torch.Tensor
    span: torch.Tensor
    rec: torch.Tensor
    align: torch.Tensor

    # diagnostics (no gradient): mean probability of the true start / end index, averaged over both
    p_pred_true: torch.Tensor | None = None  # under P_pred (the predicting part)
    p_rec_true: torch.Tensor | None = None  # under P_rec (the recovering part), when it ran

    def as_floats(self) -> dict[str, float]:
        out = {k: float(getattr(self, k).detach()) for k in ("total", "seq", "span", "rec", "align")}
        for k in ("p_pred_true", "p_rec_true"):
            v = getattr(self, k)
            if v is not None:
                out[k] = float(v)
        return out


# ---------------------------------------------------------------------------------------------- helpers
def smpl_adjacency() -> torch.Tensor:
    """(22, 22) binary adjacency of the SMPL tree plus self-loops."""
    a = torch.eye(N_JOINTS)
    for j, p in enumerate(SMPL_PARENTS):
        if p >= 0:
            a[j, p] = a[p, j] = 1.0
    return a


def sinusoidal_encoding(n_positions: int, dim: int) -> torch.Tensor:
    """(n_positions, dim) transformer sine/cosine position encoding."""
    pos = torch.arange(n_positions, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n_positions, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe


def _mask_fill(x: torch.Tensor, mask: torch.Tensor, value: float = _NEG) -> torch.Tensor:
    return x.masked_fill(~mask, value)


# ---------------------------------------------------------------------------------------------- S-Enc
class JointBatchNorm(nn.Module):
    """BatchNorm per (joint, channel) for joint-major (J, N, C) activations (N = valid snippets only).

    Same statistics and running averages as ``nn.BatchNorm1d(J * C)`` on (N, J * C) rows (the authors'
    layout), without the transposes.
    """

    def __init__(self, n_joints: int, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(n_joints, channels))
        self.bias = nn.Parameter(torch.zeros(n_joints, channels))
        self.register_buffer("running_mean", torch.zeros(n_joints, channels))
        self.register_buffer("running_var", torch.ones(n_joints, channels))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # y: (J, N, C)
        n = y.shape[1]
        if self.training:
            if n < 2:
                raise ValueError("S-Enc BatchNorm needs at least 2 valid snippets in a training batch")
            var, mean = torch.var_mean(y.float(), dim=1, unbiased=False)  # (J, C)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * (n / (n - 1)), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = torch.rsqrt(var + self.eps) * self.weight  # (J, C)
        shift = self.bias - mean * scale
        return y * scale.unsqueeze(1).to(y.dtype) + shift.unsqueeze(1).to(y.dtype)


class GraphConv(nn.Module):
    """``BN(A (X W))`` with a learnable adjacency A initialised to the SMPL tree + self-loops.

    Works on joint-major (J, N, C) tensors so that both products are single matrix multiplications.
    """

    def __init__(self, in_dim: int, out_dim: int, adjacency: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        nn.init.xavier_uniform_(self.weight)
        self.adjacency = nn.Parameter(adjacency.clone())
        self.bn = JointBatchNorm(adjacency.shape[0], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (J, N, C) valid snippets only
        j, n, c = x.shape
        d = self.weight.shape[1]
        a, w = self.adjacency.to(x.dtype), self.weight.to(x.dtype)
        if c < d:  # (A X) W: the cheaper order when the input is narrower
            y = (a @ x.reshape(j, n * c)).reshape(j * n, c) @ w  # (J, N*C) -> (J*N, C) -> (J*N, d)
        else:
            y = a @ (x.reshape(j * n, c) @ w).reshape(j, n * d)  # (J*N, d) -> (J, N*d)
        return self.bn(y.reshape(j, n, d))  # (J, N, d)


class SpatialEncoder(nn.Module):
    """S-Enc: an input graph conv and residual blocks of two graph convs, tanh, mean over joints."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        adj = smpl_adjacency()
        d = cfg.d_model
        self.input_layer = GraphConv(JOINT_CHANNELS, d, adj)
        n_blocks = (cfg.gcn_layers - 1) // 2
        self.blocks = nn.ModuleList(
            nn.ModuleList([GraphConv(d, d, adj), GraphConv(d, d, adj)]) for _ in range(n_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, J, 12) -> (N, d)
        y = torch.tanh(self.input_layer(x.transpose(0, 1).contiguous()))  # (J, N, d)
        for g1, g2 in self.blocks:
            y = torch.tanh(g2(torch.tanh(g1(y)))) + y
        return y.mean(dim=0)


# ---------------------------------------------------------------------------------------------- T-Enc
class SGPABlock(nn.Module):
    """Self-guided parallel attention (SeqPAN), pre-LayerNorm, one query for self- and cross-attention."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.dropout = dropout
        self.ln_from = nn.LayerNorm(d, eps=1e-6)
        self.ln_to = nn.LayerNorm(d, eps=1e-6)
        self.ln_out = nn.LayerNorm(d, eps=1e-6)
        self.query = nn.Linear(d, d)
        self.f_key, self.f_value = nn.Linear(d, d), nn.Linear(d, d)
        self.t_key, self.t_value = nn.Linear(d, d), nn.Linear(d, d)
        self.s_proj, self.x_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.s_gate, self.x_gate = nn.Linear(d, d), nn.Linear(d, d)
        self.guided_dense = nn.Linear(d, d)
        self.bilinear_s1, self.bilinear_s2 = nn.Linear(d, d), nn.Linear(d, d)
        self.bilinear_v1, self.bilinear_v2 = nn.Linear(d, d), nn.Linear(d, d)
        self.output_dense = nn.Linear(d, d)
        self.out_layer = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, N, dh)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        attn_mask = key_mask[:, None, None, :]  # (B, 1, 1, Nk) True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        b, h, n, dh = out.shape
        return out.transpose(1, 2).reshape(b, n, h * dh)  # (B, N, d)

    def forward(self, x_from: torch.Tensor, x_to: torch.Tensor, from_mask: torch.Tensor,
                to_mask: torch.Tensor) -> torch.Tensor:
        residual_in = x_from
        f = self.ln_from(x_from)
        t = self.ln_to(x_to)
        q = self._heads(self.query(f))
        s_val = self.s_proj(self._attend(q, self._heads(self.f_key(f)), self._heads(self.f_value(f)), from_mask))
        x_val = self.x_proj(self._attend(q, self._heads(self.t_key(t)), self._heads(self.t_value(t)), to_mask))
        # cross gating
        gated = torch.sigmoid(self.s_gate(s_val)) * x_val + torch.sigmoid(self.x_gate(x_val)) * s_val
        gated = self.guided_dense(gated)
        # self-guided bilinear gate
        scores = self.bilinear_s1(f) + self.bilinear_s2(gated)
        values = self.bilinear_v1(f) + self.bilinear_v2(gated)
        out = torch.sigmoid(_mask_fill(scores, from_mask.unsqueeze(-1))) * values
        out = self.output_dense(out)
        residual = self.drop(out) + residual_in
        out = self.out_layer(self.drop(self.ln_out(residual)))
        return self.drop(out) + residual


class TemporalEncoder(nn.Module):
    """N SGPA blocks applied to motion (-> text) and text (-> motion), shared or per modality."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.shared = cfg.shared_tenc
        self.motion_blocks = nn.ModuleList(SGPABlock(cfg.d_model, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_sgpa))
        self.text_blocks = None if self.shared else nn.ModuleList(
            SGPABlock(cfg.d_model, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_sgpa))

    def forward(self, m: torch.Tensor, q: torch.Tensor, m_mask: torch.Tensor,
                q_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text_blocks = self.motion_blocks if self.text_blocks is None else self.text_blocks
        for mb, tb in zip(self.motion_blocks, text_blocks):
            m, q = mb(m, q, m_mask, q_mask), tb(q, m, q_mask, m_mask)
        return m, q


# ---------------------------------------------------------------------------------------------- fusion
class ContextQueryAttention(nn.Module):
    """VSLNet trilinear context-query attention: [M; A; M*A; M*B] -> d."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.w_c = nn.Parameter(torch.empty(d, 1))
        self.w_q = nn.Parameter(torch.empty(d, 1))
        self.w_cq = nn.Parameter(torch.empty(1, 1, d))
        for w in (self.w_c, self.w_q, self.w_cq):
            nn.init.xavier_uniform_(w)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(4 * d, d)

    def forward(self, c: torch.Tensor, q: torch.Tensor, c_mask: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        cd, qd = self.drop(c), self.drop(q)
        score = (cd @ self.w_c.to(c.dtype)) + (qd @ self.w_q.to(c.dtype)).transpose(1, 2) \
            + (cd * self.w_cq.to(c.dtype)) @ qd.transpose(1, 2)  # (B, Tc, Nq)
        score = score.float()
        s_row = torch.softmax(_mask_fill(score, q_mask[:, None, :]), dim=2)  # over query tokens
        s_col = torch.softmax(_mask_fill(score, c_mask[:, :, None]), dim=1)  # over valid snippets
        c2q = s_row.to(c.dtype) @ q  # (B, Tc, d)
        q2c = (s_row @ s_col.transpose(1, 2)).to(c.dtype) @ c  # (B, Tc, d)
        return self.out(torch.cat([c, c2q, c * c2q, c * q2c], dim=-1))


class WeightedPool(nn.Module):
    """Additive attention pooling over valid tokens."""

    def __init__(self, d: int):
        super().__init__()
        self.w = nn.Parameter(torch.empty(d, 1))
        nn.init.xavier_uniform_(self.w)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        alpha = torch.softmax(_mask_fill((x @ self.w.to(x.dtype)).squeeze(-1).float(), mask), dim=1)  # (B, N)
        return (alpha.to(x.dtype).unsqueeze(1) @ x).squeeze(1)  # (B, d)


class SentenceConcat(nn.Module):
    """Pool the sentence and concatenate it to every snippet: 2d -> d."""

    def __init__(self, d: int):
        super().__init__()
        self.pool = WeightedPool(d)
        self.out = nn.Linear(2 * d, d)

    def forward(self, m: torch.Tensor, q: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        s = self.pool(q, q_mask).unsqueeze(1).expand(-1, m.shape[1], -1)  # (B, T, d)
        return self.out(torch.cat([m, s], dim=-1))


# ---------------------------------------------------------------------------------------------- matcher
class SequenceMatcher(nn.Module):
    """LP-Matcher (label_prior) or the plain sequence matcher: highlight h = sigmoid(conv1(x [+ E + PE]))."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.label_prior = cfg.label_prior
        self.use_pe = cfg.pos_encoding == "after"
        self.label_emb = nn.Embedding(3, cfg.d_model) if self.label_prior else None
        self.register_buffer("pe", sinusoidal_encoding(cfg.n_snippets, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.conv = nn.Linear(cfg.d_model, 1)  # kernel-1 Conv1D

    def forward(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Highlight logits (B, T). `labels` (B, T) in {0 bg, 1 fg, 2 PAD}; None = all [PAD] (inference)."""
        extra = None
        if self.label_prior:
            if labels is None:
                labels = torch.full(mask.shape, PAD_LABEL, dtype=torch.long, device=x.device)
            extra = self.label_emb(labels)
        if self.use_pe:
            pe = self.pe[: x.shape[1]].unsqueeze(0)
            extra = pe if extra is None else extra + pe
        if extra is not None:
            x = x + self.drop(extra).to(x.dtype)
        return self.conv(x).squeeze(-1)


# ---------------------------------------------------------------------------------------------- predictor
def _head(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d, eps=1e-6), nn.ReLU(), nn.Linear(d, 1))


class SpanPredictor(nn.Module):
    """LP-Predictor: predicting part (start GRU, end GRU over start outputs) + optional recovering part."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        d = cfg.d_model
        self.start_gru = nn.GRU(d, d, batch_first=True)
        self.end_gru = nn.GRU(d, d, batch_first=True)
        self.start_head, self.end_head = _head(d), _head(d)
        self.recovering = cfg.recovering
        if self.recovering:
            self.start_label_emb = nn.Embedding(2, d)
            self.end_label_emb = nn.Embedding(2, d)

    @staticmethod
    def _pack(x: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per sample [x_0..x_{L-1}, labels_0..labels_{L-1}, pad...]: (B, 2T, d)."""
        b, t, d = x.shape
        pool = torch.cat([x, labels.to(x.dtype), x.new_zeros(b, 1, d)], dim=1)  # (B, 2T+1, d)
        p = torch.arange(2 * t, device=x.device).unsqueeze(0)  # (1, 2T)
        L = lengths.unsqueeze(1)
        idx = torch.where(p < L, p, torch.where(p < 2 * L, t + p - L, torch.full_like(p, 2 * t)))  # (B, 2T)
        return torch.gather(pool, 1, idx.unsqueeze(-1).expand(-1, -1, d))

    @staticmethod
    def _unpack_rec(y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Outputs at positions L..2L-1 of a packed (B, 2T, ...) sequence -> (B, T, ...)."""
        t = y.shape[1] // 2
        q = torch.arange(t, device=y.device).unsqueeze(0) + lengths.unsqueeze(1)  # (B, T)
        q = q.clamp(max=2 * t - 1)
        return torch.gather(y, 1, q.view(q.shape + (1,) * (y.dim() - 2)).expand((-1, -1) + y.shape[2:]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, flipped_start: torch.Tensor | None = None,
                flipped_end: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(start, end, rec_start | None, rec_end | None) logits (B, T), -inf at padding."""
        t = x.shape[1]
        if flipped_start is None or not self.recovering:
            hs, _ = self.start_gru(x)
            he, _ = self.end_gru(hs)
            start = _mask_fill(self.start_head(hs).squeeze(-1).float(), mask, float("-inf"))
            end = _mask_fill(self.end_head(he).squeeze(-1).float(), mask, float("-inf"))
            return start, end, None, None
        lengths = mask.sum(dim=1)
        hs, _ = self.start_gru(self._pack(x, self.start_label_emb(flipped_start), lengths))  # (B, 2T, d)
        hs_pred = hs[:, :t]
        he, _ = self.end_gru(self._pack(hs_pred, self.end_label_emb(flipped_end), lengths))  # (B, 2T, d)
        s_all = self.start_head(hs).squeeze(-1).float()  # (B, 2T)
        e_all = self.end_head(he).squeeze(-1).float()
        start = _mask_fill(s_all[:, :t], mask, float("-inf"))
        end = _mask_fill(e_all[:, :t], mask, float("-inf"))
        rec_start = _mask_fill(self._unpack_rec(s_all, lengths), mask, float("-inf"))
        rec_end = _mask_fill(self._unpack_rec(e_all, lengths), mask, float("-inf"))
        return start, end, rec_start, rec_end


# ---------------------------------------------------------------------------------------------- model
class MLPLocalizer(nn.Module):
    """The MLP localizer. `encode_motion` is query-independent and cacheable; `localize` takes its output."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.register_buffer("input_mean", torch.zeros(N_JOINTS, JOINT_CHANNELS))
        self.register_buffer("input_std", torch.ones(N_JOINTS, JOINT_CHANNELS))
        if cfg.spatial_encoder:
            self.senc = SpatialEncoder(cfg)
            self.motion_proj = None
        else:
            self.senc = None
            self.motion_proj = nn.Linear(N_JOINTS * JOINT_CHANNELS, d)
        self.in_drop = nn.Dropout(cfg.dropout)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.register_buffer("pe", sinusoidal_encoding(cfg.n_snippets, d), persistent=False)
        self.tenc = TemporalEncoder(cfg)
        self.cqa = ContextQueryAttention(d, cfg.dropout)
        self.concat = SentenceConcat(d)
        self.matcher = SequenceMatcher(cfg)
        self.predictor = SpanPredictor(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per (joint, channel) standardisation of the 22 x 12 input, from the training set."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(N_JOINTS, JOINT_CHANNELS))
        std = torch.as_tensor(std, dtype=torch.float32).reshape(N_JOINTS, JOINT_CHANNELS)
        self.input_std.copy_(torch.clamp(std, min=1e-3))

    # --- query-independent part
    def encode_motion(self, snippets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, 22, 12) snippets + (B, T) mask -> (B, T, d), zeros at padding. Cacheable per motion."""
        x = (snippets.float() - self.input_mean) / self.input_std
        if self.senc is not None:
            rows = self.senc(self.in_drop(x[mask]))  # (N_valid, d): BN statistics from valid rows only
            out = rows.new_zeros(mask.shape + (rows.shape[-1],))  # (B, T, d)
            out[mask] = rows
            return out
        b, t = mask.shape
        out = self.motion_proj(self.in_drop(x.reshape(b, t, N_JOINTS * JOINT_CHANNELS)))  # (B, T, 264) -> (B, T, d)
        return out * mask.unsqueeze(-1).to(out.dtype)

    # --- query-dependent part
    def forward_encoded(self, motion: torch.Tensor, m_mask: torch.Tensor, text: torch.Tensor, t_mask: torch.Tensor,
                        matcher_labels: torch.Tensor | None = None, flipped_start: torch.Tensor | None = None,
                        flipped_end: torch.Tensor | None = None) -> MLPOutput:
        """Everything after S-Enc. `motion` (B, T, d) from `encode_motion`; `text` (B, N, text_dim) tokens."""
        m = motion
        if self.cfg.pos_encoding == "before":
            m = m + self.pe[: m.shape[1]].unsqueeze(0).to(m.dtype)
        q = self.in_drop(self.text_proj(text))
        m, q = self.tenc(m, q, m_mask, t_mask)
        x = self.cqa(m, q, m_mask, t_mask)
        x = self.concat(x, q, t_mask)
        h_logits = self.matcher(x, m_mask, matcher_labels).float()
        h = torch.sigmoid(_mask_fill(h_logits, m_mask))
        x = x * h.unsqueeze(-1).to(x.dtype)
        start, end, rec_s, rec_e = self.predictor(x, m_mask, flipped_start, flipped_end)
        return MLPOutput(start_logits=start, end_logits=end, highlight_logits=h_logits, highlight=h,
                         rec_start_logits=rec_s, rec_end_logits=rec_e)

    def forward(self, snippets: torch.Tensor, m_mask: torch.Tensor, text: torch.Tensor, t_mask: torch.Tensor,
                matcher_labels: torch.Tensor | None = None, flipped_start: torch.Tensor | None = None,
                flipped_end: torch.Tensor | None = None) -> MLPOutput:
        return self.forward_encoded(self.encode_motion(snippets, m_mask), m_mask, text, t_mask,
                                    matcher_labels, flipped_start, flipped_end)

    def localize(self, motion: torch.Tensor, m_mask: torch.Tensor, text: torch.Tensor,
                 t_mask: torch.Tensor) -> SpanProbs:
        """Inference from cached `encode_motion` output: start / end distributions (all labels [PAD])."""
        out = self.forward_encoded(motion, m_mask, text, t_mask)
        return SpanProbs(p_start=torch.softmax(out.start_logits.float(), dim=-1),
                         p_end=torch.softmax(out.end_logits.float(), dim=-1), highlight=out.highlight.float())

    # --- training-time label priors
    def perturb_labels(self, h_labels: torch.Tensor, mask: torch.Tensor, alpha: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """LP-Matcher input: fg/bg labels with one contiguous block of floor(alpha * L) valid snippets set to [PAD].

        Padded snippets are [PAD] too. alpha = 1 hides every label (the inference condition).
        """
        labels = h_labels.long().clone()
        lengths = mask.sum(dim=1)
        n_hidden = torch.floor(lengths.float() * alpha).long()
        span = (lengths - n_hidden + 1).float()
        u = torch.rand(lengths.shape, generator=generator, device=lengths.device)
        start = torch.minimum(torch.floor(u * span).long(), lengths - n_hidden)
        pos = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
        hidden = (pos >= start.unsqueeze(1)) & (pos < (start + n_hidden).unsqueeze(1))
        labels[hidden | ~mask] = PAD_LABEL
        return labels

    def flip_labels(self, index: torch.Tensor, mask: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Recovering-part input: one-hot boundary labels (B, T), noised at rate beta on valid positions.

        `flip_mode` "xor": each position flips with probability beta. "replace" (official): each position is
        redrawn uniformly from {0, 1} with probability beta, i.e. flips with probability beta / 2.
        """
        onehot = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
        onehot.scatter_(1, index.long().unsqueeze(1), 1)
        hit = (torch.rand(mask.shape, generator=generator, device=mask.device) < self.cfg.flip_rate) & mask
        if self.cfg.flip_mode == "replace":
            new = torch.randint(0, 2, mask.shape, generator=generator, device=mask.device)
            return torch.where(hit, new, onehot) * mask.long()
        return (onehot ^ hit.long()) * mask.long()


# ---------------------------------------------------------------------------------------------- losses
def _masked_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor, temp: float) -> torch.Tensor:
    """Mean over the batch of KL(P || Q), P = softmax(p_logits / t), over valid positions only."""
    logp = torch.log_softmax(p_logits / temp, dim=-1)
    logq = torch.log_softmax(q_logits / temp, dim=-1)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    # Replace the -inf of padded positions *before* the product so no NaN reaches the gradient.
    logp_v, logq_v = torch.where(mask, logp, zero), torch.where(mask, logq, zero)
    return (logp_v.exp() * mask * (logp_v - logq_v)).sum(dim=-1).mean()


def _true_prob(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.detach().float(), dim=-1).gather(1, index.long().unsqueeze(1)).mean()


def mlp_loss(out: MLPOutput, cfg: MLPConfig, mask: torch.Tensor, start_idx: torch.Tensor, end_idx: torch.Tensor,
             h_labels: torch.Tensor, align_weight: float | None = None,
             span_loss: torch.Tensor | None = None) -> LossTerms:
    """Eq. 12: lambda_1 L_seq + lambda_2 L_span + lambda_3 L_rec + lambda_4 L_align (padding excluded).

    L_span, L_rec and L_align combine their start and end terms by `cfg.loss_reduce`: "mean" (Eq. 12) or
    "sum" (the official losses). L_align is KL(P_rec || P_pred) (official, `align_direction="rec_pred"`) or
    KL(P_pred || P_rec) (Eq. 11, "pred_rec"); `align_detach` stops its gradient into P_rec.
    `align_weight` replaces lambda_4 (a ramp); `span_loss` replaces the per-motion span CE (e.g. the
    shared-normalisation loss over negatives, already combined by `loss_reduce`).
    """
    k = 0.5 if cfg.loss_reduce == "mean" else 1.0
    maskf = mask.float()
    y = h_labels.float()
    bce = F.binary_cross_entropy_with_logits(out.highlight_logits.float(), y, reduction="none")
    w = torch.where(y > 0.5, torch.full_like(y, cfg.fg_weight), torch.ones_like(y))
    seq = (bce * w * maskf).sum() / maskf.sum().clamp(min=1.0)
    if span_loss is None:
        span = k * (F.cross_entropy(out.start_logits, start_idx) + F.cross_entropy(out.end_logits, end_idx))
    else:
        span = span_loss
    zero = seq.new_zeros(())
    rec = align = zero
    p_pred_true = 0.5 * (_true_prob(out.start_logits, start_idx) + _true_prob(out.end_logits, end_idx))
    p_rec_true = None
    if out.rec_start_logits is not None and out.rec_end_logits is not None:
        rec = k * (F.cross_entropy(out.rec_start_logits, start_idx) + F.cross_entropy(out.rec_end_logits, end_idx))
        p_rec_true = 0.5 * (_true_prob(out.rec_start_logits, start_idx) + _true_prob(out.rec_end_logits, end_idx))
        if cfg.alignment:
            t = cfg.kl_temperature
            pairs = ((out.rec_start_logits, out.start_logits), (out.rec_end_logits, out.end_logits))
            kls = []
            for rec_l, pred_l in pairs:
                if cfg.align_detach:
                    rec_l = rec_l.detach()
                p, q = (rec_l, pred_l) if cfg.align_direction == "rec_pred" else (pred_l, rec_l)
                kls.append(_masked_kl(p, q, mask, t))
            align = k * (kls[0] + kls[1])
    lam_align = cfg.lambda_align if align_weight is None else align_weight
    total = cfg.lambda_seq * seq + cfg.lambda_span * span + cfg.lambda_rec * rec + lam_align * align
    return LossTerms(total=total, seq=seq, span=span, rec=rec, align=align, p_pred_true=p_pred_true,
                     p_rec_true=p_rec_true)
