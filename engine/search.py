"""Corpus-level moment retrieval: text -> FAISS top chunks -> top-k motions -> MLP localizer -> ranked moments.

`Searcher(index_dir).search("kung fu pose", k=200, lam=5.0, limit=10)` is the one function the CLI (and
HTTP) call. The ranking score of a moment is `p_se * exp(lam * r)` where `r` is the motion's best chunk
similarity and `p_se` the localizer's joint start/end probability.

Exact top-n pruning: because `p_se <= 1`, a motion whose `exp(lam * r)` is below the n-th best score
found so far cannot enter the top n. Motions are localized in order of decreasing r, in batches, and the
loop stops when no remaining motion can enter. The result equals localizing all k motions (oracle test).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.corpus.types import Moment

if TYPE_CHECKING:
    from indexer.index import ChunkIndex

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 512
R_MODES = ("motion", "moment")


@dataclass
class Candidate:
    """A moment before it becomes a `Moment`: motion rank in the r order, span, probabilities."""

    motion_id: int
    start_s: float
    end_s: float
    p_se: float
    r: float
    score: float
    order: int  # position of the motion in the r-sorted list (tie-break)


@dataclass
class RankStats:
    """What the ranking loop did: how many of the k motions it localized, and in how many batches."""

    k: int
    localized: int
    batches: int
    pruned: bool


# A localize function: motion ids (a batch) -> for each, a list of (start_s, end_s, p_se) or
# (start_s, end_s, p_se, r_moment) where the moment carries its own retrieval similarity r_moment <= r.
LocalizeFn = Callable[[Sequence[int]], list[list[tuple[float, ...]]]]


def rank_moments(
    motion_ids: Sequence[int],
    r: Sequence[float],
    localize: LocalizeFn,
    lam: float,
    limit: int | None,
    batch_size: int = 32,
    prune: bool = True,
    keep: Callable[[int, float, float], bool] | None = None,
) -> tuple[list[Candidate], RankStats]:
    """Score the moments of motions (sorted by decreasing r) and return the best `limit` of them.

    `keep(motion_id, start_s, end_s)` filters candidate moments (e.g. by length). With `prune`, the loop
    stops as soon as `exp(lam * r_next) < n-th best score`: since p_se <= 1 (and a moment's own r, when
    `localize` gives one, is at most its motion's r) nothing after can enter.
    Ties are broken by the motion's r order, then by start time, so pruned and exhaustive runs agree.
    """
    r = np.asarray(r, dtype=np.float64)
    if len(r) > 1 and np.any(np.diff(r) > 1e-12):
        raise ValueError("rank_moments: motions must be sorted by decreasing r")
    cands: list[Candidate] = []
    kth = -math.inf
    localized = batches = 0
    for b0 in range(0, len(motion_ids), batch_size):
        if prune and limit is not None and len(cands) >= limit and math.exp(lam * r[b0]) < kth:
            break
        ids = list(motion_ids[b0: b0 + batch_size])
        spans = localize(ids)
        batches += 1
        localized += len(ids)
        for j, (mid, moments) in enumerate(zip(ids, spans)):
            r_motion = float(r[b0 + j])
            for start_s, end_s, p_se, *rest in moments:
                if keep is not None and not keep(mid, start_s, end_s):
                    continue
                # A moment's own r never exceeds its motion's (the bound above relies on it).
                r_used = min(float(rest[0]), r_motion) if rest else r_motion
                cands.append(Candidate(int(mid), float(start_s), float(end_s), float(p_se), r_used,
                                       float(p_se) * math.exp(lam * r_used), b0 + j))
        cands.sort(key=lambda c: (-c.score, c.order, c.start_s))
        if limit is not None:
            del cands[limit:]
            if len(cands) >= limit:
                kth = cands[-1].score
    return cands, RankStats(k=len(motion_ids), localized=localized, batches=batches, pruned=prune)


@dataclass
class SearchResult:
    query: str
    moments: list[Moment]
    k: int
    lam: float
    localized: int
    timings_s: dict[str, float] = field(default_factory=dict)


def validate_query(text: str) -> str:
    if text is None or not text.strip():
        raise ValueError("empty query: type what the motion should show, e.g. \"kung fu pose\"")
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    return text.strip()


class Searcher:
    """Loads an index (verified), its retrieval model, the localizer and the corpus once; answers queries.

    Caches (encoded motions, labels, the localizer's text LRU) are plain dicts: serve concurrent
    requests with one Searcher per worker or a lock around `search`.
    """

    def __init__(self, index_dir: str | Path | ChunkIndex, localizer: str | Path | None = None,
                 corpus: str | Path | None = None, device: str = "cpu", bf16: bool = False):
        from engine.corpus.store import CorpusStore
        from engine.home import default_localizer_path
        from indexer.index import ChunkIndex, open_index
        from localizer.infer import Localizer

        if isinstance(index_dir, ChunkIndex):  # opened (and its files checked) by the caller
            self.index = index_dir
        else:
            self.index = open_index(index_dir, device=device)  # checksums verified before FAISS reads
        self.index_dir = self.index.index_dir
        man = self.index.manifest
        self.retrieval = self.index.load_model(device=device)
        # The localizer: the caller's, else the one the index was built with, else the shipped one.
        if localizer is not None:
            loc_path = Path(localizer)
        elif man.localizer is not None and Path(man.localizer.path).exists():
            loc_path = Path(man.localizer.path)
        else:
            if man.localizer is not None:
                log.warning("%s: the index's localizer %s is gone; using the shipped one", self.index_dir,
                            man.localizer.path)
            loc_path = default_localizer_path()
        self.localizer = Localizer.load(loc_path, device=device, bf16=bf16)
        # The index caches the localizer's query-independent motion encoding when built with the same
        # checkpoint (its tag is the checkpoint's sha256); otherwise motions are encoded on first use.
        index_loc = man.localizer.sha256 if man.localizer is not None else man.motion_feature_tag
        self.localizer_matches_index = index_loc is not None and index_loc == self.localizer.fingerprint()
        if index_loc is not None and not self.localizer_matches_index:
            log.warning("%s: localizer %s differs from the one the index was built with (%s); its cached motion "
                        "encoding is not used, motions are encoded on first use", self.index_dir, loc_path,
                        man.localizer.path if man.localizer is not None else f"sha256 {index_loc[:12]}")
        self.use_cache = self.localizer_matches_index and man.motion_feature_tag is not None
        if corpus is None:
            corpus, url = man.corpus.get("dir"), man.corpus.get("url")
        else:
            url = None
        self.store = CorpusStore.open(corpus, url=url, create=False)
        self.meta = {row["motion_id"]: row for row in self.store.motion_table()}
        self._encoded: dict[int, object] = {}
        self._labels: dict[int, list] = {}

    # ------------------------------------------------------------------ helpers
    def moment_r(self, query_vec: np.ndarray, motion_id: int, start_s: float, end_s: float) -> float:
        """The best similarity to `query_vec` among the motion's chunks that cover the moment: overlap at least
        half of the shorter of chunk and moment (the chunk nearest the moment if none does)."""
        spans, vecs = self.index.motion_chunks(motion_id)
        sim = vecs @ query_vec  # (C,)
        inter = np.clip(np.minimum(spans[:, 1], end_s) - np.maximum(spans[:, 0], start_s), 0.0, None)
        shorter = np.maximum(np.minimum(spans[:, 1] - spans[:, 0], end_s - start_s), 1e-9)
        cover = inter / shorter >= 0.5
        if not cover.any():
            cover = inter == inter.max()
        return float(sim[cover].max())

    def _encoded_motions(self, motion_ids: Sequence[int]):
        from localizer.infer import EncodedMotion

        missing = [m for m in motion_ids if m not in self._encoded]
        if self.use_cache:
            for m in missing:
                cached = self.index.motion_features(m)
                if cached is not None:
                    self._encoded[m] = EncodedMotion(features=cached, duration_s=self.meta[m]["duration_s"],
                                                     motion_id=m)
        rest = [m for m in missing if m not in self._encoded]
        if rest:
            enc = self.localizer.encode_motions([self.store.features(m) for m in rest],
                                                fps=[self.meta[m]["fps"] for m in rest], motion_ids=rest)
            for m, e in zip(rest, enc):
                self._encoded[m] = e
        return [self._encoded[m] for m in motion_ids]

    def label(self, motion_id: int, start_s: float, end_s: float) -> str | None:
        """The ground-truth annotation that best overlaps the moment (IoU), when the corpus has one."""
        anns = self._labels.get(motion_id)
        if anns is None:
            anns = self._labels[motion_id] = self.store.annotations(motion_id)
        best, best_iou = None, 0.0
        for a in anns:
            inter = max(0.0, min(end_s, a.end_s) - max(start_s, a.start_s))
            union = max(end_s, a.end_s) - min(start_s, a.start_s)
            iou = inter / union if union > 0 else 0.0
            if iou > best_iou:
                best, best_iou = a.text, iou
        return best

    # ------------------------------------------------------------------ search
    def search(self, text: str, k: int = 200, lam: float = 5.0, limit: int | None = 10, top_m: int = 3,
               nms_iou: float = 0.5, batch_size: int = 32, prune: bool = True, sources: Sequence[str] | None = None,
               min_motion_s: float | None = None, max_motion_s: float | None = None,
               min_moment_s: float | None = None, max_moment_s: float | None = None,
               r_mode: str = "motion") -> SearchResult:
        """Ranked moments for `text`. Score = p_se * exp(lam * r); `r_mode` picks r:

        - "motion" (the paper): r = the motion's best chunk similarity, shared by all its moments;
        - "moment": r = the best similarity among the chunks that cover the moment (at least half of the
          shorter of chunk and moment), so a moment localized away from the matching chunk ranks lower.
          It is never above the motion's r, so pruning stays exact."""
        text = validate_query(text)
        if r_mode not in R_MODES:
            raise ValueError(f"r_mode must be one of {', '.join(R_MODES)} (got {r_mode!r})")
        if k <= 0:
            raise ValueError(f"k must be positive (got {k})")
        if limit is not None and limit <= 0:
            raise ValueError(f"limit must be positive (got {limit})")
        t = {}
        t0 = time.perf_counter()
        q = self.retrieval.encode_text([text])  # (1, d)
        t["embed_text"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        filtered = bool(sources or min_motion_s or max_motion_s)
        want = k
        while True:
            hits = self.index.motion_best(q, k_motions=want)[0]
            ids, rs = [], []
            for mid, r in zip(hits.motion_ids.tolist(), hits.r.tolist()):
                row = self.meta.get(mid)
                if row is None:
                    continue
                if sources and row["source"] not in sources:
                    continue
                if min_motion_s is not None and row["duration_s"] < min_motion_s:
                    continue
                if max_motion_s is not None and row["duration_s"] > max_motion_s:
                    continue
                ids.append(mid)
                rs.append(r)
            if not filtered or len(ids) >= k or want >= len(self.meta):
                break
            want = min(want * 4, len(self.meta))
        ids, rs = ids[:k], rs[:k]
        t["retrieve"] = time.perf_counter() - t0

        def keep(_mid: int, s: float, e: float) -> bool:
            d = e - s
            return (min_moment_s is None or d >= min_moment_s) and (max_moment_s is None or d <= max_moment_s)

        t_enc = [0.0]
        t_loc = [0.0]

        def localize(batch: Sequence[int]):
            t1 = time.perf_counter()
            enc = self._encoded_motions(batch)
            t2 = time.perf_counter()
            spans = self.localizer.localize(text, enc, top_m=top_m, nms_iou=nms_iou, batch_size=batch_size)
            t_enc[0] += t2 - t1
            t_loc[0] += time.perf_counter() - t2
            if r_mode == "moment":
                return [[(s.start_s, s.end_s, s.p_se, self.moment_r(q[0], mid, s.start_s, s.end_s)) for s in row]
                        for mid, row in zip(batch, spans)]
            return [[(s.start_s, s.end_s, s.p_se) for s in row] for row in spans]

        use_keep = min_moment_s is not None or max_moment_s is not None
        cands, stats = rank_moments(ids, rs, localize, lam, limit, batch_size=batch_size, prune=prune,
                                    keep=keep if use_keep else None)
        t["motion_encode"] = t_enc[0]
        t["localize"] = t_loc[0]
        t0 = time.perf_counter()
        moments = [Moment(motion_id=c.motion_id, source=self.meta[c.motion_id]["source"], start_s=c.start_s,
                          end_s=c.end_s, score=c.score, p_se=c.p_se, r=c.r,
                          label=self.label(c.motion_id, c.start_s, c.end_s), name=self.meta[c.motion_id]["name"])
                   for c in cands]
        t["rank"] = time.perf_counter() - t0
        return SearchResult(query=text, moments=moments, k=len(ids), lam=lam, localized=stats.localized,
                            timings_s=t)
