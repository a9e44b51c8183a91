"""Draw one retargeted frame per BVH skeleton family (front and side views) into docs/skeleton_<family>.png.

    python bench/plot_retarget.py [--data ../shared/data] [--out docs]

Bones of the person's left side are blue, right side red, spine black. The title lists the family,
file, frame, pelvis height and a few bone lengths, to check that the retargeted skeleton is upright
and plausibly proportioned.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from engine.corpus.bvh import bvh_to_motion  # noqa: E402
from engine.corpus.skeleton import JOINT_NAMES, PARENTS, bone_lengths  # noqa: E402

log = logging.getLogger(__name__)

FAMILIES = {
    "bandai": "bandai-namco/set2/dataset-2_walk_normal_001.bvh.gz",
    "cmu131": "cmu/131_02.bvh",
    "cmu135": "cmu/135_03.bvh",
}
LEFT = {i for i, n in enumerate(JOINT_NAMES) if n.startswith("l_")}
RIGHT = {i for i, n in enumerate(JOINT_NAMES) if n.startswith("r_")}


def _colour(j: int) -> str:
    return "tab:blue" if j in LEFT else "tab:red" if j in RIGHT else "black"


def _facing_frame(pose: np.ndarray) -> np.ndarray:
    """Rotate a (22, 3) pose about y so that it faces +z (left at +x)."""
    across = (pose[2] - pose[1]) + (pose[17] - pose[16])  # r_hip - l_hip + r_sh - l_sh
    fwd = np.cross([0.0, 1.0, 0.0], across)
    ang = np.arctan2(fwd[0], fwd[2])
    c, s = np.cos(-ang), np.sin(-ang)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    centred = pose - pose[0] * np.array([1.0, 0.0, 1.0])
    return centred @ rot.T


def plot_family(family: str, path: Path, out: Path, frame: int | None = None) -> Path:
    motion = bvh_to_motion(path)
    joints = motion.joints.astype(np.float64)
    if frame is None:  # the most upright, feet-together frame: head high above the feet, ankles close
        stance = np.linalg.norm((joints[:, 7] - joints[:, 8])[:, [0, 2]], axis=-1)
        frame = int(np.argmax(joints[:, 15, 1] - joints[:, [10, 11], 1].min(axis=1) - stance))
    pose = _facing_frame(joints[frame])
    bl = np.median(bone_lengths(joints), axis=0)
    fig, axes = plt.subplots(1, 2, figsize=(8, 5.2))
    for ax, (hx, title, xlabel) in zip(axes, ((0, "front (facing the viewer)", "x (m)  person's left ->"),
                                              (2, "side (facing right)", "z (m)  forward ->"))):
        for j in range(1, len(PARENTS)):
            p = PARENTS[j]
            # Front view: the viewer faces the person, so the person's left (+x) is on the image's right.
            ax.plot([pose[p, hx], pose[j, hx]], [pose[p, 1], pose[j, 1]], color=_colour(j), lw=2.5)
        ax.scatter(pose[:, hx], pose[:, 1], s=10, color="k", zorder=3)
        ax.axhline(0.0, color="0.6", lw=1)
        ax.set_aspect("equal")
        ax.set_xlim(-0.9, 0.9)
        ax.set_ylim(-0.05, 1.9)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("y (m)")
        ax.grid(alpha=0.3)
    names = dict(zip(JOINT_NAMES[1:], bl))
    fig.suptitle(f"{family}: {path.name} frame {frame} of {joints.shape[0]} (20 fps)\n"
                 f"pelvis {pose[0, 1]:.2f} m, head {pose[15, 1]:.2f} m; thigh {names['l_knee']:.2f}, "
                 f"shin {names['l_ankle']:.2f}, upper arm {names['l_elbow']:.2f}, forearm {names['l_wrist']:.2f} m"
                 "  (blue = left, red = right)", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"skeleton_{family}.png"
    fig.savefig(dest, dpi=90)
    plt.close(fig)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve()
    ap.add_argument("--data", type=Path, default=here.parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=here.parents[1] / "docs")
    args = ap.parse_args()
    for family, rel in FAMILIES.items():
        dest = plot_family(family, args.data / rel, args.out)
        print(dest)


if __name__ == "__main__":
    main()
