"""The build stages of one index version, and `run_build`, which runs them from plan to publish.

Stages (each skipped on a re-run when its done marker `stages/<stage>.done` exists): `plan` -> `chunk` ->
`embed` -> `features` (only with a motion_feature_fn) -> `bank` (only with `IndexConfig.window_bank`) -> `write`, then `publish` switches
``INDEX_DIR/CURRENT`` atomically. Until then the previous version stays live and verifies clean, wherever
a build is killed. Each stage's docstring lists the files it writes (the layout is in indexer/manifest.py).

The embed stage embeds its unfinished blocks in this process (`embed_block`), or hands them to an
`EmbedBackend` such as `indexer.ray_backend.RayEmbedBackend` (Ray Data workers). A backend only computes
the vectors; the stage writes each block file, so resuming, the files and the published index are the
same whichever backend embedded them (the manifest's `build.embed_backend` names the one of the run that
finished it).

What to build comes in one `BuildRequest` (indexer/build.py makes them for full builds and updates);
`BuildState` is what the stages of that request share while they run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from engine.corpus.io import atomic_writer
from engine.corpus.types import CorpusError
from indexer.arrow_io import (
    Embeddings,
    read_embeddings,
    read_motion_features,
    write_embeddings,
    write_motion_features,
)
from indexer.bank import bank_enabled, bank_sizes, build_bank, read_bank, write_bank
from indexer.chunks import ChunkDB, ChunkSpan, IndexedMotion, plan_chunks
from indexer.config import IndexConfig, MotionFeatureFn, ProgressFn
from indexer.embed import EmbedBackend, EmbedJob, embed_chunks, feature_reader
from indexer.faiss_index import load_faiss, make_faiss_index, measure_recall
from indexer.inputs import corpus_info
from indexer.manifest import (
    BUILD_JSON,
    CHUNKS_DB,
    EMBED_DIR,
    EMBEDDINGS,
    FAISS_FILE,
    MANIFEST,
    MODEL_FILE,
    MOTION_FEATURES,
    STAGE_DIR,
    WINDOWS,
    LocalizerRef,
    Manifest,
    RecallReport,
    atomic_write_text,
    fsync_dir,
    fsync_file,
    read_current,
    set_current,
    sha256_file,
    version_dir,
)
from indexer.versions import list_versions, next_version

log = logging.getLogger(__name__)

STAGES = ("plan", "chunk", "embed", "features", "bank", "write")


@dataclass(frozen=True)
class BuildRequest:
    """One version to build: what it is made of and how. The caller holds the index lock.

    `reuse`: motions whose embeddings (and cached features) come from `base_version`. `motion_feature_fn`
    caches a per-motion array named by `motion_feature_tag`; `localizer` is recorded in the manifest."""

    index_dir: Path
    op: str  # full | add | remove | sync
    config: IndexConfig
    model: Any  # RetrievalModel
    store: Any  # CorpusStore | None (remove needs none)
    motions: tuple[IndexedMotion, ...]  # sorted by motion_id
    corpus_info: dict[str, Any]  # the manifest's `corpus` entry
    reuse: frozenset[int] = frozenset()
    base_version: str | None = None
    motion_feature_fn: MotionFeatureFn | None = None
    motion_feature_tag: str | None = None
    localizer: LocalizerRef | None = None
    progress: ProgressFn | None = None
    force: bool = False  # build even when the live version already is this build's result
    embed_backend: EmbedBackend | None = None  # None: embed in this process


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
class BuildState:
    """What the stages of one version build share: the request, the version directory, and counters."""

    req: BuildRequest
    vdir: Path
    spec: dict[str, Any]  # the content of build.json
    base_vdir: Path | None
    base_manifest: Manifest | None
    stages_run: list[str] = field(default_factory=list)
    n_embedded: int = 0
    embed_seconds: float = 0.0
    recall: RecallReport | None = None

    @property
    def version(self) -> str:
        return self.vdir.name

    def done(self, stage: str) -> bool:
        return (self.vdir / STAGE_DIR / f"{stage}.done").exists()

    def mark(self, stage: str) -> None:
        atomic_write_text(self.vdir / STAGE_DIR / f"{stage}.done", _now() + "\n")

    def tick(self, stage: str, done: int, total: int) -> None:
        if self.req.progress is not None:
            self.req.progress(stage, done, total)

    def __post_init__(self) -> None:
        self.spans: list[ChunkSpan] = []
        for m in self.req.motions:  # motions sorted by id, so spans are sorted by chunk_id
            self.spans.extend(plan_chunks(m.motion_id, m.n_frames, m.fps, self.req.config.window_s,
                                          self.req.config.stride_s))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _motion_list_sha(motions: Iterable[IndexedMotion]) -> str:
    rows = [[m.motion_id, m.n_frames, round(float(m.fps), 6)] for m in motions]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        fsync_file(dst)


def cleanup(vdir: Path) -> None:
    """Remove the build's scratch folders (after the manifest: a kill in between only leaves litter)."""
    shutil.rmtree(vdir / EMBED_DIR, ignore_errors=True)
    shutil.rmtree(vdir / STAGE_DIR, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- stages
def stage_plan(b: BuildState) -> None:
    """Writes `stages/plan.json` (the motions to index and which re-use the base version) and `model.pt`."""
    if b.base_vdir is not None and b.base_manifest is not None \
            and b.base_manifest.model_fingerprint == b.spec["model"]:
        _link_or_copy(b.base_vdir / MODEL_FILE, b.vdir / MODEL_FILE)
    else:
        b.req.model.save(b.vdir / MODEL_FILE)
    plan = {"motions": [dataclasses.asdict(m) for m in b.req.motions], "reuse": sorted(b.req.reuse)}
    atomic_write_text(b.vdir / STAGE_DIR / "plan.json", json.dumps(plan))


def stage_chunk(b: BuildState) -> None:
    """Writes `chunks.sqlite`: the `motions` table and one `chunks` row per window (chunk_id = FAISS id)."""
    path = b.vdir / CHUNKS_DB
    for p in (path, path.with_name(path.name + "-journal")):
        p.unlink(missing_ok=True)  # a previous attempt killed mid-write
    spans = b.spans
    with ChunkDB(path, read_only=False) as db:
        db.write(list(b.req.motions), spans)
    fsync_file(path)
    b.tick("chunk", len(spans), len(spans))


def _blocks(spans: list[ChunkSpan], size: int) -> Iterator[tuple[int, list[ChunkSpan]]]:
    """Fixed blocks of chunks in chunk_id order (deterministic, so a resumed build finds its blocks)."""
    for i in range(0, len(spans), size):
        yield i // size, spans[i:i + size]


def embed_block(b: BuildState, spans: list[ChunkSpan], features_of: Callable[[int], np.ndarray]) -> np.ndarray:
    """(n, embed_dim) vectors of one block of chunks, computed in this process: what the embed stage runs
    per block without a backend (tests replace it here to kill a build mid-stage)."""
    return embed_chunks(b.req.model, spans, {m.motion_id: m.fps for m in b.req.motions}, features_of,
                        b.req.config.batch_size, b.req.config.dtype)


def _local_blocks(b: BuildState, todo: list[tuple[int, list[ChunkSpan]]]) -> Iterator[tuple[int, np.ndarray]]:
    features_of = feature_reader(b.req.store)
    for k, block in todo:
        yield k, embed_block(b, block, features_of)  # looked up at call time, so a test can replace it


def stage_embed(b: BuildState) -> None:
    """Writes `embed/reused.arrow` (rows of unchanged motions copied from the base version) and
    `embed/block-NNNNNN.arrow`, one per block of new chunks, each renamed into place when complete
    (a killed build re-embeds only the unfinished blocks, whichever backend embeds them)."""
    req = b.req
    edir = b.vdir / EMBED_DIR
    edir.mkdir(exist_ok=True)
    spans = b.spans
    reused_spans = [c for c in spans if c.motion_id in req.reuse]
    new_spans = [c for c in spans if c.motion_id not in req.reuse]
    if reused_spans and not (edir / "reused.arrow").exists():
        base = read_embeddings(b.base_vdir / EMBEDDINGS)
        mask = np.isin(base.motion_ids, np.array(sorted(req.reuse), np.int64))
        ids = base.chunk_ids[mask]
        want = np.array(sorted(c.chunk_id for c in reused_spans), np.int64)
        if not np.array_equal(np.sort(ids), want):
            raise CorpusError(str(b.base_vdir / EMBEDDINGS), "base chunks differ from the planned chunks of "
                                                              "unchanged motions (rebuild the index)")
        write_embeddings(edir / "reused.arrow", Embeddings(ids, base.motion_ids[mask], base.vectors[mask]))
    total = len(new_spans)
    if total and req.store is None:
        raise CorpusError("index build", "new chunks to embed but no corpus given")
    todo = [(k, block) for k, block in _blocks(new_spans, req.config.block_chunks)
            if not (edir / f"block-{k:06d}.arrow").exists()]
    done = total - sum(len(block) for _, block in todo)
    b.tick("embed", done, total)
    if not todo:
        return
    blocks = dict(todo)
    backend = req.embed_backend
    name = backend.name if backend is not None else "local"
    log.info("%s: embedding %d chunks in %d blocks (%s backend)", b.version, total - done, len(todo), name)
    if backend is None:
        pieces = _local_blocks(b, todo)
    else:
        pieces = backend.embed_blocks(EmbedJob(
            blocks=todo, motion_fps={m.motion_id: m.fps for m in req.motions}, model=req.model,
            model_path=b.vdir / MODEL_FILE, model_fingerprint=b.spec["model"], store=req.store,
            corpus=corpus_info(req.store), batch_size=req.config.batch_size, dtype=req.config.dtype))
    try:
        _write_blocks(b, edir, pieces, blocks, name, done, total)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # a generator backend releases its workers even when a write fails


def _write_blocks(b: BuildState, edir: Path, pieces: Iterable[tuple[int, np.ndarray]],
                  blocks: dict[int, list[ChunkSpan]], name: str, done: int, total: int) -> None:
    embed_dim = b.req.model.config.embed_dim
    t0 = time.perf_counter()
    for k, vecs in pieces:
        b.embed_seconds += time.perf_counter() - t0  # embedding time only, not block writes
        block = blocks.pop(k, None)
        if block is None:
            raise RuntimeError(f"{name} embed backend: unexpected or repeated block {k}")
        if vecs.shape != (len(block), embed_dim):
            raise RuntimeError(f"{name} embed backend: block {k} came back with shape {vecs.shape}, "
                               f"expected {(len(block), embed_dim)}")
        bad = ~np.isfinite(vecs).all(axis=1)
        if bad.any():  # a NaN vector would never be found and fails the index's own verify: name the motion
            c = block[int(np.flatnonzero(bad)[0])]
            motion = next((m for m in b.req.motions if m.motion_id == c.motion_id), None)
            raise CorpusError(f"motion {c.motion_id}" + (f" ({motion.name})" if motion else ""),
                              f"its chunk {c.chunk_id} embeds to a non-finite vector ({int(bad.sum())} such "
                              "chunks in this block); check the motion's values (engine data show / verify)")
        write_embeddings(edir / f"block-{k:06d}.arrow",
                         Embeddings(np.array([c.chunk_id for c in block], np.int64),
                                    np.array([c.motion_id for c in block], np.int64), vecs))
        b.n_embedded += len(block)
        done += len(block)
        b.tick("embed", done, total)
        t0 = time.perf_counter()
    if blocks:
        raise RuntimeError(f"{name} embed backend returned no vectors for blocks {sorted(blocks)[:10]}")


def stage_features(b: BuildState) -> None:
    """Writes `motion_features.arrow`: motion_feature_fn(features) per motion, re-using the base's rows of
    unchanged motions when the base was built with the same motion_feature_tag."""
    req = b.req
    base: dict[int, np.ndarray] = {}
    if b.base_vdir is not None and b.base_manifest is not None and \
            b.base_manifest.motion_feature_tag == req.motion_feature_tag and (b.base_vdir / MOTION_FEATURES).exists():
        base = read_motion_features(b.base_vdir / MOTION_FEATURES)
    out: dict[int, np.ndarray] = {}
    for i, m in enumerate(req.motions):
        if m.motion_id in req.reuse and m.motion_id in base:
            out[m.motion_id] = np.array(base[m.motion_id])
        else:
            if req.store is None or req.motion_feature_fn is None:
                raise CorpusError(f"motion {m.motion_id}", "motion features needed but no corpus / motion_feature_fn")
            f = np.asarray(req.motion_feature_fn(np.asarray(req.store.features(m.motion_id))), np.float32)
            if not np.isfinite(f).all():
                raise CorpusError(f"motion {m.motion_id} ({m.name})", "motion_feature_fn returned NaN/inf")
            out[m.motion_id] = f
        b.tick("features", i + 1, len(req.motions))
    write_motion_features(b.vdir / MOTION_FEATURES, out)


def stage_bank(b: BuildState) -> None:
    """Writes `windows.arrow`: the window bank's extra windows of every motion with their embeddings
    (indexer/bank.py), re-using the base version's rows of unchanged motions when it has a bank of the same
    sizes (its chunking, hence its model, is the same as this build's for re-used motions)."""
    req = b.req
    sizes = bank_sizes(req.config)
    base = None
    if b.base_vdir is not None and b.base_manifest is not None and WINDOWS in b.base_manifest.files:
        base_cfg = IndexConfig.from_dict(b.base_manifest.config)
        if bank_sizes(base_cfg) == sizes and b.base_manifest.model_fingerprint == b.spec["model"]:
            base = read_bank(b.base_vdir / WINDOWS)
    todo = [m for m in req.motions if base is None or m.motion_id not in req.reuse]
    if todo and req.store is None:
        raise CorpusError("index build", "window bank windows to embed but no corpus given")
    features_of = feature_reader(req.store) if req.store is not None else None
    t0 = time.perf_counter()
    bank = build_bank(req.model, req.motions, sizes, features_of, base=base, reuse=req.reuse if base else (),
                      batch_size=req.config.batch_size, dtype=req.config.dtype,
                      tick=lambda done, total: b.tick("bank", done, total))
    log.info("%s: window bank of %d windows (%d motions embedded) in %.1f s", b.version, len(bank.motion_ids),
             len(todo), time.perf_counter() - t0)
    write_bank(b.vdir / WINDOWS, bank)


def stage_write(b: BuildState) -> None:
    """Writes `embeddings.arrow` (all chunks, sorted by chunk_id), `index.faiss`, then removes `embed/` and
    `stages/` and writes `manifest.json` last (its presence marks the version complete)."""
    req = b.req
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
    config = req.config
    index = make_faiss_index(emb.vectors, emb.chunk_ids, config)
    b.recall = measure_recall(index, emb.vectors, emb.chunk_ids, config.recall_k, config.recall_queries, config.seed)
    log.info("%s index recall@%d vs exact = %.4f (%d probes)", config.kind, b.recall.k, b.recall.recall,
             b.recall.n_queries)
    faiss = load_faiss()
    with atomic_writer(b.vdir / FAISS_FILE) as tmp:
        tmp.write_bytes(faiss.serialize_index(index).tobytes())
    files = {p.name: sha256_file(p) for p in sorted(b.vdir.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = Manifest(
        version=b.version, config=config.to_dict(), model_fingerprint=b.spec["model"],
        dim=int(emb.vectors.shape[1]), n_motions=len(req.motions), n_chunks=len(emb.chunk_ids), files=files,
        faiss_kind=config.kind, faiss_class=type(faiss.downcast_index(index.index)).__name__,
        corpus=req.corpus_info, recall=b.recall, motion_feature_tag=req.motion_feature_tag,
        localizer=req.localizer, created_utc=_now(),
        build={"op": req.op, "base_version": b.spec["base_version"], "motion_list_sha": b.spec["motions"],
               "embedded_chunks": sum(c.motion_id not in req.reuse for c in b.spans),
               "reused_chunks": sum(c.motion_id in req.reuse for c in b.spans), "reused_motions": len(req.reuse),
               "embed_backend": req.embed_backend.name if req.embed_backend is not None else "local"},
    )
    manifest.write(b.vdir)
    fsync_dir(b.vdir)
    cleanup(b.vdir)


# ---------------------------------------------------------------------------------------------- run
def _up_to_date(req: BuildRequest, spec: dict[str, Any], current: str | None) -> Manifest | None:
    """The live version's manifest when it already is this build's result (and `force` is off)."""
    if current is None or req.force:
        return None
    try:
        cm = Manifest.read(version_dir(req.index_dir, current))
    except (FileNotFoundError, CorpusError):
        return None
    same = (cm.config == spec["config"] and cm.model_fingerprint == spec["model"]
            and cm.build.get("motion_list_sha") == spec["motions"]
            and cm.motion_feature_tag == req.motion_feature_tag and cm.localizer == req.localizer)
    return cm if same else None


def _version_to_build(index_dir: Path, spec: dict[str, Any], current: str | None) -> tuple[Path, bool]:
    """(version directory, resumed): an unfinished build of the same spec newer than the live version, or a
    new version; unfinished builds of other specs are removed."""
    vdir, resumed = None, False
    for v in reversed(list_versions(index_dir)):
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
        vdir = version_dir(index_dir, next_version(index_dir))
        (vdir / STAGE_DIR).mkdir(parents=True)
        atomic_write_text(vdir / BUILD_JSON, json.dumps(spec, sort_keys=True))
    return vdir, resumed


def run_build(req: BuildRequest) -> BuildReport:
    """Plan-to-publish of one version; resumes a matching unfinished build. The caller holds the lock."""
    t0 = time.perf_counter()
    index_dir = req.index_dir
    if not req.motions:
        raise CorpusError(str(index_dir), "no motions to index")
    if req.config.window_bank is None:  # auto: resolved here, so the manifest records what was built
        req = dataclasses.replace(req, config=dataclasses.replace(req.config,
                                                                  window_bank=bank_enabled(req.config, req.model)))
    if req.motion_feature_fn is not None and req.motion_feature_tag is None:
        req = dataclasses.replace(req, motion_feature_tag=getattr(req.motion_feature_fn, "__qualname__",
                                                                  "motion_features"))
    spec = {"op": req.op, "base_version": req.base_version, "config": req.config.to_dict(),
            "model": req.model.fingerprint(), "motions": _motion_list_sha(req.motions),
            "motion_feature_tag": req.motion_feature_tag}
    if req.localizer is not None:  # (absent otherwise, so the resume key of earlier builds is unchanged)
        spec["localizer"] = dataclasses.asdict(req.localizer)
    current = read_current(index_dir)

    cm = _up_to_date(req, spec, current)
    if cm is not None:
        log.info("%s: version %s is up to date", index_dir, current)
        return BuildReport(str(index_dir), current, req.op, cm.n_motions, cm.n_chunks, 0, 0,
                           time.perf_counter() - t0, 0.0, cm.recall, up_to_date=True)

    vdir, resumed = _version_to_build(index_dir, spec, current)
    base_vdir = version_dir(index_dir, req.base_version) if req.base_version else None
    base_manifest = Manifest.read(base_vdir) if base_vdir else None
    b = BuildState(req, vdir, spec, base_vdir, base_manifest)
    if resumed:
        log.info("%s: resuming unfinished build %s", index_dir, b.version)
    if not (vdir / MANIFEST).exists():
        (vdir / STAGE_DIR).mkdir(exist_ok=True)
        stages: list[tuple[str, Callable[[BuildState], None]]] = [
            ("plan", stage_plan), ("chunk", stage_chunk), ("embed", stage_embed)]
        if req.motion_feature_fn is not None or (base_manifest is not None and base_manifest.motion_feature_tag
                                                 and req.motion_feature_tag):
            stages.append(("features", stage_features))
        if req.config.window_bank:
            stages.append(("bank", stage_bank))
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
    cleanup(vdir)
    b.stages_run.append("publish")
    man = Manifest.read(vdir)
    log.info("%s: version %s live (%d motions, %d chunks)", index_dir, b.version, man.n_motions, man.n_chunks)
    return BuildReport(str(index_dir), b.version, req.op, man.n_motions, man.n_chunks, b.n_embedded,
                       int(man.build.get("reused_chunks", 0)), time.perf_counter() - t0,
                       b.embed_seconds, man.recall, resumed=resumed, stages_run=b.stages_run)
