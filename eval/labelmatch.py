"""Label-match relevance for corpus search (pure numpy, no model): a returned moment is relevant when its
temporal IoU with an annotation of the query's *label* (the synthetic action, the Bandai content, any
annotation `extra` key) anywhere in the corpus is >= `iou` (0.5).

Unlike matching one ground-truth moment, this counts every correct moment in the library, which is what
an animator judges; and unlike text-similarity relevance it does not saturate. Conventions:

- Each labelled annotation is credited once, to the best-ranked moment that matches it: near-duplicate
  moments of one annotation earn nothing after the first (a ranking full of duplicates is penalised).
- P@n = relevant moments in the top n / n (a list shorter than n counts the missing ranks as misses).
- nDCG@n: binary gains, ideal = min(n, R) relevant moments first, R = the label's annotations.
- AP@n = sum over relevant ranks i <= n of P@i, divided by min(n, R) (so mAP@100 is in [0, 1]).
- Queries whose label has no annotation in the corpus are left out (and counted in `n_unlabelled`).

`paired_bootstrap` gives the 95% interval of a per-query difference between two methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eval.metrics import temporal_iou
from eval.runfile import RunRow, group_run

LABEL_NS = (10,)
MAP_N = 100


@dataclass(frozen=True)
class LabelledSpan:
    """One annotation of the corpus with its label: the pool that label-match relevance is judged against."""

    motion_id: int
    start_s: float
    end_s: float
    label: str


@dataclass
class LabelMatchResult:
    """Label-match scores of one run (means over queries) and the per-query values behind them."""

    setting: str
    n_queries: int
    precision: dict[int, float]
    ndcg: dict[int, float]
    map_at: float
    map_n: int = MAP_N
    n_unlabelled: int = 0
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)  # query_id -> {"p@10": ..}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "label-match", "setting": self.setting, "n_queries": self.n_queries,
                "precision": {str(n): v for n, v in self.precision.items()},
                "ndcg": {str(n): v for n, v in self.ndcg.items()}, "map": self.map_at, "map_n": self.map_n,
                "n_unlabelled": self.n_unlabelled}

    def values(self, metric: str) -> tuple[list[str], np.ndarray]:
        """(query ids, per-query values) of a metric named like "p@10", "ndcg@10", "ap@100"."""
        qids = sorted(self.per_query)
        return qids, np.array([self.per_query[q][metric] for q in qids], dtype=np.float64)


def pool_by_label(spans: Sequence[LabelledSpan]) -> dict[str, dict[int, np.ndarray]]:
    """label -> motion_id -> (A, 2) annotation spans."""
    tmp: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for s in spans:
        tmp.setdefault(s.label, {}).setdefault(int(s.motion_id), []).append((float(s.start_s), float(s.end_s)))
    return {lab: {m: np.asarray(v, dtype=np.float64).reshape(-1, 2) for m, v in by_m.items()}
            for lab, by_m in tmp.items()}


def relevance_list(rows: Sequence[RunRow], pool: Mapping[int, np.ndarray], iou: float = 0.5) -> np.ndarray:
    """Binary relevance of a ranked list (best first): 1 where the row matches a not-yet-credited
    annotation of the label on its motion (IoU >= iou)."""
    used: dict[int, np.ndarray] = {}
    rel = np.zeros(len(rows))
    for i, r in enumerate(rows):
        spans = pool.get(int(r.motion_id))
        if spans is None or len(spans) == 0:
            continue
        ious = temporal_iou(np.array([[r.start_s, r.end_s]]), spans)[0]  # (A,)
        taken = used.setdefault(int(r.motion_id), np.zeros(len(spans), dtype=bool))
        ok = (ious >= iou) & ~taken
        if ok.any():
            j = int(np.argmax(np.where(ok, ious, -1.0)))
            taken[j] = True
            rel[i] = 1.0
    return rel


def _ndcg(rel: np.ndarray, n: int, n_relevant: int) -> float:
    disc = 1.0 / np.log2(np.arange(2, n + 2))
    dcg = float((rel[:n] * disc[: min(n, len(rel))]).sum())
    ideal = float(disc[: min(n, n_relevant)].sum())
    return dcg / ideal if ideal > 0 else 0.0


def _ap(rel: np.ndarray, n: int, n_relevant: int) -> float:
    r = rel[:n]
    if not r.any():
        return 0.0
    prec = np.cumsum(r) / np.arange(1, len(r) + 1)
    return float((prec * r).sum() / min(n, n_relevant))


def evaluate_label_match(rows: Sequence[RunRow], query_labels: Mapping[str, str], spans: Sequence[LabelledSpan],
                         setting: str = "", iou: float = 0.5, ns: Sequence[int] = LABEL_NS,
                         map_n: int = MAP_N) -> LabelMatchResult:
    """P@n, nDCG@n and mAP@map_n of a run, every query judged by label match against `spans`.

    `query_labels` (query_id -> label) names the evaluated queries; a query with no rows scores 0."""
    pools = pool_by_label(spans)
    by_q = group_run(rows)
    per_q: dict[str, dict[str, float]] = {}
    unlabelled = 0
    for qid, label in query_labels.items():
        pool = pools.get(label)
        if not pool:
            unlabelled += 1
            continue
        n_rel = sum(len(v) for v in pool.values())
        rel = relevance_list(by_q.get(qid, []), pool, iou)
        vals = {}
        for n in ns:
            vals[f"p@{n}"] = float(rel[:n].sum() / n)
            vals[f"ndcg@{n}"] = _ndcg(rel, n, n_rel)
        vals[f"ap@{map_n}"] = _ap(rel, map_n, n_rel)
        per_q[qid] = vals

    def mean(key: str) -> float:
        return float(np.mean([v[key] for v in per_q.values()])) if per_q else 0.0

    return LabelMatchResult(setting=setting, n_queries=len(per_q), precision={n: mean(f"p@{n}") for n in ns},
                            ndcg={n: mean(f"ndcg@{n}") for n in ns}, map_at=mean(f"ap@{map_n}"), map_n=map_n,
                            n_unlabelled=unlabelled, per_query=per_q)


@dataclass(frozen=True)
class PairedDiff:
    """Mean per-query difference (a - b) with its paired-bootstrap 95% interval."""

    metric: str
    a: str
    b: str
    mean: float
    lo: float
    hi: float
    n_queries: int

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "a": self.a, "b": self.b, "mean": self.mean, "lo": self.lo, "hi": self.hi,
                "n_queries": self.n_queries}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0,
                     alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean(a - b), lower, upper): percentile interval of the mean difference over resampled queries."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_bootstrap: need two equally long 1-d arrays (got {a.shape}, {b.shape})")
    if len(a) == 0:
        return 0.0, 0.0, 0.0
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))  # (B, Q)
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(d.mean()), float(lo), float(hi)


def compare(a: LabelMatchResult, b: LabelMatchResult, metric: str = "p@10", n_boot: int = 10_000,
            seed: int = 0) -> PairedDiff:
    """Paired bootstrap of `metric` between two runs over the queries both evaluated."""
    va, vb = paired_values(a.per_query, b.per_query, metric)
    mean, lo, hi = paired_bootstrap(va, vb, n_boot=n_boot, seed=seed)
    return PairedDiff(metric=metric, a=a.setting, b=b.setting, mean=mean, lo=lo, hi=hi, n_queries=len(va))


def paired_values(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]],
                  metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Two runs' per-query values of `metric` (query_id -> {metric: value}) over the queries both hold,
    in query-id order."""
    common = sorted(set(a) & set(b))
    return (np.array([a[q][metric] for q in common], dtype=np.float64),
            np.array([b[q][metric] for q in common], dtype=np.float64))


