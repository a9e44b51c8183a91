"""Shared parts of the dataset importers (arrays, BABEL, HumanML3D, AMASS).

Every importer is a generator of `Motion` with the same contract:

- joints are (n_frames, 22, 3) metres, y-up, on the SMPL 22-joint tree; or features are the
  (n_frames - 1, 263) HumanML3D vectors; fps is stored per motion and every time is in seconds;
- a bad record raises `CorpusError(where, problem)` naming the file and the record; with
  `skip_bad=True` it is logged, its message appended to `errors` (when given), and the iteration
  goes on with the next record.

Motion arrays on disk (`.npy`) are recognised by shape (`layout="auto"`):

    (T, 263)                 HumanML3D features
    (T, 22, 3)               joints on the canonical tree
    (T, 24, 3) / (T, 52, 3)  SMPL / SMPL-H joint positions: the first 22 are the canonical joints

Position arrays are checked for handedness (`chirality`): a skeleton stored in a mirror-handed frame
(for instance HumanML3D's `pose_data/`, whose axis swap is a reflection that HumanML3D undoes later
with `x *= -1`) would put every "left" label on the body's right. With `layout="auto"` such arrays are
reflected back (x negated) and the motion's meta records `handedness_fixed`; `layout="pose_data"`
always negates x (as HumanML3D does), `layout="joints"` never touches the array.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.corpus.features import mirror_joints  # noqa: F401 - re-exported for the importers
from engine.corpus.fsnames import display_path
from engine.corpus.limits import DEFAULT_LIMITS, ImportLimits, check_file_size, check_magnitude
from engine.corpus.skeleton import FEATURE_DIM, N_JOINTS
from engine.corpus.types import CorpusError

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "joints", "features", "pose_data")
# Joint counts whose first 22 joints are the canonical SMPL body joints (SMPL 24, SMPL-H 52).
SMPL_FAMILY_JOINTS = (N_JOINTS, 24, 52)
# AMASS dataset folders renamed between the release BABEL / HumanML3D used and the current one.
AMASS_RENAMES = {
    "BioMotionLab_NTroje": "BMLrub",
    "DFaust_67": "DFaust",
    "MPI_HDM05": "HDM05",
    "MPI_Limits": "PosePrior",
    "MPI_mosh": "MoSh",
    "SSM_synced": "SSM",
    "Transitions_mocap": "Transitions",
    "Eyes_Japan_Dataset": "EyesJapanDataset",
}
# Label times may overshoot the motion by this much (frame rounding) and are then clipped.
TIME_TOLERANCE_S = 0.25


@dataclass
class MotionArray:
    """One motion file loaded and checked: exactly one of joints / features is set."""

    path: Path
    joints: np.ndarray | None = None  # (n_frames, 22, 3) float32
    features: np.ndarray | None = None  # (n_frames - 1, 263) float32
    handedness_fixed: bool = False

    @property
    def kind(self) -> str:
        return "joints" if self.joints is not None else "features"

    @property
    def n_frames(self) -> int:
        if self.joints is not None:
            return int(self.joints.shape[0])
        assert self.features is not None
        return int(self.features.shape[0]) + 1

    def crop(self, start_frame: int, end_frame: int) -> MotionArray:
        """Frames [start_frame, end_frame) of the motion (features keep one frame fewer)."""
        if self.joints is not None:
            return MotionArray(
                self.path, joints=self.joints[start_frame:end_frame], handedness_fixed=self.handedness_fixed
            )
        assert self.features is not None
        return MotionArray(
            self.path,
            features=self.features[start_frame : end_frame - 1],
            handedness_fixed=self.handedness_fixed,
        )


def report_bad(err: CorpusError, errors: list[str] | None) -> None:
    """Log a skipped record and add it to the caller's error list."""
    log.warning("skipped: %s", err)
    if errors is not None:
        errors.append(str(err))


def chirality(joints: np.ndarray) -> float:
    """Handedness of a (T, 22, 3) skeleton: about +1 for a proper one, about -1 for a mirror-handed one.

    Per frame, the sign of det[across, up, foot] with across = r_hip - l_hip, up = spine3 - pelvis
    and foot = toe - ankle for each foot. These are body-frame vectors, so the sign does not depend
    on the global orientation (lying, turning, handstands); only a reflection flips it.
    """
    across = joints[:, 2] - joints[:, 1]  # (T, 3)
    up = joints[:, 9] - joints[:, 0]
    normal = np.cross(across, up)
    foot_l = joints[:, 10] - joints[:, 7]
    foot_r = joints[:, 11] - joints[:, 8]
    s = np.concatenate([np.einsum("ti,ti->t", normal, foot_l), np.einsum("ti,ti->t", normal, foot_r)])
    if s.size == 0:
        return 0.0
    return float(-np.mean(np.sign(s)))


def check_finite_frames(arr: np.ndarray, where: str, what: str) -> None:
    """CorpusError naming `where` when any frame holds NaN/inf."""
    bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
    if bad.any():
        raise CorpusError(
            where,
            f"NaN/inf {what} values in {int(bad.sum())} of {arr.shape[0]} frames "
            f"(first: frame {int(np.argmax(bad))})",
        )


