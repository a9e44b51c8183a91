"""The actions of the procedural corpus: joint-rotation programs on the canonical 22-joint skeleton.

Each action is a function that fills a `Track` (per-frame local joint rotations, root velocity in the
body frame, yaw rate and airborne height) for the times `t` of one action instance, t = 0 at its start
and t = dur at its end; `t` extends past both ends by the blending margin of the neighbouring
transitions, where one-shot actions hold their first / last pose and cyclic actions keep cycling.
Every standing action starts and ends near the neutral stand (`neutral`), so a blend between two
actions moves no joint faster than the actions themselves do.

Rotation channels per joint (radians): `(yi, x, z, yo)`, composed as R = Ry(yo) Rz(z) Rx(x) Ry(yi)
(yi twists a bone about itself, x bends it in the sagittal plane, z in the frontal plane, yo swings
it about the vertical axis). Axes: x left, y up, z forward; positive yaw turns left. The helpers
(`Track.arm`, `leg`, `spine`, `neck`, `pelvis`) take anatomical angles in degrees (flex forward,
abduct outward, twist outward = external rotation, ...) for either side and map them to signed channels.

`ACTIONS` lists every action with its training paraphrases and its held-out (test-only) paraphrases; the
table is data, ``engine/corpus/data/synth_actions.json`` (one entry per action: the program it runs
from `PROGRAMS` and its arguments, texts, group, duration and planner flags).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from engine.corpus.tables import load_table
from engine.corpus.types import CorpusError

# Joint indices (engine.corpus.skeleton.JOINT_NAMES order).
PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3 = range(10)
L_FOOT, R_FOOT, NECK, L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW = range(10, 20)
L_WRIST, R_WRIST = 20, 21
# Rotation channels.
YI, X, Z, YO = range(4)
N_CHANNELS = 4
LEFT, RIGHT = 1, -1
GRAVITY_M_S2 = 9.81
_SPINE = ((SPINE1, 0.4), (SPINE2, 0.35), (SPINE3, 0.25))
_D2R = np.pi / 180.0


def smootherstep(x: np.ndarray | float) -> np.ndarray:
    """0 -> 1 with zero first and second derivative at both ends (x clipped to [0, 1])."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


def keys(u: np.ndarray, knots, values) -> np.ndarray:
    """Piecewise smootherstep interpolation through (knot, value) pairs; u is clipped to the knot range.

    `values` is (K,) or (K, C); the result is (len(u),) or (len(u), C).
    """
    kn = np.asarray(knots, dtype=np.float64)
    va = np.asarray(values, dtype=np.float64)
    uu = np.clip(u, kn[0], kn[-1])
    i = np.clip(np.searchsorted(kn, uu, side="right") - 1, 0, len(kn) - 2)
    w = smootherstep((uu - kn[i]) / (kn[i + 1] - kn[i]))
    if va.ndim == 2:
        w = w[:, None]
    return va[i] + (va[i + 1] - va[i]) * w


@dataclass
class ActionParams:
    """Per-instance variation drawn by the planner."""

    speed: float = 1.0  # tempo / velocity scale
    amp: float = 1.0  # amplitude scale of the movement
    side: int = RIGHT  # for actions with a free side (which arm strikes in the kung fu pose, ...)
    variant: float = 0.5  # uniform [0, 1): style choice inside an action
    phase0: float = 0.0  # cycle phase at t = 0 (cycles); gaits continue the previous gait's phase
    leg_m: float = 0.88  # hip-to-ground length of the subject, for stride matching
    ease_in: bool = False  # gaits: start from a standstill (the previous action is not a gait)
    ease_out: bool = False  # gaits: come to a stop (the next action is not a gait)


