"""Window-bank cost at index time: the bank's 2/4/6 s windows (stride half the window) against the index's
10 s chunks (stride 1 s), for the shipped transformer retrieval model and a window-encoder model of the
same width, on the first motions of a corpus, the way the build embeds them (`indexer.embed.embed_chunks`,
`indexer.bank.build_bank`).

    OMP_NUM_THREADS=1 python3 bench/bench_bank.py --corpus ~/.cache/motion-engine/demo-corpus [--motions 40]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--motions", type=int, default=40)
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "engine/models/retrieval-demo")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from engine.corpus.store import CorpusStore
    from indexer.bank import build_bank, plan_bank_windows
    from indexer.chunks import IndexedMotion, plan_chunks
    from indexer.config import IndexConfig
    from indexer.embed import embed_chunks, feature_reader
    from indexer.model import RetrievalConfig, RetrievalModel, load_retrieval

    store = CorpusStore.open(args.corpus, create=False)
    rows = store.motion_table()[: args.motions]
    motions = [IndexedMotion(r.motion_id, r.name, r.source, r.fps, r.n_frames, r.duration_s, r.split) for r in rows]
    cfg = IndexConfig()
    shipped = load_retrieval(args.model)
    window = RetrievalModel.random(RetrievalConfig(**{**shipped.config.identity(), "arch": "window"}), seed=0)
    feats = {m.motion_id: store.features(m.motion_id) for m in motions}  # read once, outside the timings
    features_of = feature_reader(type("S", (), {"features": lambda self, i: feats[i]})())
    spans = [c for m in motions for c in plan_chunks(m.motion_id, m.n_frames, m.fps, cfg.window_s, cfg.stride_s)]
    n_bank = sum(len(plan_bank_windows(m.n_frames - 1, m.fps, (2.0, 4.0, 6.0))) for m in motions)
    out = {"motions": len(motions), "seconds_of_motion": float(sum(m.duration_s for m in motions)),
           "chunks": len(spans), "bank_windows": n_bank, "threads": torch.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load": os.getloadavg()}
    for name, model in (("transformer", shipped), ("window", window)):
        t0 = time.perf_counter()
        embed_chunks(model, spans, {m.motion_id: m.fps for m in motions}, features_of, cfg.batch_size, cfg.dtype)
        t_chunks = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_bank(model, motions, (2.0, 4.0, 6.0), features_of, batch_size=cfg.batch_size)
        t_bank = time.perf_counter() - t0
        out[name] = {"chunks_s": t_chunks, "bank_s": t_bank, "bank_over_chunks": t_bank / t_chunks,
                     "chunks_per_s": len(spans) / t_chunks, "bank_windows_per_s": n_bank / t_bank}
        print(f"{name}: chunks {t_chunks:.2f} s ({len(spans) / t_chunks:.0f}/s), bank {t_bank:.2f} s "
              f"({n_bank / t_bank:.0f} windows/s), bank/chunks = {t_bank / t_chunks:.2f}", flush=True)
    print(f"{out['motions']} motions ({out['seconds_of_motion']:.0f} s), {len(spans)} chunks, {n_bank} bank windows, "
          f"{out['threads']} threads, load {out['load'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
