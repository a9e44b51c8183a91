""""More like this": query by example. The moments of the corpus most similar to a span of a motion.

`search_like(searcher, LikeRequest(motion_id, start_s, end_s))` is the one function the CLI
(`engine search --like MOTION:START-END`) and the HTTP API (`POST /search`) call. The query is the
retrieval model's embedding of the span's features (its central 10 s when longer: the model is trained on
2-10 s crops), and the ranking is the sliding-window machinery of text search's baseline:

1. FAISS: the top-k motions by their best chunk's similarity to the span embedding (`ChunkIndex.motion_best`);
   the example's own motion is left out unless `include_self`;
2. each of these motions is represented by its windows (`engine.windows.WindowBank`: the index's 10 s chunks
   plus 2, 4 and 6 s windows; only the best `refine` motions get the short windows, the others their
   chunks alone), each scored by its similarity to the span embedding; a window of the example's motion
   that overlaps the example by IoU >= `self_iou` is never returned;
3. within a motion, near-duplicates are dropped and at most `per_motion` kept (`engine.search.dedup_motion`,
   as text search does); the best `limit` moments overall are returned, ranked by that similarity.

The MLP localizer is not used: it is conditioned on a text, and an example span has none. So a moment's
`score` and `r` are both its window's similarity to the example, and `p_se` is 1 (no localizer term).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from dataclasses import dataclass

import numpy as np

from engine.corpus.types import Moment
from engine.request import LikeRequest
from engine.search import Searcher, SearchResult, dedup_motion
from engine.windows import WindowBank, span_window

log = logging.getLogger(__name__)

WINDOW_SIZES_S = (2.0, 4.0, 6.0)  # the short windows besides the index's 10 s chunks


@dataclass
class LikeResult(SearchResult):
    """A SearchResult whose request is a LikeRequest; its JSON also says which span was the example."""

    def to_dict(self) -> dict:
        d = super().to_dict()
        q = self.request
        d["like"] = {"motion_id": q.motion_id, "start_s": q.start_s, "end_s": q.end_s,
                     "include_self": q.include_self}
        return d


class LikeSearcher:
    """"More like this" over one Searcher (its index, retrieval model and corpus), with the windows of the
    motions it has seen embedded once (a plain dict: one per thread, or a lock, as for the Searcher)."""

    def __init__(self, searcher: Searcher, window_sizes_s: tuple[float, ...] = WINDOW_SIZES_S):
        self.searcher = searcher
        self.bank = WindowBank(searcher.index, searcher.retrieval, searcher.store, searcher.motions,
                               window_sizes_s)

    def embed(self, req: LikeRequest) -> np.ndarray:
        """The (d,) unit embedding of the example span (checked against its motion first)."""
        s = self.searcher
        req.check_span(s.motions)
        info = s.motions[req.motion_id]
        window = span_window(np.asarray(s.store.features(req.motion_id)), float(info.fps), req.start_s,
                             req.end_s, float(s.retrieval.config.fps))
        return s.retrieval.encode_motion([window])[0]

    def search(self, req: LikeRequest) -> LikeResult:
        """The moments most similar to the example span, best first (see the module's docstring)."""
        from engine.corpus.spans import temporal_iou

        if not isinstance(req, LikeRequest):
            raise TypeError(f"LikeSearcher.search takes a LikeRequest (got {type(req).__name__})")
        s = self.searcher
        t0 = time.perf_counter()
        q = self.embed(req)
        t1 = time.perf_counter()
        n_motions = max(1, len(s.motions))
        k = min(req.k, n_motions)
        want = min(k + (0 if req.include_self else 1), n_motions)  # room for the example's own motion
        hits = s.index.motion_best(q[None], k_motions=want)[0]
        ids = [int(m) for m in hits.motion_ids.tolist()
               if int(m) in s.motions and (req.include_self or int(m) != req.motion_id)][:k]
        t2 = time.perf_counter()
        cands: list[tuple[tuple[float, int, float], Moment]] = []
        for order, mid in enumerate(ids):
            if order < req.refine:
                spans, sim = self.bank.similarity(mid, q)
            else:
                spans, vecs = s.index.motion_chunks(mid)
                sim = vecs @ q
            mine = []
            for (a, b), x in zip(spans.tolist(), sim.tolist()):
                if (mid == req.motion_id and req.self_iou is not None
                        and temporal_iou(a, b, req.start_s, req.end_s) >= req.self_iou):
                    continue  # the example itself
                m = Moment(motion_id=mid, start_s=float(a), end_s=float(b), score=float(x), p_se=1.0, r=float(x))
                mine.append(((-m.score, order, m.start_s), m))
            cands.extend(dedup_motion(mine, req.dedup_iou, req.per_motion))
        t3 = time.perf_counter()
        cands.sort(key=lambda c: c[0])
        moments = [s.describe(dataclasses.replace(m, rank=i))
                   for i, (_, m) in enumerate(cands[: req.limit], 1)]
        t4 = time.perf_counter()
        return LikeResult(request=req, moments=moments, k=len(ids), localized=0,  # type: ignore[arg-type]
                          timings_s={"embed_motion": t1 - t0, "retrieve": t2 - t1, "windows": t3 - t2,
                                     "rank": t4 - t3})


_LIKE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Searcher -> its LikeSearcher


def like_searcher(searcher: Searcher) -> LikeSearcher:
    """The LikeSearcher of a Searcher (made on first use, kept as long as the Searcher)."""
    ls = _LIKE.get(searcher)
    if ls is None:
        ls = _LIKE[searcher] = LikeSearcher(searcher)
    return ls


def search_like(searcher: Searcher, req: LikeRequest) -> LikeResult:
    """"More like this": the moments most similar to `req`'s span (see the module's docstring)."""
    return like_searcher(searcher).search(req)
