"""Sliding windows of a motion and their retrieval embeddings: the one place that cuts and embeds them.

- `pyramid_windows`: frame windows of several sizes over a motion;
- `WindowBank`: every motion's index chunks plus shorter windows, embedded once per motion (the
  sliding-window baselines of `engine eval` and "more like this" in `engine.like` share it);
- `span_window`: the feature rows of one span as the retrieval model reads them (the query of "more like
  this").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from indexer.chunks import resample_window

MAX_EMBED_S = 10.0  # the retrieval model is trained on 2-10 s crops, and the index's chunks are 10 s


def pyramid_windows(n_frames: int, sizes: Sequence[int], stride: int) -> np.ndarray:
    """(W, 2) [start, end) frame windows of every size (clipped to the motion), stride `stride`."""
    out = []
    for w in sizes:
        w = min(int(w), n_frames)
        starts = np.arange(0, max(n_frames - w, 0) + 1, stride)
        if starts[-1] != n_frames - w:
            starts = np.append(starts, n_frames - w)
        out.append(np.stack([starts, starts + w], axis=1))
    return np.unique(np.concatenate(out), axis=0)


def span_frames(n_frames: int, fps: float, start_s: float, end_s: float,
                max_s: float | None = MAX_EMBED_S) -> tuple[int, int]:
    """Frames [a, b) covering [start_s, end_s) (as a clip export cuts them; at least 2 frames), or their
    central `max_s` seconds when the span is longer."""
    from engine.export import frame_range

    a, b = frame_range(n_frames, fps, start_s, end_s)
    b = min(n_frames, max(b, a + 2))
    if max_s is not None and b - a > round(max_s * fps):
        w = int(round(max_s * fps))
        a = (a + b - w) // 2
        b = a + w
    return a, b


def span_window(features: np.ndarray, fps: float, start_s: float, end_s: float, model_fps: float,
                max_s: float | None = MAX_EMBED_S) -> np.ndarray:
    """The (T, C) feature rows of a span at the model's fps (see `span_frames`)."""
    a, b = span_frames(len(features), fps, start_s, end_s, max_s)
    return resample_window(np.asarray(features[a:b], np.float32), fps, model_fps)


class WindowBank:
    """Query-independent sliding windows of every motion with their retrieval embeddings: the index's own
    10 s chunks (their stored embeddings) plus shorter windows of `sizes_s` seconds at a stride of half their
    size (`indexer.bank.plan_bank_windows`). When the index caches a window bank of these sizes
    (`engine index build --window-bank`) its rows are read; otherwise they are embedded by the index's
    retrieval model (`RetrievalModel.encode_windows`, as the bank is) once per motion on first use. Its
    cache is a plain dict: one bank per thread, or a lock."""

    def __init__(self, index, model, store, meta, sizes_s: Sequence[float] = (2.0, 4.0, 6.0)):
        from indexer.bank import bank_sizes
        from indexer.config import IndexConfig

        self.index, self.model, self.store, self.meta = index, model, store, meta
        self.sizes_s = tuple(float(s) for s in sizes_s)
        self.cached = bool(getattr(index, "has_bank", False)) and \
            bank_sizes(IndexConfig.from_dict(index.manifest.config)) == self.sizes_s
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.windows_embedded = 0

    def windows(self, motion_id: int) -> tuple[np.ndarray, np.ndarray]:
        """((W, 2) [start_s, end_s], (W, d) unit embeddings) of the motion's windows: chunks, then the rest."""
        from indexer.bank import plan_bank_windows

        mid = int(motion_id)
        if self.cached:
            return self.index.motion_windows(mid)
        if mid in self._cache:
            return self._cache[mid]
        chunk_spans, chunk_vecs = self.index.motion_chunks(mid)
        feats = np.asarray(self.store.features(mid), np.float32)
        fps = float(self.meta[mid].fps)
        win = plan_bank_windows(len(feats), fps, self.sizes_s)  # (W, 2) rows
        spans, vecs = [chunk_spans], [np.asarray(chunk_vecs, np.float32)]
        if len(win):
            vecs.append(self.model.encode_windows(feats, win, fps=fps))
            spans.append(win / fps)
            self.windows_embedded += len(win)
        out = (np.concatenate(spans), np.concatenate(vecs))
        self._cache[mid] = out
        return out

    def similarity(self, motion_id: int, query_vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((W, 2) [start_s, end_s], (W,) similarity to the unit `query_vec`) of the motion's windows."""
        spans, vecs = self.windows(motion_id)
        return spans, vecs @ np.asarray(query_vec, np.float32)
