"""The procedural corpus: plausibility (bones, ground, speeds, transitions), determinism, annotations,
paraphrase splits, and that each action is distinct and does what its name says."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import numpy as np
import pytest

from engine.corpus import synth
from engine.corpus.skeleton import FPS, JOINT_INDEX, bone_lengths
from engine.corpus.synth_actions import ActionParams
from engine.corpus.types import CorpusError

J = JOINT_INDEX
FAST_JOINTS = [J[n] for n in ("l_wrist", "r_wrist", "l_ankle", "r_ankle", "l_foot", "r_foot")]
BLEND_HALF_S = 0.35  # half of the longest blend: frames farther than this from a boundary are "inside"


@pytest.fixture(scope="module")
def tiny():
    return list(synth.generate("tiny", seed=0))


@pytest.fixture(scope="module")
def small():
    return list(synth.generate("small", seed=1))


def speeds(joints: np.ndarray, fps: float = FPS) -> np.ndarray:
    """(T, J, 3) -> (T-1, J) joint speeds in m/s."""
    return np.linalg.norm(np.diff(joints.astype(np.float64), axis=0), axis=-1) * fps


def facing_angle(joints: np.ndarray) -> np.ndarray:
    """(T,) heading of the body (0 = facing +z, positive = turned left), from hips and shoulders."""
    across = (joints[:, J["l_hip"]] - joints[:, J["r_hip"]]) + (joints[:, J["l_shoulder"]] - joints[:, J["r_shoulder"]])
    fwd = np.stack([-across[:, 2], across[:, 0]], axis=1)  # y x across, in (x, z)
    return np.unwrap(np.arctan2(fwd[:, 0], fwd[:, 1]))


def body_frame(joints: np.ndarray) -> np.ndarray:
    """Root-relative positions rotated so that each frame faces +z (T, J, 3)."""
    rel = joints.astype(np.float64) - joints[:, :1] * np.array([1.0, 0.0, 1.0])
    a = facing_angle(joints)
    c, s = np.cos(a)[:, None], np.sin(a)[:, None]
    out = rel.copy()
    out[..., 0] = c * rel[..., 0] - s * rel[..., 2]
    out[..., 2] = s * rel[..., 0] + c * rel[..., 2]
    return out


def check_plausible(joints: np.ndarray, where: str) -> None:
    bl = bone_lengths(joints.astype(np.float64))
    drift = (bl.max(0) - bl.min(0)) / bl.mean(0)
    assert drift.max() <= 0.01, f"{where}: bone length drift {drift.max():.4f}"
    assert joints[:, :, 1].min() >= -0.01, f"{where}: a joint {joints[:, :, 1].min():.3f} m below ground"
    v = speeds(joints)
    assert v[:, FAST_JOINTS].max() < 12.0, f"{where}: wrist/ankle speed {v[:, FAST_JOINTS].max():.1f} m/s"
    assert v.max() < 12.0, f"{where}: joint speed {v.max():.1f} m/s"
    assert v[:, 0].max() < 8.0, f"{where}: root speed {v[:, 0].max():.1f} m/s"


# --------------------------------------------------------------------------------------------- presets
def test_tiny_preset_shape(tiny):
    assert len(tiny) == synth.PRESETS["tiny"].n_motions == 12
    for i, m in enumerate(tiny):
        assert m.name == f"synth/0/{i:06d}" and m.source == "synth" and m.fps == FPS
        assert m.joints.dtype == np.float32 and m.joints.shape[1:] == (22, 3) and m.features is None
        assert 10.0 - 0.05 <= m.duration_s <= 30.0 + 0.05
        assert m.split in ("train", "val", "test")
        assert len(m.annotations) >= 1
    assert len({m.name for m in tiny}) == len(tiny)


def test_presets_sizes():
    sizes = {k: v.n_motions for k, v in synth.PRESETS.items()}
    assert sizes["tiny"] < sizes["small"] < sizes["demo"] < sizes["large"] < sizes["scale"]
    assert 300 <= sizes["demo"] <= 600 and sizes["scale"] >= 10_000
    assert synth.PRESETS["demo"].min_duration_s == 10.0 and synth.PRESETS["demo"].max_duration_s == 120.0


def test_scale_preset_streams_lazily():
    it = synth.generate("scale", seed=0)
    first = list(itertools.islice(it, 3))  # must not build 12,000 motions first
    assert [m.name for m in first] == [f"synth/0/{i:06d}" for i in range(3)]
    assert all(m.duration_s <= synth.PRESETS["scale"].max_duration_s + 0.05 for m in first)


def test_splits_roughly_70_10_20(small):
    c = Counter(m.split for m in small)
    assert c["train"] > c["test"] > c["val"] > 0, c
    big = Counter(m.split for m in synth.generate(dataclasses.replace(synth.PRESETS["tiny"], n_motions=300), seed=5))
    assert 0.6 < big["train"] / 300 < 0.8 and 0.05 < big["val"] / 300 < 0.16 and 0.13 < big["test"] / 300 < 0.28


# ------------------------------------------------------------------------------------------ plausibility
def test_bone_lengths_ground_and_speeds(tiny):
    for m in tiny:
        check_plausible(m.joints, m.name)


def test_feet_touch_the_ground(tiny):
    """Not floating: the lowest joint is on the ground except during jumps."""
    for m in tiny:
        low = m.joints[:, :, 1].min(axis=1)
        grounded = np.zeros(len(low), dtype=bool)
        for a in m.annotations:
            act = a.extra["action"]
            if synth.ACTIONS[act].group != "jump" and not act.startswith(("jog", "run")):
                grounded[int(np.ceil(a.start_s * m.fps)): int(a.end_s * m.fps)] = True
        if grounded.any():
            assert np.mean(low[grounded] < 0.01) > 0.9, m.name
        assert low.max() < 0.6, m.name


def test_no_jump_at_action_boundaries(tiny, small):
    """At every boundary between two actions no joint moves faster than the 99th percentile of the
    per-frame fastest-joint speed inside the actions of that motion."""
    n_checked = 0
    for m in tiny + small[:40]:
        v = speeds(m.joints).max(axis=1)  # (T-1,) fastest joint per frame step
        t_mid = (np.arange(len(v)) + 0.5) / m.fps
        cuts = sorted({round(x, 4) for a in m.annotations for x in (a.start_s, a.end_s)
                       if 0.1 < x < m.duration_s - 0.1})
        if not cuts:
            continue
        dist = np.min(np.abs(t_mid[:, None] - np.array(cuts)[None, :]), axis=1)
        inside = v[dist > BLEND_HALF_S]
        p99 = np.percentile(inside, 99)
        for c in cuts:
            near = v[np.abs(t_mid - c) <= 1.0 / m.fps]
            assert near.max() <= p99, f"{m.name}: {near.max():.2f} m/s at the boundary {c:.2f} s > p99 {p99:.2f}"
            n_checked += 1
    assert n_checked > 100


def test_blend_keeps_pose_continuous(tiny):
    """Frame-to-frame displacement anywhere is bounded (no teleport, not even inside a blend)."""
    for m in tiny:
        step = np.linalg.norm(np.diff(m.joints.astype(np.float64), axis=0), axis=-1)
        assert step.max() < 0.6, m.name  # < 12 m/s at 20 fps


# ------------------------------------------------------------------------------------------ determinism
def test_deterministic_by_seed():
    a = list(synth.generate("tiny", seed=3))
    b = list(synth.generate("tiny", seed=3))
    c = list(synth.generate("tiny", seed=4))
    for x, y in zip(a, b):
        assert x.name == y.name and x.split == y.split
        np.testing.assert_array_equal(x.joints, y.joints)
        assert [(q.text, q.start_s, q.end_s, q.extra) for q in x.annotations] == \
               [(q.text, q.start_s, q.end_s, q.extra) for q in y.annotations]
    assert any(x.joints.shape != z.joints.shape or not np.array_equal(x.joints, z.joints) for x, z in zip(a, c))


def test_motion_i_does_not_depend_on_n_motions():
    few = list(synth.generate(dataclasses.replace(synth.PRESETS["tiny"], n_motions=3), seed=2))
    many = list(itertools.islice(synth.generate("tiny", seed=2), 3))
    for x, y in zip(few, many):
        np.testing.assert_array_equal(x.joints, y.joints)


# ------------------------------------------------------------------------------------------ annotations
def test_annotations_inside_and_tile_the_motion(tiny, small):
    for m in tiny + small:
        anns = m.annotations
        for a in anns:
            assert 0.0 <= a.start_s < a.end_s <= m.duration_s + 1e-6, (m.name, a)
            assert a.extra["action"] in synth.ACTIONS and a.text in synth.ACTIONS[a.extra["action"]].all_texts
            assert a.duration_s >= 0.5 - 1e-6
        # consecutive, non-overlapping; only short unannotated settling pads at the ends
        for a, b in zip(anns, anns[1:]):
            assert abs(a.end_s - b.start_s) < 1e-6, m.name
        covered = sum(a.duration_s for a in anns)
        assert covered >= 0.8 * m.duration_s and covered <= m.duration_s + 1e-6


def test_relative_lengths_from_1_to_99_percent():
    cfg = dataclasses.replace(synth.PRESETS["demo"], n_motions=120)
    rel = np.array([a.duration_s / m.duration_s for m in synth.generate(cfg, seed=0) for a in m.annotations])
    assert rel.min() <= 0.012 and rel.max() >= 0.95 and rel.max() <= 0.995
    assert np.mean(rel < 0.05) > 0.1 and np.mean(rel > 0.5) > 0.02  # a real mix of short and long moments


def test_repeated_and_similar_actions_within_motions(small):
    repeated = similar = 0
    for m in small:
        acts = [a.extra["action"] for a in m.annotations if a.extra["action"] != "idle"]
        repeated += len(acts) != len(set(acts))
        groups = [synth.ACTIONS[x].group for x in acts]
        similar += any(g1 == g2 for g1, g2 in zip(groups, groups[1:]))
    assert repeated >= 10 and similar >= 10


def test_sitting_follows_the_posture_state_machine(small):
    for m in small:
        acts = [a.extra["action"] for a in m.annotations]
        for x, y in zip(acts, acts[1:]):
            if x in ("sit_down", "sit_still"):
                assert y in ("sit_still", "stand_up"), (m.name, acts)
            if y in ("sit_still", "stand_up"):
                assert x in ("sit_down", "sit_still"), (m.name, acts)


# -------------------------------------------------------------------------------------- actions, texts
REQUIRED = ["walk_forward", "walk_slow", "walk_fast", "walk_backward", "walk_left", "walk_right", "jog_forward",
            "run_forward", "run_fast", "turn_left", "turn_right", "jump_in_place", "jump_forward", "kick_left",
            "kick_right", "punch_left", "punch_right", "wave_left", "wave_right", "wave_both", "raise_left_hand",
            "raise_right_hand", "raise_both_hands", "squat", "sit_down", "stand_up", "bow", "clap", "spin", "crawl",
            "throw", "balance_left_leg", "balance_right_leg", "stretch", "dance", "kung_fu_pose", "idle"]


def test_action_table():
    assert len(synth.ACTIONS) >= 40
    assert set(REQUIRED) <= set(synth.ACTIONS)
    seen: dict[str, str] = {}
    for name, spec in synth.ACTIONS.items():
        assert len(spec.texts) >= 3 and len(spec.test_texts) >= 1, name
        assert not set(spec.texts) & set(spec.test_texts), name
        for t in spec.all_texts:
            assert t.strip() == t and t, name
            assert t not in seen, f"{t!r} used by {seen.get(t)} and {name}"
            seen[t] = name
        assert 0.5 <= spec.dur_s[0] <= spec.dur_s[1]
    assert any("kung fu" in t for t in synth.ACTIONS["kung_fu_pose"].all_texts)
    assert any("right hand" in t for t in synth.action_texts("wave_right", "train"))


def test_action_texts_splits():
    assert synth.action_texts("wave_right", "train") == synth.ACTIONS["wave_right"].texts
    assert synth.action_texts("wave_right", "val") == synth.ACTIONS["wave_right"].texts
    assert synth.action_texts("wave_right", "test") == synth.ACTIONS["wave_right"].test_texts
    assert set(synth.action_texts("wave_right", "all")) == set(synth.ACTIONS["wave_right"].all_texts)
    with pytest.raises(CorpusError, match="unknown action"):
        synth.action_texts("moonwalk")
    with pytest.raises(CorpusError, match="text split"):
        synth.action_texts("clap", "dev")


def test_held_out_paraphrases_only_in_test_motions(small):
    held_out = {t for s in synth.ACTIONS.values() for t in s.test_texts}
    n_test_heldout = 0
    for m in small:
        for a in m.annotations:
            if m.split != "test":
                assert a.text not in held_out, (m.name, m.split, a.text)
            else:
                n_test_heldout += a.text in held_out
    assert n_test_heldout > 0


def test_bad_config_is_refused():
    with pytest.raises(CorpusError, match="unknown preset"):
        next(synth.generate("huge"))
    with pytest.raises(CorpusError, match="durations"):
        next(synth.generate(dataclasses.replace(synth.PRESETS["tiny"], min_duration_s=40.0)))
    with pytest.raises(CorpusError, match="unknown action"):
        synth.action_motion("moonwalk")


# -------------------------------------------------------------------------------- every action alone
@pytest.mark.parametrize("name", list(synth.ACTIONS))
def test_every_action_alone_is_plausible(name):
    spec = synth.ACTIONS[name]
    for seed, dur in ((0, spec.dur_s[0]), (1, spec.dur_s[1]), (2, None)):
        m = synth.action_motion(name, seed=seed, duration_s=dur, noise_deg=1.2)
        check_plausible(m.joints, f"{name} seed {seed} {m.duration_s:.1f}s")
        assert m.annotations[0].extra["action"] == name


def _descriptor(m) -> np.ndarray:
    """Mean and spread of the body-frame pose (scaled to a common body size), its change from the first
    to the last third, mean joint speeds relative to the root, body-frame root velocity, yaw rate, root
    height and its spread, and time off the ground."""
    size = bone_lengths(m.joints[:1].astype(np.float64)).sum() / 7.0  # ~1 for an adult
    b = body_frame(m.joints) / size  # (T, J, 3)
    root = m.joints[:, 0].astype(np.float64)
    heading = facing_angle(m.joints)
    d = np.diff(root, axis=0) * m.fps
    c, s = np.cos(heading[:-1]), np.sin(heading[:-1])
    v_body = np.stack([c * d[:, 0] - s * d[:, 2], s * d[:, 0] + c * d[:, 2]], axis=1)  # (x left, z forward)
    yaw_rate = np.diff(heading) * m.fps
    third = len(b) // 3
    change = b[-third:].mean(0) - b[:third].mean(0)  # time-asymmetric (sit down vs stand up)
    joint_speed = np.linalg.norm(np.diff(b, axis=0), axis=-1).mean(0) * m.fps  # (J,)
    lowest = m.joints[:, :, 1].min(axis=1)
    return np.concatenate([b.mean(0).ravel(), b.std(0).ravel(), 0.5 * change.ravel(), 0.2 * joint_speed,
                           1.0 * v_body.mean(0), [0.5 * yaw_rate.mean(), 0.5 * np.abs(yaw_rate).mean()],
                           [root[:, 1].mean(), 2.0 * root[:, 1].std(), 2.0 * lowest.mean(), lowest.max()]])


def _varied(name: str, seed: int, variant: float = 0.3):
    """An action with random subject, tempo, amplitude, phase and noise, in one style (`variant`: e.g.
    the knee lifted in front or the leg stretched back when balancing) and with the free side fixed to
    the right (a left-handed throw is a mirror image of the same action)."""
    rng = np.random.default_rng(seed)
    spread = 0.07 if synth.ACTIONS[name].gait else 0.1  # as the planner draws them
    p = ActionParams(speed=float(rng.uniform(1 - spread, 1 + spread)), amp=float(rng.uniform(0.85, 1.1)),
                     side=-1, variant=variant, phase0=float(rng.random()))
    return synth.action_motion(name, seed=seed, params=p, noise_deg=1.0, duration_s=synth.ACTIONS[name].dur_s[1])


def test_each_action_is_distinct_in_joint_space():
    """Nearest neighbour over actions: an action rendered with another subject / tempo / amplitude is
    closer to itself than to any other action."""
    names = list(synth.ACTIONS)
    for variant, (seed_ref, seed_probe) in ((0.3, (10, 11)), (0.9, (30, 31))):
        ref = np.stack([_descriptor(_varied(n, seed_ref, variant)) for n in names])
        probe = np.stack([_descriptor(_varied(n, seed_probe, variant)) for n in names])
        dist = np.linalg.norm(probe[:, None] - ref[None], axis=-1)  # (probe, ref)
        wrong = [(names[i], names[int(dist[i].argmin())]) for i in range(len(names)) if dist[i].argmin() != i]
        assert not wrong, f"confused (probe, nearest): {wrong}"
        off = dist[~np.eye(len(names), dtype=bool)]
        assert off.min() > 0.1, "two actions have nearly the same descriptor"


def _alone(name: str, dur: float | None = None, **kw):
    """One action with default tempo / amplitude on the base subject."""
    return synth.action_motion(name, seed=0, params=ActionParams(**kw), subject=synth.Subject(), duration_s=dur)


def _travel(m) -> np.ndarray:
    """Root displacement in the starting body frame (x left, z forward)."""
    a0 = facing_angle(m.joints)[0]
    d = (m.joints[-1, 0] - m.joints[0, 0]).astype(np.float64)
    c, s = np.cos(a0), np.sin(a0)
    return np.array([c * d[0] - s * d[2], s * d[0] + c * d[2]])


def test_locomotion_goes_where_it_says():
    dur = 6.0
    speed = {}
    for name in ("walk_slow", "walk_forward", "walk_fast", "jog_forward", "run_forward", "run_fast"):
        m = synth.action_motion(name, seed=0, params=ActionParams(), subject=synth.Subject(), duration_s=dur)
        x, z = _travel(m)
        assert z > 0 and abs(x) < 0.1 * z, (name, x, z)
        speed[name] = z / dur
    assert list(speed.values()) == sorted(speed.values()), speed
    for name, sign_x, sign_z in (("walk_backward", 0, -1), ("jog_backward", 0, -1), ("walk_left", 1, 0),
                                 ("walk_right", -1, 0), ("jog_left", 1, 0), ("jog_right", -1, 0)):
        m = synth.action_motion(name, seed=0, params=ActionParams(), subject=synth.Subject(), duration_s=dur)
        x, z = _travel(m)
        main, other = (x, z) if sign_x else (z, x)
        assert main * (sign_x or sign_z) > 1.5 and abs(other) < 0.2 * abs(main), (name, x, z)


def test_turns_and_spin():
    for name, sign in (("turn_left", 1), ("turn_right", -1)):
        m = synth.action_motion(name, seed=0, params=ActionParams(variant=0.2), subject=synth.Subject())
        turned = np.degrees(facing_angle(m.joints)[-1] - facing_angle(m.joints)[0])
        assert abs(turned - sign * 90) < 12, (name, turned)
        assert np.linalg.norm(_travel(m)) < 0.2
    m = synth.action_motion("spin", seed=0, params=ActionParams(variant=0.2), subject=synth.Subject())
    assert abs(abs(np.degrees(facing_angle(m.joints)[-1] - facing_angle(m.joints)[0])) - 360) < 15


def test_actions_do_what_their_names_say():
    y = 1
    # jumps leave the ground
    m = synth.action_motion("jump_in_place", params=ActionParams(), subject=synth.Subject(), duration_s=2.2)
    assert m.joints[:, :, y].min(axis=1).max() > 0.08 and np.linalg.norm(_travel(m)) < 0.2
    m = synth.action_motion("jump_forward", params=ActionParams(), subject=synth.Subject(), duration_s=2.5)
    assert m.joints[:, :, y].min(axis=1).max() > 0.08 and _travel(m)[1] > 1.0
    # kicks lift one foot high, the other stays down
    for side, other in (("right", "left"), ("left", "right")):
        s, o = side[0], other[0]
        b = body_frame(_alone(f"kick_{side}").joints)
        assert b[:, J[f"{s}_ankle"], y].max() > 0.6 and b[:, J[f"{o}_ankle"], y].max() < 0.15
        b = body_frame(_alone(f"punch_{side}").joints)
        reach = b[:, J[f"{s}_wrist"], 2].max()
        assert reach > 0.45 and reach > b[:, J[f"{o}_wrist"], 2].max() + 0.1
        b = body_frame(_alone(f"wave_{side}").joints)
        up = b[:, J[f"{s}_wrist"], y] > b[:, J[f"{s}_shoulder"], y]
        assert up.mean() > 0.5 and not (b[:, J[f"{o}_wrist"], y] > b[:, J[f"{o}_shoulder"], y]).any()
        lateral = b[up, J[f"{s}_wrist"], 0]
        assert lateral.max() - lateral.min() > 0.1  # the hand moves side to side
        b = body_frame(_alone(f"raise_{side}_hand").joints)
        assert (b[:, J[f"{s}_wrist"], y] - b[:, J["head"], y]).max() > 0.25
        assert (b[:, J[f"{o}_wrist"], y] < b[:, J[f"{o}_shoulder"], y]).all()
        b = body_frame(_alone(f"balance_{side}_leg", variant=0.2).joints)
        mid = slice(len(b) // 3, 2 * len(b) // 3)
        assert b[mid, J[f"{o}_ankle"], y].min() > 0.15 and b[mid, J[f"{s}_ankle"], y].max() < 0.12
    b = body_frame(_alone("raise_both_hands").joints)
    assert ((b[:, [J["l_wrist"], J["r_wrist"]], y].min(axis=1) - b[:, J["head"], y]).max() > 0.25)
    # squat, sit, crawl, bow lower the body
    stand = _alone("idle").joints[:, 0, y].mean()
    assert _alone("squat").joints[:, 0, y].min() < 0.65 * stand
    sit = _alone("sit_down").joints
    assert sit[-1, 0, y] < 0.65 * stand and sit[0, 0, y] > 0.95 * stand
    up = _alone("stand_up").joints
    assert up[0, 0, y] < 0.65 * stand and up[-1, 0, y] > 0.95 * stand
    crawl = _alone("crawl", dur=8.0).joints
    mid = crawl[len(crawl) // 3: 2 * len(crawl) // 3]
    assert mid[:, J["head"], y].max() < 0.8 and _travel(_alone("crawl", dur=8.0))[1] > 0.8
    b = body_frame(_alone("bow").joints)
    assert b[:, J["head"], 2].max() > 0.3 and b[:, J["head"], y].min() < b[0, J["head"], y] - 0.2
    # clap: the hands meet in front of the chest and part again
    b = body_frame(_alone("clap").joints)
    gap = np.linalg.norm(b[:, J["l_wrist"]] - b[:, J["r_wrist"]], axis=-1)
    assert gap.min() < 0.08 and gap[len(gap) // 4: -len(gap) // 4].max() > 0.25
    assert b[np.argmin(gap), J["l_wrist"], 2] > 0.15
    # kung fu pose: a wide low stance with one arm struck out
    for variant in (0.2, 0.9):
        k = _alone("kung_fu_pose", variant=variant, dur=5.0).joints
        b = body_frame(k)
        mid = len(k) // 2
        assert k[mid, 0, y] < stand - 0.15
        assert np.linalg.norm(k[mid, J["l_ankle"]] - k[mid, J["r_ankle"]]) > 0.45
        reach = np.linalg.norm(b[mid, [J["l_wrist"], J["r_wrist"]]] - b[mid, J["spine3"]], axis=-1).max()
        assert reach > 0.5
    # idle is still
    assert speeds(_alone("idle").joints).max() < 0.5


# ---------------------------------------------------------------------------------------------- store
def test_tiny_corpus_goes_into_the_store(tmp_path):
    from engine.corpus.store import CorpusStore

    store = CorpusStore.open(tmp_path / "corpus")
    try:
        rep = store.add_motions(itertools.islice(synth.generate("tiny", seed=0), 4))
        assert rep.added == 4 and rep.bad == []
        again = store.add_motions(itertools.islice(synth.generate("tiny", seed=0), 4))
        assert again.added == 0 and again.skipped_existing == 4  # idempotent: same seed, same content
        ids = store.motion_ids()
        m = store.get_motion(ids[0])
        assert m.features.shape == (m.n_frames - 1, 263) and np.isfinite(m.features).all()
        assert m.annotations and m.annotations[0].extra["action"] in synth.ACTIONS
    finally:
        store.close()
