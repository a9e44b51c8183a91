"""Clip export: a span of a stored motion as BVH, .npy, JSON or GLB (glTF binary, `engine.export_glb`);
`engine.clipfile` turns a cut clip into the bytes of a format.

`clip_joints` cuts frames ``[start_frame, end_frame)`` out of a motion of the corpus store, where frame
``k`` covers ``[k / fps, (k + 1) / fps)`` (a motion of ``n_frames`` lasts ``n_frames / fps`` s, as in the
store): ``start_frame = floor(start_s * fps)``, ``end_frame = ceil(end_s * fps)``. The clip's `start_s` /
`end_s` are those frame boundaries (what the file really holds), not the requested times.

`to_bvh` writes the canonical SMPL 22-joint skeleton (joint names of `engine.corpus.skeleton`) in
centimetres, y up, at the clip's fps, so that the project's importer (`engine.corpus.bvh` with
``preset="smpl"``, e.g. ``engine data import bvh --preset smpl``; units auto-detected as cm) reads back
the same joint positions up to the importer's own normalisation (lowest joint on the floor, pelvis of
frame 0 at x = z = 0):

- OFFSETs: a rest pose built from the clip's mean bone lengths, each bone along a T-pose direction,
  except the children of the two joints with several children (pelvis: hips + spine1; spine3: neck +
  collars), whose offsets are the clip's own mean configuration of those bones (so one rotation can
  place all of them).
- Rotations: per frame, the global rotation of a joint with one child is the parent's rotation followed
  by the smallest rotation (swing) that turns the rest bone onto the observed bone; for pelvis and
  spine3 it is the best-fit rotation (Kabsch) of their children's rest offsets onto the observed ones.
  Leaves (feet, head, wrists) keep their parent's rotation and end in an End Site.

Canonical motions have constant bone lengths and rigid pelvis / spine3 child groups, so the round trip
is exact to the text precision (~1e-6 m). Joints recovered from features only can violate both; the
export then is the best rigid fit and the largest position error is logged as a warning.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.corpus.skeleton import JOINT_NAMES, N_JOINTS, PARENTS, RAW_OFFSETS

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("bvh", "npy", "json", "glb")
MEDIA_TYPES: dict[str, str] = {
    "bvh": "text/plain; charset=utf-8",
    "npy": "application/octet-stream",
    "json": "application/json",
    "glb": "model/gltf-binary",
}
# Requested times may pass the motion's end by this much (float rounding of client times).
TIME_TOLERANCE_S = 1e-3
BVH_UNIT_PER_M = 100.0  # the BVH file is in centimetres
MIN_CLIP_FRAMES = 2
# Position error of the BVH pose (vs the clip) above which `to_bvh` warns (non-rigid input joints).
WARN_ERROR_M = 1e-3

CHILDREN: tuple[tuple[int, ...], ...] = tuple(
    tuple(c for c in range(N_JOINTS) if PARENTS[c] == j) for j in range(N_JOINTS))
# Rest-pose bone directions (x left, y up, z forward): HumanML3D's raw offsets, head pointing up.
REST_DIRECTIONS = RAW_OFFSETS.copy()
REST_DIRECTIONS[JOINT_NAMES.index("head")] = (0.0, 1.0, 0.0)
# End Site of each leaf joint in metres, in the leaf's rest frame (toe tip, top of head, hand).
END_SITES_M: dict[str, tuple[float, float, float]] = {
    "l_foot": (0.0, 0.0, 0.04), "r_foot": (0.0, 0.0, 0.04), "head": (0.0, 0.12, 0.0),
    "l_wrist": (0.0, -0.08, 0.0), "r_wrist": (0.0, -0.08, 0.0),
}
_EULER_ORDER = "ZYX"  # channels "Zrotation Yrotation Xrotation": R = Rz @ Ry @ Rx


class ClipError(ValueError):
    """A clip that cannot be cut or exported; the message names the motion and the problem."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class MotionNotFoundError(ClipError):
    """The motion id or name is not in the corpus (an HTTP layer may answer 404)."""


