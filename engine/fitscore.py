"""Fitting the fused score's weights on a validation split, and the label-match comparison of the rankings.

The candidates of a query (its top-k motions by r, every motion localized, each span with p_se, its own
chunk r and its own window-bank similarity s) do not depend on the weights. `collect` computes them once per
query; `rank` orders them for any `ScoreWeights` with the engine's own `Ranker` (the same de-duplication and
per-motion cap), so a grid of weights costs one localization pass. `self_check` confirms that the Searcher
with the chosen weights returns exactly the re-ranked lists.

`scripts/fit_score.py` is the command: fit on val (never test), write `score.json`, report the test table.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.request import SearchRequest
from engine.scoring import PAPER, ScoreWeights
from engine.search import Searcher, SpanHit, rank_moments
from eval.labelmatch import LabelMatchResult, evaluate_label_match
from eval.runfile import RunRow, rows_from_moments

LAMS = (0.0, 1.0, 2.5, 5.0, 10.0, 20.0)
MUS = (0.0, 2.5, 5.0, 10.0, 20.0, 40.0)
GAMMAS = (0.0, 0.25, 0.5, 1.0)


@dataclass
class Candidates:
    """Everything the ranking of one query needs, whatever the weights."""

    query_id: str
    text: str
    motion_ids: list[int]  # top-k by r, decreasing r
    r: np.ndarray  # (k,) the motions' r
    s_max: np.ndarray  # (k,) the motions' best bank-window similarity
    spans: dict[int, list[SpanHit]]  # every localized span, with its own r (per r_mode) and s


def collect(searcher: Searcher, queries: dict[str, str], req: SearchRequest,
            progress: Callable[[str, int, int], None] | None = None) -> list[Candidates]:
    """The candidates of every query under `req` (k, top_m, nms_iou, r_mode, filters; not its score)."""
    out = []
    items = list(queries.items())
    for i, (qid, text) in enumerate(items):
        q = searcher.retrieval.encode_text([text])  # (1, d)
        ids, rs = searcher._candidates(q, req)
        wins = {mid: searcher.window_sims(q[0], mid) for mid in ids}
        enc = searcher._encoded_motions(ids)
        located = searcher.localizer.localize([text] * len(ids), enc, top_m=req.top_m, nms_iou=req.nms_iou,
                                              batch_size=req.batch_size)
        spans = {}
        for mid, row in zip(ids, located):
            hits = searcher.span_hits(q[0], mid, row, req.r_mode, wins[mid])
            if req.filters_moments:
                hits = [h for h in hits if req.keeps_moment(h.start_s, h.end_s)]
            spans[int(mid)] = hits
        out.append(Candidates(qid, text, [int(m) for m in ids], np.asarray(rs, np.float64),
                              np.array([float(wins[m][1].max()) for m in ids]), spans))
        if progress:
            progress("localize", i + 1, len(items))
    return out


def rank(c: Candidates, weights: ScoreWeights, req: SearchRequest):
    """The ranked moments of one query for `weights`, as the Searcher would return them (before `describe`)."""
    moments, _ = rank_moments(c.motion_ids, c.r, lambda batch: [c.spans[m] for m in batch], None, req.limit,
                              prune=False, dedup_iou=req.dedup_iou, per_motion=req.per_motion, weights=weights,
                              s_max=c.s_max)
    return moments


def rows_for(cands: Sequence[Candidates], weights: ScoreWeights, req: SearchRequest) -> list[RunRow]:
    return [row for c in cands for row in rows_from_moments(c.query_id, c.text, rank(c, weights, req))]


def grid(lams: Sequence[float] = LAMS, mus: Sequence[float] = MUS,
         gammas: Sequence[float] = GAMMAS) -> list[ScoreWeights]:
    """Every (lam, gamma, mu) of the grid, the paper's weights included."""
    ws = [ScoreWeights(lam=lam, gamma=g, mu=mu) for lam, mu, g in itertools.product(lams, mus, gammas)]
    return [PAPER, *(w for w in ws if w != PAPER)]  # first: ties go to the paper's weights


