"""The versions of an index directory: listing and numbering them, the build lock, `index_info` and
`prune_versions`. (The CURRENT pointer itself is in indexer/manifest.py.)"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.corpus.types import CorpusError
from indexer.manifest import MANIFEST, VERSIONS, Manifest, read_current, version_dir


@dataclass
class VersionInfo:
    version: str
    complete: bool
    current: bool
    n_chunks: int | None = None
    n_motions: int | None = None
    op: str | None = None
    created_utc: str | None = None


@dataclass
class IndexInfo:
    index_dir: str
    current: str | None
    manifest: Manifest | None
    versions: list[VersionInfo]

    def to_dict(self) -> dict[str, Any]:
        return {"index_dir": self.index_dir, "current": self.current,
                "manifest": self.manifest.to_dict() if self.manifest else None,
                "versions": [dataclasses.asdict(v) for v in self.versions]}


def list_versions(index_dir: Path) -> list[str]:
    """The version directories (complete or not), oldest first."""
    vroot = Path(index_dir) / VERSIONS
    if not vroot.is_dir():
        return []
    return sorted((p.name for p in vroot.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def next_version(index_dir: Path) -> str:
    vs = list_versions(index_dir)
    return f"{(int(vs[-1]) + 1) if vs else 1:06d}"


@contextmanager
def index_lock(index_dir: Path) -> Iterator[None]:
    """Hold the index directory's build lock (flock on `.lock`), or raise RuntimeError when another holds it."""
    index_dir.mkdir(parents=True, exist_ok=True)
    fh = open(index_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise RuntimeError(f"{index_dir}: another build holds the index lock") from e
        yield
    finally:
        fh.close()


def index_info(index_dir: str | os.PathLike) -> IndexInfo:
    """Live version's manifest and a list of every version (no checksums: see `verify`)."""
    index_dir = Path(index_dir)
    current = read_current(index_dir)
    versions, live = [], None
    for v in list_versions(index_dir):
        d = version_dir(index_dir, v)
        try:
            m = Manifest.read(d)
        except (FileNotFoundError, CorpusError):
            versions.append(VersionInfo(v, False, v == current))
            continue
        versions.append(VersionInfo(v, True, v == current, m.n_chunks, m.n_motions, m.build.get("op"),
                                    m.created_utc))
        if v == current:
            live = m
    return IndexInfo(str(index_dir), current, live, versions)


def prune_versions(index_dir: str | os.PathLike, keep: int = 2) -> list[str]:
    """Delete all but the newest `keep` complete versions (never the live one) and unfinished builds."""
    index_dir = Path(index_dir)
    removed = []
    with index_lock(index_dir):
        current = read_current(index_dir)
        complete = [v for v in list_versions(index_dir) if (version_dir(index_dir, v) / MANIFEST).exists()]
        keep_set = set(complete[-keep:]) | {current}
        for v in list_versions(index_dir):
            if v not in keep_set:
                shutil.rmtree(version_dir(index_dir, v))
                removed.append(v)
    return removed
