"""HumanML3D 263-dim features: golden test against the released sample, round trips, oracles, bad input.

Golden tolerances. The released arrays are float32 and upstream computes its quaternion maths in
float32 (torch); we compute in float64 from the float32 joints. Positions and velocities are O(1 m),
so float32 round-off through a handful of operations is ~1e-7: we allow 2e-6 (root, ric, local
velocities, recovered joints). The 6D rotations come from bone *directions*: a ~1e-7 m position error
on a ~0.1 m bone tilts it by ~1e-6 rad, and the local rotations compose up to five of them, so we
allow 2e-5. Foot contacts are thresholds on displacements far from the threshold here: exact.

Off-by-one: HumanML3D saves ``new_joints = recover_from_ric(new_joint_vecs)``, one frame per feature
row, so both arrays have 170 rows; the source motion had 171 frames. From the 170 given frames we get
169 rows. They match the first 169 released rows except near the end, because the root facing is a
Gaussian-smoothed (sigma 20, radius 80 frames) forward direction and the 171st frame is missing from
the window. Row 169's velocities give that frame back exactly
(``p[170] = p[169] + R(-yaw[169]) local_vel[169]``), and with it all 170 rows match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.corpus import features as fm
from engine.corpus.features import (
    FEATURE_BLOCKS,
    FOOT_CONTACT,
    LOCAL_VEL,
    RIC,
    ROOT_ANG_VEL,
    ROOT_HEIGHT,
    ROOT_LIN_VEL,
    ROT6D,
    cont6d_to_matrix,
    features_to_joints,
    joint_recover,
    joints_to_features,
    mirror_joints,
    recover_root,
    skeleton_offsets,
    uniform_skeleton,
)
from engine.corpus.skeleton import KINEMATIC_CHAIN, RAW_OFFSETS, bone_lengths, mirror_permutation
from engine.corpus.types import CorpusError

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "humanml3d-sample"
POS_TOL = 2e-6
ROT_TOL = 2e-5
BLOCK_TOL = {
    "root_ang_vel": POS_TOL, "root_lin_vel": POS_TOL, "root_height": POS_TOL, "ric": POS_TOL,
    "rot6d": ROT_TOL, "local_vel": POS_TOL, "foot_contact": 0.0,
}


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    joints_path = SAMPLE / "new_joints" / "012314.npy"
    vecs_path = SAMPLE / "new_joint_vecs" / "012314.npy"
    if not joints_path.exists() or not vecs_path.exists():
        pytest.skip(f"HumanML3D sample not found under {SAMPLE} (../shared/data beside the clone)")
    joints, vecs = np.load(joints_path), np.load(vecs_path)
    assert joints.shape == (170, 22, 3) and vecs.shape == (170, 263)
    return joints, vecs


def _rest_pose(bone_m: float = 0.15, collar_scale: float = 1.5) -> np.ndarray:
    """(22, 3) rest pose facing +z: bones along RAW_OFFSETS, root at the origin.

    ``collar_scale`` > 1 puts the shoulders wider apart than the hips, as on a human body (upstream's
    hip-swapped facing needs it); 1 makes them equally wide (facing undefined upstream).
    """
    pose = np.zeros((22, 3))
    for chain in KINEMATIC_CHAIN:
        for i in range(1, len(chain)):
            scale = collar_scale if chain[i] in (13, 14) else 1.0
            pose[chain[i]] = pose[chain[i - 1]] + RAW_OFFSETS[chain[i]] * bone_m * scale
    return pose


def _yaw_matrix(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _block_errors(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    return {name: float(np.abs(got[:, s].astype(np.float64) - want[:, s]).max()) for name, s in FEATURE_BLOCKS}


# ------------------------------------------------------------------------------------------------
# Golden


def test_golden_recover_joints_from_features(sample):
    joints, vecs = sample
    rec = features_to_joints(vecs)
    assert rec.shape == (170, 22, 3) and rec.dtype == np.float32
    assert np.abs(rec - joints).max() < POS_TOL


def test_golden_features_from_joints_block_by_block(sample):
    joints, vecs = sample
    got = joints_to_features(joints)
    assert got.shape == (169, 263) and got.dtype == np.float32
    # Rows whose smoothing window (radius 80) does not reach the missing 171st frame: all blocks tight.
    head = slice(0, 169 - 81)
    errs = _block_errors(got[head], vecs[head])
    for name, err in errs.items():
        assert err <= BLOCK_TOL[name], (name, err)
    # Near the end the smoothed facing differs slightly (the missing frame): small but not round-off.
    tail = _block_errors(got, vecs[:169])
    assert tail["ric"] < 0.02 and tail["rot6d"] < 0.05 and tail["root_ang_vel"] < 1e-3
    assert tail["root_height"] <= POS_TOL and tail["foot_contact"] == 0.0


def test_golden_all_rows_with_the_missing_frame_restored(sample):
    joints, vecs = sample
    traj = recover_root(vecs)
    yaw = 2.0 * np.arctan2(traj.rot_quat[169, 2], traj.rot_quat[169, 0])  # world -> facing yaw angle
    vel = vecs[169, LOCAL_VEL].astype(np.float64).reshape(22, 3)
    last = joints[169] + vel @ _yaw_matrix(-yaw).T
    full = np.concatenate([joints.astype(np.float64), last[None]])  # (171, 22, 3)
    got = joints_to_features(full)
    assert got.shape == (170, 263)
    errs = _block_errors(got, vecs)
    for name, err in errs.items():
        assert err <= BLOCK_TOL[name], (name, err)
    assert np.array_equal(got[:, FOOT_CONTACT], vecs[:, FOOT_CONTACT])


def test_golden_joint_recover_matches_blocks(sample):
    _, vecs = sample
    jr = joint_recover(vecs)
    assert jr.shape == (170, 22, 12) and jr.dtype == np.float32
    joints = features_to_joints(vecs)
    np.testing.assert_allclose(jr[:, 0, 6:9], joints[:, 0], atol=1e-6)  # root position
    np.testing.assert_array_equal(jr[0, 0, 0:6], [1, 0, 0, 0, 1, 0])  # frame 0 root yaw is 0
    np.testing.assert_array_equal(jr[:, 1:, 0:6].reshape(170, -1), vecs[:, ROT6D])
    np.testing.assert_array_equal(jr[:, 1:, 6:9].reshape(170, -1), vecs[:, RIC])
    np.testing.assert_array_equal(jr[:, :, 9:12].reshape(170, -1), vecs[:, LOCAL_VEL])
    # Root 6D is a pure yaw: its first column has no y part, its second column is +y.
    np.testing.assert_allclose(jr[:, 0, 1], 0.0, atol=1e-7)
    np.testing.assert_allclose(jr[:, 0, 3:6], np.tile([0.0, 1.0, 0.0], (170, 1)), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Round trips and invariances


def test_round_trip_rotated_translated_motion(sample):
    joints, _ = sample
    base = joints.astype(np.float64)  # canonical already: floor 0, origin, frame 0 faces +z
    moved = base @ _yaw_matrix(2.3).T + np.array([4.0, 0.7, -1.5])
    feats = joints_to_features(moved)
    # Features are invariant to the motion's placement; joints come back canonicalised.
    assert np.abs(feats - joints_to_features(base)).max() < 1e-6
    rec = features_to_joints(feats)
    assert rec.shape == (169, 22, 3)
    assert np.abs(rec - base[:-1]).max() < POS_TOL
    # ... and the original placement is recovered by undoing the canonical transform.
    back = rec.astype(np.float64) @ _yaw_matrix(2.3).T + np.array([4.0, 0.7, -1.5])
    assert np.abs(back - moved[:-1]).max() < 1e-5


def test_round_trip_synthetic_walk_with_turn():
    """A non-trivial motion unrelated to the sample: a skeleton walking along an arc while turning."""
    rng = np.random.default_rng(0)
    n_frames = 120
    rest = _rest_pose()
    t = np.arange(n_frames) / 20.0
    heading = 0.8 * t + 0.3  # radians, turning left
    root = np.stack([np.cumsum(0.05 * np.sin(heading)), 0.9 + 0.02 * np.sin(6 * t),
                     np.cumsum(0.05 * np.cos(heading))], axis=-1)
    joints = np.zeros((n_frames, 22, 3))
    wobble = 0.15 * rng.standard_normal((22, 3))
    for f in range(n_frames):
        rot = _yaw_matrix(heading[f])
        pose = rest + wobble * np.sin(3 * t[f] + np.arange(22))[:, None] * 0.1
        pose[0] = 0.0
        joints[f] = pose @ rot.T + root[f]
    feats = joints_to_features(joints)
    rec = features_to_joints(feats).astype(np.float64)
    # Recovered = canonical(joints)[:-1]: relative shapes preserved, frame 0 at the origin facing +z.
    np.testing.assert_allclose(bone_lengths(rec), bone_lengths(joints[:-1]), atol=1e-5)
    np.testing.assert_allclose(rec[0, 0, [0, 2]], 0.0, atol=1e-6)
    np.testing.assert_allclose(rec[..., 1], joints[:-1, :, 1] - joints[..., 1].min(), atol=1e-5)  # floor
    # Relative trajectory: distances between root positions are placement-invariant.
    d_rec = np.linalg.norm(rec[1:, 0, [0, 2]] - rec[:-1, 0, [0, 2]], axis=-1)
    d_in = np.linalg.norm(joints[1:-1, 0, [0, 2]] - joints[:-2, 0, [0, 2]], axis=-1)
    np.testing.assert_allclose(d_rec, d_in, atol=1e-5)
    # Pairwise joint distances within each frame are preserved exactly (rigid transform).
    np.testing.assert_allclose(np.linalg.norm(rec[:, 21] - rec[:, 10], axis=-1),
                               np.linalg.norm(joints[:-1, 21] - joints[:-1, 10], axis=-1), atol=1e-5)


def test_rot6d_block_drives_forward_kinematics(sample):
    """recover_from_rot oracle: FK of the 6D rotations on the motion's offsets gives the ric joints."""
    joints, _ = sample
    feats = joints_to_features(joints).astype(np.float64)
    offsets = skeleton_offsets(joints[0])
    traj = recover_root(feats)
    quat = traj.rot_quat.astype(np.float64)
    root_mat = fm._quat_to_matrix(quat)  # (T, 3, 3)
    local = cont6d_to_matrix(feats[:, ROT6D].reshape(-1, 21, 6))  # (T, 21, 3, 3)
    # 6D decodes to proper rotations.
    np.testing.assert_allclose(local @ local.swapaxes(-1, -2), np.broadcast_to(np.eye(3), local.shape), atol=1e-5)
    fk = np.zeros((len(feats), 22, 3))
    fk[:, 0] = traj.root_pos
    for chain in KINEMATIC_CHAIN:
        rot = root_mat
        for i in range(1, len(chain)):
            rot = rot @ local[:, chain[i] - 1]
            fk[:, chain[i]] = (rot @ offsets[chain[i]]) + fk[:, chain[i - 1]]
    assert np.abs(fk - features_to_joints(feats)).max() < 1e-4


