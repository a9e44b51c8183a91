"""BVH import: parser, forward kinematics, retargeting presets, labels, bad input, real files."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from engine.corpus import bvh
from engine.corpus.skeleton import JOINT_NAMES, PARENTS, bone_lengths
from engine.corpus.types import CorpusError

# ../shared/data beside the clone; ENGINE_SHARED_DATA points elsewhere (e.g. from a git worktree).
DATA = Path(os.environ.get("ENGINE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
SAMPLE = DATA / "humanml3d-sample" / "new_joints" / "012314.npy"
FAMILY_FILES = {
    "bandai": "bandai-namco/set1/dataset-1_walk_normal_001.bvh",
    "bandai2": "bandai-namco/set2/dataset-2_wave-left-hand_exhausted_001.bvh.gz",
    "cmu131": "cmu/131_01.bvh",
    "cmu135": "cmu/135_03.bvh",
}


def need_data(*rel: str) -> None:
    for r in rel:
        if not (DATA / r).exists():
            pytest.skip(f"shared data not found: {DATA / r} (tests that read real files need ../shared/data)")


# ------------------------------------------------------------------------------------ BVH writer
def write_bvh(path: Path, names: list[str], parents: list[int], offsets: np.ndarray, channels: list[list[str]],
              motion: np.ndarray, frame_time: float = 1 / 30, newline: str = "\n", end_sites: bool = True) -> Path:
    """A BVH file from a tree (parents precede children); `motion` is (F, total channels)."""
    children: dict[int, list[int]] = {i: [] for i in range(len(names))}
    for i, p in enumerate(parents):
        if p >= 0:
            children[p].append(i)
    lines = ["HIERARCHY"]

    def emit(j: int, depth: int) -> None:
        ind = "\t" * depth
        lines.append(f"{ind}{'ROOT' if parents[j] < 0 else 'JOINT'} {names[j]}")
        lines.append(f"{ind}{{")
        lines.append(f"{ind}\tOFFSET {' '.join(f'{v:.6f}' for v in offsets[j])}")
        if channels[j]:
            lines.append(f"{ind}\tCHANNELS {len(channels[j])} {' '.join(channels[j])}")
        for c in children[j]:
            emit(c, depth + 1)
        if not children[j] and end_sites:
            lines.extend([f"{ind}\tEnd Site", f"{ind}\t{{", f"{ind}\t\tOFFSET 0 0.05 0", f"{ind}\t}}"])
        lines.append(f"{ind}}}")

    emit(0, 0)
    lines += ["MOTION", f"Frames: {motion.shape[0]}", f"Frame Time: {frame_time:.7f}"]
    lines += [" ".join(f"{v:.6f}" for v in row) for row in motion]
    text = newline.join(lines) + newline
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_bytes(text.encode())
    return path


ROT = ["Zrotation", "Xrotation", "Yrotation"]
POS = ["Xposition", "Yposition", "Zposition"]


def smpl_rest(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A real standing pose (HumanML3D sample frame 0, or a fixed stand-in) and its parent offsets."""
    if SAMPLE.exists():
        pose = np.load(SAMPLE)[0].astype(np.float64)
    else:  # a crude T-ish pose from the rest directions (hips narrower than the shoulders, as on a person)
        from engine.corpus.skeleton import RAW_OFFSETS
        pose = np.zeros((22, 3))
        pose[0] = [0, 0.9, 0]
        for j in range(1, 22):
            pose[j] = pose[PARENTS[j]] + RAW_OFFSETS[j] * (0.1 if j in (1, 2) else 0.15)
    offsets = np.zeros((22, 3))
    offsets[0] = pose[0]
    for j in range(1, 22):
        offsets[j] = pose[j] - pose[PARENTS[j]]
    return pose * scale, offsets * scale


