"""The corpus store: metadata in SQL (SQLAlchemy), arrays in Arrow IPC files (pyarrow).

A corpus is a directory::

    corpus_dir/
      manifest.json         format version, SQL URL when not the default SQLite file
      corpus.sqlite         motions, annotations (default; any SQLAlchemy URL is accepted)
      arrays/part-*.arrow   one Arrow IPC file per import batch: joints and 263-dim features per motion

Guarantees
- Import is idempotent: a motion whose name is already stored with the same content hash is skipped.
- Each batch is one transaction. Its Arrow file is written to a temporary name, fsynced and renamed
  *before* the SQL commit; if the commit fails the file is removed, so nothing stored is ever lost or
  half-written. A bad record raises `CorpusError` naming the record and the problem (or, with
  `skip_bad=True`, is reported and skipped) before anything of its batch is written.
- Arrays are read through memory maps without copying (read-only numpy views).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    func,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from engine.corpus.io import fsync_dir
from engine.corpus.skeleton import FEATURE_DIM, N_JOINTS
from engine.corpus.types import Annotation, CorpusError, Motion, MotionInfo

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE_NAME = "corpus.sqlite"
ARRAYS_DIR = "arrays"
# Annotation times may exceed the motion by this much (frame rounding) before they are an error.
TIME_TOLERANCE_S = 0.1


class Base(DeclarativeBase):
    pass


class MotionRow(Base):
    __tablename__ = "motions"
    motion_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(512), unique=True, index=True)
    source: Mapped[str] = mapped_column(String(128), index=True)
    path: Mapped[str] = mapped_column(Text, default="")
    fps: Mapped[float] = mapped_column(Float)
    n_frames: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    split: Mapped[str | None] = mapped_column(String(16), index=True, nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    array_file: Mapped[str] = mapped_column(String(256))
    array_row: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    annotations: Mapped[list[AnnotationRow]] = relationship(
        back_populates="motion", cascade="all, delete-orphan", order_by="AnnotationRow.start_s"
    )


class AnnotationRow(Base):
    __tablename__ = "annotations"
    annotation_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    motion_id: Mapped[int] = mapped_column(ForeignKey("motions.motion_id", ondelete="CASCADE"), index=True)
    seg_id: Mapped[str] = mapped_column(String(128), default="")
    text: Mapped[str] = mapped_column(Text)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    extra: Mapped[dict] = mapped_column(JSON, default=dict)
    motion: Mapped[MotionRow] = relationship(back_populates="annotations")


@dataclass
class ImportReport:
    """What one `add_motions` call did."""

    added: int = 0
    skipped_existing: int = 0
    bad: list[str] = field(default_factory=list)
    motion_ids: list[int] = field(default_factory=list)


@dataclass
class CorpusStats:
    motions: int
    annotations: int
    duration_s: float
    frames: int
    by_source: dict[str, int]
    by_split: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "motions": self.motions,
            "annotations": self.annotations,
            "duration_s": round(self.duration_s, 3),
            "duration_h": round(self.duration_s / 3600.0, 4),
            "frames": self.frames,
            "by_source": self.by_source,
            "by_split": self.by_split,
        }


def content_hash(motion: Motion) -> str:
    """sha256 over the arrays, fps and annotations (what a re-import must reproduce to be a duplicate)."""
    h = hashlib.sha256()
    h.update(f"{motion.fps:.6f}".encode())
    for arr in (motion.joints, motion.features):
        if arr is not None:
            a = np.ascontiguousarray(arr, dtype=np.float32)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    for a in motion.annotations:
        h.update(f"{a.seg_id}|{a.text}|{a.start_s:.4f}|{a.end_s:.4f}".encode())
    return h.hexdigest()


def validate_motion(motion: Motion) -> None:
    """Raise CorpusError naming the motion when its arrays or annotations are unusable."""
    where = f"motion {motion.name!r}" + (f" ({motion.path})" if motion.path else "")
    if not motion.name:
        raise CorpusError(where, "empty motion name")
    if not (motion.fps and np.isfinite(motion.fps) and motion.fps > 0):
        raise CorpusError(where, f"invalid fps {motion.fps!r}")
    if motion.joints is None and motion.features is None:
        raise CorpusError(where, "has neither joints nor features")
    if motion.joints is not None:
        j = motion.joints
        if j.ndim != 3 or j.shape[1:] != (N_JOINTS, 3):
            raise CorpusError(where, f"joints have shape {tuple(j.shape)}, expected (T, {N_JOINTS}, 3)")
        if j.shape[0] < 2:
            raise CorpusError(where, f"zero-length motion ({j.shape[0]} frames; at least 2 needed)")
        bad = ~np.isfinite(j).all(axis=(1, 2))
        if bad.any():
            raise CorpusError(where, f"NaN/inf joint values in {int(bad.sum())} frames (first: frame {int(np.argmax(bad))})")
    if motion.features is not None:
        f = motion.features
        if f.ndim != 2 or f.shape[1] != FEATURE_DIM:
            raise CorpusError(where, f"features have shape {tuple(f.shape)}, expected (T, {FEATURE_DIM})")
        if f.shape[0] < 1:
            raise CorpusError(where, "zero-length motion (no feature frames)")
        bad = ~np.isfinite(f).all(axis=1)
        if bad.any():
            raise CorpusError(where, f"NaN/inf feature values in {int(bad.sum())} frames (first: frame {int(np.argmax(bad))})")
        if motion.joints is not None and f.shape[0] != motion.joints.shape[0] - 1:
            raise CorpusError(where, f"{f.shape[0]} feature frames for {motion.joints.shape[0]} joint frames "
                                     "(expected one fewer)")
    dur = motion.duration_s
    for i, a in enumerate(motion.annotations):
        rec = f"{where}, annotation {a.seg_id or i}"
        if not (np.isfinite(a.start_s) and np.isfinite(a.end_s)):
            raise CorpusError(rec, f"non-finite times {a.start_s!r}..{a.end_s!r}")
        if a.end_s <= a.start_s:
            raise CorpusError(rec, f"end {a.end_s:.3f}s is not after start {a.start_s:.3f}s")
        if a.start_s < -TIME_TOLERANCE_S or a.end_s > dur + TIME_TOLERANCE_S:
            raise CorpusError(rec, f"span {a.start_s:.3f}-{a.end_s:.3f}s is outside the motion (0-{dur:.3f}s)")
        if not a.text or not a.text.strip():
            raise CorpusError(rec, "empty text")


def _safe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a parseable URL: show it as given
        return url


class CorpusStore:
    """Motions, annotations and arrays of one corpus directory."""

    def __init__(self, corpus_dir: Path, url: str):
        self.dir = Path(corpus_dir)
        self.url = url
        try:
            self.engine = create_engine(url, future=True)
            Base.metadata.create_all(self.engine)
        except ModuleNotFoundError as e:  # the URL's driver (e.g. psycopg) is not installed
            raise CorpusError(_safe_url(url), f"database driver {e.name!r} is not installed (for PostgreSQL: "
                                              "pip install 'motion-search-engine[postgres]')") from e
        except SQLAlchemyError as e:
            raise CorpusError(_safe_url(url), f"cannot open the metadata database: "
                                              f"{str(e.orig if getattr(e, 'orig', None) else e).strip()}") from e
        self._tables: dict[str, pa.Table] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, corpus_dir: str | os.PathLike, url: str | None = None, create: bool = True) -> CorpusStore:
        """Open (or, with create=True, create) the corpus in `corpus_dir`.

        `url` is any SQLAlchemy URL for the metadata (default: `corpus_dir/corpus.sqlite`); it is
        recorded in the manifest so later opens find it.
        """
        d = Path(corpus_dir)
        man_path = d / MANIFEST
        if man_path.exists():
            try:
                man = json.loads(man_path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise CorpusError(str(man_path), f"unreadable corpus manifest: {e}") from e
            if man.get("format_version", 0) > FORMAT_VERSION:
                raise CorpusError(str(man_path), f"format version {man.get('format_version')} is newer than "
                                                 f"this engine ({FORMAT_VERSION})")
            url = url or man.get("url")
        elif not create:
            raise FileNotFoundError(f"{d}: not a corpus directory (no {MANIFEST}); build one with "
                                    "`engine data synth --preset demo --out DIR` or `engine data import ...`")
        else:
            d.mkdir(parents=True, exist_ok=True)
            (d / ARRAYS_DIR).mkdir(exist_ok=True)
            man = {"format_version": FORMAT_VERSION, "kind": "motion-corpus"}
            if url:
                man["url"] = url
            store = cls(d, url or f"sqlite:///{(d / SQLITE_NAME).resolve()}")  # the database opens first
            tmp = man_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(man, indent=2))
            os.replace(tmp, man_path)
            return store
        if not url:
            url = f"sqlite:///{(d / SQLITE_NAME).resolve()}"
        return cls(d, url)

    def close(self) -> None:
        self._tables.clear()
        self.engine.dispose()

    def __enter__(self) -> CorpusStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def add_motions(
        self,
        motions: Iterable[Motion],
        skip_bad: bool = False,
        batch_size: int = 256,
        progress: Callable[[int], None] | None = None,
    ) -> ImportReport:
        """Store motions (features computed from joints when absent), one transaction per batch.

        A motion whose name is stored with the same content is skipped (idempotent import); the same
        name with different content is an error. With `skip_bad`, bad records (including errors raised
        by the iterator itself as CorpusError) are reported in `ImportReport.bad` and the rest goes on.
        """
        report = ImportReport()
        batch: list[tuple[Motion, str]] = []
        it = iter(motions)
        while True:
            try:
                prepared = self._prepare(next(it))
            except StopIteration:
                break
            except CorpusError as e:  # raised by the record's importer or by validation
                if not skip_bad:
                    raise
                report.bad.append(str(e))
                log.warning("skipped: %s", e)
                continue
            if prepared is None:
                report.skipped_existing += 1
            else:
                batch.append(prepared)
            if progress is not None:
                progress(1)
            if len(batch) >= batch_size:
                self._write_batch(batch, report)
                batch = []
        if batch:
            self._write_batch(batch, report)
        return report

    def _prepare(self, m: Motion) -> tuple[Motion, str] | None:
        validate_motion(m)
        if m.features is None:
            from engine.corpus.features import joints_to_features

            try:
                m.features = joints_to_features(m.joints).astype(np.float32)
            except CorpusError:
                raise
            except Exception as e:  # noqa: BLE001 - report any numeric failure against the record
                raise CorpusError(f"motion {m.name!r}", f"feature computation failed: {e}") from e
            if not np.isfinite(m.features).all():
                raise CorpusError(f"motion {m.name!r}", "feature computation produced NaN/inf")
        h = content_hash(m)
        with Session(self.engine) as s:
            row = s.execute(select(MotionRow.content_hash).where(MotionRow.name == m.name)).first()
        if row is not None:
            if row[0] == h:
                return None
            raise CorpusError(f"motion {m.name!r}", "already stored with different content (remove it first)")
        return m, h

    def _write_batch(self, batch: list[tuple[Motion, str]], report: ImportReport) -> None:
        names = [m.name for m, _ in batch]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise CorpusError(f"motion {dup[0]!r}", "appears twice in one import")
        arrays_dir = self.dir / ARRAYS_DIR
        arrays_dir.mkdir(parents=True, exist_ok=True)
        fname = f"part-{uuid.uuid4().hex[:16]}.arrow"
        final = arrays_dir / fname
        tmp = arrays_dir / (fname + ".tmp")
        table = _arrays_table([m for m, _ in batch])
        with pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(arrays_dir)
        try:
            with Session(self.engine) as s, s.begin():
                rows = []
                for i, (m, h) in enumerate(batch):
                    row = MotionRow(
                        name=m.name, source=m.source, path=str(m.path or ""), fps=float(m.fps),
                        n_frames=m.n_frames, duration_s=float(m.duration_s), split=m.split,
                        content_hash=h, array_file=fname, array_row=i, meta=_jsonable(m.meta),
                        annotations=[
                            AnnotationRow(seg_id=a.seg_id or f"{k}", text=a.text.strip(),
                                          start_s=float(max(0.0, a.start_s)),
                                          end_s=float(min(a.end_s, m.duration_s)), extra=_jsonable(a.extra))
                            for k, a in enumerate(m.annotations)
                        ],
                    )
                    s.add(row)
                    rows.append(row)
                s.flush()
                ids = [r.motion_id for r in rows]
        except Exception:
            final.unlink(missing_ok=True)
            raise
        for (m, _), mid in zip(batch, ids):
            m.motion_id = mid
        report.added += len(batch)
        report.motion_ids.extend(ids)

    def remove_motions(self, motion_ids: Iterable[int]) -> int:
        """Delete motions and their annotations. Their rows in the Arrow part files become unreferenced."""
        ids = list(motion_ids)
        with Session(self.engine) as s, s.begin():
            s.execute(delete(AnnotationRow).where(AnnotationRow.motion_id.in_(ids)))
            n = s.execute(delete(MotionRow).where(MotionRow.motion_id.in_(ids))).rowcount
        return int(n or 0)

    # ------------------------------------------------------------------ reading
    def motion_ids(self, split: str | None = None, source: str | None = None) -> list[int]:
        q = select(MotionRow.motion_id).order_by(MotionRow.motion_id)
        if split is not None:
            q = q.where(MotionRow.split == split)
        if source is not None:
            q = q.where(MotionRow.source == source)
        with Session(self.engine) as s:
            return [r[0] for r in s.execute(q)]

    def motion_id(self, name: str) -> int:
        with Session(self.engine) as s:
            r = s.execute(select(MotionRow.motion_id).where(MotionRow.name == name)).first()
        if r is None:
            raise KeyError(f"no motion named {name!r}")
        return int(r[0])

    def get_motion(self, motion_id: int, arrays: bool = True) -> Motion:
        with Session(self.engine) as s:
            row = s.get(MotionRow, int(motion_id))
            if row is None:
                raise KeyError(f"no motion with id {motion_id}")
            m = self._row_to_motion(row)
        if arrays:
            m.joints, m.features = self._arrays(m.meta["_array_file"], m.meta["_array_row"])
        return m

    def iter_motions(self, split: str | None = None, source: str | None = None,
                     arrays: bool = True) -> Iterator[Motion]:
        for mid in self.motion_ids(split=split, source=source):
            yield self.get_motion(mid, arrays=arrays)

    def features(self, motion_id: int) -> np.ndarray:
        """(n_frames - 1, 263) float32, a read-only view of the memory-mapped Arrow file."""
        f, r = self._locate(motion_id)
        return self._arrays(f, r)[1]

    def joints(self, motion_id: int) -> np.ndarray:
        """(n_frames, 22, 3) float32.

        For a motion imported as features only, the joints are recovered from them (one frame per
        feature row) and the last frame is extrapolated linearly from the two before it.
        """
        f, r = self._locate(motion_id)
        j, feats = self._arrays(f, r)
        if j is None:
            from engine.corpus.features import features_to_joints

            j = features_to_joints(feats).astype(np.float32)  # (T-1, J, 3)
            last = j[-1:] + (j[-1:] - j[-2:-1]) if len(j) > 1 else j[-1:]
            j = np.concatenate([j, last], axis=0)  # (T, J, 3)
        return j

    def annotations(self, motion_id: int) -> list[Annotation]:
        with Session(self.engine) as s:
            rows = s.execute(select(AnnotationRow).where(AnnotationRow.motion_id == int(motion_id))
                             .order_by(AnnotationRow.start_s)).scalars().all()
            return [_ann(a) for a in rows]

    def motion_table(self) -> list[MotionInfo]:
        """Light metadata of every motion (no arrays), by motion id."""
        with Session(self.engine) as s:
            rows = s.execute(select(MotionRow.motion_id, MotionRow.name, MotionRow.source, MotionRow.fps,
                                    MotionRow.n_frames, MotionRow.duration_s, MotionRow.split, MotionRow.path)
                             .order_by(MotionRow.motion_id)).all()
        return [MotionInfo(motion_id=int(r.motion_id), name=r.name, source=r.source, fps=float(r.fps),
                           n_frames=int(r.n_frames), duration_s=float(r.duration_s), split=r.split,
                           path=r.path or "") for r in rows]

    def stats(self) -> CorpusStats:
        with Session(self.engine) as s:
            n, dur, frames = s.execute(select(func.count(MotionRow.motion_id), func.sum(MotionRow.duration_s),
                                              func.sum(MotionRow.n_frames))).one()
            n_ann = s.execute(select(func.count(AnnotationRow.annotation_id))).scalar_one()
            by_source = dict(s.execute(select(MotionRow.source, func.count()).group_by(MotionRow.source)).all())
            by_split = {str(k): v for k, v in
                        s.execute(select(MotionRow.split, func.count()).group_by(MotionRow.split)).all()}
        return CorpusStats(motions=int(n or 0), annotations=int(n_ann or 0), duration_s=float(dur or 0.0),
                           frames=int(frames or 0), by_source=by_source, by_split=by_split)

    # ------------------------------------------------------------------ internals
    def _locate(self, motion_id: int) -> tuple[str, int]:
        with Session(self.engine) as s:
            r = s.execute(select(MotionRow.array_file, MotionRow.array_row)
                          .where(MotionRow.motion_id == int(motion_id))).first()
        if r is None:
            raise KeyError(f"no motion with id {motion_id}")
        return r[0], int(r[1])

    def _table(self, fname: str) -> pa.Table:
        t = self._tables.get(fname)
        if t is None:
            path = self.dir / ARRAYS_DIR / fname
            try:
                source = pa.memory_map(str(path), "r")
                t = pa.ipc.open_file(source).read_all()
            except (OSError, pa.ArrowInvalid) as e:
                raise CorpusError(str(path), f"unreadable array file: {e}") from e
            self._tables[fname] = t
        return t

    def _arrays(self, fname: str, row: int) -> tuple[np.ndarray | None, np.ndarray]:
        t = self._table(fname)
        n_frames = int(t.column("n_frames")[row].as_py())
        feats = _list_row(t.column("features"), row).reshape(n_frames - 1, FEATURE_DIM)  # (T-1, 263)
        joints = None
        if t.column("has_joints")[row].as_py():
            joints = _list_row(t.column("joints"), row).reshape(n_frames, N_JOINTS, 3)  # (T, J, 3)
        return joints, feats

    @staticmethod
    def _row_to_motion(row: MotionRow) -> Motion:
        meta = dict(row.meta or {})
        meta["_array_file"] = row.array_file
        meta["_array_row"] = row.array_row
        meta["_n_frames"] = row.n_frames
        meta["_duration_s"] = row.duration_s
        return Motion(
            name=row.name, source=row.source, fps=row.fps, split=row.split, path=row.path,
            annotations=[_ann(a) for a in row.annotations], meta=meta, motion_id=row.motion_id,
        )


def _ann(a: AnnotationRow) -> Annotation:
    return Annotation(text=a.text, start_s=a.start_s, end_s=a.end_s, seg_id=a.seg_id, extra=dict(a.extra or {}))


def _list_row(col: pa.ChunkedArray, row: int) -> np.ndarray:
    """Zero-copy numpy view of one row of a list<float32> column."""
    for chunk in col.chunks:
        if row < len(chunk):
            offs = chunk.offsets
            a, b = offs[row].as_py(), offs[row + 1].as_py()
            return chunk.values.to_numpy(zero_copy_only=True)[a:b]
        row -= len(chunk)
    raise IndexError(row)


def _arrays_table(motions: list[Motion]) -> pa.Table:
    feats = [np.ascontiguousarray(m.features, dtype=np.float32).reshape(-1) for m in motions]
    joints = [np.ascontiguousarray(m.joints, dtype=np.float32).reshape(-1) if m.joints is not None
              else np.zeros(0, np.float32) for m in motions]
    return pa.table({
        "n_frames": pa.array([m.n_frames for m in motions], pa.int32()),
        "has_joints": pa.array([m.joints is not None for m in motions], pa.bool_()),
        "joints": _list_array(joints),
        "features": _list_array(feats),
    })


def _list_array(parts: list[np.ndarray]) -> pa.ListArray:
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(values, pa.float32()))


def _jsonable(d: dict[str, Any] | None) -> dict[str, Any]:
    """Drop private keys and coerce numpy scalars so the dict stores as JSON."""
    if not d:
        return {}
    return json.loads(json.dumps({k: v for k, v in d.items() if not str(k).startswith("_")}, default=_np_default))


def _np_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
