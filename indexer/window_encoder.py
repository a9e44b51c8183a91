"""Window encoder: encode a whole motion ONCE, then pool the embedding of any window [a, b) from it.

The transformer encoder (`indexer.model.MotionEncoder`) runs a full attention stack over every 10 s chunk;
with chunks every 1 s each frame is encoded about ten times. This encoder instead computes per-frame
features of the whole motion in one pass and pools a window's embedding from them, so one chunk costs
its 1 s of new frames plus a pooling that is O(1) per window (prefix sums).

Architecture (nanoGPT style, shapes in the comments):

- patchify: the normalised (T, 263) frames are cut into snippets of `stride` frames (a stride-`stride`
  Conv1d, i.e. a linear map of the concatenated frames; the last partial snippet is zero-padded),
- a temporal conv stack (TCN): residual blocks `h + W2 gelu(Wd LN(h))` where Wd is a kernel-`kernel`
  dilated Conv1d (dilations `dilations`, zero padding at the motion's ends). Non-causal: snippet k sees
  snippets [k - R, k + R], R = (kernel - 1) / 2 * sum(dilations) (`context_snippets`); with the defaults
  (stride 4, kernel 3, dilations 1..16) R = 31 snippets = 124 frames and the receptive field is 252
  frames, more than a 200-frame chunk,
- per-frame features: every frame takes its snippet's output h[t // stride] (LayerNorm'd), and a score
  s[t] per pooling head (attention pooling; bounded, s = 8 tanh(raw / 8)),
- pooling of a window [a, b) of frames: `mean` = sum_t h_t / (b - a); `attn` = per head (channel group)
  sum_t e^{s_t} h_t / sum_t e^{s_t}. Both are sums over the window, so both are O(1) per window from
  float64 prefix sums over the motion (`pool_windows`),
- the pooled vector -> LayerNorm -> linear -> L2 norm: the window's embedding.

The contract (what "the embedding of window [a, b)" means, and why pooling is exact)
-------------------------------------------------------------------------------------
A conv stack with a receptive field lets the features of frames near a window's edges depend on frames
outside the window, so "encode the window alone" and "pool the window from the whole motion" differ at
the edges. We DEFINE the embedding of window [a, b) of a motion as the pooling of the WHOLE-motion
features over [a, b): frames just outside the window are context, the way they are in the motion. This
is what the model is trained on (training crops are encoded with their context, `context_segment`), what
the index stores for every chunk, and what `RetrievalModel.encode_windows` returns for any span.

Because snippet k only depends on snippets [k - R, k + R], the definition can be computed exactly from
a segment of the motion: `context_segment` widens [a, b) by R snippets each side (snippet-aligned,
clipped to the motion). Running the encoder on that segment alone and pooling [a, b) gives the same
vector as the whole-motion pass, up to float rounding: this is the "direct encoding" of a window, the
training path and the slow path of the index build, and it is tested against the whole-motion prefix-sum
path (`tests/test_window_encoder.py`, tolerance 1e-5 on unit vectors in fp32). A clip given on its own
(`RetrievalModel.encode_motion` of a bare crop) is a whole motion: it has no context beyond its ends.

Input windows of a motion at another rate than the model's `fps` are handled by resampling the whole
motion once (nearest frame) and mapping window bounds to model frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCORE_BOUND = 8.0  # attention scores are bounded to (-8, 8) so prefix sums of e^s stay exact in float64


@dataclass(frozen=True)
class WindowEncoderConfig:
    """Architecture of the window encoder (the `window_*` fields of `RetrievalConfig`)."""

    feature_dim: int = 263
    d_model: int = 128
    hidden: int = 256  # width inside each conv block
    stride: int = 4  # frames per snippet
    kernel: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16)
    pool: str = "mean"  # mean | attn
    pool_heads: int = 4  # attention pooling heads (channel groups)
    embed_dim: int = 256
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pool not in ("mean", "attn"):
            raise ValueError(f"window pool {self.pool!r}: choose mean or attn")
        if self.kernel % 2 != 1 or self.kernel < 1:
            raise ValueError(f"window kernel must be odd, got {self.kernel}")
        if self.stride < 1 or not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"bad window stride {self.stride} / dilations {self.dilations}")
        if self.pool == "attn" and self.d_model % self.pool_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by pool_heads {self.pool_heads}")

    @property
    def context_snippets(self) -> int:
        """R: snippet k depends on snippets [k - R, k + R] only."""
        return (self.kernel - 1) // 2 * sum(self.dilations)

    @property
    def context_frames(self) -> int:
        return self.context_snippets * self.stride


def context_segment(n_frames: int, a: int, b: int, stride: int, context_snippets: int) -> tuple[int, int]:
    """The frames [s, e) of a motion of `n_frames` that determine the features of frames [a, b): the
    window widened by `context_snippets` snippets each side, snippet-aligned, clipped to the motion."""
    if not 0 <= a < b <= n_frames:
        raise ValueError(f"window [{a}, {b}) outside a motion of {n_frames} frames")
    s = max(0, a // stride - context_snippets) * stride
    e = min(n_frames, (-(-b // stride) + context_snippets) * stride)
    return s, e


class TemporalBlock(nn.Module):
    """h + W2 gelu(dilated_conv(LN(h))); frames outside `valid` are zeros before the conv (= padding)."""

    def __init__(self, c: WindowEncoderConfig, dilation: int):
        super().__init__()
        self.norm = nn.LayerNorm(c.d_model)
        self.conv = nn.Conv1d(c.d_model, c.hidden, c.kernel, dilation=dilation, padding=dilation * (c.kernel - 1) // 2)
        self.out = nn.Conv1d(c.hidden, c.d_model, 1)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        y = self.norm(h) * valid  # (B, N, D); valid (B, N, 1)
        y = self.out(F.gelu(self.conv(y.transpose(1, 2))))  # (B, D, N)
        return h + self.drop(y.transpose(1, 2))


class WindowEncoder(nn.Module):
    """Normalised frames (B, T, 263) + validity (B, T) -> per-frame features; pooled windows -> unit vectors."""

    def __init__(self, c: WindowEncoderConfig):
        super().__init__()
        self.c = c
        self.patch = nn.Conv1d(c.feature_dim, c.d_model, c.stride, stride=c.stride)
        self.blocks = nn.ModuleList(TemporalBlock(c, d) for d in c.dilations)
        self.norm = nn.LayerNorm(c.d_model)
        self.score = nn.Linear(c.d_model, c.pool_heads) if c.pool == "attn" else None
        self.pool_norm = nn.LayerNorm(c.d_model)
        self.proj = nn.Linear(c.d_model, c.embed_dim)

    def snippet_features(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, F) frames (zeros where not valid) -> snippet features (B, N, D) and scores (B, N, H) or
        None, N = ceil(T / stride)."""
        b, t, _ = x.shape
        s = self.c.stride
        n = -(-t // s)
        x = F.pad(x, (0, 0, 0, n * s - t))  # (B, N*S, F) the partial last snippet is zero-padded
        vs = F.pad(valid, (0, n * s - t)).view(b, n, s).any(-1)  # (B, N) a snippet with any valid frame
        vm = vs[..., None].to(x.dtype)  # (B, N, 1)
        h = self.patch(x.transpose(1, 2)).transpose(1, 2)  # (B, N, D)
        for block in self.blocks:
            h = block(h, vm)
        h = self.norm(h)
        scores = SCORE_BOUND * torch.tanh(self.score(h) / SCORE_BOUND) if self.score is not None else None
        return h, scores

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled window vectors (W, D) -> unit embeddings (W, E)."""
        return F.normalize(self.proj(self.pool_norm(pooled.to(self.proj.weight.dtype))).float(), dim=-1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, pool: torch.Tensor | None = None) -> torch.Tensor:
        """Direct path: (B, T, F) frames, validity (B, T), frames to pool (B, T) (default: every valid
        frame) -> (B, E). Pooling is the masked sum of the frame-level definition (see the docstring)."""
        b, t, _ = x.shape
        s = self.c.stride
        pool = valid if pool is None else pool & valid
        h, scores = self.snippet_features(x, valid)  # (B, N, D), (B, N, H)
        n = h.shape[1]
        counts = F.pad(pool, (0, n * s - t)).view(b, n, s).sum(-1).to(torch.float32)  # (B, N) frames pooled
        if scores is None:
            w = counts[..., None]  # (B, N, 1)
            pooled = (w * h.float()).sum(1) / w.sum(1).clamp(min=1e-6)  # (B, D)
        else:
            sc = scores.float().masked_fill(counts[..., None] == 0, -math.inf)  # (B, N, H)
            w = counts[..., None] * torch.exp(sc - sc.amax(1, keepdim=True))  # (B, N, H)
            w = w / w.sum(1, keepdim=True)
            heads = h.float().view(b, n, self.c.pool_heads, -1)  # (B, N, H, D/H)
            pooled = (w[..., None] * heads).sum(1).reshape(b, -1)  # (B, D)
        return self.embed(pooled)

    def pool_windows(self, h: torch.Tensor, scores: torch.Tensor | None, n_frames: int,
                     windows: np.ndarray) -> torch.Tensor:
        """Fast path: one motion's snippet features (N, D) (+ scores (N, H)) and windows (W, 2) of frames
        [a, b) -> (W, E), from float64 prefix sums over frames (O(1) per window)."""
        s = self.c.stride
        hf = h.double().repeat_interleave(s, dim=0)[:n_frames]  # (T, D) every frame takes its snippet's
        a = torch.as_tensor(windows[:, 0], dtype=torch.long, device=h.device)
        e = torch.as_tensor(windows[:, 1], dtype=torch.long, device=h.device)
        if scores is None:
            cs = F.pad(hf.cumsum(0), (0, 0, 1, 0))  # (T+1, D)
            pooled = (cs[e] - cs[a]) / (e - a).double()[:, None]  # (W, D)
        else:
            wf = torch.exp(scores.double().repeat_interleave(s, dim=0)[:n_frames])  # (T, H)
            nh = self.c.pool_heads
            num = (wf[..., None] * hf.view(n_frames, nh, -1)).reshape(n_frames, -1)  # (T, D)
            cnum = F.pad(num.cumsum(0), (0, 0, 1, 0))  # (T+1, D)
            cden = F.pad(wf.cumsum(0), (0, 0, 1, 0))  # (T+1, H)
            den = (cden[e] - cden[a]).repeat_interleave(h.shape[1] // nh, dim=1)  # (W, D)
            pooled = (cnum[e] - cnum[a]) / den
        return self.embed(pooled.float())
