"""Evaluation protocols over run files: single-motion localization (Normal / Assigned) and corpus-level
moment retrieval (Recall@n,IoU@mu, DCG@n / NDCG@n), plus the prior-only baseline.

Inputs are run rows and ground-truth rows (`eval.runfile`); similarities between sentences are computed
by the caller (with a sentence encoder) and passed in as arrays or as an `encode` callable, so nothing
here imports a model or the search code.

Decisions (paper Sec. IV-A and V, project notes "Evaluation" and "Corpus-level moment retrieval"):

- Normal: one ground truth per query; the query's top-1 row (lowest rank) is its prediction. A query
  missing from the run, or whose top-1 row is on another motion, scores IoU 0.
- Assigned: the ground-truth set of a query is every ground-truth row of the *same motion* whose text
  similarity to the query is strictly greater than `cos_threshold` (a cosine), plus the query's own row;
  the score is the best IoU over the set. The paper's thresholds (BABEL 0.995, HumanML3D 0.8 in the
  (cos + 1) / 2 space of all-mpnet-base-v2) are cosines 0.99 and 0.6. The threshold and the encoder's
  name are recorded in the result.
- CMR recall: a ground-truth moment is hit at n when one of the top-n rows is on its motion with
  IoU >= mu; each ground truth is credited once. Per query, recall = hit ground truths / its ground
  truths; the reported figure is the mean over the ground-truth queries (`hit_rate`: the fraction of
  queries with at least one hit; both agree when each query has one moment). Queries in the run without
  ground truth are ignored (logged); ground-truth queries missing from the run score 0.
- DCG@n with caller-given relevances per row; NDCG@n divides by the ideal DCG with relevance 1
  (the paper's normalisation: 4.54 / 12.90 / 20.94 at 10 / 50 / 100).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.corpus.types import Annotation, CorpusError, Motion
from eval.metrics import (
    CMR_IOUS,
    CMR_N_VALUES,
    LocalizationScores,
    as_spans,
    best_iou_over_sets,
    dcg_at_n,
    first_hit_ranks,
    ideal_dcg,
    localization_scores,
    recall_at_n,
)
from eval.runfile import GroundTruth, Run, RunRow, group_run, group_truth

log = logging.getLogger(__name__)

# Assigned-protocol thresholds as cosines (paper: 0.995 and 0.8 in (cos + 1) / 2 space).
BABEL_ASSIGNED_COS = 0.99
HUMANML3D_ASSIGNED_COS = 0.6


def cos_from_paper_threshold(threshold: float) -> float:
    """The paper's (cos + 1) / 2 threshold as a cosine: 0.995 -> 0.99, 0.8 -> 0.6."""
    return 2.0 * threshold - 1.0


def _rows(run: Run | Iterable[RunRow]) -> list[RunRow]:
    return list(run.rows) if isinstance(run, Run) else list(run)


def _unique_queries(truth: Sequence[GroundTruth]) -> None:
    seen: set[str] = set()
    for i, g in enumerate(truth):
        if g.query_id in seen:
            raise CorpusError(f"ground truth {i} (query {g.query_id!r})",
                              "single-motion localization needs exactly one ground-truth row per query")
        seen.add(g.query_id)


def _top1_spans(run: Run | Iterable[RunRow], truth: Sequence[GroundTruth]) -> tuple[np.ndarray, np.ndarray, int]:
    """(Q, 2) predicted spans, (Q,) bool valid (present and on the right motion), number missing."""
    by_q = group_run(_rows(run))
    pred = np.zeros((len(truth), 2))
    valid = np.zeros(len(truth), dtype=bool)
    n_missing = n_wrong = 0
    for i, g in enumerate(truth):
        rows = by_q.get(g.query_id)
        if not rows:
            n_missing += 1
            continue
        top = rows[0]
        if top.motion_id != g.motion_id:
            n_wrong += 1
            continue
        pred[i] = (top.start_s, top.end_s)
        valid[i] = True
    extra = set(by_q) - {g.query_id for g in truth}
    if n_missing:
        log.warning("%d of %d ground-truth queries are missing from the run (scored IoU 0)", n_missing, len(truth))
    if n_wrong:
        log.warning("%d top-1 moments are on another motion than the query's (scored IoU 0)", n_wrong)
    if extra:
        log.warning("%d run queries have no ground truth and are ignored", len(extra))
    return pred, valid, n_missing