REPORT_METRICS = ("p@10", "ndcg@10", "ap@100")


def _method(results: list[dict], prefix: str) -> dict | None:
    found = [r for r in results if r["setting"].startswith(prefix)]
    return found[0] if found else None


def compare_reports(new: dict, old: dict, sets: list[str] | None = None, prefix: str = "engine, fused",
                    n_boot: int = 10_000) -> list[dict]:
    """Two models on the same queries, from two `scripts/fit_score.py --report` files (their `sets`, each
    method's `per_query` values): one row per (query set, metric) with the mean NEW − OLD per-query
    difference of the method whose name starts with `prefix`, and its paired-bootstrap 95% interval.
    Raises KeyError for a set or method missing from a report, ValueError when the queries differ."""
    names = sets or [n for n in new.get("sets", {}) if n in old.get("sets", {})]
    rows = []
    for name in names:
        if name not in new.get("sets", {}) or name not in old.get("sets", {}):
            raise KeyError(f"query set {name!r} is not in both reports")
        a, b = _method(new["sets"][name]["results"], prefix), _method(old["sets"][name]["results"], prefix)
        if a is None or b is None:
            raise KeyError(f"{name}: no method starting with {prefix!r} in both reports")
        if "per_query" not in a or "per_query" not in b:
            raise KeyError(f"{name}: a report has no per-query values (written by an older fit_score.py)")
        qa, qb = set(a["per_query"]), set(b["per_query"])
        if qa != qb:
            raise ValueError(f"{name}: the reports evaluated different queries ({len(qa ^ qb)} differ)")
        for m in REPORT_METRICS:
            va, vb = paired_values(a["per_query"], b["per_query"], m)
            mean, lo, hi = paired_bootstrap(va, vb, n_boot=n_boot)
            rows.append({"set": name, "metric": m, "new": float(va.mean()), "old": float(vb.mean()),
                         "diff": mean, "lo": lo, "hi": hi, "n_queries": len(va),
                         "new_setting": a["setting"], "old_setting": b["setting"]})
    return rows
