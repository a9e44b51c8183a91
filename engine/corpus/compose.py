"""The composed real benchmark: untrimmed sequences stitched from labelled Bandai Namco clips.

`compose_bandai` turns the short labelled takes of the Bandai Namco sets (one content x style each)
into long untrimmed motions with one annotation per clip, the shape of data that corpus moment
retrieval needs, on real motion capture.

- Splits are by take: each take file belongs to exactly one split (`take_split`: a hash of its name,
  train/val/test ~ 70/10/20), and a sequence uses clips of one split only.
- A sequence draws clips from its split's shuffled pool (each take once before any repeats) until a
  target duration drawn uniformly in [min_s, max_s] is reached, with at least two clips and, where
  possible, every clip between 1 % and 99 % of the sequence. With ``n_motions=None`` every take of the
  chosen sets is used once (the last sequence of a split is padded with random repeats to reach
  ``min_s``); with ``n_motions`` that many sequences are made, split by the splits' shares of takes.
- Transitions: each clip is expressed as per-frame heading angular velocity, root velocity in the
  heading frame and root-relative pose in the heading frame (HumanML3D-style). Clips are concatenated
  (no overlap, so every clip keeps its full length) and the root path is integrated through them, so
  each clip starts where the previous one ended, facing the same way, with a continuous root path.
  Poses are blended across each seam: the per-bone direction offset between the two clips (beyond
  their own motion there) is split in half and eased out over a window on each side (0.25 s each,
  about 0.5 s in all, longer when the poses differ a lot: up to 1 s a side, at most the clip), and
  poses are rebuilt with constant bone lengths. (A cross-fade of *overlapping* frames was tried first:
  the Bandai takes are trimmed tightly, often mid-movement, so overlapping their ends erased part of
  the labelled motion and, blending positions, made limbs sweep faster than in either clip.)
- Annotations: clip k spans ``[start_k, start_k + n_k / 20)`` in the sequence (its full length; the
  spans tile the sequence), text `bandai_sentence` of its labels,
  ``extra = {content, style, dataset, take, blend_in_s, blend_out_s}``.
Deterministic by seed.
"""

from __future__ import annotations

import gzip
import logging
import math
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from engine.corpus.bvh import (
    BANDAI,
    bandai_sentence,
    bvh_stem,
    bvh_to_motion,
    read_bandai_label,
    resample_positions,
    take_split,
)
from engine.corpus.skeleton import FACE_JOINTS, FPS, PARENTS
from engine.corpus.types import Annotation, CorpusError, Motion

log = logging.getLogger(__name__)

SOURCE = "bandai-composed"
SPLITS = ("train", "val", "test")
BLEND_S = 0.5  # nominal transition length (both sides of a seam together)
MAX_BLEND_S = 2.0  # longest transition (both sides)
BLEND_SPEED_MPS = 0.5  # a transition is lengthened so the speed it adds stays below about this
HEADING_SMOOTH_FRAMES = 2.0  # Gaussian sigma on the per-frame heading angle
MIN_SHARE, MAX_SHARE = 0.01, 0.99  # a clip's share of its sequence, where possible


@dataclass
class Take:
    """One labelled Bandai take (a BVH file and its sidecar labels)."""

    name: str  # file stem, e.g. "dataset-2_walk_normal_001"
    path: Path
    content: str
    style: str
    dataset: str
    split: str
    n_frames: int  # at 20 fps


@dataclass
class Clip:
    """A take at 20 fps in the heading-frame representation used for blending."""

    take: Take | None  # None for clips made outside `compose_bandai` (tests)
    joints: np.ndarray  # (n, 22, 3) float64, world
    rel: np.ndarray  # (n, 22, 3) pose relative to the root's xz, in the heading frame (root y kept)
    dtheta: np.ndarray  # (n-1,) heading change per frame (rad)
    vloc: np.ndarray  # (n-1, 3) root xz displacement per frame in the heading frame of the earlier frame
    theta0: float
    root0: np.ndarray  # (3,) root xz of frame 0 (y = 0)

    @property
    def n_frames(self) -> int:
        return int(self.joints.shape[0])


