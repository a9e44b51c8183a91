"""Clip export (engine/export.py, engine/export_glb.py): cutting, BVH round trip through the project's
importer, npy/json, GLB forward kinematics (and Blender's importer when installed), errors, and the
`engine export` command on real corpus stores."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from engine import clipfile, export
from engine.corpus import synth
from engine.corpus.bvh import PRESETS, bvh_to_motion, read_bvh, retarget
from engine.corpus.skeleton import JOINT_NAMES, PARENTS, bone_lengths
from engine.corpus.store import CorpusStore
from engine.export import Clip, ClipError, MotionNotFoundError

BANDAI = Path(__file__).resolve().parents[2] / "shared" / "data" / "bandai-namco"
TOL_M = 1e-4
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("export") / "corpus"
    with CorpusStore.open(d) as store:
        store.add_motions(synth.generate("tiny", seed=0))
    return d


@pytest.fixture()
def store(corpus):
    with CorpusStore.open(corpus, create=False) as s:
        yield s


def _duration_s(store: CorpusStore, motion_id: int) -> float:
    return store.joints(motion_id).shape[0] / store.get_motion(motion_id, arrays=False).fps


def _as_imported(joints: np.ndarray) -> np.ndarray:
    """What the importer does after FK: lowest joint on the floor, pelvis of frame 0 at x = z = 0."""
    j = np.asarray(joints, dtype=np.float64).copy()
    j[..., 1] -= j[..., 1].min()
    return j - j[0, 0] * np.array([1.0, 0.0, 1.0])


def _reimport(clip: Clip, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "clip.bvh"
    path.write_text(export.to_bvh(clip))
    res = retarget(read_bvh(path), PRESETS["smpl"], fps=clip.fps)
    assert res.scale_m == pytest.approx(0.01)  # centimetres, detected by the importer
    assert res.source_fps == pytest.approx(clip.fps) and res.joints.shape == clip.joints.shape
    return res.joints


def _assert_round_trip(clip: Clip, tmp_path: Path) -> float:
    back = _reimport(clip, tmp_path)
    err = float(np.abs(back - _as_imported(clip.joints)).max())
    assert err < TOL_M, f"{clip.name}: round trip error {err:.2e} m"
    return err


# ------------------------------------------------------------------------------------------ round trip
def test_bvh_round_trip_synth(store, tmp_path):
    for mid in store.motion_ids()[:4]:
        dur = _duration_s(store, mid)
        clip = export.clip_joints(store, mid, 1.3, min(dur, 7.9))
        _assert_round_trip(clip, tmp_path)
    # The whole motion, through the importer's one-call entry point.
    clip = export.clip_joints(store, store.motion_ids()[0])
    path = tmp_path / "whole.bvh"
    path.write_text(export.to_bvh(clip))
    m = bvh_to_motion(path, preset="smpl")
    assert m.meta["preset"] == "smpl" and m.meta["scale_m"] == 0.01 and m.fps == clip.fps
    np.testing.assert_allclose(m.joints, _as_imported(clip.joints), atol=TOL_M)
    # Bone lengths survive exactly (the OFFSETs are the clip's bone lengths).
    np.testing.assert_allclose(bone_lengths(m.joints), bone_lengths(clip.joints), atol=1e-5)


@pytest.mark.parametrize("axis,angle_deg", [(1, 90.0), (1, -90.0), (0, 90.0), (2, 180.0), (0, 180.0)])
def test_bvh_round_trip_turned_bodies(store, tmp_path, axis, angle_deg):
    """Bodies facing +-x, lying down or upside down: Euler gimbal lock and half-turn swings stay exact."""
    clip = export.clip_joints(store, store.motion_ids()[1], 2.0, 4.0)
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    rot = {0: [[1, 0, 0], [0, c, -s], [0, s, c]], 1: [[c, 0, s], [0, 1, 0], [-s, 0, c]],
           2: [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
    turned = (clip.joints.astype(np.float64) @ np.asarray(rot).T).astype(np.float32)
    clip = Clip(**{**clip.__dict__, "joints": turned})
    assert export.bvh_pose(turned).max_error_m < 1e-5
    _assert_round_trip(clip, tmp_path)


def test_swing_and_euler_edge_cases():
    a = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.3, 0.4, -0.5]])
    for b in (-a, a, np.array([[0.0, 0.0, 1.0]] * 3)):
        r = export._swing(a, b)  # (3, 3, 3)
        np.testing.assert_allclose(np.einsum("nab,nb->na", r, a), export._unit(b) * np.linalg.norm(a, axis=1,
                                   keepdims=True), atol=1e-12)
        np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    angles = np.array([[10.0, 90.0, 20.0], [-30.0, -90.0, 5.0], [170.0, 45.0, -120.0], [0.0, 89.9999, 3.0]])
    mats = export._euler_zyx_to_mat(angles)
    np.testing.assert_allclose(export._euler_zyx_to_mat(export._euler_zyx_deg(mats)), mats, atol=1e-9)
    # Exact gimbal lock (y = +-90 deg with exact zeros): only z - x (or z + x) is defined.
    sx, cx = math.sin(0.5), math.cos(0.5)
    locked = np.array([[[0.0, sx, cx], [0.0, cx, -sx], [-1.0, 0.0, 0.0]],
                       [[0.0, -sx, -cx], [0.0, cx, -sx], [1.0, 0.0, 0.0]]])
    np.testing.assert_allclose(export._euler_zyx_to_mat(export._euler_zyx_deg(locked)), locked, atol=1e-12)


def test_single_child_joints_rotate_by_pure_swings(store):
    """A one-child joint's local rotation has no twist about its rest bone (it inherits the parent's)."""
    joints = np.asarray(store.joints(store.motion_ids()[0]))[:40]
    pose = export.bvh_pose(joints)
    local = export._euler_zyx_to_mat(pose.euler_deg)  # (F, 22, 3, 3)
    for j, kids in enumerate(export.CHILDREN):
        if len(kids) != 1 or j == 0:
            continue
        r = local[:, j]
        axis = np.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], axis=-1)
        bone = export._unit(pose.offsets_m[kids[0]])
        assert np.abs(axis @ bone).max() < 1e-6, JOINT_NAMES[j]


@pytest.mark.skipif(not BANDAI.is_dir(), reason=f"Bandai Namco data not found at {BANDAI} (../shared/data)")
def test_bvh_round_trip_bandai(tmp_path):
    files = sorted((BANDAI / "set1").glob("*.bvh"))[:1] + sorted((BANDAI / "set2").glob("*.bvh.gz"))[:1]
    if not files:
        pytest.skip(f"no Bandai BVH files under {BANDAI}")
    with CorpusStore.open(tmp_path / "bandai") as store:
        store.add_motions(bvh_to_motion(f) for f in files)
        for mid in store.motion_ids():
            dur = _duration_s(store, mid)
            clip = export.clip_joints(store, mid, 0.25, dur - 0.25)
            assert clip.source == "bandai"
            _assert_round_trip(clip, tmp_path)


# ------------------------------------------------------------------------------------------- npy / json
def test_npy_and_json_equal_the_stored_slice(store):
    mid = store.motion_ids()[2]
    joints = np.asarray(store.joints(mid))
    clip = export.clip_joints(store, mid, 2.0, 3.5)
    assert (clip.start_frame, clip.end_frame, clip.n_frames) == (40, 70, 30)
    arr = np.load(io.BytesIO(export.to_npy(clip)), allow_pickle=False)
    assert arr.dtype == np.float32 and arr.shape == (30, 22, 3)
    np.testing.assert_array_equal(arr, joints[40:70])

    out = clipfile.clip_bytes(store, mid, 2.0, 3.5, "json")
    assert out.media_type == "application/json" and out.filename.endswith("_2.00-3.50s.json")
    doc = json.loads(out.data)
    assert doc["motion_id"] == mid and doc["name"] == store.get_motion(mid, arrays=False).name
    assert doc["fps"] == 20.0 and doc["start_s"] == 2.0 and doc["end_s"] == 3.5
    assert doc["joint_names"] == list(JOINT_NAMES) and doc["parents"] == list(PARENTS)
    frames = np.asarray(doc["frames"])
    assert frames.shape == (30, 22, 3)
    np.testing.assert_allclose(frames, joints[40:70], atol=5.1e-5)
    assert frames.tolist() == np.round(frames, 4).tolist()

    npy = clipfile.clip_bytes(store, mid, 2.0, 3.5, "npy")
    assert npy.media_type == "application/octet-stream" and npy.filename.endswith(".npy")
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.data)), joints[40:70])
    bvh = clipfile.clip_bytes(store, mid, 2.0, 3.5, "BVH")
    assert bvh.media_type.startswith("text/plain") and bvh.filename.endswith(".bvh")
    assert bvh.data.startswith(b"HIERARCHY\nROOT pelvis") and b"Frames: 30\nFrame Time: 0.05\n" in bvh.data


# --------------------------------------------------------------------------------------------- ranges
def test_frame_range_edges(store):
    mid = store.motion_ids()[0]
    n = int(store.joints(mid).shape[0])
    dur = n / 20.0
    whole = export.clip_joints(store, mid)
    assert (whole.start_frame, whole.end_frame, whole.start_s, whole.end_s) == (0, n, 0.0, dur)
    assert export.clip_joints(store, mid, 0.0, dur + 5e-4).end_frame == n  # within the tolerance
    c = export.clip_joints(store, mid, 1.01, 2.01)  # frame 20 starts at 1.0 s; 2.01 s is inside frame 40
    assert (c.start_frame, c.end_frame, c.start_s, c.end_s) == (20, 41, 1.0, 2.05)
    c = export.clip_joints(store, mid, 1.04, 1.96)  # inside frames 20 and 39: floor / ceil, not rounding
    assert (c.start_frame, c.end_frame) == (20, 40)
    c = export.clip_joints(store, mid, 1.0, 2.0)
    assert (c.start_frame, c.end_frame, c.n_frames, c.duration_s) == (20, 40, 20, 1.0)
    last = export.clip_joints(store, mid, (n - 2) / 20.0, None)
    assert (last.start_frame, last.end_frame) == (n - 2, n)
    np.testing.assert_array_equal(last.joints, store.joints(mid)[-2:])
    assert export.clip_joints(store, mid, 0.0, 0.1).n_frames == 2
    assert export.frame_range(10, 20.0, 0.0, 100.0) == (0, 10)
    assert export.frame_range(10, 30.0, 0.1, 0.2) == (3, 6)  # float products 3.0000000000000004 / 6.000..1


@pytest.mark.parametrize("start,end,problem", [
    (-0.5, 2.0, "before the motion's start"),
    (1.0, 1e4, "after the motion's end"),
    (2.0, 2.0, "not after start"),
    (3.0, 1.0, "not after start"),
    (1.0, 1.04, "at least 2 are needed"),
    (float("nan"), 1.0, "non-finite"),
])
def test_clip_errors_name_the_motion(store, start, end, problem):
    mid = store.motion_ids()[0]
    name = store.get_motion(mid, arrays=False).name
    with pytest.raises(ClipError) as e:
        export.clip_joints(store, mid, start, end)
    assert problem in str(e.value) and name in str(e.value) and str(mid) in str(e.value)
    with pytest.raises(ClipError):
        clipfile.clip_bytes(store, mid, start, end, "npy")


def test_unknown_motion_and_format(store):
    with pytest.raises(MotionNotFoundError, match="motion 9999: no such motion"):
        export.clip_joints(store, 9999, 0.0, 1.0)
    with pytest.raises(MotionNotFoundError):
        clipfile.clip_bytes(store, 9999, 0.0, 1.0, "bvh")
    assert isinstance(MotionNotFoundError("a", "b"), ValueError)
    mid = store.motion_ids()[0]
    with pytest.raises(ClipError, match=r"unknown export format 'fbx'") as e:
        clipfile.clip_bytes(store, mid, 0.0, 1.0, "fbx")
    assert store.get_motion(mid, arrays=False).name in str(e.value)
    name = store.get_motion(mid, arrays=False).name
    assert export.resolve_motion_id(store, name) == mid and export.resolve_motion_id(store, str(mid)) == mid
    with pytest.raises(MotionNotFoundError, match="no-such"):
        export.resolve_motion_id(store, "no-such")


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_export_bvh_round_trip_and_npy(corpus, store, tmp_path):
    from engine.cli import app

    mid = store.motion_ids()[3]
    out = tmp_path / "out" / "clip.bvh"
    r = runner.invoke(app, ["export", str(mid), "--start", "1", "--end", "4.5", "--out", str(out),
                            "--corpus", str(corpus)])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out) and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["clip.bvh"]  # no temporary file left
    m = bvh_to_motion(out, preset="smpl")
    np.testing.assert_allclose(m.joints, _as_imported(np.asarray(store.joints(mid))[20:90]), atol=TOL_M)

    name = store.get_motion(mid, arrays=False).name
    npy = tmp_path / "clip.data"
    r = runner.invoke(app, ["export", name, "--end", "2", "--format", "npy", "--out", str(npy),
                            "--corpus", str(corpus), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["motion_id"] == mid and info["n_frames"] == 40 and info["format"] == "npy"
    np.testing.assert_array_equal(np.load(npy), np.asarray(store.joints(mid))[:40])

    js = tmp_path / "clip.json"  # format from the suffix
    r = runner.invoke(app, ["export", str(mid), "--start", "0.5", "--end", "1", "--out", str(js),
                            "--corpus", str(corpus)])
    assert r.exit_code == 0 and json.loads(js.read_text())["end_s"] == 1.0


def test_cli_export_bad_input(corpus, store, tmp_path):
    from engine.cli import app

    mid = store.motion_ids()[0]
    name = store.get_motion(mid, arrays=False).name
    out = tmp_path / "x.bvh"
    cases = [
        (["export", str(mid), "--start", "5", "--end", "2"], name),
        (["export", name, "--end", "99999"], name),
        (["export", "synth/nope", "--end", "1"], "synth/nope"),
        (["export", str(mid), "--format", "fbx"], "fbx"),
    ]
    for args, needle in cases:
        r = runner.invoke(app, args + ["--out", str(out), "--corpus", str(corpus)])
        assert r.exit_code != 0, args
        assert needle in r.stderr and "error:" in r.stderr, (args, r.stderr)
        assert not out.exists()
    r = runner.invoke(app, ["export", "1", "--out", str(out), "--corpus", str(tmp_path / "missing")])
    assert r.exit_code != 0 and "not a corpus directory" in r.stderr
    r = runner.invoke(app, ["export", "1", "--out", str(out), "--index", str(tmp_path)])
    assert r.exit_code != 0 and "not an index directory" in r.stderr


def test_cli_export_from_an_index(tmp_path):
    """--index reads the corpus the index was built from (its manifest)."""
    from engine.cli import app
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.model import RetrievalConfig, RetrievalModel

    corpus = tmp_path / "c"
    with CorpusStore.open(corpus) as s:
        s.add_motions(synth.generate(synth.SynthConfig(n_motions=2, min_duration_s=10.0, max_duration_s=12.0),
                                     seed=5))
        mid = s.motion_ids()[1]
        expected = np.asarray(s.joints(mid))[10:30].copy()
    model = RetrievalModel.random(RetrievalConfig(d_model=16, n_layers=1, n_heads=2, ff_dim=32, embed_dim=16,
                                                  text_hidden=None), seed=0)
    build_index(corpus, tmp_path / "idx", model, IndexConfig())
    out = tmp_path / "c.npy"
    r = runner.invoke(app, ["export", str(mid), "--start", "0.5", "--end", "1.5", "--out", str(out),
                            "--index", str(tmp_path / "idx")])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(out), expected)


def test_cli_export_defaults_to_the_builtin_corpus(corpus, store, tmp_path, monkeypatch):
    """Without --corpus/--index the built-in corpus of ENGINE_HOME is used (here: already prepared)."""
    import shutil

    from engine.cli import app

    home = tmp_path / "home"
    shutil.copytree(corpus, home / "demo-corpus")
    (home / "demo-corpus" / ".complete").write_text("tiny")
    monkeypatch.setenv("ENGINE_HOME", str(home))
    mid = store.motion_ids()[5]
    out = tmp_path / "d.npy"
    r = runner.invoke(app, ["export", str(mid), "--start", "3", "--end", "3.5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(out), np.asarray(store.joints(mid))[60:70])


# ------------------------------------------------------------------------------------------------ GLB
# The BVH encoding (~1e-6 m) + float32 quaternions and offsets along chains of up to 8 bones; measured:
# 2.6e-6 m over the 12 whole tiny synth motions, 1.3e-7 m on Bandai takes.
GLB_TOL_M = 2e-5


def _accessor(gltf, index: int) -> np.ndarray:
    """An accessor of a loaded GLB as a float array (count, width); FLOAT only, tightly packed."""
    import pygltflib

    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    assert acc.componentType == pygltflib.FLOAT and view.byteStride in (None, 0)
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc.type]
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    blob = gltf.binary_blob()
    return np.frombuffer(blob, dtype="<f4", count=acc.count * width, offset=start).reshape(acc.count, width)


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    """(..., 4) x, y, z, w quaternions (normalised here) -> (..., 3, 3); written out, not scipy's."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=-2)


