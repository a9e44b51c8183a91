"""Export on the source skeleton: a span of a motion imported from one BVH file, cut from that file.

A BVH import records ``meta["source_file"]`` (`engine.corpus.bvh.source_record`): the file's absolute path,
size, sha256 and the frame mapping (stored frame k is source frame ``start_frame + k * step``). For the
clip's stored frames ``[f0, f1)`` (as `engine.export.clip_joints` cuts them) the export holds the source
frames whose times fall in ``[f0, f1) / fps``: frames ``start_frame + ceil(f0 * step)`` to
``start_frame + ceil(f1 * step) - 1``. Re-importing the exported file therefore yields the stored frames
``[f0, f1)`` again (up to the importer's normalisation: floor at y = 0, pelvis of frame 0 at x = z = 0).

The file keeps the source's header text byte for byte (hierarchy, offsets, channel order and rotation
orders, line endings) and, at the source rate, its motion lines unchanged. Options:

- ``fps``: resample to another rate: output frame k sits at source position ``k * source_fps / fps``;
  rotations are slerped per joint (quaternions from the joint's own channel order, back to Euler angles
  in that order, taking the 360-degree equivalent nearest to the source angles) and positions lerped. An
  output frame that falls on a source frame is that frame's line, unchanged.
- ``in_place``: the translation joint (the first node whose position channels move; the root otherwise)
  keeps the horizontal position of the clip's first frame (horizontal: perpendicular to the preset's up
  axis, in the file's coordinates).
- ``from_zero``: the clip starts with that joint horizontally at the origin (facing unchanged: a pure
  translation). With ``in_place`` too, it stays at the origin.

Errors are `engine.export.ClipError` naming the motion and the file: a motion without a source record
(composed, synthetic, array imports, or BVH imports made before the record existed), a missing source
file, or a file whose size or sha256 changed; each offers the canonical export instead.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from engine.corpus import bvh as B
from engine.corpus.limits import DEFAULT_LIMITS
from engine.corpus.quat import slerp, unit_quat_to_matrix
from engine.corpus.store import file_sha256
from engine.export import ClipError, ExportedClip, clip_joints

log = logging.getLogger(__name__)

SKELETONS: tuple[str, ...] = ("canonical", "source")
CANONICAL_HINT = "use the canonical export instead (--skeleton canonical, or skeleton=canonical over HTTP)"


@dataclass
class SourceCut:
    """The source frames of a clip: the parsed file, its raw text pieces and the span."""

    bvh: B.BvhData
    header: str  # everything before the MOTION line, verbatim
    motion_kw: str  # the MOTION line itself, verbatim (with its line ending)
    frame_time_tok: str
    lines: list[str]  # every motion line of the file, without line endings
    first: int  # first source frame of the span
    last: int  # last source frame of the span (inclusive)
    record: dict


def source_record(meta: dict) -> dict | None:
    rec = meta.get("source_file")
    return rec if isinstance(rec, dict) and {"path", "sha256", "start_frame", "step"} <= rec.keys() else None


def _unavailable(where: str, meta) -> ClipError:
    if meta.source in ("synth", "compose", "composed") or meta.name.startswith(("synth/", "compose")):
        why = f"it is a {meta.source} motion, generated on the canonical skeleton, with no source file"
    elif meta.path and str(meta.path).lower().endswith(B.BVH_SUFFIXES):
        why = (f"it was imported from {meta.path} before source records were kept (re-import the file to "
               "record its hash and frame mapping)")
    else:
        why = f"it was not imported from one BVH file (source {meta.source!r}: only BVH imports keep their skeleton)"
    return ClipError(where, f"the source skeleton is unavailable: {why}; {CANONICAL_HINT}")


def load_source_cut(store, motion_id: int, start_s: float | None, end_s: float | None) -> SourceCut:
    """The verified source file of a stored motion and the source frames of ``[start_s, end_s)``."""
    clip = clip_joints(store, motion_id, start_s, end_s)
    meta = store.get_motion(clip.motion_id, arrays=False)
    where = f"motion {clip.motion_id} ({clip.name!r})"
    rec = source_record(meta.meta or {})
    if rec is None:
        raise _unavailable(where, meta)
    path = Path(rec["path"])
    if not path.is_file():
        raise ClipError(where, f"source file {rec['path']} is missing; {CANONICAL_HINT}")
    size, sha = file_sha256(path)
    if sha != rec["sha256"] or ("bytes" in rec and size != rec["bytes"]):
        raise ClipError(where, f"source file {rec['path']} changed since the import (sha256 {sha[:12]}..., "
                               f"recorded {str(rec['sha256'])[:12]}...); {CANONICAL_HINT}")
    text = B._open_text(path, rec["path"], DEFAULT_LIMITS)
    m = B._MOTION_RE.search(text)
    if m is None:
        raise ClipError(where, f"source file {rec['path']}: no MOTION section")
    nl = text.find("\n", m.end())
    motion_kw = text[m.start(): nl + 1 if nl >= 0 else m.end()]
    fm = B._FRAMES_RE.match(text[m.end():])
    if fm is None:
        raise ClipError(where, f"source file {rec['path']}: malformed Frames / Frame Time lines")
    body = text[m.end() + fm.end():]
    lines = [ln.rstrip("\r\n") for ln in body.splitlines() if ln.strip()]
    bvh = B.read_bvh(path)
    lines = lines[: bvh.n_frames]
    step, start = float(rec["step"]), int(rec["start_frame"])
    first = start + int(math.ceil(clip.start_frame * step - 1e-6))
    last = min(bvh.n_frames, start + int(math.ceil(clip.end_frame * step - 1e-6))) - 1
    if last < first:
        raise ClipError(where, f"the span holds no frame of {rec['path']}")
    return SourceCut(bvh=bvh, header=text[: m.start()], motion_kw=motion_kw, frame_time_tok=fm.group(2),
                     lines=lines, first=first, last=last, record=rec)


# ------------------------------------------------------------------------------------------ resampling
def _rotation_groups(bvh: B.BvhData) -> list[tuple[int, list[int], str]]:
    """(node, its rotation columns, their axes e.g. 'ZXY') for every node with rotation channels."""
    out = []
    for j, n in enumerate(bvh.nodes):
        cols = [n.channel_start + k for k, ch in enumerate(n.channels) if ch.endswith("rotation")]
        if cols:
            out.append((j, cols, "".join(n.channels[k][0] for k, ch in enumerate(n.channels)
                                         if ch.endswith("rotation"))))
    return out


def resample_motion(bvh: B.BvhData, positions: np.ndarray) -> np.ndarray:
    """Channel values (T, C) at fractional source frame `positions` (T,): slerped rotations, lerped rest."""
    n = bvh.n_frames
    i0 = np.clip(np.floor(positions + 1e-9).astype(int), 0, n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    a = np.clip(positions - i0, 0.0, 1.0)
    m0, m1 = bvh.motion[i0], bvh.motion[i1]
    out = m0 + a[:, None] * (m1 - m0)  # positions (and 1-2 channel rotations) lerp
    quats, _ = B.local_channels(bvh)
    for j, cols, axes in _rotation_groups(bvh):
        if len(cols) < 3:
            continue  # one or two rotation channels: per-angle interpolation (above) keeps the channel layout
        q = slerp(quats[i0, j], quats[i1, j], a)
        euler = Rotation.from_matrix(unit_quat_to_matrix(q)).as_euler(axes.upper(), degrees=True)  # intrinsic
        ref = out[:, cols]  # the lerp of the source angles: pick the nearest 360-degree equivalent
        euler += 360.0 * np.round((ref - euler) / 360.0)
        out[:, cols] = euler
    exact = a < 1e-9
    out[exact] = m0[exact]
    return out


# ------------------------------------------------------------------------------------- in place / zero
def _translation_node(bvh: B.BvhData, first: int, last: int) -> int:
    span = bvh.motion[first: last + 1]
    for j, n in enumerate(bvh.nodes):
        cols = [n.channel_start + k for k, ch in enumerate(n.channels) if ch.endswith("position")]
        if cols and float(np.ptp(span[:, cols], axis=0).max()) > 1e-9:
            return j
    return 0


def _parent_frames(bvh: B.BvhData, motion: np.ndarray, node: int) -> tuple[np.ndarray, np.ndarray]:
    """Global rotation (T, 3, 3) and position (T, 3) of `node`'s parent frame (identity / 0 for the root)."""
    sub = B.BvhData(path=bvh.path, nodes=bvh.nodes, frame_time_s=bvh.frame_time_s, motion=motion)
    quats, trans = B.local_channels(sub)
    chain = []
    p = bvh.nodes[node].parent
    while p >= 0:
        chain.append(p)
        p = bvh.nodes[p].parent
    rot = np.broadcast_to(np.eye(3), (motion.shape[0], 3, 3)).copy()
    pos = np.zeros((motion.shape[0], 3))
    for j in reversed(chain):
        pos = pos + np.einsum("tab,tb->ta", rot, trans[:, j])
        rot = rot @ unit_quat_to_matrix(quats[:, j])
    return rot, pos


