"""Chunking of motions into overlapping windows, and the chunk table of an index directory.

Every motion becomes windows of `window_s` seconds (10 s) every `stride_s` seconds (1 s, i.e. 90 %
overlap) at the motion's own fps; the last window is aligned to the motion's end; a motion no longer
than one window is a single chunk. Frames are joint frames: a window [start_frame, end_frame) spans
start_frame / fps .. end_frame / fps seconds, and its 263-dim feature rows are
`features[start_frame:min(end_frame, n_frames - 1)]`.

Chunk ids are deterministic: `chunk_id = motion_id << CHUNK_BITS | chunk_index`. The same motion with
the same chunking therefore always gets the same ids, which is what lets an incremental index update
(add / remove motions) equal a full rebuild. The id is also the FAISS id and the SQL primary key.

`ChunkDB` is the index directory's own SQLite database (the standard library's sqlite3: a search opens it
without importing SQLAlchemy) with two tables: `motions` (what
was indexed: id, name, source, fps, n_frames, duration_s, split) and `chunks` (chunk_id, motion_id,
chunk_index, start_frame, end_frame, start_s, end_s).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.corpus.types import Chunk, CorpusError, MotionInfo

log = logging.getLogger(__name__)

CHUNK_BITS = 20  # up to 1,048,576 chunks per motion (about 12 days of motion at a 1 s stride)


@dataclass(frozen=True)
class ChunkSpan:
    """One planned window of a motion."""

    motion_id: int
    chunk_index: int
    start_frame: int
    end_frame: int  # exclusive, in joint frames
    start_s: float
    end_s: float

    @property
    def chunk_id(self) -> int:
        return chunk_id_of(self.motion_id, self.chunk_index)

    def as_tuple(self) -> tuple[int, int, float, float]:
        return self.start_frame, self.end_frame, self.start_s, self.end_s


def chunk_id_of(motion_id: int, chunk_index: int) -> int:
    if not 0 <= chunk_index < (1 << CHUNK_BITS):
        raise CorpusError(f"motion {motion_id}", f"chunk index {chunk_index} exceeds 2**{CHUNK_BITS}")
    return (int(motion_id) << CHUNK_BITS) | int(chunk_index)


def plan_chunks(motion_id: int, n_frames: int, fps: float, window_s: float = 10.0,
                stride_s: float = 1.0) -> list[ChunkSpan]:
    """Windows of `window_s` every `stride_s` over a motion of `n_frames` at `fps`.

    The window and stride are rounded to whole frames (at least one frame each). Starts are 0, S, 2S, ...
    while a full window fits; if the last of them does not end at the motion's end, one more window
    ending exactly there is added. A motion of at most one window is a single chunk [0, n_frames).
    """
    if n_frames < 1:
        raise CorpusError(f"motion {motion_id}", f"cannot chunk a motion of {n_frames} frames")
    if not (fps > 0 and window_s > 0 and stride_s > 0):
        raise CorpusError(f"motion {motion_id}", f"bad chunking fps={fps} window_s={window_s} stride_s={stride_s}")
    w = max(1, int(round(window_s * fps)))
    s = max(1, int(round(stride_s * fps)))
    if n_frames <= w:
        starts = np.array([0])
    else:
        starts = np.arange(0, n_frames - w + 1, s)
        if starts[-1] + w < n_frames:
            starts = np.append(starts, n_frames - w)
    ends = np.minimum(starts + w, n_frames)
    return [ChunkSpan(int(motion_id), k, int(a), int(b), float(a) / fps, float(b) / fps)
            for k, (a, b) in enumerate(zip(starts, ends))]


def resample_window(features: np.ndarray, fps: float, target_fps: float) -> np.ndarray:
    """Nearest-frame resampling of a (T, C) feature window from `fps` to `target_fps`.

    Velocity channels keep the per-frame scale of the source rate; importers normally deliver 20 fps
    already, this only keeps odd-rate motions usable.
    """
    if abs(fps - target_fps) < 1e-6 or len(features) == 0:
        return features
    n_out = max(1, int(round(len(features) * target_fps / fps)))
    idx = np.minimum(((np.arange(n_out) + 0.5) * fps / target_fps).astype(np.int64), len(features) - 1)
    return features[idx]


def chunk_window(features: np.ndarray, span: ChunkSpan, fps: float, model_fps: float) -> np.ndarray:
    """The (T, 263) feature rows of a chunk (at least one), resampled to the model's fps."""
    n_feat = len(features)
    a = min(span.start_frame, n_feat - 1)
    b = max(a + 1, min(span.end_frame, n_feat))
    return resample_window(np.asarray(features[a:b], np.float32), fps, model_fps)


