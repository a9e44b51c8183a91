"""The composed Bandai benchmark: determinism, splits, spans, seamless boundaries, bone lengths."""

from __future__ import annotations

from collections import defaultdict
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from engine.corpus import compose
from engine.corpus.bvh import BANDAI, bvh_to_motion, take_split
from engine.corpus.skeleton import bone_lengths

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = DATA / "bandai-namco"

pytestmark = pytest.mark.skipif(not (ROOT / "set2").is_dir(),
                                reason=f"shared data not found: {ROOT} (composed benchmark needs ../shared/data)")


@pytest.fixture(scope="module")
def takes() -> dict[str, compose.Take]:
    return {t.name: t for t in compose.list_bandai_takes(ROOT)}


@pytest.fixture(scope="module")
def motions():
    return list(compose.compose_bandai(ROOT, seed=0, n_motions=6, sets=("set2",), max_s=60))


@cache
def original(path: Path) -> np.ndarray:
    return bvh_to_motion(path, BANDAI).joints.astype(np.float64)


def speeds(joints: np.ndarray) -> np.ndarray:
    """(T, 22, 3) -> (T-1, 22) joint speeds in m/s at 20 fps."""
    return np.linalg.norm(np.diff(joints.astype(np.float64), axis=0), axis=-1) * 20.0


def test_deterministic_by_seed():
    a = list(compose.compose_bandai(ROOT, seed=3, n_motions=2, sets=("set2",), max_s=30))
    b = list(compose.compose_bandai(ROOT, seed=3, n_motions=2, sets=("set2",), max_s=30))
    c = list(compose.compose_bandai(ROOT, seed=4, n_motions=2, sets=("set2",), max_s=30))
    assert [m.name for m in a] == [m.name for m in b]
    for x, y in zip(a, b):
        assert [(an.text, an.start_s, an.end_s) for an in x.annotations] == \
               [(an.text, an.start_s, an.end_s) for an in y.annotations]
        np.testing.assert_array_equal(x.joints, y.joints)
    assert [m.meta["clips"] for m in a] != [m.meta["clips"] for m in c]


def test_each_take_in_exactly_one_split(takes, motions):
    assert all(t.split == take_split(name) for name, t in takes.items())
    counts = defaultdict(int)
    for t in takes.values():
        counts[t.split] += 1
    n = len(takes)
    assert abs(counts["train"] / n - 0.7) < 0.05 and abs(counts["test"] / n - 0.2) < 0.05
    seen: dict[str, set[str]] = defaultdict(set)
    for m in motions:
        for a in m.annotations:
            assert takes[a.extra["take"]].split == m.split
            seen[a.extra["take"]].add(m.split)
    assert all(len(s) == 1 for s in seen.values())
    assert {m.split for m in motions} == {"train", "val", "test"}  # 6 sequences shared 70/10/20 -> 4/1/1


def test_annotation_spans_tile_the_sequence_and_match_clip_lengths(takes, motions):
    for m in motions:
        assert 10.0 <= m.duration_s <= 60.0 and len(m.annotations) >= 2
        ends = 0.0
        for a in m.annotations:
            t = takes[a.extra["take"]]
            assert a.start_s == pytest.approx(ends)
            assert a.duration_s == pytest.approx(t.n_frames / 20.0)
            assert a.duration_s == pytest.approx(original(t.path).shape[0] / 20.0)
            assert 0.01 <= a.duration_s / m.duration_s <= 0.99
            assert a.extra["content"] == t.content and a.extra["style"] == t.style and a.text.startswith("a person ")
            ends = a.end_s
        assert ends == pytest.approx(m.duration_s)
        assert m.source == "bandai-composed" and m.fps == 20.0 and m.name.startswith("bandai-composed/s0-n6-")


def test_bone_lengths_stay_consistent(motions):
    for m in motions:
        bl = bone_lengths(m.joints.astype(np.float64))
        med = np.median(bl, axis=0)
        assert (np.abs(bl - med) <= 1e-3 * med).all(), m.name