def as_motion_array(
    arr: np.ndarray, path: Path | str, layout: str = "auto", negate_x: bool | None = None
) -> MotionArray:
    """Interpret a loaded array as joints or features (see the module docstring), checked.

    `negate_x` overrides the handedness decision for position arrays (None: decided by `layout`).
    Values must be finite and within `ImportLimits.max_coordinate_m` (10 km).
    """
    where = display_path(path)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.number):
        raise CorpusError(where, f"array of dtype {arr.dtype} is not numeric")
    shape = tuple(arr.shape)
    is_features = arr.ndim == 2 and shape[1] == FEATURE_DIM
    is_positions = arr.ndim == 3 and shape[2] == 3 and shape[1] in SMPL_FAMILY_JOINTS
    if layout == "features" and not is_features:
        raise CorpusError(where, f"array of shape {shape} is not (T, {FEATURE_DIM}) features")
    if layout in ("joints", "pose_data") and not is_positions:
        raise CorpusError(where, f"array of shape {shape} is not (T, 22|24|52, 3) joint positions")
    if not (is_features or is_positions):
        raise CorpusError(
            where,
            f"array of shape {shape} is neither (T, {FEATURE_DIM}) features nor "
            f"(T, {N_JOINTS}, 3) joints (SMPL (T, 24, 3) and SMPL-H (T, 52, 3) are "
            "accepted too)",
        )
    if is_features:
        if shape[0] < 1:
            raise CorpusError(where, "zero-length motion (0 feature frames)")
        feats = np.ascontiguousarray(arr, dtype=np.float32)
        check_finite_frames(feats, where, "feature")
        check_magnitude(feats, where, "feature")
        return MotionArray(Path(path), features=feats)
    if shape[0] < 2:
        raise CorpusError(where, f"zero-length motion ({shape[0]} frames; at least 2 needed)")
    joints = np.array(arr[:, :N_JOINTS], dtype=np.float32)  # (T, 22, 3), a copy we may modify
    check_finite_frames(joints, where, "joint")
    check_magnitude(joints, where, "joint")
    if negate_x is None:
        if layout == "pose_data":
            negate_x = True
        elif layout == "auto":
            negate_x = chirality(joints) < 0
        else:
            negate_x = False
            if chirality(joints) < 0:
                log.warning(
                    "%s: skeleton looks mirror-handed (left/right swapped); use layout 'auto' to fix it",
                    where,
                )
    if negate_x:
        joints[..., 0] *= -1
    return MotionArray(Path(path), joints=joints, handedness_fixed=bool(negate_x))


def load_motion_array(path: Path | str, layout: str = "auto", negate_x: bool | None = None,
                      limits: ImportLimits | None = None) -> MotionArray:
    """Load a `.npy` motion file (joints or features by shape); CorpusError naming the file if bad.

    The file size is checked against `limits.max_file_bytes` before it is read (a `.npy` array takes
    its file size in memory)."""
    p = Path(path)
    where = display_path(p)
    if not p.is_file():
        raise CorpusError(where, "motion file not found")
    check_file_size(p, where, limits or DEFAULT_LIMITS)
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CorpusError(where, f"unreadable .npy file: {e}") from e
    return as_motion_array(arr, p, layout=layout, negate_x=negate_x)


_LR_WORD = re.compile(r"\b(left|right)(wards?|most|[- ]?handed|[- ]?hand|s)?\b", re.IGNORECASE)
_CLOCK_WORD = re.compile(r"\b(counter[- ]?clockwise|anti[- ]?clockwise|clockwise)\b", re.IGNORECASE)


def _same_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def mirror_text(text: str) -> str:
    """Swap left/right words (and clockwise/counterclockwise) for a mirrored motion.

    'left' <-> 'right' including 'leftward(s)', 'rightmost', 'left-handed', 'lefts'; the case of the
    first letter (or all capitals) is kept. Idiomatic 'right' ("right away", "all right") is swapped too:
    HumanML3D's own mirrored texts do the same.
    """

    def lr(m: re.Match) -> str:
        base = m.group(1)
        swapped = "right" if base.lower() == "left" else "left"
        return _same_case(swapped, base) + (m.group(2) or "")

    def clock(m: re.Match) -> str:
        w = m.group(1)
        swapped = "counterclockwise" if w.lower() == "clockwise" else "clockwise"
        return _same_case(swapped, w)

    return _CLOCK_WORD.sub(clock, _LR_WORD.sub(lr, text))


def clip_span(
    start_s: float, end_s: float, duration_s: float, where: str, tolerance_s: float = TIME_TOLERANCE_S
) -> tuple[float, float]:
    """Clip a label span to [0, duration_s] when it overshoots by at most `tolerance_s`.

    Raises CorpusError naming `where` for non-finite times or a span further outside the motion.
    """
    if not (np.isfinite(start_s) and np.isfinite(end_s)):
        raise CorpusError(where, f"non-finite label times {start_s!r}..{end_s!r}")
    if start_s < -tolerance_s or end_s > duration_s + tolerance_s or start_s >= duration_s:
        raise CorpusError(
            where, f"label {start_s:.3f}-{end_s:.3f}s is outside the motion (0-{duration_s:.3f}s)"
        )
    return max(0.0, float(start_s)), min(float(duration_s), float(end_s))


def npy_candidates(rel: str) -> list[str]:
    """Relative `.npy` names for a dataset path: the extension replaced (or added) by `.npy`."""
    p = rel.replace("\\", "/").lstrip("/")
    while p.startswith("./"):
        p = p[2:]
    stem, dot, ext = p.rpartition(".")
    if dot and "/" not in ext and ext.lower() in ("npz", "npy", "pkl", "bvh", "c3d"):
        p = stem
    return [p + ".npy"]
