"""Rehamot-style text-motion retrieval model (dual encoder) and its DropTriple loss.

One vector per motion window and one per sentence, both L2-normalised, compared by cosine (inner
product), so that chunk vectors can live in a FAISS inner-product index.

- Motion: (x - mean) / std -> linear 263 -> d_model, a learnable [EMB] token in front, sinusoidal PE,
  transformer encoder (pre-norm off, GELU, key padding mask); the [EMB] output is L2-normalised,
  projected to `embed_dim` and normalised again.
- Or, with `RetrievalConfig.arch='window'`, the window encoder of indexer/window_encoder.py: one conv pass
  per motion, any window's embedding pooled from it (`encode_windows`); checkpoints record their `arch`
  (absent: 'transformer', so older checkpoints load, and fingerprint, unchanged).
- Text: a frozen sentence encoder (MiniLM, 384-d, `engine.corpus.text.sentence_encoder`: plain-torch BERT
  on the model's device, `engine.corpus.bert`) -> projection
  (linear, or a small MLP) -> L2 norm. LoRA on the text encoder is not implemented (the encoder stays frozen).
- Loss (`drop_triple_loss`): hinge triplet with margin 0.2 in both directions; warm-up epochs sum every
  violation, later epochs keep only the hardest negative; negatives that are probably positives
  (motion-motion or text-text similarity above a threshold) are dropped before the hardest is chosen.

The checkpoint (`save` / `load`) holds the config, the weights and the feature mean/std; it loads with
`torch.load(weights_only=True)` and never needs the training data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.corpus.device import resolve_device
from engine.corpus.io import atomic_writer, load_weights
from engine.corpus.skeleton import FEATURE_DIM
from indexer.chunks import resample_window
from indexer.window_encoder import WindowEncoder, WindowEncoderConfig, context_segment

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
ARCHS = ("transformer", "window")


@dataclass
class RetrievalConfig:
    """Architecture of the retrieval model (stored in every checkpoint)."""

    feature_dim: int = FEATURE_DIM
    d_model: int = 256  # transformer width
    n_layers: int = 3
    n_heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    embed_dim: int = 256  # joint text-motion space
    fps: float = 20.0  # the frame rate the motion encoder reads; other rates are resampled
    max_frames: int = 1024  # longest window the motion encoder accepts (frames at `fps`)
    text_model: str = "minilm"  # 'minilm' or a local sentence-transformers directory
    text_dim: int = 384  # width of the frozen sentence embeddings
    text_hidden: int | None = 512  # hidden width of the text projection MLP; None: one linear layer
    # Motion encoder architecture: 'transformer' (MotionEncoder above: one attention pass per window; the
    # architecture of every checkpoint without this field) or 'window' (indexer/window_encoder.py: one
    # conv pass per motion, windows pooled from it). The window_* fields only apply to 'window'.
    arch: str = "transformer"
    window_hidden: int | None = None  # width inside the conv blocks (None: 2 * d_model)
    window_stride: int = 4  # frames per snippet
    window_kernel: int = 3
    window_dilations: tuple[int, ...] = (1, 2, 4, 8, 16)
    window_pool: str = "mean"  # mean | attn
    window_pool_heads: int = 4

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"retrieval arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        self.window_dilations = tuple(int(d) for d in self.window_dilations)
        if self.arch == "window":
            self.window_config()  # validates

    def window_config(self) -> WindowEncoderConfig:
        return WindowEncoderConfig(
            feature_dim=self.feature_dim, d_model=self.d_model, hidden=self.window_hidden or 2 * self.d_model,
            stride=self.window_stride, kernel=self.window_kernel, dilations=self.window_dilations,
            pool=self.window_pool, pool_heads=self.window_pool_heads, embed_dim=self.embed_dim,
            dropout=self.dropout)

    def identity(self) -> dict[str, Any]:
        """The fields that define this architecture: a transformer's leaves out `arch` and the window_*
        fields, so it equals the config of checkpoints written before they existed (same fingerprints)."""
        d = dataclasses.asdict(self)
        if self.arch == "transformer":
            d = {k: v for k, v in d.items() if k != "arch" and not k.startswith("window_")}
        else:
            d["window_dilations"] = list(self.window_dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetrievalConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class TextEncoder(Protocol):
    """What the model needs from a frozen sentence encoder."""

    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def sinusoidal_pe(n_positions: int, dim: int) -> torch.Tensor:
    """(n_positions, dim) sinusoidal positional encoding (Vaswani et al.)."""
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (T, 1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (D/2,)
    pe = torch.zeros(n_positions, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe


class MotionEncoder(nn.Module):
    """Normalised 263-dim feature windows (B, T, 263) + validity mask (B, T) -> unit vectors (B, embed_dim)."""

    def __init__(self, config: RetrievalConfig):
        super().__init__()
        c = config
        self.input = nn.Linear(c.feature_dim, c.d_model)
        self.emb_token = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
        self.register_buffer("pe", sinusoidal_pe(c.max_frames + 1, c.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(c.d_model, c.n_heads, c.ff_dim, c.dropout, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.proj = nn.Linear(c.d_model, c.embed_dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if t + 1 > self.pe.shape[0]:
            raise ValueError(f"motion window of {t} frames is longer than max_frames={self.pe.shape[0] - 1}")
        h = self.input(x)  # (B, T, D)
        h = torch.cat([self.emb_token.expand(b, 1, -1).to(h.dtype), h], dim=1)  # (B, T+1, D)
        h = h + self.pe[: t + 1].to(h.dtype)[None]
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=x.device), ~valid], dim=1)  # (B, T+1)
        h = self.encoder(h, src_key_padding_mask=pad)
        z = F.normalize(h[:, 0].float(), dim=-1)  # (B, D)
        return F.normalize(self.proj(z.to(h.dtype)).float(), dim=-1)  # (B, E)


class TextProjection(nn.Module):
    """Frozen sentence embeddings (B, text_dim) -> unit vectors (B, embed_dim)."""

    def __init__(self, config: RetrievalConfig):
        super().__init__()
        c = config
        if c.text_hidden:
            self.net = nn.Sequential(nn.Linear(c.text_dim, c.text_hidden), nn.GELU(), nn.Dropout(c.dropout),
                                     nn.Linear(c.text_hidden, c.embed_dim))
        else:
            self.net = nn.Linear(c.text_dim, c.embed_dim)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(s).float(), dim=-1)


def drop_triple_loss(
    sim: torch.Tensor,
    motion_sim: torch.Tensor | None = None,
    text_sim: torch.Tensor | None = None,
    margin: float = 0.2,
    hardest: bool = True,
    motion_threshold: float = 0.75,
    text_threshold: float = 0.75,
) -> torch.Tensor:
    """DropTriple hinge loss for a batch of matched pairs, averaged over the batch.

    `sim[i, j]` is the similarity of motion i and text j (B, B); the diagonal holds the positives.
    Motion -> text: anchor motion i, negatives texts j != i, cost `relu(margin + sim[i, j] - sim[i, i])`;
    text -> motion: anchor text j, negatives motions i != j, cost `relu(margin + sim[i, j] - sim[j, j])`.
    A pair (i, j) is a false negative, and dropped from both directions, when `motion_sim[i, j] >
    motion_threshold` or `text_sim[i, j] > text_threshold` (pass None to skip either test).
    `hardest=False` (warm-up) sums all violations of each anchor; `hardest=True` keeps the largest one.
    Returns `(sum of motion->text costs + sum of text->motion costs) / B`.
    """
    b = sim.shape[0]
    if sim.shape != (b, b):
        raise ValueError(f"sim must be square, got {tuple(sim.shape)}")
    pos = sim.diagonal()
    negative = ~torch.eye(b, dtype=torch.bool, device=sim.device)
    if motion_sim is not None:
        negative &= ~(motion_sim > motion_threshold)
    if text_sim is not None:
        negative &= ~(text_sim > text_threshold)
    cost_m2t = (margin + sim - pos[:, None]).clamp(min=0) * negative  # rows: motion anchors
    cost_t2m = (margin + sim - pos[None, :]).clamp(min=0) * negative  # columns: text anchors
    if hardest:
        return (cost_m2t.max(dim=1).values.sum() + cost_t2m.max(dim=0).values.sum()) / b
    return (cost_m2t.sum() + cost_t2m.sum()) / b


class RetrievalModel(nn.Module):
    """Dual encoder. `encode_text` and `encode_motion` return (n, embed_dim) float32 unit rows."""

    def __init__(self, config: RetrievalConfig | None = None, text_encoder: TextEncoder | None = None):
        super().__init__()
        self.config = config or RetrievalConfig()
        self.motion: nn.Module = (WindowEncoder(self.config.window_config()) if self.config.arch == "window"
                                  else MotionEncoder(self.config))
        self.text = TextProjection(self.config)
        self.register_buffer("feature_mean", torch.zeros(self.config.feature_dim))
        self.register_buffer("feature_std", torch.ones(self.config.feature_dim))
        self._text_encoder = text_encoder

    # ------------------------------------------------------------------ construction / IO
    @classmethod
    def random(cls, config: RetrievalConfig | None = None, seed: int = 0,
               text_encoder: TextEncoder | None = None) -> RetrievalModel:
        """A seeded, untrained model (tests, smoke runs)."""
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = cls(config, text_encoder=text_encoder)
        finally:
            torch.random.set_rng_state(gen_state)
        return model.eval()

    def set_feature_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Input normalisation (from the training set); tiny std values are replaced by 1."""
        std = np.where(np.asarray(std) < 1e-5, 1.0, std)
        self.feature_mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def checkpoint(self) -> dict[str, Any]:
        config = {**self.config.identity(), "arch": self.config.arch}  # the architecture is always recorded
        return {"format": CHECKPOINT_FORMAT, "kind": "retrieval", "config": config,
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint atomically (temporary file, fsync, rename)."""
        with atomic_writer(path) as tmp:
            torch.save(self.checkpoint(), tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None,
             text_encoder: TextEncoder | None = None) -> RetrievalModel:
        """Load a checkpoint written by `save` (weights only: no code is unpickled)."""
        path = Path(path)
        try:
            ck = load_weights(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported against its path
            raise ValueError(f"{path}: unreadable retrieval checkpoint: {e}") from e
        if not isinstance(ck, dict) or ck.get("kind") != "retrieval" or "state_dict" not in ck:
            raise ValueError(f"{path}: not a retrieval model checkpoint")
        if ck.get("format", 0) > CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: checkpoint format {ck.get('format')} is newer than this engine")
        model = cls(RetrievalConfig.from_dict(ck["config"]), text_encoder=text_encoder)
        model.load_state_dict(ck["state_dict"])
        return model.to(resolve_device(device)).eval()

    def fingerprint(self) -> str:
        """sha256 of the config and every weight: equal fingerprints give equal embeddings."""
        h = hashlib.sha256(json.dumps(self.config.identity(), sort_keys=True).encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
        return h.hexdigest()

    @property
    def device(self) -> torch.device:
        return self.feature_mean.device

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            from engine.corpus.text import sentence_encoder

            self._text_encoder = sentence_encoder(None if self.config.text_model == "minilm"
                                                  else self.config.text_model, device=str(self.device))
        return self._text_encoder

    # ------------------------------------------------------------------ tensors in, tensors out
    def motion_forward(self, x: torch.Tensor, valid: torch.Tensor, pool: torch.Tensor | None = None) -> torch.Tensor:
        """Raw (un-normalised) features (B, T, 263) and mask (B, T) -> (B, E) unit vectors.
        `pool` (B, T) (window arch only): the frames whose features are pooled, the rest being context
        (see indexer/window_encoder.py); default every valid frame."""
        x = (x - self.feature_mean) / self.feature_std
        x = x * valid[..., None]  # padded frames are zero
        if self.config.arch == "window":
            return self.motion(x, valid, pool)
        if pool is not None and not torch.equal(pool, valid):
            raise ValueError("the transformer encoder has no context frames: pool must equal valid")
        return self.motion(x, valid)

    @property
    def context_frames(self) -> int:
        """Frames each side of a window that its embedding depends on (0 for the transformer)."""
        return self.config.window_config().context_frames if self.config.arch == "window" else 0

    def text_forward(self, sentence_emb: torch.Tensor) -> torch.Tensor:
        """Frozen sentence embeddings (B, text_dim) -> (B, E) unit vectors."""
        return self.text(sentence_emb)

    # ------------------------------------------------------------------ numpy API
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """(len(texts), embed_dim) float32 unit rows."""
        if not texts:
            return np.zeros((0, self.config.embed_dim), np.float32)
        s = self.text_encoder.encode(list(texts))
        with torch.inference_mode():
            out = self.text_forward(torch.as_tensor(s, dtype=torch.float32, device=self.device))
        return out.cpu().numpy().astype(np.float32)

    def encode_motion(self, windows: list[np.ndarray] | np.ndarray, batch_size: int = 64,
                      dtype: str = "fp32") -> np.ndarray:
        """Feature windows at `config.fps` (each (T_i, 263); a (B, T, 263) array is B windows) ->
        (n, embed_dim) float32 unit rows. Windows of different lengths are padded and masked.
        `dtype='bf16'` runs the encoder under bfloat16 autocast."""
        if isinstance(windows, np.ndarray):
            if windows.ndim != 3:
                raise ValueError(f"expected (B, T, {self.config.feature_dim}) windows, got {windows.shape}")
            windows = list(windows)
        out = np.zeros((len(windows), self.config.embed_dim), np.float32)
        if not windows:
            return out
        for w in windows:
            if w.ndim != 2 or w.shape[1] != self.config.feature_dim or w.shape[0] < 1:
                raise ValueError(f"motion window of shape {w.shape}; expected (T>=1, {self.config.feature_dim})")
        if dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
        order = np.argsort([len(w) for w in windows], kind="stable")  # similar lengths share a batch
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x, valid = pad_windows([windows[j] for j in idx])
            x = torch.from_numpy(x).to(self.device)
            valid = torch.from_numpy(valid).to(self.device)
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                        enabled=dtype == "bf16"):
                z = self.motion_forward(x, valid)
            out[idx] = z.float().cpu().numpy()
        return out

    def encode_windows(self, features: np.ndarray, windows: np.ndarray | list[tuple[int, int]],
                       fps: float | None = None, dtype: str = "fp32", batch_size: int = 64,
                       piece_snippets: int = 8192) -> np.ndarray:
        """Embeddings (W, embed_dim) of windows [a, b) (rows of `features`, one whole motion at `fps`,
        default the model's) of one motion.

        Window arch: the motion is encoded once (in pieces of `piece_snippets` snippets with their
        context, which is exact) and every window is pooled from prefix sums, O(1) per window; the
        embedding is the whole-motion definition of indexer/window_encoder.py. Transformer: each window
        is resampled and encoded on its own (`encode_motion`)."""
        fps = float(fps or self.config.fps)
        win = np.asarray(windows, np.int64).reshape(-1, 2)
        n = len(features)
        if len(win) and (win[:, 0].min() < 0 or win[:, 1].max() > n or (win[:, 1] <= win[:, 0]).any()):
            raise ValueError(f"windows must satisfy 0 <= a < b <= {n} (frames of the motion)")
        if features.ndim != 2 or features.shape[1] != self.config.feature_dim:
            raise ValueError(f"motion of shape {features.shape}; expected (T, {self.config.feature_dim})")
        if self.config.arch != "window":
            return self.encode_motion([resample_window(np.asarray(features[a:b], np.float32), fps, self.config.fps)
                                       for a, b in win], batch_size=batch_size, dtype=dtype)
        if dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
        if not len(win):
            return np.zeros((0, self.config.embed_dim), np.float32)
        feats, win = _to_model_rate(np.asarray(features, np.float32), win, fps, self.config.fps)
        c = self.config.window_config()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            h, scores = self._motion_snippets(feats, c, piece_snippets)
            z = self.motion.pool_windows(h, scores, len(feats), win)
        return z.float().cpu().numpy()

    def _motion_snippets(self, feats: np.ndarray, c: WindowEncoderConfig,
                         piece_snippets: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Snippet features (N, D) (+ scores (N, H)) of one whole motion at the model's rate."""
        x_all = torch.tensor(feats, dtype=torch.float32, device=self.device)  # a copy: feats may be read-only
        x_all = (x_all - self.feature_mean) / self.feature_std  # (T, F)
        n_snip = -(-len(feats) // c.stride)
        hs, ss = [], []
        for k0 in range(0, n_snip, max(1, piece_snippets)):
            k1 = min(n_snip, k0 + piece_snippets)
            a, b = k0 * c.stride, min(len(feats), k1 * c.stride)
            s, e = context_segment(len(feats), a, b, c.stride, c.context_snippets)
            x = x_all[s:e][None]  # (1, L, F)
            h, sc = self.motion.snippet_features(x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))
            lo = (a - s) // c.stride
            hs.append(h[0, lo:lo + k1 - k0])
            if sc is not None:
                ss.append(sc[0, lo:lo + k1 - k0])
        return torch.cat(hs), (torch.cat(ss) if ss else None)

    def window_batch(self, items: list[tuple[np.ndarray, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Direct-encoding inputs of windows: (whole motion at the model's rate, a, b) each -> padded
        segments (B, L, F), validity (B, L) and pool masks (B, L). The segment is the window with its
        context (`context_segment`; just the window for the transformer), so `motion_forward(x, valid,
        pool)` gives the same vectors as `encode_windows`."""
        segs, spans = [], []
        for feats, a, b in items:
            if self.config.arch == "window":
                c = self.config.window_config()
                s, e = context_segment(len(feats), a, b, c.stride, c.context_snippets)
            else:
                s, e = a, b
            segs.append(np.asarray(feats[s:e], np.float32))
            spans.append((a - s, b - s))
        x, valid = pad_windows(segs)
        pool = np.zeros_like(valid)
        for i, (a, b) in enumerate(spans):
            pool[i, a:b] = True
        return x, valid, pool

    def encode_windows_direct(self, features: np.ndarray, windows: np.ndarray | list[tuple[int, int]],
                              fps: float | None = None, batch_size: int = 64) -> np.ndarray:
        """The slow path of `encode_windows`: every window encoded on its own segment with its context
        (`window_batch`). The oracle of the fast path, and what training computes."""
        fps = float(fps or self.config.fps)
        win = np.asarray(windows, np.int64).reshape(-1, 2)
        if self.config.arch != "window":
            return self.encode_windows(features, win, fps, batch_size=batch_size)
        feats, win = _to_model_rate(np.asarray(features, np.float32), win, fps, self.config.fps)
        out = np.zeros((len(win), self.config.embed_dim), np.float32)
        for i in range(0, len(win), batch_size):
            x, valid, pool = self.window_batch([(feats, int(a), int(b)) for a, b in win[i:i + batch_size]])
            with torch.inference_mode():
                z = self.motion_forward(*(torch.from_numpy(v).to(self.device) for v in (x, valid, pool)))
            out[i:i + batch_size] = z.float().cpu().numpy()
        return out


def _to_model_rate(features: np.ndarray, windows: np.ndarray, fps: float, model_fps: float) -> tuple[np.ndarray, np.ndarray]:
    """A whole motion resampled to the model's rate (nearest frame) and its windows mapped to model frames."""
    if abs(fps - model_fps) < 1e-6:
        return features, windows
    feats = resample_window(features, fps, model_fps)
    return feats, model_rate_windows(windows, len(feats), fps, model_fps)


def model_rate_windows(windows: np.ndarray, n_model_frames: int, fps: float, model_fps: float) -> np.ndarray:
    """Windows (W, 2) of rows at `fps` -> rows of the motion resampled to `model_fps` (non-empty)."""
    if abs(fps - model_fps) < 1e-6:
        return np.asarray(windows, np.int64)
    a = np.clip(np.round(windows[:, 0] * model_fps / fps).astype(np.int64), 0, n_model_frames - 1)
    b = np.clip(np.round(windows[:, 1] * model_fps / fps).astype(np.int64), a + 1, n_model_frames)
    return np.stack([a, b], axis=1)


def pad_windows(windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack windows (T_i, C) into (B, T_max, C) float32 and a validity mask (B, T_max)."""
    t_max = max(len(w) for w in windows)
    c = windows[0].shape[1]
    x = np.zeros((len(windows), t_max, c), np.float32)  # (B, T, C)
    valid = np.zeros((len(windows), t_max), bool)
    for i, w in enumerate(windows):
        x[i, : len(w)] = w
        valid[i, : len(w)] = True
    return x, valid


def load_retrieval(run_dir: str | os.PathLike, device: str | None = None,
                   text_encoder: TextEncoder | None = None) -> RetrievalModel:
    """The selected model of a training run (`best.pt`, else `last.pt`), or a checkpoint file path."""
    p = Path(run_dir)
    if p.is_file():
        return RetrievalModel.load(p, device=device, text_encoder=text_encoder)
    for name in ("best.pt", "model.pt", "last.pt"):
        if (p / name).is_file():
            if name == "last.pt":
                ck = load_weights(p / name)
                model = RetrievalModel(RetrievalConfig.from_dict(ck["model"]["config"]), text_encoder=text_encoder)
                model.load_state_dict(ck["model"]["state_dict"])
                return model.to(resolve_device(device)).eval()
            return RetrievalModel.load(p / name, device=device, text_encoder=text_encoder)
    raise FileNotFoundError(f"{p}: no retrieval checkpoint (best.pt / last.pt); train one with "
                            "`engine train retrieval --corpus DIR --run {p}`")
