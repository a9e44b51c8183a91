"""The window bank of an index version: short sliding windows of every motion with their retrieval embeddings,
cached at build time so that a moment's own similarity to a query is a dot product at search time.

The bank of a motion is its index chunks (the `window_s` windows every `stride_s`, stored in
`embeddings.arrow`) plus, for every other size in `IndexConfig.bank_sizes_s` (default 2, 4, 6 s), windows of
that size every half of it. `windows.arrow` holds only those extra windows: motion_id, start/end row, start/
end seconds, vector (unit float32), sorted by (motion_id, size, start); `ChunkIndex.motion_windows` joins them
with the chunks.

Why these windows (the same as `engine.windows.WindowBank`, which the sliding-window baseline and "more like
this" use, so both read the cached bank instead of embedding on first use):

- a stride of half the window: any span of about a bank size has a window of that size with IoU >= 0.6, and
  with the transformer encoder the 2/4/6 s windows cost 40 + 40 + 40 frames per second of motion, about 0.6x
  the 200 frames per second of the 10 s chunks (a 1 s stride would cost 1.2x);
- rows of the motion's feature array (T - 1 rows for T joint frames) at the motion's fps, start_s = row / fps;
  a size of fewer than 2 rows, or not shorter than the motion, is skipped (the chunk covers the motion);
- embeddings are `RetrievalModel.encode_windows`: with the window encoder one pass per motion and every window
  pooled from it (the same definition as its chunks), with the transformer each window encoded on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.corpus.types import CorpusError
from indexer.arrow_io import _write_arrow

WINDOW_STRIDE_FRACTION = 0.5  # a bank window's stride is half its size


def bank_enabled(config, model) -> bool:
    """Whether a build with `config` writes a bank: `config.window_bank`, or when that is None (auto) only for
    the window-encoder architecture, where the bank costs a pooling per window."""
    if config.window_bank is not None:
        return bool(config.window_bank)
    return getattr(model.config, "arch", "transformer") == "window"


def bank_sizes(config) -> tuple[float, ...]:
    """The bank's sizes besides the chunks' own (those are the chunks)."""
    return tuple(float(s) for s in config.bank_sizes_s if abs(float(s) - float(config.window_s)) > 1e-9)


def plan_bank_windows(n_rows: int, fps: float, sizes_s: Sequence[float]) -> np.ndarray:
    """(W, 2) [start, end) rows of a motion's extra bank windows, sorted by (size, start): every size of
    2..n_rows-1 rows, stride half of it, the last window aligned to the motion's end."""
    out = []
    for size_s in sizes_s:
        w = int(round(float(size_s) * fps))
        if w < 2 or w >= n_rows:
            continue
        stride = max(1, int(w * WINDOW_STRIDE_FRACTION))
        starts = np.arange(0, n_rows - w + 1, stride)
        if starts[-1] != n_rows - w:
            starts = np.append(starts, n_rows - w)
        out.append(np.stack([starts, starts + w], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


@dataclass
class BankRows:
    """Rows of `windows.arrow`: one extra window each, grouped by motion."""

    motion_ids: np.ndarray  # (W,) int64
    rows: np.ndarray  # (W, 2) int64 [start, end) feature rows
    spans_s: np.ndarray  # (W, 2) float64 [start_s, end_s)
    vectors: np.ndarray  # (W, d) float32 unit rows

    @classmethod
    def empty(cls, dim: int) -> BankRows:
        return cls(np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros((0, 2)), np.zeros((0, dim), np.float32))

    @classmethod
    def concat(cls, parts: Sequence[BankRows], dim: int) -> BankRows:
        if not parts:
            return cls.empty(dim)
        return cls(np.concatenate([p.motion_ids for p in parts]), np.concatenate([p.rows for p in parts]),
                   np.concatenate([p.spans_s for p in parts]), np.concatenate([p.vectors for p in parts]))

    def select(self, motion_ids: Sequence[int]) -> BankRows:
        keep = np.isin(self.motion_ids, np.asarray(list(motion_ids), np.int64))
        return BankRows(self.motion_ids[keep], self.rows[keep], self.spans_s[keep], self.vectors[keep])


def embed_motion_bank(model, motion_id: int, features: np.ndarray, fps: float, sizes_s: Sequence[float],
                      batch_size: int = 64, dtype: str = "fp32") -> BankRows:
    """The extra bank windows of one motion, embedded (see the module docstring)."""
    feats = np.asarray(features, np.float32)
    win = plan_bank_windows(len(feats), fps, sizes_s)
    if not len(win):
        return BankRows.empty(model.config.embed_dim)
    vecs = model.encode_windows(feats, win, fps=fps, dtype=dtype, batch_size=batch_size)
    bad = ~np.isfinite(vecs).all(axis=1)
    if bad.any():
        raise CorpusError(f"motion {motion_id}", f"{int(bad.sum())} of its bank windows embed to non-finite "
                                                 "vectors; check the motion's values (engine data verify)")
    return BankRows(np.full(len(win), int(motion_id), np.int64), win, win / float(fps), vecs.astype(np.float32))


def build_bank(model, motions: Sequence, sizes_s: Sequence[float], features_of: Callable[[int], np.ndarray],
               base: BankRows | None = None, reuse: Sequence[int] = (), batch_size: int = 64, dtype: str = "fp32",
               tick: Callable[[int, int], None] | None = None) -> BankRows:
    """The bank of `motions` (IndexedMotion, sorted by id): rows of motions in `reuse` copied from `base`, the
    others embedded."""
    reuse = set(int(m) for m in reuse)
    parts = []
    for i, m in enumerate(motions):
        if base is not None and m.motion_id in reuse:
            parts.append(base.select([m.motion_id]))
        else:
            parts.append(embed_motion_bank(model, m.motion_id, features_of(m.motion_id), m.fps, sizes_s,
                                           batch_size=batch_size, dtype=dtype))
        if tick is not None:
            tick(i + 1, len(motions))
    return BankRows.concat(parts, model.config.embed_dim)


def write_bank(path: Path, bank: BankRows) -> None:
    d = bank.vectors.shape[1]
    vec = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(bank.vectors, np.float32).reshape(-1)), d)
    _write_arrow(path, pa.table({
        "motion_id": pa.array(bank.motion_ids, pa.int64()),
        "start_row": pa.array(bank.rows[:, 0], pa.int64()), "end_row": pa.array(bank.rows[:, 1], pa.int64()),
        "start_s": pa.array(bank.spans_s[:, 0], pa.float64()), "end_s": pa.array(bank.spans_s[:, 1], pa.float64()),
        "vector": vec}))


