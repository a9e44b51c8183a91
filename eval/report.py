"""Report tables (markdown, laid out like the paper's Tables II-IV and VIII) and metrics JSON.

- `tslm_table`: rows = methods; columns R@1 IoU@0.5 / 0.7 / 0.9 and mIoU (percent), under (a) Normal
  and (b) Assigned, stacked as in the paper (or side by side with ``layout="wide"``). The best value of
  each column is bold, the second underlined, as in the paper.
- `cmr_table`: rows = settings (k, λ); Recall@n,IoU@mu (percent) and, below, DCG@n per relevance with
  the ideal DCG as the first row, then NDCG@n (percent).
- `write_metrics_json` / `read_metrics_json`: the results as JSON (round trip).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.corpus.io import atomic_write_text
from engine.corpus.types import CorpusError
from eval.metrics import LocalizationScores
from eval.protocols import CmrResult, TslmResult

METRICS_VERSION = 1


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _highlight(columns: list[list[float | None]], highlight: bool) -> list[list[str]]:
    """Per column: values -> strings, best bold and second-best underlined (ties share the mark)."""
    out: list[list[str]] = []
    for col in columns:
        vals = sorted({v for v in col if v is not None}, reverse=True)
        cells = []
        for v in col:
            if v is None:
                cells.append("–")
                continue
            s = _pct(v)
            if highlight and len(col) > 1 and vals and v == vals[0]:
                s = f"**{s}**"
            elif highlight and len(col) > 2 and len(vals) > 1 and v == vals[1]:
                s = f"<u>{s}</u>"
            cells.append(s)
        out.append(cells)
    return out


def _loc_values(s: LocalizationScores | None, ious: Sequence[float]) -> list[float | None]:
    if s is None:
        return [None] * (len(ious) + 1)
    return [s.recall_at_iou.get(float(mu)) for mu in ious] + [s.miou]


def _ious_of(results: Sequence[TslmResult]) -> list[float]:
    ious: list[float] = []
    for r in results:
        for s in (r.normal, r.assigned):
            if s is not None:
                for mu in s.recall_at_iou:
                    if mu not in ious:
                        ious.append(mu)
    return sorted(ious)


def _assigned_note(results: Sequence[TslmResult]) -> str:
    thr = sorted({r.assigned.cos_threshold for r in results if r.assigned and r.assigned.cos_threshold is not None})
    models = sorted({r.assigned.similarity_model for r in results if r.assigned and r.assigned.similarity_model})
    parts = [f"cos > {t:g}" for t in thr] + models
    return f" ({', '.join(parts)})" if parts else ""


def tslm_table(results: Sequence[TslmResult], title: str | None = None, layout: str = "stacked",
               highlight: bool = True) -> str:
    """Markdown table of single-motion localization results (paper Tables II / III / IV), in percent."""
    if layout not in ("stacked", "wide"):
        raise CorpusError("tslm_table", f"layout must be 'stacked' or 'wide', got {layout!r}")
    results = list(results)
    ious = _ious_of(results)
    metric_cols = [f"IoU@{mu:g}" for mu in ious] + ["mIoU"]
    has_assigned = any(r.assigned is not None for r in results)
    lines: list[str] = []
    if title:
        lines += [f"**{title}**", ""]
    if layout == "wide":
        cols = ["Method"] + [f"Normal {c}" for c in metric_cols]
        if has_assigned:
            cols += [f"Assigned {c}" for c in metric_cols]
        lines += [_row(cols), _row(["---"] + ["---:"] * (len(cols) - 1))]
        values = [_loc_values(r.normal, ious) + (_loc_values(r.assigned, ious) if has_assigned else [])
                  for r in results]
        columns = _highlight([list(c) for c in zip(*values)], highlight) if values else []
        for i, r in enumerate(results):
            lines.append(_row([r.method] + [c[i] for c in columns]))
        if has_assigned:
            lines += ["", f"Assigned{_assigned_note(results)}."]
        return "\n".join(lines) + "\n"
    lines += [_row(["Method"] + metric_cols), _row(["---"] + ["---:"] * len(metric_cols))]
    blocks = [("(a) Normal", [r.normal for r in results])]
    if has_assigned:
        blocks.append((f"(b) Assigned{_assigned_note(results)}", [r.assigned for r in results]))
    for name, scores in blocks:
        lines.append(_row([f"*{name}*"] + [""] * len(metric_cols)))
        values = [_loc_values(s, ious) for s in scores]
        columns = _highlight([list(c) for c in zip(*values)], highlight) if values else []
        for i, r in enumerate(results):
            lines.append(_row([r.method] + [c[i] for c in columns]))
    return "\n".join(lines) + "\n"


def cmr_table(results: Sequence[CmrResult], title: str | None = None, show_ndcg: bool = True) -> str:
    """Markdown tables of corpus-level moment retrieval (paper Table VIII): Recall@n,IoU@mu in percent,
    then DCG@n per relevance with the ideal DCG row, then NDCG@n in percent."""
    results = list(results)
    lines: list[str] = []
    if title:
        lines += [f"**{title}**", ""]
    mus = sorted({mu for r in results for mu in r.recall})
    ns = sorted({n for r in results for v in r.recall.values() for n in v})
    cols = [f"IoU@{mu:g} n={n}" for mu in mus for n in ns]
    lines += ["Recall@n (%)", "", _row(["Hyperparameter"] + cols), _row(["---"] + ["---:"] * len(cols))]
    for r in results:
        cells = [_pct(r.recall[mu][n]) if mu in r.recall and n in r.recall[mu] else "–" for mu in mus for n in ns]
        lines.append(_row([r.setting] + cells))
    rel_names: list[str] = []
    for r in results:
        for d in r.dcg:
            if d.relevance not in rel_names:
                rel_names.append(d.relevance)
    if rel_names:
        dns = sorted({n for r in results for d in r.dcg for n in d.dcg})
        dcols = [f"{name} n={n}" for name in rel_names for n in dns]
        ideal = []
        for name in rel_names:
            for n in dns:
                v = next((d.ideal[n] for r in results for d in r.dcg if d.relevance == name and n in d.ideal), None)
                ideal.append("–" if v is None else f"{v:.2f}")
        lines += ["", "DCG@n", "", _row(["Hyperparameter"] + dcols), _row(["---"] + ["---:"] * len(dcols)),
                  _row(["Ideal DCG"] + ideal)]
        for r in results:
            by = {d.relevance: d for d in r.dcg}
            lines.append(_row([r.setting] + [f"{by[name].dcg[n]:.2f}" if name in by and n in by[name].dcg else "–"
                                             for name in rel_names for n in dns]))
        if show_ndcg:
            lines += ["", "NDCG@n (%)", "", _row(["Hyperparameter"] + dcols), _row(["---"] + ["---:"] * len(dcols))]
            for r in results:
                by = {d.relevance: d for d in r.dcg}
                lines.append(_row([r.setting] + [_pct(by[name].ndcg[n]) if name in by and n in by[name].ndcg
                                                 else "–" for name in rel_names for n in dns]))
    return "\n".join(lines) + "\n"


def markdown_report(results: Sequence[TslmResult | CmrResult], title: str | None = None) -> str:
    """All results as markdown: one TSLM table per dataset, then the CMR table."""
    parts: list[str] = [f"# {title}\n"] if title else []
    tslm = [r for r in results if isinstance(r, TslmResult)]
    datasets: list[str] = []
    for r in tslm:
        if r.dataset not in datasets:
            datasets.append(r.dataset)
    for ds in datasets:
        parts.append(tslm_table([r for r in tslm if r.dataset == ds],
                                title=f"TSLM on {ds}" if ds else "TSLM"))
    cmr = [r for r in results if isinstance(r, CmrResult)]
    if cmr:
        parts.append(cmr_table(cmr, title="Corpus-level moment retrieval"))
    return "\n".join(parts)


def metrics_dict(results: Sequence[TslmResult | CmrResult], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"version": METRICS_VERSION, "meta": dict(meta or {}), "results": [r.to_dict() for r in results]}


def write_metrics_json(path: str | os.PathLike, results: Sequence[TslmResult | CmrResult],
                       meta: dict[str, Any] | None = None) -> Path:
    """Write results (and free-form meta: run files, data, encoder) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(metrics_dict(results, meta), indent=2, ensure_ascii=False,
                                       allow_nan=False) + "\n")
    return path


