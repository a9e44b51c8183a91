"""Import diagnostics for BVH files: what `engine data import bvh --dry-run` reports, and the checks a real
import applies before storing a file (a file that fails one is quarantined under ``--skip-bad``).

`diagnose_bvh` parses a file with the importer's own reader (`engine.corpus.bvh.read_bvh`) and retargets
it exactly as the import would (`retarget`, 20 fps), writing nothing. It reports:

- **preset**: the skeleton preset detected from the joint names (or given), or ``"unmapped"`` with
  `missing_joints`: the joints of the nearest preset (the one with the most of its joints present)
  that the file lacks. A failed check (``unmapped``).
- **unit scale**: metres per file unit, the preset's or the one detected from the body size
  (`detect_scale`); when a preset fixes the scale and the body size points to another unit, a warning.
- **fps**: the declared rate (1 / Frame Time) against a rate estimated from the motion
  (`engine.corpus.fps_check.estimate_fps`, also what the real import checks):
  the centre of mass (a mass-weighted mean of the 22 canonical joints) cannot fall faster than gravity
  (the ground pushes, it never pulls), so a downward vertical acceleration far beyond g means the file
  plays too fast: it was captured at a lower rate than it declares (CMU files declaring 120 fps that
  are really 60). The check is one-sided and conservative: it fails (``fps``) only when the strongest
  downward acceleration (0.5th percentile, smoothed) exceeds `FPS_FAIL_G` x g, more than any real
  capture in ../shared/data shows; the estimate is then declared / k with k = round(sqrt(a / g)) >= 2.
  A file declaring too *low* a rate plays too slowly, which is physically possible, so it is not
  detected.
- **up axis**: the file axis closest to the direction from the mean of the ankles to the head, averaged
  over the frames (``x``/``y``/``z`` with a sign); a warning when it differs from the preset's.
- **T-pose first frame**: in frame 0 both arms are horizontal (within 15 degrees) and apart, and both
  legs straight down (within 15 degrees); a warning when the preset keeps that frame (it would be
  imported as motion).
- **frames and duration** (as declared, and as imported at 20 fps).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.corpus import bvh as B
from engine.corpus.fps_check import G_M_S2, estimate_fps
from engine.corpus.fsnames import display_path
from engine.corpus.limits import ImportLimits
from engine.corpus.skeleton import FPS, JOINT_NAMES
from engine.corpus.types import CorpusError

TPOSE_MAX_DEG = 15.0
_J = {n: i for i, n in enumerate(JOINT_NAMES)}


@dataclass
class BvhDiagnosis:
    """What `diagnose_bvh` found in one file. `failed` names the failed checks (``fps``, ``unmapped``,
    ``unreadable``); a file with none imports."""

    path: str
    preset: str = "unmapped"
    missing_joints: list[str] = field(default_factory=list)
    scale_m: float | None = None
    unit: str | None = None
    declared_fps: float | None = None
    estimated_fps: float | None = None
    com_fall_m_s2: float | None = None
    up_axis: str | None = None
    tpose_first_frame: bool | None = None
    n_frames: int | None = None
    duration_s: float | None = None
    imported_frames: int | None = None
    warnings: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def problem(self) -> str:
        """One sentence on the failed checks (for the quarantine message)."""
        parts = []
        if "unreadable" in self.failed:
            parts.append(self.error or "unreadable")
        if "unmapped" in self.failed:
            parts.append(f"unmapped skeleton: joints {', '.join(self.missing_joints[:12])} of the nearest preset "
                         "are missing (pass a joint map JSON with --map)")
        if "fps" in self.failed:
            parts.append(f"declares {self.declared_fps:g} fps but the motion looks like {self.estimated_fps:g} fps "
                         f"(its centre of mass falls at {self.com_fall_m_s2 / G_M_S2:.1f} g; fix its Frame Time "
                         "or import with --no-checks)")
        return "; ".join(parts)


def nearest_preset(bvh: B.BvhData) -> tuple[B.SkeletonPreset, list[str]]:
    """The preset with the largest share of its joints in the file, and the joints it lacks."""
    names = {n.name for n in bvh.nodes}
    best = max(B.PRESETS.values(), key=lambda p: len(p.bvh_names() & names) / max(1, len(p.bvh_names())))
    return best, sorted(best.bvh_names() - names)


def _up_axis(pos: np.ndarray) -> str:
    """``+y`` etc.: the file axis closest to the mean ankles -> head direction. `pos` (T, 22, 3) file axes."""
    d = (pos[:, _J["head"]] - 0.5 * (pos[:, _J["l_ankle"]] + pos[:, _J["r_ankle"]])).mean(axis=0)
    a = int(np.argmax(np.abs(d)))
    return ("+" if d[a] >= 0 else "-") + "xyz"[a]


def _preset_up(preset: B.SkeletonPreset) -> str:
    up_file = np.asarray(preset.axes).T @ np.array([0.0, 1.0, 0.0])  # canonical y in file coordinates
    a = int(np.argmax(np.abs(up_file)))
    return ("+" if up_file[a] >= 0 else "-") + "xyz"[a]


def tpose_first_frame(bvh: B.BvhData, preset: B.SkeletonPreset) -> bool:
    """Frame 0 is a T-pose: both arms (shoulder -> wrist) within TPOSE_MAX_DEG of horizontal and pointing
    apart, and both legs (hip -> ankle) within TPOSE_MAX_DEG of straight down (mapped joints, y up)."""
    one = B.BvhData(path=bvh.path, nodes=bvh.nodes, frame_time_s=bvh.frame_time_s, motion=bvh.motion[:1])
    pos = np.einsum("sj,jc->sc", B._weights(bvh, preset), B.bvh_positions(one)[0])
    pos = pos @ np.asarray(preset.axes, dtype=np.float64).T

    def unit(a: str, b: str) -> np.ndarray:
        d = pos[_J[b]] - pos[_J[a]]
        return d / max(float(np.linalg.norm(d)), 1e-12)

    arms = [unit(f"{s}_shoulder", f"{s}_wrist") for s in "lr"]
    legs = [unit(f"{s}_hip", f"{s}_ankle") for s in "lr"]
    lim = math.sin(math.radians(TPOSE_MAX_DEG))
    return bool(all(abs(a[1]) < lim for a in arms) and float(arms[0] @ arms[1]) < -0.9
                and all(g[1] < -math.cos(math.radians(TPOSE_MAX_DEG)) for g in legs))


def _unit_name(scale_m: float) -> str:
    return min(B.UNIT_SCALES_M, key=lambda k: abs(math.log(scale_m / B.UNIT_SCALES_M[k])))


def check_import(bvh: B.BvhData, preset: B.SkeletonPreset, res: B.RetargetResult, diag: BvhDiagnosis) -> None:
    """Fill `diag` from a parsed and retargeted file (shared by the dry run and the real import)."""
    est = estimate_fps(res.joints, res.fps)  # the imported (20 fps) joints; a wrong rate scales them in time alike
    diag.com_fall_m_s2 = round(est.com_fall_m_s2, 3)
    if est.estimated_fps is not None:
        diag.estimated_fps = round(bvh.fps * est.estimated_fps / res.fps, 3)
        diag.failed.append("fps")


def diagnose_bvh(path: str | Path, preset: str | Path | B.SkeletonPreset | None = None,
                 limits: ImportLimits | None = None) -> BvhDiagnosis:
    """Diagnose one file without writing anything (see the module docstring). Never raises for a bad file:
    a file the reader refuses has ``failed == ["unreadable"]`` and the reader's message in `error`."""
    path = Path(path)
    diag = BvhDiagnosis(path=display_path(path))
    try:
        resolved = B.resolve_preset(preset)
        bvh = B.read_bvh(path, limits)
    except CorpusError as e:
        diag.failed.append("unreadable")
        diag.error = str(e)
        return diag
    diag.declared_fps = bvh.fps
    diag.n_frames = bvh.n_frames
    diag.duration_s = round(bvh.n_frames * bvh.frame_time_s, 4)
    try:
        used = resolved or B.detect_preset(bvh)
    except CorpusError:
        near, missing = nearest_preset(bvh)
        diag.missing_joints = missing
        diag.failed.append("unmapped")
        diag.warnings.append(f"no preset matches; nearest is {near.name!r}, which needs {len(missing)} joints this "
                             "file lacks")
        return diag
    missing = sorted(used.bvh_names() - {n.name for n in bvh.nodes})
    if missing:
        diag.missing_joints = missing
        diag.failed.append("unmapped")
        return diag
    diag.preset = used.name
    try:
        diag.tpose_first_frame = tpose_first_frame(bvh, used)
        w = B._weights(bvh, used)
        detected = B.detect_scale(bvh, w)
        res = B.retarget(bvh, used, limits=limits)
    except CorpusError as e:
        diag.failed.append("unreadable")
        diag.error = str(e)
        return diag
    diag.scale_m = res.scale_m
    diag.unit = _unit_name(res.scale_m)
    if abs(math.log(detected / res.scale_m)) > 0.1:
        diag.warnings.append(f"preset {used.name!r} uses {diag.unit} ({res.scale_m:g} m/unit) but the body size "
                             f"suggests {_unit_name(detected)} ({detected:g} m/unit)")
    diag.imported_frames = int(res.joints.shape[0])
    # Up axis on the file's own axes: undo the preset's rotation of the (already y-up) joints.
    pos_file = res.joints.astype(np.float64) @ np.asarray(used.axes, dtype=np.float64)
    diag.up_axis = _up_axis(pos_file)
    if diag.up_axis != _preset_up(used):
        diag.warnings.append(f"the body's up axis is {diag.up_axis} but preset {used.name!r} assumes "
                             f"{_preset_up(used)}")
    if diag.tpose_first_frame and used.drop_frames == 0:
        diag.warnings.append("frame 0 is a T-pose (all joint rotations zero) and the preset keeps it as motion")
    check_import(bvh, used, res, diag)
    if "fps" in diag.failed:
        diag.warnings.append(diag.problem())
    return diag


__all__ = ["BvhDiagnosis", "FPS", "diagnose_bvh", "tpose_first_frame", "nearest_preset"]
