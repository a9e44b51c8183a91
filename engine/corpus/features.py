"""The HumanML3D 263-dim motion representation: joints <-> features.

A faithful, vectorised numpy port of HumanML3D's ``process_file`` / ``recover_from_ric``
(EricGuo5513/HumanML3D ``motion_representation.ipynb``, ``common/skeleton.py``,
``common/quaternion.py``, ``paramUtil.py``). Quaternions are ``(w, x, y, z)`` Hamilton quaternions,
as upstream. Computation is float64 internally (upstream runs its quaternion maths in float32 through
torch); every public function returns float32.

Feature layout of one row (frame t, for t = 0 .. T-2 of a T-frame motion):

=========  ==========================================================================
[0]        root angular velocity about y (the *half* angle, ``arcsin`` of the y component of
           ``r_rot[t+1] * r_rot[t]^-1``; upstream convention, kept so that features are
           interchangeable with HumanML3D's)
[1:3]      root linear velocity in xz, in the facing frame of t+1
[3]        root height y
[4:67]     ric: joints 1..21 relative to the root's xz, rotated into the root's facing frame
[67:193]   6D rotations of joints 1..21 (first two columns of each local rotation matrix)
[193:259]  velocities of all 22 joints (``p[t+1] - p[t]``) rotated into the facing frame of t
[259:263]  foot contacts (l_ankle, l_foot, r_ankle, r_foot): squared displacement < ``feet_thre``
=========  ==========================================================================

Upstream quirks reproduced on purpose (so that our features match HumanML3D's):

- ``Skeleton.inverse_kinematics_np`` unpacks the face joints as ``l_hip, r_hip, ...`` while they are
  given as ``r_hip, l_hip, ...`` (HumanML3D issues #55, #107, #112): the across-body vector used for
  the per-frame root rotation is ``(l_hip - r_hip) + (r_shoulder - l_shoulder)``, whereas the frame-0
  facing normalisation uses ``(r_hip - l_hip) + (r_shoulder - l_shoulder)``. The per-frame forward
  direction is then smoothed with a Gaussian (sigma 20 frames, ``mode='nearest'``). The swapped
  vector points forward only while the shoulder joints are wider apart than the hips (true of SMPL
  bodies); ``joints_to_features(upstream_facing=False)`` uses the intended vector instead.
- The arm chains start at spine3 (joint 9) but the inverse kinematics starts them from the *root*
  rotation, so the local rotations of the collars (13, 14) are relative to the root's facing
  rotation, not to spine3's rotation.
- The root rotation of frame 0 is set to the identity (``root_quat[0] = [1, 0, 0, 0]`` in the
  ``inverse_kinematics_np`` that produced the released data; some copies of the repository have that
  line commented out, but the released features only match with it). Frame 0 is already facing +z by
  the canonicalisation, and recovery (``recover_from_ric``) assumes exactly this, so joints ->
  features -> joints is exact. Root rotations of frames >= 1 come from the smoothed forward, so row
  0's angular velocity and ric/rot/vel of row 0 use the unsmoothed frame-0 facing.

Deviations, only where upstream would produce NaN: a bone pointing exactly opposite to its rest
direction gets a 180-degree rotation about an axis perpendicular to it; a zero-length bone gets the
identity rotation. HumanML3D's ``uniform_skeleton`` retargeting is optional (``target_offsets``);
by default each motion keeps its own bone lengths.

The per-frame stages are computed in blocks of ``_CHUNK_FRAMES`` frames so that memory stays bounded
on long motions; the global stages (floor, origin, facing, smoothing, contacts) see the whole motion.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engine.corpus.quat import cross as _cross
from engine.corpus.quat import qbetween as _qbetween
from engine.corpus.quat import qinv as _qinv
from engine.corpus.quat import qmul as _qmul
from engine.corpus.quat import qrot as _qrot
from engine.corpus.quat import quat_to_cont6d as _quat_to_cont6d
from engine.corpus.quat import quat_to_matrix as _quat_to_matrix
from engine.corpus.skeleton import (
    FACE_JOINTS,
    FEATURE_DIM,
    FOOT_JOINTS,
    KINEMATIC_CHAIN,
    N_JOINTS,
    PARENTS,
    RAW_OFFSETS,
    mirror_permutation,
)
from engine.corpus.types import CorpusError

log = logging.getLogger(__name__)

# Feature blocks (column slices of the 263-dim row).
ROOT_ANG_VEL = slice(0, 1)
ROOT_LIN_VEL = slice(1, 3)
ROOT_HEIGHT = slice(3, 4)
RIC = slice(4, 4 + (N_JOINTS - 1) * 3)  # 4:67
ROT6D = slice(RIC.stop, RIC.stop + (N_JOINTS - 1) * 6)  # 67:193
LOCAL_VEL = slice(ROT6D.stop, ROT6D.stop + N_JOINTS * 3)  # 193:259
FOOT_CONTACT = slice(LOCAL_VEL.stop, LOCAL_VEL.stop + 4)  # 259:263
FEATURE_BLOCKS: tuple[tuple[str, slice], ...] = (
    ("root_ang_vel", ROOT_ANG_VEL),
    ("root_lin_vel", ROOT_LIN_VEL),
    ("root_height", ROOT_HEIGHT),
    ("ric", RIC),
    ("rot6d", ROT6D),
    ("local_vel", LOCAL_VEL),
    ("foot_contact", FOOT_CONTACT),
)
assert FOOT_CONTACT.stop == FEATURE_DIM

FEET_THRESHOLD: float = 0.002  # squared per-frame displacement (m^2), HumanML3D's feet_thre
FORWARD_SMOOTH_SIGMA_FRAMES: float = 20.0  # Gaussian smoothing of the per-frame forward direction
JOINT_RECOVER_DIM: int = 12  # 6D rotation + 3D position + 3D velocity per joint

_CHUNK_FRAMES = 16384
_EPS = 1e-12
_UP = np.array([0.0, 1.0, 0.0])
_FORWARD = np.array([0.0, 0.0, 1.0])
_LEG_JOINTS = (5, 8)  # HumanML3D's l_idx1, l_idx2 (r_knee, r_ankle) for the uniform_skeleton scale


def _ik_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each joint 1..21: its chain parent, and whose global rotation the IK composes it onto.

    Returns (child (21,), parent (21,), rot_parent (21,)) where rot_parent is -1 for "the root's
    facing rotation" (first bone of every chain, including the arm chains that start at joint 9).
    """
    child, parent, rot_parent = [], [], []
    for chain in KINEMATIC_CHAIN:
        for j in range(len(chain) - 1):
            child.append(chain[j + 1])
            parent.append(chain[j])
            rot_parent.append(-1 if j == 0 else chain[j])
    order = np.argsort(child)
    child_a = np.asarray(child)[order]
    assert (child_a == np.arange(1, N_JOINTS)).all(), "kinematic chains must cover joints 1..21 once"
    parent_a = np.asarray(parent)[order]
    assert (parent_a == np.asarray(PARENTS[1:])).all(), "kinematic chains disagree with PARENTS"
    return child_a, parent_a, np.asarray(rot_parent)[order]


