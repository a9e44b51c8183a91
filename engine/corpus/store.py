"""The corpus store: metadata in SQL (SQLAlchemy), arrays in Arrow IPC files (pyarrow).

A corpus is a directory::

    corpus_dir/
      manifest.json         format version, SQL URL when not the default SQLite file
      corpus.sqlite         motions, annotations (default; any SQLAlchemy URL is accepted)
      arrays/part-*.arrow   one Arrow IPC file per import batch: joints and 263-dim features per motion
      .arrays.lock          advisory lock: imports hold it shared while a part file is not yet committed

Guarantees
- Import is idempotent: a motion whose name is already stored with the same content hash is skipped.
- Each batch is one transaction. Its Arrow file is written to a temporary name, fsynced and renamed
  *before* the SQL commit; if the commit fails the file is removed, so nothing stored is ever lost or
  half-written. A bad record raises `CorpusError` naming the record and the problem (or, with
  `skip_bad=True`, is reported and skipped) before anything of its batch is written.
- Arrays are read through memory maps without copying (read-only numpy views).

Integrity
- Each part file's size and sha256 (table `array_files`) and each motion's array digests (sha256 of its
  float32 features and joints as stored, table `motion_digests`) are written in the SQL transaction that
  commits the batch, after the file is durable under its final name.
- `open()` checks that every referenced part file exists with its recorded size (cheap); `verify="full"`
  also hashes every file and motion. Every motion read (features, joints: what an index build, an export or
  a preview reads) is checked against its digest the first time this store reads it: the bytes read are
  hashed once, and a mismatch (a flipped byte, a row pointing at another motion's arrays) is a
  `CorpusError` naming the motion and the file.
- `verify()` (the `engine data verify` command) checks everything and, with `repair=True`, removes part
  files no row references and stale temporary files (only names this store writes, and only while no
  import holds the lock), and records checksums for motions stored before checksums existed, when their
  content hash confirms the arrays. Such older corpora open as they are; their motions are "unverified".
- SQL errors surface as one `CorpusError` naming the database (no SQL text); two imports of the same
  motions at once end with both motions stored once (the loser skips what the winner stored).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from engine.corpus.io import atomic_writer
from engine.corpus.skeleton import FEATURE_DIM, N_JOINTS
from engine.corpus.types import Annotation, CorpusError, Motion, MotionInfo

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE_NAME = "corpus.sqlite"
ARRAYS_DIR = "arrays"
LOCK_NAME = ".arrays.lock"
# Annotation times may exceed the motion by this much (frame rounding) before they are an error.
TIME_TOLERANCE_S = 0.1
# The only names this store writes in ARRAYS_DIR: part files and their temporaries (atomic_writer's
# `.NAME.PID.tmp`, and the `NAME.tmp` of older versions). Sweeps never touch any other file.
PART_FILE_RE = re.compile(r"part-[0-9a-f]{16}\.arrow")
TEMP_FILE_RE = re.compile(r"\.part-[0-9a-f]{16}\.arrow\.\d+\.tmp|part-[0-9a-f]{16}\.arrow\.tmp")
VERIFY_MODES = ("none", "sizes", "full")


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


class ArrayFileRow(Base):
    """Size and sha256 of one Arrow part file, committed in the transaction whose motions it holds."""

    __tablename__ = "array_files"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class MotionDigestRow(Base):
    """sha256 of one motion's arrays as stored: its float32 features and joints bytes (C order).

    Motions stored before checksums existed have no row ("unverified")."""

    __tablename__ = "motion_digests"
    motion_id: Mapped[int] = mapped_column(ForeignKey("motions.motion_id", ondelete="CASCADE"), primary_key=True)
    features_sha256: Mapped[str] = mapped_column(String(64))
    joints_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


# One motion's location and digests (the per-read query).
_LOCATE = (select(MotionRow.name, MotionRow.array_file, MotionRow.array_row, MotionRow.n_frames,
                  MotionDigestRow.features_sha256, MotionDigestRow.joints_sha256)
           .outerjoin(MotionDigestRow, MotionDigestRow.motion_id == MotionRow.motion_id)
           .where(MotionRow.motion_id == bindparam("motion_id")))


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


def array_sha256(arr: np.ndarray) -> str:
    """sha256 of an array's float32 bytes in C order: what the store writes for it and reads back."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    return hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()


