"""The read path: `open_index` loads a version after checking its files, `ChunkIndex` answers chunk and
motion searches over it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.corpus.types import Chunk, CorpusError
from indexer.arrow_io import Embeddings, read_embeddings, read_motion_features
from indexer.bank import BankRows, read_bank
from indexer.chunks import ChunkDB, ChunkTable, IndexedMotion
from indexer.faiss_index import load_faiss, set_search_params, to_device
from indexer.manifest import (
    CHUNKS_DB,
    EMBEDDINGS,
    FAISS_FILE,
    MODEL_FILE,
    MOTION_FEATURES,
    WINDOWS,
    Manifest,
    read_checked,
    read_current,
    version_dir,
)
from indexer.verify import check_files


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


class ChunkIndex:
    """A loaded, checksum-verified index version (from `open_index`): FAISS search plus the chunk table."""

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
        self._bank: BankRows | None = None
        self._bank_rows: dict[int, tuple[int, int]] | None = None

    @property
    def index_dir(self) -> Path:
        """The index directory this version belongs to (INDEX_DIR/versions/<v>)."""
        return self.dir.parent.parent

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
        load_faiss()
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

    @property
    def has_bank(self) -> bool:
        """Whether this version has a window bank (`windows.arrow`, indexer/bank.py)."""
        return WINDOWS in self.manifest.files

    def _bank_range(self, motion_id: int) -> tuple[int, int]:
        """Rows [a, b) of the motion in the bank (rows are grouped by motion); (0, 0) when it has none."""
        if not self.has_bank:
            return 0, 0
        if self._bank_rows is None:
            ids = self.bank().motion_ids
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
            ends = np.r_[starts[1:], len(ids)]
            self._bank_rows = {int(ids[a]): (int(a), int(b)) for a, b in zip(starts, ends)}
        return self._bank_rows.get(int(motion_id), (0, 0))

    def motion_windows(self, motion_id: int) -> tuple[np.ndarray, np.ndarray]:
        """((W, 2) [start_s, end_s], (W, d) unit embeddings) of a motion's window bank: its chunks, then the
        bank's extra windows (only the chunks when the version has no bank)."""
        spans, vecs = self.motion_chunks(motion_id)
        a, b = self._bank_range(motion_id)
        if a == b:
            return spans, vecs
        bank = self.bank()
        return np.concatenate([spans, bank.spans_s[a:b]]), np.concatenate([vecs, bank.vectors[a:b]])

    def motion_window_sims(self, motion_id: int, query_vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((W, 2) [start_s, end_s], (W,) similarity to `query_vec`) of the windows `motion_windows` lists, in
        its order, without copying the vectors."""
        q = np.asarray(query_vec, np.float32)
        spans, vecs = self.motion_chunks(motion_id)
        sims = vecs @ q
        a, b = self._bank_range(motion_id)
        if a == b:
            return spans, sims
        bank = self.bank()
        return np.concatenate([spans, bank.spans_s[a:b]]), np.concatenate([sims, bank.vectors[a:b] @ q])

    def bank(self) -> BankRows:
        """The window bank's extra windows (memory-mapped); empty for a version without a bank."""
        if self._bank is None:
            self._bank = read_bank(self.dir / WINDOWS, self.dim) if self.has_bank else BankRows.empty(self.dim)
        return self._bank

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
    # Every file is hashed once: index.faiss as it is read (no window between check and use), the others
    # here, before SQLite, Arrow or torch opens them.
    problems = check_files(vdir, man, skip=(FAISS_FILE,))
    data = None
    if FAISS_FILE in man.files and (vdir / FAISS_FILE).is_file():
        data, problem = read_checked(vdir / FAISS_FILE, man.files[FAISS_FILE])
        problems += [problem] if problem else []
    if problems or data is None:
        raise CorpusError(str(vdir), "refusing to load: " + "; ".join(problems))
    faiss = load_faiss()
    index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
    with ChunkDB(vdir / CHUNKS_DB) as db:
        table, motions = db.table(), db.motions()
    index, dev = to_device(index, man.faiss_kind, device)
    return ChunkIndex(vdir, man, index, table, motions, dev)