class Track:
    """Channels of one action instance over its frames (see the module docstring for conventions)."""

    def __init__(self, t: np.ndarray, dur_s: float, params: ActionParams):
        self.t = np.asarray(t, dtype=np.float64)
        self.dur = float(dur_s)
        self.p = params
        m = len(self.t)
        self.rot = np.zeros((m, 22, N_CHANNELS))  # (M, J, C) radians
        self.vel = np.zeros((m, 2))  # root velocity in the body frame (x left, z forward), m/s
        self.yaw_rate = np.zeros(m)  # rad/s, positive = turning left
        self.air = np.zeros(m)  # height of the lowest joint above the ground, m
        self.phase_end = params.phase0

    @property
    def u(self) -> np.ndarray:
        """Normalised time t / dur clipped to [0, 1] (one-shot actions hold their ends)."""
        return np.clip(self.t / self.dur, 0.0, 1.0)

    def env(self, rise_s: float, fall_s: float | None = None) -> np.ndarray:
        """0 -> 1 over the first rise_s, 1 -> 0 over the last fall_s of the action (shrunk for short ones)."""
        fall_s = rise_s if fall_s is None else fall_s
        scale = min(1.0, 0.45 * self.dur / max(rise_s, fall_s))
        rise_s, fall_s = rise_s * scale, fall_s * scale
        return smootherstep(self.t / rise_s) * smootherstep((self.dur - self.t) / fall_s)

    def reps(self, start_s: float, end_s: float, rep_s: float, ballistic: bool = False
             ) -> tuple[np.ndarray, np.ndarray, int]:
        """Phase u in [0, 1] within each of n repetitions filling [start_s, end_s], rep index, n.

        n = floor(span / rep_s): a repetition is never faster than rep_s unless the span is shorter.
        Slow movements stretch to fill their slot; `ballistic` ones (jumps, kicks, throws) keep their
        tempo: each takes rep_s in the middle of its slot and holds its rest pose (u = 0 or 1) around."""
        span = max(end_s - start_s, 1e-3)
        n = max(1, int(np.floor(span / rep_s + 1e-9)))
        x = np.clip((self.t - start_s) / span, 0.0, 1.0) * n
        idx = np.minimum(np.floor(x), n - 1)
        u = x - idx
        if ballistic:
            core = min(1.0, rep_s * n / span)  # fraction of the slot the movement takes
            u = np.clip((u - (1.0 - core) / 2.0) / core, 0.0, 1.0)
        return u, idx.astype(int), n

    # ---------------------------------------------------------------- channel writers
    def _put(self, joint: int, ch: int, deg, w, add: bool) -> None:
        if deg is None:
            return
        val = np.asarray(deg, dtype=np.float64) * _D2R
        col = self.rot[:, joint, ch]
        if add:
            col += np.asarray(w) * val
        else:
            wa = np.asarray(w, dtype=np.float64)
            self.rot[:, joint, ch] = col * (1.0 - wa) + wa * val

    def arm(self, side: int, w=1.0, add: bool = False, *, flex=None, abduct=None, twist=None, sweep=None,
            elbow=None, shrug=None) -> None:
        """Shoulder flex (forward raise), abduct (sideways raise), twist (external rotation), sweep
        (horizontal swing forward), elbow flex, shrug (collar elevation); degrees."""
        sh, el, co = (L_SHOULDER, L_ELBOW, L_COLLAR) if side > 0 else (R_SHOULDER, R_ELBOW, R_COLLAR)
        s = 1.0 if side > 0 else -1.0
        self._put(sh, X, None if flex is None else -np.asarray(flex), w, add)
        self._put(sh, Z, None if abduct is None else s * np.asarray(abduct), w, add)
        self._put(sh, YI, None if twist is None else s * np.asarray(twist), w, add)
        self._put(sh, YO, None if sweep is None else -s * np.asarray(sweep), w, add)
        self._put(el, X, None if elbow is None else -np.asarray(elbow), w, add)
        self._put(co, Z, None if shrug is None else s * np.asarray(shrug), w, add)

    def leg(self, side: int, w=1.0, add: bool = False, *, flex=None, abduct=None, twist=None, splay=None,
            knee=None, ankle=None) -> None:
        """Hip flex (thigh forward), abduct (outward), twist (toes out), splay (flexed thigh swung outward
        about the vertical), knee flex, ankle plantar flexion (toes down); degrees."""
        hp, kn, an = (L_HIP, L_KNEE, L_ANKLE) if side > 0 else (R_HIP, R_KNEE, R_ANKLE)
        s = 1.0 if side > 0 else -1.0
        self._put(hp, X, None if flex is None else -np.asarray(flex), w, add)
        self._put(hp, Z, None if abduct is None else s * np.asarray(abduct), w, add)
        self._put(hp, YI, None if twist is None else s * np.asarray(twist), w, add)
        self._put(hp, YO, None if splay is None else s * np.asarray(splay), w, add)
        self._put(kn, X, knee, w, add)
        self._put(an, X, ankle, w, add)

    def spine(self, w=1.0, add: bool = False, *, bend=None, lean=None, twist=None) -> None:
        """Trunk bend forward, lean to the left, twist to the left (degrees, spread over three joints)."""
        for j, frac in _SPINE:
            self._put(j, X, None if bend is None else frac * np.asarray(bend), w, add)
            self._put(j, Z, None if lean is None else -frac * np.asarray(lean), w, add)
            self._put(j, YO, None if twist is None else frac * np.asarray(twist), w, add)

    def neck(self, w=1.0, add: bool = False, *, nod=None, tilt=None, turn=None) -> None:
        """Head nod forward, tilt to the left, turn to the left (degrees)."""
        self._put(NECK, X, nod, w, add)
        self._put(NECK, Z, None if tilt is None else -np.asarray(tilt), w, add)
        self._put(NECK, YO, turn, w, add)

    def pelvis(self, w=1.0, add: bool = False, *, pitch=None, lean=None, yaw=None) -> None:
        """Whole-body pitch forward, lean to the left, yaw to the left relative to the heading (degrees)."""
        self._put(PELVIS, X, pitch, w, add)
        self._put(PELVIS, Z, None if lean is None else -np.asarray(lean), w, add)
        self._put(PELVIS, YO, yaw, w, add)

    def hinge(self, deg, w=1.0) -> None:
        """Bend forward at the hips: pitch the pelvis and flex both hips by the same angle (legs stay put)."""
        self.pelvis(w, add=True, pitch=deg)
        for s in (LEFT, RIGHT):
            self.leg(s, w, add=True, flex=deg)

    def flat_feet(self, w=1.0, add_deg=0.0) -> None:
        """Set both ankles so the feet stay level with the ground given hip, knee and pelvis pitch."""
        for an, hp, kn in ((L_ANKLE, L_HIP, L_KNEE), (R_ANKLE, R_HIP, R_KNEE)):
            flat = -self.rot[:, hp, X] - self.rot[:, kn, X] - self.rot[:, PELVIS, X]
            wa = np.asarray(w, dtype=np.float64)
            self.rot[:, an, X] = self.rot[:, an, X] * (1.0 - wa) + wa * (flat + np.asarray(add_deg) * _D2R)


# --------------------------------------------------------------------------------------------- poses
def neutral(tr: Track) -> None:
    """The relaxed stand every standing action starts and ends near."""
    for s in (LEFT, RIGHT):
        tr.arm(s, flex=3.0, abduct=7.0, elbow=12.0)
        tr.leg(s, flex=2.0, knee=3.0, twist=6.0)
    tr.flat_feet()


def seated(tr: Track, w=1.0) -> None:
    """Sitting on a chair (the chair is implied: the feet rest on the ground, thighs level)."""
    for s in (LEFT, RIGHT):
        tr.leg(s, w, flex=90.0, knee=90.0, abduct=6.0, twist=6.0)
        tr.arm(s, w, flex=38.0, abduct=8.0, elbow=55.0, twist=-15.0)
    tr.spine(w, bend=4.0)
    tr.flat_feet(w)


def guard(tr: Track, w=1.0) -> None:
    """Fighting guard: fists raised in front of the chin, knees soft."""
    for s in (LEFT, RIGHT):
        tr.arm(s, w, flex=45.0, abduct=12.0, twist=-35.0, elbow=118.0, sweep=12.0)
        tr.leg(s, w, knee=14.0, flex=10.0)


def _sin(t: np.ndarray, hz: float, phase: float = 0.0) -> np.ndarray:
    return np.sin(2.0 * np.pi * (hz * t + phase))


def _idle_motion(tr: Track, w=1.0) -> None:
    """Small weight shifts, head turns and arm drift on top of the current pose."""
    t, p = tr.t, tr.p
    sway = 1.6 * p.amp * _sin(t, 0.18 + 0.08 * p.variant, p.phase0)
    tr.pelvis(w, add=True, lean=sway)
    tr.spine(w, add=True, lean=-0.8 * sway, bend=1.0 * _sin(t, 0.23, 0.3))
    tr.neck(w, add=True, turn=9.0 * p.amp * _sin(t, 0.09 + 0.05 * p.variant, 2.0 * p.phase0),
            nod=3.0 * _sin(t, 0.13, 0.6))
    for s in (LEFT, RIGHT):
        tr.arm(s, w, add=True, flex=3.0 * _sin(t, 0.21, 0.25 * s), elbow=4.0 * _sin(t, 0.17, 0.5 * s))


# ------------------------------------------------------------------------------------------- actions
def act_idle(tr: Track) -> None:
    neutral(tr)
    _idle_motion(tr)
    tr.flat_feet()


