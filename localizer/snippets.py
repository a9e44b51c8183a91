"""Motion -> snippets: Joint Recover per frame (263 -> 22 x 12), then mean pooling into T = min(F, S) snippets.

Joint Recover is `engine.corpus.features.joint_recover` (per joint ``[6D rotation, position, velocity]``,
root from the integrated trajectory, foot contacts dropped). Decision (mlp-notes.md): recover per frame,
*then* pool, so the integrated root trajectory of long motions is right (the authors' code pools first).
Bins: edges ``round(arange(S + 1) / S * F)`` when F > S, one frame per snippet otherwise.
"""

from __future__ import annotations

import numpy as np

from engine.corpus.features import joint_recover

N_JOINTS = 22
JOINT_CHANNELS = 12
FEATURE_DIM = 263


def snippet_edges(n_frames: int, n_snippets: int) -> np.ndarray:
    """Bin edges (T + 1,) of the T = min(F, S) snippets: round(arange(S + 1) / S * F), or one frame each."""
    if n_frames < 1:
        raise ValueError(f"snippet_edges: a motion needs at least one frame, got {n_frames}")
    if n_frames <= n_snippets:
        return np.arange(n_frames + 1, dtype=np.int64)
    return np.round(np.arange(n_snippets + 1) / n_snippets * n_frames).astype(np.int64)


def pool_snippets(x: np.ndarray, n_snippets: int) -> np.ndarray:
    """Mean-pool frames (F, ...) into T = min(F, S) snippets (T, ...) with `snippet_edges` bins (float32)."""
    a = np.asarray(x, dtype=np.float32)
    edges = snippet_edges(a.shape[0], n_snippets)
    if len(edges) - 1 == a.shape[0]:
        return np.ascontiguousarray(a)
    sums = np.add.reduceat(a, edges[:-1], axis=0)  # (T, ...)
    counts = np.diff(edges).astype(np.float32).reshape((-1,) + (1,) * (a.ndim - 1))
    return (sums / counts).astype(np.float32)


def motion_snippets(features: np.ndarray, n_snippets: int, where: str | None = None) -> np.ndarray:
    """(F, 263) raw features -> (T, 22, 12) float32 snippets: Joint Recover per frame, then mean pooling."""
    return pool_snippets(joint_recover(np.asarray(features, dtype=np.float32), where=where), n_snippets)