def _glb_forward(data: bytes) -> tuple[object, np.ndarray, np.ndarray]:
    """(gltf, sample times (F,), world joint positions (F, nodes, 3)) by forward kinematics over the
    scene's node hierarchy, each node's T * R * S with the animation's samples replacing its TRS."""
    import pygltflib

    gltf = pygltflib.GLTF2.load_from_bytes(data)
    assert len(gltf.animations) == 1
    anim = gltf.animations[0]
    inputs = {anim.samplers[c.sampler].input for c in anim.channels}
    assert len(inputs) == 1  # one clock for every channel
    times = _accessor(gltf, inputs.pop())[:, 0]
    n_f, n_nodes = len(times), len(gltf.nodes)
    trans = np.array([n.translation or [0.0, 0.0, 0.0] for n in gltf.nodes], dtype=np.float64)
    rot = np.array([n.rotation or [0.0, 0.0, 0.0, 1.0] for n in gltf.nodes], dtype=np.float64)
    trans = np.broadcast_to(trans, (n_f, n_nodes, 3)).copy()
    rot = np.broadcast_to(rot, (n_f, n_nodes, 4)).copy()
    for ch in anim.channels:
        sampler = anim.samplers[ch.sampler]
        assert sampler.interpolation == "LINEAR"
        values = _accessor(gltf, sampler.output)
        assert values.shape[0] == n_f
        if ch.target.path == "rotation":
            rot[:, ch.target.node] = values
        elif ch.target.path == "translation":
            trans[:, ch.target.node] = values
        else:
            raise AssertionError(f"unexpected channel path {ch.target.path}")
    for n in gltf.nodes:
        assert n.matrix is None and n.scale in (None, [1.0, 1.0, 1.0])
    local_r = _quat_to_mat(rot)  # (F, N, 3, 3)
    pos = np.zeros((n_f, n_nodes, 3))
    glob = np.zeros((n_f, n_nodes, 3, 3))

    def visit(i: int, parent: int | None) -> None:
        if parent is None:
            pos[:, i], glob[:, i] = trans[:, i], local_r[:, i]
        else:
            pos[:, i] = pos[:, parent] + np.einsum("fab,fb->fa", glob[:, parent], trans[:, i])
            glob[:, i] = glob[:, parent] @ local_r[:, i]
        for c in gltf.nodes[i].children:
            visit(c, i)

    for r in gltf.scenes[gltf.scene].nodes:
        visit(r, None)
    return gltf, times, pos


