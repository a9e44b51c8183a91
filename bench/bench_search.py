"""Warm query latency of `engine search` (k=200), the fast path against exhaustive and plain search, in one run.

Ours: FAISS top chunks -> top-k motions -> the localizer's fast path (`localizer.fast`: query-independent
tensors per motion, one batch per round, batched decoding), exact top-n pruning.
Exhaustive: the same, localizing all k motions (no pruning): the top-10 must be identical.
Plain: the per-round `Localizer.localize` path with per-motion decoding (`Searcher(fast=False)`).
Naive (--naive-queries): plain, no motion cache, no pruning.
Every timed query has a text no cache has seen; the motions it touches are warm. FLOPs per query are
counted from the localizer's config (`localizer.fast.pair_flops`), the matmul peak is measured in the run.

    OMP_NUM_THREADS=1 python3 bench/bench_search.py --index ~/.cache/motion-engine/demo-index --queries 40
    python3 bench/bench_search.py --synth scale --work /tmp/bench-search      # builds what is missing

Prints p50/p95 latency, the stage breakdown, GFLOP per query and the fraction of the measured fp32 matmul
peak, and whether the top-10 lists are identical; --json for data.
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
    ap.add_argument("--lam", type=float, default=None, help="default: the fitted weights' (fused) or 5 (paper)")
    ap.add_argument("--score", default="fused", choices=["paper", "fused"], help="as engine search --score")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--plain-queries", type=int, default=None, help="queries for the plain path (default all)")
    ap.add_argument("--naive-queries", type=int, default=0, help="queries for the naive pipeline (no motion "
                    "cache, no pruning, plain path; default none)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (pinned)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--r", default="moment", choices=["moment", "motion"], help="r in the score (as engine search --r)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from engine.request import SearchRequest
    from engine.search import Searcher
    from localizer.fast import matmul_peak_gflops, pair_flops

    corpus, index = prepare(args)
    ours = Searcher(index, device=args.device)
    plain = Searcher(ours.index, device=args.device, fast=False)
    queries = (QUERIES * (1 + args.queries // len(QUERIES)))[: args.queries]
    base = SearchRequest(queries[0], k=args.k, lam=args.lam, limit=args.limit, r_mode=args.r, score=args.score)
    # Warm up (text model, FAISS pages, the motion bank of every motion a query will touch), without the
    # bench's own texts: each timed query embeds its text for the first time.
    for q in ("a person stands still", "warming up"):
        ours.search(dataclasses.replace(base, text=q, prune=False))
        plain.search(dataclasses.replace(base, text=q))
    warm = [m for q in queries for m in ours._candidates(ours.retrieval.encode_text([q]), base)[0]]
    ours._encoded_motions(warm)
    ours._motion_bank(True).slots(ours._encoded_motions(warm))
    loc = ours.localizer
    cfg = loc.config.model

    def run(searcher, qs, prune, fresh_text=True):
        lat, cpu, stages, tops, localized, flops = [], [], {}, [], [], []
        for q in qs:
            if fresh_text:  # a warm engine, a new query: its text is not in any text cache
                loc._text_cache.pop(q.strip(), None)
                getattr(searcher.retrieval, "_text_cache", {}).pop(q, None)
            t0, c0 = time.perf_counter(), time.process_time()
            res = searcher.search(dataclasses.replace(base, text=q, prune=prune))
            lat.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            for kk, v in res.timings_s.items():
                stages.setdefault(kk, []).append(v)
            tops.append([(m.motion_id, round(m.start_s, 4), round(m.end_s, 4)) for m in res.moments])
            localized.append(res.localized)
            n_tok = loc.texts_tokens([q])[0].shape[0]
            flops.append(res.localized * pair_flops(cfg, cfg.n_snippets, n_tok, fast=searcher.fast))
        loc_s = statistics.fmean(stages["localize"])
        return {"p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "mean_s": statistics.fmean(lat),
                "cpu_p50_s": pct(cpu, 50), "cpu_p95_s": pct(cpu, 95),
                "stages_mean_s": {kk: statistics.fmean(v) for kk, v in stages.items()},
                "stages_p50_s": {kk: pct(v, 50) for kk, v in stages.items()},
                "mean_localized": statistics.fmean(localized), "localizer_gflop_per_query": statistics.fmean(flops) / 1e9,
                "localize_gflops": statistics.fmean(flops) / 1e9 / loc_s if loc_s > 0 else None}, tops

    peak = matmul_peak_gflops()
    r_ours, tops_ours = run(ours, queries, True)
    r_exh, tops_exh = run(ours, queries, False)
    npq = len(queries) if args.plain_queries is None else args.plain_queries
    r_plain, tops_plain = run(plain, queries[:npq], True)
    peak = max(peak, matmul_peak_gflops())  # before and after: the better of the two
    out = {"corpus": str(ours.store.dir), "index": str(index), "r": args.r, "motions": len(ours.motions),
           "chunks": len(ours.index), "k": args.k, "score": args.score,
           "weights": dataclasses.asdict(ours.search(base).weights), "limit": args.limit, "queries": len(queries),
           "device": args.device, "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
           "matmul_peak_gflops": peak, "localizer": str(ours.localizer_path),
           "localizer_config": {"d_model": cfg.d_model, "n_sgpa": cfg.n_sgpa, "n_snippets": cfg.n_snippets,
                                "n_heads": cfg.n_heads},
           "ours": r_ours, "exhaustive": r_exh, "plain": r_plain,
           "top10_identical_to_exhaustive": f"{sum(a == b for a, b in zip(tops_ours, tops_exh))}/{len(queries)}",
           "top10_identical_to_plain": f"{sum(a == b for a, b in zip(tops_ours, tops_plain))}/{npq}",
           "speedup_p50_vs_plain": r_plain["p50_s"] / r_ours["p50_s"]}
    if args.naive_queries:
        naive = Searcher(ours.index, device=args.device, use_motion_cache=False, fast=False)
        r_naive, tops_naive = run(naive, queries[: args.naive_queries], False)
        out["naive"] = r_naive
        out["top10_identical_to_naive"] = (f"{sum(a == b for a, b in zip(tops_ours, tops_naive))}/"
                                           f"{args.naive_queries}")
    for name in ("ours", "exhaustive", "plain", "naive"):
        if name in out:
            r = out[name]
            r["peak_fraction_localize"] = r["localize_gflops"] / peak if r["localize_gflops"] else None
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['motions']} motions, {out['chunks']} chunks, k={args.k}, {args.score} score {out['weights']}, top-{args.limit}, "
          f"{out['torch_threads']} thread(s), load average {' '.join(f'{x:.2f}' for x in out['loadavg'])}; "
          f"fp32 matmul peak {peak:.0f} GFLOP/s")
    for name in ("ours", "exhaustive", "plain", "naive"):
        if name not in out:
            continue
        r = out[name]
        st = ", ".join(f"{kk} {1000 * v:.1f}" for kk, v in r["stages_p50_s"].items())
        print(f"{name:10s} p50 {1000 * r['p50_s']:.0f} ms  p95 {1000 * r['p95_s']:.0f} ms  (CPU time p50 "
              f"{1000 * r['cpu_p50_s']:.0f} ms, p95 {1000 * r['cpu_p95_s']:.0f} ms)  localized "
              f"{r['mean_localized']:.0f}/{args.k}  stage p50 (ms): {st}")
        print(f"{'':10s} localizer {r['localizer_gflop_per_query']:.2f} GFLOP/query at "
              f"{r['localize_gflops']:.0f} GFLOP/s = {100 * r['peak_fraction_localize']:.0f}% of peak")
    print(f"top-10 identical: to exhaustive {out['top10_identical_to_exhaustive']}, to the plain path "
          f"{out['top10_identical_to_plain']}" + (f", to naive {out['top10_identical_to_naive']}" if args.naive_queries
                                                 else "") + f"; p50 speed-up vs plain {out['speedup_p50_vs_plain']:.1f}x")


if __name__ == "__main__":
    main()
