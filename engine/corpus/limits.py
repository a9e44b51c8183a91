"""Bounds on what an import accepts: sizes checked before any allocation that scales with them, and values
checked before a motion reaches the store.

`ImportLimits` holds them; the defaults are far above any real motion library (the real Bandai Namco and
CMU files are at most a few MB, 20-1,901 frames, 23-44 joints, joints under 11 m/s, bones under 0.5 m) and
`engine data import bvh --limit NAME=VALUE` raises one. A violation is a `CorpusError` naming the file.

Plausibility (`check_plausible_joints`): joint coordinates within `max_coordinate_m` of the origin (10 km),
joint speeds at most `max_joint_speed_m_s` (100 m/s: no body part of a person moves that fast; a pitcher's
hand reaches about 40 m/s), every bone at most `max_bone_m` (2.5 m) long and the 21 bones together at least
`min_skeleton_m` (0.5 m: a tenth of a person; less is a unit mistake or a collapsed skeleton).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np

from engine.corpus.types import CorpusError

MIB = 1 << 20


@dataclass(frozen=True)
class ImportLimits:
    """What one imported file may hold. Sizes in bytes, times in seconds, lengths in metres."""

    max_file_bytes: int = 512 * MIB  # a file on disk (compressed or not)
    max_decompressed_bytes: int = 512 * MIB  # the text of a file after decompression
    min_frame_time_s: float = 1e-4  # at most 10,000 fps
    max_frame_time_s: float = 10.0  # at least one frame per 10 s
    max_duration_s: float = 4 * 3600.0  # one motion (a take), source frames x frame time
    max_resampled_frames: int = 4 * 3600 * 20  # frames after resampling (4 h at 20 fps)
    max_joints: int = 1000  # joints of a skeleton (End Sites counted separately, as many again)
    max_coordinate_m: float = 10_000.0  # |x|, |y|, |z| of any joint
    max_joint_speed_m_s: float = 100.0  # speed of any joint between two frames
    max_bone_m: float = 2.5  # any bone of the canonical skeleton
    min_skeleton_m: float = 0.5  # the 21 bones of the canonical skeleton together (median over frames)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise CorpusError(f"import limit {f.name}", f"must be a positive number, got {v!r}")
        if self.min_frame_time_s > self.max_frame_time_s:
            raise CorpusError("import limit min_frame_time_s", "is above max_frame_time_s")

    @classmethod
    def from_overrides(cls, overrides: list[str] | None) -> ImportLimits:
        """Defaults with ``NAME=VALUE`` overrides (e.g. ``max_file_bytes=2e9``, ``max_joints=5000``)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, int | float] = {}
        for item in overrides or []:
            name, sep, raw = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in fields:
                raise CorpusError(f"--limit {item!r}", f"expected NAME=VALUE with NAME one of {', '.join(fields)}")
            try:
                num = float(raw)
            except ValueError:
                raise CorpusError(f"--limit {item!r}", f"{raw!r} is not a number") from None
            if fields[name].type in ("int", int):
                if not math.isfinite(num) or num != int(num):
                    raise CorpusError(f"--limit {item!r}", f"{name} must be a whole number")
                values[name] = int(num)
            else:
                values[name] = num
        return cls(**values)


DEFAULT_LIMITS = ImportLimits()


def _mb(n: float) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{int(n)} bytes"


def check_file_size(path: str | os.PathLike, where: str, limits: ImportLimits) -> int:
    """The file's size in bytes, or a CorpusError when it exceeds `max_file_bytes` (nothing is read)."""
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise CorpusError(where, f"cannot read: {e.strerror or e}") from None
    if size > limits.max_file_bytes:
        raise CorpusError(where, f"file is {_mb(size)}, over the limit of {_mb(limits.max_file_bytes)} "
                                 "(raise it with --limit max_file_bytes=N)")
    return size


def read_bounded(fh, where: str, max_bytes: int, what: str = "decompresses to", chunk: int = 1 << 20) -> bytes:
    """Read a binary stream to its end, stopping with a CorpusError as soon as it passes `max_bytes`."""
    parts: list[bytes] = []
    total = 0
    while True:
        block = fh.read(min(chunk, max_bytes + 1 - total))
        if not block:
            return b"".join(parts)
        total += len(block)
        if total > max_bytes:
            raise CorpusError(where, f"{what} more than {_mb(max_bytes)}, over the limit "
                                     "(raise it with --limit max_decompressed_bytes=N)")
        parts.append(block)


def check_frame_time(frame_time_s: float, where: str, limits: ImportLimits) -> None:
    if not limits.min_frame_time_s <= frame_time_s <= limits.max_frame_time_s:
        raise CorpusError(where, f"Frame Time {frame_time_s:g} s is outside {limits.min_frame_time_s:g}-"
                                 f"{limits.max_frame_time_s:g} s ({1 / limits.max_frame_time_s:g}-"
                                 f"{1 / limits.min_frame_time_s:g} fps)")


