"""Chunk planning (oracle against a plain loop), chunk windows, and the index's chunk table."""

from __future__ import annotations

import numpy as np
import pytest

from engine.corpus.types import CorpusError
from indexer.chunks import (
    CHUNK_BITS,
    ChunkDB,
    ChunkTable,
    IndexedMotion,
    chunk_id_of,
    chunk_window,
    plan_chunks,
    resample_window,
)


def _reference(n_frames: int, fps: float, window_s: float, stride_s: float) -> list[tuple[int, int, float, float]]:
    """Straightforward loop: step by the stride while a whole window fits, then one window flush with the end."""
    w = max(1, int(round(window_s * fps)))
    s = max(1, int(round(stride_s * fps)))
    if n_frames <= w:
        return [(0, n_frames, 0.0, n_frames / fps)]
    out = []
    start = 0
    while start + w <= n_frames:
        out.append((start, start + w, start / fps, (start + w) / fps))
        start += s
    if out[-1][1] != n_frames:
        out.append((n_frames - w, n_frames, (n_frames - w) / fps, n_frames / fps))
    return out


def test_plan_chunks_matches_reference_on_seeded_cases():
    rng = np.random.default_rng(0)
    for _ in range(500):
        fps = float(rng.choice([20.0, 30.0, 24.0, 120.0, 12.5]))
        n_frames = int(rng.integers(1, 4000))
        window_s = float(rng.choice([10.0, 5.0, 2.5, 0.05]))
        stride_s = float(rng.choice([1.0, 0.5, 3.0, 0.01]))
        got = [c.as_tuple() for c in plan_chunks(7, n_frames, fps, window_s, stride_s)]
        assert got == _reference(n_frames, fps, window_s, stride_s), (n_frames, fps, window_s, stride_s)


def test_plan_chunks_default_is_10s_windows_every_second_at_20fps():
    spans = plan_chunks(3, 20 * 25 + 7, 20.0)  # 25.35 s
    assert [c.start_frame for c in spans[:3]] == [0, 20, 40]
    assert all(c.end_frame - c.start_frame == 200 for c in spans)
    assert spans[-1].end_frame == 507 and spans[-1].end_s == pytest.approx(25.35)
    assert spans[-2].start_frame == 300 and spans[-1].start_frame == 307  # last one aligned to the end
    assert [c.chunk_index for c in spans] == list(range(len(spans)))
    assert spans[0].chunk_id == 3 << CHUNK_BITS and spans[4].chunk_id == (3 << CHUNK_BITS) | 4


def test_short_motion_is_one_chunk_and_exact_fit_has_no_extra_window():
    assert [c.as_tuple() for c in plan_chunks(1, 57, 20.0)] == [(0, 57, 0.0, 2.85)]
    assert [c.as_tuple() for c in plan_chunks(1, 200, 20.0)] == [(0, 200, 0.0, 10.0)]
    spans = plan_chunks(1, 220, 20.0)  # 11 s: starts 0 and 20, the second already ends at the end
    assert [(c.start_frame, c.end_frame) for c in spans] == [(0, 200), (20, 220)]


def test_plan_chunks_rejects_bad_input():
    with pytest.raises(CorpusError, match="motion 5"):
        plan_chunks(5, 0, 20.0)
    with pytest.raises(CorpusError, match="fps"):
        plan_chunks(5, 10, 0.0)
    with pytest.raises(CorpusError, match="chunk index"):
        chunk_id_of(1, 1 << CHUNK_BITS)


def test_chunk_window_rows_and_resampling():
    feats = np.arange(299 * 263, dtype=np.float32).reshape(299, 263)  # a 300-frame motion
    last = plan_chunks(0, 300, 20.0)[-1]  # frames 100..300: feature rows 100..299 (one fewer)
    w = chunk_window(feats, last, 20.0, 20.0)
    assert w.shape == (199, 263) and w[0, 0] == feats[100, 0] and w[-1, 0] == feats[298, 0]
    span30 = plan_chunks(0, 450, 30.0)[0]  # 10 s at 30 fps -> 200 rows at 20 fps
    f30 = np.arange(449, dtype=np.float32)[:, None].repeat(263, 1)
    r = chunk_window(f30, span30, 30.0, 20.0)
    assert r.shape == (200, 263)
    assert np.all(np.diff(r[:, 0]) > 0) and r[-1, 0] <= 299
    assert resample_window(f30[:3], 30.0, 30.0) is not None and resample_window(f30[:3], 30.0, 30.0).shape == (3, 263)


def test_chunkdb_roundtrip(tmp_path):
    motions = [IndexedMotion(2, "a", "s", 20.0, 450, 22.5, "test"), IndexedMotion(9, "b", "s", 30.0, 90, 3.0, None)]
    spans = [c for m in motions for c in plan_chunks(m.motion_id, m.n_frames, m.fps)]
    with ChunkDB(tmp_path / "c.sqlite", read_only=False) as db:
        db.write(motions, spans)
    with ChunkDB(tmp_path / "c.sqlite") as db:
        assert db.motions() == motions
        table = db.table()
    want = ChunkTable.from_spans(spans)
    for col in ("chunk_id", "motion_id", "chunk_index", "start_frame", "end_frame", "start_s", "end_s"):
        np.testing.assert_array_equal(getattr(table, col), getattr(want, col))
    chunks = table.chunks(np.array([spans[-1].chunk_id, spans[0].chunk_id]))
    assert chunks[0].motion_id == 9 and chunks[0].end_s == pytest.approx(3.0)
    assert chunks[1].motion_id == 2 and chunks[1].start_s == 0.0
    with pytest.raises(KeyError, match="unknown chunk"):
        table.chunks(np.array([12345]))
    with pytest.raises(CorpusError, match="missing"):
        ChunkDB(tmp_path / "nope.sqlite")
