"""The built-in procedural motion corpus (`engine data synth`).

Untrimmed sequences of several actions on the canonical 22-joint skeleton, each action labelled with
one of its paraphrases. How a motion is made:

1. A subject: SMPL-like bone offsets scaled per subject (height, leg / arm / trunk proportions,
   widths), so bone lengths are exactly constant within a motion.
2. A plan: a list of action instances with durations (1% to 99% of the motion: short one-shots in long
   motions, single dominant actions in others), repeats and similar actions within one motion, and a
   posture state machine (sit_down -> sit_still -> stand_up).
3. Per action, a rotation program (engine.corpus.synth_actions) fills local joint rotations, root
   velocity in the body frame, yaw rate and airborne height. Neighbouring actions are blended with a
   C2 ramp over 0.3-0.7 s centred on the annotated boundary (joint rotations and root velocity alike),
   so no joint jumps at a boundary.
4. Forward kinematics (vectorised over frames); the heading is the integral of the yaw rate and the
   root path the integral of the rotated velocity; the root height is then shifted so that the lowest
   joint touches y = 0 (plus the airborne height during jumps): nothing goes below the ground.

Everything is drawn from `numpy.random.default_rng([seed, i])` for motion i, so motion i is the same
whatever the number of motions asked, and `generate` streams (the `scale` preset never holds more
than one motion). Splits are drawn per motion (70 / 10 / 20). Annotations of test-split motions draw
from all paraphrases, the others only from the training paraphrases, so test queries are partly unseen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from engine.corpus.skeleton import FPS, N_JOINTS, PARENTS
from engine.corpus.synth_actions import (
    ACTIONS,
    LEFT,
    RIGHT,
    ActionParams,
    ActionSpec,
    Track,
    action_texts,
    smootherstep,
)
from engine.corpus.types import Annotation, CorpusError, Motion

log = logging.getLogger(__name__)

__all__ = ["ACTIONS", "PRESETS", "Subject", "SynthConfig", "action_motion", "action_texts", "forward_kinematics", "generate",
           "make_motion", "rest_offsets"]

SOURCE = "synth"
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SynthConfig:
    """What `generate` makes. Durations are drawn log-uniformly in [min_duration_s, max_duration_s]."""

    n_motions: int = 400
    min_duration_s: float = 10.0
    max_duration_s: float = 120.0
    dominant_fraction: float = 0.12  # motions that are one action for 85-99% of their length
    repeat_prob: float = 0.25  # next action: one already done in this motion
    similar_prob: float = 0.2  # next action: same group as the previous one
    idle_prob: float = 0.15  # a short idle between two actions
    long_prob: float = 0.12  # a long instance (3-4x the typical duration) of an action that allows it
    noise_deg: float = 1.2  # smooth per-joint rotation noise
    min_blend_s: float = 0.3
    max_blend_s: float = 0.7
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    fps: float = FPS
    name: str = "custom"


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(n_motions=12, min_duration_s=10.0, max_duration_s=30.0, name="tiny"),
    "small": SynthConfig(n_motions=100, min_duration_s=10.0, max_duration_s=60.0, name="small"),
    "demo": SynthConfig(n_motions=400, min_duration_s=10.0, max_duration_s=120.0, name="demo"),
    "large": SynthConfig(n_motions=2000, min_duration_s=10.0, max_duration_s=120.0, name="large"),
    "scale": SynthConfig(n_motions=12000, min_duration_s=10.0, max_duration_s=30.0, name="scale"),
}

# ------------------------------------------------------------------------------------------- skeleton
# Rest offsets of each joint from its parent (metres, x left, y up, z forward) for a ~1.72 m adult
# standing with arms hanging; lengths close to the SMPL / HumanML3D reference skeleton.
_BASE_OFFSETS = np.array(
    [
        [0.0, 0.0, 0.0],  # pelvis
        [0.085, -0.075, 0.0], [-0.085, -0.075, 0.0],  # hips
        [0.0, 0.11, -0.015],  # spine1
        [0.005, -0.39, 0.005], [-0.005, -0.39, 0.005],  # knees
        [0.0, 0.13, 0.01],  # spine2
        [-0.005, -0.41, -0.03], [0.005, -0.41, -0.03],  # ankles
        [0.0, 0.055, 0.01],  # spine3
        [0.01, -0.055, 0.125], [-0.01, -0.055, 0.125],  # feet (toes)
        [0.0, 0.21, -0.02],  # neck
        [0.075, 0.115, -0.005], [-0.075, 0.115, -0.005],  # collars
        [0.0, 0.09, 0.05],  # head
        [0.115, -0.035, -0.01], [-0.115, -0.035, -0.01],  # shoulders
        [0.0, -0.26, 0.0], [0.0, -0.26, 0.0],  # elbows
        [0.0, -0.25, 0.0], [0.0, -0.25, 0.0],  # wrists
    ],
    dtype=np.float64,
)
_LEG_BONES = (4, 5, 7, 8, 10, 11)
_ARM_BONES = (18, 19, 20, 21)
_TRUNK_BONES = (3, 6, 9, 12, 15)
_WIDTH_BONES = (1, 2, 13, 14, 16, 17)


@dataclass(frozen=True)
class Subject:
    """Body proportions of one synthetic performer."""

    height: float = 1.0
    legs: float = 1.0
    arms: float = 1.0
    trunk: float = 1.0
    width: float = 1.0

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Subject:
        return cls(height=float(rng.uniform(0.88, 1.1)), legs=float(rng.uniform(0.94, 1.06)),
                   arms=float(rng.uniform(0.94, 1.06)), trunk=float(rng.uniform(0.95, 1.05)),
                   width=float(rng.uniform(0.9, 1.1)))

    @property
    def leg_m(self) -> float:
        """Hip-to-ground length of the straight leg."""
        return float(0.9 * self.height * self.legs)


def rest_offsets(subject: Subject | None = None) -> np.ndarray:
    """(22, 3) rest-pose offsets of each joint from its parent for a subject (default: the base adult)."""
    s = subject or Subject()
    off = _BASE_OFFSETS * s.height
    off[list(_LEG_BONES)] *= s.legs
    off[list(_ARM_BONES)] *= s.arms
    off[list(_TRUNK_BONES)] *= s.trunk
    off[list(_WIDTH_BONES), 0] *= s.width
    return off


def _rotations(rot: np.ndarray) -> np.ndarray:
    """(T, J, 4) channels (yi, x, z, yo) -> (J, T, 3, 3) float32 matrices Ry(yo) Rz(z) Rx(x) Ry(yi)."""
    a = np.ascontiguousarray(rot.transpose(2, 1, 0), dtype=np.float32)  # (C, J, T)
    ci, cx, cz, co = np.cos(a)
    si, sx, sz, so = np.sin(a)
    # M = Rz(z) Rx(x) (row 2 is [0, sx, cx])
    m00, m01, m02 = cz, -sz * cx, sz * sx
    m10, m11, m12 = sz, cz * cx, -cz * sx
    # N = Ry(yo) M: rows 0 and 2 mix
    n00, n01, n02 = co * m00, co * m01 + so * sx, co * m02 + so * cx
    n20, n21, n22 = -so * m00, -so * m01 + co * sx, -so * m02 + co * cx
    # N Ry(yi): columns 0 and 2 mix
    out = np.empty((a.shape[1], a.shape[2], 3, 3), dtype=np.float32)  # (J, T, 3, 3)
    out[..., 0, 0], out[..., 0, 1], out[..., 0, 2] = n00 * ci - n02 * si, n01, n00 * si + n02 * ci
    out[..., 1, 0], out[..., 1, 1], out[..., 1, 2] = m10 * ci - m12 * si, m11, m10 * si + m12 * ci
    out[..., 2, 0], out[..., 2, 1], out[..., 2, 2] = n20 * ci - n22 * si, n21, n20 * si + n22 * ci
    return out


_HAS_CHILD = frozenset(PARENTS[1:])


def forward_kinematics(rot: np.ndarray, offsets: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Local rotation channels (T, 22, 4), rest offsets (22, 3), heading (T,) radians -> joints (T, 22, 3)
    float32, relative to the root position (root at the origin)."""
    local = _rotations(rot)  # (J, T, 3, 3)
    n = rot.shape[0]
    ch, sh = np.cos(heading), np.sin(heading)
    yaw = np.zeros((n, 3, 3), dtype=np.float32)
    yaw[:, 0, 0], yaw[:, 0, 2], yaw[:, 1, 1], yaw[:, 2, 0], yaw[:, 2, 2] = ch, sh, 1.0, -sh, ch
    off = offsets.astype(np.float32)
    glob: list[np.ndarray | None] = [None] * N_JOINTS
    pos = np.zeros((N_JOINTS, n, 3), dtype=np.float32)  # (J, T, 3)
    glob[0] = yaw @ local[0]
    for j in range(1, N_JOINTS):
        p = PARENTS[j]
        pos[j] = pos[p] + glob[p] @ off[j]
        if j in _HAS_CHILD:
            glob[j] = glob[p] @ local[j]
    return pos.transpose(1, 0, 2)  # (T, J, 3)


