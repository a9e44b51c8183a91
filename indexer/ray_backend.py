"""The index build's embed stage on Ray Data: chunk records -> `map_batches(ChunkEmbedder)` -> vectors.

    from indexer.build import build_index
    from indexer.ray_backend import RayEmbedBackend, RayOptions
    build_index(corpus, "indexes/main", model, embed_backend=RayEmbedBackend(RayOptions(address="auto")))

The dataset holds one small record per chunk (block, chunk_id, motion_id, frame range, fps), never the
features: each worker is a `ChunkEmbedder` actor that loads the version's `model.pt` once (checked
against the build's model fingerprint), opens the corpus store itself and reads the motions' features
there. So the index directory and the corpus (directory and database) must be on storage every worker
sees, and the `indexer` package must be importable on every node. The driver gathers the vectors,
re-assembles each block in chunk order and hands it to the build, which writes it: resuming, the files
and the published index are those of a local build (same chunk ids; vectors equal up to the float
rounding of a different batching).

Ray is an optional extra, imported only when this backend runs: `pip install 'motion-search-engine[ray]'`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.chunks import ChunkSpan
from indexer.embed import EmbedBackend, EmbedJob, embed_chunks, feature_reader

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'motion-search-engine[ray]'"
BACKENDS = ("local", "ray")


class RayUnavailable(RuntimeError):
    """Ray (with Ray Data) is not installed."""


def require_ray():
    """The `ray` module with Ray Data loaded, or RayUnavailable naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data comes with the ray[data] extra
    except ImportError as e:
        raise RayUnavailable(f"the ray backend needs Ray with Ray Data ({e}); install it with: {INSTALL_HINT}") from e
    return ray


@dataclass
class RayOptions:
    """Where and how wide Ray jobs run."""

    address: str | None = None  # None: a local Ray started for the job; "auto" / "ray://host:10001": a cluster
    num_cpus: int | None = None  # CPUs of the local Ray started here (None: all); ignored with `address`
    num_workers: int | None = None  # workers (None: the cluster's CPUs / cpus_per_worker)
    cpus_per_worker: float = 1.0
    rows_per_task: int | None = None  # chunks per map_batches call (None: 4 encoder batches, fewer on small jobs)
    object_store_memory: int | None = None  # bytes, local Ray only (None: Ray's default)


@contextmanager
def ray_session(options: RayOptions | None = None) -> Iterator[Any]:
    """The `ray` module, connected: an already initialised Ray is used as it is; otherwise Ray is started
    (or, with `options.address`, connected to a cluster) and shut down on exit."""
    options = options or RayOptions()
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if options.address:
            log.info("connecting to the Ray cluster at %s", options.address)
            ray.init(address=options.address, log_to_driver=False)
        else:
            ray.init(num_cpus=options.num_cpus, include_dashboard=False, log_to_driver=False,
                     object_store_memory=options.object_store_memory)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError ... from ray.init
        where = f"connect to the Ray cluster at {options.address}" if options.address else "start a local Ray"
        hint = (" (is it running? `ray status`; a cluster with token authentication also needs "
                "RAY_AUTH_MODE=token and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)") if options.address else ""
        raise RuntimeError(f"could not {where}: {type(e).__name__}: {e}{hint}") from e
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_error(e: BaseException) -> str:
    """The user-level message of an exception raised in a Ray worker (without Ray's wrapping)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, RuntimeError) and type(cause) is RuntimeError:
        return str(cause)  # a portable_error: already "Type: message"
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = str(e).strip().splitlines()  # e.g. ActorDiedError: Ray's text, then the worker's traceback
    return lines[-1] if len(lines) > 1 else f"{type(e).__name__}: {e}"


def portable_error(e: BaseException) -> RuntimeError:
    """A plain RuntimeError carrying a worker's exception type and message, so any exception (including ones
    from third-party code that does not pickle) reaches the driver readably."""
    return RuntimeError(f"{type(e).__name__}: {e}")


def _worker_device(model) -> tuple[str, float]:
    """(device string, GPUs per worker) for workers of a model that lives on `model.device`."""
    dev = getattr(model, "device", None)
    if dev is not None and getattr(dev, "type", "cpu") == "cuda":
        return "cuda", 1.0
    return "cpu", 0.0


class ChunkEmbedder:
    """A Ray Data callable class: loads the retrieval model and opens the corpus once per worker, then maps
    batches of chunk records {block, chunk_id, motion_id, chunk_index, start_frame, end_frame, start_s,
    end_s, fps} to {block, chunk_id, vector (n, embed_dim) float32}."""

    def __init__(self, model_path: str, model_fingerprint: str, corpus: dict[str, Any], batch_size: int,
                 dtype: str, device: str = "cpu"):
        try:
            self._load(model_path, model_fingerprint, corpus, device)
        except Exception as e:  # noqa: BLE001 - reported to the driver as a picklable error
            raise portable_error(e) from None
        self.batch_size = int(batch_size)
        self.dtype = dtype

    def _load(self, model_path: str, model_fingerprint: str, corpus: dict[str, Any], device: str) -> None:
        from engine.corpus.store import CorpusStore
        from engine.corpus.types import CorpusError
        from indexer.model import RetrievalModel

        self.model = RetrievalModel.load(model_path, device=device)
        if self.model.fingerprint() != model_fingerprint:
            raise CorpusError(model_path, "model fingerprint differs from the build's model (stale version dir?)")
        self.store = CorpusStore.open(corpus["dir"], url=corpus.get("url"), create=False)
        self.features_of = feature_reader(self.store)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._embed(batch)
        except Exception as e:  # noqa: BLE001 - reported to the driver as a picklable error
            raise portable_error(e) from None

    def _embed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spans = [ChunkSpan(int(m), int(i), int(a), int(b), float(s), float(e))
                 for m, i, a, b, s, e in zip(batch["motion_id"], batch["chunk_index"], batch["start_frame"],
                                             batch["end_frame"], batch["start_s"], batch["end_s"])]
        ids = np.array([c.chunk_id for c in spans], np.int64)
        if not np.array_equal(ids, batch["chunk_id"]):
            raise ValueError("chunk records: chunk_id does not match motion_id / chunk_index")
        fps = {int(m): float(f) for m, f in zip(batch["motion_id"], batch["fps"])}
        vecs = embed_chunks(self.model, spans, fps, self.features_of, self.batch_size, self.dtype)  # (n, E)
        return {"block": np.asarray(batch["block"], np.int64), "chunk_id": ids, "vector": vecs}


def chunk_records(job: EmbedJob):
    """A pyarrow table with one row per chunk of the job's blocks, in block then chunk_id order."""
    import pyarrow as pa

    rows = [(k, c) for k, block in job.blocks for c in block]
    col = {
        "block": [k for k, _ in rows], "chunk_id": [c.chunk_id for _, c in rows],
        "motion_id": [c.motion_id for _, c in rows], "chunk_index": [c.chunk_index for _, c in rows],
        "start_frame": [c.start_frame for _, c in rows], "end_frame": [c.end_frame for _, c in rows],
    }
    table = {k: pa.array(v, pa.int64()) for k, v in col.items()}
    table["start_s"] = pa.array([c.start_s for _, c in rows], pa.float64())
    table["end_s"] = pa.array([c.end_s for _, c in rows], pa.float64())
    table["fps"] = pa.array([job.motion_fps[c.motion_id] for _, c in rows], pa.float64())
    return pa.table(table)