def move_root(bvh: B.BvhData, motion: np.ndarray, up_file: np.ndarray, in_place: bool, from_zero: bool,
              first: int, last: int) -> tuple[np.ndarray, list[int]]:
    """`motion` (T, C) with the translation joint moved horizontally (see the module docstring), and the
    columns changed."""
    node = _translation_node(bvh, first, last)
    nd = bvh.nodes[node]
    pcols = {ch[0]: nd.channel_start + k for k, ch in enumerate(nd.channels) if ch.endswith("position")}
    if not pcols:
        raise ClipError(bvh.path, f"joint {nd.name!r} has no position channels to move")
    sub = B.BvhData(path=bvh.path, nodes=bvh.nodes, frame_time_s=bvh.frame_time_s, motion=motion)
    _, trans = B.local_channels(sub)
    local = trans[:, node]  # (T, 3)
    rot, ppos = _parent_frames(bvh, motion, node)
    world = ppos + np.einsum("tab,tb->ta", rot, local)
    up = up_file / np.linalg.norm(up_file)
    horiz = world - np.outer(world @ up, up)  # (T, 3) horizontal part
    if in_place and from_zero:
        shift = horiz
    elif in_place:
        shift = horiz - horiz[:1]
    else:
        shift = np.broadcast_to(horiz[:1], horiz.shape)
    new_local = local - np.einsum("tba,tb->ta", rot, shift)  # R^T shift
    out = motion.copy()
    for axis, col in pcols.items():
        out[:, col] = new_local[:, B._AXIS[axis]]
    missing = [a for a in "XYZ" if a not in pcols]
    if missing and np.abs(new_local[:, [B._AXIS[a] for a in missing]] - local[:, [B._AXIS[a] for a in missing]]).max() > 1e-9:
        raise ClipError(bvh.path, f"joint {nd.name!r} lacks the {'/'.join(missing)}position channel(s) the move needs")
    return out, sorted(pcols.values())