def test_mirror_joints_is_an_involution_and_mirrors_features(sample):
    joints, _ = sample
    mir = mirror_joints(joints)
    assert mir.dtype == joints.dtype
    np.testing.assert_array_equal(mirror_joints(mir), joints)
    np.testing.assert_array_equal(mir[:, 1, 0], -joints[:, 2, 0])  # l_hip <- mirrored r_hip
    f, fm_ = joints_to_features(joints), joints_to_features(mir)
    np.testing.assert_allclose(fm_[:, ROOT_ANG_VEL], -f[:, ROOT_ANG_VEL], atol=1e-6)
    np.testing.assert_allclose(fm_[:, ROOT_LIN_VEL], f[:, ROOT_LIN_VEL] * [-1, 1], atol=1e-6)
    np.testing.assert_array_equal(fm_[:, ROOT_HEIGHT], f[:, ROOT_HEIGHT])
    ric, ric_m = f[:, RIC].reshape(-1, 21, 3), fm_[:, RIC].reshape(-1, 21, 3)
    perm = mirror_permutation()[1:] - 1
    np.testing.assert_allclose(ric_m, ric[:, perm] * [-1, 1, 1], atol=1e-6)
    np.testing.assert_array_equal(fm_[:, FOOT_CONTACT], f[:, FOOT_CONTACT][:, [2, 3, 0, 1]])