@dataclass(frozen=True)
class Gait:
    """A locomotion style: velocity in the body frame and cycle parameters."""

    forward_m_s: float
    lateral_m_s: float
    freq_hz: float  # stride cycles per second (two steps)
    lean_deg: float
    elbow_deg: float
    arm_deg: float
    knee_swing_deg: float
    knee_stance_deg: float
    hip_bias_deg: float = 2.0
    flight_m: float = 0.0
    stance: float = 0.58  # stance fraction of the stride (running < 0.5: flight phases)


def act_gait(tr: Track, g: Gait) -> None:
    """Walk / jog / run in any direction; stride length matched to speed so the feet barely slide."""
    t, p = tr.t, tr.p
    f = g.freq_hz * np.sqrt(p.speed)
    tr.phase_end = p.phase0 + f * tr.dur
    phi = 2.0 * np.pi * (p.phase0 + f * t)
    neutral(tr)
    vf, vl = g.forward_m_s * p.speed, g.lateral_m_s * p.speed
    # starting / stopping: stride, swing and speed grow from zero over 1 s from the earliest blend frame
    env = np.ones_like(t)
    if p.ease_in:
        env *= smootherstep((t + 0.35) / 1.0)
    if p.ease_out:
        env *= smootherstep((tr.dur + 0.35 - t) / 1.0)
    tr.vel[:, 0], tr.vel[:, 1] = vl * env, vf * env
    run = g.elbow_deg > 50.0
    if abs(vf) >= abs(vl):
        sgn = 1.0 if vf >= 0 else -1.0
        beta = g.stance
        # during stance the foot moves back (relative to the hip) by v * stance time: 2 L sin(A) = v beta / f
        sin_a = min(0.8, abs(vf) * beta / (2.0 * f * p.leg_m))
        phase = p.phase0 + f * t
        for s, off in ((LEFT, 0.0), (RIGHT, 0.5)):
            psi = np.mod(phase + off, 1.0)
            x, swing = _stride(psi, beta)
            x, swing = x * env, swing * env
            hip = g.hip_bias_deg + np.degrees(np.arcsin(np.clip(sgn * x * sin_a, -0.95, 0.95)))
            stance_bend = np.where(psi < beta, np.sin(np.pi * psi / beta), 0.0) * env
            knee = g.knee_stance_deg * (0.5 + 0.5 * stance_bend) + g.knee_swing_deg * swing
            tr.leg(s, flex=hip, knee=knee)
            c = np.cos(2.0 * np.pi * psi) * env
            tr.arm(s, flex=(8.0 if run else 2.0) - g.arm_deg * p.amp * c * sgn,
                   elbow=g.elbow_deg + 0.15 * g.elbow_deg * c, abduct=9.0 if run else 7.0)
            if s == LEFT:
                tr.pelvis(yaw=-4.0 * c * sgn, pitch=g.lean_deg)
                tr.spine(twist=3.0 * c * sgn, bend=0.5 * g.lean_deg)
        tr.neck(nod=-0.8 * g.lean_deg)
        tr.flat_feet()
        for an, off in ((L_ANKLE, 0.0), (R_ANKLE, 0.5)):
            psi = np.mod(phase + off, 1.0)
            tr.rot[:, an, X] += 12.0 * _D2R * env * np.sin(2.0 * np.pi * (psi - beta + 0.25))  # toe-off, heel strike
    else:
        sgn = 1.0 if vl >= 0 else -1.0  # leading side: left when moving left
        spread = np.degrees(np.arcsin(min(0.6, abs(vl) / (4.0 * f * p.leg_m)))) * 2.0
        open_ = env * (1.0 - np.cos(phi)) / 2.0
        lead_lift = env * np.maximum(0.0, np.sin(phi)) ** 2
        trail_lift = env * np.maximum(0.0, -np.sin(phi)) ** 2
        for s in (LEFT, RIGHT):
            lift = lead_lift if s == sgn else trail_lift
            tr.leg(s, abduct=spread * open_ / 2.0, knee=g.knee_stance_deg + 0.6 * g.knee_swing_deg * lift,
                   flex=g.hip_bias_deg + 0.5 * g.knee_swing_deg * lift)
            tr.arm(s, abduct=10.0 + 10.0 * open_ * p.amp, elbow=g.elbow_deg, flex=8.0 if run else 4.0)
        tr.pelvis(lean=-sgn * 3.0 * env * np.sin(phi), pitch=0.5 * g.lean_deg * env)
        tr.flat_feet()
    if g.flight_m > 0:
        tr.air += g.flight_m * p.speed * env * np.sin(phi) ** 4


