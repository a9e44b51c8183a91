"""Localizer throughput: localizations per second for a batch of 200 motions x 256 snippets (fp32, bf16),
beside this machine's measured matmul rate, in one run.

    python3 bench/bench_localizer.py [--preset paper|cpu-base|cpu-small] [--variant mlp] [--json]

"Localization" = one (sentence, motion) pair through the query-dependent part (T-Enc, fusion, matcher,
predictor) from the cached S-Enc output, plus exact span decoding. The S-Enc (query independent, cached by
the index) is timed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def matmul_gflops(dtype, n: int = 2048, repeat: int = 5) -> float:
    import torch

    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--variant", default="mlp")
    ap.add_argument("--motions", type=int, default=200)
    ap.add_argument("--snippets", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from localizer.config import make_config
    from localizer.decode import decode_best
    from localizer.model import MLPLocalizer

    cfg = make_config(args.preset, args.variant, {"model.n_snippets": args.snippets})
    torch.manual_seed(0)
    model = MLPLocalizer(cfg.model).to(args.device).eval()
    B, T = args.motions, args.snippets
    snippets = torch.randn(B, T, 22, 12, device=args.device)
    mask = torch.ones(B, T, dtype=torch.bool, device=args.device)
    text = torch.randn(B, args.tokens, cfg.model.text_dim, device=args.device)
    t_mask = torch.ones(B, args.tokens, dtype=torch.bool, device=args.device)
    out = {"preset": args.preset, "variant": args.variant, "motions": B, "snippets": T,
           "d_model": cfg.model.d_model, "threads": torch.get_num_threads(), "device": args.device}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out[f"matmul_gflops_{name}"] = matmul_gflops(dtype)
        with torch.inference_mode(), torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16,
                                                    enabled=name == "bf16"):
            enc = model.encode_motion(snippets, mask)
            t0 = time.perf_counter()
            for _ in range(args.repeat):
                enc = model.encode_motion(snippets, mask)
            t_enc = (time.perf_counter() - t0) / args.repeat
            probs = model.localize(enc, mask, text, t_mask)
            t0 = time.perf_counter()
            for _ in range(args.repeat):
                probs = model.localize(enc, mask, text, t_mask)
                decode_best(probs.p_start.float(), probs.p_end.float())
            t_loc = (time.perf_counter() - t0) / args.repeat
        out[f"senc_motions_per_s_{name}"] = B / t_enc
        out[f"localizations_per_s_{name}"] = B / t_loc
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.preset}/{args.variant}: {B} motions x {T} snippets, d={cfg.model.d_model}, "
          f"{out['threads']} threads, {args.device}")
    for name in ("fp32", "bf16"):
        print(f"{name}: {out[f'localizations_per_s_{name}']:.0f} localizations/s "
              f"(S-Enc {out[f'senc_motions_per_s_{name}']:.0f} motions/s); "
              f"matmul {out[f'matmul_gflops_{name}']:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