# ------------------------------------------------------------------------------------------- planning
@dataclass
class _Segment:
    name: str
    start_s: float
    dur_s: float
    params: ActionParams = field(default_factory=ActionParams)
    annotate: bool = True

    @property
    def end_s(self) -> float:
        return self.start_s + self.dur_s


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


_STAND_ACTIONS = tuple(n for n, s in ACTIONS.items() if s.state == ("stand", "stand"))
_LONG_ACTIONS = tuple(n for n in _STAND_ACTIONS if ACTIONS[n].long_ok and n != "idle")
_MIN_SEGMENT_S = 0.5


def _pick(rng: np.random.Generator, cfg: SynthConfig, state: str, prev: str | None, used: list[str],
          remaining_s: float) -> str:
    """The next action: posture-consistent, not the previous one, fitting in the time left."""

    def fits(n: str) -> bool:
        return n != prev and ACTIONS[n].state[0] == state and ACTIONS[n].dur_s[0] <= remaining_s

    if state == "sit":
        want = "stand_up" if prev == "sit_still" or rng.random() < 0.35 else "sit_still"
        return want if fits(want) else "sit_still"
    if prev not in (None, "idle") and rng.random() < cfg.idle_prob:
        return "idle"
    r = rng.random()
    pool: list[str] = []
    if r < cfg.repeat_prob and used:
        pool = [n for n in dict.fromkeys(used) if fits(n)]
    elif r < cfg.repeat_prob + cfg.similar_prob and prev not in (None, "idle"):
        pool = [n for n in _STAND_ACTIONS if ACTIONS[n].group == ACTIONS[prev].group and fits(n)]
    if not pool:
        pool = [n for n in _STAND_ACTIONS + ("sit_down",) if fits(n)]
    if not pool:
        return "idle"
    return pool[int(rng.integers(len(pool)))]