# ------------------------------------------------------------------------------------------ geometry
def _rot_y(theta: np.ndarray) -> np.ndarray:
    """(...,) angles -> (..., 3, 3) rotations about +y mapping +z to (sin, 0, cos)."""
    c, s = np.cos(theta), np.sin(theta)
    z, o = np.zeros_like(theta), np.ones_like(theta)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def heading(joints: np.ndarray, sigma_frames: float = HEADING_SMOOTH_FRAMES) -> np.ndarray:
    """(T, 22, 3) -> (T,) facing angle about y (0 = facing +z), from hips and shoulders, smoothed."""
    r_hip, l_hip, r_sdr, l_sdr = FACE_JOINTS
    across = (joints[:, r_hip] - joints[:, l_hip]) + (joints[:, r_sdr] - joints[:, l_sdr])  # (T, 3)
    fwd = np.cross(np.array([0.0, 1.0, 0.0]), across)  # (T, 3)
    theta = np.unwrap(np.arctan2(fwd[:, 0], fwd[:, 2]))
    if sigma_frames > 0 and theta.size > 1:
        theta = gaussian_filter1d(theta, sigma_frames, mode="nearest")
    return theta


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def to_clip(take: Take | None, joints: np.ndarray) -> Clip:
    """A (n, 22, 3) joint array in the heading-frame representation used for blending."""
    j = np.asarray(joints, dtype=np.float64)
    theta = heading(j)
    root = j[:, 0] * np.array([1.0, 0.0, 1.0])  # (n, 3)
    inv = _rot_y(-theta)  # (n, 3, 3)
    rel = np.einsum("tab,tjb->tja", inv, j - root[:, None])  # (n, 22, 3)
    vloc = np.einsum("tab,tb->ta", inv[:-1], np.diff(root, axis=0))  # (n-1, 3)
    return Clip(take=take, joints=j, rel=rel, dtheta=_wrap(np.diff(theta)), vloc=vloc, theta0=float(theta[0]),
                root0=root[0])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def transition_frames(delta_m: float, n_frames: int, fps: float = FPS) -> int:
    """Frames over which one side of a seam absorbs half of a pose offset of `delta_m` metres."""
    want = max(BLEND_S / 2 * fps, 1.5 * (delta_m / 2) / BLEND_SPEED_MPS * fps)  # smoothstep's peak slope: 1.5
    return max(1, min(int(math.ceil(min(want, MAX_BLEND_S / 2 * fps))), n_frames))


@dataclass
class Composition:
    """Composed joints (N, 22, 3); where each clip starts; transition frames on each side of each seam."""

    joints: np.ndarray
    starts: list[int]
    blend_out: list[int]  # blend_out[k]: frames at the end of clip k eased towards clip k+1
    blend_in: list[int]  # blend_in[k]: frames at the start of clip k+1 eased from clip k


