"""Throughput and latency of `engine serve` under concurrent searches, on loopback.

Starts `engine serve` in a subprocess over --index (default: the built-in index of ENGINE_HOME), sends
each distinct query once sequentially (the reference lists), then --requests searches from --concurrency
client threads (bounded by --max-seconds), and checks that every answer under load equals the reference.

    ENGINE_HOME=/tmp/qs-home python3 bench/bench_serve.py --requests 200 --concurrency 8
    python3 bench/bench_serve.py --index indexes/scale --localizer runs/loc --json

Prints throughput (req/s), p50/p95/max latency, errors and mismatches; --json for data.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUERIES = [
    "kung fu pose", "a person waves the right hand", "someone jumps forward", "a person walks backwards",
    "kick with the left leg", "a person sits down", "someone claps their hands", "a person bows",
]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]
    if args.index:
        cmd += ["--index", args.index]
    if args.localizer:
        cmd += ["--localizer", args.localizer]
    cmd += ["--cache-size", str(args.cache_size), "--batch-window-ms", str(args.batch_window_ms)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    log = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)


def wait_ready(client, proc: subprocess.Popen, base: str, timeout_s: float, log_path: Path) -> dict:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"engine serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            r = client.get(base + "/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"engine serve not ready after {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def key(body: dict) -> list[tuple]:
    return [(m["motion_id"], m["start_s"], m["end_s"], m["score"]) for m in body["moments"]]


def same(got: list[tuple], want: list[tuple], rel: float = 1e-5) -> bool:
    """The same moments in the same order, scores equal to float32 precision: a micro-batched localizer pass
    pads its batch differently from a lone query's, which moves scores in the 7th digit, never the moments."""
    return len(got) == len(want) and all(
        a[:3] == b[:3] and abs(a[3] - b[3]) <= rel * max(abs(a[3]), abs(b[3]), 1e-30) for a, b in zip(got, want))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default=None, help="index directory (default: the built-in one)")
    ap.add_argument("--localizer", default=None)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--queries", type=int, default=4, help="distinct queries (cycled)")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after this long")
    ap.add_argument("--startup-seconds", type=float, default=600.0)
    ap.add_argument("--cache-size", type=int, default=256, help="the server's result cache (0: every request "
                    "searches; the micro-batching alone)")
    ap.add_argument("--batch-window-ms", type=float, default=4.0, help="the server's micro-batch window")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_serve_{port}.log"
    t_start = time.perf_counter()
    proc = start_server(args, port, log_path)
    try:
        limits = httpx.Limits(max_connections=args.concurrency + 2, max_keepalive_connections=args.concurrency + 2)
        with httpx.Client(limits=limits, timeout=300) as client:
            health = wait_ready(client, proc, base, args.startup_seconds, log_path)
            startup_s = time.perf_counter() - t_start
            queries = QUERIES[: max(1, args.queries)]
            params = [{"q": q, "k": args.k, "limit": args.limit} for q in queries]

            reference, seq_lat = {}, []
            for p in params:
                t0 = time.perf_counter()
                r = client.get(base + "/search", params=p)
                seq_lat.append(time.perf_counter() - t0)
                r.raise_for_status()
                reference[p["q"]] = key(r.json())

            lat: list[float] = []
            errors: list[str] = []
            mismatches: list[str] = []
            lock = threading.Lock()
            deadline = time.perf_counter() + args.max_seconds

            def one(i: int) -> None:
                if time.perf_counter() > deadline:
                    return
                p = params[i % len(params)]
                t0 = time.perf_counter()
                try:
                    r = client.get(base + "/search", params=p)
                    dt = time.perf_counter() - t0
                    with lock:
                        if r.status_code != 200:
                            errors.append(f"{r.status_code} {r.text[:200]}")
                            return
                        lat.append(dt)
                        if not same(key(r.json()), reference[p["q"]]):
                            mismatches.append(p["q"])
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")

            t0, cpu0 = time.perf_counter(), process_cpu_s(proc.pid)
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - t0
            cpu1 = process_cpu_s(proc.pid)
            server_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    done = len(lat)
    out = {
        "index_version": health.get("index_version"), "motions": health.get("motions"),
        "chunks": health.get("chunks"), "k": args.k, "limit": args.limit, "distinct_queries": len(params),
        "startup_s": round(startup_s, 2),
        "sequential_latency_s": {"mean": round(statistics.mean(seq_lat), 4), "max": round(max(seq_lat), 4)},
        "requests_sent": done + len(errors), "requests_ok": done, "concurrency": args.concurrency,
        "wall_s": round(wall, 3), "throughput_rps": round(done / wall, 3) if wall > 0 else None,
        "latency_s": {"p50": round(pct(lat, 50), 4), "p95": round(pct(lat, 95), 4), "max": round(max(lat or [0]), 4)},
        "errors": len(errors), "error_samples": errors[:5], "mismatches": len(mismatches),
        "identical_to_sequential": not mismatches and not errors,
        "stopped_by_max_seconds": done + len(errors) < args.requests,
        "cache_size": args.cache_size, "batch_window_ms": args.batch_window_ms, "threads": args.threads,
        "loadavg": os.getloadavg(),
        # The server's own CPU seconds under load: requests per CPU-second is its throughput on a core of its
        # own (a busy machine stretches the wall clock, not this).
        "server_cpu_s": round(server_cpu, 3) if server_cpu is not None else None,
        "requests_per_server_cpu_s": round(done / server_cpu, 3) if server_cpu else None,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"engine serve: index {out['index_version']} ({out['motions']} motions, {out['chunks']} chunks), "
              f"ready in {out['startup_s']} s")
        print(f"sequential: {len(params)} queries, mean {out['sequential_latency_s']['mean'] * 1000:.0f} ms")
        print(f"load: {done}/{args.requests} ok in {wall:.1f} s with {args.concurrency} clients -> "
              f"{out['throughput_rps']} req/s; latency p50 {out['latency_s']['p50'] * 1000:.0f} ms, "
              f"p95 {out['latency_s']['p95'] * 1000:.0f} ms, max {out['latency_s']['max'] * 1000:.0f} ms")
        if server_cpu:
            print(f"server CPU {server_cpu:.1f} s for {done} requests -> {done / server_cpu:.2f} requests per "
                  "CPU-second")
        print(f"server threads {args.threads or 'default'}, load average "
              f"{' '.join(f'{x:.2f}' for x in out['loadavg'])}")
        print(f"errors {len(errors)}, mismatches vs sequential {len(mismatches)} -> "
              f"{'identical' if out['identical_to_sequential'] else 'DIFFERENT'}")
    if errors or mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