def read_metrics_json(path: str | os.PathLike) -> list[TslmResult | CmrResult]:
    """Results written by `write_metrics_json`."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CorpusError(str(path), f"cannot read metrics JSON: {e}") from e
    if not isinstance(d, dict) or d.get("version") != METRICS_VERSION:
        raise CorpusError(str(path), f"not a metrics file of version {METRICS_VERSION}")
    out: list[TslmResult | CmrResult] = []
    for i, r in enumerate(d.get("results", [])):
        kind = r.get("kind") if isinstance(r, dict) else None
        try:
            if kind == "tslm":
                out.append(TslmResult.from_dict(r))
            elif kind == "cmr":
                out.append(CmrResult.from_dict(r))
            else:
                raise CorpusError(f"{path}: result {i}", f"unknown kind {kind!r}")
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, CorpusError):
                raise
            raise CorpusError(f"{path}: result {i}", f"malformed result: {e}") from e
    return out


def label_match_table(results, comparisons=(), title: str | None = None) -> str:
    """Markdown: label-match P@10, nDCG@10, mAP@100 (percent) per method, then the paired-bootstrap
    differences (95% CI) of each method against each baseline."""
    lines: list[str] = []
    if title:
        lines += [f"**{title}**", ""]
    results = list(results)
    if not results:
        return "\n".join(lines)
    ns = sorted({n for r in results for n in r.precision})
    cols = [f"P@{n}" for n in ns] + [f"nDCG@{n}" for n in ns] + [f"mAP@{results[0].map_n}", "queries"]
    lines += ["Label match (IoU >= 0.5 with an annotation of the query's label; %)", "",
              _row(["Method"] + cols), _row(["---"] + ["---:"] * len(cols))]
    for r in results:
        cells = [_pct(r.precision[n]) for n in ns] + [_pct(r.ndcg[n]) for n in ns] + [_pct(r.map_at), str(r.n_queries)]
        lines.append(_row([r.setting] + cells))
    comparisons = list(comparisons)
    if comparisons:
        lines += ["", "Paired bootstrap (10,000 resamples of the queries): difference a − b in points, 95% CI", "",
                  _row(["a", "b", "metric", "a − b", "95% CI"]), _row(["---", "---", "---", "---:", "---:"])]
        for d in comparisons:
            lines.append(_row([d.a, d.b, d.metric, f"{100 * d.mean:+.1f}",
                               f"[{100 * d.lo:+.1f}, {100 * d.hi:+.1f}]"]))
    return "\n".join(lines)