def _stride(psi: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Foot position along the stride, +1 front .. -1 back, for stride phase psi in [0, 1): linear during
    stance (psi < beta, the foot planted while the body passes over it), a C1 Hermite swing back to the
    front after; and a swing weight (0 in stance, sin^2 bump in swing)."""
    stance = psi < beta
    s = np.clip((psi - beta) / (1.0 - beta), 0.0, 1.0)
    m = -2.0 / beta * (1.0 - beta)  # stance slope in swing-time units
    s2, s3 = s * s, s * s * s
    swing_x = -(2 * s3 - 3 * s2 + 1) + m * (s3 - 2 * s2 + s) + (-2 * s3 + 3 * s2) + m * (s3 - s2)
    x = np.where(stance, 1.0 - 2.0 * psi / beta, swing_x)
    return x, np.where(stance, 0.0, np.sin(np.pi * s ** 0.75) ** 2)  # knee folds early, extends slowly


def act_turn(tr: Track, side: int) -> None:
    """Turn in place by 90 or 180 degrees with small steps."""
    t, p = tr.t, tr.p
    neutral(tr)
    angle = (90.0 if p.variant < 0.6 else 180.0) * side * _D2R
    u = t / tr.dur
    tr.yaw_rate[:] = angle * 30.0 * np.clip(u, 0, 1) ** 2 * (1 - np.clip(u, 0, 1)) ** 2 / tr.dur
    e = tr.env(0.3)
    phi = 2.0 * np.pi * 1.6 * p.speed * np.clip(t, 0, tr.dur)
    for s, ph in ((LEFT, phi), (RIGHT, phi + np.pi)):
        lift = e * np.maximum(0.0, np.sin(ph)) ** 2
        tr.leg(s, add=True, flex=22.0 * lift, knee=40.0 * lift)
    tr.neck(add=True, turn=np.degrees(angle) * 0.15 * e)
    tr.flat_feet()


def act_spin(tr: Track) -> None:
    """Fast full turns on the spot (about 1.5 s a revolution), arms out."""
    t, p = tr.t, tr.p
    neutral(tr)
    turns = max(1, int(round(tr.dur * p.speed / 1.5)))  # about 1.5 s a revolution
    direction = 1.0 if p.side > 0 else -1.0
    u = np.clip(t / tr.dur, 0, 1)
    tr.yaw_rate[:] = direction * 2.0 * np.pi * turns * 30.0 * u ** 2 * (1 - u) ** 2 / tr.dur
    e = tr.env(0.35)
    for s in (LEFT, RIGHT):
        tr.arm(s, e, abduct=75.0 * p.amp, elbow=20.0, flex=10.0)
    phi = 2.0 * np.pi * 2.2 * np.clip(t, 0, tr.dur)
    for s, ph in ((LEFT, phi), (RIGHT, phi + np.pi)):
        lift = e * np.maximum(0.0, np.sin(ph)) ** 2
        tr.leg(s, add=True, flex=18.0 * lift, knee=35.0 * lift)
    tr.flat_feet()


def _jump(tr: Track, forward: bool) -> None:
    p = tr.p
    neutral(tr)
    rep_s = (1.25 if forward else 1.1) / p.speed
    u, _, n = tr.reps(0.0, tr.dur, rep_s, ballistic=True)
    rep_s = min(rep_s, tr.dur / n)
    crouch = keys(u, [0.0, 0.28, 0.43, 0.5, 0.8, 0.88, 1.0], [0.0, 1.0, 0.15, 0.0, 0.0, 0.7, 0.0]) * p.amp
    tr.hinge(25.0 * crouch)
    for s in (LEFT, RIGHT):
        tr.leg(s, add=True, flex=50.0 * crouch, knee=95.0 * crouch)
        arm = keys(u, [0.0, 0.28, 0.52, 0.75, 1.0], [3.0, -35.0, 95.0, 40.0, 3.0])
        tr.arm(s, flex=arm, elbow=keys(u, [0, 0.3, 0.5, 0.8, 1], [12, 20, 10, 30, 12]))
    tr.flat_feet()
    t0, t1 = 0.45, 0.8
    flight_s = (t1 - t0) * rep_s
    x = np.clip((u - t0) / (t1 - t0), 0.0, 1.0)
    height = GRAVITY_M_S2 * flight_s ** 2 / 8.0
    tr.air += height * 4.0 * x * (1.0 - x)
    if forward:
        tuck = np.sin(np.pi * x) ** 2
        for s in (LEFT, RIGHT):
            tr.leg(s, add=True, flex=35.0 * tuck, knee=55.0 * tuck)
        dist = (0.7 + 0.4 * p.variant) * p.amp
        w0, w1 = 0.38, 0.9  # a sin^2 bump of velocity whose integral is the jump distance
        width_s = (w1 - w0) * rep_s
        xv = np.clip((u - w0) / (w1 - w0), 0.0, 1.0)
        tr.vel[:, 1] = 2.0 * dist / width_s * np.sin(np.pi * xv) ** 2


def act_jumping_jacks(tr: Track) -> None:
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.3)
    f = 0.95 * p.speed
    phi = 2.0 * np.pi * f * np.clip(t, 0, tr.dur)
    open_ = e * (1.0 - np.cos(phi)) / 2.0
    for s in (LEFT, RIGHT):
        tr.leg(s, add=True, abduct=16.0 * open_, knee=12.0 * e * np.sin(phi) ** 2)
        tr.arm(s, add=True, abduct=150.0 * open_ * p.amp, flex=5.0 * e)
    tr.flat_feet()
    tr.air += e * 0.06 * np.maximum(0.0, np.sin(2.0 * phi)) ** 2  # a hop into each open / close


def act_hop(tr: Track) -> None:
    """Hop on one foot (p.side is the standing leg)."""
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.4)
    s = p.side
    tr.leg(-s, e, flex=35.0, knee=80.0)
    f = 1.8 * p.speed
    phi = 2.0 * np.pi * f * np.clip(t - 0.4 * min(1.0, tr.dur / 2.0), 0, None)
    hop = e * np.maximum(0.0, np.sin(phi)) ** 2
    crouch = e * np.maximum(0.0, -np.sin(phi)) ** 2
    tr.leg(s, add=True, knee=30.0 * crouch, flex=15.0 * crouch)
    tr.pelvis(e, lean=4.0 * s)
    for a in (LEFT, RIGHT):
        tr.arm(a, e, abduct=35.0, elbow=40.0, flex=15.0 + 20.0 * hop)
    tr.flat_feet()
    tr.air += 0.09 * p.amp * hop


def act_kick(tr: Track, side: int) -> None:
    """Front kicks with one leg from a fighting guard."""
    p = tr.p
    neutral(tr)
    e = tr.env(0.3)
    guard(tr, e)
    u, _, _ = tr.reps(0.25, tr.dur - 0.2, 1.3 / p.speed, ballistic=True)
    kick = keys(u, [0.0, 0.25, 0.45, 0.6, 0.8, 1.0], [[0, 0, 0, 0], [80, 100, 20, 0.5],
                                                       [95, 5, 40, 1.0], [80, 100, 20, 0.5],
                                                       [5, 5, 0, 0], [0, 0, 0, 0]])
    a = p.amp
    tr.leg(side, add=True, flex=kick[:, 0] * a, knee=kick[:, 1], splay=25.0 * p.variant * kick[:, 3])
    tr.leg(-side, add=True, knee=14.0 * kick[:, 3])
    tr.spine(add=True, bend=-14.0 * kick[:, 3])
    tr.pelvis(add=True, pitch=-6.0 * kick[:, 3])
    tr.flat_feet()
    tr.rot[:, L_ANKLE if side > 0 else R_ANKLE, X] += kick[:, 2] * _D2R


def act_punch(tr: Track, side: int) -> None:
    """Straight punches with one arm from a fighting guard."""
    p = tr.p
    neutral(tr)
    e = tr.env(0.3)
    guard(tr, e)
    u, _, _ = tr.reps(0.2, tr.dur - 0.15, 0.85 / p.speed, ballistic=True)
    _punch_arm(tr, side, keys(u, [0.0, 0.22, 0.35, 0.65, 1.0], [0.0, 1.0, 1.0, 0.0, 0.0]) * p.amp)
    tr.flat_feet()


def _punch_arm(tr: Track, side: int, strike: np.ndarray) -> None:
    tr.arm(side, strike, flex=88.0, elbow=4.0, sweep=14.0, twist=-60.0)
    tr.spine(add=True, twist=-side * 18.0 * strike)
    tr.pelvis(add=True, yaw=-side * 8.0 * strike)
    tr.leg(-side, add=True, knee=8.0 * strike)


def act_boxing(tr: Track) -> None:
    """Shadow boxing: alternating punches with a bouncing stance."""
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.3)
    guard(tr, e)
    u, _, _ = tr.reps(0.2, tr.dur - 0.15, 1.3 / p.speed, ballistic=True)
    first = LEFT if p.variant < 0.5 else RIGHT
    _punch_arm(tr, first, keys(u, [0, 0.12, 0.22, 0.4, 1], [0, 1, 1, 0, 0]) * p.amp)
    _punch_arm(tr, -first, keys(u, [0, 0.5, 0.62, 0.72, 0.9, 1], [0, 0, 1, 1, 0, 0]) * p.amp)
    bounce = e * np.sin(2.0 * np.pi * 2.0 * p.speed * t) ** 2
    for s in (LEFT, RIGHT):
        tr.leg(s, add=True, knee=12.0 * bounce, flex=6.0 * bounce)
    tr.flat_feet()


def act_wave(tr: Track, sides: tuple[int, ...]) -> None:
    """Raise the forearm(s) and wave side to side."""
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.45)
    hz = 1.6 + 0.8 * p.variant
    osc = 28.0 * p.amp * np.sin(2.0 * np.pi * hz * np.clip(t, 0, tr.dur)) * e
    for s in sides:
        tr.arm(s, e, abduct=78.0, flex=18.0, twist=85.0, elbow=95.0)
        tr.arm(s, add=True, elbow=osc, abduct=0.25 * osc)
    if len(sides) == 1:
        tr.neck(e, turn=12.0 * sides[0])
    tr.flat_feet()


def act_raise(tr: Track, sides: tuple[int, ...]) -> None:
    """Raise the arm(s) straight overhead and hold."""
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.55)
    for s in sides:
        tr.arm(s, e, flex=168.0 * min(1.0, p.amp), abduct=12.0, elbow=6.0, twist=0.0)
        tr.arm(s, add=True, flex=2.0 * e * _sin(t, 0.4))
    _idle_motion(tr, 0.5)
    if len(sides) == 2:
        tr.neck(e, nod=-8.0)
    tr.flat_feet()


def act_squat(tr: Track) -> None:
    p = tr.p
    neutral(tr)
    u, _, _ = tr.reps(0.0, tr.dur, 2.4 / p.speed)
    d = keys(u, [0.0, 0.45, 0.6, 1.0], [0.0, 1.0, 1.0, 0.0]) * (0.8 + 0.2 * p.amp)
    tr.pelvis(add=True, pitch=32.0 * d)
    for s in (LEFT, RIGHT):
        tr.leg(s, add=True, flex=112.0 * d, knee=112.0 * d, abduct=8.0 * d, splay=6.0 * d)
        tr.arm(s, d, flex=80.0, elbow=10.0, abduct=8.0)
    tr.spine(add=True, bend=6.0 * d)
    tr.neck(add=True, nod=-25.0 * d)
    tr.flat_feet()


def act_sit_down(tr: Track) -> None:
    neutral(tr)
    u = tr.u
    w = smootherstep(u)
    lean = np.sin(np.pi * u) ** 2
    seated(tr, w)
    tr.pelvis(add=True, pitch=28.0 * lean)
    tr.spine(add=True, bend=10.0 * lean)
    for s in (LEFT, RIGHT):
        tr.arm(s, add=True, flex=20.0 * lean)
    tr.flat_feet()


def act_stand_up(tr: Track) -> None:
    neutral(tr)
    u = tr.u
    w = 1.0 - smootherstep(u)
    lean = np.sin(np.pi * u) ** 2
    seated(tr, w)
    tr.pelvis(add=True, pitch=32.0 * lean)
    tr.spine(add=True, bend=10.0 * lean)
    for s in (LEFT, RIGHT):
        tr.arm(s, add=True, flex=20.0 * lean)
    tr.flat_feet()


def act_sit_still(tr: Track) -> None:
    t, p = tr.t, tr.p
    seated(tr)
    tr.neck(add=True, turn=14.0 * p.amp * _sin(t, 0.08 + 0.05 * p.variant, p.phase0), nod=4.0 * _sin(t, 0.11))
    tr.spine(add=True, bend=2.0 * _sin(t, 0.2), lean=1.5 * _sin(t, 0.13, 0.4))
    for s in (LEFT, RIGHT):
        tr.arm(s, add=True, elbow=5.0 * _sin(t, 0.15, 0.3 * s))


def act_bow(tr: Track) -> None:
    p = tr.p
    neutral(tr)
    u, _, _ = tr.reps(0.0, tr.dur, 2.2 / p.speed)
    d = keys(u, [0.0, 0.35, 0.65, 1.0], [0.0, 1.0, 1.0, 0.0]) * (0.75 + 0.25 * p.amp)
    depth = 32.0 + 18.0 * p.variant
    tr.hinge(depth * d)
    tr.spine(add=True, bend=15.0 * d)
    tr.neck(add=True, nod=12.0 * d)
    for s in (LEFT, RIGHT):
        tr.arm(s, add=True, flex=-0.6 * (depth + 15.0) * d)
    tr.flat_feet()


def act_clap(tr: Track) -> None:
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.4)
    hz = 1.8 + 0.9 * p.variant
    apart = (0.5 + 0.5 * np.cos(2.0 * np.pi * hz * np.clip(t, 0, tr.dur))) ** 1.5
    for s in (LEFT, RIGHT):
        tr.arm(s, e, flex=38.0, abduct=5.0, twist=-45.0, elbow=95.0, sweep=0.0)  # palms together
        tr.arm(s, add=True, sweep=-32.0 * p.amp * apart * e)
    tr.flat_feet()


def act_crawl(tr: Track) -> None:
    """Kneel, put the hands down, crawl forward on hands and knees, get up again."""
    t, p = tr.t, tr.p
    neutral(tr)
    scale = min(1.0, tr.dur / 4.0)
    kneel_s, lean_s, lag_s = 1.2 * scale, 0.9 * scale, 0.5 * scale
    e_leg = smootherstep(t / kneel_s) * smootherstep((tr.dur - t) / kneel_s)  # first in, last out
    e_trunk = smootherstep((t - lag_s) / lean_s) * smootherstep((tr.dur - lag_s - t) / lean_s)
    f = 0.65 * p.speed
    phi = 2.0 * np.pi * f * np.clip(t, 0, tr.dur)
    pitch = 76.0
    tr.pelvis(e_trunk, pitch=pitch)
    tr.spine(e_trunk, bend=4.0)
    tr.neck(e_trunk, nod=-55.0)
    for s, ph in ((LEFT, phi), (RIGHT, phi + np.pi)):
        gait = e_trunk * np.sin(ph)
        tr.leg(s, e_leg, knee=92.0, ankle=80.0, abduct=5.0, flex=0.0)
        tr.leg(s, add=True, flex=e_trunk * pitch + 14.0 * gait,
               knee=12.0 * e_trunk * np.maximum(0, np.cos(ph)))
        tr.arm(s, e_trunk, flex=pitch - 12.0 * np.sin(ph), abduct=6.0,
               elbow=5.0 + 18.0 * np.maximum(0, np.cos(ph + np.pi)))
    tr.vel[:, 1] = e_trunk ** 2 * 0.32 * p.speed


def act_throw(tr: Track) -> None:
    """Overhand throw (p.side is the throwing arm)."""
    p = tr.p
    neutral(tr)
    s = p.side
    u, _, _ = tr.reps(0.0, tr.dur, 1.7 / p.speed, ballistic=True)
    # knots: rest, wind-up, release, follow-through, rest
    kn = [0.0, 0.33, 0.53, 0.7, 1.0]
    arm = keys(u, kn, [[3, 7, 0, 0, 12], [10, 85, 80, -35, 95], [95, 50, 20, 15, 25],
                       [45, 15, -20, 45, 30], [3, 7, 0, 0, 12]])
    tr.arm(s, flex=arm[:, 0] * p.amp, abduct=arm[:, 1], twist=arm[:, 2], sweep=arm[:, 3], elbow=arm[:, 4])
    other = keys(u, kn, [[3, 7, 12], [35, 20, 30], [10, 25, 40], [-10, 15, 30], [3, 7, 12]])
    tr.arm(-s, flex=other[:, 0], abduct=other[:, 1], elbow=other[:, 2])
    twist = keys(u, kn, [0.0, 1.0, -0.6, -1.0, 0.0])
    tr.spine(add=True, twist=s * 30.0 * twist, bend=keys(u, kn, [0, -8, 10, 15, 0]))
    tr.pelvis(add=True, yaw=s * 12.0 * twist)
    step = keys(u, kn, [0.0, 0.6, 1.0, 1.0, 0.0])
    tr.leg(-s, add=True, flex=28.0 * step, knee=22.0 * step)
    tr.leg(s, add=True, knee=12.0 * step, flex=-8.0 * step)
    tr.flat_feet()


def act_balance(tr: Track, side: int) -> None:
    """Stand on one leg (`side` is the standing leg), arms out for balance."""
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.6)
    if p.variant < 0.6:  # knee lifted in front
        tr.leg(-side, e, flex=55.0 * p.amp, knee=85.0)
    else:  # leg stretched back
        tr.leg(-side, e, flex=-25.0, knee=35.0, ankle=30.0)
        tr.pelvis(e, add=True, pitch=12.0)
    tr.leg(side, add=True, knee=8.0 * e)
    tr.pelvis(e, add=True, lean=4.0 * side)
    wob = e * _sin(t, 0.6, p.phase0)
    for s in (LEFT, RIGHT):
        tr.arm(s, e, abduct=75.0 + 8.0 * wob * s, elbow=10.0, flex=10.0)
    tr.spine(add=True, lean=2.5 * wob)
    tr.flat_feet()


def act_stretch(tr: Track) -> None:
    """Arms overhead, bending the trunk from side to side."""
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.6)
    for s in (LEFT, RIGHT):
        tr.arm(s, e, flex=172.0, abduct=6.0, elbow=8.0, sweep=10.0)
    hz = 0.28 * p.speed
    lean = 22.0 * p.amp * e * np.sin(2.0 * np.pi * hz * np.clip(t - 0.6, 0, None))
    tr.spine(add=True, lean=lean)
    tr.pelvis(add=True, lean=-0.25 * lean)
    tr.flat_feet()


def act_dance(tr: Track) -> None:
    """Step-touch dance: side to side with arm swings and a bounce."""
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.4)
    f = 0.55 * p.speed
    phi = 2.0 * np.pi * (p.phase0 + f * np.clip(t, 0, tr.dur))
    bounce = e * np.sin(2.0 * phi) ** 2
    tr.vel[:, 0] = e * 0.55 * p.amp * np.sin(phi)
    for s, ph in ((LEFT, phi), (RIGHT, phi + np.pi)):
        lift = e * np.maximum(0.0, np.sin(ph)) ** 2
        tr.leg(s, add=True, abduct=10.0 * lift, knee=16.0 * bounce + 20.0 * lift, flex=10.0 * lift)
        tr.arm(s, e, flex=70.0 + 55.0 * p.amp * np.sin(ph), abduct=35.0 + 25.0 * np.cos(ph),
               elbow=55.0 + 35.0 * np.sin(2 * ph))
    tr.pelvis(add=True, lean=7.0 * e * np.sin(phi), yaw=10.0 * e * np.sin(phi + 0.7))
    tr.neck(add=True, nod=6.0 * bounce, tilt=-6.0 * e * np.sin(phi))
    tr.flat_feet()


def act_kung_fu_pose(tr: Track) -> None:
    """Drop into a horse stance and hold a palm strike (p.side strikes; forward or to the side)."""
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.8)
    s = p.side
    for a in (LEFT, RIGHT):
        tr.leg(a, e, flex=62.0, splay=38.0, abduct=8.0, knee=88.0, twist=0.0)
    if p.variant < 0.6:  # palm strike forward, torso turned into it
        tr.arm(s, e, flex=88.0, abduct=8.0, elbow=3.0, sweep=8.0, twist=-30.0)
        tr.spine(e, twist=-s * 12.0)
    else:  # palm strike to the side, looking at it
        tr.arm(s, e, flex=8.0, abduct=88.0, elbow=3.0, twist=20.0)
        tr.neck(e, turn=s * 60.0)
    tr.arm(-s, e, flex=-38.0, abduct=14.0, elbow=112.0, twist=-20.0)  # fist chambered at the hip
    tr.spine(add=True, bend=1.5 * e * _sin(t, 0.25))
    tr.flat_feet()


def act_touch_toes(tr: Track) -> None:
    p = tr.p
    neutral(tr)
    u, _, _ = tr.reps(0.0, tr.dur, 3.0 / p.speed)
    d = keys(u, [0.0, 0.4, 0.7, 1.0], [0.0, 1.0, 1.0, 0.0]) * (0.85 + 0.15 * p.amp)
    tr.hinge(78.0 * d)
    tr.spine(add=True, bend=28.0 * d)
    tr.neck(add=True, nod=10.0 * d)
    for s in (LEFT, RIGHT):
        tr.arm(s, add=True, flex=12.0 * d, elbow=-8.0 * d)
    tr.flat_feet()


def act_lunge(tr: Track) -> None:
    """Forward lunges, alternating legs."""
    p = tr.p
    neutral(tr)
    u, idx, _ = tr.reps(0.0, tr.dur, 2.4 / p.speed)
    first = LEFT if p.variant < 0.5 else RIGHT
    front = np.where(idx % 2 == 0, first, -first)
    d = keys(u, [0.0, 0.4, 0.6, 1.0], [0.0, 1.0, 1.0, 0.0]) * (0.85 + 0.15 * p.amp)
    for s in (LEFT, RIGHT):
        is_front = (front == s).astype(np.float64)
        tr.leg(s, add=True, flex=d * (is_front * 75.0 - (1 - is_front) * 20.0),
               knee=d * (is_front * 80.0 + (1 - is_front) * 60.0))
        tr.arm(s, flex=3.0, abduct=7.0 + 20.0 * d, elbow=12.0 + 80.0 * d, twist=-55.0 * d)
    tr.flat_feet()
    for s, an in ((LEFT, L_ANKLE), (RIGHT, R_ANKLE)):
        back = (front != s).astype(np.float64)
        tr.rot[:, an, X] += back * d * 66.0 * _D2R  # back foot on its toes


def act_arm_circles(tr: Track) -> None:
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.5)
    direction = 1.0 if p.variant < 0.5 else -1.0
    phi = 2.0 * np.pi * 1.1 * p.speed * np.clip(t, 0, tr.dur) * direction
    for s in (LEFT, RIGHT):
        tr.arm(s, e, abduct=85.0 + 22.0 * p.amp * np.cos(phi), flex=22.0 * p.amp * np.sin(phi), elbow=5.0)
    tr.flat_feet()


def act_march(tr: Track) -> None:
    """March in place with high knees."""
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.4)
    phi = 2.0 * np.pi * (p.phase0 + 0.85 * p.speed * np.clip(t, 0, tr.dur))
    for s, ph in ((LEFT, phi), (RIGHT, phi + np.pi)):
        lift = e * np.maximum(0.0, np.sin(ph)) ** 1.5
        tr.leg(s, add=True, flex=72.0 * p.amp * lift, knee=88.0 * lift)
        tr.arm(s, e, flex=-35.0 * np.sin(ph), elbow=85.0, abduct=8.0)
    tr.flat_feet()


def act_salute(tr: Track) -> None:
    """Right-hand salute to the forehead, held."""
    neutral(tr)
    e = tr.env(0.5)
    tr.arm(RIGHT, e, flex=20.0, abduct=70.0, twist=50.0, elbow=138.0, sweep=25.0)
    for s in (LEFT, RIGHT):
        tr.leg(s, e, twist=14.0)
    tr.neck(e, nod=-5.0)
    tr.flat_feet()


def act_drink(tr: Track) -> None:
    """Bring a cup to the mouth (p.side hand), tip the head back, lower it; repeated."""
    p = tr.p
    neutral(tr)
    u, _, _ = tr.reps(0.0, tr.dur, 2.6 / p.speed)
    d = keys(u, [0.0, 0.3, 0.7, 1.0], [0.0, 1.0, 1.0, 0.0])
    sip = keys(u, [0.0, 0.35, 0.5, 0.65, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0])
    tr.arm(p.side, d, flex=62.0, abduct=18.0, twist=-30.0, elbow=135.0, sweep=10.0)
    tr.arm(p.side, add=True, flex=12.0 * sip)
    tr.neck(add=True, nod=-18.0 * sip)
    tr.flat_feet()


def act_look_around(tr: Track) -> None:
    t, p = tr.t, tr.p
    neutral(tr)
    e = tr.env(0.5)
    look = e * np.sin(2.0 * np.pi * 0.22 * p.speed * np.clip(t, 0, tr.dur) + np.pi * (p.side < 0))
    tr.neck(add=True, turn=65.0 * p.amp * look, nod=-6.0 * e)
    tr.spine(add=True, twist=28.0 * look)
    tr.pelvis(add=True, yaw=10.0 * look)
    for s in (LEFT, RIGHT):
        tr.arm(s, e, abduct=12.0, elbow=30.0, flex=5.0)
    tr.flat_feet()


def act_pick_up(tr: Track) -> None:
    """Bend the knees, pick something up from the ground with one hand and hold it at the chest."""
    p = tr.p
    neutral(tr)
    u = tr.u
    kn = [0.0, 0.28, 0.42, 0.68, 0.8, 1.0]
    d = keys(u, kn, [0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    tr.hinge(45.0 * d)
    tr.spine(add=True, bend=25.0 * d)
    for s in (LEFT, RIGHT):
        tr.leg(s, add=True, flex=45.0 * d, knee=85.0 * d)
    hold = keys(u, kn, [0.0, 0.0, 0.0, 1.0, 1.0, 0.0])  # look at it, then let the arm down
    tr.arm(p.side, add=True, flex=35.0 * d + 38.0 * hold, elbow=75.0 * hold, twist=-40.0 * hold)
    tr.arm(-p.side, add=True, flex=20.0 * d, abduct=10.0 * d)
    tr.neck(add=True, nod=20.0 * d + 15.0 * hold)
    tr.flat_feet()


def act_push(tr: Track) -> None:
    """Lean into something heavy and push it forward, walking slowly."""
    p = tr.p
    act_gait(tr, Gait(0.45, 0.0, 0.7, 18.0, 30.0, 0.0, 30.0, 8.0, hip_bias_deg=8.0))
    e = tr.env(0.8)
    for s in (LEFT, RIGHT):
        tr.arm(s, e, flex=78.0 - 18.0, abduct=12.0, elbow=28.0, sweep=8.0, twist=-20.0)
    tr.spine(e, add=True, bend=12.0 * p.amp)
    tr.flat_feet(add_deg=6.0 * np.sin(2 * np.pi * (p.phase0 + 0.7 * tr.t)))


def act_shrug(tr: Track) -> None:
    """Shrug the shoulders with palms turned up."""
    p = tr.p
    neutral(tr)
    u, _, _ = tr.reps(0.0, tr.dur, 1.4 / p.speed)
    b = keys(u, [0.0, 0.3, 0.65, 1.0], [0.0, 1.0, 1.0, 0.0]) * p.amp
    for s in (LEFT, RIGHT):
        tr.arm(s, b, elbow=95.0, abduct=22.0, twist=45.0, flex=10.0)
        tr.arm(s, add=True, shrug=20.0 * b)
    tr.neck(add=True, tilt=10.0 * b * (1 if p.variant < 0.5 else -1), nod=-5.0 * b)
    tr.flat_feet()


def act_golf_swing(tr: Track) -> None:
    """Address the ball, back-swing, swing through and hold the finish (right-handed or left-handed)."""
    p = tr.p
    neutral(tr)
    s = 1.0 if p.side > 0 else -1.0  # +1: club swings to the left at the finish (right-handed golfer)
    u, _, _ = tr.reps(0.0, tr.dur, 2.8 / p.speed, ballistic=True)
    kn = [0.0, 0.15, 0.42, 0.55, 0.75, 1.0]
    addr = keys(u, kn, [0.0, 1.0, 1.0, 1.0, 0.6, 0.0])
    swing = keys(u, kn, [0.0, 0.0, -1.0, 0.0, 1.0, 0.0])  # -1 top of back-swing, +1 finish
    tr.hinge(30.0 * addr)
    for a in (LEFT, RIGHT):
        tr.leg(a, add=True, knee=18.0 * addr, flex=10.0 * addr, abduct=6.0 * addr)
        tr.arm(a, addr, flex=40.0, sweep=28.0, twist=-20.0, elbow=8.0)
    tr.spine(add=True, twist=s * 80.0 * swing * p.amp)
    tr.pelvis(add=True, yaw=s * 25.0 * swing)
    lift = np.abs(swing)
    tr.arm(LEFT, add=True, flex=70.0 * lift, elbow=35.0 * np.maximum(0.0, s * swing))
    tr.arm(RIGHT, add=True, flex=70.0 * lift, elbow=35.0 * np.maximum(0.0, -s * swing))
    tr.neck(add=True, turn=-s * 45.0 * swing * (swing < 0), nod=20.0 * addr)  # eyes stay on the ball
    tr.flat_feet()


# --------------------------------------------------------------------------------------------- table
@dataclass(frozen=True)
class ActionSpec:
    """One action: its program, paraphrases (training / held out) and how the planner uses it."""

    name: str
    texts: tuple[str, ...]  # training paraphrases
    test_texts: tuple[str, ...]  # held out: only test-split motions use them
    group: str  # similar actions share a group (the planner picks neighbours from it)
    dur_s: tuple[float, float]  # typical duration of one instance
    fn: Callable[[Track], None] = field(repr=False, compare=False)
    state: tuple[str, str] = ("stand", "stand")  # posture before, after
    long_ok: bool = False  # may fill most of a long motion
    free_side: bool = False  # ActionParams.side matters
    gait: bool = False  # a walking / running cycle (eases in and out next to other actions)
    travel_m_s: tuple[float, float] = (0.0, 0.0)  # gaits: nominal velocity in the body frame (x left, z forward)

    @property
    def all_texts(self) -> tuple[str, ...]:
        return self.texts + self.test_texts


_SIDES = {"left": LEFT, "right": RIGHT}
# The programs an action table entry may name ("program"), and the argument each takes ("args").
PROGRAMS: dict[str, Callable[..., None]] = {
    "idle": act_idle, "gait": act_gait, "turn": act_turn, "spin": act_spin, "jump": _jump,
    "jumping_jacks": act_jumping_jacks, "hop": act_hop, "kick": act_kick, "punch": act_punch,
    "boxing": act_boxing, "wave": act_wave, "raise": act_raise, "squat": act_squat, "sit_down": act_sit_down,
    "stand_up": act_stand_up, "sit_still": act_sit_still, "bow": act_bow, "clap": act_clap, "crawl": act_crawl,
    "throw": act_throw, "balance": act_balance, "stretch": act_stretch, "dance": act_dance,
    "kung_fu_pose": act_kung_fu_pose, "touch_toes": act_touch_toes, "lunge": act_lunge,
    "arm_circles": act_arm_circles, "march": act_march, "salute": act_salute, "drink": act_drink,
    "look_around": act_look_around, "pick_up": act_pick_up, "push": act_push, "shrug": act_shrug,
    "golf_swing": act_golf_swing,
}
ACTIONS_TABLE = "synth_actions.json"


def _program(entry: dict[str, Any]) -> Callable[[Track], None]:
    fn = PROGRAMS[entry["program"]]
    kw: dict[str, Any] = {}
    for k, v in entry.get("args", {}).items():
        if k == "side":
            kw[k] = _SIDES[v]
        elif k == "sides":
            kw[k] = tuple(_SIDES[s] for s in v)
        else:
            kw[k] = v
    if "gait_params" in entry:
        kw["g"] = Gait(**entry["gait_params"])
    return partial(fn, **kw) if kw else fn


def action_spec(entry: dict[str, Any]) -> ActionSpec:
    """One ActionSpec from an entry of the action table (see engine/corpus/data/synth_actions.json)."""
    name = str(entry.get("name", "?"))
    try:
        fn = _program(entry)
        flags: dict[str, Any] = {k: entry[k] for k in ("long_ok", "free_side", "gait") if k in entry}
        if "state" in entry:
            flags["state"] = tuple(entry["state"])
        if "travel_m_s" in entry:
            flags["travel_m_s"] = tuple(entry["travel_m_s"])
        elif "gait_params" in entry:  # a gait travels at its nominal velocity (x left, z forward)
            flags["travel_m_s"] = (entry["gait_params"]["lateral_m_s"], entry["gait_params"]["forward_m_s"])
        return ActionSpec(name, tuple(entry["texts"]), tuple(entry["test_texts"]), entry["group"],
                          tuple(entry["dur_s"]), fn, **flags)
    except (KeyError, TypeError, ValueError) as e:
        raise CorpusError(f"{ACTIONS_TABLE} action {name!r}", f"bad entry: {e!r}") from None


def load_actions(entries: list[dict[str, Any]] | None = None) -> dict[str, ActionSpec]:
    """The action table (default: the package's synth_actions.json), in table order."""
    entries = load_table(ACTIONS_TABLE, "actions") if entries is None else entries
    out = {}
    for entry in entries:
        spec = action_spec(entry)
        if spec.name in out:
            raise CorpusError(ACTIONS_TABLE, f"duplicate action name {spec.name!r}")
        out[spec.name] = spec
    return out


ACTIONS: dict[str, ActionSpec] = load_actions()


def action_texts(name: str, split: str = "train") -> tuple[str, ...]:
    """Paraphrases of an action: 'train' (and 'val'): training ones; 'test': the held-out ones; 'all'."""
    spec = ACTIONS.get(name)
    if spec is None:
        raise CorpusError(f"action {name!r}", f"unknown action (known: {len(ACTIONS)}, e.g. {', '.join(list(ACTIONS)[:5])})")
    if split in ("train", "val"):
        return spec.texts
    if split == "test":
        return spec.test_texts
    if split == "all":
        return spec.all_texts
    raise CorpusError(f"action {name!r}", f"unknown text split {split!r} (train, val, test or all)")