@dataclass
class Clip:
    """Frames ``[start_frame, end_frame)`` of one motion; `joints` is (n_frames, 22, 3) float32, metres, y up."""

    motion_id: int
    name: str
    source: str
    fps: float
    start_s: float  # = start_frame / fps
    end_s: float  # = end_frame / fps
    start_frame: int
    end_frame: int  # exclusive
    joints: np.ndarray

    @property
    def n_frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps


@dataclass
class ExportedClip:
    """A clip serialised for download: the bytes, their media type and a file name."""

    data: bytes
    media_type: str
    filename: str


# ------------------------------------------------------------------------------------------- cutting
def motion_label(store, motion_id: int) -> str:
    """``motion 12 ('synth/0/000012')`` for messages; ``motion 12`` when the id is unknown."""
    try:
        name = store.get_motion(int(motion_id), arrays=False).name
    except (KeyError, ValueError, TypeError):
        return f"motion {motion_id}"
    return f"motion {motion_id} ({name!r})"


def resolve_motion_id(store, motion: int | str) -> int:
    """A motion id from an id or a motion name (``"12"`` is tried as an id first, then as a name)."""
    text = str(motion).strip()
    if re.fullmatch(r"\d+", text):
        mid = int(text)
        try:
            store.get_motion(mid, arrays=False)
            return mid
        except KeyError:
            pass
    try:
        return int(store.motion_id(text))
    except KeyError:
        raise MotionNotFoundError(f"motion {text!r}", f"no motion with this id or name in corpus {store.dir}") \
            from None


def frame_range(n_frames: int, fps: float, start_s: float, end_s: float) -> tuple[int, int]:
    """Frames ``[start, end)`` covering ``[start_s, end_s)`` (frame k covers [k/fps, (k+1)/fps)), clipped."""
    eps = 1e-6
    start = max(0, int(math.floor(start_s * fps + eps)))
    end = min(n_frames, int(math.ceil(end_s * fps - eps)))
    return start, end


def clip_joints(store, motion_id: int, start_s: float | None = None, end_s: float | None = None) -> Clip:
    """Joints of ``[start_s, end_s)`` of a stored motion (None: from its start / to its end).

    Raises `MotionNotFoundError` for an unknown id and `ClipError` for times outside the motion, an
    empty or reversed span, or a span shorter than 2 frames.
    """
    try:
        meta = store.get_motion(int(motion_id), arrays=False)
    except (KeyError, ValueError, TypeError):
        raise MotionNotFoundError(f"motion {motion_id}", f"no such motion in corpus {store.dir}") from None
    where = f"motion {meta.motion_id} ({meta.name!r})"
    joints = store.joints(meta.motion_id)  # (F, 22, 3)
    n_total = int(joints.shape[0])
    fps = float(meta.fps)
    duration_s = n_total / fps
    start = 0.0 if start_s is None else float(start_s)
    end = duration_s if end_s is None else float(end_s)
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ClipError(where, f"non-finite clip times {start!r}..{end!r}")
    if start < 0:
        raise ClipError(where, f"start {start:.3f}s is before the motion's start (0s)")
    if end > duration_s + TIME_TOLERANCE_S:
        raise ClipError(where, f"end {end:.3f}s is after the motion's end ({duration_s:.3f}s)")
    if end <= start:
        raise ClipError(where, f"end {end:.3f}s is not after start {start:.3f}s")
    f0, f1 = frame_range(n_total, fps, start, min(end, duration_s))
    if f1 - f0 < MIN_CLIP_FRAMES:
        raise ClipError(where, f"clip {start:.3f}-{end:.3f}s has {max(0, f1 - f0)} frame(s) at {fps:g} fps; "
                               f"at least {MIN_CLIP_FRAMES} are needed ({MIN_CLIP_FRAMES / fps:.3f}s)")
    return Clip(motion_id=int(meta.motion_id), name=meta.name, source=meta.source, fps=fps, start_s=f0 / fps,
                end_s=f1 / fps, start_frame=f0, end_frame=f1,
                joints=np.array(joints[f0:f1], dtype=np.float32))  # (n, 22, 3), a copy of the mmap view


# ------------------------------------------------------------------------------------------ rotations
def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 1e-12, n, 1.0)