def _duration(rng: np.random.Generator, cfg: SynthConfig, spec: ActionSpec) -> float:
    lo, hi = spec.dur_s
    if spec.long_ok and rng.random() < cfg.long_prob:
        return float(rng.uniform(hi, 4.0 * hi))
    return _loguniform(rng, lo, hi)


def _params(rng: np.random.Generator, spec: ActionSpec, subject: Subject) -> ActionParams:
    loco = spec.group == "locomotion"
    return ActionParams(speed=float(rng.uniform(0.93, 1.07) if loco else rng.uniform(0.88, 1.12)),
                        amp=float(rng.uniform(0.85, 1.1)), side=LEFT if rng.random() < 0.4 else RIGHT,
                        variant=float(rng.random()), phase0=float(rng.random()), leg_m=subject.leg_m)


def plan_motion(rng: np.random.Generator, cfg: SynthConfig, duration_s: float, subject: Subject) -> list[_Segment]:
    """Action instances filling [0, duration_s] exactly (each at least 0.5 s)."""
    segs: list[_Segment] = []
    if rng.random() < cfg.dominant_fraction:
        name = str(rng.choice(_LONG_ACTIONS))
        frac = float(rng.uniform(0.85, 0.99))
        pad = max(_MIN_SEGMENT_S, duration_s * (1.0 - frac))
        main = _Segment(name, 0.0, duration_s - pad, _params(rng, ACTIONS[name], subject))
        idle = _Segment("idle", 0.0, pad, _params(rng, ACTIONS["idle"], subject), annotate=pad >= 1.0)
        if rng.random() < 0.5:
            main.start_s = pad
            segs = [idle, main]
        else:
            idle.start_s = main.end_s
            segs = [main, idle]
        return _ease_gaits(_merge_short(segs))
    t, state, prev, used = 0.0, "stand", None, []
    while duration_s - t > 1e-9:
        remaining = duration_s - t
        name = _pick(rng, cfg, state, prev, used, remaining)
        spec = ACTIONS[name]
        d = _duration(rng, cfg, spec)
        if not segs and d > duration_s - max(0.6, 0.03 * duration_s):  # moments cover < 99% of a motion
            d = min(float(rng.uniform(0.85, 0.97)) * duration_s, duration_s - 0.6)
        if remaining - d < _MIN_SEGMENT_S:
            d = remaining
        segs.append(_Segment(name, t, d, _params(rng, spec, subject)))
        used.append(name)
        t += d
        prev, state = name, spec.state[1]
    return _ease_gaits(_merge_short(segs))