# ---------------------------------------------------------------------------------------------- SQL
# The schema SQLAlchemy wrote for these tables before ChunkDB used sqlite3 (indexes built then read the same).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS motions (
	motion_id INTEGER NOT NULL,
	name VARCHAR(512) NOT NULL,
	source VARCHAR(128) NOT NULL,
	fps FLOAT NOT NULL,
	n_frames INTEGER NOT NULL,
	duration_s FLOAT NOT NULL,
	split VARCHAR(16),
	PRIMARY KEY (motion_id)
)""",
    """CREATE TABLE IF NOT EXISTS chunks (
	chunk_id INTEGER NOT NULL,
	motion_id INTEGER NOT NULL,
	chunk_index INTEGER NOT NULL,
	start_frame INTEGER NOT NULL,
	end_frame INTEGER NOT NULL,
	start_s FLOAT NOT NULL,
	end_s FLOAT NOT NULL,
	PRIMARY KEY (chunk_id)
)""",
    "CREATE INDEX IF NOT EXISTS ix_chunks_motion_id ON chunks (motion_id)",
)


# A motion as recorded in an index (enough to chunk it again and to name it in results): the one motion
# row type, `MotionInfo` (the index's chunks.sqlite does not keep the source path, so `path` is "").
IndexedMotion = MotionInfo


@dataclass
class ChunkTable:
    """All chunk rows as column arrays, sorted by chunk_id."""

    chunk_id: np.ndarray  # int64
    motion_id: np.ndarray  # int64
    chunk_index: np.ndarray  # int64
    start_frame: np.ndarray  # int64
    end_frame: np.ndarray  # int64
    start_s: np.ndarray  # float64
    end_s: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.chunk_id)

    @classmethod
    def from_spans(cls, spans: Iterable[ChunkSpan]) -> ChunkTable:
        spans = sorted(spans, key=lambda c: c.chunk_id)
        return cls(
            chunk_id=np.array([c.chunk_id for c in spans], np.int64),
            motion_id=np.array([c.motion_id for c in spans], np.int64),
            chunk_index=np.array([c.chunk_index for c in spans], np.int64),
            start_frame=np.array([c.start_frame for c in spans], np.int64),
            end_frame=np.array([c.end_frame for c in spans], np.int64),
            start_s=np.array([c.start_s for c in spans], np.float64),
            end_s=np.array([c.end_s for c in spans], np.float64),
        )

    def rows(self, chunk_ids: np.ndarray) -> np.ndarray:
        """Row positions of the given chunk ids; KeyError for an unknown id."""
        ids = np.asarray(chunk_ids, np.int64)
        n = len(self.chunk_id)
        pos = np.searchsorted(self.chunk_id, ids)
        ok = self.chunk_id[np.minimum(pos, n - 1)] == ids if n else np.zeros(ids.shape, bool)
        if not np.all(ok):
            raise KeyError(f"unknown chunk ids: {ids[~ok][:5].tolist()}")
        return pos

    def chunks(self, chunk_ids: np.ndarray) -> list[Chunk]:
        pos = self.rows(chunk_ids)
        return [Chunk(int(self.chunk_id[p]), int(self.motion_id[p]), float(self.start_s[p]), float(self.end_s[p]))
                for p in pos]


class ChunkDB:
    """The index directory's chunks.sqlite (write once per version, then read only)."""

    def __init__(self, path: str | os.PathLike, read_only: bool = True):
        self.path = Path(path)
        if read_only and not self.path.is_file():
            raise CorpusError(str(self.path), "chunk database missing")
        try:
            if read_only:
                self.conn = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True)
            else:
                self.conn = sqlite3.connect(str(self.path.resolve()))
                self.conn.execute("PRAGMA journal_mode=DELETE")  # rollback journal: one self-contained file
                with self.conn:
                    for ddl in _SCHEMA:
                        self.conn.execute(ddl)
        except sqlite3.Error as e:
            raise CorpusError(str(self.path), f"cannot open the chunk database: {e}") from e

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ChunkDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _rows(self, sql: str) -> list[tuple]:
        try:
            return self.conn.execute(sql).fetchall()
        except sqlite3.Error as e:
            raise CorpusError(str(self.path), f"cannot read the chunk database: {e}") from e

    def write(self, motions: Iterable[IndexedMotion], spans: Iterable[ChunkSpan]) -> None:
        """Insert every motion and chunk row in one transaction."""
        with self.conn:
            self.conn.executemany(
                "INSERT INTO motions (motion_id, name, source, fps, n_frames, duration_s, split) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(int(m.motion_id), m.name, m.source, float(m.fps), int(m.n_frames), float(m.duration_s), m.split)
                 for m in motions])
            self.conn.executemany(
                "INSERT INTO chunks (chunk_id, motion_id, chunk_index, start_frame, end_frame, start_s, end_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(int(c.chunk_id), int(c.motion_id), int(c.chunk_index), int(c.start_frame), int(c.end_frame),
                  float(c.start_s), float(c.end_s)) for c in spans])

    def motions(self) -> list[IndexedMotion]:
        rows = self._rows("SELECT motion_id, name, source, fps, n_frames, duration_s, split FROM motions "
                          "ORDER BY motion_id")
        return [IndexedMotion(int(r[0]), r[1], r[2], float(r[3]), int(r[4]), float(r[5]), r[6]) for r in rows]

    def table(self) -> ChunkTable:
        rows = self._rows("SELECT chunk_id, motion_id, chunk_index, start_frame, end_frame, start_s, end_s "
                          "FROM chunks ORDER BY chunk_id")
        if not rows:
            z = np.zeros(0, np.int64)
            return ChunkTable(z, z, z, z, z, z.astype(np.float64), z.astype(np.float64))
        cols = list(zip(*rows))
        ints = [np.array(c, np.int64) for c in cols[:5]]
        return ChunkTable(*ints, np.array(cols[5], np.float64), np.array(cols[6], np.float64))
