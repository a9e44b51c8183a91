"""Index build speed: chunks embedded per second (fp32, bf16) beside this machine's matmul GFLOP/s,
FAISS flat search with and without the BLAS path, and an estimate of a 150,000-chunk build.

    python3 bench/bench_index.py [--chunks 256] [--vectors 150000] [--device cpu] [--json out.json]
    OMP_WAIT_POLICY=PASSIVE python3 bench/bench_index.py ...   # see the note below

Note: on a machine whose cores are shared with other busy processes, OpenMP's default spin-waiting makes
FAISS's multi-threaded BLAS search path several times slower than the single-thread one; measured here
(2 shared cores, 64 queries over 150k x 256): 668 ms with 2 spinning threads, 83 ms with
OMP_WAIT_POLICY=PASSIVE, 74 ms with one thread, versus 440-520 ms on the default non-BLAS path.

The retrieval model is the default architecture (d=256, 3 layers, 4 heads, ff 1024), randomly
initialised: speed does not depend on the weights. Chunks are 10 s windows at 20 fps (200 frames).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def matmul_gflops(dtype, n: int = 2048, repeat: int = 5, device: str = "cpu") -> float:
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def encoder_gflop_per_chunk(cfg, n_frames: int) -> float:
    """Multiply-adds x 2 of one forward pass over a chunk of n_frames (+ the [EMB] token)."""
    t, d, ff = n_frames + 1, cfg.d_model, cfg.ff_dim
    per_layer = t * (4 * d * d + 2 * d * ff) + 2 * t * t * d  # projections + FF + attention
    return 2 * (n_frames * cfg.feature_dim * d + cfg.n_layers * per_layer + d * cfg.embed_dim) / 1e9


def embed_rate(model, n_chunks: int, n_frames: int, dtype: str, batch_size: int) -> float:
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(n_chunks, n_frames, 263)).astype(np.float32)
    model.encode_motion(windows[:batch_size], batch_size=batch_size, dtype=dtype)  # warm-up
    t0 = time.perf_counter()
    model.encode_motion(windows, batch_size=batch_size, dtype=dtype)
    return n_chunks / (time.perf_counter() - t0)


def faiss_search(n_vectors: int, d: int, n_queries: int, ks: tuple[int, ...]) -> dict:
    import faiss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_vectors, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(n_vectors, n_queries, replace=False)] + rng.normal(0, 0.1, (n_queries, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t0 = time.perf_counter()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    index.add_with_ids(x, np.arange(n_vectors, dtype=np.int64))
    add_s = time.perf_counter() - t0
    out: dict = {"n_vectors": n_vectors, "dim": d, "n_queries": n_queries, "flat_add_s": round(add_s, 3)}
    default = faiss.cvar.distance_compute_blas_threshold
    out["default_blas_threshold"] = int(default)
    for kk in ks:
        results = {}
        for name, thr in (("default", default), ("blas", 4)):
            faiss.cvar.distance_compute_blas_threshold = thr
            index.search(q[:2], kk)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                s, i = index.search(q, kk)
                best = min(best, time.perf_counter() - t0)
            results[name] = (best, s, i)
        faiss.cvar.distance_compute_blas_threshold = default
        (t_def, _, i_def), (t_blas, s_blas, i_blas) = results["default"], results["blas"]
        exact = np.sort(q @ x.T, axis=1)[:, ::-1][:, :kk]  # numpy brute force scores
        out[f"k{kk}"] = {"search_ms_default": round(t_def * 1e3, 1), "search_ms_blas": round(t_blas * 1e3, 1),
                         "same_ids": float(np.mean(i_def == i_blas)),
                         "max_score_diff_vs_numpy": float(np.abs(s_blas - exact).max())}
    return out


def main() -> None:
    import torch

    from indexer.model import RetrievalConfig, RetrievalModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=256, help="chunks embedded per measurement")
    ap.add_argument("--frames", type=int, default=200, help="frames per chunk (10 s at 20 fps)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--vectors", type=int, default=150_000, help="FAISS flat index size")
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--target", type=int, default=150_000, help="chunks in the build-time estimate")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = ap.parse_args()

    cfg = RetrievalConfig()
    model = RetrievalModel.random(cfg, seed=0).to(args.device)
    gflop = encoder_gflop_per_chunk(cfg, args.frames)
    res: dict = {"device": args.device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                 "model": {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "ff_dim": cfg.ff_dim,
                           "embed_dim": cfg.embed_dim}, "frames_per_chunk": args.frames,
                 "gflop_per_chunk": round(gflop, 3)}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        mm = matmul_gflops(dt, device=args.device)
        rate = embed_rate(model, args.chunks, args.frames, name, args.batch_size)
        res[name] = {"matmul_gflops": round(mm, 1), "chunks_per_s": round(rate, 1),
                     "encoder_gflops": round(rate * gflop, 1), "fraction_of_matmul": round(rate * gflop / mm, 3),
                     "estimate_embed_s": round(args.target / rate, 1)}
    res["faiss"] = faiss_search(args.vectors, cfg.embed_dim, args.queries, ks=(10, 1000))
    best = max(res["fp32"]["chunks_per_s"], res["bf16"]["chunks_per_s"])
    res["estimate_build_s"] = {
        "target_chunks": args.target,
        "fp32": round(args.target / res["fp32"]["chunks_per_s"] + res["faiss"]["flat_add_s"], 1),
        "best_dtype": round(args.target / best + res["faiss"]["flat_add_s"], 1),
    }
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
