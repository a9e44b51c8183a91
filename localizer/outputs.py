"""What a localizer backend returns, and the one decoding of its distributions into moments; no torch.

Both backends, the torch `Localizer` (localizer/infer.py) and the ONNX Runtime `OnnxLocalizer`
(localizer/onnx_infer.py), compute `SpanDistributions` their own way and hand them to `decode_spans`, so
the moments of a search come out of the same code whichever computed the distributions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from localizer.decode import MaxSpan, decode_best_np, decode_top, index_to_seconds, max_len_snippets


class TokenLRU(OrderedDict):
    """Token embeddings (n_tokens, dim) float32 of recent sentences (stripped), the least recently used dropped
    beyond `size`; both backends' text cache."""

    def __init__(self, size: int = 1024):
        super().__init__()
        self.size = size

    def lookup(self, texts: Sequence[str],
               encode: Callable[[list[str]], tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]) -> list[np.ndarray]:
        """The sentences' token embeddings; those not cached are encoded in one batch by `encode(missing)`,
        which returns (padded embeddings, masks) per sentence."""
        keys = []
        for text in texts:
            if not text or not text.strip():
                raise ValueError("empty query text")
            keys.append(text.strip())
        missing = sorted({k for k in keys if k not in self})
        if missing:
            emb, mask = encode(missing)
            for k, e, m in zip(missing, emb, mask):
                self[k] = np.asarray(e[np.asarray(m).astype(bool)], dtype=np.float32)
        out = []
        for k in keys:
            self.move_to_end(k)
            out.append(self[k])
        while len(self) > max(self.size, len(set(keys))):
            self.popitem(last=False)
        return out


@dataclass
class EncodedMotion:
    """Query-independent encoding of one motion: S-Enc output (T, d) float32 and the motion's duration
    (`Motion.duration_s` = n_frames / fps; the T snippets span [0, duration_s])."""

    features: np.ndarray
    duration_s: float
    motion_id: int | None = None

    @property
    def n_snippets(self) -> int:
        return int(self.features.shape[0])


@dataclass
class LocalizedSpan:
    """One located moment: seconds from the motion's start, snippet indices (inclusive end), p_se."""

    start_s: float
    end_s: float
    p_se: float
    start_idx: int
    end_idx: int
    motion_id: int | None = None


@dataclass
class SpanDistributions:
    """Per motion: start / end distributions and highlight scores over its T snippets (numpy, float32)."""

    p_start: np.ndarray
    p_end: np.ndarray
    highlight: np.ndarray
    duration_s: float
    motion_id: int | None = None


def pad_rows(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack (T_i, ...) arrays into a zero-padded (B, T_max, ...) float32 array and its (B, T_max) bool mask
    (`localizer.data.pad_snippets` wraps it in tensors)."""
    t_max = max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), t_max) + arrays[0].shape[1:], dtype=np.float32)
    mask = np.zeros((len(arrays), t_max), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
        mask[i, : a.shape[0]] = True
    return out, mask


RunFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def batched_distributions(text: str | Sequence[str], motions: Sequence[EncodedMotion], batch_size: int,
                          tokens: Callable[[list[str]], list[np.ndarray]], run: RunFn) -> list[SpanDistributions]:
    """Start / end / highlight distributions of one sentence (or one per motion) on each motion: motions of
    similar length are padded together (`pad_rows`), `tokens(texts)` gives the sentences' token features and
    `run(m, m_mask, q, q_mask)` the backend's (B, T) p_start, p_end, highlight as numpy arrays."""
    texts = [text] * len(motions) if isinstance(text, str) else list(text)
    if len(texts) != len(motions):
        raise ValueError("distributions: one text, or one text per motion")
    out: list[SpanDistributions | None] = [None] * len(motions)
    order = sorted(range(len(motions)), key=lambda i: motions[i].n_snippets)
    for k in range(0, len(order), batch_size):
        chunk = order[k: k + batch_size]
        m, m_mask = pad_rows([motions[i].features for i in chunk])
        q, q_mask = pad_rows(tokens([texts[i] for i in chunk]))
        ps, pe, h = run(m, m_mask, q, q_mask)
        for row, i in enumerate(chunk):
            t = motions[i].n_snippets
            out[i] = SpanDistributions(p_start=ps[row, :t], p_end=pe[row, :t], highlight=h[row, :t],
                                       duration_s=motions[i].duration_s, motion_id=motions[i].motion_id)
    return out  # type: ignore[return-value]


def check_max_span(max_span_s: float | str | None) -> None:
    if isinstance(max_span_s, str) and max_span_s != "learned":
        raise ValueError(f"max_span_s must be 'learned', a number of seconds or None, got {max_span_s!r}")


def decode_spans(dists: Sequence[SpanDistributions], top_m: int = 1, nms_iou: float = 0.5,
                 max_span_s: float | str | None = "learned",
                 learned: MaxSpan | None = None) -> list[list[LocalizedSpan]]:
    """Top-m moments (true (start, end) pairs, temporal NMS) of each motion's distributions.

    `max_span_s`: "learned" applies `learned` (the checkpoint's learned maximum span; None: no limit); a
    number is a limit in seconds; None = no limit.
    """
    check_max_span(max_span_s)
    results: list[list[LocalizedSpan]] = []
    for dist in dists:
        t = dist.p_start.shape[0]
        if max_span_s == "learned":
            max_len = learned.max_len(t, dist.duration_s) if learned is not None else None
        else:
            max_len = max_len_snippets(max_span_s, t, dist.duration_s)
        if top_m == 1:
            cands = [decode_best_np(dist.p_start, dist.p_end, max_len)]
        else:
            cands = [(c.start_idx, c.end_idx, c.p_se)
                     for c in decode_top(dist.p_start, dist.p_end, top_m, nms_iou, max_len)]
        spans = []
        for i_s, i_e, p in cands:
            t_s, t_e = index_to_seconds(i_s, i_e, t, dist.duration_s)
            spans.append(LocalizedSpan(start_s=t_s, end_s=t_e, p_se=p, start_idx=i_s, end_idx=i_e,
                                       motion_id=dist.motion_id))
        results.append(spans)
    return results