def identity_map(tmp_path: Path, **options) -> Path:
    p = tmp_path / "map.json"
    p.write_text(json.dumps({"joints": {n: n for n in JOINT_NAMES}, **options}))
    return p


def smpl_bvh(tmp_path: Path, name: str = "synth.bvh", n_frames: int = 3, scale: float = 1.0,
             axes: np.ndarray | None = None, **kw) -> tuple[Path, np.ndarray]:
    """An SMPL-named BVH of the rest pose (zero rotations), optionally in other axes/units."""
    pose, offsets = smpl_rest(scale)
    axes = np.eye(3) if axes is None else axes
    offsets = offsets @ axes.T
    chans = [POS + ROT] + [ROT] * 21
    motion = np.zeros((n_frames, 6 + 21 * 3))
    motion[:, :3] = offsets[0]
    return write_bvh(tmp_path / name, list(JOINT_NAMES), list(PARENTS), offsets, chans, motion, **kw), pose


# --------------------------------------------------------------------------------------- parsing
def test_parser_reads_hierarchy_channels_end_sites_and_crlf(tmp_path):
    names, parents = ["root", "a", "b"], [-1, 0, 1]
    offsets = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=float)
    chans = [POS + ["Yrotation", "Xrotation", "Zrotation"], ["Xrotation", "Zrotation", "Yrotation"], []]
    motion = np.arange(2 * 9, dtype=float).reshape(2, 9)
    p = write_bvh(tmp_path / "t.bvh", names, parents, offsets, chans, motion, newline="\r\n")
    data = bvh.read_bvh(p)
    assert data.joint_names == names
    assert [n.name for n in data.nodes] == ["root", "a", "b", "b_End"]
    assert data.nodes[3].is_end_site and data.nodes[3].parent == 2
    assert data.nodes[1].channels == ("Xrotation", "Zrotation", "Yrotation") and data.nodes[1].channel_start == 6
    assert data.n_frames == 2 and data.n_channels == 9 and data.fps == 30.0
    np.testing.assert_allclose(data.motion, motion)
    np.testing.assert_allclose(data.nodes[2].offset, [1, 0, 0])


