"""Index build speed: chunks embedded per second (fp32, bf16) beside this machine's matmul GFLOP/s,
FAISS flat search with and without the BLAS path, and an estimate of a 150,000-chunk build; the
transformer encoder and the window encoder (indexer/window_encoder.py) measured in the same run.

    python3 bench/bench_index.py [--chunks 256] [--vectors 150000] [--device cpu] [--json out.json]
    python3 bench/bench_index.py --only-encoders   # encoders only (no FAISS part)
    OMP_WAIT_POLICY=PASSIVE python3 bench/bench_index.py ...   # see the note below

Note: on a machine whose cores are shared with other busy processes, OpenMP's default spin-waiting makes
FAISS's multi-threaded BLAS search path several times slower than the single-thread one; measured here
(2 shared cores, 64 queries over 150k x 256): 668 ms with 2 spinning threads, 83 ms with
OMP_WAIT_POLICY=PASSIVE, 74 ms with one thread, versus 440-520 ms on the default non-BLAS path.

The transformer is the synthetic model set's architecture (engine/models/retrieval-demo: d=128, 3 layers,
4 heads, ff 1024; `--d-model` overrides), randomly initialised: speed does not depend on the weights.
Its chunks are 10 s windows at 20 fps (200 frames), each encoded on its own.

The window encoder (same d_model, defaults of RetrievalConfig's window_* fields, mean and attention
pooling; the default model set's engine/models/retrieval-mix is this architecture with mean pooling) is measured the way the index build runs it (`indexer.embed.embed_chunks`): seeded motions of
`--motion-s` seconds (default 10-120 s, uniform) chunked into 10 s windows every 1 s, each motion encoded
once and all its chunks pooled. Its per-chunk cost depends on the motion lengths (about `stride_s` of
new frames per chunk, plus the motion's last window); `window_direct` is the per-chunk slow path (each
chunk encoded on its own segment with its context) for comparison.
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


def window_gflop_per_frame(cfg) -> float:
    """Multiply-adds x 2 per frame of the window encoder's whole-motion pass (patchify + conv blocks)."""
    c = cfg.window_config()
    per_snippet = sum(c.kernel * c.d_model * c.hidden + c.hidden * c.d_model for _ in c.dilations)
    return 2 * (c.feature_dim * c.d_model + per_snippet / c.stride) / 1e9


def bench_motions(n_chunks: int, motion_s: tuple[float, float], fps: float = 20.0, seed: int = 0):
    """Seeded feature arrays of motions, chunked like an index build, until they hold >= n_chunks."""
    from indexer.chunks import plan_chunks

    rng = np.random.default_rng(seed)
    feats, spans = {}, []
    while len(spans) < n_chunks:
        mid = len(feats)
        n_frames = int(rng.uniform(*motion_s) * fps)
        feats[mid] = rng.normal(size=(n_frames - 1, 263)).astype(np.float32)
        spans.extend(plan_chunks(mid, n_frames, fps))
    return feats, spans