def compose_clips(clips: list[Clip], fps: float = FPS, blend: bool = True) -> Composition:
    """Concatenate clips with root-aligned, blended transitions (see the module docstring).

    Root: the heading change and the heading-frame root velocity of every frame are concatenated (the
    seam step is the mean of the two clips' neighbouring steps) and integrated, so each clip continues
    from the previous clip's end position and facing. Pose: in the heading frame, each bone's direction
    offset at a seam (the rotation from clip A's last to clip B's first direction, less the bones' own
    angular step there) is split in half and eased out with a smoothstep over each side's transition
    window, as is the pelvis height offset; poses are rebuilt from the bone directions with constant
    bone lengths. So the poses cross-fade into each other without a jump, bones never stretch, and each
    clip keeps its own length. ``blend=False`` only aligns the root (a hard cut between poses; for tests).
    """
    if not clips:
        raise ValueError("no clips to compose")
    ns = [c.n_frames for c in clips]
    starts = [0]
    for n in ns[:-1]:
        starts.append(starts[-1] + n)
    rel = np.concatenate([c.rel for c in clips])  # (N, 22, 3)
    parents = list(PARENTS[1:])
    bones = rel[:, 1:] - rel[:, parents]  # (N, 21, 3)
    dirs = bones / np.maximum(np.linalg.norm(bones, axis=-1, keepdims=True), 1e-9)
    height = rel[:, 0, 1].copy()  # (N,)
    lengths = np.median(np.concatenate([_bones(c.joints) for c in clips]), axis=0)  # (21,)
    dtheta_parts: list[np.ndarray] = []
    vloc_parts: list[np.ndarray] = []
    seams: list[tuple[int, int, int, np.ndarray, float]] = []
    for k, c in enumerate(clips):
        dtheta_parts.append(c.dtheta)
        vloc_parts.append(c.vloc)
        if k == len(clips) - 1:
            break
        d = clips[k + 1]
        dtheta_parts.append(np.array([0.5 * (_last(c.dtheta) + _first(d.dtheta))]))
        vloc_parts.append((0.5 * (_last(c.vloc) + _first(d.vloc)))[None])
        seam = starts[k + 1]
        a, b = seam - 1, seam
        wa = _rotvec_between(dirs[a - 1], dirs[a]) if c.n_frames > 1 else 0.0
        wb = _rotvec_between(dirs[b], dirs[b + 1]) if d.n_frames > 1 else 0.0
        rho = _rotvec_between(dirs[a], dirs[b]) - 0.5 * (wa + wb)  # (21, 3)
        va = height[a] - height[a - 1] if c.n_frames > 1 else 0.0
        vb = height[b + 1] - height[b] if d.n_frames > 1 else 0.0
        dy = float(height[b] - height[a] - 0.5 * (va + vb))
        step = 0.5 * ((c.rel[-1] - c.rel[-2] if c.n_frames > 1 else 0.0) + (d.rel[1] - d.rel[0] if d.n_frames > 1 else 0.0))
        size = float(np.linalg.norm(d.rel[0] - c.rel[-1] - step, axis=-1).max())  # pose jump (m)
        seams.append((seam, transition_frames(size, c.n_frames, fps), transition_frames(size, d.n_frames, fps),
                      rho, dy))
    for seam, t_out, t_in, rho, dy in seams if blend else []:
        w_out = _ease(t_out)[::-1]  # (t_out,) rising to 1 at the seam
        w_in = _ease(t_in)  # (t_in,) 1 at the seam, falling
        dirs[seam - t_out:seam] = _rotate(dirs[seam - t_out:seam], 0.5 * rho * w_out[:, None, None])
        dirs[seam:seam + t_in] = _rotate(dirs[seam:seam + t_in], -0.5 * rho * w_in[:, None, None])
        height[seam - t_out:seam] += 0.5 * dy * w_out
        height[seam:seam + t_in] -= 0.5 * dy * w_in
    rel = np.zeros_like(rel)
    rel[:, 0, 1] = height
    for j, p in enumerate(parents, start=1):
        rel[:, j] = rel[:, p] + lengths[j - 1] * dirs[:, j - 1]
    dtheta = np.concatenate(dtheta_parts)  # (N-1,)
    vloc = np.concatenate(vloc_parts)  # (N-1, 3)
    theta = clips[0].theta0 + np.concatenate([[0.0], np.cumsum(dtheta)])  # (N,)
    rot = _rot_y(theta)  # (N, 3, 3)
    steps = np.einsum("tab,tb->ta", rot[:-1], vloc)  # (N-1, 3)
    root = clips[0].root0 + np.concatenate([np.zeros((1, 3)), np.cumsum(steps, axis=0)])  # (N, 3)
    joints = np.einsum("tab,tjb->tja", rot, rel) + root[:, None]  # (N, 22, 3)
    joints[..., 1] -= joints[..., 1].min()
    return Composition(joints=joints, starts=starts, blend_out=[s[1] for s in seams],
                       blend_in=[s[2] for s in seams])


def _rotvec_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) turning unit vectors a into b along the great circle."""
    cross = np.cross(a, b)
    sin = np.linalg.norm(cross, axis=-1, keepdims=True)
    cos = np.sum(a * b, axis=-1, keepdims=True)
    angle = np.arctan2(sin, cos)
    axis = cross / np.maximum(sin, 1e-12)
    # antiparallel: any axis perpendicular to a
    anti = (sin[..., 0] < 1e-9) & (cos[..., 0] < 0)
    if np.any(anti):
        perp = np.cross(a, np.array([1.0, 0.0, 0.0]))
        perp = np.where(np.linalg.norm(perp, axis=-1, keepdims=True) < 1e-6, np.cross(a, [0.0, 0.0, 1.0]), perp)
        perp /= np.linalg.norm(perp, axis=-1, keepdims=True)
        axis = np.where(anti[..., None], perp, axis)
    return axis * angle


def _rotate(v: np.ndarray, rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues: rotate vectors v (..., 3) by rotation vectors (..., 3) (broadcast)."""
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    k = rotvec / np.maximum(angle, 1e-12)
    cos, sin = np.cos(angle), np.sin(angle)
    return v * cos + np.cross(k, v) * sin + k * np.sum(k * v, axis=-1, keepdims=True) * (1 - cos)


def _ease(n: int) -> np.ndarray:
    """(n,) weights 1 at the seam easing to 0: 1 - smoothstep(i / n), i = 0 .. n-1."""
    return 1.0 - _smoothstep(np.arange(n) / n)


