"""BVH parsing time against the joint count (issue 15: it was quadratic, 10k joints 3.9 s, 20k 10.9 s).

    python3 bench/bench_bvh_parse.py [--joints 5000,10000,20000,40000] [--frames 2] [--json out.json]

Each file is a binary tree of joints with 3 rotation channels each (the root also has 3 positions);
`read_bvh` runs with `max_joints` raised above the largest count. Linear parsing keeps seconds / joint
roughly constant down the table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from engine.corpus.bvh import read_bvh
from engine.corpus.limits import ImportLimits


def write_tree(path: Path, n_joints: int, n_frames: int) -> None:
    children: list[list[int]] = [[] for _ in range(n_joints)]
    for i in range(1, n_joints):
        children[(i - 1) // 2].append(i)
    out = ["HIERARCHY"]
    stack: list[tuple[int, int]] = [(0, 0)]  # (joint, state): iterative, no recursion limit
    while stack:
        j, state = stack.pop()
        if state == 0:
            chans = "CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation" if j == 0 else \
                "CHANNELS 3 Zrotation Xrotation Yrotation"
            out += [f"{'ROOT' if j == 0 else 'JOINT'} j{j}", "{", "OFFSET 0 1 0", chans]
            stack.append((j, 1))
            stack.extend((c, 0) for c in reversed(children[j]))
            if not children[j]:
                out += ["End Site", "{", "OFFSET 0 1 0", "}"]
        else:
            out.append("}")
    n_channels = 6 + 3 * (n_joints - 1)
    out += ["MOTION", f"Frames: {n_frames}", "Frame Time: 0.05"]
    out += [" ".join(["0"] * n_channels)] * n_frames
    path.write_text("\n".join(out) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--joints", default="5000,10000,20000,40000")
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    counts = [int(x) for x in args.joints.split(",")]
    limits = ImportLimits(max_joints=max(counts) + 1)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in counts:
            p = Path(d) / f"tree_{n}.bvh"
            write_tree(p, n, args.frames)
            t0 = time.perf_counter()
            data = read_bvh(p, limits)
            s = time.perf_counter() - t0
            assert len(data.joint_names) == n
            rows.append({"joints": n, "seconds": round(s, 3), "us_per_joint": round(1e6 * s / n, 1)})
            print(f"{n:>7} joints  {s:7.3f} s  {1e6 * s / n:7.1f} us/joint")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
