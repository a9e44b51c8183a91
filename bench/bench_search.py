"""Query latency of `engine search` (k=200) against the naive pipeline, measured in one run.

Ours: FAISS top chunks -> top-k motions -> localizer on cached S-Enc features, exact top-n pruning.
Naive: the same index, but every query localizes all k motions, encodes each motion from its raw
features (no cache) in fp32.

    python3 bench/bench_search.py --corpus corpora/scale --index indexes/scale --queries 40
    python3 bench/bench_search.py --synth large --work /tmp/bench-search      # builds what is missing

Prints p50/p95 latency, the stage breakdown and whether the top-10 lists are identical; --json for data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

QUERIES = [
    "kung fu pose", "a person waves the right hand", "someone jumps forward", "a person walks backwards",
    "kick with the left leg", "a person sits down", "someone claps their hands", "a person bows",
    "running fast", "turn to the left", "a person crawls on the floor", "balancing on one leg",
    "throw something with the right arm", "a person squats", "raise both hands", "spin around",
    "dance steps", "punch with the left fist", "stretching the arms", "stand up from a chair",
]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def prepare(args):
    from engine.home import default_localizer_path, default_retrieval_path, localizer_feature_fn

    corpus = Path(args.corpus) if args.corpus else Path(args.work) / f"corpus-{args.synth}"
    index = Path(args.index) if args.index else Path(args.work) / f"index-{args.synth}"
    if (index / "CURRENT").exists():  # an existing index reads the corpus it was built from
        return None, index
    if not (corpus / "manifest.json").exists():
        from engine.corpus import synth
        from engine.corpus.store import CorpusStore

        t0 = time.perf_counter()
        with CorpusStore.open(corpus) as st:
            st.add_motions(synth.generate(args.synth, seed=0))
        print(f"corpus {corpus}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if not (index / "CURRENT").exists():
        from indexer.build import build_index
        from indexer.config import IndexConfig
        from indexer.model import load_retrieval

        fn, tag = localizer_feature_fn(default_localizer_path())
        t0 = time.perf_counter()
        build_index(corpus, index, load_retrieval(default_retrieval_path()), IndexConfig(dtype=args.dtype),
                    motion_feature_fn=fn, motion_feature_tag=tag)
        print(f"index {index}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return corpus, index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus")
    ap.add_argument("--index")
    ap.add_argument("--synth", default="large", help="preset to build when --corpus is not given")
    ap.add_argument("--work", default="/tmp/bench-search")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--lam", type=float, default=None, help="default 5 (paper), the fitted value (fused)")
    ap.add_argument("--score", default="paper", choices=["paper", "fused"], help="as engine search --score")
    ap.add_argument("--localizer", default=None, help="default: the index's (its score.json for --score fused)")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--naive-queries", type=int, default=None, help="queries for the naive pipeline (default all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--r", default="moment", choices=["moment", "motion"], help="r in the score (as engine search --r)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from engine.request import SearchRequest
    from engine.search import Searcher

    corpus, index = prepare(args)
    ours = Searcher(index, localizer=args.localizer, device=args.device)
    naive = Searcher(index, localizer=args.localizer, device=args.device, use_motion_cache=False)
    queries = (QUERIES * (1 + args.queries // len(QUERIES)))[: args.queries]
    base = SearchRequest(queries[0], k=args.k, lam=args.lam, limit=args.limit, r_mode=args.r, score=args.score)
    weights = ours.search(base).weights  # warm up (text model, FAISS pages)
    args.lam = weights.lam

    def run(searcher, qs, naive_mode):
        lat, stages, tops, localized = [], {}, [], []
        for q in qs:
            t0 = time.perf_counter()
            res = searcher.search(dataclasses.replace(base, text=q, prune=not naive_mode))
            lat.append(time.perf_counter() - t0)
            for kk, v in res.timings_s.items():
                stages.setdefault(kk, []).append(v)
            tops.append([(m.motion_id, round(m.start_s, 4), round(m.end_s, 4)) for m in res.moments])
            localized.append(res.localized)
        return {"p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "mean_s": statistics.fmean(lat),
                "stages_mean_s": {kk: statistics.fmean(v) for kk, v in stages.items()},
                "mean_localized": statistics.fmean(localized)}, tops

    # Ours: the motion cache is warm after the first query that touches a motion (as in a served engine).
    r_ours, tops_ours = run(ours, queries, False)
    nq = args.naive_queries or len(queries)
    r_naive, tops_naive = run(naive, queries[:nq], True)
    same = sum(a == b for a, b in zip(tops_ours, tops_naive))
    out = {"corpus": str(ours.store.dir), "index": str(index), "r": args.r, "motions": len(ours.motions), "chunks": len(ours.index),
           "k": args.k, "lam": args.lam, "score": args.score, "weights": dataclasses.asdict(weights),
           "limit": args.limit, "queries": len(queries), "naive_queries": nq,
           "device": args.device, "torch_threads": torch.get_num_threads(), "ours": r_ours, "naive": r_naive,
           "top10_identical": f"{same}/{nq}", "speedup_p50": r_naive["p50_s"] / r_ours["p50_s"]}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['motions']} motions, {out['chunks']} chunks, k={args.k}, {args.score} score {weights}, "
          f"top-{args.limit}")
    for name, r in (("ours", r_ours), ("naive", r_naive)):
        st = ", ".join(f"{kk} {1000 * v:.0f} ms" for kk, v in r["stages_mean_s"].items())
        print(f"{name:6s} p50 {1000 * r['p50_s']:.0f} ms  p95 {1000 * r['p95_s']:.0f} ms  "
              f"(localized {r['mean_localized']:.0f} of {args.k}; {st})")
    print(f"top-10 identical: {out['top10_identical']}; p50 speed-up {out['speedup_p50']:.1f}x")


if __name__ == "__main__":
    main()
