"""Corpus-level moment retrieval: text -> FAISS top chunks -> top-k motions -> MLP localizer -> ranked moments.

`Searcher(index).search(SearchRequest("kung fu pose", k=200, lam=5.0, limit=10))` is the one function the
CLI, HTTP, evaluation, Ray and the benches call; `load_searcher` is the one way they open it. The ranking
score of a moment (engine/scoring.py) is the paper's `p_se * exp(lam * r)` (`score="paper"`, the default)
or the fused `p_se ** gamma * exp(lam * r + mu * s)` (`score="fused"`, weights fitted on val, score.json),
where `p_se` is the localizer's joint start/end probability, `r` the retrieval similarity of 10 s chunks: the
motion's best chunk (the paper, `r_mode="motion"`) or the best chunk that covers the moment
(`r_mode="moment"`, never above the motion's), and `s` the moment's own similarity: the window of the
index's window bank (indexer/bank.py; its chunks when it has none) with the best IoU to the span.

Exact top-n pruning: every motion has an upper bound on its moments' scores, `exp(lam * r + mu * s_max)`
(p_se <= 1, a moment's r at most its motion's, s at most the motion's best window s_max, a dot product per
bank window before any localization). Motions are localized in order of decreasing bound, in batches, and
the loop stops when no remaining motion can enter the top n. The result equals localizing all k motions
(oracle tests).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.corpus.types import IndexFileError, ModelError, Moment, MotionInfo, RequestError
from engine.request import SearchRequest
from engine.scoring import ScoreWeights

if TYPE_CHECKING:
    from indexer.index import ChunkIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpanHit:
    """A localized span of one motion; `r` is its own chunk similarity when the r mode gives one (it must not
    exceed the motion's r: the ranking clamps it so that the pruning bound holds); `s` its own window-bank
    similarity when the score uses one (clamped to the motion's s_max likewise)."""

    start_s: float
    end_s: float
    p_se: float
    r: float | None = None
    s: float | None = None


def dedup_motion(cands: list, iou: float | None, cap: int) -> list:
    """One motion's (key, moment) candidates, best first, without near-duplicates: a moment that overlaps
    a kept one by IoU >= `iou`, contains it or lies inside it is dropped; at most `cap` are kept (0: all)."""
    from engine.corpus.spans import temporal_iou

    cands = sorted(cands, key=lambda c: c[0])
    if iou is None and not cap:
        return cands
    kept: list = []
    for key, m in cands:
        if cap and len(kept) >= cap:
            break
        dup = iou is not None and any(
            temporal_iou(m.start_s, m.end_s, k.start_s, k.end_s) >= iou
            or (m.start_s <= k.start_s and k.end_s <= m.end_s) or (k.start_s <= m.start_s and m.end_s <= k.end_s)
            for _, k in kept)
        if not dup:
            kept.append((key, m))
    return kept


@dataclass
class RankStats:
    """What the ranking loop did: how many of the k motions it localized, and in how many batches."""

    k: int
    localized: int
    batches: int
    pruned: bool


# A localize function: motion ids (a batch) -> for each motion, its candidate spans.
LocalizeFn = Callable[[Sequence[int]], Sequence[Sequence[SpanHit]]]


class Ranker:
    """The ranking loop of one query as a resumable state machine, so that several queries can share each
    localizer pass (`Searcher.search_many`, the server's micro-batches): `next_batch()` names the motions to
    localize next (None when done: all localized, or pruned), `add(ids, spans)` takes their spans.
    `rank_moments` drives one Ranker alone; the result is the same either way. With `growth` > 1 each
    batch is that much larger than the one before (the fast path's few large passes); the moments are the
    same for any batch sizes, only how many motions get localized before the pruning stops differs.

    Score (engine/scoring.py): `weights.score(p_se, r, s)`. Every motion has an upper bound
    `weights.bound(r, s_max)` (`s_max`: its best window-bank similarity, needed when weights.mu > 0); motions
    are localized in order of decreasing bound (for the paper's score, decreasing r), and the loop stops when
    the next bound is below the n-th best score: nothing after can enter, so the result equals localizing all."""

    def __init__(self, motion_ids: Sequence[int], r: Sequence[float], lam: float | None, limit: int | None,
                 batch_size: int = 32, prune: bool = True, keep: Callable[[int, float, float], bool] | None = None,
                 gamma: float = 1.0, dedup_iou: float | None = None, per_motion: int = 0,
                 weights: ScoreWeights | None = None, s_max: Sequence[float] | None = None,
                 growth: float = 1.0):
        r = np.asarray(r, dtype=np.float64)
        if len(r) > 1 and np.any(np.diff(r) > 1e-12):
            raise ValueError("rank_moments: motions must be sorted by decreasing r")
        self.weights = weights if weights is not None else ScoreWeights(lam=float(lam), gamma=gamma, mu=0.0)
        ids = list(motion_ids)
        if self.weights.uses_span:
            if s_max is None or len(s_max) != len(ids):
                raise ValueError("rank_moments: a score with mu > 0 needs every motion's s_max")
            s_max = np.asarray(s_max, dtype=np.float64)
            bound = np.array([self.weights.bound(ri, si) for ri, si in zip(r, s_max)])
            order = np.argsort(-bound, kind="stable")
            ids, r, s_max, bound = [ids[i] for i in order], r[order], s_max[order], bound[order]
        else:
            s_max = None
            bound = np.array([self.weights.bound(ri) for ri in r])
        self.motion_ids, self.r, self.s_max, self.bound = ids, r, s_max, bound
        self.lam = self.weights.lam
        self.limit, self.batch_size, self.prune, self.keep = limit, batch_size, prune, keep
        self.dedup_iou, self.per_motion = dedup_iou, per_motion
        if growth < 1.0:
            raise ValueError(f"Ranker: growth must be >= 1, got {growth}")
        self.growth = growth  # batch i holds batch_size * growth**i motions (fewer, larger localizer passes)
        self.cands: list[tuple[tuple[float, int, float], Moment]] = []  # ((-score, bound order, start), moment)
        self.kth = -math.inf
        self.b0 = 0
        self.localized = self.batches = 0

    def next_batch(self) -> list[int] | None:
        if self.b0 >= len(self.motion_ids):
            return None
        if (self.prune and self.limit is not None and len(self.cands) >= self.limit
                and self.bound[self.b0] < self.kth):
            return None
        size = max(1, int(round(self.batch_size * self.growth ** self.batches)))
        return self.motion_ids[self.b0: self.b0 + size]

    def add(self, ids: Sequence[int], spans: Sequence[Sequence[SpanHit]]) -> None:
        b0 = self.b0
        if list(ids) != self.motion_ids[b0: b0 + len(ids)]:
            raise ValueError("Ranker.add: spans of other motions than next_batch() named")
        self.b0 += len(ids)
        self.batches += 1
        self.localized += len(ids)
        w = self.weights
        for j, (mid, hits) in enumerate(zip(ids, spans)):
            r_motion = float(self.r[b0 + j])
            s_top = float(self.s_max[b0 + j]) if self.s_max is not None else None
            mine: list[tuple[tuple[float, int, float], Moment]] = []
            for h in hits:
                if self.keep is not None and not self.keep(mid, h.start_s, h.end_s):
                    continue
                # A moment's own r (s) never exceeds its motion's r (s_max): the bound above relies on it.
                r_used = min(float(h.r), r_motion) if h.r is not None else r_motion
                s_used = None
                if s_top is not None:
                    if h.s is None:
                        raise ValueError(f"Ranker.add: motion {mid}: a score with mu > 0 needs each span's s")
                    s_used = min(float(h.s), s_top)
                score = w.score(h.p_se, r_used, s_used)
                m = Moment(motion_id=int(mid), start_s=float(h.start_s), end_s=float(h.end_s), score=score,
                           p_se=float(h.p_se), r=r_used, s=s_used)
                mine.append(((-score, b0 + j, m.start_s), m))
            self.cands.extend(dedup_motion(mine, self.dedup_iou, self.per_motion))
        self.cands.sort(key=lambda c: c[0])
        if self.limit is not None:
            del self.cands[self.limit:]
            if len(self.cands) >= self.limit:
                self.kth = -self.cands[-1][0][0]

    def result(self) -> tuple[list[Moment], RankStats]:
        ranked = [dataclasses.replace(m, rank=i) for i, (_, m) in enumerate(self.cands, 1)]
        return ranked, RankStats(k=len(self.motion_ids), localized=self.localized, batches=self.batches,
                                 pruned=self.prune)


def rank_moments(
    motion_ids: Sequence[int],
    r: Sequence[float],
    localize: LocalizeFn,
    lam: float | None,
    limit: int | None,
    batch_size: int = 32,
    prune: bool = True,
    keep: Callable[[int, float, float], bool] | None = None,
    gamma: float = 1.0,
    dedup_iou: float | None = None,
    per_motion: int = 0,
    weights: ScoreWeights | None = None,
    s_max: Sequence[float] | None = None,
) -> tuple[list[Moment], RankStats]:
    """Score the moments of motions (sorted by decreasing r) and return the best `limit` of them, ranked.

    Score = p_se ** gamma * exp(lam * r) (gamma = 1: the paper's), or `weights.score(p_se, r, s)` with
    `weights` (engine/scoring.py; with mu > 0 every motion's `s_max` and every span's `s` are needed, and
    motions are localized by decreasing bound). `keep(motion_id, start_s, end_s)`
    filters candidate moments (e.g. by length). Within a motion, a moment that overlaps a better one by
    IoU >= `dedup_iou`, or contains it or lies inside it, is dropped, and at most `per_motion` are kept
    (0: all). With `prune`, the loop stops as soon as `exp(lam * r_next) < n-th best score`: since
    p_se ** gamma <= 1 (and a moment's own r is at most its motion's r) nothing after can enter; the
    de-duplication only compares moments of one motion, so it cannot change that bound.
    Ties are broken by the motion's r order, then by start time, so pruned and exhaustive runs agree.
    The moments carry motion id, span, scores and rank; the caller fills in the motion's name and label.
    """
    ranker = Ranker(motion_ids, r, lam, limit, batch_size=batch_size, prune=prune, keep=keep, gamma=gamma,
                    dedup_iou=dedup_iou, per_motion=per_motion, weights=weights, s_max=s_max)
    while (ids := ranker.next_batch()) is not None:
        ranker.add(ids, localize(ids))
    return ranker.result()


@dataclass
class SearchResult:
    """The ranked moments of one request, with what the search did (k used, motions localized, timings)."""

    request: SearchRequest
    moments: list[Moment]
    k: int
    localized: int
    timings_s: dict[str, float] = field(default_factory=dict)
    cached: bool = False  # answered from a result cache (the server's), not searched again
    weights: ScoreWeights | None = None  # the score's weights as used (fused: fitted, or the request's)

    @property
    def query(self) -> str:
        return self.request.text

    @property
    def lam(self) -> float:
        return self.weights.lam if self.weights is not None else self.request.lam

    def to_dict(self) -> dict:
        """The JSON form the CLI (`--json`) and the HTTP API share."""
        q = self.request
        d = {"query": q.text, "k": self.k, "lam": self.lam, "r": q.r_mode, "score": q.score, "limit": q.limit,
             "localized": self.localized, "cached": self.cached, "moments": [m.to_dict() for m in self.moments],
             "timings_s": {kk: round(v, 6) for kk, v in self.timings_s.items()}}
        if self.weights is not None and q.score != "paper":
            d["gamma"], d["mu"] = self.weights.gamma, self.weights.mu
        return d


class Searcher:
    """Loads an index (verified), its retrieval model, the localizer and the corpus once; answers requests.

    Caches (encoded motions, labels, the localizer's text LRU) are plain dicts: serve concurrent
    requests with one Searcher per worker or a lock around `search`.
    `backend`: "torch" (the models' own forward) or "onnx" (the index's exported graphs through ONNX
    Runtime, engine/onnx_path.py: no torch import; needs the index's cached motion encoding). Both give the
    same moments (oracle test); everything after the models is the same code.
    `use_motion_cache=False` encodes every motion from its raw features on every request: neither the
    index's cached encoding nor earlier requests' are used (the naive path benches compare to).
    `fast` (default): the localizer runs on its fast path (`Localizer.localize_pairs`: query-independent
    tensors kept per motion, all pairs of a round in one batch, decoding vectorised) and the moments' r
    for all motions of a round at once; `fast=False` is the plain path (one `Localizer.localize` call per
    round, one `moment_rs` per motion), which the oracle tests compare it to.
    """

    def __init__(self, index_dir: str | Path | ChunkIndex, localizer: str | Path | None = None,
                 corpus: str | Path | None = None, device: str = "cpu", bf16: bool = False,
                 use_motion_cache: bool = True, backend: str = "torch", score_file: str | Path | None = None,
                 fast: bool = True):
        from engine.corpus.device import resolve_device
        from engine.corpus.reader import open_reader
        from engine.home import default_localizer_path
        from indexer.index import ChunkIndex, open_index

        if backend not in ("torch", "onnx"):
            raise RequestError("--backend", f"unknown backend {backend!r}; choose torch or onnx")
        device = resolve_device(device)
        if isinstance(index_dir, ChunkIndex):  # opened (and its files checked) by the caller
            self.index = index_dir
        else:
            self.index = open_index(index_dir, device=device)  # checksums verified before FAISS reads
        self.index_dir = self.index.index_dir
        man = self.index.manifest
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
        self.localizer_path = loc_path
        self.backend = backend
        if backend == "onnx":  # the index's exported graphs (engine/onnx_path.py): no torch
            from engine.onnx_path import open_query_models

            if device != "cpu" or bf16 or not use_motion_cache:
                raise RequestError("--backend", "the onnx backend runs on the CPU in fp32 from the index's cached "
                                   "motion encoding; use --backend torch")
            self.retrieval, self.localizer = open_query_models(self.index, loc_path)
        else:
            from localizer.infer import Localizer

            self.retrieval = self.index.load_model(device=device)
            try:
                self.localizer = Localizer.load(loc_path, device=device, bf16=bf16)
            except (ValueError, OSError, RuntimeError, KeyError) as e:  # not "cannot load the index": name the run
                raise ModelError(str(loc_path), f"cannot load the localizer (--localizer): {e}") from e
        self.localizer_fingerprint = self.localizer.fingerprint()
        # The fused score's weights: `score_file`, else score.json beside the localizer (engine/scoring.py).
        from engine.scoring import load_fitted, score_file_for

        if score_file is not None and not Path(score_file).is_file():
            raise ModelError(str(score_file), "no such fused-score weights file (write it with scripts/fit_score.py)")
        self.score_file = Path(score_file) if score_file is not None else score_file_for(loc_path)
        self.fused_weights, self.fused_from = load_fitted(self.score_file, self.localizer_fingerprint,
                                                          man.model_fingerprint, self.index.has_bank)
        # The index caches the localizer's query-independent motion encoding when built with the same
        # checkpoint (its tag is the checkpoint's sha256); otherwise motions are encoded on first use.
        index_loc = man.localizer.sha256 if man.localizer is not None else man.motion_feature_tag
        self.localizer_matches_index = index_loc is not None and index_loc == self.localizer_fingerprint
        if index_loc is not None and not self.localizer_matches_index:
            log.warning("%s: localizer %s differs from the one the index was built with (%s); its cached motion "
                        "encoding is not used, motions are encoded on first use", self.index_dir, loc_path,
                        man.localizer.path if man.localizer is not None else f"sha256 {index_loc[:12]}")
        self.use_cache = use_motion_cache and self.localizer_matches_index and man.motion_feature_tag is not None
        self.use_motion_cache = use_motion_cache
        if corpus is None:
            corpus, url = man.corpus.get("dir"), man.corpus.get("url")
        else:
            url = None
        # The onnx backend reads the corpus's metadata through sqlite3 (no SQLAlchemy import, engine/corpus/reader.py).
        reader = open_reader(corpus, url) if backend == "onnx" and corpus is not None else None
        if reader is None:
            from engine.corpus.store import CorpusStore

            reader = CorpusStore.open(corpus, url=url, create=False)
        self.store = reader
        self.motions: dict[int, MotionInfo] = {m.motion_id: m for m in self.store.motion_table()}
        self._encoded: dict[int, object] = {}
        self._labels: dict[int, list] = {}
        # The fast path (`localizer.fast`): the localizer's query-independent tensors of every motion seen,
        # one padded bank per index, and the chunk spans in embedding-row order for the moments' r.
        self.fast = fast and backend == "torch"  # the onnx backend runs the model's graph pair by pair
        self.batch_growth = 2.0  # fast path: localizer batches of batch_size, then twice as many each round
        self._bank = None
        self._chunk_rows: tuple | None = None

    # ------------------------------------------------------------------ helpers
    def moment_r(self, query_vec: np.ndarray, motion_id: int, start_s: float, end_s: float) -> float:
        """The best similarity to `query_vec` among the motion's chunks that cover the moment: overlap at least
        half of the shorter of chunk and moment (the chunk nearest the moment if none does)."""
        return float(self.moment_rs(query_vec, motion_id, np.array([[start_s, end_s]]))[0])

    def moment_rs(self, query_vec: np.ndarray, motion_id: int, spans_s: np.ndarray) -> np.ndarray:
        """`moment_r` of several moments of one motion at once: (M, 2) spans -> (M,)."""
        chunks, vecs = self.index.motion_chunks(motion_id)
        sim = vecs @ query_vec  # (C,)
        a, b = spans_s[:, 0:1], spans_s[:, 1:2]  # (M, 1)
        inter = np.clip(np.minimum(chunks[None, :, 1], b) - np.maximum(chunks[None, :, 0], a), 0.0, None)  # (M, C)
        shorter = np.maximum(np.minimum(chunks[None, :, 1] - chunks[None, :, 0], b - a), 1e-9)  # (M, C)
        cover = inter / shorter >= 0.5
        none = ~cover.any(axis=1)
        if none.any():  # the chunk(s) nearest the moment
            cover[none] = inter[none] == inter[none].max(axis=1, keepdims=True)
        return np.where(cover, sim[None, :], -np.inf).max(axis=1)

    def window_sims(self, query_vec: np.ndarray, motion_id: int) -> tuple[np.ndarray, np.ndarray]:
        """((W, 2) [start_s, end_s], (W,) similarity to `query_vec`) of the motion's window bank (its chunks
        and the index's cached 2/4/6 s windows; only the chunks when the index has no bank)."""
        return self.index.motion_window_sims(motion_id, query_vec)

    @staticmethod
    def span_sims(windows: np.ndarray, sims: np.ndarray, spans_s: np.ndarray) -> np.ndarray:
        """s of each span (M, 2): the similarity of the bank window with the best IoU to it (of those, the most
        similar). Never above max(sims), the motion's s_max."""
        a, b = spans_s[:, 0:1], spans_s[:, 1:2]  # (M, 1)
        inter = np.clip(np.minimum(windows[None, :, 1], b) - np.maximum(windows[None, :, 0], a), 0.0, None)  # (M, W)
        union = np.maximum(windows[None, :, 1], b) - np.minimum(windows[None, :, 0], a)
        iou = inter / np.maximum(union, 1e-9)
        best = iou.max(axis=1, keepdims=True)
        return np.where(iou >= best - 1e-12, sims[None, :], -np.inf).max(axis=1)

    def span_hits(self, query_vec: np.ndarray, motion_id: int, spans: Sequence, r_mode: str,
                  windows: tuple[np.ndarray, np.ndarray] | None = None) -> list[SpanHit]:
        """The localizer's spans of one motion as the Ranker takes them: with r_mode "moment" each span's own
        chunk r (`moment_rs`), with `windows` (`window_sims` of the motion) its own bank similarity s."""
        spans_s = np.array([[h.start_s, h.end_s] for h in spans], np.float64).reshape(-1, 2)
        rs = self.moment_rs(query_vec, motion_id, spans_s) if r_mode == "moment" else [None] * len(spans)
        ss = self.span_sims(*windows, spans_s) if windows is not None else [None] * len(spans)
        return [SpanHit(h.start_s, h.end_s, h.p_se, None if r is None else float(r), None if v is None else float(v))
                for h, r, v in zip(spans, rs, ss)]

    def moment_rs_many(self, query_vec: np.ndarray, motion_ids: Sequence[int],
                       spans_s: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`moment_rs` of the moments of several motions at once: spans_s[i] (M_i, 2) of motion_ids[i] ->
        one (M_i,) array each; one matrix product and one masked maximum for all of them."""
        if self._chunk_rows is None:
            emb = self.index.embeddings()
            rows = self.index.table.rows(emb.chunk_ids)
            mids = np.asarray(emb.motion_ids)
            starts = np.flatnonzero(np.r_[True, mids[1:] != mids[:-1]]) if len(mids) else np.zeros(0, np.int64)
            ends = np.r_[starts[1:], len(mids)].astype(np.int64)
            where = {int(mids[a]): (int(a), int(b)) for a, b in zip(starts, ends)}
            self._chunk_rows = (where, self.index.table.start_s[rows].astype(np.float64),
                                self.index.table.end_s[rows].astype(np.float64), emb.vectors)
        where, c_start, c_end, vecs = self._chunk_rows
        n = len(motion_ids)
        ab = np.array([where.get(int(m), (0, 0)) for m in motion_ids], dtype=np.int64).reshape(n, 2)
        counts = np.array([len(sp) for sp in spans_s], dtype=np.int64)
        if counts.sum() == 0:
            return [np.zeros(0) for _ in range(n)]
        lens = ab[:, 1] - ab[:, 0]
        width = max(1, int(lens.max()))
        cols = ab[:, :1] + np.arange(width)[None, :]  # (n, C) embedding rows of each motion's chunks
        has = cols < ab[:, 1:2]
        cols = np.where(has, cols, 0)
        sim = np.full((n, width), -np.inf, dtype=np.float32)
        for i, (a0, b0) in enumerate(ab.tolist()):  # each motion's own rows, the product moment_rs takes
            sim[i, : b0 - a0] = vecs[a0:b0] @ query_vec
        owner = np.repeat(np.arange(n), counts)  # (M,) the motion of each moment
        sp = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1, 2) for x in spans_s])
        a, b = sp[:, 0:1], sp[:, 1:2]
        cs, ce, ok = c_start[cols[owner]], c_end[cols[owner]], has[owner]  # (M, C)
        inter = np.clip(np.minimum(ce, b) - np.maximum(cs, a), 0.0, None)
        shorter = np.maximum(np.minimum(ce - cs, b - a), 1e-9)
        cover = (inter / shorter >= 0.5) & ok
        none = ~cover.any(axis=1)
        if none.any():  # the chunk(s) nearest the moment
            near = np.where(ok[none], inter[none], -np.inf)
            cover[none] = (near == near.max(axis=1, keepdims=True)) & ok[none]
        best = np.where(cover, sim[owner], -np.inf).max(axis=1)
        return np.split(best, np.cumsum(counts)[:-1])

    def clear_caches(self) -> None:
        """Forget encoded motions and labels (the next requests encode again)."""
        self._encoded.clear()
        self._labels.clear()
        if self._bank is not None:
            self._bank.clear()

    def _encoded_motions(self, motion_ids: Sequence[int], keep: bool = True):
        from localizer.outputs import EncodedMotion

        got = {m: self._encoded[m] for m in motion_ids if m in self._encoded}
        missing = [m for m in motion_ids if m not in got]
        if self.use_cache:
            for m in missing:
                cached = self.index.motion_features(m)
                if cached is not None:
                    got[m] = EncodedMotion(features=cached, duration_s=self.motions[m].duration_s, motion_id=m)
        rest = [m for m in missing if m not in got]
        if rest:
            enc = self.localizer.encode_motions([self.store.features(m) for m in rest],
                                                fps=[self.motions[m].fps for m in rest], motion_ids=rest)
            got.update(zip(rest, enc))
        if keep:
            self._encoded.update(got)
        return [got[m] for m in motion_ids]

    def label(self, motion_id: int, start_s: float, end_s: float) -> str | None:
        """The ground-truth annotation that best overlaps the moment (IoU), when the corpus has one."""
        from engine.corpus.spans import temporal_iou

        anns = self._labels.get(motion_id)
        if anns is None:
            anns = self._labels[motion_id] = self.store.annotations(motion_id)
        best, best_iou = None, 0.0
        for a in anns:
            iou = temporal_iou(start_s, end_s, a.start_s, a.end_s)
            if iou > best_iou:
                best, best_iou = a.text, iou
        return best

    def _candidates(self, q: np.ndarray, req: SearchRequest) -> tuple[list[int], list[float]]:
        """The top-k motions by r (filtered), sorted by decreasing r."""
        k = min(req.k, max(1, len(self.motions)))
        want = k
        while True:
            hits = self.index.motion_best(q, k_motions=want)[0]
            ids, rs = [], []
            for mid, r in zip(hits.motion_ids.tolist(), hits.r.tolist()):
                info = self.motions.get(mid)
                if info is None or not req.keeps_motion(info.source, info.duration_s):
                    continue
                ids.append(mid)
                rs.append(r)
            if not req.filters_motions or len(ids) >= k or want >= len(self.motions):
                return ids[:k], rs[:k]
            want = min(want * 4, len(self.motions))

    # ------------------------------------------------------------------ search
    def search(self, req: SearchRequest) -> SearchResult:
        """Ranked moments for the request. Score = p_se ** gamma * exp(lam * r) (gamma = 1 for the paper's
        score); `req.r_mode` picks r:

        - "motion" (the paper): r = the motion's best chunk similarity, shared by all its moments;
        - "moment": r = the best similarity among the chunks that cover the moment (at least half of the
          shorter of chunk and moment), so a moment localized away from the matching chunk ranks lower.
          It is never above the motion's r, so pruning stays exact."""
        return self.search_many([req])[0]

    def search_many(self, reqs: Sequence[SearchRequest]) -> list[SearchResult]:
        """Several requests at once, each answered exactly as `search` would: their texts are embedded in
        one batch, and each localizer pass holds the next motions of every request still ranking (one
        padded batch instead of one per request). The server's micro-batches call this."""
        for req in reqs:
            if not isinstance(req, SearchRequest):
                raise TypeError(f"Searcher.search takes a SearchRequest (got {type(req).__name__})")
        if not reqs:
            return []
        t0 = time.perf_counter()
        qs = self.retrieval.encode_text([req.text for req in reqs])  # (Q, d)
        t_embed = (time.perf_counter() - t0) / len(reqs)

        rankers, timings, windows = [], [], []
        for qi, req in enumerate(reqs):
            t0 = time.perf_counter()
            ids, rs = self._candidates(qs[qi: qi + 1], req)
            weights = req.weights(self.fused_weights)
            # The fused score's s: every candidate's bank windows scored once (a dot product each), giving
            # its bound s_max before any localization and each span's s after.
            wins = {mid: self.window_sims(qs[qi], mid) for mid in ids} if weights.uses_span else None
            s_max = [float(wins[mid][1].max()) for mid in ids] if wins is not None else None
            windows.append(wins)
            timings.append({"embed_text": t_embed, "retrieve": time.perf_counter() - t0,
                            "motion_encode": 0.0, "localize": 0.0})
            # Without pruning nothing is gained by rounds: the fast path localizes all k motions in one.
            batch = max(1, len(ids)) if self.fast and not req.prune else req.batch_size
            rankers.append(Ranker(ids, rs, None, req.limit, batch_size=batch, prune=req.prune,
                                  keep=(lambda _m, s, e, req=req: req.keeps_moment(s, e)) if req.filters_moments
                                  else None, dedup_iou=req.dedup_iou, per_motion=req.per_motion,
                                  weights=weights, s_max=s_max, growth=self.batch_growth if self.fast else 1.0))
        while True:
            # One round: the next batch of every request still ranking, localized in one pass.
            work = [(qi, ids) for qi, rk in enumerate(rankers) if (ids := rk.next_batch()) is not None]
            if not work:
                break
            t1 = time.perf_counter()
            flat = [m for _, ids in work for m in ids]
            keep = all(reqs[qi].use_cache for qi, _ in work) and self.use_motion_cache
            enc = self._encoded_motions(flat, keep=keep)
            t2 = time.perf_counter()
            texts = [reqs[qi].text for qi, ids in work for _ in ids]
            spans = self._localize_pairs(texts, enc, work, reqs, keep=keep)
            t3 = time.perf_counter()
            n = len(flat)
            at = 0
            for qi, ids in work:
                req = reqs[qi]
                mine = spans[at: at + len(ids)]
                at += len(ids)
                wins = windows[qi]
                if req.r_mode == "moment" and self.fast:  # every motion's moment r in one product
                    spans_l = [np.array([[h.start_s, h.end_s] for h in row], np.float64).reshape(-1, 2) for row in mine]
                    hits = []
                    for mid, row, sp, rs in zip(ids, mine, spans_l, self.moment_rs_many(qs[qi], ids, spans_l)):
                        ss = self.span_sims(*wins[mid], sp) if wins is not None else [None] * len(row)
                        hits.append([SpanHit(h.start_s, h.end_s, h.p_se, float(r), None if v is None else float(v))
                                     for h, r, v in zip(row, rs, ss)])
                else:
                    hits = [self.span_hits(qs[qi], mid, row, req.r_mode, None if wins is None else wins[mid])
                            for mid, row in zip(ids, mine)]
                rankers[qi].add(ids, hits)
                share = len(ids) / n  # each request is charged its share of the shared pass
                timings[qi]["motion_encode"] += (t2 - t1) * share
                timings[qi]["localize"] += (t3 - t2) * share
        out = []
        for req, rk, t in zip(reqs, rankers, timings):
            t0 = time.perf_counter()
            ranked, stats = rk.result()
            moments = [self.describe(m) for m in ranked]
            t["rank"] = time.perf_counter() - t0
            out.append(SearchResult(request=req, moments=moments, k=len(rk.motion_ids), localized=stats.localized,
                                    timings_s=t, weights=rk.weights))
        return out

    def _motion_bank(self, keep: bool):
        """The Searcher's MotionBank (None: a throw-away one, when encoded motions are not to be kept)."""
        if not keep:
            return None
        if self._bank is None:
            self._bank = self.localizer.motion_bank()
        return self._bank

    def _localize_pairs(self, texts, enc, work, reqs, keep: bool = True) -> list:
        """The localizer over (text, motion) pairs, one pass per distinct (top_m, nms_iou, batch_size) among
        the requests (usually one: every request with the defaults shares it); spans in pair order."""
        groups: dict[tuple, list[int]] = {}
        at = 0
        for qi, ids in work:
            r = reqs[qi]
            key = (r.top_m, r.nms_iou) if self.fast else (r.top_m, r.nms_iou, r.batch_size)
            groups.setdefault(key, []).extend(range(at, at + len(ids)))
            at += len(ids)
        out: list = [None] * at
        for key, rows in groups.items():
            top_m, nms_iou = key[:2]
            if self.fast:  # a (sentence, motion) pair that several requests of the round hold runs once
                first: dict[tuple, int] = {}
                for i in rows:
                    first.setdefault((texts[i].strip(), enc[i].motion_id), i)
                uniq = list(first.values())
                got = self.localizer.localize_pairs([texts[i] for i in uniq], [enc[i] for i in uniq], top_m=top_m,
                                                    nms_iou=nms_iou, bank=self._motion_bank(keep))
                by_pair = dict(zip(first, got))
                spans = [by_pair[(texts[i].strip(), enc[i].motion_id)] for i in rows]
            else:
                spans = self.localizer.localize([texts[i] for i in rows], [enc[i] for i in rows], top_m=top_m,
                                                nms_iou=nms_iou, batch_size=key[2])
            for i, sp in zip(rows, spans):
                out[i] = sp
        return out

    def describe(self, m: Moment) -> Moment:
        """The moment with its motion's name, source, path and duration, and the best-overlapping label."""
        info = self.motions[m.motion_id]
        return dataclasses.replace(m, source=info.source, name=info.name, path=info.path,
                                   duration_s=info.duration_s, label=self.label(m.motion_id, m.start_s, m.end_s))


BACKENDS = ("auto", "torch", "onnx")


def load_searcher(index: str | Path | None = None, localizer: str | Path | None = None, device: str = "cpu",
                  notify: Callable[[str], None] | None = None,
                  progress: Callable[[str, int, int], None] | None = None, warmup: bool = False,
                  models: str | None = None, backend: str = "torch") -> Searcher:
    """Open a Searcher: on `index`, or on the built-in index of the model set `models` (engine.home:
    prepared on first use) when `index` is None.

    The one loader of the CLI and the server. Errors are `IndexFileError`s that say how to fix them.
    `warmup` runs one small query so that the first real request does not pay for lazy initialisation.
    `backend`: "torch"; "onnx" (the index's ONNX query models, no torch import; an error when it has none
    that fit); "auto": onnx when the index has them, else torch, after which they are exported for the
    next process (engine/onnx_path.py; a failed export is a warning).
    """
    from engine.corpus.device import resolve_device
    from engine.corpus.types import EngineError

    if backend not in BACKENDS:
        raise RequestError("--backend", f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    device = resolve_device(device)  # before building anything: a bad --device is one line
    if localizer is not None and not Path(localizer).exists():
        raise IndexFileError(str(localizer), "no such localizer run directory (--localizer)")
    if index is not None and not Path(index).exists():
        raise IndexFileError(str(index), "no such index; build one with `engine index build --corpus CORPUS_DIR --out "
                             f"{index} --model RUN_DIR`")
    opened = None  # an index the onnx attempt opened (its files hashed): the torch path takes it as it is
    if backend == "onnx" or (backend == "auto" and device == "cpu"):
        searcher, opened = _onnx_searcher(index, localizer, required=backend == "onnx", models=models)
        if searcher is not None:
            return _warm(searcher, warmup)
    if opened is not None and index is not None:
        index, builtin = opened, False
    elif index is None:
        from engine.home import default_index_dir, ensure_default_index

        if not (default_index_dir(models) / "CURRENT").exists() and notify:
            notify("preparing the built-in corpus and its index (first run only, a few minutes) ...")
        # opened and verified: files hashed once
        index = ensure_default_index(progress=progress, device=device, models=models)
        builtin = True
    else:
        index = Path(index)
        builtin = False
    try:
        searcher = Searcher(index, localizer=localizer, device=device)
    except (ModelError, RequestError):
        raise  # a bad --localizer or --device, named as such
    except (EngineError, FileNotFoundError, ValueError, OSError) as e:
        where = getattr(index, "index_dir", index)
        raise IndexFileError(str(where), f"cannot load the index ({e}); check it with `engine index verify "
                             f"{where}` or rebuild it with `engine index build --corpus CORPUS_DIR --out "
                             "INDEX_DIR --model RUN_DIR`") from e
    if backend == "auto" and device == "cpu":
        _export_quietly(searcher, builtin, notify, models)
    return _warm(searcher, warmup)


def _warm(searcher: Searcher, warmup: bool) -> Searcher:
    if warmup and searcher.motions:
        searcher.search(SearchRequest("a person walks forward", k=min(8, len(searcher.motions)), limit=1))
    return searcher


def _onnx_searcher(index: str | Path | None, localizer: str | Path | None,
                   required: bool, models: str | None = None) -> tuple[Searcher | None, ChunkIndex | None]:
    """(a Searcher on the ONNX backend, None), or (None, the index if it was opened) (auto: logged) when
    the index has no query models that fit or one of them is damaged; with `required`, those are errors."""
    from indexer.index import open_index
    from indexer.query_models import QueryModelsUnavailable

    opened = None
    try:
        if index is None:
            from engine.home import open_default_index_fast

            opened = open_default_index_fast(models=models)
        else:
            opened = open_index(index)
        return Searcher(opened, localizer=localizer, backend="onnx"), None
    except QueryModelsUnavailable as e:
        if required:
            raise
        log.info("torch query path: %s", e)
    except IndexFileError as e:  # a damaged graph: say which, then search on torch (and export again)
        if required:
            raise
        log.warning("%s; searching with torch instead", e)
    except (ModelError, RequestError):
        if required:
            raise
    except (FileNotFoundError, OSError, ValueError) as e:  # the index itself does not open: torch says so
        if required:
            raise IndexFileError(str(index), f"cannot load the index ({e})") from e
        opened = None
    return None, opened


def prepare_fast_path(index: str | Path, notify: Callable[[str], None] | None = None) -> None:
    """Export the ONNX query models of `index` for the localizer it was built with (`engine index build
    --localizer` runs this), so that the first search is a fast one; a failure is one warning."""
    from engine.corpus.types import EngineError

    try:
        searcher = Searcher(index)
    except (EngineError, OSError) as e:
        log.warning("the fast (ONNX) query path is not prepared for %s: %s", index, e)
        return
    _export_quietly(searcher, False, notify)


def _export_quietly(searcher: Searcher, builtin: bool, notify: Callable[[str], None] | None,
                    models: str | None = None) -> None:
    """Export the index's ONNX query models after a torch open, so that the next process takes the fast path;
    a model that does not export, or an index directory that cannot be written, is one warning."""
    from engine.corpus.types import EngineError
    from engine.onnx_path import export_query_models, onnx_cache_dir

    sources = {}
    if builtin:
        from engine.home import shipped_checkpoints

        sources = shipped_checkpoints(models)
    try:
        export_query_models(searcher.index, searcher.retrieval, searcher.localizer, sources=sources,
                            cache_dir=onnx_cache_dir(),
                            notify=(lambda: notify("preparing the fast query path (once) ...")) if notify else None)
    except (EngineError, OSError, ImportError) as e:
        log.warning("the fast (ONNX) query path is not available for %s: %s", searcher.index_dir, e)