def _swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., 3, 3) smallest rotations turning directions a (..., 3) onto b (..., 3) (unit or not)."""
    a, b = np.broadcast_arrays(_unit(a), _unit(b))
    cos = np.sum(a * b, axis=-1)  # (...,)
    axis = np.cross(a, b)  # (..., 3), |axis| = sin
    # Opposite directions: a half turn about any axis perpendicular to a.
    opposite = cos < -1 + 1e-9
    if np.any(opposite):
        helper = np.where(np.abs(a[..., :1]) < 0.9, np.array([1.0, 0, 0]), np.array([0.0, 1, 0]))
        perp = _unit(np.cross(a, helper))
        axis = np.where(opposite[..., None], perp, axis)
    # Rodrigues with k = axis (unnormalised): R = I + [k]x + [k]x^2 / (1 + cos).
    kx = np.zeros(axis.shape + (3,))
    kx[..., 0, 1], kx[..., 0, 2] = -axis[..., 2], axis[..., 1]
    kx[..., 1, 0], kx[..., 1, 2] = axis[..., 2], -axis[..., 0]
    kx[..., 2, 0], kx[..., 2, 1] = -axis[..., 1], axis[..., 0]
    denom = np.where(opposite, 1.0, 1.0 + cos)[..., None, None]
    scale2 = np.where(opposite, 2.0, 1.0)[..., None, None]  # half turn: I + 2 [p]x^2 for a unit p
    return np.eye(3) + np.where(opposite[..., None, None], 0.0, kx) + scale2 * (kx @ kx) / denom


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(F, 3, 3) rotations R minimising sum_c |R src_c - dst_fc|^2; src (C, 3), dst (F, C, 3)."""
    h = np.einsum("ca,fcb->fab", src, dst)  # (F, 3, 3) = sum_c src_c dst_c^T
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2)))  # (F,)
    fix = np.ones(u.shape[:-2] + (3,))
    fix[..., 2] = np.where(d == 0, 1.0, d)
    return np.swapaxes(vt, -1, -2) @ (fix[..., :, None] * np.swapaxes(u, -1, -2))


def _euler_zyx_deg(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 3) degrees (z, y, x) with R = Rz(z) @ Ry(y) @ Rx(x)."""
    cy = np.hypot(r[..., 0, 0], r[..., 1, 0])
    y = np.arctan2(-r[..., 2, 0], cy)
    regular = cy > 1e-9
    z = np.where(regular, np.arctan2(r[..., 1, 0], r[..., 0, 0]), 0.0)
    x = np.where(regular, np.arctan2(r[..., 2, 1], r[..., 2, 2]),
                 np.arctan2(-np.sign(r[..., 2, 0]) * r[..., 0, 1], r[..., 1, 1]))  # gimbal lock: z = 0
    return np.degrees(np.stack([z, y, x], axis=-1))


def _euler_zyx_to_mat(deg: np.ndarray) -> np.ndarray:
    """Inverse of `_euler_zyx_deg`: (..., 3) degrees (z, y, x) -> (..., 3, 3)."""
    z, y, x = np.moveaxis(np.radians(deg), -1, 0)
    cz, sz, cy, sy, cx, sx = np.cos(z), np.sin(z), np.cos(y), np.sin(y), np.cos(x), np.sin(x)
    return np.stack([
        np.stack([cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx], axis=-1),
        np.stack([sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx], axis=-1),
        np.stack([-sy, cy * sx, cy * cx], axis=-1),
    ], axis=-2)


@dataclass
class BvhPose:
    """The BVH encoding of a clip, in metres: rest `offsets_m` (22, 3), root positions (F, 3), local
    ZYX Euler angles (F, 22, 3) in degrees, and the largest position error of the encoding (metres)."""

    offsets_m: np.ndarray
    root_m: np.ndarray
    euler_deg: np.ndarray
    max_error_m: float


def _rest_offsets(joints: np.ndarray) -> np.ndarray:
    """(22, 3) rest offsets from the clip's mean bone lengths (see the module docstring)."""
    bones = joints[:, 1:] - joints[:, list(PARENTS[1:])]  # (F, 21, 3)
    lengths = np.linalg.norm(bones, axis=-1).mean(axis=0)  # (21,)
    offsets = np.zeros((N_JOINTS, 3))
    offsets[1:] = _unit(REST_DIRECTIONS[1:]) * lengths[:, None]
    for p, kids in enumerate(CHILDREN):
        if len(kids) < 2:
            continue
        template = offsets[list(kids)]  # (C, 3)
        observed = joints[:, list(kids)] - joints[:, [p]]  # (F, C, 3)
        r = _kabsch(template, observed)  # (F, 3, 3)
        # The clip's own configuration of these bones, turned back to the template's orientation.
        offsets[list(kids)] = np.einsum("fba,fcb->fca", r, observed).mean(axis=0)  # R^T d, averaged
    return offsets