def _first(a: np.ndarray) -> np.ndarray:
    return a[0] if len(a) else np.zeros(a.shape[1:])


def _last(a: np.ndarray) -> np.ndarray:
    return a[-1] if len(a) else np.zeros(a.shape[1:])


def _bones(joints: np.ndarray) -> np.ndarray:
    return np.linalg.norm(joints[:, 1:] - joints[:, list(PARENTS[1:])], axis=-1)


# ------------------------------------------------------------------------------------------ the takes
_FRAMES_RE = re.compile(r"Frames:\s*(\d+)\s+Frame\s+Time:\s*(\S+)")


def _peek_frames(path: Path) -> tuple[int, float]:
    """(frames, frame time) from a BVH header without reading the motion."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            head = ""
            while len(head) < 1_000_000:
                chunk = fh.read(16384)
                if not chunk:
                    break
                head += chunk
                m = _FRAMES_RE.search(head)
                if m and head.find("\n", m.end()) >= 0:
                    return int(m.group(1)), float(m.group(2))
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        raise CorpusError(str(path), f"cannot read BVH header: {e}") from e
    raise CorpusError(str(path), "no 'Frames:' / 'Frame Time:' in the header")


def list_bandai_takes(root: Path, sets: tuple[str, ...] = ("set1", "set2"),
                      errors: list[str] | None = None) -> list[Take]:
    """Labelled takes of the Bandai Namco sets under `root` (``root/<set>/NAME.bvh[.gz]`` + ``NAME.json``).

    Takes without labels, label files without a BVH and unreadable headers are logged, added to
    `errors` and left out.
    """
    root = Path(root)
    takes: list[Take] = []

    def bad(msg: str) -> None:
        log.warning("left out: %s", msg)
        if errors is not None:
            errors.append(msg)

    for s in sets:
        d = root / s
        if not d.is_dir():
            raise CorpusError(str(d), "no such folder (expected the Bandai Namco set folders under --root)")
        files = sorted(f for f in d.iterdir() if f.name.lower().endswith((".bvh", ".bvh.gz")))
        stems = {bvh_stem(f) for f in files}
        for js in sorted(d.glob("*.json")):
            if js.stem not in stems:
                bad(f"{js}: label file without motion (no {js.stem}.bvh or .bvh.gz)")
        for f in files:
            stem = bvh_stem(f)
            try:
                label = read_bandai_label(d / f"{stem}.json")
                n_src, frame_time = _peek_frames(f)
            except CorpusError as e:
                bad(str(e))
                continue
            fps_src = round(1.0 / frame_time) if abs(1.0 / frame_time - round(1.0 / frame_time)) < 0.01 else 1 / frame_time
            n = len(resample_positions(n_src, fps_src, FPS)) if n_src > 0 else 0
            if n < 4:
                bad(f"{f}: too short to compose ({n_src} frames)")
                continue
            takes.append(Take(name=stem, path=f, content=label.content, style=label.style, dataset=label.dataset,
                              split=take_split(stem), n_frames=n))
    return takes


# --------------------------------------------------------------------------------------------- plan
def _fits(ns: list[int], n_new: int, max_frames: int) -> bool:
    """Adding a clip of n_new frames keeps the sequence within max_frames and every clip >= 1 % of it."""
    total = sum(ns) + n_new
    return total <= max_frames and min(ns + [n_new]) >= MIN_SHARE * total


def plan_split(takes: list[Take], rng: np.random.Generator, n_groups: int | None, min_s: float,
               max_s: float, fps: float = FPS) -> list[list[Take]]:
    """Groups of takes (each a sequence). None: every take once; else n_groups, takes reused in turn."""
    if not takes:
        return []
    min_frames, max_frames = int(math.ceil(min_s * fps)), int(math.floor(max_s * fps))
    queue: deque[Take] = deque(takes[i] for i in rng.permutation(len(takes)))

    def refill() -> None:
        if n_groups is not None and not queue:
            queue.extend(takes[i] for i in rng.permutation(len(takes)))

    def valid(group: list[Take]) -> bool:
        return len(group) >= 2 and sum(t.n_frames for t in group) >= min_frames

    groups: list[list[Take]] = []
    while (n_groups is None and queue) or (n_groups is not None and len(groups) < n_groups):
        target = rng.uniform(min_s, max_s) * fps
        group: list[Take] = []
        while True:
            refill()
            if not queue:
                break
            ns = [t.n_frames for t in group]
            if _fits(ns, queue[0].n_frames, max_frames):
                group.append(queue.popleft())
            elif valid(group):
                break
            else:  # look a little further down the queue for a clip that fits; else accept the first
                idx = next((i for i in range(1, min(len(queue), 64))
                            if _fits(ns, queue[i].n_frames, max_frames)), 0)
                group.append(queue[idx])
                del queue[idx]
            if valid(group) and sum(t.n_frames for t in group) >= target:
                break
        if not valid(group):  # the split's last group: pad with random repeats that fit
            for _ in range(200):
                if valid(group):
                    break
                cand = takes[int(rng.integers(len(takes)))]
                if cand not in group and _fits([t.n_frames for t in group], cand.n_frames, max_frames):
                    group.append(cand)
            if not valid(group) and groups:
                groups[-1].extend(group)
                continue
        if group:
            groups.append(group)
    return groups


def _allocate(n: int, weights: list[int]) -> list[int]:
    """Largest-remainder split of n by weights."""
    total = sum(weights)
    if total == 0:
        return [0] * len(weights)
    raw = [n * w / total for w in weights]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return counts


# ------------------------------------------------------------------------------------------ compose
def compose_bandai(root: Path, seed: int = 0, n_motions: int | None = None, min_s: float = 10.0,
                   max_s: float = 120.0, sets: tuple[str, ...] = ("set1", "set2"),
                   errors: list[str] | None = None) -> Iterator[Motion]:
    """Untrimmed sequences composed of labelled Bandai Namco clips (see the module docstring).

    Yields Motions named ``bandai-composed/s<seed>-n<n|all>-<split>-<index>`` (source
    ``bandai-composed``), split set, one annotation per clip. Clips are loaded lazily (and cached).
    """
    if not (0 < min_s <= max_s):
        raise ValueError(f"need 0 < min_s <= max_s, got {min_s}, {max_s}")
    if n_motions is not None and n_motions <= 0:
        raise ValueError(f"n_motions must be positive, got {n_motions}")
    takes = list_bandai_takes(Path(root), tuple(sets), errors)
    if not takes:
        raise CorpusError(str(root), f"no labelled Bandai takes in {', '.join(sets)}")
    by_split = {s: [t for t in takes if t.split == s] for s in SPLITS}
    counts = _allocate(n_motions, [len(by_split[s]) for s in SPLITS]) if n_motions is not None else [None] * 3
    cache: dict[Path, Clip | None] = {}

    def load(t: Take) -> Clip | None:
        if t.path not in cache:
            try:
                cache[t.path] = to_clip(t, bvh_to_motion(t.path, BANDAI).joints)
            except CorpusError as e:
                log.warning("left out: %s", e)
                if errors is not None:
                    errors.append(str(e))
                cache[t.path] = None
        return cache[t.path]

    tag = f"s{seed}-n{'all' if n_motions is None else n_motions}"
    for si, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, si])
        groups = plan_split(by_split[split], rng, counts[si], min_s, max_s)
        log.info("compose %s: %d sequences from %d takes", split, len(groups), len(by_split[split]))
        for gi, group in enumerate(groups):
            clips = [c for c in (load(t) for t in group) if c is not None]
            if not clips:
                continue
            yield _motion(f"{SOURCE}/{tag}-{split}-{gi:04d}", clips, split, root, seed)


def _motion(name: str, clips: list[Clip], split: str, root: Path, seed: int) -> Motion:
    comp = compose_clips(clips)
    anns = []
    for k, c in enumerate(clips):
        t = c.take
        start = comp.starts[k]
        anns.append(Annotation(
            text=bandai_sentence(t.content, t.style, t.name), start_s=start / FPS,
            end_s=(start + c.n_frames) / FPS, seg_id=f"{k:03d}_{t.name}",
            extra={"content": t.content, "style": t.style, "dataset": t.dataset, "take": t.name,
                   "blend_in_s": (comp.blend_in[k - 1] if k else 0) / FPS,
                   "blend_out_s": (comp.blend_out[k] if k < len(clips) - 1 else 0) / FPS}))
    return Motion(name=name, source=SOURCE, fps=FPS, joints=comp.joints.astype(np.float32), annotations=anns,
                  split=split, path=str(root),
                  meta={"seed": seed, "clips": [c.take.name for c in clips], "blend_in_frames": comp.blend_in,
                        "blend_out_frames": comp.blend_out})