# ------------------------------------------------------------------------------------------------
# Options, fast paths and edge cases


def test_uniform_skeleton_retargets_bone_lengths(sample):
    joints, _ = sample
    same = uniform_skeleton(joints, skeleton_offsets(joints[0]))
    assert np.abs(same - joints).max() < 1e-5  # already on that skeleton
    big = uniform_skeleton(joints, skeleton_offsets(joints[0]) * 1.25)
    np.testing.assert_allclose(bone_lengths(big), bone_lengths(joints) * 1.25, atol=1e-5)
    np.testing.assert_allclose(big[:, 0], joints[:, 0] * 1.25, atol=1e-6)
    feats = joints_to_features(joints, target_offsets=skeleton_offsets(joints[0]) * 1.25)
    np.testing.assert_allclose(feats[:, ROOT_HEIGHT], joints[:-1, 0, 1:2] * 1.25, atol=1e-4)
    np.testing.assert_allclose(feats[:, ROT6D], joints_to_features(joints)[:, ROT6D], atol=1e-4)


def test_chunked_matches_single_block(sample, monkeypatch):
    joints, vecs = sample
    whole = joints_to_features(joints)
    whole_rec = features_to_joints(vecs)
    monkeypatch.setattr(fm, "_CHUNK_FRAMES", 7)
    np.testing.assert_array_equal(joints_to_features(joints), whole)
    np.testing.assert_array_equal(features_to_joints(vecs), whole_rec)


