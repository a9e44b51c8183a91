"""The canonical skeleton: SMPL's first 22 joints, y-up, metres, 20 fps.

Every importer retargets to this tree; every model reads features computed on it.
"""

from __future__ import annotations

import numpy as np

FPS: float = 20.0
N_JOINTS: int = 22
FEATURE_DIM: int = 263

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "l_hip", "r_hip", "spine1", "l_knee", "r_knee", "spine2", "l_ankle", "r_ankle",
    "spine3", "l_foot", "r_foot", "neck", "l_collar", "r_collar", "head", "l_shoulder",
    "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist",
)
PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINT_NAMES)}

# HumanML3D's kinematic chains (right leg, left leg, spine, right arm, left arm).
KINEMATIC_CHAIN: tuple[tuple[int, ...], ...] = (
    (0, 2, 5, 8, 11),
    (0, 1, 4, 7, 10),
    (0, 3, 6, 9, 12, 15),
    (9, 14, 17, 19, 21),
    (9, 13, 16, 18, 20),
)
# HumanML3D's t2m_raw_offsets: unit bone directions in the rest pose (x left, y up, z forward).
RAW_OFFSETS = np.array(
    [
        [0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0],
        [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0],
        [-1, 0, 0], [0, 0, 1], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
        [0, -1, 0],
    ],
    dtype=np.float64,
)
# Left/right joint pairs (for mirroring).
LEFT_RIGHT: tuple[tuple[int, int], ...] = (
    (1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21),
)
FOOT_JOINTS = {"left": (7, 10), "right": (8, 11)}  # (ankle, foot) as in HumanML3D
FACE_JOINTS = (2, 1, 17, 16)  # r_hip, l_hip, r_shoulder, l_shoulder: across-body direction


def mirror_permutation() -> np.ndarray:
    """Index array that swaps left and right joints."""
    perm = np.arange(N_JOINTS)
    for a, b in LEFT_RIGHT:
        perm[a], perm[b] = b, a
    return perm


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """(T, 22, 3) -> (T, 21) lengths of the bones to each non-root joint's parent."""
    parents = np.array(PARENTS[1:])
    return np.linalg.norm(joints[:, 1:] - joints[:, parents], axis=-1)