def gaits_flow(a: str, b: str) -> bool:
    """Whether gait b can follow gait a without stopping: both gaits, travelling in similar directions."""
    sa, sb = ACTIONS[a], ACTIONS[b]
    if not (sa.gait and sb.gait):
        return False
    va, vb = np.array(sa.travel_m_s), np.array(sb.travel_m_s)
    return float(va @ vb) > 0.5 * float(np.linalg.norm(va) * np.linalg.norm(vb))


def _ease_gaits(segs: list[_Segment]) -> list[_Segment]:
    """A gait next to a non-gait action, or to a gait going another way, starts from / comes to a standstill."""
    for k, seg in enumerate(segs):
        if ACTIONS[seg.name].gait:
            seg.params.ease_in = k == 0 or not gaits_flow(segs[k - 1].name, seg.name)
            seg.params.ease_out = k == len(segs) - 1 or not gaits_flow(seg.name, segs[k + 1].name)
    return segs


def _merge_short(segs: list[_Segment]) -> list[_Segment]:
    """Give a last segment shorter than 0.5 s to its predecessor (a one-shot stretches to fit)."""
    while len(segs) > 1 and segs[-1].dur_s < _MIN_SEGMENT_S:
        last = segs.pop()
        segs[-1].dur_s += last.dur_s
    return segs


# ------------------------------------------------------------------------------------------- synthesis
def _smooth_noise(rng: np.random.Generator, n_frames: int, fps: float, amp_rad: float) -> np.ndarray:
    """(n, 22, 4) smooth random rotation noise: random knots every 0.5 s, C2 interpolation."""
    step = max(2, int(round(0.5 * fps)))
    n_knots = n_frames // step + 2
    knots = rng.normal(0.0, amp_rad, size=(n_knots, N_JOINTS, 4))
    knots[:, 0, 3] = 0.0  # no noise on the root yaw (the heading carries it)
    f = np.arange(n_frames)
    i = f // step
    w = smootherstep((f % step) / step)[:, None, None]
    return knots[i] * (1.0 - w) + knots[i + 1] * w