def check_duration(n_frames: int, fps: float, where: str, limits: ImportLimits) -> None:
    """CorpusError when `n_frames` at `fps` last longer than `max_duration_s`."""
    duration_s = n_frames / fps
    if not duration_s <= limits.max_duration_s:
        raise CorpusError(where, f"{n_frames} frames at {fps:g} fps last {duration_s:.4g} s, over the limit of "
                                 f"{limits.max_duration_s:g} s (raise it with --limit max_duration_s=N)")


def check_resampled_frames(n_out: int, where: str, limits: ImportLimits) -> None:
    if n_out > limits.max_resampled_frames:
        raise CorpusError(where, f"resampling gives {n_out} frames, over the limit of {limits.max_resampled_frames}"
                                 " (raise it with --limit max_resampled_frames=N)")


def check_plausible_joints(joints: np.ndarray, fps: float, where: str, limits: ImportLimits = DEFAULT_LIMITS,
                           bones: tuple[tuple[int, int], ...] | None = None) -> None:
    """CorpusError naming `where` when (T, J, 3) joint positions (metres) are non-finite or implausible.

    `bones`: (parent, child) pairs for the bone checks (default: the canonical 22-joint tree when J == 22).
    """
    j = np.asarray(joints)
    if j.ndim != 3 or j.shape[-1] != 3 or j.shape[0] < 1:
        raise CorpusError(where, f"joints have shape {tuple(j.shape)}, expected (T, J, 3)")
    flat = j.reshape(j.shape[0], -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        raise CorpusError(where, f"NaN/inf joint positions in {int((~finite).sum())} of {j.shape[0]} frames "
                                 f"(first: frame {int(np.argmin(finite))})")
    big = np.abs(flat).max(axis=1) > limits.max_coordinate_m
    if big.any():
        f = int(np.argmax(big))
        raise CorpusError(where, f"joint coordinate {float(np.abs(flat[f]).max()):.3g} m at frame {f} is beyond "
                                 f"the bound of {limits.max_coordinate_m:g} m (wrong units or a corrupted value)")
    j64 = j.astype(np.float64)
    if j.shape[0] >= 2:
        speed = np.sqrt((np.diff(j64, axis=0) ** 2).sum(-1)).max(axis=1) * fps  # (T-1,) fastest joint
        fast = speed > limits.max_joint_speed_m_s
        if fast.any():
            f = int(np.argmax(fast))
            raise CorpusError(where, f"a joint moves at {float(speed[f]):.3g} m/s between frames {f} and {f + 1}, "
                                     f"over the physical limit of {limits.max_joint_speed_m_s:g} m/s "
                                     "(a glitch, wrong units or wrong frame time)")
    names: tuple[str, ...] | None = None
    if bones is None and j.shape[1] == 22:
        from engine.corpus.skeleton import JOINT_NAMES, PARENTS

        bones = tuple((p, c) for c, p in enumerate(PARENTS) if p >= 0)
        names = tuple(JOINT_NAMES)
    if bones:
        par = np.array([p for p, _ in bones])
        chi = np.array([c for _, c in bones])
        lengths = np.sqrt(((j64[:, chi] - j64[:, par]) ** 2).sum(-1))  # (T, B)
        longest = lengths.max(axis=0)
        b = int(np.argmax(longest))
        if longest[b] > limits.max_bone_m:
            p, c = bones[b]
            bone = f"{names[p]}->{names[c]}" if names else f"{p}->{c}"
            raise CorpusError(where, f"bone {bone} is {float(longest[b]):.3g} m long, over "
                                     f"the plausible {limits.max_bone_m:g} m (wrong units? pass a joint map with "
                                     "\"scale\")")
        total = float(np.median(lengths, axis=0).sum())
        if names is not None and total < limits.min_skeleton_m:  # the canonical 21 bones
            raise CorpusError(where, f"the skeleton's bones add up to {total:.3g} m, under the plausible "
                                     f"{limits.min_skeleton_m:g} m (wrong units or a collapsed skeleton)")


def check_magnitude(arr: np.ndarray, where: str, what: str, limits: ImportLimits = DEFAULT_LIMITS) -> None:
    """CorpusError naming `where` when a (T, ...) array holds NaN/inf or a value beyond `max_coordinate_m`.

    For arrays whose values are metres, metres per frame, unit vectors or flags (joints, HumanML3D features).
    """
    flat = np.asarray(arr).reshape(len(arr), -1)
    bad = ~np.isfinite(flat).all(axis=1) | (np.abs(np.nan_to_num(flat)).max(axis=1, initial=0.0)
                                            > limits.max_coordinate_m)
    if bad.any():
        k = int(np.argmax(bad))
        raise CorpusError(where, f"{what} frame {k} holds NaN/inf or a value beyond {limits.max_coordinate_m:g} "
                                 f"({int(bad.sum())} bad frames; wrong units or a corrupted value)")