def window_rate(model, feats, spans, dtype: str, batch_size: int, direct: bool = False, repeat: int = 3) -> float:
    from indexer.embed import embed_chunks, embed_chunks_direct

    fps = {m: 20.0 for m in feats}
    if direct:
        run = lambda sp: embed_chunks_direct(model, sp, fps, feats.__getitem__, batch_size)  # noqa: E731
    else:
        run = lambda sp: embed_chunks(model, sp, fps, feats.__getitem__, batch_size, dtype)  # noqa: E731
    run([s for s in spans if s.motion_id == 0])  # warm-up
    best = float("inf")
    for _ in range(repeat):  # best of `repeat`: the cores are shared, the minimum is the least disturbed
        t0 = time.perf_counter()
        run(spans)
        best = min(best, time.perf_counter() - t0)
    return len(spans) / best


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
    ap.add_argument("--d-model", type=int, default=None, help="encoder width (default: the shipped model's)")
    ap.add_argument("--window-chunks", type=int, default=2000, help="chunks embedded by the window encoder")
    ap.add_argument("--motion-s", type=float, nargs=2, default=(10.0, 120.0), help="motion lengths (uniform)")
    ap.add_argument("--only-encoders", action="store_true", help="skip the FAISS part")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = ap.parse_args()

    d_model = args.d_model or _shipped_d_model()
    cfg = RetrievalConfig(d_model=d_model)
    model = RetrievalModel.random(cfg, seed=0).to(args.device)
    gflop = encoder_gflop_per_chunk(cfg, args.frames)
    res: dict = {"device": args.device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                 "model": {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "ff_dim": cfg.ff_dim,
                           "embed_dim": cfg.embed_dim}, "frames_per_chunk": args.frames,
                 "gflop_per_chunk": round(gflop, 3)}
    mm = {"fp32": matmul_gflops(torch.float32, device=args.device)}
    mm["bf16"] = matmul_gflops(torch.bfloat16, n=512, repeat=2, device=args.device)  # a probe first: ...
    dtypes = ["fp32"]
    if mm["bf16"] > mm["fp32"] / 2:  # ... CPUs without bf16 units run it ~100x slower: skip it there
        mm["bf16"] = matmul_gflops(torch.bfloat16, device=args.device)
        dtypes.append("bf16")
    else:
        res["bf16"] = {"matmul_gflops_n512": round(mm["bf16"], 2), "skipped": "bf16 matmul slower than fp32 / 2"}
    for name in dtypes:
        rate = embed_rate(model, args.chunks, args.frames, name, args.batch_size)
        res[name] = {"matmul_gflops": round(mm[name], 1), "chunks_per_s": round(rate, 1),
                     "encoder_gflops": round(rate * gflop, 1),
                     "fraction_of_matmul": round(rate * gflop / mm[name], 3),
                     "estimate_embed_s": round(args.target / rate, 1)}

    feats, spans = bench_motions(args.window_chunks, tuple(args.motion_s))
    n_frames = sum(len(f) for f in feats.values())
    win: dict = {"n_motions": len(feats), "n_chunks": len(spans), "frames_per_chunk": round(n_frames / len(spans), 2)}
    for pool in ("mean", "attn"):
        wcfg = RetrievalConfig(d_model=d_model, arch="window", window_pool=pool)
        wmodel = RetrievalModel.random(wcfg, seed=0).to(args.device)
        g = window_gflop_per_frame(wcfg) * n_frames / len(spans)
        c = wcfg.window_config()
        out = {"config": {"stride": c.stride, "kernel": c.kernel, "dilations": list(c.dilations), "hidden": c.hidden,
                          "context_frames": c.context_frames}, "gflop_per_chunk": round(g, 4)}
        for name in dtypes:
            rate = window_rate(wmodel, feats, spans, name, args.batch_size)
            out[name] = {"chunks_per_s": round(rate, 1), "encoder_gflops": round(rate * g, 1),
                         "fraction_of_matmul": round(rate * g / mm[name], 3),
                         "estimate_embed_s": round(args.target / rate, 1),
                         "speedup_vs_transformer": round(rate / res[name]["chunks_per_s"], 1)}
        if pool == "mean":  # the per-chunk slow path, on the first motions only
            sub = [s for s in spans if s.motion_id < max(1, len(feats) // 8)]
            out["direct_fp32_chunks_per_s"] = round(window_rate(wmodel, feats, sub, "fp32", args.batch_size,
                                                                direct=True, repeat=1), 1)
        win[pool] = out
    res["window"] = win
    res["estimate_build_s"] = {"target_chunks": args.target}
    if not args.only_encoders:
        res["faiss"] = faiss_search(args.vectors, cfg.embed_dim, args.queries, ks=(10, 1000))
    add_s = res.get("faiss", {}).get("flat_add_s", 0.0)
    for key, rate in (("transformer_fp32", res["fp32"]["chunks_per_s"]),
                      ("transformer_best_dtype", max(res[d]["chunks_per_s"] for d in dtypes)),
                      ("window_mean_fp32", win["mean"]["fp32"]["chunks_per_s"]),
                      ("window_attn_fp32", win["attn"]["fp32"]["chunks_per_s"])):
        res["estimate_build_s"][key] = round(args.target / rate + add_s, 1)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


def _shipped_d_model() -> int:
    cfg = Path(__file__).resolve().parents[1] / "engine/models/retrieval-mix/config.json"
    try:
        return int(json.loads(cfg.read_text())["model"]["d_model"])
    except (OSError, KeyError, ValueError):
        return 128


if __name__ == "__main__":
    main()