def synthesize(segments: list[_Segment], subject: Subject, rng: np.random.Generator, fps: float = FPS,
               noise_deg: float = 0.0, min_blend_s: float = 0.3, max_blend_s: float = 0.7,
               heading0: float = 0.0) -> np.ndarray:
    """Render planned segments (covering [0, D]) to joints (round(D * fps), 22, 3), metres, y up."""
    total_s = segments[-1].end_s
    n = max(2, int(round(total_s * fps)))
    times = np.arange(n) / fps
    # blend widths at the boundaries between consecutive segments (the longest between flowing gaits)
    blends = [float(np.clip(max_blend_s if gaits_flow(a.name, b.name) else rng.uniform(min_blend_s, max_blend_s),
                            0.1, 0.7 * min(a.dur_s, b.dur_s)))
              for a, b in zip(segments[:-1], segments[1:])]
    rot = np.zeros((n, N_JOINTS, 4))
    vel = np.zeros((n, 2))
    yaw_rate = np.zeros(n)
    air = np.zeros(n)
    prev_track: Track | None = None
    prev_spec: ActionSpec | None = None
    for k, seg in enumerate(segments):
        spec = ACTIONS[seg.name]
        b0 = blends[k - 1] if k > 0 else 0.0
        b1 = blends[k] if k < len(blends) else 0.0
        lo = max(0, int(np.floor((seg.start_s - b0 / 2) * fps)))
        hi = min(n, int(np.ceil((seg.end_s + b1 / 2) * fps)) + 1)
        if prev_track is not None and prev_spec is not None and gaits_flow(prev_spec.name, spec.name):
            seg.params.phase0 = prev_track.phase_end  # keep the stride going from one gait to the next
        tr = Track(times[lo:hi] - seg.start_s, seg.dur_s, seg.params)
        spec.fn(tr)
        w = np.ones(hi - lo)
        if k > 0:
            w *= smootherstep((times[lo:hi] - (seg.start_s - b0 / 2)) / b0)
        if k < len(blends):
            w *= 1.0 - smootherstep((times[lo:hi] - (seg.end_s - b1 / 2)) / b1)
        rot[lo:hi] += w[:, None, None] * tr.rot
        vel[lo:hi] += w[:, None] * tr.vel
        yaw_rate[lo:hi] += w * tr.yaw_rate
        air[lo:hi] += w * tr.air
        prev_track, prev_spec = tr, spec
    if noise_deg > 0:
        rot += _smooth_noise(rng, n, fps, np.radians(noise_deg))
    dt = 1.0 / fps
    heading = heading0 + np.concatenate([[0.0], np.cumsum(0.5 * (yaw_rate[1:] + yaw_rate[:-1])) * dt])
    ch, sh = np.cos(heading), np.sin(heading)
    # body frame (x left, z forward) -> world: forward is (sin h, 0, cos h), left is (cos h, 0, -sin h)
    world_v = np.stack([vel[:, 0] * ch + vel[:, 1] * sh, -vel[:, 0] * sh + vel[:, 1] * ch], axis=1)  # (n, 2)
    root_xz = np.concatenate([np.zeros((1, 2)), np.cumsum(0.5 * (world_v[1:] + world_v[:-1]), axis=0) * dt])
    joints = forward_kinematics(rot, rest_offsets(subject), heading).astype(np.float64)  # (n, 22, 3)
    ground = -joints[:, :, 1].min(axis=1)  # root height putting the lowest joint on y = 0
    joints[:, :, 0] += root_xz[:, None, 0]
    joints[:, :, 2] += root_xz[:, None, 1]
    joints[:, :, 1] += (ground + np.maximum(air, 0.0))[:, None]
    return joints


def _annotations(segments: list[_Segment], rng: np.random.Generator, split: str, n_frames: int,
                 fps: float) -> list[Annotation]:
    text_split = "all" if split == "test" else "train"
    end_max = n_frames / fps
    out = []
    for k, seg in enumerate(segments):
        if not seg.annotate:
            continue
        texts = action_texts(seg.name, text_split)
        text = texts[int(rng.integers(len(texts)))]
        out.append(Annotation(text=text, start_s=round(seg.start_s, 4), end_s=round(min(seg.end_s, end_max), 4),
                              seg_id=f"{k:03d}", extra={"action": seg.name}))
    return out


def _split(u: float, cfg: SynthConfig) -> str:
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.val_fraction:
        return "val"
    return "train"


