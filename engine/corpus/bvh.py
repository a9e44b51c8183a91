"""BVH import: any BVH skeleton -> the canonical SMPL 22 joints (metres, y-up, 20 fps).

Pipeline of `bvh_to_motion`:

1. `read_bvh` parses the file (plain ``.bvh`` or ``.bvh.gz``) by whitespace tokens, so CRLF/LF,
   tabs and trailing spaces do not matter: HIERARCHY (ROOT/JOINT/End Site, OFFSET, CHANNELS with
   any subset/order of the six channels) and MOTION (``Frames:``, ``Frame Time:``, one line per
   frame). Every problem raises `CorpusError` naming the file and, where possible, the line.
2. A `SkeletonPreset` says which BVH joint (or weighted blend of a BVH joint and its child) each
   SMPL joint is, the unit scale (or auto-detection), the axis convention, and whether frame 0 is
   a T-pose reference to drop. Presets: ``bandai``, ``cmu131``, ``cmu135``, auto-detected from the
   joint names, and ``smpl`` (the canonical joint names, as `engine export` writes them);
   a custom map is a JSON file (see `load_joint_map`).
3. Resampling to 20 fps happens on the *local rotations* (quaternion slerp) and translations
   (linear), and forward kinematics (vectorised over frames) runs on the resampled channels, so bone
   lengths stay exactly constant. (Linear interpolation of joint *positions* would shorten bones
   during fast rotations by up to ~1.5 % at 30 -> 20 fps.) When the source rate is an integer
   multiple of 20 fps (120 fps CMU) this is plain subsampling.
4. Joints are scaled to metres, rotated to y-up (the person's left at +x when facing +z, i.e. a
   right-handed frame), put on the floor (lowest joint over the whole motion at y = 0) and the
   pelvis of frame 0 at x = z = 0.

Blends: a SMPL joint may be a weighted blend of two BVH points. For exactly constant bone lengths the
two points should lie on one rigid BVH bone (a joint and its child); a blend of points on different
bones is allowed but its bone length will vary with the joint angle.

Bandai Namco labels: a sidecar ``NAME.json`` ``{"content": i, "style": j}`` indexes
``cfg/content_label.txt`` / ``cfg/style_label.txt`` beside the files; it becomes one Annotation over
the whole clip with a natural sentence (`bandai_sentence`), ``extra={"content", "style", ...}``.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from engine.corpus.fsnames import display_path, name_bytes, storable
from engine.corpus.limits import (
    DEFAULT_LIMITS,
    ImportLimits,
    check_duration,
    check_file_size,
    check_frame_time,
    check_plausible_joints,
    check_resampled_frames,
    read_bounded,
)
from engine.corpus.quat import axis_quat, qmul, slerp, unit_quat_to_matrix
from engine.corpus.skeleton import FPS, JOINT_NAMES, N_JOINTS
from engine.corpus.tables import load_table
from engine.corpus.types import Annotation, CorpusError, Motion

log = logging.getLogger(__name__)

CHANNEL_NAMES = ("Xposition", "Yposition", "Zposition", "Xrotation", "Yrotation", "Zrotation")
_AXIS = {"X": 0, "Y": 1, "Z": 2}
BVH_SUFFIXES = (".bvh", ".bvh.gz")
# Metres per unit of the unit systems met in BVH files (auto-detection picks one of these).
UNIT_SCALES_M: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001, "inch": 0.0254, "cmu": 0.056444}
# Reference body size for unit detection: pelvis->head path + hip->ankle leg path of SMPL (HumanML3D
# reference skeleton), in metres.
_REF_BODY_M = 1.47
SPLIT_FRACTIONS: tuple[tuple[str, float], ...] = (("train", 0.7), ("val", 0.1), ("test", 0.2))


# ---------------------------------------------------------------------------------------------- parse
@dataclass
class BvhNode:
    """One node of the hierarchy: a joint, or an End Site (named ``<parent>_End``, no channels)."""

    name: str
    parent: int  # index into BvhData.nodes, -1 for the root
    offset: np.ndarray  # (3,) in file units
    channels: tuple[str, ...] = ()
    channel_start: int = 0  # first column of this node's channels in BvhData.motion
    is_end_site: bool = False
    line: int = 0


@dataclass
class BvhData:
    """A parsed BVH file. `motion` is (n_frames, n_channels) float64, in file units and degrees."""

    path: str
    nodes: list[BvhNode]
    frame_time_s: float
    motion: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.motion.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.motion.shape[1])

    @property
    def fps(self) -> float:
        """1 / Frame Time, snapped to an integer when within 0.05 % (0.0333333 -> 30)."""
        fps = 1.0 / self.frame_time_s
        r = round(fps)
        return float(r) if r > 0 and abs(fps - r) <= 5e-4 * r else fps

    @property
    def joint_names(self) -> list[str]:
        """Names of the real joints (End Sites excluded), in file order."""
        return [n.name for n in self.nodes if not n.is_end_site]

    def index(self, name: str) -> int:
        for i, n in enumerate(self.nodes):
            if n.name == name:
                return i
        raise KeyError(name)


def _open_text(path: Path, where: str, limits: ImportLimits) -> str:
    """The file's text: size-checked before reading, decompressed as a bounded stream, BOM stripped."""
    check_file_size(path, where, limits)
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                data = read_bounded(fh, where, limits.max_decompressed_bytes)
        else:
            with open(path, "rb") as fh:
                data = read_bounded(fh, where, min(limits.max_file_bytes, limits.max_decompressed_bytes),
                                    what="holds")
        if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
            data = data[3:]
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(where, f"cannot read: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise CorpusError(where, f"cannot read: {e}") from None


def _float(tok: str, where: str, line: int, what: str) -> float:
    try:
        v = float(tok)
    except ValueError:
        raise CorpusError(where, f"line {line}: malformed number {tok[:40]!r} in {what}") from None
    if not math.isfinite(v):
        raise CorpusError(where, f"line {line}: non-finite value {tok!r} in {what}")
    return v


def _header_tokens(header: str) -> Iterator[tuple[str, int]]:
    """(token, line number) of the hierarchy, lazily (memory does not grow with the header)."""
    for lineno, line in enumerate(io.StringIO(header), 1):
        for t in line.split():
            yield t, lineno


def _parse_hierarchy(header: str, where: str, limits: ImportLimits = DEFAULT_LIMITS) -> list[BvhNode]:
    """The node list of a HIERARCHY section, in one pass (time linear in its size)."""
    tokens = _header_tokens(header)
    first = next(tokens, None)
    if first is None or first[0] != "HIERARCHY":
        raise CorpusError(where, "not a BVH file (does not start with HIERARCHY)")
    nodes: list[BvhNode] = []
    names: set[str] = set()
    n_joints = n_end_sites = 0
    stack: list[int] = []
    pending: BvhNode | None = None
    n_channels = 0
    last_line = first[1]

    def tok(what: str) -> tuple[str, int]:
        nxt = next(tokens, None)
        if nxt is None:
            raise CorpusError(where, f"line {last_line}: hierarchy ends early (expected {what})")
        return nxt

    for t, line in tokens:
        last_line = line
        if t in ("ROOT", "JOINT"):
            if (t == "ROOT") != (not stack):
                raise CorpusError(where, f"line {line}: {t} {'outside' if t == 'JOINT' else 'inside'} a joint block")
            if t == "ROOT" and nodes:
                raise CorpusError(where, f"line {line}: a second ROOT (only one skeleton per file is supported)")
            if pending is not None:
                raise CorpusError(where, f"line {line}: {t} before the '{{' of {pending.name!r}")
            name, _ = tok("a joint name")
            if name in names:
                raise CorpusError(where, f"line {line}: duplicate joint name {name[:80]!r}")
            n_joints += 1
            if n_joints > limits.max_joints:
                raise CorpusError(where, f"line {line}: more than {limits.max_joints} joints, over the limit "
                                         "(raise it with --limit max_joints=N)")
            names.add(name)
            pending = BvhNode(name=name, parent=stack[-1] if stack else -1, offset=np.zeros(3), line=line)
        elif t == "End":
            if tok("'Site'")[0] != "Site" or not stack or pending is not None or nodes[stack[-1]].is_end_site:
                raise CorpusError(where, f"line {line}: malformed End Site")
            n_end_sites += 1
            if n_end_sites > limits.max_joints:
                raise CorpusError(where, f"line {line}: more than {limits.max_joints} End Sites, over the limit "
                                         "(raise it with --limit max_joints=N)")
            parent = nodes[stack[-1]]
            pending = BvhNode(name=f"{parent.name}_End", parent=stack[-1], offset=np.zeros(3),
                              is_end_site=True, line=line)
        elif t == "{":
            if pending is None:
                raise CorpusError(where, f"line {line}: '{{' without a joint")
            nodes.append(pending)
            stack.append(len(nodes) - 1)
            pending = None
        elif t == "}":
            if not stack or pending is not None:
                raise CorpusError(where, f"line {line}: unbalanced '}}'")
            stack.pop()
        elif t == "OFFSET":
            if not stack or pending is not None:
                raise CorpusError(where, f"line {line}: OFFSET outside a joint")
            vals = []
            for _ in range(3):
                vt, vl = tok("3 OFFSET values")
                vals.append(_float(vt, where, vl, "OFFSET"))
            nodes[stack[-1]].offset = np.array(vals, dtype=np.float64)
        elif t == "CHANNELS":
            node = nodes[stack[-1]] if stack and pending is None else None
            if node is None or node.is_end_site:
                raise CorpusError(where, f"line {line}: CHANNELS outside a joint")
            if node.channels:
                raise CorpusError(where, f"line {line}: a second CHANNELS line for joint {node.name!r}")
            count_tok = tok("a channel count")[0]
            if not (count_tok.isascii() and count_tok.isdigit()) or int(count_tok) > 6:
                raise CorpusError(where, f"line {line}: bad channel count {count_tok[:40]!r}")
            count = int(count_tok)
            chans = tuple(tok(f"{count} channel names")[0] for _ in range(count))
            bad = [c for c in chans if c not in CHANNEL_NAMES]
            if bad or len(set(chans)) != len(chans):
                raise CorpusError(where, f"line {line}: bad channels {' '.join(chans)[:200]} for joint {node.name!r}")
            node.channels, node.channel_start = chans, n_channels
            n_channels += count
        else:
            raise CorpusError(where, f"line {line}: unexpected token {t[:40]!r} in the hierarchy")
    if stack or pending is not None:
        raise CorpusError(where, f"line {last_line}: hierarchy ends inside an open joint block (truncated?)")
    if not nodes:
        raise CorpusError(where, "no joints in the hierarchy")
    return nodes


_MOTION_RE = re.compile(r"^[ \t]*MOTION[ \t]*\r?$", re.MULTILINE)
_FRAMES_RE = re.compile(r"\A\s*Frames:\s*(\S+)\s+Frame\s+Time:\s*(\S+)[^\n]*(?:\n|\Z)")
_BLOCK_LINES = 4096  # motion lines converted per block


def _locate_bad_line(block: list[tuple[int, str]], first_frame: int, first_line: int, n_channels: int,
                     where: str) -> CorpusError:
    for k, (line_k, ln) in enumerate(block):  # slow path: name the bad line
        toks = ln.split()
        if len(toks) != n_channels:
            return CorpusError(where, f"line {first_line + line_k} (frame {first_frame + k}): {len(toks)} values, "
                                      f"expected {n_channels} (one per channel)")
        for t in toks:
            try:
                float(t)
            except ValueError:
                return CorpusError(where, f"line {first_line + line_k} (frame {first_frame + k}): malformed number "
                                          f"{t[:40]!r}")
    return CorpusError(where, "motion values do not match the channel count")  # pragma: no cover


def _parse_motion(body: str, n_frames: int, n_channels: int, first_line: int, where: str) -> np.ndarray:
    """(n_frames, n_channels) float64 from the motion lines, in blocks (no per-value Python objects kept)."""
    motion = np.empty((n_frames, n_channels), dtype=np.float64)
    lines = enumerate(io.StringIO(body))
    frame = 0
    while frame < n_frames:
        block: list[tuple[int, str]] = []
        for k, ln in lines:
            if ln.strip():
                block.append((k, ln))
                if len(block) == min(_BLOCK_LINES, n_frames - frame):
                    break
        if not block:
            raise CorpusError(where, f"Frames: {n_frames} but only {frame} motion lines (truncated?)")
        try:
            values = np.array(" ".join(ln for _, ln in block).split(), dtype=np.float64)
        except ValueError:
            values = None
        if values is None or values.size != len(block) * n_channels:
            raise _locate_bad_line(block, frame, first_line, n_channels, where)
        rows = values.reshape(len(block), n_channels)
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            k = int(np.argmin(finite))
            raise CorpusError(where, f"line {first_line + block[k][0]} (frame {frame + k}): NaN/inf value")
        motion[frame:frame + len(block)] = rows
        frame += len(block)
    extra = sum(1 for _, ln in lines if ln.strip())
    if extra:
        log.warning("%s: %d motion lines after the %d declared frames ignored", where, extra, n_frames)
    return motion


def read_bvh(path: str | Path, limits: ImportLimits | None = None) -> BvhData:
    """Parse a BVH file (``.bvh`` or ``.bvh.gz``). Raises `CorpusError` naming the file and line.

    Every size is checked against `limits` (default `ImportLimits()`) before the memory it needs is
    allocated: the file size and the decompressed size (read as a bounded stream), the joint count, the
    Frame Time, the duration, and the declared frame count against the bytes actually present.
    """
    limits = limits or DEFAULT_LIMITS
    path = Path(path)
    where = display_path(path)
    text = _open_text(path, where, limits)
    m = _MOTION_RE.search(text)
    if m is None:
        raise CorpusError(where, "no MOTION section (truncated or not a BVH file)")
    header = text[: m.start()]
    nodes = _parse_hierarchy(header, where, limits)
    n_channels = sum(len(n.channels) for n in nodes)
    motion_line = header.count("\n") + 1
    del header
    rest = text[m.end():]
    del text
    fm = _FRAMES_RE.match(rest)
    if fm is None:
        raise CorpusError(where, f"line {motion_line + 1}: expected 'Frames: N' and 'Frame Time: dt' after MOTION")
    frames_tok, ft_tok = fm.group(1), fm.group(2)
    if not (frames_tok.isascii() and frames_tok.isdigit()):
        raise CorpusError(where, f"line {motion_line + 1}: malformed frame count {frames_tok[:40]!r}")
    n_frames = int(frames_tok)
    frame_time = _float(ft_tok, where, motion_line + 2, "Frame Time")
    if n_frames == 0:
        raise CorpusError(where, "zero frames (Frames: 0)")
    if frame_time <= 0:
        raise CorpusError(where, f"line {motion_line + 2}: Frame Time must be positive, got {ft_tok}")
    check_frame_time(frame_time, where, limits)
    check_duration(n_frames, 1.0 / frame_time, where, limits)
    body = rest[fm.end():]
    first_line = motion_line + rest[: fm.end()].count("\n")  # line number of the first motion line
    del rest
    # Each value takes at least two characters (a digit and a separator): a frame count the file cannot
    # hold is refused before the (n_frames, n_channels) array is allocated.
    if n_frames * max(n_channels, 1) > (len(body) + 1) // 2:
        n_lines = sum(1 for ln in io.StringIO(body) if ln.strip())
        raise CorpusError(where, f"Frames: {n_frames} but only {n_lines} motion lines (truncated?)")
    motion = _parse_motion(body, n_frames, n_channels, first_line, where)
    return BvhData(path=where, nodes=nodes, frame_time_s=frame_time, motion=motion)


# ------------------------------------------------------------------------------- forward kinematics
def local_channels(bvh: BvhData, frames: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Local rotations (F, N, 4) quaternions and translations (F, N, 3) of every node.

    Rotation channels compose in the order listed (``Zrotation Xrotation Yrotation`` -> Rz Rx Ry).
    Position channels replace the matching OFFSET component (the usual convention: Bandai's joints
    carry position channels equal to their OFFSETs, the root's carry the global translation).
    """
    mot = bvh.motion if frames is None else bvh.motion[frames]
    n_f, n_n = mot.shape[0], len(bvh.nodes)
    quats = np.zeros((n_f, n_n, 4))
    quats[..., 0] = 1.0
    trans = np.broadcast_to(np.stack([n.offset for n in bvh.nodes]), (n_f, n_n, 3)).copy()
    for j, node in enumerate(bvh.nodes):
        q = None
        for k, ch in enumerate(node.channels):
            col = mot[:, node.channel_start + k]
            axis = _AXIS[ch[0]]
            if ch.endswith("position"):
                trans[:, j, axis] = col
            else:
                qa = axis_quat(axis, np.deg2rad(col))
                q = qa if q is None else qmul(q, qa)
        if q is not None:
            quats[:, j] = q
    return quats, trans


def resampled_length(n_frames: int, fps_in: float, fps_out: float) -> int:
    """Number of output frames t = k / fps_out within a source of `n_frames` at `fps_in`."""
    return int(math.floor((n_frames - 1) * fps_out / fps_in + 1e-6)) + 1


def resample_positions(n_frames: int, fps_in: float, fps_out: float) -> np.ndarray:
    """Fractional source-frame positions of the output frames t = k / fps_out within the source."""
    return np.arange(resampled_length(n_frames, fps_in, fps_out)) * (fps_in / fps_out)


def forward_kinematics(quats: np.ndarray, trans: np.ndarray, parents: list[int],
                       needed: np.ndarray | None = None) -> np.ndarray:
    """Global positions (F, N, 3) from local quaternions (F, N, 4) and translations (F, N, 3).

    Parents must precede their children (BVH order). `needed` (N,) bool restricts the work to those
    nodes (and must be closed under parents); others are left at zero.
    """
    n_f, n_n = trans.shape[:2]
    pos = np.zeros((n_f, n_n, 3))
    rot = np.zeros((n_f, n_n, 3, 3))
    mats = unit_quat_to_matrix(quats)  # (F, N, 3, 3)
    for j in range(n_n):
        if needed is not None and not needed[j]:
            continue
        p = parents[j]
        if p < 0:
            pos[:, j] = trans[:, j]
            rot[:, j] = mats[:, j]
        else:
            pos[:, j] = pos[:, p] + np.einsum("fab,fb->fa", rot[:, p], trans[:, j])
            rot[:, j] = rot[:, p] @ mats[:, j]
    return pos


# Frames x nodes per block of `bvh_position_blocks`: bounds the working memory (about 250 B per node-frame)
# whatever the length and the skeleton; the real files fit in one block.
BLOCK_NODE_FRAMES = 1 << 20


def bvh_position_blocks(bvh: BvhData, fps_out: float | None = None, drop_frames: int = 0,
                        needed: np.ndarray | None = None, limits: ImportLimits | None = None) -> Iterator[np.ndarray]:
    """`bvh_positions` in consecutive blocks of output frames, (T_block, N, 3) each (see BLOCK_NODE_FRAMES).

    The resampled length is checked against `limits` before anything of that length is allocated.
    """
    limits = limits or DEFAULT_LIMITS
    n_f = bvh.n_frames - drop_frames
    if n_f <= 0:
        raise CorpusError(bvh.path, f"no frames left after dropping the first {drop_frames} (T-pose) frames")
    resample = fps_out is not None and abs(fps_out - bvh.fps) > 1e-9
    n_out = resampled_length(n_f, bvh.fps, fps_out) if resample else n_f
    check_resampled_frames(n_out, bvh.path, limits)
    parents = [n.parent for n in bvh.nodes]
    ratio = max(1.0, bvh.fps / fps_out) if resample else 1.0  # source frames per output frame
    block = max(1, int(BLOCK_NODE_FRAMES / (len(bvh.nodes) * ratio)))
    if not resample:
        for start in range(0, n_out, block):
            stop = min(n_out, start + block)
            quats, trans = local_channels(bvh, slice(drop_frames + start, drop_frames + stop))
            yield forward_kinematics(quats, trans, parents, needed)
        return
    u_all = resample_positions(n_f, bvh.fps, fps_out)
    i0_all = np.minimum(np.floor(u_all + 1e-9).astype(int), n_f - 1)
    a_all = np.clip(u_all - i0_all, 0.0, 1.0)
    on_frames = bool(np.all(a_all < 1e-9))  # an integer rate ratio: plain subsampling
    for start in range(0, n_out, block):
        stop = min(n_out, start + block)
        i0, a = i0_all[start:stop], a_all[start:stop]
        i1 = np.minimum(i0 + 1, n_f - 1)
        lo, hi = int(i0[0]), int(i1[-1]) + 1
        quats, trans = local_channels(bvh, slice(drop_frames + lo, drop_frames + hi))
        i0, i1 = i0 - lo, i1 - lo
        if on_frames:
            quats, trans = quats[i0], trans[i0]
        else:
            quats = slerp(quats[i0], quats[i1], a[:, None])
            trans = trans[i0] + a[:, None, None] * (trans[i1] - trans[i0])
        yield forward_kinematics(quats, trans, parents, needed)


def bvh_positions(bvh: BvhData, fps_out: float | None = None, drop_frames: int = 0,
                  needed: np.ndarray | None = None, limits: ImportLimits | None = None) -> np.ndarray:
    """Global node positions (T, N, 3) in file units, resampled to `fps_out` (None: as in the file).

    Resampling slerps local rotations and lerps translations between the two nearest source frames,
    then runs FK, so bone lengths are exactly those of the file.
    """
    return np.concatenate(list(bvh_position_blocks(bvh, fps_out, drop_frames, needed, limits)))


# ------------------------------------------------------------------------------------------ presets
JointSpec = tuple[tuple[str, float], ...]  # ((bvh_node, weight), ...), weights sum to 1


@dataclass
class SkeletonPreset:
    """How one BVH skeleton family maps onto the canonical 22 joints.

    `joints[i]` is the blend for JOINT_NAMES[i]. `scale_m` is metres per file unit (None: detect from
    the skeleton's size). `axes` (3, 3) maps file coordinates to y-up canonical ones (applied to column
    vectors). `drop_frames`: leading source frames to drop (1 for a T-pose reference frame 0).
    `detect`: joint names whose presence identifies the family in `detect_preset`.
    """

    name: str
    joints: tuple[JointSpec, ...]
    scale_m: float | None = None
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))
    drop_frames: int = 0
    source: str = "bvh"
    detect: tuple[str, ...] = ()

    def bvh_names(self) -> set[str]:
        return {name for spec in self.joints for name, _ in spec}


def _spec(value: Any) -> JointSpec:
    if isinstance(value, str):
        return ((value, 1.0),)
    return tuple((str(k), float(v)) for k, v in value.items())


def make_preset(name: str, mapping: dict[str, Any], **kwargs: Any) -> SkeletonPreset:
    """Build a preset from {smpl_joint: "bvh_joint" | {"bvh_a": w_a, "bvh_b": w_b}} (all 22 joints)."""
    missing = [j for j in JOINT_NAMES if j not in mapping]
    unknown = [k for k in mapping if k not in JOINT_NAMES]
    if missing or unknown:
        problem = []
        if missing:
            problem.append(f"missing SMPL joints {', '.join(missing)}")
        if unknown:
            problem.append(f"unknown SMPL joints {', '.join(unknown)} (expected {', '.join(JOINT_NAMES)})")
        raise CorpusError(f"joint map {name}", "; ".join(problem))
    specs = []
    for j in JOINT_NAMES:
        spec = _spec(mapping[j])
        total = sum(w for _, w in spec)
        if not spec or any(w < 0 for _, w in spec) or total <= 0:
            raise CorpusError(f"joint map {name}", f"{j}: weights must be non-negative with a positive sum")
        specs.append(tuple((n, w / total) for n, w in spec))
    return SkeletonPreset(name=name, joints=tuple(specs), **kwargs)


BANDAI = make_preset("bandai", {
    "pelvis": "Hips", "l_hip": "UpperLeg_L", "r_hip": "UpperLeg_R",
    "spine1": {"Hips": 0.4, "Spine": 0.6}, "l_knee": "LowerLeg_L", "r_knee": "LowerLeg_R",
    "spine2": "Spine", "l_ankle": "Foot_L", "r_ankle": "Foot_R", "spine3": "Chest",
    "l_foot": "Toes_L", "r_foot": "Toes_R", "neck": "Neck", "l_collar": "Shoulder_L", "r_collar": "Shoulder_R",
    "head": "Head", "l_shoulder": "UpperArm_L", "r_shoulder": "UpperArm_R", "l_elbow": "LowerArm_L",
    "r_elbow": "LowerArm_R", "l_wrist": "Hand_L", "r_wrist": "Hand_R",
}, scale_m=0.01, source="bandai", detect=("joint_Root", "Hips", "UpperLeg_L", "Shoulder_L", "Toes_R"))

# CMU 3ds-Max-friendly BVH (subject 131 etc.): LHipJoint/RHipJoint/lowerneck/LeftCollar sit at their
# parent's position (zero offsets); Chest2 is the top of the thorax at shoulder-girdle level.
CMU131 = make_preset("cmu131", {
    "pelvis": "Hips", "l_hip": "LeftHip", "r_hip": "RightHip",
    "spine1": {"Hips": 0.5, "Chest": 0.5}, "l_knee": "LeftKnee", "r_knee": "RightKnee",
    "spine2": "Chest", "l_ankle": "LeftAnkle", "r_ankle": "RightAnkle", "spine3": "Chest2",
    "l_foot": "LeftToe", "r_foot": "RightToe", "neck": "Neck",
    "l_collar": {"LeftCollar": 0.5, "LeftShoulder": 0.5}, "r_collar": {"RightCollar": 0.5, "RightShoulder": 0.5},
    "head": "Head", "l_shoulder": "LeftShoulder", "r_shoulder": "RightShoulder", "l_elbow": "LeftElbow",
    "r_elbow": "RightElbow", "l_wrist": "LeftWrist", "r_wrist": "RightWrist",
}, scale_m=UNIT_SCALES_M["cmu"], source="cmu", detect=("Hips", "LHipJoint", "LeftHip", "lowerback", "Chest2"))

# Daz/Poser-style skeleton (CMU 135 "martial arts" conversions): root `hip` at crotch level,
# buttock -> thigh -> shin -> foot legs; the SMPL pelvis (above the hip joints) is 45 % of the way up to
# `abdomen`. Frame 0 is a T-pose and the next ~10 frames (at 120 fps) still
# blend out of it (the feet start 15-30 cm below the floor), so 13 frames (0.1 s) are dropped.
CMU135 = make_preset("cmu135", {
    "pelvis": {"hip": 0.55, "abdomen": 0.45}, "l_hip": "lThigh", "r_hip": "rThigh",
    "spine1": "abdomen", "l_knee": "lShin", "r_knee": "rShin",
    "spine2": {"abdomen": 0.5, "chest": 0.5}, "l_ankle": "lFoot", "r_ankle": "rFoot", "spine3": "chest",
    "l_foot": "lFoot_End", "r_foot": "rFoot_End", "neck": "neck", "l_collar": "lCollar", "r_collar": "rCollar",
    "head": "head", "l_shoulder": "lShldr", "r_shoulder": "rShldr", "l_elbow": "lForeArm",
    "r_elbow": "rForeArm", "l_wrist": "lHand", "r_wrist": "rHand",
}, scale_m=0.01, drop_frames=13, source="cmu", detect=("hip", "abdomen", "lButtock", "rThigh", "lShldr"))

# The canonical joint names, as `engine export --format bvh` writes them (cm; units auto-detected). Chosen
# by name only (empty `detect`): SMPL-named files from other tools differ in axes and conventions.
SMPL = make_preset("smpl", {j: j for j in JOINT_NAMES}, source="bvh",
                   detect=("pelvis", "l_hip", "spine3", "l_collar", "r_wrist"))

PRESETS: dict[str, SkeletonPreset] = {p.name: p for p in (BANDAI, CMU131, CMU135, SMPL)}


def detect_preset(bvh: BvhData) -> SkeletonPreset:
    """The preset whose `detect` names all occur in the file; CorpusError when none fits."""
    names = {n.name for n in bvh.nodes}
    for p in PRESETS.values():
        if p.detect and all(d in names for d in p.detect):
            return p
    raise CorpusError(bvh.path, "unknown skeleton (no preset matches joints "
                                f"{', '.join(bvh.joint_names[:12])}{', ...' if len(bvh.joint_names) > 12 else ''}); "
                                "pass a joint map JSON (--map)")


_UP_AXES = {"y": np.eye(3), "z": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
            "x": np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])}


def load_joint_map(path: str | Path) -> SkeletonPreset:
    """A custom preset from JSON.

    Format: ``{"joints": {smpl_joint: bvh_joint | {bvh_a: w, bvh_b: w}, ...}}`` with all 22 SMPL joints
    (JOINT_NAMES), or the same mapping at the top level, plus optional keys
    ``"scale"`` (metres per unit, or a unit name m/cm/mm/inch/cmu; default auto-detect),
    ``"tpose"`` (bool: drop frame 0), ``"drop_frames"`` (int: drop that many leading frames), ``"up"`` ("y" default, "z", "x": the file's up axis; the
    conversion is a rotation), ``"mirror"`` (bool: negate x, for left-handed files) and ``"source"``.
    End Sites are addressable as ``<parent>_End``.
    """
    path = Path(path)
    where = display_path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CorpusError(where, f"cannot read joint map: {e}") from e
    if not isinstance(raw, dict):
        raise CorpusError(where, "joint map must be a JSON object")
    options = {"scale", "tpose", "drop_frames", "up", "mirror", "source", "joints"}
    mapping = raw.get("joints", {k: v for k, v in raw.items() if k not in options})
    if not isinstance(mapping, dict):
        raise CorpusError(where, "'joints' must be an object {smpl_joint: bvh_joint}")
    scale = raw.get("scale")
    if isinstance(scale, str):
        if scale == "auto":
            scale = None
        elif scale in UNIT_SCALES_M:
            scale = UNIT_SCALES_M[scale]
        else:
            raise CorpusError(where, f"unknown scale {scale!r} (a number or one of {', '.join(UNIT_SCALES_M)})")
    elif scale is not None and (not isinstance(scale, int | float) or scale <= 0):
        raise CorpusError(where, f"scale must be a positive number, got {scale!r}")
    up = raw.get("up", "y")
    if up not in _UP_AXES:
        raise CorpusError(where, f"up must be one of x, y, z, got {up!r}")
    axes = _UP_AXES[up].copy()
    if raw.get("mirror", False):
        axes = np.diag([-1.0, 1.0, 1.0]) @ axes
    try:
        drop = int(raw.get("drop_frames", 1 if raw.get("tpose", False) else 0))
        if drop < 0:
            raise CorpusError(where, f"drop_frames must be >= 0, got {drop}")
        return make_preset(where, mapping, scale_m=None if scale is None else float(scale), axes=axes,
                           drop_frames=drop, source=str(raw.get("source", "bvh")))
    except CorpusError as e:
        raise CorpusError(where, e.problem) from None
    except (TypeError, ValueError, AttributeError) as e:
        raise CorpusError(where, f"malformed joint map: {e}") from None


def resolve_preset(preset: str | Path | SkeletonPreset | None) -> SkeletonPreset | None:
    """None/"auto" -> None (detect per file); a preset name; a path to a joint map JSON; a preset."""
    if preset is None or isinstance(preset, SkeletonPreset):
        return preset
    p = str(preset)
    if p == "auto":
        return None
    if p in PRESETS:
        return PRESETS[p]
    if p.lower().endswith(".json") or Path(p).is_file():
        return load_joint_map(p)
    raise CorpusError(f"preset {p!r}", f"unknown preset; choose auto, {', '.join(PRESETS)} or a joint map JSON")


def detect_scale(bvh: BvhData, weights: np.ndarray) -> float:
    """Metres per file unit: the unit (UNIT_SCALES_M) that makes the body's size closest to SMPL's.

    Size = path length pelvis -> spine1 -> spine2 -> spine3 -> neck -> head plus the mean hip -> knee ->
    ankle leg length, measured on the rest pose (offsets, zero rotations).
    """
    n = len(bvh.nodes)
    quats = np.zeros((1, n, 4))
    quats[..., 0] = 1
    rest = forward_kinematics(quats, np.stack([nd.offset for nd in bvh.nodes])[None], [nd.parent for nd in bvh.nodes])
    pts = np.einsum("sj,jc->sc", weights, rest[0])  # (22, 3)
    ji = {name: i for i, name in enumerate(JOINT_NAMES)}

    def path(names: tuple[str, ...]) -> float:
        return float(sum(np.linalg.norm(pts[ji[a]] - pts[ji[b]]) for a, b in zip(names[:-1], names[1:])))

    size = path(("pelvis", "spine1", "spine2", "spine3", "neck", "head")) + 0.5 * (
        path(("l_hip", "l_knee", "l_ankle")) + path(("r_hip", "r_knee", "r_ankle")))
    if not size > 0:
        raise CorpusError(bvh.path, "cannot detect units: the mapped skeleton has zero size")
    best = min(UNIT_SCALES_M.items(), key=lambda kv: abs(math.log(size * kv[1] / _REF_BODY_M)))
    log.debug("%s: body size %.3f units -> %s", bvh.path, size, best[0])
    return best[1]


@dataclass
class RetargetResult:
    """Canonical joints (T, 22, 3) float32 at `fps`, plus what was decided on the way."""

    joints: np.ndarray
    fps: float
    preset: str
    scale_m: float
    source_fps: float
    source_frames: int


def _weights(bvh: BvhData, preset: SkeletonPreset) -> np.ndarray:
    names = {n.name: i for i, n in enumerate(bvh.nodes)}
    unknown = sorted(preset.bvh_names() - names.keys())
    if unknown:
        raise CorpusError(bvh.path, f"joint map {preset.name!r} names joints not in this file: "
                                    f"{', '.join(unknown)}")
    w = np.zeros((N_JOINTS, len(bvh.nodes)))
    for s, spec in enumerate(preset.joints):
        for name, weight in spec:
            w[s, names[name]] += weight
    return w


def retarget(bvh: BvhData, preset: SkeletonPreset | None = None, fps: float = FPS,
             limits: ImportLimits | None = None) -> RetargetResult:
    """Canonical 22 joints from a parsed BVH (see the module docstring for the steps)."""
    preset = preset or detect_preset(bvh)
    w = _weights(bvh, preset)  # (22, N)
    parents = [n.parent for n in bvh.nodes]
    needed = w.sum(axis=0) > 0
    for j in np.flatnonzero(needed):
        p = parents[j]
        while p >= 0 and not needed[p]:
            needed[p] = True
            p = parents[p]
    if bvh.n_frames <= preset.drop_frames:
        raise CorpusError(bvh.path, f"{bvh.n_frames} frames, all dropped by preset {preset.name!r} "
                                    f"(drops the first {preset.drop_frames}: T-pose reference)")
    scale = preset.scale_m if preset.scale_m is not None else detect_scale(bvh, w)
    blocks = bvh_position_blocks(bvh, fps_out=fps, drop_frames=preset.drop_frames, needed=needed, limits=limits)
    joints = np.concatenate([np.einsum("sj,tjc->tsc", w, pos) * scale for pos in blocks])  # (T, 22, 3)
    joints = joints @ np.asarray(preset.axes, dtype=np.float64).T
    joints[..., 1] -= joints[..., 1].min()
    joints -= joints[0, 0] * np.array([1.0, 0.0, 1.0])
    if not np.isfinite(joints).all():
        raise CorpusError(bvh.path, "retargeting produced NaN/inf joint positions")
    return RetargetResult(joints=joints.astype(np.float32), fps=fps, preset=preset.name, scale_m=scale,
                          source_fps=bvh.fps, source_frames=bvh.n_frames)


# ------------------------------------------------------------------------------------ Bandai labels
# Natural sentences for the Bandai Namco contents (cfg/content_label.txt of both sets): verb phrases
# completing "a person ...", two or three paraphrases each, and style phrases appended to them (with their
# own leading space or comma). The table is data: engine/corpus/data/bandai_phrases.json.
BANDAI_PHRASES_TABLE = "bandai_phrases.json"
BANDAI_CONTENT_PHRASES: dict[str, tuple[str, ...]] = {
    k: tuple(v) for k, v in load_table(BANDAI_PHRASES_TABLE, "content").items()}
BANDAI_STYLE_PHRASES: dict[str, tuple[str, ...]] = {
    k: tuple(v) for k, v in load_table(BANDAI_PHRASES_TABLE, "style").items()}


def bandai_sentences(content: str, style: str) -> list[str]:
    """Every paraphrase for a Bandai (content, style) pair, e.g. 'a person waves the left hand, exhausted'."""
    contents = BANDAI_CONTENT_PHRASES.get(content, (f"does a {content.replace('-', ' ')} motion",))
    styles = BANDAI_STYLE_PHRASES.get(style, (f", in a {style.replace('-', ' ')} style",))
    return [f"a person {c}{s}" for s in styles for c in contents]


def bandai_sentence(content: str, style: str, key: str = "") -> str:
    """One paraphrase, chosen deterministically from `key` (e.g. the take name)."""
    options = bandai_sentences(content, style)
    return options[zlib.crc32(name_bytes(key)) % len(options)]


@lru_cache(maxsize=32)
def _label_lines(path: str) -> tuple[str, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CorpusError(display_path(path), f"cannot read label file: {e}") from e
    return tuple(ln.strip() for ln in text.splitlines() if ln.strip())


def _strip_set_prefix(label: str) -> tuple[str, str]:
    m = re.match(r"^(dataset-\d+)_(.+)$", label)
    return (m.group(1), m.group(2)) if m else ("", label)


@dataclass
class BandaiLabel:
    """A Bandai take's labels: content/style names without the set prefix."""

    content: str
    style: str
    dataset: str
    take: str


def bvh_stem(path: str | Path) -> str:
    """File name without .bvh / .bvh.gz."""
    name = Path(path).name
    for suf in (".bvh.gz", ".bvh"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def read_bandai_label(json_path: str | Path) -> BandaiLabel:
    """Labels of one take from its sidecar JSON and the set's cfg/ label files."""
    json_path = Path(json_path)
    where = display_path(json_path)
    try:
        raw = json.loads(json_path.read_text(encoding="utf-8"))
        ci, si = int(raw["content"]), int(raw["style"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CorpusError(where, f"bad label file (expected {{\"content\": i, \"style\": j}}): {e}") from None
    cfg = json_path.parent / "cfg"
    contents = _label_lines(str(cfg / "content_label.txt"))
    styles = _label_lines(str(cfg / "style_label.txt"))
    if not (0 <= ci < len(contents)) or not (0 <= si < len(styles)):
        raise CorpusError(where, f"label index out of range: content {ci} of {len(contents)}, "
                                 f"style {si} of {len(styles)}")
    dataset, content = _strip_set_prefix(contents[ci])
    _, style = _strip_set_prefix(styles[si])
    take = json_path.stem.rsplit("_", 1)[-1] if "_" in json_path.stem else ""
    return BandaiLabel(content=content, style=style, dataset=dataset, take=take)


def take_split(take_name: str, fractions: tuple[tuple[str, float], ...] | None = None) -> str:
    """Deterministic split of a take (file stem) by a hash of its name: train/val/test ~ 70/10/20."""
    fractions = fractions or SPLIT_FRACTIONS
    u = (zlib.crc32(name_bytes(take_name)) % 10_000) / 10_000  # the name's bytes: any file name works
    acc = 0.0
    for name, frac in fractions:
        acc += frac
        if u < acc:
            return name
    return fractions[-1][0]


# ------------------------------------------------------------------------------------------- motion
def source_record(path: Path, bvh: BvhData, drop_frames: int, fps_out: float) -> dict[str, Any]:
    """What `engine export --skeleton source` needs to cut the original file again: its absolute path,
    size and sha256, and the frame mapping (stored frame k is source frame ``start_frame + k * step``,
    ``step = source_fps / fps``; a fractional position is a slerp between the two nearest frames)."""
    from engine.corpus.store import file_sha256

    size, sha = file_sha256(path)
    return {"path": storable(os.fsdecode(path.resolve())), "bytes": size, "sha256": sha,
            "source_fps": bvh.fps, "frame_time_s": bvh.frame_time_s, "source_frames": bvh.n_frames,
            "start_frame": int(drop_frames), "step": bvh.fps / fps_out, "fps": fps_out}


def bvh_to_motion(path: str | Path, preset: str | Path | SkeletonPreset | None = None,
                  source: str | None = None, limits: ImportLimits | None = None, checks: bool = True) -> Motion:
    """Import one BVH file as a canonical Motion at 20 fps, with its HumanML3D features.

    `preset`: None/"auto" (detect from joint names), a preset name (PRESETS), a joint map JSON path,
    or a `SkeletonPreset`. Name is ``<source>/<file stem>``; split is `take_split` of the stem. A Bandai
    sidecar ``<stem>.json`` (with ``cfg/`` beside it) adds one annotation spanning the whole clip.
    `limits` (default `ImportLimits()`) bounds sizes before allocation and the joints' plausibility
    (coordinates, speeds, bone lengths). Every problem is a `CorpusError` naming the file. A file name
    that is not UTF-8 is stored in its escaped form (`engine.corpus.fsnames.storable`).
    `checks`: quarantine a file failing an import check of `engine.corpus.bvh_diagnose` (a declared
    frame rate the motion contradicts) with a `CorpusError` saying so.
    The motion's ``meta["source_file"]`` is `source_record` (for the source-skeleton export).
    """
    from engine.corpus.features import joints_to_features

    limits = limits or DEFAULT_LIMITS
    path = Path(path)
    where = display_path(path)
    resolved = resolve_preset(preset)
    bvh = read_bvh(path, limits)
    res = retarget(bvh, resolved, limits=limits)
    check_plausible_joints(res.joints, res.fps, where, limits)
    used = resolved or detect_preset(bvh)
    if checks:
        from engine.corpus.fps_check import G_M_S2, estimate_fps

        est = estimate_fps(res.joints, res.fps)  # a wrong declared rate scales the 20 fps joints in time alike
        if est.estimated_fps is not None:
            real = bvh.fps * est.estimated_fps / res.fps
            raise CorpusError(where, f"quarantined: declares {bvh.fps:g} fps but the motion looks like {real:g} fps "
                                     f"(its centre of mass falls at {est.com_fall_m_s2 / G_M_S2:.1f} g; fix its "
                                     "Frame Time or import with --no-checks)")
    src = source or used.source
    stem = bvh_stem(path)
    key = storable(stem)
    features = joints_to_features(res.joints, where=where).astype(np.float32)
    if not np.isfinite(features).all():
        raise CorpusError(where, "feature computation produced NaN/inf")
    motion = Motion(name=f"{src}/{key}", source=src, fps=res.fps, joints=res.joints, features=features,
                    split=take_split(stem), path=where,
                    meta={"preset": storable(res.preset), "scale_m": res.scale_m, "source_fps": res.source_fps,
                          "source_frames": res.source_frames,
                          "source_file": source_record(path, bvh, used.drop_frames, res.fps)})
    sidecar = path.parent / f"{stem}.json"
    if (path.parent / "cfg" / "content_label.txt").is_file() and sidecar.is_file():
        label = read_bandai_label(sidecar)
        motion.annotations.append(Annotation(
            text=bandai_sentence(label.content, label.style, stem), start_s=0.0, end_s=motion.duration_s,
            seg_id=key, extra={"content": label.content, "style": label.style, "dataset": label.dataset,
                               "take": storable(label.take)}))
        motion.meta.update(content=label.content, style=label.style)
    return motion


def _is_bvh(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(BVH_SUFFIXES)


def find_bvh_files(paths_or_dirs: Iterable[str | Path]) -> tuple[list[Path], list[CorpusError]]:
    """BVH files under the given files/folders (sorted, recursive), and errors for Bandai label files
    whose BVH is missing (a ``NAME.json`` beside ``cfg/`` with no ``NAME.bvh``/``NAME.bvh.gz``)."""
    files: list[Path] = []
    errors: list[CorpusError] = []
    for p in map(Path, paths_or_dirs):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if _is_bvh(f))
            files.extend(found)
            stems = {(f.parent, bvh_stem(f)) for f in found}
            for cfg in sorted(p.rglob("cfg")):
                if not (cfg / "content_label.txt").is_file():
                    continue
                for js in sorted(cfg.parent.glob("*.json")):
                    if (js.parent, js.stem) not in stems:
                        errors.append(CorpusError(display_path(js), f"label file without motion: neither {js.stem}.bvh "
                                                           f"nor {js.stem}.bvh.gz exists"))
        elif p.exists():
            files.append(p)
        else:
            errors.append(CorpusError(display_path(p), "no such file or directory"))
    return files, errors


def iter_bvh_motions(paths_or_dirs: Iterable[str | Path], preset: str | Path | SkeletonPreset | None = "auto",
                     source: str | None = None, skip_bad: bool = False,
                     errors: list[str] | None = None, limits: ImportLimits | None = None,
                     checks: bool = True) -> Iterator[Motion]:
    """Motions of every BVH file under the given files/folders (see `bvh_to_motion`).

    With `skip_bad`, bad files (and label files without a BVH) are logged, appended to `errors` as
    ``"path: problem"`` and skipped; otherwise the first one raises `CorpusError`. `limits`: see
    `bvh_to_motion` (as is `checks`: a quarantined file is a bad file).
    """
    resolved = resolve_preset(preset)  # a bad joint map fails before any file is read
    files, missing = find_bvh_files(paths_or_dirs)
    for err in missing:
        if not skip_bad:
            raise err
        log.warning("skipped: %s", err)
        if errors is not None:
            errors.append(str(err))
    for f in files:
        try:
            yield bvh_to_motion(f, resolved, source=source, limits=limits, checks=checks)
        except CorpusError as err:
            if not skip_bad:
                raise
            log.warning("skipped: %s", err)
            if errors is not None:
                errors.append(str(err))
