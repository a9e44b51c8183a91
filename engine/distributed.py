"""Many queries over Ray workers, each holding one `Searcher` (e.g. `engine eval cmr --backend ray`).

    from engine.distributed import RaySearchPool, ray_search_queries
    from engine.request import SearchRequest
    req = SearchRequest("any", k=200, lam=5.0, limit=100)          # the settings; each query brings its text
    moments = ray_search_queries("indexes/main", [("q1", "a person jumps"), ...], req)
    with RaySearchPool("indexes/main", num_workers=8, address="auto") as pool:   # several settings, one load
        for k, lam in grid:
            by_query = pool.search(queries, dataclasses.replace(req, k=k, lam=lam))

Each worker is a Ray actor that loads the index, its retrieval model, the localizer and the corpus once
(`Searcher(index_dir, localizer=..., device=...)`) and answers batches of queries with
`searcher.search(request.with_text(text)).moments`; the driver returns them keyed by query id,
in the order of the queries. A worker's results are those of the same Searcher run locally. The index
directory, the corpus it names and the localizer run must be on storage every worker sees.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from engine.corpus.types import Moment
from engine.request import SearchRequest

log = logging.getLogger(__name__)

Queries = Sequence[tuple[str, str]]  # (query id, text)


class SearchWorker:
    """One Searcher per worker process (wrapped as a Ray actor by `RaySearchPool`)."""

    def __init__(self, index_dir: str, localizer: str | None, device: str):
        from indexer.ray_backend import portable_error

        try:
            from engine.search import Searcher

            self.searcher = Searcher(index_dir, localizer=localizer, device=device)
        except Exception as e:  # noqa: BLE001 - reported to the driver as a picklable error
            raise portable_error(e) from None

    def search(self, queries: list[tuple[str, str]], request: SearchRequest) -> list[tuple[str, list[Moment]]]:
        out = []
        for qid, text in queries:
            try:
                out.append((qid, self.searcher.search(request.with_text(text)).moments))
            except Exception as e:  # noqa: BLE001 - reported to the driver as a picklable error
                raise RuntimeError(f"query {qid!r}: {type(e).__name__}: {e}") from None
        return out


def _check_queries(queries: Queries) -> list[tuple[str, str]]:
    qs = [(str(qid), str(text)) for qid, text in queries]
    seen: set[str] = set()
    dup = []
    for qid, _ in qs:
        if qid in seen:
            dup.append(qid)
        seen.add(qid)
    if dup:
        raise ValueError(f"duplicate query ids: {dup[:5]}")
    return qs


class RaySearchPool:
    """`num_workers` Ray actors with a loaded Searcher each, kept across `search` calls; close() (or the
    `with` block) removes them and shuts down a Ray that this pool started."""

    def __init__(self, index_dir: str | Path, localizer: str | Path | None = None, device: str = "cpu",
                 num_workers: int = 2, address: str | None = None, queries_per_task: int | None = None):
        from indexer.ray_backend import RayOptions, ray_session

        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1 (got {num_workers})")
        self.num_workers = int(num_workers)
        self.queries_per_task = queries_per_task
        self._session = ray_session(RayOptions(address=address))
        self.ray = self._session.__enter__()
        try:
            gpus = 1.0 if str(device).startswith("cuda") else 0.0
            # Workers share the CPUs when there are fewer than workers (a pending actor would wait forever).
            cpus = min(1.0, float(self.ray.cluster_resources().get("CPU", 1.0)) / self.num_workers)
            actor = self.ray.remote(num_cpus=cpus, num_gpus=gpus)(SearchWorker)
            loc = str(Path(localizer).resolve()) if localizer is not None else None
            self.actors = [actor.remote(str(Path(index_dir).resolve()), loc, device)
                           for _ in range(self.num_workers)]
        except BaseException:
            self._session.__exit__(None, None, None)
            raise
        log.info("ray search: %d workers (%.2g CPU%s each) over %s", self.num_workers, cpus,
                 ", 1 GPU" if gpus else "", index_dir)

    def search(self, queries: Queries, request: SearchRequest) -> dict[str, list[Moment]]:
        """{query id: moments} in the order of `queries`, as `Searcher.search(request.with_text(text))` gives
        them (the request's own text is not searched)."""
        from ray.util import ActorPool

        from indexer.ray_backend import ray_error

        qs = _check_queries(queries)
        if not qs:
            return {}
        size = self.queries_per_task or max(1, math.ceil(len(qs) / (4 * self.num_workers)))
        tasks = [qs[i:i + size] for i in range(0, len(qs), size)]
        got: dict[str, list[Moment]] = {}
        pool = ActorPool(self.actors)
        try:
            for part in pool.map_unordered(lambda a, t: a.search.remote(t, request), tasks):
                got.update(part)
        except self.ray.exceptions.RayError as e:
            raise RuntimeError(f"ray search failed: {ray_error(e)}") from e
        return {qid: got[qid] for qid, _ in qs}

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            self.ray.kill(a)
        self.actors = []
        self._session.__exit__(None, None, None)

    def __enter__(self) -> RaySearchPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ray_search_queries(index_dir: str | Path, queries: Queries, request: SearchRequest,
                       localizer: str | Path | None = None, device: str = "cpu",
                       num_workers: int = 2, address: str | None = None) -> dict[str, list[Moment]]:
    """Search every (query id, text) on `num_workers` Ray workers: {query id: moments}, equal to running
    `Searcher(index_dir, localizer=localizer, device=device).search(request.with_text(text))` here.

    `address`: None starts a local Ray (or uses the one this process already initialised); 'auto' or
    'ray://HOST:10001' connects to a cluster."""
    queries = _check_queries(queries)  # before any worker starts
    if not queries:
        return {}
    with RaySearchPool(index_dir, localizer=localizer, device=device, num_workers=num_workers,
                       address=address) as pool:
        return pool.search(queries, request)