def make_motion(cfg: SynthConfig, seed: int, index: int) -> Motion:
    """Motion `index` of the corpus (seed, cfg): the same whatever the number of motions generated."""
    rng = np.random.default_rng([int(seed), int(index)])
    split = _split(float(rng.random()), cfg)
    subject = Subject.draw(rng)
    duration_s = _loguniform(rng, cfg.min_duration_s, cfg.max_duration_s)
    segments = plan_motion(rng, cfg, duration_s, subject)
    joints = synthesize(segments, subject, rng, fps=cfg.fps, noise_deg=cfg.noise_deg,
                        min_blend_s=cfg.min_blend_s, max_blend_s=cfg.max_blend_s,
                        heading0=float(rng.uniform(-np.pi, np.pi)))
    anns = _annotations(segments, rng, split, joints.shape[0], cfg.fps)
    meta = {"generator": "synth", "generator_version": GENERATOR_VERSION, "preset": cfg.name, "seed": int(seed),
            "index": int(index), "subject": {k: round(v, 4) for k, v in subject.__dict__.items()}}
    return Motion(name=f"{SOURCE}/{seed}/{index:06d}", source=SOURCE, fps=cfg.fps,
                  joints=joints.astype(np.float32), annotations=anns, split=split, meta=meta)


def _resolve(config_or_preset: SynthConfig | str) -> SynthConfig:
    if isinstance(config_or_preset, SynthConfig):
        cfg = config_or_preset
    elif config_or_preset in PRESETS:
        cfg = PRESETS[config_or_preset]
    else:
        raise CorpusError(f"synth preset {config_or_preset!r}", f"unknown preset (choose from {', '.join(PRESETS)})")
    if cfg.n_motions < 0:
        raise CorpusError(f"synth config {cfg.name!r}", f"n_motions must be >= 0, got {cfg.n_motions}")
    if not (0 < cfg.min_duration_s <= cfg.max_duration_s):
        raise CorpusError(f"synth config {cfg.name!r}",
                          f"durations must satisfy 0 < min <= max, got {cfg.min_duration_s}..{cfg.max_duration_s}")
    if cfg.min_duration_s < 2.0:
        raise CorpusError(f"synth config {cfg.name!r}", f"min_duration_s must be >= 2 s, got {cfg.min_duration_s}")
    return cfg


def generate(config_or_preset: SynthConfig | str = "demo", seed: int = 0) -> Iterator[Motion]:
    """Stream the motions of a preset (name or SynthConfig); deterministic by seed."""
    cfg = _resolve(config_or_preset)
    log.info("synth: %d motions, %.0f-%.0f s, seed %d", cfg.n_motions, cfg.min_duration_s, cfg.max_duration_s, seed)
    for i in range(cfg.n_motions):
        yield make_motion(cfg, seed, i)


def action_motion(name: str, seed: int = 0, duration_s: float | None = None, subject: Subject | None = None,
                  noise_deg: float = 0.0, params: ActionParams | None = None) -> Motion:
    """One action alone as a motion (annotated over its whole length): for tests, demos and previews."""
    if name not in ACTIONS:
        raise CorpusError(f"action {name!r}", f"unknown action (known: {', '.join(ACTIONS)})")
    spec = ACTIONS[name]
    rng = np.random.default_rng([int(seed), 7_777])
    subject = subject or Subject.draw(rng)
    d = float(duration_s) if duration_s is not None else float(np.sqrt(spec.dur_s[0] * spec.dur_s[1]))
    if d < _MIN_SEGMENT_S:
        raise CorpusError(f"action {name!r}", f"duration {d} s is shorter than {_MIN_SEGMENT_S} s")
    p = params if params is not None else _params(rng, spec, subject)
    seg = _ease_gaits([_Segment(name, 0.0, d, replace(p, leg_m=subject.leg_m))])[0]
    joints = synthesize([seg], subject, rng, fps=FPS, noise_deg=noise_deg)
    n = joints.shape[0]
    ann = Annotation(text=spec.texts[0], start_s=0.0, end_s=round(n / FPS, 4), seg_id="000", extra={"action": name})
    return Motion(name=f"{SOURCE}/action/{name}/{seed}", source=SOURCE, fps=FPS, joints=joints.astype(np.float32),
                  annotations=[ann], split="train", meta={"generator": "synth", "action": name, "seed": int(seed)})