def _seams(m) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(seam frame, original speeds of the clip before, of the clip after) for each boundary."""
    out = []
    for a, b in zip(m.annotations[:-1], m.annotations[1:]):
        out.append((int(round(b.start_s * 20)), speeds(original(Path(_path(a)))), speeds(original(Path(_path(b))))))
    return out


def _path(ann) -> Path:
    take = ann.extra["take"]
    return ROOT / "set1" / f"{take}.bvh" if take.startswith("dataset-1") else ROOT / "set2" / f"{take}.bvh.gz"


def _seam_ratio(joints: np.ndarray, seam: int, sa: np.ndarray, sb: np.ndarray) -> float:
    """Speed of the step across the seam over max(p99 of both clips' speeds, their own speeds there)."""
    p99 = np.percentile(np.concatenate([sa.ravel(), sb.ravel()]), 99)
    step = speeds(joints[seam - 1:seam + 1])[0]  # (22,)
    return float((step / np.maximum(p99, np.maximum(sa[-1], sb[0]))).max())


def test_no_jump_at_boundaries(motions):
    """At every seam no joint moves faster than the 99th percentile of joint speeds inside the two clips
    (or than the clips themselves move right there: the takes are often cut mid-movement), and within
    the transition windows joints stay within 1.6x of that. A hard cut fails the seam check."""
    hard_fail = 0
    n = 0
    for m in motions:
        sp = speeds(m.joints)
        for k, (seam, sa, sb) in enumerate(_seams(m)):
            n += 1
            assert _seam_ratio(m.joints, seam, sa, sb) <= 1.0, (m.name, k)
            a, b = m.annotations[k], m.annotations[k + 1]
            lo, hi = seam - int(round(a.extra["blend_out_s"] * 20)), seam + int(round(b.extra["blend_in_s"] * 20))
            p99 = np.percentile(np.concatenate([sa.ravel(), sb.ravel()]), 99)
            own = np.concatenate([sa[len(sa) - (seam - 1 - lo):], np.maximum(sa[-1], sb[0])[None], sb[:hi - seam]])
            assert (sp[lo:hi] <= 1.6 * np.maximum(p99, own)).all(), (m.name, k)
        # the same clips hard-cut (root aligned, poses not blended) jump at some seams
        starts = [int(round(a.start_s * 20)) for a in m.annotations]
        clips = [compose.to_clip(None, original(_path(a))) for a in m.annotations]
        cut = compose.compose_clips(clips, blend=False).joints
        assert [int(s) for s in compose.compose_clips(clips).starts] == starts
        hard_fail += sum(_seam_ratio(cut, seam, sa, sb) > 1.0 for seam, sa, sb in _seams(m))
    assert n > 20 and hard_fail > n // 4


def test_root_path_continuous_and_facing_carried_over(motions):
    m = motions[0]
    root = m.joints[:, 0].astype(np.float64) * [1, 0, 1]
    step = np.linalg.norm(np.diff(root, axis=0), axis=-1)
    theta = compose.heading(m.joints.astype(np.float64))
    for seam, _, _ in _seams(m):
        assert step[seam - 1] <= max(step[seam - 2], step[seam]) + 1e-6
        turn = abs(compose._wrap(theta[seam] - theta[seam - 1]))
        assert turn <= max(abs(compose._wrap(theta[seam - 1] - theta[seam - 2])),
                           abs(compose._wrap(theta[seam + 1] - theta[seam]))) + 0.05


def test_single_clip_is_reproduced_and_hard_cut_is_rigid(takes):
    names = sorted(n for n in takes if n.startswith("dataset-2_walk-turn-left_normal"))[:2]
    joints = [original(takes[n].path) for n in names]
    clips = [compose.to_clip(takes[n], j) for n, j in zip(names, joints)]
    one = compose.compose_clips(clips[:1]).joints
    np.testing.assert_allclose(one, joints[0], atol=1e-5)
    two = compose.compose_clips(clips, blend=False)
    seg = two.joints[two.starts[1]:]  # the second clip, moved: a rotation about y plus a translation
    src = joints[1]
    np.testing.assert_allclose(seg[..., 1], src[..., 1] - src[..., 1].min() + seg[..., 1].min(), atol=1e-5)
    d_seg = np.linalg.norm(seg[:, None] - seg[:, :, None], axis=-1)
    d_src = np.linalg.norm(src[:, None] - src[:, :, None], axis=-1)
    np.testing.assert_allclose(d_seg, d_src, atol=1e-5)
    # it starts where the first clip ended (one root step on), not where it was captured
    gap = np.linalg.norm((seg[0, 0] - two.joints[two.starts[1] - 1, 0]) * [1, 0, 1])
    assert gap < 0.1 < np.linalg.norm((src[0, 0] - seg[0, 0]) * [1, 0, 1])


def test_every_take_used_once_without_n(takes):
    motions = list(compose.compose_bandai(ROOT, seed=1, sets=("set1",), min_s=10, max_s=120))
    used = defaultdict(int)
    for m in motions:
        assert 10.0 <= m.duration_s <= 120.0
        for a in m.annotations:
            used[a.extra["take"]] += 1
    set1 = {n for n in takes if n.startswith("dataset-1")}
    assert set(used) == set1
    assert sum(used.values()) - len(used) <= 5  # only the padding of each split's last sequence repeats
