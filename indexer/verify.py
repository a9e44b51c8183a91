"""Checking an index version: `check_files` (the sha256 of every file against its manifest, which every
load runs before FAISS, SQLite or torch reads a file) and `verify` (the checksums, then FAISS <-> SQL <->
Arrow consistency, and optionally the corpus)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.corpus.types import CorpusError, EngineError
from indexer.arrow_io import read_embeddings, read_motion_features
from indexer.bank import bank_problems, bank_sizes, read_bank
from indexer.chunks import ChunkDB, ChunkTable, plan_chunks
from indexer.config import IndexConfig
from indexer.faiss_index import load_faiss
from indexer.inputs import open_store
from indexer.manifest import (
    CHUNKS_DB,
    EMBEDDINGS,
    FAISS_FILE,
    MANIFEST,
    MODEL_FILE,
    MOTION_FEATURES,
    WINDOWS,
    Manifest,
    checksum_problem,
    read_current,
    read_verified,
    sha256_file,
    version_dir,
)
from indexer.query_models import QUERY_MODELS, QueryModels, check_query_models
from indexer.versions import list_versions


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


def check_files(vdir: Path, man: Manifest, skip: Collection[str] = ()) -> list[str]:
    """Problems with a version's files: bad names, missing files, sha256 mismatches, required files the
    manifest does not list. Files named in `skip` are not hashed here (a caller that reads one with
    `read_verified` checks it then, once)."""
    problems = []
    for name, entry in sorted(man.files.items()):
        p = vdir / name
        if "/" in name or name.startswith("."):
            problems.append(f"{name}: bad file name in manifest")
        elif not p.is_file():
            problems.append(f"{name}: missing")
        elif name in skip:
            continue
        else:
            problem = checksum_problem(name, entry, sha256_file(p))
            if problem:
                problems.append(problem)
    for need in (CHUNKS_DB, EMBEDDINGS, FAISS_FILE, MODEL_FILE):
        if need not in man.files:
            problems.append(f"{need}: not listed in the manifest")
    if man.config.get("window_bank") and WINDOWS not in man.files:
        problems.append(f"{WINDOWS}: the config has a window bank but the manifest does not list it")
    return problems


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
    for v in list_versions(index_dir):
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
    rep.problems += check_files(vdir, man)
    listed = set(man.files) | {MANIFEST}
    # The exported ONNX query models (a derived artefact with its own sidecar, indexer/query_models.py).
    rep.problems += check_query_models(vdir)
    qm = _query_model_files(vdir)
    listed |= qm
    rep.files_checked += len(qm) - (1 if qm else 0)
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


def _query_model_files(vdir: Path) -> set[str]:
    """The names of the version's query model files (the sidecar and the graphs it lists), if any."""
    try:
        qm = QueryModels.read(vdir)
    except EngineError:  # reported by check_query_models
        return {QUERY_MODELS}
    return set() if qm is None else {QUERY_MODELS, *qm.files}


def _check_model(vdir: Path, man: Manifest, rep: VerifyReport) -> None:
    """The retrieval model loads the way `engine search` loads it (weights only) and has the manifest's
    fingerprint: verify-OK means loadable, not only "the bytes match their recorded hash"."""
    from indexer.model import RetrievalModel

    try:
        model = RetrievalModel.load(vdir / MODEL_FILE)
    except (ValueError, OSError) as e:
        rep.problems.append(f"{MODEL_FILE}: does not load as search loads it: {e}")
        return
    if model.fingerprint() != man.model_fingerprint:
        rep.problems.append(f"{MODEL_FILE}: weights differ from the manifest's model fingerprint")


def _deep_check(vdir: Path, man: Manifest, rep: VerifyReport, corpus) -> None:
    _check_model(vdir, man, rep)
    faiss = load_faiss()
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
    data = read_verified(vdir / FAISS_FILE, man.files[FAISS_FILE])
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
    if (vdir / WINDOWS).exists():
        rep.problems += bank_problems(read_bank(vdir / WINDOWS, man.dim), motions, bank_sizes(config))
    if corpus is not None:
        store = open_store(corpus)
        rep.problems += [f"corpus: {p}" for p in store.verify(full=True).problems]  # sha256 of its arrays
        rows = {r.motion_id: r for r in store.motion_table()}
        gone = [m.motion_id for m in motions if m.motion_id not in rows]
        changed = [m.motion_id for m in motions if m.motion_id in rows and rows[m.motion_id].n_frames != m.n_frames]
        if gone:
            rep.warnings.append(f"{len(gone)} indexed motions are gone from the corpus (e.g. {gone[:5]}); run sync")
        if changed:
            rep.problems.append(f"{len(changed)} indexed motions changed length in the corpus (e.g. {changed[:5]})")
