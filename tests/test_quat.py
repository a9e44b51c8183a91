"""engine.corpus.quat: the one quaternion module, checked against scipy's rotations."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from engine.corpus import quat

ROOT = Path(__file__).resolve().parents[1]


def _wxyz(r: Rotation) -> np.ndarray:
    xyzw = r.as_quat()
    return np.concatenate([xyzw[..., 3:], xyzw[..., :3]], axis=-1)


def test_product_matrix_and_rotation_match_scipy():
    rng = np.random.default_rng(0)
    a, b = Rotation.random(50, random_state=1), Rotation.random(50, random_state=2)
    qa, qb = _wxyz(a), _wxyz(b)
    prod = quat.qmul(qa, qb)
    np.testing.assert_allclose(quat.quat_to_matrix(prod), (a * b).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(quat.quat_to_matrix(3.0 * qa), a.as_matrix(), atol=1e-12)  # not unit: q / |q|
    np.testing.assert_allclose(quat.unit_quat_to_matrix(prod), (a * b).as_matrix(), atol=1e-12)
    v = rng.normal(size=(50, 3))
    np.testing.assert_allclose(quat.qrot(qa, v), a.apply(v), atol=1e-12)
    np.testing.assert_allclose(quat.qrot(quat.qmul(quat.qinv(qa), qa), v), v, atol=1e-12)
    for axis, name in enumerate("xyz"):
        ang = rng.uniform(-3, 3, size=7)
        np.testing.assert_allclose(quat.quat_to_matrix(quat.axis_quat(axis, ang)),
                                   Rotation.from_euler(name, ang[:, None]).as_matrix(), atol=1e-12)
    six = quat.quat_to_cont6d(qa)
    m = a.as_matrix()
    np.testing.assert_allclose(six, np.concatenate([m[..., 0], m[..., 1]], axis=-1), atol=1e-12)


def test_slerp_and_qbetween():
    r = Rotation.random(2, random_state=3)
    q = _wxyz(r)
    t = np.linspace(0, 1, 9)
    ours = quat.slerp(np.broadcast_to(q[0], (9, 4)), np.broadcast_to(-q[1], (9, 4)), t)  # sign: same rotation
    ref = Slerp([0, 1], r)(t)
    np.testing.assert_allclose(quat.quat_to_matrix(ours), ref.as_matrix(), atol=1e-9)
    v0, v1 = np.array([1.0, 2.0, 0.5]), np.array([-0.3, 0.2, 4.0])
    got = quat.qrot(quat.qbetween(v0, v1), v0)
    np.testing.assert_allclose(got / np.linalg.norm(got), v1 / np.linalg.norm(v1), atol=1e-12)
    opposite = quat.qbetween(v0, -v0)
    np.testing.assert_allclose(quat.qrot(opposite, v0), -v0, atol=1e-9)
    np.testing.assert_allclose(quat.qbetween(np.zeros(3), v1), [1.0, 0, 0, 0])


def test_no_other_module_defines_quaternion_helpers():
    """One copy: the BVH importer and the features use engine.corpus.quat (issue 10, item 6)."""
    names = {"qmul", "qinv", "qrot", "qbetween", "slerp", "axis_quat", "quat_to_matrix", "quat_to_mat",
             "unit_quat_to_matrix", "quat_to_cont6d"}
    offenders = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        if path.name == "quat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in names:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not offenders, offenders
