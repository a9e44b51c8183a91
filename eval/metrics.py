"""Evaluation metrics, pure numpy: temporal IoU, R@1 / mIoU, corpus Recall@n,IoU@mu, DCG / NDCG.

Nothing here imports a model or the search code; inputs are arrays of spans (seconds) and motion ids.
Conventions (written down because papers and codebases differ):

- A span is ``[start_s, end_s]`` with ``start_s <= end_s``; a reversed span or a non-finite bound is an
  error (`CorpusError` naming the span), never silently clipped.
- Temporal IoU = |A ∩ B| / |A ∪ B|. Touching spans have IoU 0. When the union has zero length (two
  zero-length spans) the IoU is 0: a point has no measure, so it can never be a hit.
- A hit at threshold ``mu`` means ``IoU >= mu`` (VSLNet / TVR code; the paper writes "greater than").
- Scores are fractions in [0, 1]; tables multiply by 100.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.corpus.types import CorpusError

log = logging.getLogger(__name__)

# Paper Sec. IV-A: R@1 at these IoUs, plus mIoU.
LOCALIZATION_IOUS: tuple[float, ...] = (0.5, 0.7, 0.9)
# Paper Sec. V / Table VIII: Recall@n, IoU@mu and DCG@n.
CMR_N_VALUES: tuple[int, ...] = (1, 10, 50, 100)
CMR_IOUS: tuple[float, ...] = (0.5, 0.7)


def as_spans(spans: np.ndarray | Sequence[Sequence[float]], where: str = "spans") -> np.ndarray:
    """Validate spans and return them as a (N, 2) float64 array.

    Raises `CorpusError` when the shape is not (N, 2), a bound is not finite, or a span is reversed
    (start > end); the message names the offending row.
    """
    a = np.asarray(spans, dtype=np.float64)
    if a.ndim == 1 and a.shape[0] == 2:
        a = a[None, :]  # (1, 2)
    if a.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise CorpusError(where, f"spans must have shape (N, 2), got {a.shape}")
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CorpusError(f"{where}[{i}]", f"non-finite span bounds {a[i].tolist()}")
    rev = a[:, 0] > a[:, 1]
    if rev.any():
        i = int(np.flatnonzero(rev)[0])
        raise CorpusError(f"{where}[{i}]", f"reversed span: start_s={a[i, 0]} > end_s={a[i, 1]}")
    return a


def temporal_iou(a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]]
                 ) -> np.ndarray:
    """Pairwise temporal IoU: (N, 2) x (M, 2) spans -> (N, M) in [0, 1]."""
    a = as_spans(a, "temporal_iou: a")
    b = as_spans(b, "temporal_iou: b")
    inter = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])  # (N, M)
    inter = np.maximum(inter, 0.0)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter  # (N, M)
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def temporal_iou_paired(a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]]
                        ) -> np.ndarray:
    """Row-wise temporal IoU of two equally long span lists: (N, 2), (N, 2) -> (N,)."""
    a = as_spans(a, "temporal_iou_paired: a")
    b = as_spans(b, "temporal_iou_paired: b")
    if a.shape != b.shape:
        raise CorpusError("temporal_iou_paired", f"span lists differ in length: {len(a)} vs {len(b)}")
    inter = np.maximum(np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]), 0.0)
    union = (a[:, 1] - a[:, 0]) + (b[:, 1] - b[:, 0]) - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def best_iou_over_sets(pred: np.ndarray | Sequence[Sequence[float]], gt_sets: Sequence[np.ndarray]) -> np.ndarray:
    """For query q, the best IoU of ``pred[q]`` with any span of ``gt_sets[q]`` ((G_q, 2)); (Q,).

    An empty set gives IoU 0. This is the Assigned protocol's score; with one span per set it is the
    Normal protocol's.
    """
    p = as_spans(pred, "best_iou_over_sets: pred")
    if len(gt_sets) != len(p):
        raise CorpusError("best_iou_over_sets", f"{len(p)} predictions but {len(gt_sets)} ground-truth sets")
    sizes = np.array([len(g) for g in gt_sets], dtype=np.int64)
    if sizes.sum() == 0:
        return np.zeros(len(p))
    flat = as_spans(np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in gt_sets]),
                    "best_iou_over_sets: gt")  # (sum G_q, 2)
    owner = np.repeat(np.arange(len(p)), sizes)  # (sum G_q,)
    ious = temporal_iou_paired(p[owner], flat)
    best = np.zeros(len(p))
    np.maximum.at(best, owner, ious)
    return best


@dataclass
class LocalizationScores:
    """R@1 at each IoU threshold and mIoU of a set of queries under one protocol.

    `recall_at_iou[mu]` is the fraction of queries whose top-1 moment has IoU >= mu with a ground truth;
    `miou` the mean IoU. `ious` (Q,) keeps the per-query IoUs (not written to JSON).
    """

    protocol: str  # "normal" | "assigned"
    n_queries: int
    recall_at_iou: dict[float, float]
    miou: float
    n_missing: int = 0  # ground-truth queries absent from the run (scored IoU 0)
    cos_threshold: float | None = None  # Assigned: text similarity must exceed this cosine
    similarity_model: str = ""  # Assigned: the sentence encoder behind the similarities
    mean_gt_per_query: float = 1.0  # Assigned: mean size of the ground-truth sets
    ious: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "n_queries": self.n_queries,
            "recall_at_iou": {f"{k:g}": v for k, v in self.recall_at_iou.items()},
            "miou": self.miou,
            "n_missing": self.n_missing,
            "cos_threshold": self.cos_threshold,
            "paper_threshold": None if self.cos_threshold is None else (self.cos_threshold + 1.0) / 2.0,
            "similarity_model": self.similarity_model,
            "mean_gt_per_query": self.mean_gt_per_query,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LocalizationScores:
        return cls(
            protocol=d["protocol"], n_queries=int(d["n_queries"]),
            recall_at_iou={float(k): float(v) for k, v in d["recall_at_iou"].items()},
            miou=float(d["miou"]), n_missing=int(d.get("n_missing", 0)),
            cos_threshold=d.get("cos_threshold"), similarity_model=d.get("similarity_model", ""),
            mean_gt_per_query=float(d.get("mean_gt_per_query", 1.0)),
        )


def localization_scores(ious: np.ndarray, iou_thresholds: Sequence[float] | None = None,
                        protocol: str = "normal") -> LocalizationScores:
    """R@1 at IoU >= mu for each threshold and mIoU from per-query top-1 IoUs (Q,)."""
    thr = tuple(LOCALIZATION_IOUS if iou_thresholds is None else iou_thresholds)
    x = np.asarray(ious, dtype=np.float64).reshape(-1)
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise CorpusError("localization_scores", "IoUs must be finite and in [0, 1]")
    n = int(x.size)
    recall = {float(mu): (float((x >= mu).mean()) if n else 0.0) for mu in thr}
    return LocalizationScores(protocol=protocol, n_queries=n, recall_at_iou=recall,
                              miou=float(x.mean()) if n else 0.0, ious=x)


def first_hit_ranks(pred_motion_ids: np.ndarray, pred_spans: np.ndarray, gt_motion_ids: np.ndarray,
                    gt_spans: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Rank (1-based) of the first prediction that hits each ground-truth moment; (G,) float, inf if none.

    `pred_*` are one query's ranked list, best first ((R,), (R, 2)); `gt_*` its ground-truth moments
    ((G,), (G, 2)). A prediction hits a ground truth when it is on the same motion and IoU >= mu.
    Each ground truth is credited once, at its earliest hit, however many predictions hit it; one
    prediction may hit several (near-duplicate) ground truths, e.g. the same action labelled by two
    annotators.
    """
    pm = np.asarray(pred_motion_ids).reshape(-1)
    gm = np.asarray(gt_motion_ids).reshape(-1)
    ps = as_spans(pred_spans, "first_hit_ranks: pred")
    gs = as_spans(gt_spans, "first_hit_ranks: gt")
    if len(pm) != len(ps) or len(gm) != len(gs):
        raise CorpusError("first_hit_ranks", "motion ids and spans differ in length")
    out = np.full(len(gs), np.inf)
    if len(ps) == 0 or len(gs) == 0:
        return out
    hit = (pm[:, None] == gm[None, :]) & (temporal_iou(ps, gs) >= iou_threshold)  # (R, G)
    any_hit = hit.any(axis=0)
    out[any_hit] = hit[:, any_hit].argmax(axis=0) + 1
    return out


