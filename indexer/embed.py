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
    """(n, embed_dim) float32 vectors of chunks: their feature windows at the model's fps, encoded."""
    windows = [chunk_window(features_of(c.motion_id), c, motion_fps[c.motion_id], model.config.fps) for c in spans]
    return model.encode_motion(windows, batch_size=batch_size, dtype=dtype)


def feature_reader(store) -> Callable[[int], np.ndarray]:
    """motion_id -> features, keeping the last motion's (chunks arrive grouped by motion)."""
    cache: dict[int, np.ndarray] = {}

    def get(motion_id: int) -> np.ndarray:
        if motion_id not in cache:
            cache.clear()
            cache[motion_id] = store.features(motion_id)
        return cache[motion_id]
    return get
