"""The chunk index: named, resumable build stages into versioned, self-describing index directories.

A version directory ``INDEX_DIR/versions/<v>/`` holds::

    build.json              what this version is a build of (op, base version, config, model, motion list);
                            an unfinished build with the same build.json is resumed, not restarted
    model.pt                the retrieval model the chunks were embedded with (queries must use it)
    chunks.sqlite           tables `motions` and `chunks` (chunk_id = FAISS id = SQL key)
    embeddings.arrow        chunk_id, motion_id, vector (unit float32), sorted by chunk_id
    index.faiss             FAISS IndexIDMap2 over Flat | IVF-Flat | HNSW | IVF-PQ, inner product
    motion_features.arrow   optional: per-motion features from a caller's `motion_feature_fn`
    manifest.json           written last: config, model fingerprint, dims, metric, counts, sha256 of
                            every other file, recall of the FAISS index against exact search

Stages (each skipped on a re-run when its done marker exists): `plan` -> `chunk` -> `embed` ->
`features` (only with a motion_feature_fn) -> `write`, then `publish` switches ``INDEX_DIR/CURRENT``
atomically. Until then the previous version stays live and verifies clean, wherever a build is killed.

The embed stage embeds its unfinished blocks in this process, or hands them to an `EmbedBackend` such
as `indexer.ray_backend.RayEmbedBackend` (Ray Data workers). A backend only computes the vectors; the
stage writes each block file, so resuming, the files and the published index are the same whichever
backend embedded them (the manifest's `build.embed_backend` names the one of the run that finished it).

`add_to_index` / `remove_from_index` / `sync_index` make a new version from the live one, re-using the
embeddings of unchanged motions; chunk ids are deterministic (see indexer/chunks.py), so the result
equals a full rebuild.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engine.corpus.types import Chunk, CorpusError
from indexer.chunks import (
    ChunkDB,
    ChunkSpan,
    ChunkTable,
    IndexedMotion,
    chunk_window,
    plan_chunks,
)
from indexer.manifest import (
    MANIFEST,
    VERSIONS,
    FileEntry,
    Manifest,
    RecallReport,
    atomic_write_text,
    fsync_dir,
    fsync_file,
    read_current,
    set_current,
    sha256_bytes,
    sha256_file,
    version_dir,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
MotionFeatureFn = Callable[[np.ndarray], np.ndarray]

KINDS = ("flat", "ivf", "hnsw", "ivfpq")
STAGES = ("plan", "chunk", "embed", "features", "write")
BUILD_JSON = "build.json"
MODEL_FILE = "model.pt"
CHUNKS_DB = "chunks.sqlite"
EMBEDDINGS = "embeddings.arrow"
FAISS_FILE = "index.faiss"
MOTION_FEATURES = "motion_features.arrow"
STAGE_DIR = "stages"
EMBED_DIR = "embed"
# Batch searches below this many queries skip FAISS's BLAS path (faiss-cpu 1.15 default: 128,000);
# the BLAS path gives the same results and is several times faster from a few queries up.
BLAS_THRESHOLD = 4


@dataclass
class IndexConfig:
    """How an index is built (stored in its manifest)."""

    kind: str = "flat"  # flat | ivf | hnsw | ivfpq
    window_s: float = 10.0
    stride_s: float = 1.0
    batch_size: int = 64  # chunks per encoder batch
    block_chunks: int = 4096  # chunks per embed block (the resume granularity of the embed stage)
    dtype: str = "fp32"  # fp32 | bf16 (autocast) for the chunk encoder
    split: str | None = None  # index only this split (None: every motion)
    source: str | None = None  # index only this source (None: every source)
    nlist: int | None = None  # IVF lists (None: about 4 sqrt(N), at most N / 39)
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    pq_m: int | None = None  # PQ sub-quantizers (None: dim / 8, a divisor of dim)
    pq_nbits: int = 8
    train_max: int = 200_000  # vectors used to train IVF / PQ
    recall_k: int = 10
    recall_queries: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype {self.dtype!r}: choose fp32 or bf16")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def chunking(self) -> dict[str, Any]:
        """The settings embeddings depend on (an incremental build must share them with its base)."""
        return {"window_s": self.window_s, "stride_s": self.stride_s, "dtype": self.dtype}


@dataclass
class BuildReport:
    """What a build, rebuild, add or remove did."""

    index_dir: str
    version: str
    op: str  # full | add | remove | sync
    n_motions: int
    n_chunks: int
    n_embedded: int
    n_reused: int
    seconds: float
    embed_seconds: float
    recall: RecallReport | None
    resumed: bool = False
    up_to_date: bool = False
    stages_run: list[str] = field(default_factory=list)

    @property
    def chunks_per_s(self) -> float:
        return self.n_embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["chunks_per_s"] = round(self.chunks_per_s, 2)
        return d


@dataclass
class VerifyReport:
    """Result of `verify`: `ok` when `problems` is empty."""

    index_dir: str
    version: str | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_checked: int = 0
    n_motions: int = 0
    n_chunks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d


@dataclass
class ChunkHits:
    """FAISS search results: (Q, n) scores (cosine) and chunk ids, best first; id -1 pads missing hits.
    Unpacks like FAISS's tuple: `scores, chunk_ids = index.search(q, n)`."""

    scores: np.ndarray
    chunk_ids: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.scores, self.chunk_ids))


@dataclass
class MotionHits:
    """One query's motions ranked by r = their best chunk's similarity, with that chunk."""

    motion_ids: np.ndarray  # (M,) int64
    r: np.ndarray  # (M,) float32, descending
    chunk_ids: np.ndarray  # (M,) int64, the best chunk of each motion


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


# ---------------------------------------------------------------------------------------------- arrow
@dataclass
class Embeddings:
    chunk_ids: np.ndarray  # (N,) int64
    motion_ids: np.ndarray  # (N,) int64
    vectors: np.ndarray  # (N, d) float32


def _write_arrow(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_embeddings(path: Path, emb: Embeddings) -> None:
    d = emb.vectors.shape[1]
    vec = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(emb.vectors, np.float32).reshape(-1)), d)
    _write_arrow(path, pa.table({"chunk_id": pa.array(emb.chunk_ids, pa.int64()),
                                 "motion_id": pa.array(emb.motion_ids, pa.int64()), "vector": vec}))


def read_embeddings(path: Path, copy: bool = False) -> Embeddings:
    """Memory-mapped (read-only views) unless copy=True."""
    try:
        t = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        vec = t.column("vector").combine_chunks()
        d = vec.type.list_size
        vectors = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)  # (N, d)
        out = Embeddings(t.column("chunk_id").to_numpy(), t.column("motion_id").to_numpy(), vectors)
    except (OSError, pa.ArrowException, KeyError, AttributeError) as e:
        raise CorpusError(str(path), f"unreadable embeddings file: {e}") from e
    if copy:
        out = Embeddings(np.array(out.chunk_ids), np.array(out.motion_ids), np.array(out.vectors))
    return out