def _forward(offsets: np.ndarray, root: np.ndarray, local: np.ndarray) -> np.ndarray:
    """(F, 22, 3) positions from rest offsets (22, 3), root positions (F, 3) and local rotations (F, 22, 3, 3)."""
    pos = np.zeros(local.shape[:1] + (N_JOINTS, 3))
    glob = np.zeros_like(local)
    for j, p in enumerate(PARENTS):
        if p < 0:
            pos[:, j], glob[:, j] = root, local[:, j]
        else:
            pos[:, j] = pos[:, p] + glob[:, p] @ offsets[j]
            glob[:, j] = glob[:, p] @ local[:, j]
    return pos


def bvh_pose(joints: np.ndarray) -> BvhPose:
    """Rest offsets and per-frame local rotations that reproduce `joints` (F, 22, 3) by forward kinematics."""
    j = np.asarray(joints, dtype=np.float64)  # (F, 22, 3)
    n_f = j.shape[0]
    offsets = _rest_offsets(j)
    glob = np.zeros((n_f, N_JOINTS, 3, 3))
    local = np.zeros((n_f, N_JOINTS, 3, 3))
    for p in range(N_JOINTS):  # parents precede children
        kids = CHILDREN[p]
        parent_rot = glob[:, PARENTS[p]] if PARENTS[p] >= 0 else np.broadcast_to(np.eye(3), (n_f, 3, 3))
        if not kids:  # leaf: keep the parent's orientation
            glob[:, p] = parent_rot
        elif len(kids) == 1:
            observed = j[:, kids[0]] - j[:, p]  # (F, 3)
            in_parent = np.einsum("fba,fb->fa", parent_rot, observed)  # parent_rot^T d
            glob[:, p] = parent_rot @ _swing(offsets[kids[0]], in_parent)
        else:
            glob[:, p] = _kabsch(offsets[list(kids)], j[:, list(kids)] - j[:, [p]])
        local[:, p] = np.swapaxes(parent_rot, -1, -2) @ glob[:, p]
    euler = _euler_zyx_deg(local)  # (F, 22, 3)
    recon = _forward(offsets, j[:, 0], _euler_zyx_to_mat(euler))
    err = float(np.abs(recon - j).max()) if n_f else 0.0
    return BvhPose(offsets_m=offsets, root_m=j[:, 0].copy(), euler_deg=euler, max_error_m=err)


# ------------------------------------------------------------------------------------------- formats
def _fmt(values: np.ndarray) -> str:
    return " ".join(f"{v:.6f}" for v in values)


