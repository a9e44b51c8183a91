"""FAISS for the chunk index: the index factory string per kind, training and adding, search parameters,
exact top-k (the oracle), recall against exact search, and moving an index to a GPU.

FAISS is imported lazily (`load_faiss`), so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from indexer.config import IndexConfig
from indexer.manifest import RecallReport

log = logging.getLogger(__name__)

# Batch searches below this many queries skip FAISS's BLAS path (faiss-cpu 1.15 default: 128,000);
# the BLAS path gives the same results and is several times faster from a few queries up.
BLAS_THRESHOLD = 4


def load_faiss():
    """The faiss module, with the BLAS threshold set."""
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
    faiss = load_faiss()
    ps = faiss.ParameterSpace()
    if kind in ("ivf", "ivfpq") and nprobe:
        ps.set_index_parameter(index, "nprobe", int(nprobe))
    if kind == "hnsw" and ef_search:
        ps.set_index_parameter(index, "efSearch", int(ef_search))


def make_faiss_index(vectors: np.ndarray, ids: np.ndarray, config: IndexConfig):
    """Build the configured IndexIDMap2 (inner product) over `vectors` with FAISS ids `ids`."""
    faiss = load_faiss()
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


def to_device(index, kind: str, device: str | None):
    """(index, device name): the index on the GPU `device` asks for (None: GPU 0 when faiss-gpu sees one),
    else the CPU index; HNSW always stays on the CPU."""
    faiss = load_faiss()
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