_IK_CHILD, _IK_PARENT, _IK_ROT_PARENT = _ik_tables()


# ----------------------------------------------------------------------------------------------
# Rotations (quaternion maths: engine.corpus.quat)


def cont6d_to_matrix(cont6d: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt, the inverse of the 6D encoding (upstream convention)."""
    x_raw, y_raw = cont6d[..., 0:3], cont6d[..., 3:6]
    x = x_raw / np.linalg.norm(x_raw, axis=-1, keepdims=True)
    z = _cross(x, y_raw)
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    y = _cross(z, x)
    return np.stack([x, y, z], axis=-1)  # (..., 3, 3), columns x, y, z


# ----------------------------------------------------------------------------------------------
# Validation


def _check_joints(joints: np.ndarray, where: str | None, min_frames: int = 2) -> np.ndarray:
    where = where or "joints array"
    arr = np.asarray(joints)
    if arr.ndim != 3 or arr.shape[1:] != (N_JOINTS, 3):
        raise CorpusError(where, f"joints have shape {tuple(arr.shape)}, expected (T, {N_JOINTS}, 3)")
    if arr.shape[0] < min_frames:
        raise CorpusError(where, f"needs at least {min_frames} frames, got {arr.shape[0]}")
    if not np.issubdtype(arr.dtype, np.number):
        raise CorpusError(where, f"joints have non-numeric dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise CorpusError(where, f"joints contain NaN/inf (first at frame {bad[0]}, joint {bad[1]})")
    return arr.astype(np.float64)


def _check_features(features: np.ndarray, where: str | None) -> np.ndarray:
    where = where or "features array"
    arr = np.asarray(features)
    if arr.ndim < 2 or arr.shape[-1] != FEATURE_DIM:
        raise CorpusError(where, f"features have shape {tuple(arr.shape)}, expected (..., T, {FEATURE_DIM})")
    if arr.shape[-2] < 1:
        raise CorpusError(where, "features have no frames")
    if not np.issubdtype(arr.dtype, np.number):
        raise CorpusError(where, f"features have non-numeric dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise CorpusError(where, f"features contain NaN/inf (first at index {tuple(int(b) for b in bad)})")
    return arr


# ----------------------------------------------------------------------------------------------
# Skeleton: offsets, inverse and forward kinematics


def skeleton_offsets(pose: np.ndarray) -> np.ndarray:
    """(22, 3) pose -> (22, 3) bone offsets: ``RAW_OFFSETS[j] * |pose[j] - pose[parent(j)]|``.

    Upstream ``Skeleton.get_offsets_joints``; use a reference pose's offsets as ``target_offsets``.
    """
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (N_JOINTS, 3):
        raise CorpusError("pose", f"has shape {tuple(pose.shape)}, expected ({N_JOINTS}, 3)")
    lengths = np.linalg.norm(pose[1:] - pose[list(PARENTS[1:])], axis=-1)  # (21,)
    out = RAW_OFFSETS.copy()
    out[1:] *= lengths[:, None]
    return out


def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > _EPS)


def _ik_forward(joints: np.ndarray, smooth: bool, where: str | None = None,
                upstream_facing: bool = True) -> np.ndarray:
    """(T, 22, 3) -> (T, 3) unit forward directions as upstream ``inverse_kinematics_np`` computes them.

    With ``upstream_facing`` this reproduces the upstream hip swap:
    across = (l_hip - r_hip) + (r_shoulder - l_shoulder); otherwise the intended
    across = (r_hip - l_hip) + (r_shoulder - l_shoulder).
    """
    r_hip, l_hip, r_sdr, l_sdr = FACE_JOINTS
    hips = joints[:, l_hip] - joints[:, r_hip] if upstream_facing else joints[:, r_hip] - joints[:, l_hip]
    across = hips + (joints[:, r_sdr] - joints[:, l_sdr])
    forward = _cross(_UP, _normalise(across))  # (T, 3), horizontal
    if smooth:
        from scipy.ndimage import gaussian_filter1d  # lazy: scipy.ndimage costs ~0.5 s, queries never smooth

        forward = gaussian_filter1d(forward, FORWARD_SMOOTH_SIGMA_FRAMES, axis=0, mode="nearest")
    norm = np.linalg.norm(forward, axis=-1)
    if (norm < 1e-9).any():
        frame = int(np.argmax(norm < 1e-9))
        raise CorpusError(where or "joints array", f"cannot determine the facing direction at frame {frame} "
                          "(hips and shoulders give no horizontal across-body vector)")
    return forward / norm[:, None]


def _ik_local_quats(joints: np.ndarray, root_quat: np.ndarray) -> np.ndarray:
    """(T, 22, 3), root (T, 4) -> (T, 21, 4) local quaternions of joints 1..21 (upstream IK).

    Global rotation of each bone = shortest arc from its rest direction to its current direction;
    local = inverse(global rotation it hangs on) * global, where the first bone of every chain hangs on
    the root's facing rotation.
    """
    bones = joints[:, _IK_CHILD] - joints[:, _IK_PARENT]  # (T, 21, 3)
    glob = _qbetween(RAW_OFFSETS[_IK_CHILD], _normalise(bones))  # (T, 21, 4)
    # glob[:, c - 1] is joint c's global rotation; gather what each bone hangs on.
    on_root = _IK_ROT_PARENT < 0
    hang = np.empty_like(glob)
    hang[:, on_root] = root_quat[:, None]
    hang[:, ~on_root] = glob[:, _IK_ROT_PARENT[~on_root] - 1]
    return _qmul(_qinv(hang), glob)


def _forward_kinematics(local: np.ndarray, root_quat: np.ndarray, root_pos: np.ndarray,
                        offsets: np.ndarray) -> np.ndarray:
    """Upstream ``forward_kinematics_np``: local (T, 21, 4), root (T, 4), (T, 3), offsets (22, 3)."""
    out = np.zeros((local.shape[0], N_JOINTS, 3))
    out[:, 0] = root_pos
    for chain in KINEMATIC_CHAIN:
        rot = root_quat
        for i in range(1, len(chain)):
            rot = _qmul(rot, local[:, chain[i] - 1])
            out[:, chain[i]] = _qrot(rot, np.broadcast_to(offsets[chain[i]], rot.shape[:-1] + (3,))) \
                + out[:, chain[i - 1]]
    return out


def uniform_skeleton(joints: np.ndarray, target_offsets: np.ndarray, where: str | None = None) -> np.ndarray:
    """Retarget (T, 22, 3) joints onto a skeleton with ``target_offsets`` (22, 3) (upstream step 1).

    The root trajectory is scaled by the ratio of leg lengths (r_knee + r_ankle offsets, upstream's
    measure); bone directions come from the (unsmoothed) IK. Returns float64 (T, 22, 3).
    """
    pos = _check_joints(joints, where, min_frames=1)
    tgt = np.asarray(target_offsets, dtype=np.float64)
    if tgt.shape != (N_JOINTS, 3) or not np.isfinite(tgt).all():
        raise CorpusError("target_offsets", f"expected finite ({N_JOINTS}, 3), got shape {tuple(tgt.shape)}")
    src = skeleton_offsets(pos[0])
    src_leg = sum(np.abs(src[j]).max() for j in _LEG_JOINTS)
    tgt_leg = sum(np.abs(tgt[j]).max() for j in _LEG_JOINTS)
    if src_leg < _EPS:
        raise CorpusError(where or "joints array", "zero leg length at frame 0, cannot retarget")
    scale = tgt_leg / src_leg
    root_quat = _qbetween(_ik_forward(pos, smooth=False, where=where), _FORWARD)  # (T, 4)
    root_quat[0] = (1.0, 0.0, 0.0, 0.0)  # upstream; FK positions do not depend on the root rotation
    local = _ik_local_quats(pos, root_quat)
    return _forward_kinematics(local, root_quat, pos[:, 0] * scale, tgt)


# ----------------------------------------------------------------------------------------------
# joints -> features


def _canonicalise(pos: np.ndarray, where: str | None) -> np.ndarray:
    """Floor at y=0, root xz of frame 0 at the origin, frame 0 facing +z (in place on float64)."""
    pos[..., 1] -= pos[..., 1].min()
    pos -= pos[0, 0] * np.array([1.0, 0.0, 1.0])
    r_hip, l_hip, r_sdr, l_sdr = FACE_JOINTS
    p0 = pos[0]
    across = (p0[r_hip] - p0[l_hip]) + (p0[r_sdr] - p0[l_sdr])
    n = np.linalg.norm(across)
    forward = _cross(_UP, across / n) if n > _EPS else np.zeros(3)
    fn = np.linalg.norm(forward)
    if fn < 1e-6:
        raise CorpusError(where or "joints array", "cannot determine the facing direction at frame 0 "
                                                   "(hips and shoulders give no horizontal across-body vector)")
    mat = _quat_to_matrix(_qbetween(forward / fn, _FORWARD))  # (3, 3)
    return pos @ mat.T


def _foot_contacts(pos: np.ndarray, feet_thre: float) -> np.ndarray:
    """(T, 22, 3) -> (T-1, 4) float: (l_ankle, l_foot, r_ankle, r_foot) squared displacement < thre."""
    feet = list(FOOT_JOINTS["left"]) + list(FOOT_JOINTS["right"])
    disp2 = ((pos[1:, feet] - pos[:-1, feet]) ** 2).sum(-1)  # (T-1, 4)
    return (disp2 < feet_thre).astype(np.float64)


def joints_to_features(joints: np.ndarray, feet_thre: float = FEET_THRESHOLD,
                       target_offsets: np.ndarray | None = None, where: str | None = None,
                       upstream_facing: bool = True) -> np.ndarray:
    """(T, 22, 3) joint positions (metres, y up) -> (T-1, 263) float32 HumanML3D features.

    Steps (HumanML3D ``process_file``): optional ``uniform_skeleton`` retargeting onto
    ``target_offsets``; floor to y=0 (minimum over all frames and joints); root xz of frame 0 to the
    origin; rotate about y so that frame 0 faces +z (across = r_hip - l_hip + r_sdr - l_sdr); foot
    contacts; IK with a smoothed per-frame root facing rotation; then the blocks listed in the module
    docstring. Row t describes frame t and the step t -> t+1, so the last frame gets no row.

    ``upstream_facing`` (default True, HumanML3D-compatible) keeps upstream's hip-swapped across vector
    for the per-frame root facing; it only points forward when the shoulder joints (16, 17) are wider
    apart than the hips (1, 2), as on SMPL bodies. A warning is logged when it points backwards at
    frame 0; ``upstream_facing=False`` uses the intended vector (features then differ from HumanML3D's).

    ``where`` names the record in error messages. Raises CorpusError on a bad shape, NaN/inf, fewer
    than 2 frames, or an undeterminable facing direction.
    """
    pos = _check_joints(joints, where)
    if target_offsets is not None:
        pos = uniform_skeleton(pos, target_offsets, where)
    pos = _canonicalise(pos, where)  # (T, 22, 3) global positions
    n_frames = pos.shape[0]

    out = np.empty((n_frames - 1, FEATURE_DIM), dtype=np.float32)
    out[:, FOOT_CONTACT] = _foot_contacts(pos, feet_thre)

    forward = _ik_forward(pos, smooth=True, where=where, upstream_facing=upstream_facing)  # (T, 3)
    if forward[0, 2] < 0.0:
        log.warning("%s: the per-frame root facing points backwards at frame 0 (hips wider than "
                    "shoulders? see upstream_facing); features stay invertible but unlike HumanML3D's",
                    where or "joints array")
    r_rot = _qbetween(forward, _FORWARD)  # (T, 4) root facing rotation
    r_rot[0] = (1.0, 0.0, 0.0, 0.0)  # upstream: frame 0 is already canonical (faces +z)
    # Root angular velocity: half-angle of r[t+1] * r[t]^-1 (upstream keeps the quaternion's y).
    r_vel = _qmul(r_rot[1:], _qinv(r_rot[:-1]))  # (T-1, 4)
    out[:, ROOT_ANG_VEL] = np.arcsin(np.clip(r_vel[:, 2:3], -1.0, 1.0))
    # Root linear velocity in the facing frame of t+1.
    out[:, ROOT_LIN_VEL] = _qrot(r_rot[1:], pos[1:, 0] - pos[:-1, 0])[:, [0, 2]]
    out[:, ROOT_HEIGHT] = pos[:-1, 0, 1:2]

    for start in range(0, n_frames - 1, _CHUNK_FRAMES):
        stop = min(start + _CHUNK_FRAMES, n_frames - 1)
        p = pos[start:stop]  # (C, 22, 3)
        rot = r_rot[start:stop]  # (C, 4)
        n = stop - start
        # ric: joints 1..21 relative to the root's xz, in the facing frame.
        mat_t = _quat_to_matrix(rot).transpose(0, 2, 1)  # (C, 3, 3), rows @ mat_t rotates by rot
        rel = p[:, 1:] - p[:, :1] * np.array([1.0, 0.0, 1.0])  # (C, 21, 3)
        out[start:stop, RIC] = (rel @ mat_t).reshape(n, -1)  # (C, 63)
        local = _ik_local_quats(p, rot)  # (C, 21, 4)
        out[start:stop, ROT6D] = _quat_to_cont6d(local).reshape(n, -1)  # (C, 126)
        vel = pos[start + 1:stop + 1] - p  # (C, 22, 3)
        out[start:stop, LOCAL_VEL] = (vel @ mat_t).reshape(n, -1)  # (C, 66)
    return out


# ----------------------------------------------------------------------------------------------
# features -> joints


@dataclass
class RootTrajectory:
    """Root facing rotation and position recovered from features (``recover_root_rot_pos``).

    ``rot_quat`` (..., T, 4) is a pure yaw (w, 0, y, 0) with frame 0 the identity; it maps world
    vectors into the facing frame. ``root_pos`` (..., T, 3) is the root position: integrated xz plus
    the stored height. Unpacks as ``rot_quat, root_pos = recover_root(features)``.
    """

    rot_quat: np.ndarray
    root_pos: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.rot_quat, self.root_pos))


def _recover_root64(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = features[..., :4].astype(np.float64)  # (..., T, 4) root block
    ang = np.zeros(f.shape[:-1])  # (..., T) half yaw angle
    ang[..., 1:] = np.cumsum(f[..., :-1, 0], axis=-1)
    quat = np.zeros(f.shape[:-1] + (4,))
    quat[..., 0] = np.cos(ang)
    quat[..., 2] = np.sin(ang)
    step = np.zeros(f.shape[:-1] + (3,))  # (..., T, 3)
    step[..., 1:, 0] = f[..., :-1, 1]
    step[..., 1:, 2] = f[..., :-1, 2]
    pos = np.cumsum(_qrot(_qinv(quat), step), axis=-2)
    pos[..., 1] = f[..., 3]
    return quat, pos


def recover_root(features: np.ndarray, where: str | None = None) -> RootTrajectory:
    """(..., T, 263) -> RootTrajectory(rot_quat (..., T, 4), root_pos (..., T, 3)), float32.

    Integrates the root yaw velocity ``[0]`` (frame 0's yaw is 0) and the facing-frame xz velocity
    ``[1:3]`` (frame 0 at the origin); the height is ``[3]``. Row t's velocities move frame t to t+1.
    """
    f = _check_features(features, where)
    quat, pos = _recover_root64(f)
    return RootTrajectory(quat.astype(np.float32), pos.astype(np.float32))


def features_to_joints(features: np.ndarray, where: str | None = None) -> np.ndarray:
    """(..., T, 263) -> (..., T, 22, 3) float32 joint positions (HumanML3D ``recover_from_ric``).

    One frame per feature row: rows 0..T-1 give frames 0..T-1, so joints -> features -> joints
    returns the first n_frames - 1 frames, canonicalised (floor at y=0, frame-0 root xz at the
    origin, frame 0 facing +z).
    """
    f = _check_features(features, where)
    quat, root = _recover_root64(f)
    n_frames = f.shape[-2]
    f3 = f.reshape(-1, n_frames, FEATURE_DIM)  # (B, T, 263)
    mat_t = _quat_to_matrix(_qinv(quat)).reshape(-1, n_frames, 3, 3).swapaxes(-1, -2)  # (B, T, 3, 3)
    root3 = root.reshape(-1, n_frames, 3)  # (B, T, 3)
    out = np.empty((f3.shape[0], n_frames, N_JOINTS, 3), dtype=np.float32)
    out[:, :, 0] = root3
    for b in range(f3.shape[0]):
        for start in range(0, n_frames, _CHUNK_FRAMES):
            sl = slice(start, min(start + _CHUNK_FRAMES, n_frames))
            ric = f3[b, sl, RIC].astype(np.float64).reshape(-1, N_JOINTS - 1, 3)  # (C, 21, 3)
            glob = ric @ mat_t[b, sl]  # (C, 21, 3): rotated back into the world frame
            glob[..., 0] += root3[b, sl, None, 0]
            glob[..., 2] += root3[b, sl, None, 2]
            out[b, sl, 1:] = glob
    return out.reshape(f.shape[:-1] + (N_JOINTS, 3))  # (..., T, 22, 3)


def joint_recover(features: np.ndarray, where: str | None = None) -> np.ndarray:
    """(..., T, 263) -> (..., T, 22, 12) float32 per-joint input of the localizer's spatial encoder.

    Channels per joint: [0:6] 6D rotation, [6:9] position, [9:12] velocity (mlp-notes "Joint Recover").
    - Root: 6D of the integrated facing rotation (``recover_root``, the same convention as upstream
      ``recover_from_rot``); position = integrated xz trajectory + height; velocity = ``[193:196]``.
    - Joints 1..21: 6D rotation from ``[67:193]``, root-relative facing-frame position (ric) from
      ``[4:67]``, facing-frame velocity from ``[196:259]``.
    - Foot contacts are dropped. Recovery is per frame over the whole sequence (pool afterwards).
    """
    f = _check_features(features, where)
    quat, root = _recover_root64(f)
    lead = f.shape[:-1]  # (..., T)
    out = np.empty(lead + (N_JOINTS, JOINT_RECOVER_DIM), dtype=np.float32)
    out[..., 0, 0:6] = _quat_to_cont6d(quat)
    out[..., 0, 6:9] = root
    out[..., 1:, 0:6] = f[..., ROT6D].reshape(lead + (N_JOINTS - 1, 6))  # (..., T, 21, 6)
    out[..., 1:, 6:9] = f[..., RIC].reshape(lead + (N_JOINTS - 1, 3))  # (..., T, 21, 3)
    vel = f[..., LOCAL_VEL].reshape(lead + (N_JOINTS, 3))  # (..., T, 22, 3)
    out[..., :, 9:12] = vel
    return out


def mirror_joints(joints: np.ndarray) -> np.ndarray:
    """Left-right mirror of (..., 22, 3) joints: negate x and swap left/right joints. Same dtype."""
    arr = np.asarray(joints)
    if arr.ndim < 2 or arr.shape[-2:] != (N_JOINTS, 3):
        raise CorpusError("joints array", f"joints have shape {tuple(arr.shape)}, expected (..., {N_JOINTS}, 3)")
    out = arr[..., mirror_permutation(), :].copy()
    out[..., 0] = -out[..., 0]
    return out