def test_glb_forward_kinematics_equals_the_clip(store, tmp_path):
    for mid in store.motion_ids()[:3]:
        clip = export.clip_joints(store, mid, 1.3, min(_duration_s(store, mid), 6.2))
        out = clipfile.serialize_clip(clip, "glb")
        assert out.media_type == "model/gltf-binary" and out.filename.endswith(".glb")
        assert out.data[:4] == b"glTF"
        gltf, times, pos = _glb_forward(out.data)
        assert [n.name for n in gltf.nodes] == list(JOINT_NAMES)
        for j, node in enumerate(gltf.nodes):  # the hierarchy is the skeleton's
            assert sorted(node.children) == [c for c in range(len(PARENTS)) if PARENTS[c] == j]
        np.testing.assert_allclose(times, np.arange(clip.n_frames) / clip.fps, atol=1e-6)
        err = float(np.abs(pos - clip.joints).max())
        assert err < GLB_TOL_M, f"{clip.name}: GLB FK differs from the clip by {err:.2e} m"
        extras = gltf.scenes[0].extras
        assert extras["motion_id"] == mid and extras["fps"] == clip.fps
        assert (extras["start_frame"], extras["end_frame"]) == (clip.start_frame, clip.end_frame)
        # Offsets are the clip's bone lengths; the skin's bind pose is the rest pose.
        rest_len = np.linalg.norm([n.translation for n in gltf.nodes[1:]], axis=1)
        np.testing.assert_allclose(rest_len, bone_lengths(clip.joints).mean(axis=0), atol=1e-5)
        skin = gltf.skins[0]
        assert skin.joints == list(range(22))
        ibm = _accessor(gltf, skin.inverseBindMatrices).reshape(22, 4, 4).transpose(0, 2, 1)
        rest = np.zeros((22, 3))
        for j, p in enumerate(PARENTS):
            rest[j] = gltf.nodes[j].translation if p < 0 else rest[p] + gltf.nodes[j].translation
        np.testing.assert_allclose(ibm[:, :3, 3], -rest, atol=1e-6)


