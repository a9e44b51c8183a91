"""The server's micro-batcher in process (no HTTP): concurrent searches through `MicroBatcher` on the fast
and the plain localizer path, against one sequential search per request, in one run.

    OMP_NUM_THREADS=1 python3 bench/bench_batcher.py --requests 64 --concurrency 8 --queries 4

Prints, per path: req/s (wall), requests per CPU-second of this process (what one core of its own would
serve), p50/p95 latency, and whether every answer equals the sequential one; --json for data.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

QUERIES = [
    "kung fu pose", "a person waves the right hand", "someone jumps forward", "a person walks backwards",
    "kick with the left leg", "a person sits down", "someone claps their hands", "a person bows",
]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def key(res) -> list[tuple]:
    return [(m.motion_id, round(m.start_s, 6), round(m.end_s, 6)) for m in res.moments]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default=None, help="index directory (default: the built-in one)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--queries", type=int, default=4, help="distinct queries (cycled)")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from engine.request import SearchRequest
    from engine.search import Searcher, load_searcher
    from engine.serve.batcher import MicroBatcher

    fast = load_searcher(args.index)
    plain = Searcher(fast.index, fast=False)
    reqs = [SearchRequest(QUERIES[i % args.queries], k=args.k) for i in range(args.requests)]
    distinct = list(dict.fromkeys(reqs))
    out = {"motions": len(fast.motions), "k": args.k, "requests": args.requests, "concurrency": args.concurrency,
           "distinct_queries": len(distinct), "threads": torch.get_num_threads()}
    for name, searcher in (("fast", fast), ("plain", plain)):
        for r in distinct:  # warm: text models, the motion bank, labels
            searcher.search(r)
        c0 = time.process_time()
        want = {r: key(searcher.search(r)) for r in distinct}
        seq_cpu = (time.process_time() - c0) / len(distinct)
        batcher = MicroBatcher(searcher, cache_size=0)
        lat: list[float] = []

        def one(r, batcher=batcher, lat=lat):
            t0 = time.perf_counter()
            res = batcher.search(r)
            lat.append(time.perf_counter() - t0)
            return res

        try:
            t0, c0 = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(args.concurrency) as pool:
                got = list(pool.map(one, reqs))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            batcher.close()
        out[name] = {"req_per_s": len(reqs) / wall, "req_per_cpu_s": len(reqs) / cpu,
                     "sequential_cpu_per_query_s": seq_cpu, "p50_s": pct(lat, 50), "p95_s": pct(lat, 95),
                     "mean_s": statistics.fmean(lat), "batches": batcher.batches,
                     "identical": sum(key(g) == want[r] for g, r in zip(got, reqs))}
    out["fast_equals_plain"] = all(key(fast.search(r)) == key(plain.search(r)) for r in distinct)
    out["loadavg"] = os.getloadavg()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['motions']} motions, k={args.k}, {args.requests} requests ({out['distinct_queries']} distinct) from "
          f"{args.concurrency} threads, torch threads {out['threads']}, load average "
          f"{' '.join(f'{x:.2f}' for x in out['loadavg'])}")
    for name in ("fast", "plain"):
        r = out[name]
        print(f"{name:5s} {r['req_per_s']:.2f} req/s, {r['req_per_cpu_s']:.2f} req per CPU-second (sequential "
              f"{1000 * r['sequential_cpu_per_query_s']:.0f} ms CPU per query); p50 {1000 * r['p50_s']:.0f} ms, "
              f"p95 {1000 * r['p95_s']:.0f} ms; {r['batches']} batches; identical to sequential "
              f"{r['identical']}/{args.requests}")
    print(f"fast path equals plain path: {out['fast_equals_plain']}")


if __name__ == "__main__":
    main()