def recall_at_n(first_ranks: np.ndarray, n: int) -> float:
    """Fraction of one query's ground-truth moments hit within the top n (from `first_hit_ranks`)."""
    fr = np.asarray(first_ranks, dtype=np.float64).reshape(-1)
    if fr.size == 0:
        return 0.0
    return float((fr <= n).mean())


def dcg_at_n(relevances: np.ndarray | Sequence[float], n: int) -> float:
    """DCG@n = sum_{i=1..n} rel_i / log2(i + 1) over a ranked list (best first); shorter lists add 0."""
    if n < 1:
        raise CorpusError("dcg_at_n", f"n must be >= 1, got {n}")
    rel = np.asarray(relevances, dtype=np.float64).reshape(-1)[:n]
    if not np.isfinite(rel).all():
        raise CorpusError("dcg_at_n", "relevances must be finite")
    return float((rel / np.log2(np.arange(2, rel.size + 2))).sum())


def ideal_dcg(n: int, rel: float = 1.0) -> float:
    """DCG@n of a list whose every relevance is `rel` (paper Table VIII: 4.54 / 12.90 / 20.94 at 10/50/100)."""
    return dcg_at_n(np.full(n, rel), n)


def ndcg_at_n(relevances: np.ndarray | Sequence[float], n: int,
              ideal_relevances: np.ndarray | Sequence[float] | None = None) -> float:
    """NDCG@n = DCG@n / ideal DCG@n.

    Without `ideal_relevances` the ideal list has relevance 1 everywhere (the paper's normalisation,
    for relevances in [0, 1]); otherwise it is `ideal_relevances` sorted best first (the textbook form).
    """
    if ideal_relevances is None:
        ideal = ideal_dcg(n)
    else:
        ideal = dcg_at_n(np.sort(np.asarray(ideal_relevances, dtype=np.float64).reshape(-1))[::-1], n)
    return dcg_at_n(relevances, n) / ideal if ideal > 0 else 0.0