def objective(res: LabelMatchResult, groups: Sequence[Sequence[str]] | None = None) -> float:
    """What the fit maximises: the mean of P@10 and nDCG@10 (label match). With `groups` (query-id sets,
    e.g. a split's queries and a paraphrase set), each group counts equally, whatever its size."""
    if not groups:
        return 0.5 * (res.precision[10] + res.ndcg[10])
    means = []
    for g in groups:
        vals = [0.5 * (res.per_query[q]["p@10"] + res.per_query[q]["ndcg@10"]) for q in g if q in res.per_query]
        if vals:
            means.append(float(np.mean(vals)))
    return float(np.mean(means)) if means else 0.0


@dataclass
class FitRow:
    weights: ScoreWeights
    result: LabelMatchResult
    objective: float

    def to_dict(self) -> dict:
        return {"lam": self.weights.lam, "gamma": self.weights.gamma, "mu": self.weights.mu,
                "p@10": self.result.precision[10], "ndcg@10": self.result.ndcg[10], "map@100": self.result.map_at,
                "objective": self.objective}


def fit(cands: Sequence[Candidates], query_labels: dict[str, str], label_spans, req: SearchRequest,
        weights: Sequence[ScoreWeights] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        groups: Sequence[Sequence[str]] | None = None) -> list[FitRow]:
    """Every weight setting scored by label match, best first (ties: the earlier grid point, i.e. the simpler
    one: the paper's weights come first). `groups`: see `objective`."""
    weights = list(weights) if weights is not None else grid()
    rows = []
    for i, w in enumerate(weights):
        res = evaluate_label_match(rows_for(cands, w, req), query_labels, label_spans, setting=_name(w))
        rows.append(FitRow(w, res, objective(res, groups)))
        if progress:
            progress("grid", i + 1, len(weights))
    order = sorted(range(len(rows)), key=lambda i: (-round(rows[i].objective, 12), i))
    return [rows[i] for i in order]


def _name(w: ScoreWeights) -> str:
    return "MLP paper (λ=5)" if w == PAPER else f"MLP fused λ={w.lam:g} γ={w.gamma:g} μ={w.mu:g}"


def self_check(searcher: Searcher, cands: Sequence[Candidates], weights: ScoreWeights, req: SearchRequest,
               n: int = 10) -> int:
    """Search the first `n` queries with the Searcher itself (pruned) and compare with the re-ranked
    candidates: the number of queries whose moments differ (0 when the fit is faithful). The same moments
    must come back; their order may differ only between near-ties (scores within 1e-5 relative), which
    float32 rounding in differently batched localizer passes can swap."""
    bad = 0
    sreq = SearchRequest(req.text, k=req.k, limit=req.limit, top_m=req.top_m, nms_iou=req.nms_iou,
                         r_mode=req.r_mode, dedup_iou=req.dedup_iou, per_motion=req.per_motion,
                         batch_size=req.batch_size, score="fused", lam=weights.lam, gamma=weights.gamma, mu=weights.mu)
    for c in cands[:n]:
        got = searcher.search(sreq.with_text(c.text)).moments
        want = rank(c, weights, req)
        if not same_ranking(got, want):
            bad += 1
    return bad


def same_ranking(got, want, rel: float = 1e-5) -> bool:
    """Two ranked moment lists agree: the same (motion, span) at every rank, except where neighbouring
    moments' scores are within `rel` (a near-tie may be swapped); the same moments overall either way."""
    def key(m):
        return m.motion_id, round(m.start_s, 6), round(m.end_s, 6)

    if len(got) != len(want) or sorted(map(key, got)) != sorted(map(key, want)):
        return False
    for a, b in zip(got, want):
        if key(a) != key(b) and abs(a.score - b.score) > rel * max(abs(a.score), abs(b.score)):
            return False
    return True
