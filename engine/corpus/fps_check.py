"""The import's frame-rate check: does a motion fall faster than gravity allows at its declared rate?

The centre of mass (a mass-weighted mean of the 22 canonical joints, Dempster/Winter segment fractions)
cannot accelerate downwards faster than g: the ground pushes, it never pulls. A file that declares a higher
rate than it was captured at plays too fast, and its accelerations scale with the square of the error.
`estimate_fps` fails a motion whose strongest downward acceleration (`com_fall_m_s2`) exceeds
`FPS_FAIL_G` x g. Used by `engine.corpus.bvh` (quarantine) and `engine.corpus.bvh_diagnose` (dry run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.corpus.skeleton import JOINT_NAMES

G_M_S2 = 9.81
# The check fails when the centre of mass falls faster than this many g (0.5th percentile of the smoothed
# vertical acceleration). Free fall is 1 g; the worst of the 2,337 real files in ../shared/data reaches 1.24 g
# (cmu/135_07; the estimate is a proxy: joints are not the mass distribution).
FPS_FAIL_G = 2.0
_J = {n: i for i, n in enumerate(JOINT_NAMES)}
# Segment mass fractions (Dempster/Winter) over canonical joint pairs: the centre of mass proxy.
_SEGMENTS: list[tuple[str, str, float]] = [("pelvis", "neck", 0.497), ("neck", "head", 0.081)]
for _s in "lr":
    _SEGMENTS += [(f"{_s}_shoulder", f"{_s}_elbow", 0.028), (f"{_s}_elbow", f"{_s}_wrist", 0.016),
                  (f"{_s}_wrist", f"{_s}_wrist", 0.006), (f"{_s}_hip", f"{_s}_knee", 0.100),
                  (f"{_s}_knee", f"{_s}_ankle", 0.0465), (f"{_s}_ankle", f"{_s}_foot", 0.0145)]
COM_WEIGHTS = np.zeros(len(JOINT_NAMES))
for _a, _b, _m in _SEGMENTS:
    COM_WEIGHTS[_J[_a]] += _m / 2
    COM_WEIGHTS[_J[_b]] += _m / 2
COM_WEIGHTS /= COM_WEIGHTS.sum()


@dataclass
class FpsEstimate:
    """Evidence on the real frame rate: the strongest downward acceleration of the centre of mass at the
    declared rate (m/s^2, positive), and the estimate (None: consistent with the declared rate)."""

    declared_fps: float
    com_fall_m_s2: float
    estimated_fps: float | None

    @property
    def ok(self) -> bool:
        return self.estimated_fps is None


def _gauss_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.5:
        return x
    r = int(3 * sigma) + 1
    t = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(x, r, mode="edge"), k, mode="valid")


def com_fall_m_s2(joints: np.ndarray, fps: float) -> float:
    """The strongest downward acceleration of the centre of mass (m/s^2, >= 0): the 0.5th percentile of
    its smoothed (Gaussian, sigma 0.04 s) vertical acceleration, negated. `joints` (T, 22, 3), y up."""
    if joints.shape[0] < 5:
        return 0.0
    y = np.einsum("j,tj->t", COM_WEIGHTS, np.asarray(joints[..., 1], dtype=np.float64))
    y = _gauss_smooth(y, 0.04 * fps)
    acc = np.diff(y, 2) * fps * fps
    return max(0.0, -float(np.percentile(acc, 0.5)))


def estimate_fps(joints: np.ndarray, fps: float) -> FpsEstimate:
    """Whether canonical `joints` at their declared `fps` fall faster than physics allows (module docstring)."""
    fall = com_fall_m_s2(joints, fps)
    est = None
    if fall > FPS_FAIL_G * G_M_S2:
        k = max(2, round(math.sqrt(fall / G_M_S2)))
        est = fps / k
    return FpsEstimate(declared_fps=fps, com_fall_m_s2=fall, estimated_fps=est)
