"""Approximate re-ranking of existing CMR run files with label-match scores: each MLP run's rows re-scored by
p_se ** gamma * exp(lam * r), de-duplicated (IoU >= 0.3 or containment) and capped at 2 per motion.

    python3 docs/results/search-quality/rerank_runs.py RUN_DIR CORPUS_DIR

RUN_DIR is an `engine eval cmr --out` folder (its run-*.jsonl and query-labels.json). Approximate: only the
rows a run returned (its top 100) can be re-ranked. Use it on a validation split only.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from engine.corpus.store import CorpusStore
from engine.corpus.types import Moment
from engine.evaluate import label_pool
from engine.search import dedup_motion
from eval.labelmatch import evaluate_label_match
from eval.runfile import RunRow, read_run


def rerank(run, gamma: float, lam: float) -> list[RunRow]:
    rows = []
    for q, rs in run.by_query().items():
        by_motion: dict[int, list] = {}
        for x in rs:
            score = (x.p_se ** gamma) * math.exp(lam * x.r)
            m = Moment(x.motion_id, x.start_s, x.end_s, score, x.p_se, x.r)
            by_motion.setdefault(x.motion_id, []).append(((-score, 0, x.start_s), m))
        cands = [c for lst in by_motion.values() for c in dedup_motion(lst, 0.3, 2)]
        cands.sort(key=lambda c: c[0])
        rows += [RunRow(q, "", m.motion_id, m.start_s, m.end_s, i, m.score) for i, (_, m) in enumerate(cands, 1)]
    return rows


def main() -> None:
    run_dir, corpus = Path(sys.argv[1]), sys.argv[2]
    store = CorpusStore.open(corpus, create=False)
    anns = {m.motion_id: store.annotations(m.motion_id) for m in store.motion_table()}
    ql = json.loads((run_dir / "query-labels.json").read_text())
    pool, labels = label_pool(anns, ql["label_key"]), ql["labels"]
    for p in sorted(run_dir.glob("run-*.jsonl")):
        run = read_run(p)
        r = evaluate_label_match(run.rows, labels, pool)
        print(f"{p.stem:40s} P@10 {100 * r.precision[10]:5.1f}  nDCG@10 {100 * r.ndcg[10]:5.1f}  "
              f"mAP@100 {100 * r.map_at:5.1f}  ({r.n_queries} queries)")
        if p.stem.startswith("run-mlp"):
            for gamma in (1.0, 0.5, 0.25, 0.0):
                for lam in (5.0, 10.0, 20.0):
                    r2 = evaluate_label_match(rerank(run, gamma, lam), labels, pool)
                    print(f"    re-ranked gamma={gamma:g} lam={lam:g}, de-duplicated, 2 per motion: "
                          f"P@10 {100 * r2.precision[10]:5.1f}  nDCG@10 {100 * r2.ndcg[10]:5.1f}")


if __name__ == "__main__":
    main()
