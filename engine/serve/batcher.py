"""Micro-batching for the server: requests that arrive within a few milliseconds of each other share one
`Searcher.search_many` call (one text-encoder batch, one localizer pass per round), with one model copy.

    batcher = MicroBatcher(searcher, window_s=0.004, max_batch=16, cache_size=256)
    result = batcher.search(SearchRequest("kung fu pose"))      # from any thread

A small LRU cache keeps recent results, keyed by the request and the index version, so a repeated query is
answered without searching; a new index version never sees an old result. One worker thread runs the
searches (the Searcher's caches are not thread-safe); callers wait on a future.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future

from engine.request import SearchRequest

log = logging.getLogger(__name__)


class MicroBatcher:
    def __init__(self, searcher, window_s: float = 0.004, max_batch: int = 16, cache_size: int = 256,
                 lock: threading.RLock | None = None):
        self.searcher = searcher
        self.window_s = float(window_s)
        self.max_batch = int(max_batch)
        self.cache_size = int(cache_size)
        self.lock = lock or threading.RLock()  # held while searching (shared with other users of the Searcher)
        self._cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="engine-search-batcher", daemon=True)
        self._thread.start()
        self.batches = 0  # how many search_many calls ran, and how many requests they held
        self.batched_requests = 0

    def _version(self) -> str:
        man = getattr(getattr(self.searcher, "index", None), "manifest", None)
        return str(getattr(man, "version", ""))

    def search(self, req: SearchRequest):
        """The request's SearchResult (from the cache when the same request was answered on this index)."""
        key = (self._version(), req)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return dataclasses.replace(hit, cached=True)
        fut: Future = Future()
        self._queue.put((req, fut))
        res = fut.result()
        if self.cache_size > 0:
            with self._cache_lock:
                self._cache[key] = res
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return res

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._serve(batch)

    def _serve(self, batch) -> None:
        reqs = [req for req, _ in batch]
        try:
            with self.lock:
                results = self.searcher.search_many(reqs)
            self.batches += 1
            self.batched_requests += len(reqs)
        except BaseException as e:  # noqa: BLE001 - every waiting caller gets the error
            for _, fut in batch:
                fut.set_exception(e)
            return
        for (_, fut), res in zip(batch, results):
            fut.set_result(res)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)
