"""Training-set augmentation of a corpus: mirrored, faster/slower and re-proportioned copies of motions.

    engine data augment --corpus corpora/bandai --out corpora/bandai-aug --mirror --speeds 0.8,1.2 \
        --scales 1

Each copy is made from the motion's joints (so its features are recomputed by the store, exactly like
an imported motion) and its annotations are carried over:

- **mirror**: x negated and left/right joints swapped (`mirror_joints`); every sentence and label
  field has left/right swapped (`mirror_text`: "waves the left hand" -> "waves the right hand",
  content "wave-left-hand" -> "wave-right-hand").
- **speed** s: the motion is resampled in time to play s times as fast (linear interpolation of joint
  positions at the same fps); annotation times are divided by s.
- **body proportions** (`scales`): each limb group (legs, arms, spine/neck/head) gets its bone lengths
  multiplied by its own factor drawn uniformly from [1 - a, 1 + a] (seeded by the motion's name), and
  the motion is retargeted onto that skeleton (`uniform_skeleton`: the root trajectory scales with
  the legs).

Only training motions are augmented (validation and test must stay as recorded); the output holds the
copies only, so it is mixed with the original corpus at training time (`--corpus A --corpus B:WEIGHT`).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from engine.corpus.features import mirror_joints, skeleton_offsets, uniform_skeleton
from engine.corpus.importers import mirror_text
from engine.corpus.types import Annotation, CorpusError, Motion

# SMPL joint groups for the proportion augmentation (see data/README.md for the joint order).
LEG_JOINTS = (1, 2, 4, 5, 7, 8, 10, 11)
ARM_JOINTS = (13, 14, 16, 17, 18, 19, 20, 21)
TRUNK_JOINTS = (3, 6, 9, 12, 15)


@dataclass(frozen=True)
class AugmentSpec:
    """One kind of copy: mirrored or not, a speed factor, and a proportion amplitude (0: as recorded)."""

    mirror: bool = False
    speed: float = 1.0
    proportions: float = 0.0

    @property
    def identity(self) -> bool:
        return not self.mirror and self.speed == 1.0 and self.proportions == 0.0

    @property
    def tag(self) -> str:
        parts = (["mirror"] if self.mirror else []) + ([f"speed{self.speed:g}"] if self.speed != 1.0 else []) \
            + ([f"prop{self.proportions:g}"] if self.proportions else [])
        return "+".join(parts) or "copy"


def specs(mirror: bool, speeds: Sequence[float], proportions: float) -> list[AugmentSpec]:
    """Every combination of (mirror or not) x speeds, each with the proportion amplitude; the identity is
    left out (the original corpus is mixed in separately)."""
    for s in speeds:
        if not 0.25 <= s <= 4.0:
            raise CorpusError("augment", f"speed {s} is outside 0.25..4")
    if not 0.0 <= proportions < 0.5:
        raise CorpusError("augment", f"proportion amplitude {proportions} is outside 0..0.5")
    out = [AugmentSpec(m, float(s), float(proportions))
           for m, s in itertools.product((False, True) if mirror else (False,), sorted(set(speeds) | {1.0}))]
    return [a for a in out if not a.identity]


def resample_time(joints: np.ndarray, speed: float) -> np.ndarray:
    """(T, 22, 3) joints played `speed` times as fast at the same frame rate: frame i of the result is
    the source at time i * speed (linear interpolation); at least 2 frames."""
    n = joints.shape[0]
    m = max(2, int(round((n - 1) / speed)) + 1)
    t = np.minimum(np.arange(m) * speed, n - 1)
    i0 = np.floor(t).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (t - i0)[:, None, None]
    return (joints[i0] * (1.0 - w) + joints[i1] * w).astype(joints.dtype)


def reproportion(joints: np.ndarray, amplitude: float, rng: np.random.Generator, where: str) -> np.ndarray:
    """Retarget onto the motion's own skeleton with each limb group's bones scaled by 1 ± amplitude."""
    target = skeleton_offsets(joints[0]).copy()
    for group in (LEG_JOINTS, ARM_JOINTS, TRUNK_JOINTS):
        target[list(group)] *= rng.uniform(1.0 - amplitude, 1.0 + amplitude)
    return uniform_skeleton(joints, target, where).astype(np.float32)


def _mirror_extra(extra: dict) -> dict:
    return {k: mirror_text(v) if isinstance(v, str) and k != "take" else v for k, v in extra.items()}


def augment_motion(m: Motion, spec: AugmentSpec) -> Motion:
    """One augmented copy of a motion (joints required); its features are left for the store to compute."""
    where = f"motion {m.name!r}"
    if m.joints is None:
        raise CorpusError(where, "has no joint positions to augment")
    joints = np.asarray(m.joints, np.float32)
    anns = [Annotation(a.text, a.start_s, a.end_s, a.seg_id, dict(a.extra)) for a in m.annotations]
    if spec.mirror:
        joints = mirror_joints(joints)
        anns = [Annotation(mirror_text(a.text), a.start_s, a.end_s, a.seg_id, _mirror_extra(a.extra)) for a in anns]
    if spec.proportions:
        rng = np.random.default_rng(zlib.crc32(f"{m.name}|{spec.tag}".encode()))
        joints = reproportion(joints, spec.proportions, rng, where)
    if spec.speed != 1.0:
        joints = resample_time(joints, spec.speed)
        dur = (joints.shape[0] - 1) / m.fps
        anns = [Annotation(a.text, min(a.start_s / spec.speed, dur), min(a.end_s / spec.speed, dur), a.seg_id,
                           a.extra) for a in anns]
        anns = [a for a in anns if a.end_s > a.start_s]
    meta = {**m.meta, "augmented_from": m.name, "augment": spec.tag}
    return Motion(name=f"{m.name}~{spec.tag}", source=m.source, fps=m.fps, joints=joints, annotations=anns,
                  split=m.split, path=m.path, meta=meta)


def augmented_motions(store, spec_list: Sequence[AugmentSpec], split: str = "train",
                      limit: int | None = None) -> Iterator[Motion]:
    """Augmented copies of the `split` motions of `store` (each motion read once, every spec applied)."""
    if split != "train":
        raise CorpusError("augment", f"only the training split is augmented (asked for {split!r}): "
                                     "validation and test motions must stay as recorded")
    ids = store.motion_ids(split=split)
    for mid in ids[:limit] if limit is not None else ids:
        m = store.get_motion(mid, arrays=False)
        m.joints = np.asarray(store.joints(mid), np.float32)
        for spec in spec_list:
            yield augment_motion(m, spec)