def evaluate_normal(run: Run | Iterable[RunRow], truth: Sequence[GroundTruth],
                    iou_thresholds: Sequence[float] | None = None) -> LocalizationScores:
    """Normal protocol: R@1 at IoU >= mu and mIoU of each query's top-1 moment with its one ground truth."""
    truth = list(truth)
    _unique_queries(truth)
    pred, valid, n_missing = _top1_spans(run, truth)
    gt = as_spans([(g.start_s, g.end_s) for g in truth], "ground truth")
    ious = best_iou_over_sets(pred, [gt[i:i + 1] if valid[i] else gt[:0] for i in range(len(truth))])
    res = localization_scores(ious, iou_thresholds, protocol="normal")
    res.n_missing = n_missing
    return res


def assigned_sets(truth: Sequence[GroundTruth], cos_threshold: float, similarity: np.ndarray | None = None,
                  embeddings: np.ndarray | None = None) -> list[np.ndarray]:
    """For each ground-truth row q, the indices of rows that count as its ground truth (Assigned protocol).

    Pass exactly one of `similarity` ((Q, Q) cosine matrix over `truth`'s texts) or `embeddings`
    ((Q, D), L2-normalised; cosines are then computed only within each motion). Row g belongs to q's set
    when it is on the same motion and ``cos(q, g) > cos_threshold``; q itself always belongs.
    """
    truth = list(truth)
    n = len(truth)
    if (similarity is None) == (embeddings is None):
        raise CorpusError("assigned_sets", "pass exactly one of similarity= or embeddings=")
    if similarity is not None:
        similarity = np.asarray(similarity)
        if similarity.shape != (n, n):
            raise CorpusError("assigned_sets", f"similarity must be ({n}, {n}) for {n} ground-truth rows, "
                              f"got {similarity.shape}")
    else:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != n:
            raise CorpusError("assigned_sets", f"embeddings must be ({n}, D), got {embeddings.shape}")
        norms = np.linalg.norm(embeddings, axis=1)
        if n and not np.allclose(norms, 1.0, atol=1e-3):
            raise CorpusError("assigned_sets", "embeddings must be L2-normalised (cosine = dot product)")
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(truth):
        groups.setdefault(g.motion_id, []).append(i)
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    for idx in groups.values():
        ix = np.asarray(idx, dtype=np.int64)
        if similarity is not None:
            sim = similarity[np.ix_(ix, ix)]  # (G, G)
        else:
            e = embeddings[ix]  # (G, D)
            sim = e @ e.T  # (G, G)
        member = sim > cos_threshold
        np.fill_diagonal(member, True)
        for a, q in enumerate(ix):
            out[q] = ix[member[a]]
    return out


def evaluate_assigned(run: Run | Iterable[RunRow], truth: Sequence[GroundTruth], cos_threshold: float,
                      similarity: np.ndarray | None = None, embeddings: np.ndarray | None = None,
                      iou_thresholds: Sequence[float] | None = None, similarity_model: str = ""
                      ) -> LocalizationScores:
    """Assigned protocol: the best IoU of each query's top-1 moment over its assigned ground-truth set."""
    truth = list(truth)
    _unique_queries(truth)
    sets = assigned_sets(truth, cos_threshold, similarity=similarity, embeddings=embeddings)
    pred, valid, n_missing = _top1_spans(run, truth)
    gt = as_spans([(g.start_s, g.end_s) for g in truth], "ground truth")
    ious = best_iou_over_sets(pred, [gt[s] if valid[i] else gt[:0] for i, s in enumerate(sets)])
    res = localization_scores(ious, iou_thresholds, protocol="assigned")
    res.n_missing = n_missing
    res.cos_threshold = float(cos_threshold)
    res.similarity_model = similarity_model
    res.mean_gt_per_query = float(np.mean([len(s) for s in sets])) if sets else 0.0
    return res