def read_bank(path: Path, dim: int | None = None) -> BankRows:
    """Memory-mapped bank rows (read-only views)."""
    try:
        t = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        vec = t.column("vector").combine_chunks()
        d = vec.type.list_size
        vectors = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)
        col = lambda name: t.column(name).combine_chunks().to_numpy(zero_copy_only=False)  # noqa: E731
        out = BankRows(col("motion_id"), np.stack([col("start_row"), col("end_row")], axis=1).reshape(-1, 2),
                       np.stack([col("start_s"), col("end_s")], axis=1).reshape(-1, 2), vectors)
    except (OSError, pa.ArrowException, KeyError, AttributeError, ValueError) as e:
        raise CorpusError(str(path), f"unreadable window bank: {e}") from e
    if dim is not None and out.vectors.shape[1] != dim:
        raise CorpusError(str(path), f"window bank vectors have dim {out.vectors.shape[1]}, the index {dim}")
    return out


def bank_problems(bank: BankRows, motions: Sequence, sizes_s: Sequence[float]) -> list[str]:
    """What is wrong with a read bank against the indexed motions (IndexedMotion): rows equal to the re-planned
    windows, seconds = rows / fps, unit finite vectors."""
    problems = []
    want = [np.concatenate([np.full((len(w), 1), m.motion_id), w], axis=1)
            for m in motions if len(w := plan_bank_windows(m.n_frames - 1, m.fps, sizes_s))]
    planned = np.concatenate(want) if want else np.zeros((0, 3), np.int64)
    got = np.concatenate([bank.motion_ids[:, None], bank.rows], axis=1)
    if planned.shape != got.shape or not np.array_equal(planned, got):
        problems.append(f"window bank: {len(got)} windows differ from the {len(planned)} planned for the indexed "
                        "motions")
        return problems
    fps = {m.motion_id: m.fps for m in motions}
    f = np.array([fps[int(i)] for i in bank.motion_ids], np.float64)
    if len(f) and not np.allclose(bank.spans_s, bank.rows / f[:, None], atol=1e-9):
        problems.append("window bank: seconds differ from rows / fps")
    if not np.isfinite(bank.vectors).all():
        problems.append("window bank: non-finite vectors")
    elif len(bank.vectors) and np.abs(np.linalg.norm(bank.vectors, axis=1) - 1).max() > 1e-3:
        problems.append("window bank: vectors are not unit norm")
    return problems