def test_glb_turned_body_and_quaternion_signs(store):
    """A body lying on its side: still exact; and consecutive samples never flip quaternion sign."""
    clip = export.clip_joints(store, store.motion_ids()[1], 2.0, 4.0)
    a = math.radians(90.0)
    rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    clip = Clip(**{**clip.__dict__, "joints": (clip.joints.astype(np.float64) @ rot.T).astype(np.float32)})
    _, _, pos = _glb_forward(clipfile.serialize_clip(clip, "glb").data)
    assert float(np.abs(pos - clip.joints).max()) < GLB_TOL_M
    from engine.export_glb import glb_arrays

    q = glb_arrays(clip)["rotations"].astype(np.float64)
    assert np.all(np.sum(q[1:] * q[:-1], axis=-1) >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-6)


@pytest.mark.skipif(not BANDAI.is_dir(), reason=f"Bandai Namco data not found at {BANDAI} (../shared/data)")
def test_glb_bandai(tmp_path):
    files = sorted((BANDAI / "set1").glob("*.bvh"))[:1]
    if not files:
        pytest.skip(f"no Bandai BVH files under {BANDAI / 'set1'}")
    with CorpusStore.open(tmp_path / "bandai") as store:
        store.add_motions(bvh_to_motion(f) for f in files)
        mid = store.motion_ids()[0]
        clip = export.clip_joints(store, mid, 0.5, min(_duration_s(store, mid), 3.5))
        _, times, pos = _glb_forward(clipfile.serialize_clip(clip, "glb").data)
        assert len(times) == clip.n_frames
        err = float(np.abs(pos - clip.joints).max())
        assert err < GLB_TOL_M, f"{clip.name}: GLB FK differs from the clip by {err:.2e} m"


