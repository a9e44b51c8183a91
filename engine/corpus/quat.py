"""Quaternion maths shared by the BVH importer and the HumanML3D features: (..., 4) = (w, x, y, z).

Hamilton quaternions in float64, broadcasting like numpy. One copy of each helper for the whole engine
(`engine.corpus.bvh` and `engine.corpus.features` both use these).
"""

from __future__ import annotations

import numpy as np

# Squared-length threshold under which a vector counts as zero (`qbetween`).
ZERO_SQ = 1e-12


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product over the last axis (np.cross without its moveaxis copies)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack((a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0), axis=-1)


def qmul(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Hamilton product q * r."""
    w0, x0, y0, z0 = np.moveaxis(q, -1, 0)
    w1, x1, y1, z1 = np.moveaxis(r, -1, 0)
    return np.stack(
        (
            w0 * w1 - x0 * x1 - y0 * y1 - z0 * z1,
            w0 * x1 + x0 * w1 + y0 * z1 - z0 * y1,
            w0 * y1 - x0 * z1 + y0 * w1 + z0 * x1,
            w0 * z1 + x0 * y1 - y0 * x1 + z0 * w1,
        ),
        axis=-1,
    )


def qinv(q: np.ndarray) -> np.ndarray:
    """Conjugate (the inverse of a unit quaternion)."""
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4)."""
    qvec = q[..., 1:]
    uv = cross(qvec, v)
    uuv = cross(qvec, uv)
    return v + 2.0 * (q[..., :1] * uv + uuv)


def axis_quat(axis: int, angle_rad: np.ndarray) -> np.ndarray:
    """Rotations by `angle_rad` (...,) about the coordinate axis 0 (x), 1 (y) or 2 (z): (..., 4)."""
    angle_rad = np.asarray(angle_rad, dtype=np.float64)
    q = np.zeros(angle_rad.shape + (4,))
    q[..., 0] = np.cos(angle_rad / 2)
    q[..., 1 + axis] = np.sin(angle_rad / 2)
    return q


def qbetween(v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    """The shortest-arc quaternion rotating v0 onto v1 (HumanML3D's ``qbetween``).

    Where v0 and v1 are exactly opposite (upstream: NaN) the result is a 180-degree rotation about an
    axis perpendicular to v0; where either is zero (upstream: NaN) it is the identity.
    """
    v0, v1 = np.broadcast_arrays(v0, v1)
    xyz = cross(v0, v1)
    w = np.sqrt((v0**2).sum(-1) * (v1**2).sum(-1)) + (v0 * v1).sum(-1)
    q = np.concatenate([w[..., None], xyz], axis=-1)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    bad = norm[..., 0] < 1e-9
    if bad.any():
        zero = ((v0**2).sum(-1) < ZERO_SQ) | ((v1**2).sum(-1) < ZERO_SQ)
        fill = np.zeros(q[bad].shape)
        z_bad = zero[bad]
        fill[z_bad, 0] = 1.0
        opp = ~z_bad
        if opp.any():
            a = v0[bad][opp]
            # Perpendicular axis: a x e, with e the basis axis least aligned with a.
            e = np.eye(3)[np.argmin(np.abs(a), axis=-1)]
            axis = cross(a, e)
            fill[opp, 1:] = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
        q[bad] = fill
        norm[bad] = 1.0
    return q / norm


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) -> (..., 3, 3) rotation matrices (pytorch3d / HumanML3D ``quaternion_to_matrix``).

    The quaternion need not be unit: the matrix is that of q / |q|.
    """
    r, i, j, k = np.moveaxis(q, -1, 0)
    two_s = 2.0 / (q * q).sum(-1)
    m = np.stack(
        (
            1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
            two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
            two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
        ),
        axis=-1,
    )
    return m.reshape(q.shape[:-1] + (3, 3))  # (..., 3, 3)


def unit_quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) *unit* quaternions -> (..., 3, 3) rotation matrices, without normalising.

    The BVH forward kinematics uses this form (its quaternions are products of axis rotations); it
    differs from `quat_to_matrix` by rounding only, and is kept so that re-importing a file gives the
    bytes already stored (the store's content hash).
    """
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=-2)


def quat_to_cont6d(q: np.ndarray) -> np.ndarray:
    """(..., 4) -> (..., 6): the first two *columns* of the rotation matrix, column 0 first."""
    m = quat_to_matrix(q)
    return np.concatenate([m[..., 0], m[..., 1]], axis=-1)


def slerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation of (..., 4) unit quaternions (the shorter arc); t broadcasts against (...,)."""
    dot = np.sum(q0 * q1, axis=-1)
    q1 = np.where(dot[..., None] < 0, -q1, q1)
    dot = np.abs(dot)
    t = np.broadcast_to(t, dot.shape)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_t = np.sin(theta)
    small = sin_t < 1e-6
    safe = np.where(small, 1.0, sin_t)
    w0 = np.where(small, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
    w1 = np.where(small, t, np.sin(t * theta) / safe)
    q = w0[..., None] * q0 + w1[..., None] * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)
