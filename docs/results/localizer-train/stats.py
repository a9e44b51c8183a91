"""Summarise `engine eval localize` outputs and training runs for docs/results/localizer-train.md.

    python docs/results/localizer-train/stats.py OUT_DIR [OUT_DIR ...] [--runs RUN_DIR ...]

Per method of each eval folder: Normal / Assigned R@1 IoU0.5 / 0.7 and mIoU (from metrics.json), the median
p_se, the median predicted / true span-length ratio and the share of predictions > 1.5x the true span (from the
run files and truth.jsonl). Per run directory: the best val epoch, its val metrics and the last epoch's loss terms.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _rows(path: Path) -> list[dict]:
    return [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if "query_id" in r]


def eval_table(out: Path) -> list[str]:
    truth = {r["query_id"]: r for r in _rows(out / "truth.jsonl")}
    metrics = {m["method"]: m for m in json.loads((out / "metrics.json").read_text())["results"]}
    lines = []
    for run in sorted(out.glob("run-*.jsonl")):
        name = run.stem[4:]
        if name == "prior":
            continue
        rows = _rows(run)
        ratio = np.array([(r["end_s"] - r["start_s"]) / max(1e-9, truth[r["query_id"]]["end_s"]
                                                           - truth[r["query_id"]]["start_s"]) for r in rows])
        p_se = np.array([r["p_se"] for r in rows if r.get("p_se") is not None])
        m = metrics.get(name) or metrics.get("Retrieval + sliding windows" if name == "sliding-window" else "")
        if m is None:
            continue
        n, a = m["normal"], m["assigned"]
        lines.append(f"| {out.name}/{name} | {100 * n['recall_at_iou']['0.5']:.2f} | {100 * n['recall_at_iou']['0.7']:.2f}"
                     f" | {100 * n['miou']:.2f} | {100 * a['recall_at_iou']['0.5']:.2f}"
                     f" | {100 * a['recall_at_iou']['0.7']:.2f} | {100 * a['miou']:.2f}"
                     f" | {np.median(p_se) if p_se.size else float('nan'):.3f} | {np.median(ratio):.2f}"
                     f" | {100 * np.mean(ratio > 1.5):.0f}% |")
    return lines


def run_summary(run: Path) -> str:
    hist = json.loads((run / "history.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    best = max(hist, key=lambda h: h["val"]["miou"])
    last = hist[-1]
    t = last.get("terms", {})
    v = best["val"]
    ms = cfg.get("max_span") or {}
    return (f"| {run.name} | {len(hist)} | {best['epoch'] + 1} | {100 * v['miou']:.1f} | {100 * v['r1_iou0_5']:.1f}"
            f" | {100 * v['r1_iou0_7']:.1f} | {v.get('p_se_median') or float('nan'):.3f}"
            f" | {v.get('span_ratio_median') or float('nan'):.2f} | {last['loss']:.2f}"
            f" | {t.get('seq', 0):.3f} / {t.get('span', 0):.2f} / {t.get('rec', 0):.2f} / {t.get('align', 0):.2f}"
            f" | {t.get('p_pred_true', float('nan')):.3f} / {t.get('p_rec_true', float('nan')):.3f}"
            f" | {ms.get('seconds', float('nan')):.2f} s / {ms.get('fraction', float('nan')):.3f} ({ms.get('unit', '-')}) |")


def main(argv: list[str]) -> None:
    outs, runs, target = [], [], None
    for a in argv:
        if a == "--runs":
            target = runs
        else:
            (target if target is not None else outs).append(Path(a))
    if outs:
        print("| eval/method | Normal @0.5 | @0.7 | mIoU | Assigned @0.5 | @0.7 | mIoU | p_se med | span ratio med | >1.5x |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for o in outs:
            print("\n".join(eval_table(o)))
    if runs:
        print("\n| run | epochs | best ep | val mIoU | val @0.5 | val @0.7 | val p_se med | val span ratio | loss"
              " | seq / span / rec / align (last ep) | P_pred(true) / P_rec(true) | max span |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
        for r in runs:
            print(run_summary(r))


if __name__ == "__main__":
    main(sys.argv[1:])