def write_motion_features(path: Path, feats: dict[int, np.ndarray]) -> None:
    ids = sorted(feats)
    arrays = [np.ascontiguousarray(feats[i], np.float32) for i in ids]
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    values = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.float32)
    _write_arrow(path, pa.table({
        "motion_id": pa.array(ids, pa.int64()),
        "shape": pa.array([list(a.shape) for a in arrays], pa.list_(pa.int64())),
        "values": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32())),
    }))


def read_motion_features(path: Path) -> dict[int, np.ndarray]:
    try:
        t = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        ids = t.column("motion_id").to_pylist()
        shapes = t.column("shape").to_pylist()
        values = t.column("values").combine_chunks()
        return {int(i): values[k].values.to_numpy(zero_copy_only=False).reshape(shapes[k])
                for k, i in enumerate(ids)}
    except (OSError, pa.ArrowException, KeyError, ValueError) as e:
        raise CorpusError(str(path), f"unreadable motion features file: {e}") from e


# ---------------------------------------------------------------------------------------------- faiss
def _faiss():
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    return faiss


def _nlist(n: int, config: IndexConfig) -> int:
    if config.nlist:
        return max(1, min(config.nlist, n))
    return int(max(1, min(round(4 * np.sqrt(n)), n // 39)))


def _pq_m(d: int, config: IndexConfig) -> int:
    target = config.pq_m or max(1, d // 8)
    divisors = [m for m in range(1, d + 1) if d % m == 0 and m <= target]
    return divisors[-1]


def faiss_factory_string(n: int, d: int, config: IndexConfig) -> str:
    """The `faiss.index_factory` description of the configured index over n vectors of width d."""
    if config.kind == "flat":
        return "IDMap2,Flat"
    if config.kind == "ivf":
        return f"IDMap2,IVF{_nlist(n, config)},Flat"
    if config.kind == "hnsw":
        return f"IDMap2,HNSW{config.hnsw_m}"
    nbits = int(max(1, min(config.pq_nbits, np.floor(np.log2(max(n, 2))))))
    return f"IDMap2,IVF{_nlist(n, config)},PQ{_pq_m(d, config)}x{nbits}"


def set_search_params(index, kind: str, nprobe: int | None = None, ef_search: int | None = None) -> None:
    faiss = _faiss()
    ps = faiss.ParameterSpace()
    if kind in ("ivf", "ivfpq") and nprobe:
        ps.set_index_parameter(index, "nprobe", int(nprobe))
    if kind == "hnsw" and ef_search:
        ps.set_index_parameter(index, "efSearch", int(ef_search))


def make_faiss_index(vectors: np.ndarray, ids: np.ndarray, config: IndexConfig):
    """Build the configured IndexIDMap2 (inner product) over `vectors` with FAISS ids `ids`."""
    faiss = _faiss()
    n, d = vectors.shape
    desc = faiss_factory_string(n, d, config)
    index = faiss.index_factory(d, desc, faiss.METRIC_INNER_PRODUCT)  # IndexIDMap2 (keep this reference)
    if config.kind in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = int(config.seed)
    if config.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = int(config.ef_construction)
    if not index.is_trained:
        if n > config.train_max:
            rng = np.random.default_rng(config.seed)
            sample = vectors[np.sort(rng.choice(n, config.train_max, replace=False))]
        else:
            sample = vectors
        index.train(np.ascontiguousarray(sample, np.float32))
    index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))
    set_search_params(index, config.kind, config.nprobe, config.ef_search)
    log.info("faiss %s: %d vectors of dim %d", desc, n, d)
    return index


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force numpy inner-product top-k: (scores, row positions), best first."""
    sim = queries @ vectors.T  # (Q, N)
    k = min(k, vectors.shape[0])
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    part_s = np.take_along_axis(sim, part, 1)
    order = np.argsort(-part_s, axis=1, kind="stable")
    return np.take_along_axis(part_s, order, 1), np.take_along_axis(part, order, 1)


def sample_queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Query-like probes: the normalised mean of two random chunk vectors plus a little noise."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(vectors), n)
    b = rng.integers(0, len(vectors), n)
    q = vectors[a] + vectors[b] + rng.normal(0, 0.05, (n, vectors.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def measure_recall(index, vectors: np.ndarray, ids: np.ndarray, k: int, n_queries: int, seed: int) -> RecallReport:
    """Recall@k of `index` against exact search on sampled probes: |approx ∩ exact| / k, averaged."""
    k = min(k, len(vectors))
    q = sample_queries(vectors, n_queries, seed)
    t0 = time.perf_counter()
    _, exact_pos = exact_topk(q, vectors, k)
    t1 = time.perf_counter()
    _, got = index.search(q, k)
    t2 = time.perf_counter()
    exact = ids[exact_pos]
    hits = [len(set(got[i].tolist()) & set(exact[i].tolist())) for i in range(len(q))]
    return RecallReport(k=k, n_queries=len(q), recall=float(np.mean(hits) / k), seconds_exact=t1 - t0,
                        seconds_index=t2 - t1)


# ---------------------------------------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _motion_list_sha(motions: list[IndexedMotion]) -> str:
    rows = [[m.motion_id, m.n_frames, round(float(m.fps), 6)] for m in motions]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


@contextmanager
def _locked(index_dir: Path):
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


def _open_store(corpus):
    from engine.corpus.store import CorpusStore

    if corpus is None:
        return None
    if isinstance(corpus, CorpusStore):
        return corpus
    return CorpusStore.open(corpus, create=False)


def _corpus_motions(store, config: IndexConfig, motion_ids: Iterable[int] | None = None) -> list[IndexedMotion]:
    rows = store.motion_table()
    if motion_ids is not None:
        wanted = {int(i) for i in motion_ids}
        known = {int(r["motion_id"]) for r in rows}
        missing = sorted(wanted - known)
        if missing:
            raise CorpusError(f"corpus {store.dir}", f"no motions with ids {missing[:10]}")
        rows = [r for r in rows if int(r["motion_id"]) in wanted]
    else:
        rows = [r for r in rows if (config.split is None or r["split"] == config.split)
                and (config.source is None or r["source"] == config.source)]
    return [IndexedMotion(int(r["motion_id"]), r["name"], r["source"], float(r["fps"]), int(r["n_frames"]),
                          float(r["duration_s"]), r["split"]) for r in rows]


def _corpus_info(store) -> dict[str, Any]:
    default = f"sqlite:///{(Path(store.dir) / 'corpus.sqlite').resolve()}"
    info: dict[str, Any] = {"dir": str(Path(store.dir).resolve())}
    if store.url != default:
        info["url"] = store.url
    return info


def _versions(index_dir: Path) -> list[str]:
    vroot = index_dir / VERSIONS
    if not vroot.is_dir():
        return []
    return sorted((p.name for p in vroot.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def _next_version(index_dir: Path) -> str:
    vs = _versions(index_dir)
    return f"{(int(vs[-1]) + 1) if vs else 1:06d}"


def _model_from(model, device: str | None):
    from indexer.model import RetrievalModel, load_retrieval

    if isinstance(model, RetrievalModel):
        return model.eval()
    if model is None:
        raise ValueError("a retrieval model (RetrievalModel or run directory) is needed to build an index")
    return load_retrieval(model, device=device)


# ---------------------------------------------------------------------------------------------- embed backends
@dataclass
class EmbedJob:
    """The unfinished blocks of an embed stage, and everything a worker needs to embed them.

    In-process backends use `model` and `store`; out-of-process workers load `model_path` (the version's
    model.pt, checked against `model_fingerprint`) and open the corpus from `corpus` ({"dir", "url"?}),
    so both must sit on storage the workers see."""

    blocks: list[tuple[int, list[ChunkSpan]]]  # (block index, its chunks in chunk_id order)
    motion_fps: dict[int, float]
    model: Any  # RetrievalModel
    model_path: Path
    model_fingerprint: str
    store: Any  # CorpusStore
    corpus: dict[str, Any]
    batch_size: int  # chunks per encoder batch
    dtype: str  # fp32 | bf16

    @property
    def n_chunks(self) -> int:
        return sum(len(block) for _, block in self.blocks)


class EmbedBackend:
    """Another way for the embed stage to compute vectors (the default, `embed_backend=None`, embeds block
    after block in this process): `embed_blocks(job)` yields (block index, (n, embed_dim) float32 unit rows
    in the block's chunk order) for every block of `job`, in any order, as each is ready. It writes
    nothing; the stage writes each block as it arrives, so a killed build keeps the finished ones."""

    name = "base"

    def embed_blocks(self, job: EmbedJob) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError


def embed_chunks(model, spans: Iterable[ChunkSpan], motion_fps: dict[int, float],
                 features_of: Callable[[int], np.ndarray], batch_size: int, dtype: str) -> np.ndarray:
    """(n, embed_dim) float32 vectors of chunks: their feature windows at the model's fps, encoded."""
    windows = [chunk_window(features_of(c.motion_id), c, motion_fps[c.motion_id], model.config.fps) for c in spans]
    return model.encode_motion(windows, batch_size=batch_size, dtype=dtype)


def feature_reader(store) -> Callable[[int], np.ndarray]:
    """motion_id -> features, keeping the last motion's (chunks arrive grouped by motion)."""
    cache: dict[int, np.ndarray] = {}

    def get(motion_id: int) -> np.ndarray:
        if motion_id not in cache:
            cache.clear()
            cache[motion_id] = store.features(motion_id)
        return cache[motion_id]
    return get


# ---------------------------------------------------------------------------------------------- build
@dataclass
class _Build:
    """Everything the stages of one version build need."""

    index_dir: Path
    vdir: Path
    version: str
    op: str
    spec: dict[str, Any]
    config: IndexConfig
    model: Any  # RetrievalModel
    store: Any  # CorpusStore | None (remove needs none)
    motions: list[IndexedMotion]
    reuse: set[int]  # motions whose embeddings (and features) come from the base version
    base_vdir: Path | None
    base_manifest: Manifest | None
    corpus_info: dict[str, Any]
    motion_feature_fn: MotionFeatureFn | None
    motion_feature_tag: str | None
    progress: ProgressFn | None
    embed_backend: EmbedBackend | None = None  # None: embed in this process
    stages_run: list[str] = field(default_factory=list)
    n_embedded: int = 0
    embed_seconds: float = 0.0
    recall: RecallReport | None = None

    def done(self, stage: str) -> bool:
        return (self.vdir / STAGE_DIR / f"{stage}.done").exists()

    def mark(self, stage: str) -> None:
        atomic_write_text(self.vdir / STAGE_DIR / f"{stage}.done", _now() + "\n")

    def tick(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def __post_init__(self) -> None:
        self.spans: list[ChunkSpan] = []
        for m in self.motions:  # motions sorted by id, so spans are sorted by chunk_id
            self.spans.extend(plan_chunks(m.motion_id, m.n_frames, m.fps, self.config.window_s,
                                          self.config.stride_s))


def stage_plan(b: _Build) -> None:
    """Writes `stages/plan.json` (the motions to index and which re-use the base version) and `model.pt`."""
    if b.base_vdir is not None and b.base_manifest is not None \
            and b.base_manifest.model_fingerprint == b.spec["model"]:
        _link_or_copy(b.base_vdir / MODEL_FILE, b.vdir / MODEL_FILE)
    else:
        b.model.save(b.vdir / MODEL_FILE)
    plan = {"motions": [dataclasses.asdict(m) for m in b.motions], "reuse": sorted(b.reuse)}
    atomic_write_text(b.vdir / STAGE_DIR / "plan.json", json.dumps(plan))


def stage_chunk(b: _Build) -> None:
    """Writes `chunks.sqlite`: the `motions` table and one `chunks` row per window (chunk_id = FAISS id)."""
    path = b.vdir / CHUNKS_DB
    for p in (path, path.with_name(path.name + "-journal")):
        p.unlink(missing_ok=True)  # a previous attempt killed mid-write
    spans = b.spans
    with ChunkDB(path, read_only=False) as db:
        db.write(b.motions, spans)
    fsync_file(path)
    b.tick("chunk", len(spans), len(spans))


def _blocks(spans: list[ChunkSpan], size: int) -> Iterator[tuple[int, list[ChunkSpan]]]:
    """Fixed blocks of chunks in chunk_id order (deterministic, so a resumed build finds its blocks)."""
    for i in range(0, len(spans), size):
        yield i // size, spans[i:i + size]


def _embed_block(b: _Build, spans: list[ChunkSpan], features_of: Callable[[int], np.ndarray]) -> np.ndarray:
    return embed_chunks(b.model, spans, {m.motion_id: m.fps for m in b.motions}, features_of,
                        b.config.batch_size, b.config.dtype)


def _local_blocks(b: _Build, todo: list[tuple[int, list[ChunkSpan]]]) -> Iterator[tuple[int, np.ndarray]]:
    features_of = feature_reader(b.store)
    for k, block in todo:
        yield k, _embed_block(b, block, features_of)


def stage_embed(b: _Build) -> None:
    """Writes `embed/reused.arrow` (rows of unchanged motions copied from the base version) and
    `embed/block-NNNNNN.arrow`, one per block of new chunks, each renamed into place when complete
    (a killed build re-embeds only the unfinished blocks, whichever backend embeds them)."""
    edir = b.vdir / EMBED_DIR
    edir.mkdir(exist_ok=True)
    spans = b.spans
    reused_spans = [c for c in spans if c.motion_id in b.reuse]
    new_spans = [c for c in spans if c.motion_id not in b.reuse]
    if reused_spans and not (edir / "reused.arrow").exists():
        base = read_embeddings(b.base_vdir / EMBEDDINGS)
        mask = np.isin(base.motion_ids, np.array(sorted(b.reuse), np.int64))
        ids = base.chunk_ids[mask]
        want = np.array(sorted(c.chunk_id for c in reused_spans), np.int64)
        if not np.array_equal(np.sort(ids), want):
            raise CorpusError(str(b.base_vdir / EMBEDDINGS), "base chunks differ from the planned chunks of "
                                                              "unchanged motions (rebuild the index)")
        write_embeddings(edir / "reused.arrow", Embeddings(ids, base.motion_ids[mask], base.vectors[mask]))
    total = len(new_spans)
    if total and b.store is None:
        raise CorpusError("index build", "new chunks to embed but no corpus given")
    todo = [(k, block) for k, block in _blocks(new_spans, b.config.block_chunks)
            if not (edir / f"block-{k:06d}.arrow").exists()]
    done = total - sum(len(block) for _, block in todo)
    b.tick("embed", done, total)
    if not todo:
        return
    blocks = dict(todo)
    backend = b.embed_backend
    name = backend.name if backend is not None else "local"
    log.info("%s: embedding %d chunks in %d blocks (%s backend)", b.version, total - done, len(todo), name)
    if backend is None:
        pieces = _local_blocks(b, todo)
    else:
        pieces = backend.embed_blocks(EmbedJob(
            blocks=todo, motion_fps={m.motion_id: m.fps for m in b.motions}, model=b.model,
            model_path=b.vdir / MODEL_FILE, model_fingerprint=b.spec["model"], store=b.store,
            corpus=_corpus_info(b.store), batch_size=b.config.batch_size, dtype=b.config.dtype))
    try:
        _write_blocks(b, edir, pieces, blocks, name, done, total)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # a generator backend releases its workers even when a write fails


def _write_blocks(b: _Build, edir: Path, pieces: Iterable[tuple[int, np.ndarray]],
                  blocks: dict[int, list[ChunkSpan]], name: str, done: int, total: int) -> None:
    t0 = time.perf_counter()
    for k, vecs in pieces:
        b.embed_seconds += time.perf_counter() - t0  # embedding time only, not block writes
        block = blocks.pop(k, None)
        if block is None:
            raise RuntimeError(f"{name} embed backend: unexpected or repeated block {k}")
        if vecs.shape != (len(block), b.model.config.embed_dim):
            raise RuntimeError(f"{name} embed backend: block {k} came back with shape {vecs.shape}, "
                               f"expected {(len(block), b.model.config.embed_dim)}")
        write_embeddings(edir / f"block-{k:06d}.arrow",
                         Embeddings(np.array([c.chunk_id for c in block], np.int64),
                                    np.array([c.motion_id for c in block], np.int64), vecs))
        b.n_embedded += len(block)
        done += len(block)
        b.tick("embed", done, total)
        t0 = time.perf_counter()
    if blocks:
        raise RuntimeError(f"{name} embed backend returned no vectors for blocks {sorted(blocks)[:10]}")


def stage_features(b: _Build) -> None:
    """Writes `motion_features.arrow`: motion_feature_fn(features) per motion, re-using the base's rows of
    unchanged motions when the base was built with the same motion_feature_tag."""
    base: dict[int, np.ndarray] = {}
    if b.base_vdir is not None and b.base_manifest is not None and \
            b.base_manifest.motion_feature_tag == b.motion_feature_tag and (b.base_vdir / MOTION_FEATURES).exists():
        base = read_motion_features(b.base_vdir / MOTION_FEATURES)
    out: dict[int, np.ndarray] = {}
    for i, m in enumerate(b.motions):
        if m.motion_id in b.reuse and m.motion_id in base:
            out[m.motion_id] = np.array(base[m.motion_id])
        else:
            if b.store is None or b.motion_feature_fn is None:
                raise CorpusError(f"motion {m.motion_id}", "motion features needed but no corpus / motion_feature_fn")
            f = np.asarray(b.motion_feature_fn(np.asarray(b.store.features(m.motion_id))), np.float32)
            if not np.isfinite(f).all():
                raise CorpusError(f"motion {m.motion_id} ({m.name})", "motion_feature_fn returned NaN/inf")
            out[m.motion_id] = f
        b.tick("features", i + 1, len(b.motions))
    write_motion_features(b.vdir / MOTION_FEATURES, out)


def stage_write(b: _Build) -> None:
    """Writes `embeddings.arrow` (all chunks, sorted by chunk_id), `index.faiss`, then removes `embed/` and
    `stages/` and writes `manifest.json` last (its presence marks the version complete)."""
    edir = b.vdir / EMBED_DIR
    parts = [read_embeddings(p, copy=True) for p in sorted(edir.glob("*.arrow"))] if edir.is_dir() else []
    if not parts:
        raise CorpusError(str(b.vdir), "no embedded chunks to write")
    emb = Embeddings(np.concatenate([p.chunk_ids for p in parts]), np.concatenate([p.motion_ids for p in parts]),
                     np.concatenate([p.vectors for p in parts]))
    order = np.argsort(emb.chunk_ids, kind="stable")
    emb = Embeddings(emb.chunk_ids[order], emb.motion_ids[order], np.ascontiguousarray(emb.vectors[order]))
    with ChunkDB(b.vdir / CHUNKS_DB) as db:
        table = db.table()
    if not np.array_equal(table.chunk_id, emb.chunk_ids):
        raise CorpusError(str(b.vdir), "embedded chunks do not match the chunk table (stale embed blocks)")
    write_embeddings(b.vdir / EMBEDDINGS, emb)
    index = make_faiss_index(emb.vectors, emb.chunk_ids, b.config)
    b.recall = measure_recall(index, emb.vectors, emb.chunk_ids, b.config.recall_k, b.config.recall_queries,
                              b.config.seed)
    log.info("%s index recall@%d vs exact = %.4f (%d probes)", b.config.kind, b.recall.k, b.recall.recall,
             b.recall.n_queries)
    faiss = _faiss()
    data = faiss.serialize_index(index).tobytes()
    path = b.vdir / FAISS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    fsync_file(tmp)
    os.replace(tmp, path)
    files = {p.name: sha256_file(p) for p in sorted(b.vdir.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = Manifest(
        version=b.version, config=b.config.to_dict(), model_fingerprint=b.spec["model"],
        dim=int(emb.vectors.shape[1]), n_motions=len(b.motions), n_chunks=len(emb.chunk_ids), files=files,
        faiss_kind=b.config.kind, faiss_class=type(faiss.downcast_index(index.index)).__name__,
        corpus=b.corpus_info, recall=b.recall, motion_feature_tag=b.motion_feature_tag, created_utc=_now(),
        build={"op": b.op, "base_version": b.spec["base_version"], "motion_list_sha": b.spec["motions"],
               "embedded_chunks": sum(c.motion_id not in b.reuse for c in b.spans),
               "reused_chunks": sum(c.motion_id in b.reuse for c in b.spans), "reused_motions": len(b.reuse),
               "embed_backend": b.embed_backend.name if b.embed_backend is not None else "local"},
    )
    manifest.write(b.vdir)
    fsync_dir(b.vdir)
    _cleanup(b.vdir)


def _cleanup(vdir: Path) -> None:
    """Remove the build's scratch folders (after the manifest: a kill in between only leaves litter)."""
    shutil.rmtree(vdir / EMBED_DIR, ignore_errors=True)
    shutil.rmtree(vdir / STAGE_DIR, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        fsync_file(dst)


def _run_build(index_dir: Path, op: str, config: IndexConfig, model, store, motions: list[IndexedMotion],
               reuse: set[int], base_version: str | None, corpus_info: dict[str, Any],
               motion_feature_fn: MotionFeatureFn | None, motion_feature_tag: str | None,
               progress: ProgressFn | None, force: bool, embed_backend: EmbedBackend | None = None) -> BuildReport:
    """Plan-to-publish of one version; resumes a matching unfinished build. Caller holds the lock."""
    t0 = time.perf_counter()
    if not motions:
        raise CorpusError(str(index_dir), "no motions to index")
    if motion_feature_fn is not None and motion_feature_tag is None:
        motion_feature_tag = getattr(motion_feature_fn, "__qualname__", "motion_features")
    fingerprint = model.fingerprint()
    spec = {"op": op, "base_version": base_version, "config": config.to_dict(), "model": fingerprint,
            "motions": _motion_list_sha(motions), "motion_feature_tag": motion_feature_tag}
    current = read_current(index_dir)

    # Up to date: the live version already is this build's result.
    if current is not None and not force:
        try:
            cm = Manifest.read(version_dir(index_dir, current))
        except (FileNotFoundError, CorpusError):
            cm = None
        if cm is not None and cm.config == spec["config"] and cm.model_fingerprint == fingerprint \
                and cm.build.get("motion_list_sha") == spec["motions"] and cm.motion_feature_tag == motion_feature_tag:
            log.info("%s: version %s is up to date", index_dir, current)
            return BuildReport(str(index_dir), current, op, cm.n_motions, cm.n_chunks, 0, 0,
                               time.perf_counter() - t0, 0.0, cm.recall, up_to_date=True)

    # Resume an unfinished build of the same spec; clear unfinished builds of other specs.
    vdir, resumed = None, False
    for v in reversed(_versions(index_dir)):
        d = version_dir(index_dir, v)
        try:
            same = json.loads((d / BUILD_JSON).read_text()) == spec
        except (OSError, json.JSONDecodeError):
            same = False
        complete = (d / MANIFEST).exists()
        if same and (current is None or int(v) > int(current)) and vdir is None:
            vdir, resumed = d, True
        elif not complete and v != current:
            log.info("%s: removing unfinished build %s of another spec", index_dir, v)
            shutil.rmtree(d, ignore_errors=True)
    if vdir is None:
        vdir = version_dir(index_dir, _next_version(index_dir))
        (vdir / STAGE_DIR).mkdir(parents=True)
        atomic_write_text(vdir / BUILD_JSON, json.dumps(spec, sort_keys=True))
    base_vdir = version_dir(index_dir, base_version) if base_version else None
    base_manifest = Manifest.read(base_vdir) if base_vdir else None
    b = _Build(index_dir, vdir, vdir.name, op, spec, config, model, store, motions, reuse, base_vdir,
               base_manifest, corpus_info, motion_feature_fn, motion_feature_tag, progress, embed_backend)
    if resumed:
        log.info("%s: resuming unfinished build %s", index_dir, b.version)
    if not (vdir / MANIFEST).exists():
        (vdir / STAGE_DIR).mkdir(exist_ok=True)
        stages: list[tuple[str, Callable[[_Build], None]]] = [("plan", stage_plan), ("chunk", stage_chunk),
                                                             ("embed", stage_embed)]
        if motion_feature_fn is not None or (base_manifest is not None and base_manifest.motion_feature_tag
                                             and motion_feature_tag):
            stages.append(("features", stage_features))
        for name, fn in stages:
            if b.done(name):
                continue
            log.info("%s: stage %s", b.version, name)
            fn(b)
            b.mark(name)
            b.stages_run.append(name)
        stage_write(b)
        b.stages_run.append("write")
    set_current(index_dir, b.version)
    _cleanup(vdir)
    b.stages_run.append("publish")
    man = Manifest.read(vdir)
    log.info("%s: version %s live (%d motions, %d chunks)", index_dir, b.version, man.n_motions, man.n_chunks)
    return BuildReport(str(index_dir), b.version, op, man.n_motions, man.n_chunks, b.n_embedded,
                       int(man.build.get("reused_chunks", 0)), time.perf_counter() - t0,
                       b.embed_seconds, man.recall, resumed=resumed, stages_run=b.stages_run)


def build_index(corpus, index_dir: str | os.PathLike, model, config: IndexConfig | None = None,
                device: str | None = None, motion_feature_fn: MotionFeatureFn | None = None,
                motion_feature_tag: str | None = None, progress: ProgressFn | None = None,
                force: bool = False, embed_backend: EmbedBackend | None = None) -> BuildReport:
    """Full build of every (split/source-filtered) corpus motion into a new version of `index_dir`.

    `corpus`: a CorpusStore or its directory. `model`: a RetrievalModel, a run directory or a checkpoint.
    A killed build re-run with the same arguments resumes; an up-to-date index is left alone unless
    `force`. `motion_feature_fn(features (T-1, 263)) -> array` caches a per-motion array (e.g. the
    localizer's query-independent features) keyed by motion_id; `motion_feature_tag` names it.
    `embed_backend` (e.g. `indexer.ray_backend.RayEmbedBackend`) computes the chunk vectors elsewhere;
    None embeds in this process. Either gives the same index.
    """
    config = config or IndexConfig()
    index_dir = Path(index_dir)
    store = _open_store(corpus)
    model = _model_from(model, device)
    with _locked(index_dir):
        motions = _corpus_motions(store, config)
        return _run_build(index_dir, "full", config, model, store, motions, set(), None, _corpus_info(store),
                          motion_feature_fn, motion_feature_tag, progress, force, embed_backend)


def _live(index_dir: Path) -> tuple[str, Path, Manifest]:
    current = read_current(index_dir)
    if current is None:
        raise FileNotFoundError(f"{index_dir}: no index version yet (build one with `engine index build`)")
    vdir = version_dir(index_dir, current)
    man = Manifest.read(vdir)
    problems = _check_files(vdir, man)
    if problems:
        raise CorpusError(str(vdir), "; ".join(problems))
    return current, vdir, man


def rebuild_index(index_dir: str | os.PathLike, corpus=None, model=None, config: IndexConfig | None = None,
                  device: str | None = None, motion_feature_fn: MotionFeatureFn | None = None,
                  motion_feature_tag: str | None = None, progress: ProgressFn | None = None,
                  embed_backend: EmbedBackend | None = None) -> BuildReport:
    """Full rebuild into a new version; corpus, model and config default to the live version's."""
    index_dir = Path(index_dir)
    _, vdir, man = _live(index_dir)
    if corpus is None:
        corpus = _store_from_info(man.corpus)
    if model is None:
        from indexer.model import RetrievalModel

        model = RetrievalModel.load(vdir / MODEL_FILE, device=device)
    return build_index(corpus, index_dir, model, config or IndexConfig.from_dict(man.config), device=device,
                       motion_feature_fn=motion_feature_fn, motion_feature_tag=motion_feature_tag,
                       progress=progress, force=True, embed_backend=embed_backend)


def _store_from_info(info: dict[str, Any]):
    from engine.corpus.store import CorpusStore

    if not info.get("dir"):
        raise CorpusError("index manifest", "records no corpus; pass one")
    return CorpusStore.open(info["dir"], url=info.get("url"), create=False)


def _update(index_dir: Path, op: str, corpus, add_ids: Iterable[int] | None, remove_ids: Iterable[int],
            add_all_missing: bool, device: str | None, motion_feature_fn: MotionFeatureFn | None,
            motion_feature_tag: str | None, progress: ProgressFn | None,
            embed_backend: EmbedBackend | None = None) -> BuildReport:
    with _locked(index_dir):
        current, vdir, man = _live(index_dir)
        config = IndexConfig.from_dict(man.config)
        from indexer.model import RetrievalModel

        model = RetrievalModel.load(vdir / MODEL_FILE, device=device)
        if model.fingerprint() != man.model_fingerprint:
            raise CorpusError(str(vdir / MODEL_FILE), "model fingerprint differs from the manifest")
        with ChunkDB(vdir / CHUNKS_DB) as db:
            base_motions = {m.motion_id: m for m in db.motions()}
        store = _open_store(corpus) if (corpus is not None or add_all_missing or add_ids) else None
        if store is None and (add_all_missing or add_ids):
            store = _store_from_info(man.corpus)
        remove = {int(i) for i in remove_ids}
        unknown = sorted(remove - set(base_motions))
        if unknown:
            log.warning("%s: motions %s are not in the index", index_dir, unknown[:10])
        incoming: list[IndexedMotion] = []
        if add_ids is not None:
            incoming = _corpus_motions(store, config, add_ids)
        elif add_all_missing:
            incoming = _corpus_motions(store, config)
        if op == "sync":
            present = {m.motion_id for m in incoming}
            remove |= {mid for mid in base_motions if mid not in present}
        motions = {mid: m for mid, m in base_motions.items() if mid not in remove}
        changed = set()
        for m in incoming:
            old = motions.get(m.motion_id)
            if old is not None and (old.n_frames != m.n_frames or abs(old.fps - m.fps) > 1e-9):
                changed.add(m.motion_id)
            if old is None or m.motion_id in changed:
                motions[m.motion_id] = m
        reuse = {mid for mid in motions if mid in base_motions and mid not in changed}
        if man.motion_feature_tag and motion_feature_fn is None and len(reuse) < len(motions):
            raise CorpusError(str(index_dir), f"the live version caches motion features "
                                              f"({man.motion_feature_tag}); pass motion_feature_fn")
        tag = motion_feature_tag or (man.motion_feature_tag if motion_feature_fn is None else None)
        if motion_feature_fn is None and tag:
            motion_feature_fn = _no_features  # every motion is re-used; never called
        corpus_info = _corpus_info(store) if store is not None else man.corpus
        return _run_build(index_dir, op, config, model, store, [motions[k] for k in sorted(motions)], reuse,
                          current, corpus_info, motion_feature_fn, tag, progress, force=False,
                          embed_backend=embed_backend)


def _no_features(features: np.ndarray) -> np.ndarray:  # pragma: no cover - guarded above
    raise RuntimeError("no motion_feature_fn")


def add_to_index(index_dir: str | os.PathLike, corpus=None, motion_ids: Iterable[int] | None = None,
                 device: str | None = None, motion_feature_fn: MotionFeatureFn | None = None,
                 motion_feature_tag: str | None = None, progress: ProgressFn | None = None,
                 embed_backend: EmbedBackend | None = None) -> BuildReport:
    """New version with `motion_ids` (default: every corpus motion not yet indexed, within the index's
    split/source filter) added; unchanged motions keep their embeddings. Uses the live version's model."""
    return _update(Path(index_dir), "add", corpus, motion_ids, (), motion_ids is None, device,
                   motion_feature_fn, motion_feature_tag, progress, embed_backend)


def remove_from_index(index_dir: str | os.PathLike, motion_ids: Iterable[int],
                      progress: ProgressFn | None = None) -> BuildReport:
    """New version without `motion_ids`; nothing is re-embedded and no corpus is needed."""
    return _update(Path(index_dir), "remove", None, None, motion_ids, False, None, None, None, progress)


def sync_index(index_dir: str | os.PathLike, corpus=None, device: str | None = None,
               motion_feature_fn: MotionFeatureFn | None = None, motion_feature_tag: str | None = None,
               progress: ProgressFn | None = None, embed_backend: EmbedBackend | None = None) -> BuildReport:
    """New version matching the corpus: new motions added, motions gone from it removed."""
    return _update(Path(index_dir), "sync", corpus, None, (), True, device, motion_feature_fn,
                   motion_feature_tag, progress, embed_backend)


def prune_versions(index_dir: str | os.PathLike, keep: int = 2) -> list[str]:
    """Delete all but the newest `keep` complete versions (never the live one) and unfinished builds."""
    index_dir = Path(index_dir)
    removed = []
    with _locked(index_dir):
        current = read_current(index_dir)
        complete = [v for v in _versions(index_dir) if (version_dir(index_dir, v) / MANIFEST).exists()]
        keep_set = set(complete[-keep:]) | {current}
        for v in _versions(index_dir):
            if v not in keep_set:
                shutil.rmtree(version_dir(index_dir, v))
                removed.append(v)
    return removed


# ---------------------------------------------------------------------------------------------- verify
def _check_files(vdir: Path, man: Manifest) -> list[str]:
    problems = []
    for name, entry in sorted(man.files.items()):
        p = vdir / name
        if "/" in name or name.startswith("."):
            problems.append(f"{name}: bad file name in manifest")
        elif not p.is_file():
            problems.append(f"{name}: missing")
        else:
            got = sha256_file(p)
            if got != entry:
                problems.append(f"{name}: checksum mismatch (manifest sha256 {entry.sha256[:12]}…, "
                                f"{entry.bytes} bytes; file {got.sha256[:12]}…, {got.bytes} bytes)")
    for need in (CHUNKS_DB, EMBEDDINGS, FAISS_FILE, MODEL_FILE):
        if need not in man.files:
            problems.append(f"{need}: not listed in the manifest")
    return problems


def _read_verified(vdir: Path, name: str, entry: FileEntry) -> bytes:
    """A file's bytes, only if they match the manifest (read once: no window between check and use)."""
    data = (vdir / name).read_bytes()
    if sha256_bytes(data) != entry:
        raise CorpusError(str(vdir / name), "checksum does not match the manifest; refusing to load")
    return data


def verify(index_dir: str | os.PathLike, corpus=None, deep: bool = True) -> VerifyReport:
    """Check the live version: manifest, sha256 of every file, then (only if those match) FAISS <-> SQL
    <-> Arrow consistency: same chunk ids, same dims and counts, chunk rows equal to re-planned chunks,
    unit vectors, FAISS vectors equal to the Arrow ones (flat/IVF/HNSW). With `corpus`, also report
    indexed motions that are gone from it or changed length. Unfinished builds are warnings."""
    index_dir = Path(index_dir)
    rep = VerifyReport(str(index_dir), None)
    try:
        current = read_current(index_dir)
    except CorpusError as e:
        rep.problems.append(str(e))
        return rep
    for v in _versions(index_dir):
        if not (version_dir(index_dir, v) / MANIFEST).exists():
            rep.warnings.append(f"version {v}: unfinished build (resumed by re-running it, removed by prune)")
    if current is None:
        rep.problems.append("no CURRENT version pointer")
        return rep
    rep.version = current
    vdir = version_dir(index_dir, current)
    try:
        man = Manifest.read(vdir)
    except FileNotFoundError:
        rep.problems.append(f"version {current}: manifest.json missing")
        return rep
    except CorpusError as e:
        rep.problems.append(str(e))
        return rep
    rep.files_checked = len(man.files)
    rep.problems += _check_files(vdir, man)
    listed = set(man.files) | {MANIFEST}
    for p in vdir.iterdir():
        if p.name not in listed:
            rep.warnings.append(f"{p.name}: not listed in the manifest")
    if rep.problems or not deep:
        return rep
    try:
        _deep_check(vdir, man, rep, corpus)
    except Exception as e:  # noqa: BLE001 - any failure to read consistent files is a verify problem
        rep.problems.append(f"unreadable index files: {type(e).__name__}: {e}")
    return rep


def _deep_check(vdir: Path, man: Manifest, rep: VerifyReport, corpus) -> None:
    faiss = _faiss()
    config = IndexConfig.from_dict(man.config)
    with ChunkDB(vdir / CHUNKS_DB) as db:
        table = db.table()
        motions = db.motions()
    rep.n_motions, rep.n_chunks = len(motions), len(table)
    if len(motions) != man.n_motions or len(table) != man.n_chunks:
        rep.problems.append(f"counts: SQL has {len(motions)} motions / {len(table)} chunks, manifest says "
                            f"{man.n_motions} / {man.n_chunks}")
    planned = ChunkTable.from_spans(c for m in motions
                                    for c in plan_chunks(m.motion_id, m.n_frames, m.fps, config.window_s,
                                                         config.stride_s))
    for col in ("chunk_id", "motion_id", "start_frame", "end_frame", "start_s", "end_s"):
        if not np.array_equal(getattr(planned, col), getattr(table, col)):
            rep.problems.append(f"SQL chunks: column {col} differs from the chunking of the indexed motions")
            break
    emb = read_embeddings(vdir / EMBEDDINGS)
    if not np.array_equal(emb.chunk_ids, table.chunk_id):
        rep.problems.append("Arrow embeddings: chunk ids differ from the SQL chunk table")
    elif not np.array_equal(emb.motion_ids, table.motion_id):
        rep.problems.append("Arrow embeddings: motion ids differ from the SQL chunk table")
    if emb.vectors.shape[1] != man.dim:
        rep.problems.append(f"Arrow embeddings: dim {emb.vectors.shape[1]} != manifest dim {man.dim}")
    norms = np.linalg.norm(emb.vectors, axis=1)
    if len(norms) and np.abs(norms - 1).max() > 1e-3:
        rep.problems.append(f"Arrow embeddings: {int((np.abs(norms - 1) > 1e-3).sum())} vectors are not unit norm")
    data = _read_verified(vdir, FAISS_FILE, man.files[FAISS_FILE])
    index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
    if index.d != man.dim or index.ntotal != len(table):
        rep.problems.append(f"FAISS: d={index.d}, ntotal={index.ntotal}; expected {man.dim}, {len(table)}")
        return
    fids = faiss.vector_to_array(faiss.downcast_index(index).id_map)
    if not np.array_equal(np.sort(fids), table.chunk_id):
        rep.problems.append("FAISS: ids differ from the SQL chunk ids")
        return
    if man.faiss_kind in ("flat", "ivf", "hnsw") and len(fids):
        rng = np.random.default_rng(0)
        sample = rng.choice(len(fids), min(64, len(fids)), replace=False)
        inner = faiss.downcast_index(index.index)
        if man.faiss_kind == "ivf":
            inner.make_direct_map()
        pos = table.rows(fids[sample])
        got = np.stack([inner.reconstruct(int(i)) for i in sample])  # FAISS row i holds fids[i]
        if not np.allclose(got, emb.vectors[pos], atol=1e-6):
            rep.problems.append("FAISS: stored vectors differ from the Arrow embeddings")
    if (vdir / MOTION_FEATURES).exists():
        feats = read_motion_features(vdir / MOTION_FEATURES)
        if set(feats) != {m.motion_id for m in motions}:
            rep.problems.append("motion features: motion ids differ from the indexed motions")
    if corpus is not None:
        store = _open_store(corpus)
        rep.problems += [f"corpus: {p}" for p in store.verify(full=True).problems]  # sha256 of its arrays
        rows = {int(r["motion_id"]): r for r in store.motion_table()}
        gone = [m.motion_id for m in motions if m.motion_id not in rows]
        changed = [m.motion_id for m in motions if m.motion_id in rows and int(rows[m.motion_id]["n_frames"]) != m.n_frames]
        if gone:
            rep.warnings.append(f"{len(gone)} indexed motions are gone from the corpus (e.g. {gone[:5]}); run sync")
        if changed:
            rep.problems.append(f"{len(changed)} indexed motions changed length in the corpus (e.g. {changed[:5]})")


# ---------------------------------------------------------------------------------------------- open
class ChunkIndex:
    """A loaded, checksum-verified index version: FAISS search plus the chunk table."""

    def __init__(self, vdir: Path, manifest: Manifest, index, table: ChunkTable, motions: list[IndexedMotion],
                 device: str = "cpu"):
        self.dir = vdir
        self.manifest = manifest
        self.version = manifest.version
        self.index = index
        self.table = table
        self.motions = {m.motion_id: m for m in motions}
        self.device = device
        self._embeddings: Embeddings | None = None
        self._motion_rows: dict[int, tuple[int, int]] | None = None
        self._motion_features: dict[int, np.ndarray] | None = None

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def __len__(self) -> int:
        return len(self.table)

    def search(self, query_vecs: np.ndarray, n: int, nprobe: int | None = None,
               ef_search: int | None = None) -> ChunkHits:
        """Top-n chunks per query by inner product (cosine on unit queries)."""
        q = np.ascontiguousarray(np.atleast_2d(query_vecs), np.float32)  # (Q, d)
        if q.shape[1] != self.dim:
            raise ValueError(f"query vectors have dim {q.shape[1]}, the index has {self.dim}")
        k = int(min(n, len(self.table)))
        if k <= 0 or len(q) == 0:
            return ChunkHits(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64))
        if nprobe is not None or ef_search is not None:
            set_search_params(self.index, self.manifest.faiss_kind, nprobe, ef_search)
        _faiss()
        scores, ids = self.index.search(q, k)
        if nprobe is not None or ef_search is not None:
            cfg = self.manifest.config
            set_search_params(self.index, self.manifest.faiss_kind, cfg.get("nprobe"), cfg.get("ef_search"))
        return ChunkHits(scores, ids.astype(np.int64))

    def chunks(self, chunk_ids: Iterable[int] | np.ndarray) -> list[Chunk]:
        return self.table.chunks(np.asarray(list(chunk_ids) if not isinstance(chunk_ids, np.ndarray) else chunk_ids))

    def motion_best(self, query_vecs: np.ndarray, top_chunks: int = 1000, k_motions: int | None = None,
                    nprobe: int | None = None, ef_search: int | None = None) -> list[MotionHits]:
        """Per query: r_i = best chunk similarity of each motion among the top chunks, motions sorted by r.

        With `k_motions`, the top-k motions: the chunk search widens (doubling from `top_chunks`) until
        it holds k distinct motions or every chunk. A motion found in the top-N chunks has its best chunk
        there, and every motion not found scores below them, so with exact (flat) search the result is
        exactly the top-k motions by r."""
        q = np.atleast_2d(query_vecs)
        out: list[MotionHits | None] = [None] * len(q)
        todo = np.arange(len(q))
        n = max(1, int(top_chunks))
        while len(todo):
            hits = self.search(q[todo], n, nprobe=nprobe, ef_search=ef_search)
            again = []
            for qi, scores, ids in zip(todo, hits.scores, hits.chunk_ids):
                res = self._group(scores, ids, k_motions)
                if k_motions is not None and len(res.motion_ids) < k_motions and n < len(self.table):
                    again.append(qi)
                else:
                    out[qi] = res
            todo = np.array(again, np.int64)
            n = min(2 * n, len(self.table))
        return out  # type: ignore[return-value]

    def _group(self, scores: np.ndarray, ids: np.ndarray, k_motions: int | None) -> MotionHits:
        ok = ids >= 0
        scores, ids = scores[ok], ids[ok]
        mids = self.table.motion_id[self.table.rows(ids)] if len(ids) else np.zeros(0, np.int64)
        _, first = np.unique(mids, return_index=True)  # hits are sorted: first = the motion's best chunk
        first = first[np.argsort(-scores[first], kind="stable")]
        if k_motions is not None:
            first = first[:k_motions]
        return MotionHits(mids[first], scores[first].astype(np.float32), ids[first])

    def motion_scores_exact(self, query_vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(motion_ids (M,), r (Q, M)): every motion's best chunk similarity by brute force (oracle)."""
        emb = self.embeddings()
        q = np.atleast_2d(query_vecs).astype(np.float32)
        sim = q @ emb.vectors.T  # (Q, N), rows sorted by chunk_id, hence grouped by motion
        starts = np.flatnonzero(np.r_[True, emb.motion_ids[1:] != emb.motion_ids[:-1]])
        return emb.motion_ids[starts], np.maximum.reduceat(sim, starts, axis=1)

    def motion_chunks(self, motion_id: int) -> tuple[np.ndarray, np.ndarray]:
        """((C, 2) [start_s, end_s], (C, d) stored embeddings) of one motion's chunks, in chunk order (empty
        for a motion the index does not hold)."""
        emb = self.embeddings()
        if self._motion_rows is None:  # rows are sorted by chunk_id, hence grouped by motion
            starts = np.flatnonzero(np.r_[True, emb.motion_ids[1:] != emb.motion_ids[:-1]])
            ends = np.r_[starts[1:], len(emb.motion_ids)]
            self._motion_rows = {int(emb.motion_ids[a]): (int(a), int(b)) for a, b in zip(starts, ends)}
        a, b = self._motion_rows.get(int(motion_id), (0, 0))
        rows = self.table.rows(emb.chunk_ids[a:b])
        return np.stack([self.table.start_s[rows], self.table.end_s[rows]], axis=1).reshape(-1, 2), emb.vectors[a:b]

    def embeddings(self) -> Embeddings:
        if self._embeddings is None:
            self._embeddings = read_embeddings(self.dir / EMBEDDINGS)
        return self._embeddings

    def motion_features(self, motion_id: int) -> np.ndarray | None:
        """The cached per-motion array from the build's motion_feature_fn, or None."""
        if self._motion_features is None:
            p = self.dir / MOTION_FEATURES
            self._motion_features = read_motion_features(p) if p.exists() else {}
        return self._motion_features.get(int(motion_id))

    def load_model(self, device: str | None = None, text_encoder=None):
        """The retrieval model this version was embedded with (queries must be encoded by it)."""
        from indexer.model import RetrievalModel

        model = RetrievalModel.load(self.dir / MODEL_FILE, device=device, text_encoder=text_encoder)
        if model.fingerprint() != self.manifest.model_fingerprint:
            raise CorpusError(str(self.dir / MODEL_FILE), "model fingerprint differs from the manifest")
        return model


def open_index(index_dir: str | os.PathLike, device: str | None = None, version: str | None = None) -> ChunkIndex:
    """Load the live (or given) version after checking every file's sha256 against its manifest.

    `device`: 'cpu', 'cuda[:i]' or None (GPU when faiss-gpu is installed and sees one; HNSW stays on CPU).
    """
    index_dir = Path(index_dir)
    v = version or read_current(index_dir)
    if v is None:
        raise FileNotFoundError(f"{index_dir}: not an index directory (no CURRENT); build one with "
                                "`engine index build --corpus DIR --out INDEX_DIR`")
    vdir = version_dir(index_dir, v)
    man = Manifest.read(vdir)
    problems = _check_files(vdir, man)
    if problems:
        raise CorpusError(str(vdir), "refusing to load: " + "; ".join(problems))
    faiss = _faiss()
    data = _read_verified(vdir, FAISS_FILE, man.files[FAISS_FILE])
    index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
    with ChunkDB(vdir / CHUNKS_DB) as db:
        table, motions = db.table(), db.motions()
    index, dev = _maybe_gpu(index, man.faiss_kind, device)
    return ChunkIndex(vdir, man, index, table, motions, dev)


def _maybe_gpu(index, kind: str, device: str | None):
    faiss = _faiss()
    want_gpu = device is None or str(device).startswith("cuda")
    n_gpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") and want_gpu else 0
    if not want_gpu or n_gpu == 0 or kind == "hnsw" or not hasattr(faiss, "StandardGpuResources"):
        if device is not None and str(device).startswith("cuda"):
            log.warning("faiss-gpu with a visible GPU is needed for device %s; searching on the CPU", device)
        return index, "cpu"
    gpu = int(str(device).split(":")[1]) if device and ":" in str(device) else 0
    try:
        res = faiss.StandardGpuResources()
        g = faiss.index_cpu_to_gpu(res, gpu, index)
        g.referenced_objects = [res]
        return g, f"cuda:{gpu}"
    except Exception as e:  # noqa: BLE001 - fall back to the CPU index
        log.warning("could not move the index to GPU %d (%s); searching on the CPU", gpu, e)
        return index, "cpu"


def index_info(index_dir: str | os.PathLike) -> IndexInfo:
    """Live version's manifest and a list of every version (no checksums: see `verify`)."""
    index_dir = Path(index_dir)
    current = read_current(index_dir)
    versions, live = [], None
    for v in _versions(index_dir):
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
