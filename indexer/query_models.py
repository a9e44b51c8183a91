"""The query models of an index version as ONNX graphs: a derived artefact beside the version's files,
described by its sidecar `query_models.json`, read without torch.

    versions/<v>/query_models.json          what was exported from what, sha256 of every graph
    versions/<v>/query_text.onnx            the retrieval model's text projection (sentence -> query vector)
    versions/<v>/query_localizer-<sha>.onnx the localizer's query-dependent part (one localizer checkpoint)
    $ENGINE_HOME/onnx/bert-<sha>.onnx        the BERT text encoder (shared by every index that uses it)

The sidecar is written last (atomically), after the graphs; a version without it, or whose sidecar does not
match the version's retrieval model, the localizer asked for or the text encoder's files, has no usable
query models (`QueryModelsUnavailable`; the torch path is used and exports them again). A graph whose
bytes do not match the sidecar is an `IndexFileError` naming it (`engine index verify` reports it too).
The manifest does not list these files: they are regenerated when the models they come from change, while
a version's manifest and files never change.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.corpus import io as corpus_io
from engine.corpus.types import IndexFileError
from indexer.manifest import FileEntry

QUERY_MODELS = "query_models.json"
TEXT_GRAPH = "query_text.onnx"
KIND = "query-models"
TEXT_ENCODER_KEYS = ("dir", "graph", "entry", "sources", "sentence_max_length", "max_positions", "dim", "embed_dim")
FORMAT = 1


class QueryModelsUnavailable(IndexFileError):
    """The version has no query models that fit (none exported, or exported from other models)."""


def localizer_graph_name(sha256: str) -> str:
    return f"query_localizer-{sha256[:16]}.onnx"


@dataclass
class SourceFile:
    """A file a graph was exported from: its sha256 and size, and the mtime and inode it had then (a file
    whose stat still matches is not hashed again)."""

    sha256: str
    bytes: int
    mtime_ns: int = 0
    inode: int = 0

    @classmethod
    def of(cls, path: str | os.PathLike) -> SourceFile:
        st = os.stat(path)
        d = corpus_io.sha256_file(path)
        return cls(d.sha256, d.n_bytes, st.st_mtime_ns, st.st_ino)

    def matches(self, path: str | os.PathLike) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_size != self.bytes:
            return False
        if st.st_mtime_ns == self.mtime_ns and st.st_ino == self.inode:
            return True
        return corpus_io.sha256_file(path).sha256 == self.sha256


@dataclass
class QueryModels:
    """The sidecar. `text_encoder`: {"dir", "graph" (absolute path), "entry" (sha256, bytes), "sources"
    {name: SourceFile}, "sentence_max_length", checks}; `localizer`: {"graph" (file name), "spec"
    (OnnxLocalizerSpec), "max_abs_diff"}; `sources`: files whose change makes the artefact stale for a
    caller that knows them (the built-in index's shipped checkpoints)."""

    model_fingerprint: str
    files: dict[str, FileEntry]
    text_encoder: dict[str, Any]
    localizer: dict[str, Any]
    sources: dict[str, SourceFile] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created_utc: str = ""
    kind: str = KIND
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> QueryModels:
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise IndexFileError(where, "not a query models sidecar")
        if d.get("format") != FORMAT:
            raise QueryModelsUnavailable(where, f"query models format {d.get('format')!r}; this engine reads {FORMAT}")
        try:
            d = dict(d)
            d["files"] = {k: FileEntry(**v) for k, v in d["files"].items()}
            d["sources"] = {k: SourceFile(**v) for k, v in d.get("sources", {}).items()}
            te = dict(d["text_encoder"])
            missing = [k for k in TEXT_ENCODER_KEYS if k not in te] + \
                [f"localizer.{k}" for k in ("graph", "spec") if k not in d["localizer"]]
            if missing:
                raise KeyError(", ".join(missing))
            te["entry"] = FileEntry(**te["entry"])
            te["sources"] = {k: SourceFile(**v) for k, v in te["sources"].items()}
            d["text_encoder"] = te
            return cls(**d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IndexFileError(where, f"malformed query models sidecar: {e}") from e

    def write(self, vdir: Path) -> None:
        corpus_io.atomic_write_text(Path(vdir) / QUERY_MODELS, json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def read(cls, vdir: Path) -> QueryModels | None:
        """The version's sidecar, or None when it has none."""
        path = Path(vdir) / QUERY_MODELS
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise IndexFileError(str(path), f"unreadable query models sidecar: {e}") from e
        return cls.from_dict(d, str(path))

    def graph_paths(self, vdir: Path) -> dict[str, tuple[Path, FileEntry]]:
        """Every graph the sidecar names: {label: (path, entry)}."""
        out = {name: (Path(vdir) / name, entry) for name, entry in self.files.items()}
        out["text encoder"] = (Path(self.text_encoder["graph"]), self.text_encoder["entry"])
        return out


def check_query_models(vdir: Path) -> list[str]:
    """Problems of a version's query models (verify): bad names, missing graphs, sha256 mismatches."""
    try:
        qm = QueryModels.read(vdir)
    except IndexFileError as e:
        return [str(e)]
    if qm is None:
        return []
    problems = []
    for name in qm.files:
        if "/" in name or name.startswith("."):
            problems.append(f"{QUERY_MODELS}: bad file name {name!r}")
    for label, (path, entry) in qm.graph_paths(vdir).items():
        if not path.is_file():
            problems.append(f"{path}: missing (query models; delete {QUERY_MODELS} to re-export)")
            continue
        problem = _mismatch(entry, FileEntry(*_digest(path)))
        if problem:
            problems.append(f"{path}: {problem} (query models; delete {QUERY_MODELS} to re-export)")
    return problems


def _digest(path: Path) -> tuple[str, int]:
    d = corpus_io.sha256_file(path)
    return d.sha256, d.n_bytes


def _mismatch(entry: FileEntry, got: FileEntry) -> str | None:
    if got == entry:
        return None
    return (f"checksum mismatch ({QUERY_MODELS} sha256 {entry.sha256[:12]}…, {entry.bytes} bytes; file "
            f"{got.sha256[:12]}…, {got.bytes} bytes)")


def read_graph(path: Path, entry: FileEntry) -> bytes:
    """A graph's bytes, only when they match the sidecar (else IndexFileError naming the file)."""
    try:
        d = corpus_io.sha256_file(path, keep_data=True)
    except OSError as e:
        raise IndexFileError(str(path), f"cannot read the ONNX graph: {e.strerror or e}; delete "
                                        f"{QUERY_MODELS} beside the index version to re-export") from e
    problem = _mismatch(entry, FileEntry(d.sha256, d.n_bytes))
    if problem:
        raise IndexFileError(str(path), f"{problem}; refusing to load the ONNX graph (delete {QUERY_MODELS} "
                                        "beside the index version, or run one search with --backend torch, to re-export)")
    return d.data or b""


class OnnxRetrieval:
    """`RetrievalModel.encode_text` without torch: a sentence encoder (`sentences(texts, max_length)`, e.g.
    engine.corpus.bert_onnx.OnnxBert) and the text projection graph (sentence -> unit query vector)."""

    def __init__(self, session, sentence_encoder, max_length: int, embed_dim: int):
        self.session = session
        self.sentence_encoder = sentence_encoder
        self.max_length = max_length
        self.embed_dim = embed_dim

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """(len(texts), embed_dim) float32 unit rows."""
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        s = self.sentence_encoder.sentences(list(texts), self.max_length)
        (q,) = self.session.run(["query"], {"sentence": s.astype(np.float32)})
        return np.asarray(q, dtype=np.float32)
