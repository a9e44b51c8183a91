"""The batched paths against the plain one (oracle): `Searcher.search_many` and the server's micro-batcher
return exactly the moments that one `search` per request returns, and the result cache returns them
again without searching, per index version."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.request import SearchRequest

REQS = [
    SearchRequest("kung fu pose", k=8, limit=5),
    SearchRequest("a person waves the right hand", k=12, limit=10, r_mode="motion"),
    SearchRequest("someone jumps", k=5, limit=3, top_m=1, score="fused", gamma=0.5),
    SearchRequest("a person kicks", k=12, limit=10, min_moment_s=1.0, max_moment_s=5.0, per_motion=1),
    SearchRequest("a person sits down", k=12, limit=4, prune=False, nms_iou=0.3),
    SearchRequest("kung fu pose", k=3, limit=20, lam=10.0),
]


def _key(res):
    return [(m.motion_id, m.start_s, m.end_s, m.rank, m.label) for m in res.moments]


def _same(a, b):
    assert _key(a) == _key(b)
    assert [m.score for m in a.moments] == pytest.approx([m.score for m in b.moments], rel=1e-5)
    assert a.k == b.k and a.localized == b.localized


def test_search_many_equals_one_search_per_request(searcher):
    plain = [searcher.search(r) for r in REQS]
    many = searcher.search_many(REQS)
    assert len(many) == len(REQS)
    for a, b, req in zip(many, plain, REQS):
        assert a.request is req
        _same(a, b)
    assert searcher.search_many([]) == []


def test_micro_batcher_under_concurrency_equals_sequential(searcher):
    from engine.serve.batcher import MicroBatcher

    plain = {r: searcher.search(r) for r in REQS}
    batcher = MicroBatcher(searcher, window_s=0.05, max_batch=8, cache_size=0)
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(batcher.search, REQS * 3))
        for res in got:
            _same(res, plain[res.request])
            assert not res.cached
        assert batcher.batched_requests == len(REQS) * 3 and batcher.batches < len(REQS) * 3  # batches formed
    finally:
        batcher.close()


def test_result_cache_hits_and_is_keyed_by_index_version(searcher, monkeypatch):
    from engine.serve.batcher import MicroBatcher

    batcher = MicroBatcher(searcher, window_s=0.0, cache_size=2)
    try:
        first = batcher.search(REQS[0])
        again = batcher.search(dataclasses.replace(REQS[0]))
        assert again.cached and not first.cached and _key(again) == _key(first)
        assert batcher.batches == 1
        monkeypatch.setattr(searcher.index.manifest, "version", "another-version")
        assert not batcher.search(REQS[0]).cached and batcher.batches == 2
        batcher.search(REQS[1])
        batcher.search(REQS[2])  # the cache holds 2: REQS[0] on this version is evicted
        assert not batcher.search(REQS[0]).cached
    finally:
        batcher.close()


def test_errors_reach_every_waiting_caller(searcher):
    from engine.serve.batcher import MicroBatcher

    class Broken:
        index = searcher.index

        def search_many(self, reqs):
            raise RuntimeError("boom")

    batcher = MicroBatcher(Broken(), cache_size=0)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.search(REQS[0])
    finally:
        batcher.close()