def file_sha256(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, sha256) of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
            n += len(block)
    return n, h.hexdigest()


@dataclass
class StoreVerifyReport:
    """What `CorpusStore.verify` found (and, with repair, did). `ok` means no damaged or missing data;
    orphans, temporary leftovers and unverified (pre-checksum) motions are warnings."""

    corpus: str
    full: bool
    files: int = 0
    motions: int = 0
    bytes_hashed: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unverified_files: list[str] = field(default_factory=list)
    unverified_motions: int = 0
    orphans: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    recorded_files: int = 0
    recorded_motions: int = 0
    not_repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "ok": self.ok, "full": self.full, "files": self.files,
                "motions": self.motions, "bytes_hashed": self.bytes_hashed, "problems": self.problems,
                "warnings": self.warnings, "unverified_files": self.unverified_files,
                "unverified_motions": self.unverified_motions, "orphans": self.orphans, "removed": self.removed,
                "recorded_files": self.recorded_files, "recorded_motions": self.recorded_motions,
                "not_repaired": self.not_repaired}


@dataclass(frozen=True)
class _Prepared:
    """A validated motion ready to write: its content hash (duplicate detection) and array digests."""

    motion: Motion
    content_hash: str
    features_sha256: str
    joints_sha256: str | None


@dataclass(frozen=True)
class _Loc:
    """Where a motion's arrays are, and what they must hash to (None: stored before checksums)."""

    motion_id: int
    name: str
    array_file: str
    array_row: int
    n_frames: int
    features_sha256: str | None
    joints_sha256: str | None

    @property
    def where(self) -> str:
        return f"motion {self.name!r} (id {self.motion_id})"


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
            raise CorpusError(_db_where(url), f"cannot open the metadata database: {_db_message(e)}") from e
        where = _db_where(url)

        @event.listens_for(self.engine, "handle_error")
        def _as_corpus_error(ctx) -> None:
            """Any later database failure is one CorpusError naming the database, without SQL text
            (an IntegrityError goes through: a concurrent import's name clash is handled by the writer)."""
            if isinstance(ctx.sqlalchemy_exception, IntegrityError):
                return
            raise CorpusError(where, f"cannot read or write the metadata database: "
                                     f"{_db_message(ctx.original_exception)}") from ctx.original_exception

        self._tables: dict[str, pa.Table] = {}
        self._verified: set[tuple[int, str, int, str]] = set()  # (motion_id, file, row, "features"|"joints")

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, corpus_dir: str | os.PathLike, url: str | None = None, create: bool = True,
             verify: str = "sizes") -> CorpusStore:
        """Open (or, with create=True, create) the corpus in `corpus_dir`.

        `url` is any SQLAlchemy URL for the metadata (default: `corpus_dir/corpus.sqlite`); it is
        recorded in the manifest so later opens find it.
        `verify`: "sizes" (default) checks that every part file a motion needs exists with its recorded
        size; "full" also checks every file's sha256 and every motion's arrays; "none" checks nothing
        (what `engine data verify` uses to report on a damaged corpus). A failed check is a CorpusError
        naming the file. Stale temporary files of killed imports are removed (when no import is running).
        """
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
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
        store = cls(d, url)
        try:
            if verify != "none":
                store._sweep_temps()
                store._check_open(full=verify == "full")
        except BaseException:
            store.close()
            raise
        return store

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
        A motion another import stores meanwhile is skipped the same way (same content) or an error.
        """
        report = ImportReport()
        batch: list[_Prepared] = []
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

    def _prepare(self, m: Motion) -> _Prepared | None:
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
        if self._is_stored(m.name, h):
            return None
        return _Prepared(m, h, array_sha256(m.features),
                         array_sha256(m.joints) if m.joints is not None else None)

    def _is_stored(self, name: str, h: str) -> bool:
        """True when `name` is stored with content hash `h`; False when absent; an error when different."""
        with Session(self.engine) as s:
            row = s.execute(select(MotionRow.content_hash).where(MotionRow.name == name)).first()
        if row is None:
            return False
        if row[0] == h:
            return True
        raise CorpusError(f"motion {name!r}", "already stored with different content (remove it first)")

    def _write_batch(self, batch: list[_Prepared], report: ImportReport, attempts: int = 3) -> None:
        names = [p.motion.name for p in batch]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise CorpusError(f"motion {dup[0]!r}", "appears twice in one import")
        arrays_dir = self.dir / ARRAYS_DIR
        arrays_dir.mkdir(parents=True, exist_ok=True)
        fname = f"part-{uuid.uuid4().hex[:16]}.arrow"
        final = arrays_dir / fname
        table = _arrays_table([p.motion for p in batch])
        clash: IntegrityError | None = None
        with self._lock(exclusive=False):  # a sweep never takes this file for an orphan before its commit
            try:
                with atomic_writer(final) as tmp:  # the temporary file is removed on any failure
                    _write_arrow(tmp, table)
                    size, sha = file_sha256(tmp)
            except OSError as e:  # ENOSPC, EIO, EACCES ...
                raise CorpusError(str(final), f"cannot write the array file: {e.strerror or e}; nothing of this "
                                              "batch was stored") from e
            try:
                ids = self._commit_batch(fname, size, sha, batch)
            except IntegrityError as e:
                final.unlink(missing_ok=True)
                clash = e
            except BaseException:
                final.unlink(missing_ok=True)
                raise
        if clash is not None:
            self._after_clash(batch, report, clash, attempts)
            return
        for p, mid in zip(batch, ids):
            p.motion.motion_id = mid
        report.added += len(batch)
        report.motion_ids.extend(ids)

    def _commit_batch(self, fname: str, size: int, sha: str, batch: list[_Prepared]) -> list[int]:
        """One transaction: the part file's checksum, the motions, their annotations and array digests."""
        with Session(self.engine) as s, s.begin():
            s.add(ArrayFileRow(name=fname, size_bytes=size, sha256=sha))
            rows = []
            for i, p in enumerate(batch):
                m = p.motion
                rows.append(MotionRow(
                    name=m.name, source=m.source, path=str(m.path or ""), fps=float(m.fps),
                    n_frames=m.n_frames, duration_s=float(m.duration_s), split=m.split,
                    content_hash=p.content_hash, array_file=fname, array_row=i, meta=_jsonable(m.meta),
                    annotations=[
                        AnnotationRow(seg_id=a.seg_id or f"{k}", text=a.text.strip(),
                                      start_s=float(max(0.0, a.start_s)),
                                      end_s=float(min(a.end_s, m.duration_s)), extra=_jsonable(a.extra))
                        for k, a in enumerate(m.annotations)
                    ],
                ))
            s.add_all(rows)
            s.flush()
            s.add_all([MotionDigestRow(motion_id=r.motion_id, features_sha256=p.features_sha256,
                                       joints_sha256=p.joints_sha256) for r, p in zip(rows, batch)])
            ids = [r.motion_id for r in rows]
        return ids

    def _after_clash(self, batch: list[_Prepared], report: ImportReport, clash: IntegrityError,
                     attempts: int) -> None:
        """Another import committed some of these names since they were checked: skip those stored with
        the same content, refuse different content, and write the rest again."""
        rest = [p for p in batch if not self._is_stored(p.motion.name, p.content_hash)]
        if len(rest) == len(batch) or attempts <= 1:  # not a name clash, or one that keeps recurring
            raise CorpusError(_db_where(self.url), f"cannot store the batch of {batch[0].motion.name!r}: "
                                                   f"{_db_message(clash)}") from None
        report.skipped_existing += len(batch) - len(rest)
        log.info("%d motions were stored by another import meanwhile; skipped", len(batch) - len(rest))
        if rest:
            self._write_batch(rest, report, attempts - 1)

    def remove_motions(self, motion_ids: Iterable[int]) -> int:
        """Delete motions and their annotations. Their rows in the Arrow part files become unreferenced
        (a part file no motion needs any more is removed by `verify(repair=True)`)."""
        ids = list(motion_ids)
        with Session(self.engine) as s, s.begin():
            s.execute(delete(AnnotationRow).where(AnnotationRow.motion_id.in_(ids)))
            s.execute(delete(MotionDigestRow).where(MotionDigestRow.motion_id.in_(ids)))
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
            m.joints, m.features = self._read(self._locate(motion_id), joints=True)
        return m

    def iter_motions(self, split: str | None = None, source: str | None = None,
                     arrays: bool = True) -> Iterator[Motion]:
        for mid in self.motion_ids(split=split, source=source):
            yield self.get_motion(mid, arrays=arrays)

    def features(self, motion_id: int) -> np.ndarray:
        """(n_frames - 1, 263) float32, a read-only view of the memory-mapped Arrow file (checked against
        the motion's digest on first read)."""
        return self._read(self._locate(motion_id), joints=False)[1]

    def joints(self, motion_id: int) -> np.ndarray:
        """(n_frames, 22, 3) float32.

        For a motion imported as features only, the joints are recovered from them (one frame per
        feature row) and the last frame is extrapolated linearly from the two before it.
        """
        loc = self._locate(motion_id)
        j, feats = self._read(loc, joints=True, features=loc.joints_sha256 is None)
        if j is None:
            from engine.corpus.features import features_to_joints

            if feats is None:  # a digest says joints but the file has none: _read raised already
                feats = self._read(loc, joints=False)[1]
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

    # ------------------------------------------------------------------ integrity
    def verify(self, full: bool = True, repair: bool = False) -> StoreVerifyReport:
        """Check the corpus: every part file a motion needs exists with its recorded size (and, `full`,
        sha256); every motion's row is inside its file with the frame count SQL records, and (`full`) its
        arrays match their digests. Motions stored before checksums existed are checked against their
        content hash instead (when their annotations were stored unchanged it reproduces exactly).

        `repair` (implies `full`): remove store-named part files no motion references and stale
        temporary files (not while an import holds the lock; never when the database references no
        file at all, which looks like a wrong database rather than leftovers), and record checksums for
        unverified files and motions whose content hash confirms them. Damaged data is not repaired:
        it is listed in `not_repaired` (re-import those motions)."""
        full = full or repair
        rep = StoreVerifyReport(str(self.dir), full)
        arrays_dir = self.dir / ARRAYS_DIR
        with Session(self.engine) as s:
            rows = s.execute(select(MotionRow.motion_id, MotionRow.name, MotionRow.array_file, MotionRow.array_row,
                                    MotionRow.n_frames, MotionRow.fps, MotionRow.content_hash)
                             .order_by(MotionRow.motion_id)).all()
            digests = {r.motion_id: (r.features_sha256, r.joints_sha256)
                       for r in s.execute(select(MotionDigestRow)).scalars()}
            recorded = {r.name: (int(r.size_bytes), r.sha256) for r in s.execute(select(ArrayFileRow)).scalars()}
        rep.motions = len(rows)
        by_file: dict[str, list[Any]] = {}
        for r in rows:
            by_file.setdefault(r.array_file, []).append(r)
        rep.files = len(by_file)
        bad_files: set[str] = set()
        file_sha: dict[str, tuple[int, str]] = {}
        for fname, frows in sorted(by_file.items()):
            path = arrays_dir / fname
            needs = _motion_list(frows)
            if not path.is_file():
                rep.problems.append(f"{path}: missing; {needs} stored in it")
                bad_files.add(fname)
                continue
            size = path.stat().st_size
            if fname in recorded and size != recorded[fname][0]:
                rep.problems.append(f"{path}: {size} bytes, {recorded[fname][0]} recorded at import; {needs} "
                                    "stored in it")
                bad_files.add(fname)
                continue
            if not full:
                continue
            file_sha[fname] = got = file_sha256(path)
            rep.bytes_hashed += got[0]
            if fname not in recorded:
                rep.unverified_files.append(str(path))
            elif got[1] != recorded[fname][1]:
                rep.problems.append(f"{path}: sha256 {got[1][:12]}… differs from the {recorded[fname][1][:12]}… "
                                    f"recorded at import; {needs} stored in it")
                bad_files.add(fname)
        confirmed: list[int] = []  # unverified motions whose content hash reproduces: their digests can be recorded
        new_digests: dict[int, tuple[str, str | None]] = {}
        unconfirmed_files: set[str] = set()
        if full:
            anns = self._annotations_by_motion() if any(r.motion_id not in digests for r in rows) else {}
            for r in rows:
                if not (arrays_dir / r.array_file).is_file():
                    continue
                loc = _Loc(r.motion_id, r.name, r.array_file, int(r.array_row), int(r.n_frames),
                           *digests.get(r.motion_id, (None, None)))
                try:
                    joints, feats = self._read(loc, joints=True, features=True, check=True, memo=False)
                except CorpusError as e:
                    rep.problems.append(str(e))
                    bad_files.add(r.array_file)
                    continue
                if r.motion_id in digests:
                    continue
                rep.unverified_motions += 1
                if r.content_hash in _stored_content_hashes(float(r.fps), joints, feats, anns.get(r.motion_id, [])):
                    confirmed.append(r.motion_id)
                    new_digests[r.motion_id] = (array_sha256(feats),
                                                array_sha256(joints) if joints is not None else None)
                else:
                    unconfirmed_files.add(r.array_file)
                    rep.warnings.append(f"{loc.where}: stored before checksums, and its content hash does not "
                                        f"reproduce from {arrays_dir / r.array_file} row {r.array_row} (its "
                                        "annotations were normalised at import, or its arrays changed); "
                                        "unverified")
        else:
            rep.unverified_motions = sum(1 for r in rows if r.motion_id not in digests)
        if rep.unverified_motions:
            rep.warnings.append(f"{rep.unverified_motions} motions were stored before checksums existed "
                                "(unverified); `engine data verify --repair` records checksums for them")
        referenced = set(by_file)
        on_disk = sorted(p.name for p in arrays_dir.iterdir()) if arrays_dir.is_dir() else []
        rep.orphans = [n for n in on_disk if PART_FILE_RE.fullmatch(n) and n not in referenced]
        temps = [n for n in on_disk if TEMP_FILE_RE.fullmatch(n)]
        for n in rep.orphans:
            rep.warnings.append(f"{arrays_dir / n}: no motion references this part file (left by a killed "
                                "import or by removed motions); `--repair` removes it")
        for n in temps:
            rep.warnings.append(f"{arrays_dir / n}: temporary file of an unfinished import; `--repair` removes "
                                "it (when no import is running)")
        if repair:
            self._repair(rep, referenced, recorded, file_sha, bad_files | unconfirmed_files, new_digests)
        return rep

    def _repair(self, rep: StoreVerifyReport, referenced: set[str], recorded: dict[str, tuple[int, str]],
                file_sha: dict[str, tuple[int, str]], not_good: set[str],
                new_digests: dict[int, tuple[str, str | None]]) -> None:
        arrays_dir = self.dir / ARRAYS_DIR
        for p in rep.problems:
            rep.not_repaired.append(f"{p} (damaged data is not repaired: re-import those motions)")
        with self._lock(exclusive=True, blocking=False) as locked:
            if not locked:
                rep.not_repaired.append("an import is running (or the corpus directory is read-only): no "
                                        "file was removed; re-run `--repair` when it has finished")
            else:
                with Session(self.engine) as s:  # again, under the lock: an import may have committed meanwhile
                    referenced = {r[0] for r in s.execute(select(MotionRow.array_file).distinct())}
                names = sorted(p.name for p in arrays_dir.iterdir()) if arrays_dir.is_dir() else []
                orphans = [n for n in names if PART_FILE_RE.fullmatch(n) and n not in referenced]
                temps = [n for n in names if TEMP_FILE_RE.fullmatch(n)]
                if orphans and not referenced:
                    rep.not_repaired.append(f"{len(orphans)} part files but the database references none (a "
                                            f"wrong --db-url?): not removed; delete {arrays_dir}/part-* by "
                                            "hand if that is intended")
                    orphans = []
                for n in orphans + temps:
                    try:
                        (arrays_dir / n).unlink()
                        rep.removed.append(str(arrays_dir / n))
                    except OSError as e:
                        rep.not_repaired.append(f"{arrays_dir / n}: cannot remove: {e.strerror or e}")
                stale = [n for n in recorded if n not in referenced and not (arrays_dir / n).exists()]
                if orphans or stale:
                    with Session(self.engine) as s, s.begin():
                        s.execute(delete(ArrayFileRow).where(ArrayFileRow.name.in_(orphans + stale)))
        with Session(self.engine) as s, s.begin():
            for mid, (f_sha, j_sha) in new_digests.items():
                s.merge(MotionDigestRow(motion_id=mid, features_sha256=f_sha, joints_sha256=j_sha))
            rep.recorded_motions = len(new_digests)
            for fname, (size, sha) in file_sha.items():
                if fname in recorded or fname in not_good:
                    continue
                s.merge(ArrayFileRow(name=fname, size_bytes=size, sha256=sha))
                rep.recorded_files += 1
        for fname in sorted(n for n in file_sha if n not in recorded and n in not_good):
            rep.not_repaired.append(f"{arrays_dir / fname}: not all its motions could be confirmed; its "
                                    "checksum was not recorded")

    def _check_open(self, full: bool) -> None:
        """The open-time check: sizes of the part files motions need (and, `full`, everything)."""
        if full:
            rep = self.verify(full=True)
            problems = rep.problems
        else:
            with Session(self.engine) as s:
                needed = {r[0] for r in s.execute(select(MotionRow.array_file).distinct())}
                recorded = dict(s.execute(select(ArrayFileRow.name, ArrayFileRow.size_bytes)).all())
            problems = []
            for fname in sorted(needed):
                path = self.dir / ARRAYS_DIR / fname
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    problems.append(f"{path}: missing")
                    continue
                if fname in recorded and size != int(recorded[fname]):
                    problems.append(f"{path}: {size} bytes, {int(recorded[fname])} recorded at import")
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            where, _, problem = problems[0].partition(": ")
            raise CorpusError(where, f"{problem}{more}; the corpus is damaged: run `engine data verify "
                                     f"{self.dir}`")

    def _sweep_temps(self) -> list[str]:
        """Remove temporary part files of killed imports (only while no import holds the lock)."""
        arrays_dir = self.dir / ARRAYS_DIR
        try:
            if not any(TEMP_FILE_RE.fullmatch(n) for n in os.listdir(arrays_dir)):
                return []
        except OSError:
            return []
        removed = []
        with self._lock(exclusive=True, blocking=False) as locked:
            if locked:
                for n in os.listdir(arrays_dir):
                    if TEMP_FILE_RE.fullmatch(n):
                        with contextlib.suppress(OSError):
                            (arrays_dir / n).unlink()
                            removed.append(n)
        if removed:
            log.info("%s: removed %d temporary files of unfinished imports", arrays_dir, len(removed))
        return removed

    @contextlib.contextmanager
    def _lock(self, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        """An advisory lock on CORPUS/.arrays.lock: imports hold it shared from writing a part file to
        committing it, sweeps exclusive. Yields whether it is held (a sweep skips when not)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no cross-process lock, so no sweeping
            yield not exclusive
            return
        try:
            fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # read-only corpus directory: nothing can be written or swept anyway
            yield not exclusive
            return
        try:
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
                held = True
            except OSError:
                held = False
            yield held
        finally:
            os.close(fd)  # releases the lock

    # ------------------------------------------------------------------ internals
    def _locate(self, motion_id: int) -> _Loc:
        with self.engine.connect() as c:  # a prebuilt Core statement: ~7x cheaper than an ORM query per read
            r = c.execute(_LOCATE, {"motion_id": int(motion_id)}).first()
        if r is None:
            raise KeyError(f"no motion with id {motion_id}")
        return _Loc(int(motion_id), r[0], r[1], int(r[2]), int(r[3]), r[4], r[5])

    def _annotations_by_motion(self) -> dict[int, list[Annotation]]:
        """Every motion's annotations in the order they were given at import."""
        out: dict[int, list[Annotation]] = {}
        with Session(self.engine) as s:
            for a in s.execute(select(AnnotationRow).order_by(AnnotationRow.annotation_id)).scalars():
                out.setdefault(a.motion_id, []).append(_ann(a))
        return out

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

    def _read(self, loc: _Loc, joints: bool = True, features: bool = True, check: bool = True,
              memo: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(joints or None, features or None) of a motion, as read-only views of its part file.

        The row must hold the frame count SQL records, and each array read must match the motion's digest
        (hashed once per store unless `memo` is False); otherwise a CorpusError names the motion and file."""
        t = self._table(loc.array_file)
        path = self.dir / ARRAYS_DIR / loc.array_file
        if not 0 <= loc.array_row < t.num_rows:
            raise CorpusError(loc.where, f"row {loc.array_row} is outside {path} ({t.num_rows} rows): the "
                                         "database points at the wrong file; run `engine data verify`")
        try:
            n_frames = int(t.column("n_frames")[loc.array_row].as_py())
            has_joints = bool(t.column("has_joints")[loc.array_row].as_py())
        except (KeyError, TypeError, ValueError, pa.ArrowException) as e:
            raise CorpusError(str(path), f"unreadable array file: {e}") from e
        if n_frames != loc.n_frames:
            raise CorpusError(loc.where, f"{path} row {loc.array_row} holds {n_frames} frames, the database "
                                         f"records {loc.n_frames}: it is another motion's or damaged; run "
                                         "`engine data verify`")
        if loc.joints_sha256 is not None and not has_joints:
            raise CorpusError(loc.where, f"{path} row {loc.array_row} has no joints but the motion was stored "
                                         "with joints: it is another motion's row; run `engine data verify`")
        feats = joint_arr = None
        if features:
            flat = self._column_row(t, "features", loc, path, (n_frames - 1) * FEATURE_DIM)
            self._check(loc, "features", flat, loc.features_sha256, path, check, memo)
            feats = flat.reshape(n_frames - 1, FEATURE_DIM)  # (T-1, 263)
        if joints and has_joints:
            flat = self._column_row(t, "joints", loc, path, n_frames * N_JOINTS * 3)
            self._check(loc, "joints", flat, loc.joints_sha256, path, check, memo)
            joint_arr = flat.reshape(n_frames, N_JOINTS, 3)  # (T, J, 3)
        return joint_arr, feats

    @staticmethod
    def _column_row(t: pa.Table, col: str, loc: _Loc, path: Path, size: int) -> np.ndarray:
        try:
            flat = _list_row(t.column(col), loc.array_row)
        except (KeyError, IndexError, pa.ArrowException) as e:
            raise CorpusError(str(path), f"unreadable array file ({col}, row {loc.array_row}): {e}") from e
        if flat.size != size:
            raise CorpusError(loc.where, f"{path} row {loc.array_row}: {flat.size} {col} values, expected {size} "
                                         "(the file is damaged); run `engine data verify`")
        return flat

    def _check(self, loc: _Loc, kind: str, flat: np.ndarray, expected: str | None, path: Path,
               check: bool, memo: bool) -> None:
        if expected is None or not check:
            return
        key = (loc.motion_id, loc.array_file, loc.array_row, kind)
        if memo and key in self._verified:
            return
        got = hashlib.sha256(flat.view(np.uint8)).hexdigest()
        if got != expected:
            raise CorpusError(loc.where, f"its {kind} in {path} row {loc.array_row} differ from the sha256 "
                                         "recorded at import (the file is damaged, or the database points at "
                                         "another motion's arrays); run `engine data verify`")
        if memo:
            self._verified.add(key)

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


def _stored_content_hashes(fps: float, joints: np.ndarray | None, feats: np.ndarray,
                           anns: list[Annotation]) -> set[str]:
    """The content hashes a stored motion can have had at import: annotations as stored, and with the
    seg_ids the store filled in ("0", "1", ... for empty ones) empty again."""
    variants = [anns]
    if any(a.seg_id == str(k) for k, a in enumerate(anns)):
        variants.append([Annotation(a.text, a.start_s, a.end_s, seg_id="" if a.seg_id == str(k) else a.seg_id)
                         for k, a in enumerate(anns)])
    return {content_hash(Motion(name="", source="", fps=fps, joints=joints, features=feats, annotations=v))
            for v in variants}


def _db_where(url: str) -> str:
    """The database as messages name it: the file of a SQLite URL, else the URL without its password."""
    try:
        u = make_url(url)
        if u.get_backend_name() == "sqlite" and u.database:
            return u.database
    except Exception:  # noqa: BLE001 - not a parseable URL
        pass
    return _safe_url(url)


def _db_message(e: BaseException) -> str:
    """The first line of a database error's own message (never the SQL statement or parameters)."""
    orig = getattr(e, "orig", None) or e
    lines = [ln.strip() for ln in str(orig).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(orig).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def _motion_list(rows: list[Any], limit: int = 3) -> str:
    names = ", ".join(f"{r.name!r} (id {r.motion_id})" for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"{len(rows)} motion{'s' if len(rows) != 1 else ''} ({names}{more}) are" if len(rows) != 1 \
        else f"motion {names} is"


def _write_arrow(path: Path, table: pa.Table) -> None:
    """Write `table` as one Arrow IPC file at `path`."""
    with pa.OSFile(str(path), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


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