@dataclass
class TslmResult:
    """Single-motion localization (TSLM) scores of one method: one row of paper Tables II-IV."""

    method: str
    normal: LocalizationScores
    assigned: LocalizationScores | None = None
    dataset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tslm", "method": self.method, "dataset": self.dataset,
                "normal": self.normal.to_dict(),
                "assigned": None if self.assigned is None else self.assigned.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TslmResult:
        return cls(method=d["method"], dataset=d.get("dataset", ""),
                   normal=LocalizationScores.from_dict(d["normal"]),
                   assigned=None if d.get("assigned") is None else LocalizationScores.from_dict(d["assigned"]))


def evaluate_tslm(run: Run | Iterable[RunRow], truth: Sequence[GroundTruth], method: str = "",
                  cos_threshold: float | None = None, similarity: np.ndarray | None = None,
                  embeddings: np.ndarray | None = None, iou_thresholds: Sequence[float] | None = None,
                  similarity_model: str = "", dataset: str = "") -> TslmResult:
    """Normal, and Assigned when `cos_threshold` and similarities are given. `method` defaults to the
    run's meta "method"."""
    rows = _rows(run)
    if not method and isinstance(run, Run):
        method = str(run.meta.get("method", ""))
    normal = evaluate_normal(rows, truth, iou_thresholds)
    assigned = None
    if cos_threshold is not None:
        assigned = evaluate_assigned(rows, truth, cos_threshold, similarity=similarity, embeddings=embeddings,
                                     iou_thresholds=iou_thresholds, similarity_model=similarity_model)
    return TslmResult(method=method, normal=normal, assigned=assigned, dataset=dataset)


# ------------------------------------------------------------------------------------ corpus retrieval
@dataclass
class RunRelevance:
    """Relevance of each returned moment: query_id -> (R,) values aligned with the query's rows by rank."""

    name: str
    by_query: dict[str, np.ndarray]


