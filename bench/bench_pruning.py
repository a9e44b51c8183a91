"""Exact pruning and span lengths of the default request over a split's queries: mean motions localized
(of k = 200) and the median returned (top-10) / true span length, for the fused and the paper's score.

    OMP_NUM_THREADS=1 python3 bench/bench_pruning.py --index /tmp/idx-bank \
        --localizer engine/models/localizer-demo [--split test --max-queries 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--localizer", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-queries", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from engine.evaluate import split_queries
    from engine.request import SearchRequest
    from engine.search import Searcher

    s = Searcher(args.index, localizer=args.localizer)
    truth, queries, _ = split_queries(s.store, args.split, args.max_queries, None)
    true_len = statistics.median(g.end_s - g.start_s for g in truth)
    out = {}
    for score in ("fused", "paper"):
        loc, lens, t0 = [], [], time.perf_counter()
        for text in queries.values():
            res = s.search(SearchRequest(text, score=score))
            loc.append(res.localized)
            lens += [m.end_s - m.start_s for m in res.moments]
        out[score] = {"mean_localized": statistics.fmean(loc), "median_span_s": statistics.median(lens),
                      "median_true_span_s": true_len, "ratio": statistics.median(lens) / true_len,
                      "seconds": time.perf_counter() - t0, "queries": len(queries)}
        print(score, out[score], flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