def test_fk_matches_scipy_euler_in_any_channel_order(tmp_path):
    rng = np.random.default_rng(0)
    names, parents = ["root", "a", "b", "c"], [-1, 0, 1, 2]
    offsets = np.array([[0.5, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)
    orders = [["Zrotation", "Yrotation", "Xrotation"], ["Xrotation", "Zrotation", "Yrotation"],
              ["Yrotation", "Xrotation", "Zrotation"], ["Zrotation", "Xrotation", "Yrotation"]]
    chans = [POS + orders[0]] + orders[1:]
    motion = rng.uniform(-170, 170, size=(5, 15))
    data = bvh.read_bvh(write_bvh(tmp_path / "t.bvh", names, parents, offsets, chans, motion))
    pos = bvh.bvh_positions(data)  # (5, N, 3)
    for f in range(5):
        glob_r = Rotation.identity()
        expected = []
        col = 3
        p = motion[f, :3]
        for j, order in enumerate(orders):
            seq = "".join(c[0] for c in order)  # e.g. "ZYX", intrinsic (uppercase) as listed
            local = Rotation.from_euler(seq, motion[f, col:col + 3], degrees=True)
            col += 3
            if j > 0:
                p = p + glob_r.apply(offsets[j])
            expected.append(p)
            glob_r = glob_r * local
        np.testing.assert_allclose(pos[f, :4], np.array(expected), atol=1e-9)


def test_resampling_slerps_rotations_and_keeps_bone_lengths(tmp_path):
    # a 1-bone arm spinning at constant angular velocity about z, root translating in x, at 30 fps
    names, parents = ["root", "arm"], [-1, 0]
    offsets = np.array([[0, 0, 0], [1, 0, 0]], dtype=float)
    n = 31
    angle = np.linspace(0, 150, n)  # 5 deg per source frame
    motion = np.zeros((n, 9))
    motion[:, 0] = np.linspace(0, 3, n)
    motion[:, 3] = angle  # root Zrotation
    data = bvh.read_bvh(write_bvh(tmp_path / "t.bvh", names, parents, offsets, [POS + ROT, ROT], motion))
    pos = bvh.bvh_positions(data, fps_out=20.0)
    t = np.arange(pos.shape[0]) / 20.0
    assert pos.shape[0] == 21  # 1 s at 20 fps, both ends included
    a = np.deg2rad(150 * t)  # 150 deg / s
    expected = np.stack([3 * t + np.cos(a), np.sin(a), np.zeros_like(a)], axis=-1)
    np.testing.assert_allclose(pos[:, 1], expected, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(pos[:, 2] - pos[:, 1], axis=-1), 0.05, atol=1e-12)  # end site


def test_identity_map_reproduces_pose_and_detects_units_and_axes(tmp_path):
    ref, _ = smpl_bvh(tmp_path, "m.bvh")
    pose, _ = smpl_rest()
    expected = pose - pose[0] * [1, 0, 1]
    expected[:, 1] -= expected[:, 1].min()
    m = bvh.bvh_to_motion(ref, preset=identity_map(tmp_path))
    np.testing.assert_allclose(m.joints[0], expected, atol=1e-5)
    assert m.meta["scale_m"] == 1.0 and m.name == "bvh/m" and m.fps == 20.0
    # centimetres, z-up: detected scale and a rotation back to y-up give the same joints
    z_up = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # y-up -> z-up
    cm, _ = smpl_bvh(tmp_path, "cm.bvh", scale=100.0, axes=z_up)
    m2 = bvh.bvh_to_motion(cm, preset=identity_map(tmp_path, up="z"))
    assert m2.meta["scale_m"] == 0.01
    np.testing.assert_allclose(m2.joints[0], expected, atol=1e-5)
    # inches and CMU units are told apart from the body's size
    for unit, scale in (("inch", 0.0254), ("cmu", 0.056444)):
        p, _ = smpl_bvh(tmp_path, f"{unit}.bvh", scale=1 / scale)
        assert bvh.bvh_to_motion(p, preset=identity_map(tmp_path)).meta["scale_m"] == scale
    # a mirrored (left-handed) file is fixed by "mirror": left joints end up at +x again
    mirror = np.diag([-1.0, 1, 1])
    mp, _ = smpl_bvh(tmp_path, "mir.bvh", axes=mirror)
    m3 = bvh.bvh_to_motion(mp, preset=identity_map(tmp_path, mirror=True))
    np.testing.assert_allclose(m3.joints[0], expected, atol=1e-5)


def test_custom_map_blends_and_tpose_drop(tmp_path):
    path, _ = smpl_bvh(tmp_path, "b.bvh", n_frames=4)
    mapping = {n: n for n in JOINT_NAMES}
    mapping["spine2"] = {"spine1": 1.0, "spine2": 3.0}  # weights are normalised: 1/4, 3/4
    mp = tmp_path / "blend.json"
    mp.write_text(json.dumps({**mapping, "scale": "m", "tpose": True}))
    preset = bvh.load_joint_map(mp)
    assert preset.drop_frames == 1
    m = bvh.bvh_to_motion(path, preset=mp)
    plain = bvh.bvh_to_motion(path, preset=identity_map(tmp_path))
    np.testing.assert_allclose(m.joints[0, 6], 0.25 * plain.joints[0, 3] + 0.75 * plain.joints[0, 6], atol=1e-6)
    assert plain.meta["source_frames"] == 4
    assert (plain.n_frames, m.n_frames) == (3, 2)  # 4 frames at 30 fps -> 0.1 s; without frame 0: 0.067 s


# ------------------------------------------------------------------------------------- bad input
def _good(tmp_path: Path, name: str = "good.bvh") -> tuple[Path, str]:
    p, _ = smpl_bvh(tmp_path, name, n_frames=4)
    return p, p.read_text()


def _expect(tmp_path: Path, text: str, *fragments: str, name: str = "bad.bvh") -> CorpusError:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(CorpusError) as ei:
        bvh.bvh_to_motion(p, preset=identity_map(tmp_path))
    msg = str(ei.value)
    assert str(p) in msg
    for f in fragments:
        assert f in msg, msg
    return ei.value


def test_truncated_hierarchy(tmp_path):
    _, text = _good(tmp_path)
    _expect(tmp_path, text[: len(text) // 5], "no MOTION section")
    head = text[: text.index("MOTION")].splitlines()
    cut = "\n".join(head[: len(head) // 2])  # whole lines, inside an open joint block
    _expect(tmp_path, cut + "\nMOTION\nFrames: 1\nFrame Time: 0.03\n0\n", "hierarchy ends")


def test_fewer_motion_lines_than_frames(tmp_path):
    _, text = _good(tmp_path)
    lines = text.splitlines()
    _expect(tmp_path, "\n".join(lines[:-2]) + "\n", "Frames: 4 but only 2 motion lines")


def test_malformed_numbers_name_the_line(tmp_path):
    _, text = _good(tmp_path)
    lines = text.splitlines()
    bad = lines.copy()
    bad[-2] = bad[-2].replace("0.000000", "0.0.1", 1)
    err = _expect(tmp_path, "\n".join(bad) + "\n", f"line {len(lines) - 1}", "malformed number '0.0.1'")
    assert "frame 2" in err.problem
    off = [i for i, ln in enumerate(lines) if "OFFSET" in ln][3]
    bad = lines.copy()
    bad[off] = bad[off].replace("OFFSET ", "OFFSET x", 1)
    _expect(tmp_path, "\n".join(bad) + "\n", f"line {off + 1}", "malformed number")
    bad = lines.copy()
    bad[-1] = bad[-1] + " 1.0"
    _expect(tmp_path, "\n".join(bad) + "\n", f"line {len(lines)}", "values, expected")


def test_nan_and_inf_values(tmp_path):
    _, text = _good(tmp_path)
    lines = text.splitlines()
    for tok in ("nan", "inf", "-Infinity"):
        bad = lines.copy()
        bad[-3] = bad[-3].replace("0.000000", tok, 1)
        _expect(tmp_path, "\n".join(bad) + "\n", f"line {len(lines) - 2}", "NaN/inf")


def test_zero_frames_and_bad_frame_time(tmp_path):
    _, text = _good(tmp_path)
    head = text[: text.index("Frames:")]
    _expect(tmp_path, head + "Frames: 0\nFrame Time: 0.0333\n", "zero frames")
    _expect(tmp_path, head + "Frames: 1\nFrame Time: 0\n" + text.splitlines()[-1] + "\n", "Frame Time must be positive")


def test_bad_gzip_and_not_bvh(tmp_path):
    p = tmp_path / "x.bvh.gz"
    p.write_bytes(b"not gzip at all")
    with pytest.raises(CorpusError, match="cannot read"):
        bvh.read_bvh(p)
    _expect(tmp_path, "hello\nMOTION\nFrames: 1\nFrame Time: 0.1\n0\n", "not a BVH file")


def test_unknown_joints_in_custom_map(tmp_path):
    path, _ = _good(tmp_path)
    mapping = {n: n for n in JOINT_NAMES}
    mapping["head"] = "Skull"
    mapping["l_wrist"] = {"l_wrist": 0.5, "LeftHandIndex": 0.5}
    mp = tmp_path / "m.json"
    mp.write_text(json.dumps(mapping))
    with pytest.raises(CorpusError) as ei:
        bvh.bvh_to_motion(path, preset=mp)
    assert str(path) in str(ei.value) and "LeftHandIndex" in str(ei.value) and "Skull" in str(ei.value)
    # unknown / missing SMPL names in the map itself name the map file
    mp.write_text(json.dumps({"pelvis": "pelvis", "tail": "x"}))
    with pytest.raises(CorpusError) as ei:
        bvh.load_joint_map(mp)
    assert str(mp) in str(ei.value) and "tail" in str(ei.value) and "missing SMPL joints" in str(ei.value)
    with pytest.raises(CorpusError, match="unknown preset"):
        bvh.resolve_preset("nope")


def test_iter_skips_bad_files_and_reports_them(tmp_path):
    good, text = _good(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.bvh").write_text(text[:200])
    mp = identity_map(tmp_path)
    errors: list[str] = []
    motions = list(bvh.iter_bvh_motions([tmp_path], preset=mp, skip_bad=True, errors=errors))
    assert [m.name for m in motions] == ["bvh/good"]
    assert len(errors) == 1 and "broken.bvh" in errors[0]
    with pytest.raises(CorpusError, match="broken.bvh"):
        list(bvh.iter_bvh_motions([tmp_path], preset=mp))


def test_unknown_skeleton_asks_for_a_map(tmp_path):
    path, text = _good(tmp_path)
    path.write_text(text.replace("pelvis", "Hips").replace("spine3", "Chest"))  # no preset knows these
    with pytest.raises(CorpusError, match="unknown skeleton"):
        bvh.bvh_to_motion(path)


def test_canonical_joint_names_are_detected_as_smpl(tmp_path):
    path, _ = _good(tmp_path)
    assert bvh.detect_preset(bvh.read_bvh(path)).name == "smpl"
    m = bvh.bvh_to_motion(path)
    assert m.joints.shape[1:] == (22, 3)


# ------------------------------------------------------------------------------------- labels
def test_bandai_sentences_cover_every_label():
    for d in ("set1", "set2"):
        cfg = DATA / "bandai-namco" / d / "cfg"
        if not cfg.exists():
            pytest.skip(f"shared data not found: {cfg}")
        for line in (cfg / "content_label.txt").read_text().split():
            assert line.split("_", 1)[1] in bvh.BANDAI_CONTENT_PHRASES
        for line in (cfg / "style_label.txt").read_text().split():
            assert line.split("_", 1)[1] in bvh.BANDAI_STYLE_PHRASES
    assert "a person waves the left hand, exhausted" in bvh.bandai_sentences("wave-left-hand", "exhausted")
    assert bvh.bandai_sentence("walk", "happy", "k1") == bvh.bandai_sentence("walk", "happy", "k1")


def test_bandai_labels_and_missing_bvh(tmp_path):
    need_data(FAMILY_FILES["bandai"])
    src = DATA / "bandai-namco" / "set1"
    d = tmp_path / "set1"
    shutil.copytree(src / "cfg", d / "cfg")
    stem = "dataset-1_walk_normal_001"
    shutil.copy(src / f"{stem}.bvh", d)
    shutil.copy(src / f"{stem}.json", d)
    (d / "dataset-1_dance-long_normal_001.json").write_text('{"content": 15, "style": 0}')
    errors: list[str] = []
    motions = list(bvh.iter_bvh_motions([tmp_path], skip_bad=True, errors=errors))
    assert len(motions) == 1 and len(errors) == 1
    assert "dataset-1_dance-long_normal_001.json" in errors[0] and "without motion" in errors[0]
    m = motions[0]
    assert m.name == f"bandai/{stem}" and m.source == "bandai" and m.split in ("train", "val", "test")
    (ann,) = m.annotations
    assert ann.start_s == 0.0 and ann.end_s == pytest.approx(m.duration_s)
    assert ann.extra["content"] == "walk" and ann.extra["style"] == "normal" and ann.text.startswith("a person walk")
    with pytest.raises(CorpusError, match="dance-long_normal_001.json"):
        list(bvh.iter_bvh_motions([tmp_path]))
    (d / f"{stem}.json").write_text('{"content": 99, "style": 0}')
    with pytest.raises(CorpusError, match="out of range"):
        bvh.bvh_to_motion(d / f"{stem}.bvh")


# ----------------------------------------------------------------------------------- real files
def check_plausible(joints: np.ndarray, where: str, pelvis_range=(0.7, 1.2)) -> None:
    j = joints.astype(np.float64)
    bl = bone_lengths(j)
    med = np.median(bl, axis=0)
    assert (np.abs(bl - med) <= 0.01 * med + 1e-6).all(), f"{where}: bone lengths drift"
    y = j[..., 1]
    assert y[:, 15].mean() > y[:, 0].mean() > y[:, [7, 8, 10, 11]].mean(), f"{where}: not upright"
    assert pelvis_range[0] <= np.median(y[:, 0]) <= pelvis_range[1], f"{where}: pelvis height {np.median(y[:, 0])}"
    assert np.median(y[:, [7, 8, 10, 11]].min(axis=1)) < 0.1, f"{where}: feet off the ground"
    # the person's left is +x when facing +z: (left - right) x up points forward, where the toes point
    # and the knees bend (toes alone point back in a sprint's back swing); a mirrored skeleton fails
    across, up = j[:, 1] - j[:, 2], j[:, 9] - j[:, 0]
    forward = np.cross(across, up)
    feet = (j[:, 10] - j[:, 7]) + (j[:, 11] - j[:, 8])
    knees = (j[:, 4] - (j[:, 1] + j[:, 7]) / 2) + (j[:, 5] - (j[:, 2] + j[:, 8]) / 2)
    assert np.mean(np.einsum("ti,ti->t", forward, feet + knees) > 0) > 0.9, f"{where}: left/right swapped"
    assert np.mean(y[:, [16, 17]].min(axis=1) > y[:, 0]) > 0.5, f"{where}: shoulders below the pelvis"


@pytest.mark.parametrize("family", list(FAMILY_FILES))
def test_real_file_imports_plausibly(family):
    rel = FAMILY_FILES[family]
    need_data(rel)
    m = bvh.bvh_to_motion(DATA / rel)
    assert m.fps == 20.0 and m.joints.shape[1:] == (22, 3) and m.joints.dtype == np.float32
    src = bvh.read_bvh(DATA / rel)
    preset = bvh.detect_preset(src)
    assert preset.name == {"bandai": "bandai", "bandai2": "bandai"}.get(family, family)
    src_s = (src.n_frames - preset.drop_frames - 1) / src.fps
    assert m.n_frames == int(np.floor(src_s * 20 + 1e-6)) + 1
    check_plausible(m.joints, rel)
    with pytest.raises(AssertionError, match="left/right swapped"):  # the check can fail: a mirror image
        check_plausible(m.joints * np.array([-1.0, 1.0, 1.0], dtype=np.float32), rel)
    if family.startswith("bandai"):
        assert m.annotations and m.annotations[0].extra["content"] in rel


@pytest.mark.slow
def test_import_every_bvh_in_shared_data():
    need_data("bandai-namco", "cmu")
    t0 = time.perf_counter()
    errors: list[str] = []
    n = frames = 0
    for m in bvh.iter_bvh_motions([DATA], skip_bad=True, errors=errors):
        check_plausible(m.joints, m.path, pelvis_range=(0.5, 1.3))
        n += 1
        frames += m.n_frames
    seconds = time.perf_counter() - t0
    print(f"imported {n} BVH files ({frames} frames at 20 fps) in {seconds:.1f} s")
    assert n == 174 + 2152 + 11
    assert len(errors) == 1 and "dataset-1_dance-long_normal_001.json" in errors[0]
    assert seconds < 600  # includes the HumanML3D features, which bvh_to_motion computes since issue 15
