"""How the embed stage computes chunk vectors: `embed_chunks` (feature windows -> the retrieval model's
motion encoder), and the `EmbedBackend` interface for computing them elsewhere (e.g.
`indexer.ray_backend.RayEmbedBackend`). A backend only computes vectors; the embed stage
(indexer/stages.py) writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.chunks import ChunkSpan, chunk_window


@dataclass
class EmbedJob:
    """The unfinished blocks of an embed stage, and everything a worker needs to embed them.

    In-process backends use `model` and `store`; out-of-process workers load `model_path` (the version's
    model.pt, checked against `model_fingerprint`) and open the corpus from `corpus` ({"dir", "url"?}),
    so both must sit on storage the workers see."""

    blocks: list[tuple[int, list[ChunkSpan]]]  # (block index, its chunks in chunk_id order)
    motion_fps: dict[int, float]
    model: Any  # RetrievalModel
    model_path: Path
    model_fingerprint: str
    store: Any  # CorpusStore
    corpus: dict[str, Any]
    batch_size: int  # chunks per encoder batch
    dtype: str  # fp32 | bf16

    @property
    def n_chunks(self) -> int:
        return sum(len(block) for _, block in self.blocks)


class EmbedBackend:
    """Another way for the embed stage to compute vectors (the default, `embed_backend=None`, embeds block
    after block in this process): `embed_blocks(job)` yields (block index, (n, embed_dim) float32 unit rows
    in the block's chunk order) for every block of `job`, in any order, as each is ready. It writes
    nothing; the stage writes each block as it arrives, so a killed build keeps the finished ones."""

    name = "base"

    def embed_blocks(self, job: EmbedJob) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError


def embed_chunks(model, spans: Iterable[ChunkSpan], motion_fps: dict[int, float],
                 features_of: Callable[[int], np.ndarray], batch_size: int, dtype: str) -> np.ndarray:
    """(n, embed_dim) float32 vectors of chunks.

    Transformer models: every chunk's feature window (`chunk_window`) encoded on its own. Window models
    (indexer/window_encoder.py): each motion is encoded once and all its chunks are pooled from it
    (`RetrievalModel.encode_windows`); `embed_chunks_direct` is the per-chunk slow path of the same."""
    spans = list(spans)
    if getattr(model.config, "arch", "transformer") != "window":
        windows = [chunk_window(features_of(c.motion_id), c, motion_fps[c.motion_id], model.config.fps)
                   for c in spans]
        return model.encode_motion(windows, batch_size=batch_size, dtype=dtype)
    return _per_motion(spans, features_of, lambda f, w, mid: model.encode_windows(
        f, w, fps=motion_fps[mid], dtype=dtype, batch_size=batch_size), model.config.embed_dim)


def embed_chunks_direct(model, spans: Iterable[ChunkSpan], motion_fps: dict[int, float],
                        features_of: Callable[[int], np.ndarray], batch_size: int) -> np.ndarray:
    """The slow path of `embed_chunks` for window models: every chunk encoded on its own segment with its
    context (`RetrievalModel.encode_windows_direct`). The oracle of the fast path (tests, benchmarks)."""
    return _per_motion(list(spans), features_of, lambda f, w, mid: model.encode_windows_direct(
        f, w, fps=motion_fps[mid], batch_size=batch_size), model.config.embed_dim)


def chunk_rows(span: ChunkSpan, n_feature_rows: int) -> tuple[int, int]:
    """The feature rows [a, b) of a chunk, as `chunk_window` takes them (at least one row)."""
    a = min(span.start_frame, n_feature_rows - 1)
    return a, max(a + 1, min(span.end_frame, n_feature_rows))


def _per_motion(spans: list[ChunkSpan], features_of: Callable[[int], np.ndarray],
                encode: Callable[[np.ndarray, np.ndarray, int], np.ndarray], embed_dim: int) -> np.ndarray:
    out = np.zeros((len(spans), embed_dim), np.float32)
    by_motion: dict[int, list[int]] = {}
    for i, c in enumerate(spans):
        by_motion.setdefault(c.motion_id, []).append(i)
    for mid, idx in by_motion.items():
        feats = np.asarray(features_of(mid), np.float32)
        win = np.array([chunk_rows(spans[i], len(feats)) for i in idx], np.int64).reshape(-1, 2)
        out[idx] = encode(feats, win, mid)
    return out


def feature_reader(store) -> Callable[[int], np.ndarray]:
    """motion_id -> features, keeping the last motion's (chunks arrive grouped by motion)."""
    cache: dict[int, np.ndarray] = {}

    def get(motion_id: int) -> np.ndarray:
        if motion_id not in cache:
            cache.clear()
            cache[motion_id] = store.features(motion_id)
        return cache[motion_id]
    return get