def test_batched_recovery_matches_per_motion(sample):
    _, vecs = sample
    batch = np.stack([vecs[:100], vecs[50:150]])  # (2, 100, 263)
    rec = features_to_joints(batch)
    jr = joint_recover(batch)
    assert rec.shape == (2, 100, 22, 3) and jr.shape == (2, 100, 22, 12)
    for b, part in enumerate((vecs[:100], vecs[50:150])):
        np.testing.assert_array_equal(rec[b], features_to_joints(part))
        np.testing.assert_array_equal(jr[b], joint_recover(part))
    rot_quat, root_pos = recover_root(batch)
    assert rot_quat.shape == (2, 100, 4) and root_pos.shape == (2, 100, 3)


def test_qbetween_degenerate_cases_are_finite_rotations():
    v0 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.4, 0.0]])
    v1 = np.array([[0.0, 1.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    q = fm._qbetween(v0, v1)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0)
    rotated = fm._qrot(q, v0)
    unit = v1 / np.linalg.norm(v1, axis=-1, keepdims=True)
    for i in (0, 1, 3):  # opposite, opposite, generic: v0 lands on v1's direction
        np.testing.assert_allclose(rotated[i] / np.linalg.norm(rotated[i]), unit[i], atol=1e-12)
    np.testing.assert_allclose(q[2], [1, 0, 0, 0])  # zero vector: identity


def test_two_frames_is_enough():
    joints = np.stack([_rest_pose(), _rest_pose()])  # (2, 22, 3), rest pose faces +z
    joints[1, :, 2] += 0.05  # one step forward
    feats = joints_to_features(joints)
    assert feats.shape == (1, 263) and np.isfinite(feats).all()
    np.testing.assert_allclose(feats[0, ROOT_LIN_VEL], [0.0, 0.05], atol=1e-7)


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((10, 21, 3)), "shape"),
        (np.zeros((10, 66)), "shape"),
        (np.zeros((1, 22, 3)), "at least 2 frames"),
    ],
)
def test_bad_joint_shapes(array, problem):
    with pytest.raises(CorpusError, match=problem):
        joints_to_features(array, where="motion 'x'")


def test_nan_joints_named(sample):
    joints, _ = sample
    bad = joints.copy()
    bad[5, 3, 1] = np.nan
    with pytest.raises(CorpusError, match=r"motion 'clip'.*NaN/inf.*frame 5, joint 3"):
        joints_to_features(bad, where="motion 'clip'")


def test_degenerate_facing_raises():
    with pytest.raises(CorpusError, match="facing direction at frame 0"):
        joints_to_features(np.zeros((5, 22, 3)))
    # Hips exactly as wide as shoulders: upstream's hip-swapped across vector vanishes.
    flat = np.stack([_rest_pose(collar_scale=1.0)] * 3)
    with pytest.raises(CorpusError, match="motion 'flat'.*facing direction"):
        joints_to_features(flat, where="motion 'flat'")
    assert np.isfinite(joints_to_features(flat, upstream_facing=False)).all()


def test_wide_hips_warn_and_fixed_facing_is_forward(caplog):
    wide = np.stack([_rest_pose(collar_scale=0.5)] * 4)  # shoulders narrower than hips
    wide[:, :, 2] += np.arange(4)[:, None] * 0.05  # walk forward
    with caplog.at_level("WARNING", logger="engine.corpus.features"):
        up = joints_to_features(wide)
    assert "points backwards" in caplog.text
    fixed = joints_to_features(wide, upstream_facing=False)
    np.testing.assert_allclose(fixed[:, ROOT_LIN_VEL], [[0.0, 0.05]] * 3, atol=1e-7)  # forward = +z
    np.testing.assert_allclose(up[1:, ROOT_LIN_VEL], [[0.0, -0.05]] * 2, atol=1e-7)  # 180 deg off
    for feats in (up, fixed):  # both stay invertible
        np.testing.assert_allclose(features_to_joints(feats), wide[:-1] - wide[0, 0] * [1, 0, 1]
                                   - [0, wide[..., 1].min(), 0], atol=1e-6)


def test_bad_features():
    with pytest.raises(CorpusError, match="shape"):
        features_to_joints(np.zeros((10, 262)))
    with pytest.raises(CorpusError, match="shape"):
        joint_recover(np.zeros(263))
    bad = np.zeros((4, 263))
    bad[2, 7] = np.inf
    with pytest.raises(CorpusError, match="NaN/inf"):
        recover_root(bad)
    with pytest.raises(CorpusError, match="shape"):
        mirror_joints(np.zeros((3, 21, 3)))