# ------------------------------------------------------------------------------------------- writing
def _fmt(v: float) -> str:
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _line(values: np.ndarray) -> str:
    return " ".join(_fmt(v) for v in values)


def _replace_tokens(line: str, values: np.ndarray, cols: list[int]) -> str:
    toks = line.split()
    for c in cols:
        toks[c] = _fmt(values[c])
    return " ".join(toks)


def source_clip_text(store, motion_id: int, start_s: float | None = None, end_s: float | None = None,
                     fps: float | None = None, in_place: bool = False, from_zero: bool = False) -> tuple[str, dict]:
    """The source-skeleton BVH text of a span, and a summary (frames, fps, source path)."""
    cut = load_source_cut(store, motion_id, start_s, end_s)
    bvh = cut.bvh
    n_src = cut.last - cut.first + 1
    src_fps = bvh.fps
    resample = fps is not None and abs(float(fps) - src_fps) > 1e-9 * src_fps
    if fps is not None and not (math.isfinite(fps) and 0 < fps <= 1000):
        raise ClipError(f"motion {motion_id}", f"--fps must be in (0, 1000], got {fps!r}")
    if resample:
        positions = cut.first + B.resample_positions(n_src, src_fps, float(fps))
        motion = resample_motion(bvh, positions)
        exact = np.abs(positions - np.round(positions)) < 1e-9
        src_idx = np.where(exact, np.round(positions).astype(int), -1)
        frame_time = f"{1.0 / float(fps):.10g}"
    else:
        motion = bvh.motion[cut.first: cut.last + 1].copy()
        src_idx = np.arange(cut.first, cut.last + 1)
        frame_time = cut.frame_time_tok
    changed: list[int] = []
    if in_place or from_zero:
        preset_name = str((store.get_motion(motion_id, arrays=False).meta or {}).get("preset", ""))
        preset = B.PRESETS.get(preset_name)
        axes = np.asarray(preset.axes if preset is not None else np.eye(3), dtype=np.float64)
        up_file = axes.T @ np.array([0.0, 1.0, 0.0])
        motion, changed = move_root(bvh, motion, up_file, in_place, from_zero, cut.first, cut.last)
    rows = []
    for k in range(motion.shape[0]):
        i = int(src_idx[k])
        if i >= 0:
            rows.append(_replace_tokens(cut.lines[i], motion[k], changed) if changed else cut.lines[i])
        else:
            rows.append(_line(motion[k]))
    nl = "\r\n" if cut.motion_kw.endswith("\r\n") else "\n"
    text = (cut.header + cut.motion_kw + f"Frames: {len(rows)}{nl}Frame Time: {frame_time}{nl}"
            + "\n".join(rows) + "\n")
    info = {"source_path": cut.record["path"], "source_first_frame": cut.first, "source_last_frame": cut.last,
            "n_frames": len(rows), "fps": float(fps) if resample else src_fps}
    return text, info


def source_clip_bytes(store, motion_id: int, start_s: float | None = None, end_s: float | None = None,
                      fps: float | None = None, in_place: bool = False, from_zero: bool = False
                      ) -> tuple[ExportedClip, dict]:
    """`source_clip_text` as a download (BVH bytes, media type and a file name), and its summary."""
    text, info = source_clip_text(store, motion_id, start_s, end_s, fps, in_place, from_zero)
    clip = clip_joints(store, motion_id, start_s, end_s)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", clip.name).strip("._") or f"motion_{clip.motion_id}"
    return ExportedClip(data=text.encode("utf-8"), media_type="text/plain; charset=utf-8",
                        filename=f"{stem}_{clip.start_s:.2f}-{clip.end_s:.2f}s_source.bvh"), info
