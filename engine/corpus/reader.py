"""What a search reads of a corpus, without SQLAlchemy: the motion table and the annotations of an SQLite
corpus through the standard library's sqlite3, read only.

`open_reader(corpus_dir, url)` gives a `CorpusReader` for a corpus whose metadata is the default
`corpus.sqlite` (or any plain `sqlite:///PATH` URL), else None (then the caller opens the `CorpusStore`).
Everything else (arrays, writes, verification) is the store's: the reader opens the full `CorpusStore`
the first time such a method is asked for, so it can stand wherever a store is expected. The reader reads
no arrays, so it does not check the part files (`CorpusStore.open` does, and every array read checks its
digest).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from engine.corpus.types import Annotation, CorpusError, MotionInfo

# engine.corpus.store's (which imports SQLAlchemy at the top; tests/test_onnx_path.py checks they agree).
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE_NAME = "corpus.sqlite"


def _sqlite_path(corpus_dir: Path, url: str | None) -> Path | None:
    if not url:
        return corpus_dir / SQLITE_NAME
    prefix = "sqlite:///"
    if url.startswith(prefix) and "?" not in url and len(url) > len(prefix):
        return Path(url[len(prefix):])
    return None


def open_reader(corpus_dir: str | os.PathLike, url: str | None = None) -> CorpusReader | None:
    """A reader of an existing SQLite corpus, or None when its metadata lives elsewhere (e.g. PostgreSQL)."""
    d = Path(corpus_dir)
    man_path = d / MANIFEST
    try:
        man = json.loads(man_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{d}: not a corpus directory (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise CorpusError(str(man_path), f"unreadable corpus manifest: {e}") from e
    if not isinstance(man, dict) or man.get("format_version", 0) > FORMAT_VERSION:
        return None  # the store says what is wrong
    db = _sqlite_path(d, url or man.get("url"))
    if db is None or not db.is_file():
        return None
    return CorpusReader(d, db, url or man.get("url"))


class CorpusReader:
    """Read-only `motion_table` / `annotations` of an SQLite corpus; any other `CorpusStore` method opens
    the store itself (once)."""

    def __init__(self, corpus_dir: Path, db: Path, url: str | None):
        self.dir = corpus_dir
        self.db = db
        self._url = url
        self._store = None
        try:
            self.conn = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as e:
            raise CorpusError(str(db), f"cannot open the metadata database: {e}") from e

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise CorpusError(str(self.db), f"cannot read the metadata database: {e}") from e

    def motion_table(self) -> list[MotionInfo]:
        """`CorpusStore.motion_table`: light metadata of every motion, by motion id."""
        rows = self._rows("SELECT motion_id, name, source, fps, n_frames, duration_s, split, path FROM motions "
                          "ORDER BY motion_id")
        return [MotionInfo(motion_id=int(r[0]), name=r[1], source=r[2], fps=float(r[3]), n_frames=int(r[4]),
                           duration_s=float(r[5]), split=r[6], path=r[7] or "") for r in rows]

    def annotations(self, motion_id: int) -> list[Annotation]:
        """`CorpusStore.annotations`: a motion's labelled moments by start time."""
        rows = self._rows("SELECT text, start_s, end_s, seg_id, extra FROM annotations WHERE motion_id = ? "
                          "ORDER BY start_s", (int(motion_id),))
        out = []
        for text, start_s, end_s, seg_id, extra in rows:
            try:
                extra = json.loads(extra) if isinstance(extra, str) else (extra or {})
            except ValueError as e:
                raise CorpusError(str(self.db), f"motion {motion_id}: bad annotation fields: {e}") from e
            out.append(Annotation(text=text, start_s=float(start_s), end_s=float(end_s), seg_id=seg_id or "",
                                  extra=dict(extra or {})))
        return out

    @property
    def store(self):
        """The full CorpusStore of this corpus (opened on first use)."""
        if self._store is None:
            from engine.corpus.store import CorpusStore

            self._store = CorpusStore.open(self.dir, url=self._url, create=False)
        return self._store

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("conn", "dir", "db"):
            raise AttributeError(name)
        return getattr(self.store, name)

    def close(self) -> None:
        self.conn.close()
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> CorpusReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
