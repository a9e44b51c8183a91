"""A cut clip as the bytes of a file format: BVH, NPY, JSON (`engine.export`) or GLB (`engine.export_glb`).

The one place that knows every format, so that `engine.export` and `engine.export_glb` (which builds on the
BVH export's rotations) do not import each other.
"""

from __future__ import annotations

import json

from engine.export import (
    MEDIA_TYPES,
    Clip,
    ExportedClip,
    _format_key,
    clip_filename,
    clip_joints,
    motion_label,
    to_bvh,
    to_json,
    to_npy,
)
from engine.export_glb import to_glb


def serialize_clip(clip: Clip, fmt: str) -> ExportedClip:
    """A cut clip as `fmt` (bvh | npy | json | glb) bytes with its media type and file name."""
    key = _format_key(fmt, f"motion {clip.motion_id} ({clip.name!r})")
    if key == "bvh":
        data = to_bvh(clip).encode("utf-8")
    elif key == "npy":
        data = to_npy(clip)
    elif key == "glb":
        data = to_glb(clip)
    else:
        data = json.dumps(to_json(clip), separators=(",", ":")).encode("utf-8")
    return ExportedClip(data=data, media_type=MEDIA_TYPES[key], filename=clip_filename(clip, key))


def clip_bytes(store, motion_id: int, start_s: float | None = None, end_s: float | None = None,
               fmt: str = "bvh") -> ExportedClip:
    """A clip of a stored motion serialised as `fmt` (bvh | npy | json | glb); errors are `ClipError`
    (`MotionNotFoundError` for an unknown motion id). None times mean the motion's start / end."""
    _format_key(fmt, motion_label(store, motion_id))  # fail before reading any array
    return serialize_clip(clip_joints(store, motion_id, start_s, end_s), fmt)
