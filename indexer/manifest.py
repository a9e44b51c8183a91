"""The manifest of an index version, file checksums, and the atomic CURRENT pointer.

Layout of an index directory::

    INDEX_DIR/
      CURRENT                  the name of the live version (one line), replaced atomically
      .lock                    held (flock) while a build runs
      versions/<v>/            one self-describing version (see indexer/build.py for its files)
        manifest.json          written last: a version without it is an unfinished build

The manifest lists the sha256 and size of every other file of its version; no index file is handed to
FAISS (or SQLite, or torch) before its checksum matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.corpus.io import atomic_write_bytes, atomic_write_text, fsync_dir, fsync_file  # noqa: F401 (re-exported)
from engine.corpus.types import CorpusError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
VERSIONS = "versions"
KIND = "motion-chunk-index"


@dataclass
class FileEntry:
    sha256: str
    bytes: int


@dataclass
class RecallReport:
    """Recall@k of an approximate FAISS index against exact (flat) search on sample queries."""

    k: int
    n_queries: int
    recall: float
    seconds_exact: float = 0.0
    seconds_index: float = 0.0


@dataclass
class Manifest:
    """What a version holds and how it was built."""

    version: str
    config: dict[str, Any]  # IndexConfig as a dict
    model_fingerprint: str  # RetrievalModel.fingerprint() of model.pt
    dim: int
    n_motions: int
    n_chunks: int
    files: dict[str, FileEntry]
    metric: str = "inner_product"  # on L2-normalised vectors, i.e. cosine
    normalized: bool = True
    faiss_kind: str = "flat"
    faiss_class: str = ""
    corpus: dict[str, Any] = field(default_factory=dict)  # {"dir": ..., "url": ...} the build read
    build: dict[str, Any] = field(default_factory=dict)  # op, base_version, seconds, embedded, reused
    recall: RecallReport | None = None
    motion_feature_tag: str | None = None
    created_utc: str = ""
    format_version: int = FORMAT_VERSION
    kind: str = KIND

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST) -> Manifest:
        if d.get("kind") != KIND:
            raise CorpusError(where, f"not a chunk index manifest (kind={d.get('kind')!r})")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise CorpusError(where, f"format version {d.get('format_version')} is newer than this engine "
                                     f"({FORMAT_VERSION})")
        try:
            d = dict(d)
            d["files"] = {k: FileEntry(**v) for k, v in d["files"].items()}
            if d.get("recall") is not None:
                d["recall"] = RecallReport(**d["recall"])
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in known})
        except (KeyError, TypeError) as e:
            raise CorpusError(where, f"malformed manifest: {e}") from e

    def write(self, version_dir: Path) -> None:
        atomic_write_text(version_dir / MANIFEST, json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def read(cls, version_dir: Path) -> Manifest:
        path = Path(version_dir) / MANIFEST
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorpusError(str(path), f"unreadable manifest: {e}") from e
        if not isinstance(d, dict):
            raise CorpusError(str(path), "manifest is not a JSON object")
        return cls.from_dict(d, str(path))


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> FileEntry:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
            n += len(chunk)
    return FileEntry(h.hexdigest(), n)


def sha256_bytes(data: bytes) -> FileEntry:
    return FileEntry(hashlib.sha256(data).hexdigest(), len(data))



def read_current(index_dir: str | os.PathLike) -> str | None:
    """The live version's name, or None for an index directory that has none yet."""
    p = Path(index_dir) / CURRENT
    try:
        name = p.read_text().strip()
    except FileNotFoundError:
        return None
    if not name or "/" in name or name.startswith("."):
        raise CorpusError(str(p), f"bad version pointer {name!r}")
    return name


def set_current(index_dir: str | os.PathLike, version: str) -> None:
    """Point CURRENT at `version` atomically (temporary file, fsync, rename)."""
    atomic_write_text(Path(index_dir) / CURRENT, version + "\n")


def version_dir(index_dir: str | os.PathLike, version: str) -> Path:
    return Path(index_dir) / VERSIONS / version
