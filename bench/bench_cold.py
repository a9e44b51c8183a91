"""Cold CLI search: whole-process wall time of `engine search "..." --k 200 --limit 5` on the built-in index,
beside the bare `python -c "import torch"` (what the torch query path cannot go below) and
`python -c "import sentence_transformers"` (what the query path no longer pays), all in the same run.

`engine search` is the default backend (auto: the ONNX query path when the index has its exported graphs,
engine/onnx_path.py); `--backend onnx` and `--backend torch` are timed beside it, and `engine --help`.

    python3 bench/bench_cold.py [--runs 5] [--query "kung fu pose"] [--k 200] [--limit 5] [--json]
    python3 bench/bench_cold.py --importtime     # also the top self+children import times of one search

Each command is a fresh process (`python -m engine.cli search ...` from the current directory, so a
checkout runs its own code). Runs alternate between the commands, so that load from other processes on a
shared machine spreads over all of them. The built-in index is built once first when absent (that first
run is not timed). Prints p50 / min / max seconds per command; --json for data.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time


def timed(cmd: list[str], env: dict[str, str], cwd: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    return time.perf_counter() - t0, r


def import_top(cmd: list[str], env: dict[str, str], top: int) -> list[dict]:
    """The `top` modules with the largest cumulative import time in one run of `cmd` (python -X importtime)."""
    r = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, env=env)
    rows = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append({"module": m.group(4), "self_ms": int(m.group(1)) / 1000,
                         "cumulative_ms": int(m.group(2)) / 1000, "depth": len(m.group(3)) // 2})
    top_level = sorted((r for r in rows if r["depth"] == 0), key=lambda r: -r["cumulative_ms"])
    return top_level[:top]


def summary(times: list[float]) -> dict:
    return {"p50_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "runs": [round(t, 3) for t in times]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--query", default="kung fu pose")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="Also time the same search run from another checkout (e.g. an older commit).")
    ap.add_argument("--no-imports", action="store_true", help="Skip the bare import commands.")
    ap.add_argument("--importtime", type=int, nargs="?", const=15, default=0, metavar="N",
                    help="Also list the N slowest top-level imports of one search (default 15).")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    env = {**os.environ}
    py = sys.executable
    search = [py, "-m", "engine.cli", "search", args.query, "--k", str(args.k), "--limit", str(args.limit)]
    commands = {"engine search": (search, None),
                "engine search --backend onnx": (search + ["--backend", "onnx"], None),
                "engine search --backend torch": (search + ["--backend", "torch"], None),
                "engine --help": ([py, "-m", "engine.cli", "--help"], None)}
    if args.baseline:
        commands[f"engine search ({args.baseline})"] = (search, args.baseline)
    if not args.no_imports:
        commands["import torch"] = ([py, "-c", "import torch"], None)
        commands["import sentence_transformers"] = ([py, "-c", "import sentence_transformers"], None)

    # First run: builds the built-in index when absent, exports its ONNX query models (auto), and warms the
    # page cache. Not timed.
    warm_s, r = timed(search, env)
    if r.returncode != 0:
        sys.exit(f"engine search failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    same = {}
    for backend in ("onnx", "torch"):  # both backends answer, with the same moments
        _, r = timed(search + ["--backend", backend, "--json"], env)
        if r.returncode != 0:
            sys.exit(f"engine search --backend {backend} failed:\n{r.stderr[-2000:]}")
        same[backend] = [(m["motion_id"], round(m["start_s"], 4), round(m["end_s"], 4)) for m in json.loads(r.stdout)]

    times: dict[str, list[float]] = {name: [] for name in commands}
    errors: dict[str, str] = {}
    for _ in range(args.runs):
        for name, (cmd, cwd) in commands.items():
            if name in errors:
                continue
            dt, r = timed(cmd, env, cwd)
            if r.returncode != 0:
                errors[name] = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
                continue
            times[name].append(dt)

    out = {
        "command": " ".join(search[1:]),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "omp_num_threads": env.get("OMP_NUM_THREADS"),
        "first_run_s": round(warm_s, 3),
        "onnx_equals_torch": same["onnx"] == same["torch"],
        "load_average_1m": round(os.getloadavg()[0], 2),
        "results": {name: summary(t) for name, t in times.items() if t},
        "errors": errors,
    }
    res = out["results"]
    if "engine search" in res and "import torch" in res:
        out["search_over_import_torch"] = round(res["engine search"]["p50_s"] / res["import torch"]["p50_s"], 3)
    if args.importtime:
        out["importtime_top"] = import_top(search, env, args.importtime)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"cold `{out['command']}` ({args.runs} runs each, first run {warm_s:.2f} s not counted; "
          f"load average {out['load_average_1m']}; onnx moments == torch moments: {out['onnx_equals_torch']})")
    for name, s in out["results"].items():
        print(f"  {name:32s} p50 {s['p50_s']:6.3f} s   min {s['min_s']:6.3f}   max {s['max_s']:6.3f}")
    for name, e in errors.items():
        print(f"  {name:30s} failed: {e}")
    if "search_over_import_torch" in out:
        print(f"  engine search p50 / import torch p50 = {out['search_over_import_torch']}")
    if args.importtime:
        print("slowest top-level imports of one search (cumulative ms):")
        for row in out["importtime_top"]:
            print(f"  {row['cumulative_ms']:9.1f}  {row['module']}")


if __name__ == "__main__":
    main()