@dataclass
class DcgScores:
    """Mean DCG@n and NDCG@n over the queries under one relevance function, with the ideal DCG beside."""

    relevance: str
    dcg: dict[int, float]
    ndcg: dict[int, float]
    ideal: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        return {"relevance": self.relevance, "dcg": _kstr(self.dcg), "ndcg": _kstr(self.ndcg),
                "ideal": _kstr(self.ideal)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DcgScores:
        return cls(relevance=d["relevance"], dcg=_kint(d["dcg"]), ndcg=_kint(d["ndcg"]), ideal=_kint(d["ideal"]))


@dataclass
class CmrResult:
    """Corpus-level moment retrieval scores of one setting (one row of paper Table VIII).

    `recall[mu][n]` and `hit_rate[mu][n]` are fractions in [0, 1].
    """

    setting: str
    n_queries: int
    recall: dict[float, dict[int, float]]
    hit_rate: dict[float, dict[int, float]]
    dcg: list[DcgScores] = field(default_factory=list)
    k: int | None = None
    lam: float | None = None
    n_missing: int = 0
    mean_gt_per_query: float = 1.0

    def recall_at(self, n: int, iou: float) -> float:
        return self.recall[float(iou)][int(n)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "cmr", "setting": self.setting, "k": self.k, "lam": self.lam, "n_queries": self.n_queries,
            "n_missing": self.n_missing, "mean_gt_per_query": self.mean_gt_per_query,
            "recall": {f"{mu:g}": _kstr(v) for mu, v in self.recall.items()},
            "hit_rate": {f"{mu:g}": _kstr(v) for mu, v in self.hit_rate.items()},
            "dcg": [d.to_dict() for d in self.dcg],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CmrResult:
        return cls(
            setting=d["setting"], n_queries=int(d["n_queries"]),
            recall={float(mu): _kint(v) for mu, v in d["recall"].items()},
            hit_rate={float(mu): _kint(v) for mu, v in d["hit_rate"].items()},
            dcg=[DcgScores.from_dict(x) for x in d.get("dcg", [])],
            k=d.get("k"), lam=d.get("lam"), n_missing=int(d.get("n_missing", 0)),
            mean_gt_per_query=float(d.get("mean_gt_per_query", 1.0)),
        )


def _kstr(d: Mapping[int, float]) -> dict[str, float]:
    return {str(k): v for k, v in d.items()}


def _kint(d: Mapping[str, float]) -> dict[int, float]:
    return {int(k): float(v) for k, v in d.items()}


def _setting_from_meta(meta: Mapping[str, Any]) -> tuple[str, int | None, float | None]:
    k = meta.get("k")
    lam = meta.get("lam", meta.get("lambda"))
    k = None if k is None else int(k)
    lam = None if lam is None else float(lam)
    if k is not None and lam is not None:
        return f"k={k}, λ={lam:g}", k, lam
    return str(meta.get("method", "")), k, lam


def evaluate_cmr(run: Run | Iterable[RunRow], truth: Sequence[GroundTruth], n_values: Sequence[int] | None = None,
                 iou_thresholds: Sequence[float] | None = None, relevances: Sequence[RunRelevance] | None = None,
                 setting: str | None = None) -> CmrResult:
    """Recall@n,IoU@mu (and DCG/NDCG@n for each relevance) of a corpus-level ranked run.

    The evaluated queries are the ground-truth queries (several rows of one query_id are several
    moments). `setting` defaults to "k=.., λ=.." from the run's meta keys "k" and "lam".
    """
    ns = tuple(int(n) for n in (CMR_N_VALUES if n_values is None else n_values))
    mus = tuple(float(m) for m in (CMR_IOUS if iou_thresholds is None else iou_thresholds))
    meta = run.meta if isinstance(run, Run) else {}
    label, k, lam = _setting_from_meta(meta)
    by_q = group_run(_rows(run))
    gt_by_q = group_truth(truth)
    extra = set(by_q) - set(gt_by_q)
    if extra:
        log.warning("%d run queries have no ground truth and are ignored", len(extra))
    n_missing = sum(1 for q in gt_by_q if q not in by_q)
    if n_missing:
        log.warning("%d of %d ground-truth queries are missing from the run (scored 0)", n_missing, len(gt_by_q))

    per_q_recall = {mu: {n: [] for n in ns} for mu in mus}
    per_q_hit = {mu: {n: [] for n in ns} for mu in mus}
    for qid, gts in gt_by_q.items():
        rows = by_q.get(qid, [])
        pm = np.array([r.motion_id for r in rows], dtype=np.int64)
        ps = np.array([(r.start_s, r.end_s) for r in rows], dtype=np.float64).reshape(-1, 2)  # (R, 2)
        gm = np.array([g.motion_id for g in gts], dtype=np.int64)
        gs = np.array([(g.start_s, g.end_s) for g in gts], dtype=np.float64).reshape(-1, 2)  # (G, 2)
        for mu in mus:
            fr = first_hit_ranks(pm, ps, gm, gs, mu)
            for n in ns:
                per_q_recall[mu][n].append(recall_at_n(fr, n))
                per_q_hit[mu][n].append(float((fr <= n).any()))

    def mean(x: list[float]) -> float:
        return float(np.mean(x)) if x else 0.0

    recall = {mu: {n: mean(per_q_recall[mu][n]) for n in ns} for mu in mus}
    hit = {mu: {n: mean(per_q_hit[mu][n]) for n in ns} for mu in mus}
    dcgs: list[DcgScores] = []
    for rel in relevances or ():
        dcg: dict[int, list[float]] = {n: [] for n in ns}
        for qid in gt_by_q:
            values = rel.by_query.get(qid, np.zeros(0))
            n_rows = len(by_q.get(qid, []))
            if len(values) != n_rows:
                raise CorpusError(f"relevance {rel.name!r}, query {qid!r}",
                                  f"{len(values)} relevances for {n_rows} run rows")
            for n in ns:
                dcg[n].append(dcg_at_n(values, n))
        mean_dcg = {n: mean(dcg[n]) for n in ns}
        dcgs.append(DcgScores(relevance=rel.name, dcg=mean_dcg,
                              ndcg={n: mean_dcg[n] / ideal_dcg(n) for n in ns},
                              ideal={n: ideal_dcg(n) for n in ns}))
    return CmrResult(
        setting=label if setting is None else setting, n_queries=len(gt_by_q), recall=recall, hit_rate=hit,
        dcg=dcgs, k=k, lam=lam, n_missing=n_missing,
        mean_gt_per_query=mean([float(len(v)) for v in gt_by_q.values()]),
    )


def relevance_from_rows(name: str, run: Run | Iterable[RunRow], fn: Callable[[RunRow], float]) -> RunRelevance:
    """Relevance of every row by a caller function, e.g. a retrieval model's text-moment similarity
    (the paper's text-motion relevance)."""
    by_q = group_run(_rows(run))
    return RunRelevance(name=name, by_query={q: np.array([fn(r) for r in rows], dtype=np.float64)
                                              for q, rows in by_q.items()})


def labels_by_motion(truth: Iterable[GroundTruth]) -> dict[int, list[Annotation]]:
    """motion_id -> its labelled moments as Annotations (for `text_text_relevance`)."""
    out: dict[int, list[Annotation]] = {}
    for g in truth:
        out.setdefault(g.motion_id, []).append(Annotation(text=g.text, start_s=g.start_s, end_s=g.end_s,
                                                          seg_id=g.query_id))
    return out


def text_text_relevance(run: Run | Iterable[RunRow], labels: Mapping[int, Sequence[Annotation]],
                        encode: Callable[[list[str]], np.ndarray], name: str = "text-text",
                        min_cover: float = 0.5) -> RunRelevance:
    """Text-text relevance (paper Table VIII, right): the query's similarity to a text describing each moment.

    Where dense labels exist, the labels overlapping the moment describe it (instead of the paper's
    motion-to-text captioner): a label counts when its intersection with the moment covers at least
    `min_cover` of the shorter of the two. Relevance = max(0, the best cosine between the query and a
    counting label); 0 when no label counts. `encode(texts) -> (N, D)` must return L2-normalised rows
    (e.g. `sentence_encoder().encode`); every distinct text is encoded once.
    """
    rows = _rows(run)
    texts = sorted({r.query for r in rows} | {a.text for anns in labels.values() for a in anns})
    if not texts:
        return RunRelevance(name=name, by_query={})
    emb = np.asarray(encode(texts), dtype=np.float32)
    if emb.shape[0] != len(texts):
        raise CorpusError("text_text_relevance", f"encode returned {emb.shape[0]} rows for {len(texts)} texts")
    index = {t: i for i, t in enumerate(texts)}
    motion_spans: dict[int, np.ndarray] = {}
    motion_text_ix: dict[int, np.ndarray] = {}
    for mid, anns in labels.items():
        motion_spans[mid] = as_spans([(a.start_s, a.end_s) for a in anns], f"labels of motion {mid}")
        motion_text_ix[mid] = np.array([index[a.text] for a in anns], dtype=np.int64)
    by_q = group_run(rows)
    out: dict[str, np.ndarray] = {}
    for qid, q_rows in by_q.items():
        rel = np.zeros(len(q_rows))
        for j, r in enumerate(q_rows):
            spans = motion_spans.get(r.motion_id)
            if spans is None or len(spans) == 0:
                continue
            inter = np.maximum(np.minimum(spans[:, 1], r.end_s) - np.maximum(spans[:, 0], r.start_s), 0.0)
            shorter = np.minimum(spans[:, 1] - spans[:, 0], r.end_s - r.start_s)
            cover = np.divide(inter, shorter, out=np.zeros_like(inter), where=shorter > 0)
            ok = cover >= min_cover
            ok &= inter > 0
            if ok.any():
                cos = emb[motion_text_ix[r.motion_id][ok]] @ emb[index[r.query]]
                rel[j] = max(0.0, float(cos.max()))
        out[qid] = rel
    return RunRelevance(name=name, by_query=out)


# ------------------------------------------------------------------------------ ground truth and baseline
def _duration_s(m: Motion) -> float:
    d = m.meta.get("_duration_s") if m.meta else None
    return float(d) if d is not None else float(m.duration_s)


def ground_truth_from_motions(motions: Iterable[Motion]) -> list[GroundTruth]:
    """One ground-truth row per annotation of stored motions; query_id = "<motion_id>:<seg_id or index>"."""
    out: list[GroundTruth] = []
    for m in motions:
        if m.motion_id is None:
            raise CorpusError(f"motion {m.name!r}", "has no motion_id (read motions from the store)")
        for i, a in enumerate(m.annotations):
            where = f"motion {m.name!r}, annotation {i} ({a.text!r})"
            if not (math.isfinite(a.start_s) and math.isfinite(a.end_s)) or a.start_s > a.end_s:
                raise CorpusError(where, f"bad span [{a.start_s}, {a.end_s}]")
            out.append(GroundTruth(query_id=f"{m.motion_id}:{a.seg_id or i}", motion_id=int(m.motion_id),
                                   start_s=float(a.start_s), end_s=float(a.end_s), text=a.text))
    return out


@dataclass
class PriorSpan:
    """Prior-only localizer: the training set's mean relative span, stretched over any motion.

    Predicts ``[rel_start * D, rel_end * D]`` for a motion of duration D, whatever the query.
    """

    rel_start: float
    rel_end: float
    n_annotations: int

    @classmethod
    def fit_relative(cls, rel_starts: np.ndarray, rel_ends: np.ndarray) -> PriorSpan:
        s = np.clip(np.asarray(rel_starts, dtype=np.float64).reshape(-1), 0.0, 1.0)
        e = np.clip(np.asarray(rel_ends, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if s.size == 0 or s.shape != e.shape:
            raise CorpusError("PriorSpan.fit", f"need equally many (> 0) starts and ends, got {s.size}, {e.size}")
        if (s > e).any():
            i = int(np.flatnonzero(s > e)[0])
            raise CorpusError(f"PriorSpan.fit: span {i}", f"reversed relative span [{s[i]}, {e[i]}]")
        return cls(rel_start=float(s.mean()), rel_end=float(e.mean()), n_annotations=int(s.size))

    @classmethod
    def fit(cls, motions: Iterable[Motion]) -> PriorSpan:
        """Fit on the annotations of (training) motions; times are clipped to [0, duration]."""
        starts: list[float] = []
        ends: list[float] = []
        for m in motions:
            d = _duration_s(m)
            if d <= 0:
                log.warning("motion %r has no duration; skipped by the prior", m.name)
                continue
            for i, a in enumerate(m.annotations):
                if a.start_s > a.end_s:
                    raise CorpusError(f"motion {m.name!r}, annotation {i}", f"reversed span [{a.start_s}, {a.end_s}]")
                starts.append(a.start_s / d)
                ends.append(a.end_s / d)
        return cls.fit_relative(np.array(starts), np.array(ends))

    def spans_s(self, durations_s: np.ndarray | Sequence[float]) -> np.ndarray:
        """(N,) durations -> (N, 2) predicted [start_s, end_s]."""
        d = np.asarray(durations_s, dtype=np.float64).reshape(-1, 1)  # (N, 1)
        return d * np.array([[self.rel_start, self.rel_end]])  # (N, 2)


def prior_run(truth: Sequence[GroundTruth], durations_s: Mapping[int, float], prior: PriorSpan) -> list[RunRow]:
    """Run rows of the prior-only baseline: one rank-1 moment per ground-truth query, on its motion."""
    out: list[RunRow] = []
    seen: set[str] = set()
    for g in truth:
        if g.query_id in seen:
            continue
        seen.add(g.query_id)
        if g.motion_id not in durations_s:
            raise CorpusError(f"query {g.query_id!r}", f"no duration for motion {g.motion_id}")
        start_s, end_s = prior.spans_s([durations_s[g.motion_id]])[0]
        out.append(RunRow(query_id=g.query_id, query=g.text, motion_id=g.motion_id, start_s=float(start_s),
                          end_s=float(end_s), rank=1, score=1.0, p_se=1.0, r=None))
    return out