class RayEmbedBackend(EmbedBackend):
    """Embeds the build's chunks with Ray Data `map_batches` over a pool of `ChunkEmbedder` actors."""

    name = "ray"

    def __init__(self, options: RayOptions | None = None):
        self.options = options or RayOptions()

    def embed_blocks(self, job: EmbedJob) -> Iterator[tuple[int, np.ndarray]]:
        require_ray()  # fail before any work when Ray is missing
        with ray_session(self.options) as ray:
            yield from self._run(ray, job)

    def _plan(self, ray, n: int, batch_size: int, gpus_per_worker: float) -> tuple[int, int]:
        """(workers, rows per task) for n chunks on the connected cluster."""
        o = self.options
        res = ray.cluster_resources()
        workers = o.num_workers or max(1, int(res.get("CPU", 1) // max(o.cpus_per_worker, 1e-9)))
        if gpus_per_worker:
            workers = min(workers, max(1, int(res.get("GPU", 1))))
        rows = o.rows_per_task or max(1, min(4 * batch_size, math.ceil(n / (4 * workers))))
        return max(1, min(workers, math.ceil(n / rows))), rows

    def _run(self, ray, job: EmbedJob) -> Iterator[tuple[int, np.ndarray]]:
        table = chunk_records(job)
        n = table.num_rows
        device, gpus = _worker_device(job.model)
        workers, rows = self._plan(ray, n, job.batch_size, gpus)
        log.info("ray embed: %d chunks, %d workers (%g CPU%s each), %d chunks per task", n, workers,
                 self.options.cpus_per_worker, f", {gpus:g} GPU" if gpus else "", rows)
        ds = ray.data.from_arrow([table.slice(i, rows) for i in range(0, n, rows)])
        ds = ds.map_batches(
            ChunkEmbedder, batch_size=None, batch_format="numpy",
            fn_constructor_kwargs={"model_path": str(Path(job.model_path).resolve()),
                                   "model_fingerprint": job.model_fingerprint, "corpus": job.corpus,
                                   "batch_size": job.batch_size, "dtype": job.dtype, "device": device},
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=self.options.cpus_per_worker,
            num_gpus=gpus or None)
        ds.context.enable_progress_bars = False  # the build reports progress per block
        want = {k: np.array([c.chunk_id for c in block], np.int64) for k, block in job.blocks}
        got: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in want}
        count = dict.fromkeys(want, 0)
        try:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                blocks = np.asarray(out["block"])
                vecs = np.asarray(out["vector"], np.float32)  # (n, E)
                for k in np.unique(blocks).tolist():
                    sel = blocks == k
                    got[k].append((np.asarray(out["chunk_id"])[sel], vecs[sel]))
                    count[k] += int(sel.sum())
                    if count[k] == len(want[k]):
                        yield k, self._assemble(k, got.pop(k), want[k])
        except (ray.exceptions.RayError, ray.data.exceptions.RayDataUserCodeException) as e:
            raise RuntimeError(f"ray embed stage failed: {ray_error(e)}") from e
        if got:
            raise RuntimeError(f"ray embed stage: blocks {sorted(got)[:10]} came back incomplete")

    @staticmethod
    def _assemble(k: int, parts: list[tuple[np.ndarray, np.ndarray]], want: np.ndarray) -> np.ndarray:
        ids = np.concatenate([p[0] for p in parts])
        vecs = np.concatenate([p[1] for p in parts])  # (n, E)
        order = np.argsort(ids, kind="stable")
        if not np.array_equal(ids[order], want):
            raise RuntimeError(f"ray embed stage: block {k} came back with other chunk ids than were sent")
        return np.ascontiguousarray(vecs[order])


def make_backend(backend: str, options: RayOptions | None = None) -> EmbedBackend | None:
    """The embed backend for a `--backend` name: None (this process) for 'local', RayEmbedBackend for 'ray'."""
    if backend == "local":
        return None
    if backend == "ray":
        require_ray()
        return RayEmbedBackend(options)
    raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
