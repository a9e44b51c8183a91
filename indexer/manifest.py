"""The manifest of an index version, the names of its files, file checksums, and the atomic CURRENT pointer.

Layout of an index directory::

    INDEX_DIR/
      CURRENT                  the name of the live version (one line), replaced atomically
      .lock                    held (flock) while a build runs
      versions/<v>/            one self-describing version:
        build.json             what this version is a build of (op, base version, config, model, motion
                               list); an unfinished build with the same build.json is resumed, not restarted
        model.pt               the retrieval model the chunks were embedded with (queries must use it)
        chunks.sqlite          tables `motions` and `chunks` (chunk_id = FAISS id = SQL key)
        embeddings.arrow       chunk_id, motion_id, vector (unit float32), sorted by chunk_id
        index.faiss            FAISS IndexIDMap2 over Flat | IVF-Flat | HNSW | IVF-PQ, inner product
        motion_features.arrow  optional: per-motion features from a caller's `motion_feature_fn`
        windows.arrow          optional (IndexConfig.window_bank): the window bank's extra windows (2/4/6 s,
                               stride half the window) with their unit embeddings (indexer/bank.py)
        manifest.json          written last (a version without it is an unfinished build): config, model
                               fingerprint, localizer, dims, metric, counts, sha256 of every other file,
                               recall of the FAISS index against exact search

The build stages that write these files are in indexer/stages.py. The manifest lists the sha256 and size
of every other file of its version; no index file is handed to FAISS (or SQLite, or torch) before its
checksum matches (indexer/verify.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.corpus import io as corpus_io
from engine.corpus.io import atomic_write_bytes, atomic_write_text, fsync_dir, fsync_file  # noqa: F401 (re-exported)
from engine.corpus.types import CorpusError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
VERSIONS = "versions"
KIND = "motion-chunk-index"
# The files of a version directory (see the layout above) and its build's scratch folders.
BUILD_JSON = "build.json"
MODEL_FILE = "model.pt"
CHUNKS_DB = "chunks.sqlite"
EMBEDDINGS = "embeddings.arrow"
FAISS_FILE = "index.faiss"
MOTION_FEATURES = "motion_features.arrow"
WINDOWS = "windows.arrow"
STAGE_DIR = "stages"
EMBED_DIR = "embed"


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


@dataclass(frozen=True)
class LocalizerRef:
    """The localizer checkpoint an index was built with: its run directory (or file) and the sha256 of the
    checkpoint that resolves to (`localizer.fingerprint.localizer_fingerprint`)."""

    path: str
    sha256: str


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
    localizer: LocalizerRef | None = None  # None: built without a localizer (and in manifests before it)
    created_utc: str = ""
    format_version: int = FORMAT_VERSION
    kind: str = KIND

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST) -> Manifest:
        if d.get("kind") != KIND:
            raise CorpusError(where, f"not a chunk index manifest (kind={d.get('kind')!r})")
        fv = d.get("format_version", 0)
        if isinstance(fv, bool) or not isinstance(fv, int):
            raise CorpusError(where, f"malformed manifest: format_version must be an integer (got {fv!r})")
        if fv > FORMAT_VERSION:
            raise CorpusError(where, f"format version {fv} is newer than this engine ({FORMAT_VERSION})")
        files = d.get("files")
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise CorpusError(where, "malformed manifest: files must be an object of {name: {sha256, bytes}}")
        try:
            d = dict(d)
            d["files"] = {k: FileEntry(**v) for k, v in files.items()}
            if d.get("recall") is not None:
                d["recall"] = RecallReport(**d["recall"])
            if d.get("localizer") is not None:
                d["localizer"] = LocalizerRef(**d["localizer"])
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in known})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
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


def sha256_file(path: str | os.PathLike) -> FileEntry:
    """The manifest entry (sha256, size) of a file."""
    d = corpus_io.sha256_file(path)
    return FileEntry(d.sha256, d.n_bytes)


def checksum_problem(name: str, entry: FileEntry, got: FileEntry) -> str | None:
    """The problem line of a file whose (sha256, size) `got` differs from its manifest entry, else None."""
    if got == entry:
        return None
    return (f"{name}: checksum mismatch (manifest sha256 {entry.sha256[:12]}…, {entry.bytes} bytes; "
            f"file {got.sha256[:12]}…, {got.bytes} bytes)")


def read_checked(path: str | os.PathLike, entry: FileEntry) -> tuple[bytes | None, str | None]:
    """(bytes, None) when a file matches its manifest entry, else (None, the problem). The file is read once,
    so there is no window between the check and the use of the bytes."""
    d = corpus_io.sha256_file(path, keep_data=True)
    problem = checksum_problem(Path(path).name, entry, FileEntry(d.sha256, d.n_bytes))
    return (None, problem) if problem else (d.data or b"", None)


def read_verified(path: str | os.PathLike, entry: FileEntry) -> bytes:
    """A file's bytes, only if they match its manifest entry (else CorpusError naming the file)."""
    data, problem = read_checked(path, entry)
    if data is None:
        raise CorpusError(str(path), f"{problem}; refusing to load")
    return data


def read_current(index_dir: str | os.PathLike) -> str | None:
    """The live version's name, or None for an index directory that has none yet."""
    p = Path(index_dir) / CURRENT
    try:
        name = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, OSError) as e:
        raise CorpusError(str(p), f"unreadable version pointer ({e}); rebuild or point CURRENT at a version "
                                  "under versions/") from None
    if not name or "/" in name or "\\" in name or name.startswith(".") or not name.isprintable() or len(name) > 200:
        raise CorpusError(str(p), f"bad version pointer {name!r}")
    return name


def set_current(index_dir: str | os.PathLike, version: str) -> None:
    """Point CURRENT at `version` atomically (temporary file, fsync, rename)."""
    atomic_write_text(Path(index_dir) / CURRENT, version + "\n")


def version_dir(index_dir: str | os.PathLike, version: str) -> Path:
    return Path(index_dir) / VERSIONS / version