def to_bvh(clip: Clip) -> str:
    """The clip as a BVH file (canonical SMPL 22-joint skeleton, centimetres, y up, the clip's fps)."""
    pose = bvh_pose(clip.joints)
    if pose.max_error_m > WARN_ERROR_M:
        log.warning("motion %s (%r): BVH pose differs from the joints by up to %.4f m (bone lengths or the "
                    "pelvis/spine3 bone groups vary across frames)", clip.motion_id, clip.name, pose.max_error_m)
    offsets = pose.offsets_m * BVH_UNIT_PER_M
    lines = ["HIERARCHY"]

    def block(j: int, depth: int) -> None:
        pad = "  " * depth
        kind = "ROOT" if PARENTS[j] < 0 else "JOINT"
        order.append(j)
        lines.append(f"{pad}{kind} {JOINT_NAMES[j]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {_fmt(offsets[j])}")
        if PARENTS[j] < 0:
            lines.append(f"{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation")
        else:
            lines.append(f"{pad}  CHANNELS 3 Zrotation Yrotation Xrotation")
        for c in CHILDREN[j]:
            block(c, depth + 1)
        if not CHILDREN[j]:
            end = np.asarray(END_SITES_M.get(JOINT_NAMES[j], (0.0, 0.05, 0.0))) * BVH_UNIT_PER_M
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {_fmt(end)}", f"{pad}  }}"])
        lines.append(f"{pad}}}")

    order: list[int] = []  # joints in file (depth-first) order: the order of their channel columns
    block(0, 0)
    cols = [pose.root_m * BVH_UNIT_PER_M] + [pose.euler_deg[:, j] for j in order]  # each (F, 3)
    motion = np.concatenate(cols, axis=1)  # (F, 3 + 22 * 3)
    lines += ["MOTION", f"Frames: {motion.shape[0]}", f"Frame Time: {1.0 / clip.fps:.10g}"]
    lines += [_fmt(row) for row in motion]
    return "\n".join(lines) + "\n"


def to_npy(clip: Clip) -> bytes:
    """The clip's joints (n_frames, 22, 3) float32 in ``np.save`` format."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(clip.joints, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def to_json(clip: Clip) -> dict:
    """The clip as a JSON-able dict; `frames` is (n_frames, 22, 3) nested lists in metres, 4 decimals."""
    return {
        "motion_id": clip.motion_id,
        "name": clip.name,
        "source": clip.source,
        "fps": clip.fps,
        "start_s": round(clip.start_s, 6),
        "end_s": round(clip.end_s, 6),
        "start_frame": clip.start_frame,
        "end_frame": clip.end_frame,
        "units": "m",
        "up_axis": "y",
        "joint_names": list(JOINT_NAMES),
        "parents": list(PARENTS),
        "frames": np.round(clip.joints.astype(np.float64), 4).tolist(),
    }


def clip_filename(clip: Clip, fmt: str) -> str:
    """``<name with / as _>_<start>-<end>s.<fmt>``, e.g. ``synth_0_000003_1.00-4.50s.bvh``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", clip.name).strip("._") or f"motion_{clip.motion_id}"
    return f"{stem}_{clip.start_s:.2f}-{clip.end_s:.2f}s.{fmt}"


def _format_key(fmt: str, where: str) -> str:
    key = str(fmt).lower().lstrip(".")
    if key not in FORMATS:
        raise ClipError(where, f"unknown export format {fmt!r} (choose {', '.join(FORMATS)})")
    return key


# -------------------------------------------------------------------------------------------- corpus
def corpus_location(corpus: str | os.PathLike | None = None, index: str | os.PathLike | None = None,
                    progress: Callable[[str, int, int], None] | None = None) -> tuple[Path, str | None]:
    """(corpus dir, SQL URL or None): `corpus` itself, the corpus the index at `index` was built from,
    or (neither given) the built-in corpus, built with its index on first use like `engine search`.

    Raises FileNotFoundError naming the directory when it is not a corpus / index.
    """
    if corpus is not None and index is not None:
        raise ValueError("give a corpus directory or an index directory, not both")
    if corpus is not None:
        return Path(corpus), None
    if index is not None:
        from indexer.manifest import Manifest, read_current, version_dir

        version = read_current(index)
        if version is None:
            raise FileNotFoundError(f"{index}: not an index directory (no CURRENT); build one with "
                                    "`engine index build --corpus DIR --out INDEX_DIR`")
        man = Manifest.read(version_dir(index, version))
        if not man.corpus.get("dir"):
            raise FileNotFoundError(f"{index}: the index manifest does not name its corpus; pass --corpus")
        return Path(man.corpus["dir"]), man.corpus.get("url")
    from engine.home import default_corpus_dir, default_corpus_ready, ensure_default_index

    if not default_corpus_ready():
        ensure_default_index(progress=progress)
    return default_corpus_dir(), None