def test_cli_export_glb(corpus, store, tmp_path):
    from engine.cli import app

    mid = store.motion_ids()[2]
    out = tmp_path / "clip.glb"  # format from the suffix
    r = runner.invoke(app, ["export", str(mid), "--start", "1", "--end", "3", "--out", str(out),
                            "--corpus", str(corpus), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["format"] == "glb" and info["n_frames"] == 40
    _, times, pos = _glb_forward(out.read_bytes())
    assert len(times) == 40
    np.testing.assert_allclose(pos, np.asarray(store.joints(mid))[20:60], atol=GLB_TOL_M)


BLENDER = shutil.which("blender")
BLENDER_SCRIPT = """
import json, sys, bpy
path, fps = sys.argv[sys.argv.index("--") + 1:]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.context.scene.render.fps = int(fps)
bpy.context.scene.render.fps_base = 1.0
bpy.ops.import_scene.gltf(filepath=path)
arms = [o for o in bpy.data.objects if o.type == "ARMATURE"]
bones = sorted(b.name for a in arms for b in a.data.bones)
ranges = [list(a.frame_range) for a in bpy.data.actions]
print("RESULT " + json.dumps({"bones": bones, "ranges": ranges}))
"""


@pytest.mark.skipif(BLENDER is None, reason="Blender is not installed (optional: apt-get install blender)")
def test_glb_imports_in_blender(store, tmp_path):
    """Blender's own glTF importer (headless): 22 bones named as the joints, one frame per sample."""
    import subprocess

    clip = export.clip_joints(store, store.motion_ids()[0], 1.0, 3.0)  # 40 frames at 20 fps
    path = tmp_path / "clip.glb"
    path.write_bytes(clipfile.serialize_clip(clip, "glb").data)
    script = tmp_path / "check.py"
    script.write_text(BLENDER_SCRIPT)
    res = subprocess.run([BLENDER, "--background", "--factory-startup", "--python", str(script), "--",
                          str(path), str(int(clip.fps))], capture_output=True, text=True, timeout=300)
    lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-2000:] + res.stderr[-2000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["bones"] == sorted(JOINT_NAMES)
    assert out["ranges"], "no action imported"
    start, end = out["ranges"][0]
    assert end - start == pytest.approx(clip.n_frames - 1, abs=1.0)
