"""Corpus store read cost: what an index build pays per motion to read (and, since issue 15, verify) it.

    python bench/bench_store.py --corpus /tmp/ci_small [--repeat 5] [--json]

Build the corpus first, e.g. `python -m engine.cli data synth --preset small --out /tmp/ci_small`.
Per repeat, a fresh store is opened (cold Arrow table cache, warm page cache) and every motion's features
are read and touched (np.asarray + sum, as the build's window slicing would), then every motion's joints.
Reports the median over repeats, wall and CPU (process) time: open, features pass, joints pass, and (when
the store has it) a full `verify()`. CPU time is the steadier figure on a shared machine.
Run from the repository root with `PYTHONPATH=.` so the checkout (not an installed copy) is measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import engine
    from engine.corpus.store import CorpusStore

    print(f"engine from {engine.__file__}", file=sys.stderr)

    opens, feats, joints, verifies = [], [], [], []
    feats_cpu, joints_cpu = [], []
    n_motions = n_bytes = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        store = CorpusStore.open(args.corpus, create=False)
        opens.append(time.perf_counter() - t0)
        ids = store.motion_ids()
        n_motions = len(ids)
        t0, c0 = time.perf_counter(), time.process_time()
        total = 0.0
        n_bytes = 0
        for mid in ids:
            f = np.asarray(store.features(mid))
            total += float(f[:, 0].sum())
            n_bytes += f.nbytes
        feats.append(time.perf_counter() - t0)
        feats_cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        for mid in ids:
            j = store.joints(mid)
            total += float(j[:, 0, 0].sum())
        joints.append(time.perf_counter() - t0)
        joints_cpu.append(time.process_time() - c0)
        store.close()
        if hasattr(CorpusStore, "verify"):
            store = CorpusStore.open(args.corpus, create=False)
            t0 = time.perf_counter()
            store.verify(full=True)
            verifies.append(time.perf_counter() - t0)
            store.close()

    med = statistics.median
    out = {"corpus": args.corpus, "motions": n_motions, "feature_mb": round(n_bytes / 1e6, 1),
           "repeat": args.repeat, "open_ms": round(1e3 * med(opens), 2),
           "features_pass_ms": round(1e3 * med(feats), 1),
           "features_per_motion_ms": round(1e3 * med(feats) / max(n_motions, 1), 3),
           "features_pass_cpu_ms": round(1e3 * med(feats_cpu), 1),
           "joints_pass_ms": round(1e3 * med(joints), 1),
           "joints_pass_cpu_ms": round(1e3 * med(joints_cpu), 1),
           "full_verify_ms": round(1e3 * med(verifies), 1) if verifies else None}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:24s} {v}")


if __name__ == "__main__":
    main()
