"""Dataset importers: arrays + unified JSON, BABEL, HumanML3D (Restore), AMASS .npz.

Fixtures are tiny files in the published formats, built in tmp_path. Motions are the real HumanML3D
sample clip when ../shared/data is present, else a random walk of a proper skeleton.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.corpus import amass, babel, humanml3d
from engine.corpus.arrays import iter_array_motions
from engine.corpus.importers import (
    as_motion_array,
    chirality,
    clip_span,
    mirror_joints,
    mirror_text,
)
from engine.corpus.skeleton import PARENTS, RAW_OFFSETS
from engine.corpus.store import CorpusStore
from engine.corpus.types import CorpusError, Motion

# ../shared/data beside the clone; ENGINE_SHARED_DATA points elsewhere (e.g. from a git worktree).
DATA = Path(os.environ.get("ENGINE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
SAMPLE = DATA / "humanml3d-sample" / "new_joints" / "012314.npy"


def _skeleton(n_frames: int, seed: int = 0) -> np.ndarray:
    """(T, 22, 3) float32: the real sample clip tiled to length, or a random-walking rest skeleton."""
    if SAMPLE.is_file():
        clip = np.load(SAMPLE).astype(np.float32)
        reps = -(-n_frames // len(clip))
        out = np.concatenate([clip] * reps)[:n_frames].copy()
        out += np.random.default_rng(seed).normal(scale=1e-3, size=out.shape).astype(np.float32)
        return out
    rng = np.random.default_rng(seed)
    rest = np.zeros((22, 3))
    for j in range(1, 22):
        rest[j] = rest[PARENTS[j]] + RAW_OFFSETS[j] * 0.12
    rest[:, 1] += 0.9
    root = np.cumsum(rng.normal(scale=0.01, size=(n_frames, 3)), axis=0) * [1, 0, 1]
    return (rest[None] + root[:, None] + rng.normal(scale=0.005, size=(n_frames, 22, 3))).astype(np.float32)


def _write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return path


# ------------------------------------------------------------------------------------------ shared parts
def test_chirality_and_mirroring():
    j = _skeleton(60)
    assert chirality(j) > 0.9
    flipped = j.copy()
    flipped[..., 0] *= -1
    assert chirality(flipped) < -0.9  # a reflection alone makes the skeleton mirror-handed
    m = mirror_joints(j)
    assert chirality(m) > 0.9  # reflection + left/right swap is a proper skeleton again
    np.testing.assert_allclose(m[:, 1, 0], -j[:, 2, 0])  # new l_hip = reflected old r_hip
    np.testing.assert_allclose(mirror_joints(m), j, atol=1e-6)


def test_mirror_text():
    assert (
        mirror_text("a person waves the left hand, then turns right")
        == "a person waves the right hand, then turns left"
    )
    assert (
        mirror_text("Left leg kicks; walks leftwards clockwise")
        == "Right leg kicks; walks rightwards counterclockwise"
    )
    assert mirror_text("turns counter-clockwise, right-handed, LEFT") == "turns clockwise, left-handed, RIGHT"
    assert mirror_text("leftover righteous") == "leftover righteous"


def test_as_motion_array_shapes_and_layouts(tmp_path):
    j = _skeleton(30)
    assert as_motion_array(j, "x.npy").kind == "joints"
    assert as_motion_array(np.zeros((29, 263)), "x.npy").kind == "features"
    smplh = np.concatenate([j, np.zeros((30, 30, 3), np.float32)], axis=1)  # (T, 52, 3)
    pose_data = smplh.copy()
    pose_data[..., 0] *= -1  # HumanML3D pose_data: mirror-handed until its x *= -1
    auto = as_motion_array(pose_data, "p.npy")
    assert auto.handedness_fixed and auto.joints.shape == (30, 22, 3)
    np.testing.assert_allclose(auto.joints, j)
    assert not as_motion_array(smplh, "p.npy").handedness_fixed
    np.testing.assert_allclose(as_motion_array(pose_data, "p.npy", layout="pose_data").joints, j)
    np.testing.assert_allclose(as_motion_array(pose_data, "p.npy", layout="joints").joints, pose_data[:, :22])
    for bad, words in [
        (np.zeros((30, 21, 3)), "(30, 21, 3)"),
        (np.zeros((30, 262)), "(30, 262)"),
        (np.zeros((1, 22, 3)), "zero-length"),
        (np.zeros((0, 263)), "zero-length"),
    ]:
        with pytest.raises(CorpusError, match=r"bad\.npy") as e:
            as_motion_array(bad, "bad.npy")
        assert words in str(e.value)
    with pytest.raises(CorpusError, match="features"):
        as_motion_array(j, "x.npy", layout="features")


def test_absurd_values_and_oversized_files_are_refused(tmp_path):
    """Issue 15: a finite 1e30 imported fine and later poisoned the index; a huge .npy was read whole."""
    from engine.corpus.importers import load_motion_array
    from engine.corpus.limits import ImportLimits

    j = _skeleton(30)
    j[7, 0, 0] = 1e30
    with pytest.raises(CorpusError, match=r"far\.npy: joint frame 7 holds NaN/inf or a value beyond 10000"):
        as_motion_array(j, "far.npy")
    f = np.zeros((29, 263), np.float32)
    f[3, 5] = -2e4
    with pytest.raises(CorpusError, match=r"f\.npy: feature frame 3 holds"):
        as_motion_array(f, "f.npy")
    p = _save(tmp_path / "big.npy", _skeleton(2000))
    assert load_motion_array(p).n_frames == 2000
    with pytest.raises(CorpusError, match=r"big\.npy: file is .* over the limit of 100 bytes"):
        load_motion_array(p, limits=ImportLimits(max_file_bytes=100))


def test_clip_span():
    assert clip_span(-0.1, 5.2, 5.0, "r") == (0.0, 5.0)
    with pytest.raises(CorpusError, match="r: label 1.000-6.000s is outside the motion"):
        clip_span(1.0, 6.0, 5.0, "r")
    with pytest.raises(CorpusError, match="non-finite"):
        clip_span(float("nan"), 1.0, 5.0, "r")


# ------------------------------------------------------------------------------------------ arrays
def _arrays_fixture(tmp_path: Path) -> Path:
    d = tmp_path / "ds"
    _save(d / "motions" / "a.npy", _skeleton(40))
    _save(d / "motions" / "sub" / "b.npy", np.random.default_rng(1).normal(size=(59, 263)).astype(np.float32))
    ann = {
        "0001": {
            "path": "motions/a",
            "duration": 2.0,
            "annotations": [
                {
                    "seg_id": "0001_seg_0",
                    "text": " walk forward ",
                    "start": 0.25,
                    "end": 1.5,
                    "babel_id": "xyz",
                },
                {"seg_id": "0001_seg_1", "text": "stop", "start": 1.5, "end": 2.05},
            ],
        },
        "0002": {
            "path": "motions/sub/b.npy",
            "duration": 2.0,
            "fps": 30,
            "split": "test",
            "annotations": [{"text": "jump", "start": 0.0, "end": 1.0}],
        },
        "0003": {"path": "motions/a", "duration": 2.0, "annotations": []},
    }
    _write_json(d / "annotations.json", ann)
    (d / "splits").mkdir()
    (d / "splits" / "train.txt").write_text("0001\n0003\n")
    (d / "splits" / "val.txt").write_text("0002\n")
    return d


def test_arrays_end_to_end(tmp_path):
    d = _arrays_fixture(tmp_path)
    ms = list(iter_array_motions(d / "annotations.json", source="ds"))
    assert [m.name for m in ms] == ["ds/0001", "ds/0002", "ds/0003"]
    a, b, c = ms
    assert a.joints.shape == (40, 22, 3) and a.features is None and a.fps == 20.0 and a.split == "train"
    assert [(x.seg_id, x.text, x.start_s, x.end_s) for x in a.annotations] == [
        ("0001_seg_0", "walk forward", 0.25, 1.5),
        ("0001_seg_1", "stop", 1.5, 2.0),
    ]  # 2.05 clipped to 2.0
    assert a.annotations[0].extra == {"babel_id": "xyz"}
    assert b.features.shape == (59, 263) and b.joints is None and b.fps == 30.0 and b.n_frames == 60
    assert b.split == "test"  # the entry's own split wins over splits/val.txt
    assert b.annotations[0].seg_id == "0002_0"
    assert c.annotations == [] and c.split == "train"
    assert [m.name for m in iter_array_motions(d / "annotations.json", keep_unlabelled=False)] == [
        "arrays/0001",
        "arrays/0002",
    ]


def test_arrays_into_store(tmp_path):
    d = _arrays_fixture(tmp_path)
    feats_only = [m for m in iter_array_motions(d / "annotations.json") if m.features is not None]
    with CorpusStore.open(tmp_path / "corpus") as store:
        rep = store.add_motions(feats_only)
        assert rep.added == 1 and rep.bad == []
        got = store.get_motion(rep.motion_ids[0])
        assert got.fps == 30.0 and [(a.text, a.start_s, a.end_s) for a in got.annotations] == [
            ("jump", 0.0, 1.0)
        ]


def test_arrays_joints_into_store(tmp_path):
    pytest.importorskip("engine.corpus.features", reason="features.py (joints -> 263) not written yet")
    d = _arrays_fixture(tmp_path)
    with CorpusStore.open(tmp_path / "corpus") as store:
        rep = store.add_motions(iter_array_motions(d / "annotations.json"))
        assert rep.added == 3 and store.features(rep.motion_ids[0]).shape == (39, 263)


@pytest.mark.parametrize(
    "case, match",
    [
        ("wrong_width", r"e\.npy.*shape \(20, 262\)"),
        ("nan", r"e\.npy.*NaN/inf joint values in 1 of 20 frames \(first: frame 7\)"),
        ("zero_length", r"e\.npy.*zero-length"),
        ("missing", r"entry 'e'.*motion file not found"),
        ("outside", r"entry 'e', annotation 0: label 0\.500-9\.000s is outside the motion \(0-1\.000s\)"),
        ("no_text", r"entry 'e', annotation 0: missing or empty \"text\""),
    ],
)
def test_arrays_bad_records(tmp_path, case, match):
    d = _arrays_fixture(tmp_path)
    arr = {
        "wrong_width": np.zeros((20, 262)),
        "nan": _skeleton(20),
        "zero_length": np.zeros((1, 22, 3)),
        "outside": _skeleton(20),
        "no_text": _skeleton(20),
    }.get(case)
    if case == "nan":
        arr[7, 3, 1] = np.nan
    if arr is not None:
        _save(d / "motions" / "e.npy", arr)
    ann = json.loads((d / "annotations.json").read_text())
    ann["e"] = {
        "path": "motions/e",
        "annotations": [
            {"text": "" if case == "no_text" else "x", "start": 0.5, "end": 9.0 if case == "outside" else 0.9}
        ],
    }
    _write_json(d / "annotations.json", ann)
    with pytest.raises(CorpusError, match=match) as e:
        list(iter_array_motions(d / "annotations.json"))
    assert "annotations.json" in str(e.value)
    errors: list[str] = []
    names = [m.name for m in iter_array_motions(d / "annotations.json", skip_bad=True, errors=errors)]
    assert names == ["arrays/0001", "arrays/0002", "arrays/0003"]  # the rest goes on
    assert len(errors) == 1 and "'e'" in errors[0]


def test_arrays_unreadable_json(tmp_path):
    p = tmp_path / "annotations.json"
    p.write_text('{"a": {"path": ')
    with pytest.raises(CorpusError, match=r"annotations\.json: unreadable JSON"):
        list(iter_array_motions(p, skip_bad=True))
    with pytest.raises(CorpusError, match="file not found"):
        list(iter_array_motions(tmp_path / "nope.json"))


# ------------------------------------------------------------------------------------------ BABEL
def _label(text, start, end, seg, cat=None, proc=None):
    return {
        "raw_label": text,
        "proc_label": proc or text,
        "act_cat": cat or [text],
        "seg_id": seg,
        "start_t": start,
        "end_t": end,
    }


def _babel_fixture(tmp_path: Path) -> tuple[Path, Path]:
    bdir, mdir = tmp_path / "babel_v1.0_release", tmp_path / "motions"
    # three sequences, stored under the three mappings of feat_p
    _save(mdir / "CMU" / "CMU" / "141" / "141_05_poses.npy", _skeleton(77))  # as feat_p: 3.85 s
    _save(mdir / "KIT" / "3" / "walk_poses.npy", _skeleton(100, seed=1))  # first folder dropped
    _save(mdir / "BMLrub" / "rub001" / "0001_poses.npy", _skeleton(60, seed=2))  # renamed dataset folder
    train = {
        "7692": {
            "babel_sid": 7692,
            "feat_p": "CMU/CMU/141/141_05_poses.npz",
            "dur": 3.83,
            "url": "u",
            "seq_ann": {"anntr_id": "a0", "labels": [_label("jump", None, None, "s-seq")]},
            "frame_ann": {
                "anntr_id": "a1",
                "mul_act": True,
                "labels": [
                    _label("hopping left", 1, 2, "s1", ["hop"], "hop left"),
                    _label("transition", 2, 2.5, "s2", ["transition"]),
                    _label("standing", 0, 1, "s0", ["stand"], "stand"),
                    _label("standing", 2.5, 3.834, "s3", ["stand"], "stand"),
                ],
            },
        },
        "12": {
            "babel_sid": 12,
            "feat_p": "KIT/KIT/3/walk_poses.npz",
            "dur": 5.0,
            "seq_ann": {"labels": [_label("walk", None, None, "w-seq")]},
            "frame_ann": {"labels": [_label("walk forward", 0.0, 5.0, "w1", ["walk"])]},
        },
    }
    val = {
        "900": {
            "babel_sid": 900,
            "feat_p": "BioMotionLab_NTroje/BioMotionLab_NTroje/rub001/0001_poses.npz",
            "dur": 3.0,
            "seq_ann": {"labels": [_label("wave both arms", None, None, "v-seq", ["wave"])]},
            "frame_ann": None,
        }
    }
    extra_train = {
        "12": {
            "babel_sid": 12,
            "feat_p": "KIT/KIT/3/walk_poses.npz",
            "dur": 5.0,
            "seq_anns": [{"labels": [_label("walking", None, None, "x-seq")]}],
            "frame_anns": [
                {"anntr_id": "e1", "labels": [_label("walk slowly", 0.5, 4.0, "e1a")]},
                {"anntr_id": "e2", "labels": [_label("stroll", 1.0, 4.5, "e2a")]},
            ],
        }
    }
    _write_json(bdir / "train.json", train)
    _write_json(bdir / "val.json", val)
    _write_json(bdir / "extra_train.json", extra_train)
    return bdir, mdir


def test_babel_end_to_end(tmp_path, caplog):
    bdir, mdir = _babel_fixture(tmp_path)
    ms = {m.name: m for m in babel.iter_babel_motions(bdir, mdir)}
    assert sorted(ms) == ["babel/12", "babel/7692", "babel/900"]
    hop = ms["babel/7692"]
    assert hop.split == "train" and hop.fps == 20.0 and hop.joints.shape == (77, 22, 3)
    assert hop.path.endswith("CMU/CMU/141/141_05_poses.npy")
    assert [(a.text, a.start_s, a.end_s) for a in hop.annotations] == [
        ("standing", 0.0, 1.0),
        ("hopping left", 1.0, 2.0),
        ("standing", 2.5, 3.834),
    ]  # no "transition"
    assert hop.annotations[1].seg_id == "s1"
    assert (
        hop.annotations[1].extra["act_cat"] == ["hop"]
        and hop.annotations[1].extra["proc_label"] == "hop left"
    )
    assert hop.meta["transitions_dropped"] == 1 and hop.meta["babel_sid"] == "7692"
    walk = ms["babel/12"]  # train.json + extra_train.json: one motion, labels of every annotator
    assert walk.path.endswith("KIT/3/walk_poses.npy") and walk.meta["files"] == [
        "train.json",
        "extra_train.json",
    ]
    assert sorted((a.text, a.start_s, a.end_s) for a in walk.annotations) == [
        ("stroll", 1.0, 4.5),
        ("walk forward", 0.0, 5.0),
        ("walk slowly", 0.5, 4.0),
    ]
    assert {a.extra.get("anntr_id") for a in walk.annotations} == {None, "e1", "e2"}
    wave = ms["babel/900"]  # frame_ann null -> the sequence label covers the whole motion
    assert wave.split == "val" and wave.path.endswith("BMLrub/rub001/0001_poses.npy")
    assert [(a.text, a.start_s, a.end_s, a.extra["whole_motion"]) for a in wave.annotations] == [
        ("wave both arms", 0.0, 3.0, True)
    ]
    assert "no frame labels" in caplog.text


def test_babel_options(tmp_path):
    bdir, mdir = _babel_fixture(tmp_path)
    ms = {
        m.name: m
        for m in babel.iter_babel_motions(
            bdir,
            mdir,
            keep_transitions=True,
            seq_fallback=False,
            label_field="proc_label",
            val_split="test",
            files=["train", "val.json"],
        )
    }
    assert sorted(ms) == ["babel/12", "babel/7692"]  # 900 had only a sequence label
    assert [a.text for a in ms["babel/7692"].annotations] == ["stand", "hop left", "transition", "stand"]
    assert [a.text for a in ms["babel/12"].annotations] == ["walk forward"]  # extra file not read
    ms = {m.name: m for m in babel.iter_babel_motions(bdir, mdir, val_split="test")}
    assert ms["babel/900"].split == "test"


def test_babel_fps_from_dur(tmp_path):
    bdir, mdir = _babel_fixture(tmp_path)
    _save(mdir / "KIT" / "3" / "walk_poses.npy", _skeleton(104, seed=1))  # 250 Hz / 12 = 20.83 fps for 5 s
    m = next(m for m in babel.iter_babel_motions(bdir, mdir) if m.name == "babel/12")
    assert m.fps == pytest.approx(104 / 5.0) and m.meta["fps_from_babel_dur"]
    assert max(a.end_s for a in m.annotations) == pytest.approx(5.0)


@pytest.mark.parametrize(
    "case, match",
    [
        (
            "outside",
            r"train\.json: sequence 12 \(KIT/KIT/3/walk_poses\.npz\), label w1: label 0\.000-9\.000s is "
            r"outside the motion",
        ),
        ("missing", r"train\.json: sequence 12 .*motion file not found"),
        ("nan", r"train\.json: sequence 12 .*walk_poses\.npy\): NaN/inf joint values"),
        (
            "bad_dur",
            r"train\.json: sequence 12 .*has 100 frames \(5\.00 s at 20 fps\) but BABEL's dur is 50\.00 s",
        ),
    ],
)
def test_babel_bad_records(tmp_path, case, match):
    bdir, mdir = _babel_fixture(tmp_path)
    train = json.loads((bdir / "train.json").read_text())
    if case == "outside":
        train["12"]["frame_ann"]["labels"][0]["end_t"] = 9.0
    elif case == "missing":
        (mdir / "KIT" / "3" / "walk_poses.npy").unlink()
    elif case == "nan":
        arr = _skeleton(100, seed=1)
        arr[3] = np.inf
        _save(mdir / "KIT" / "3" / "walk_poses.npy", arr)
    elif case == "bad_dur":
        train["12"]["dur"] = 50.0
    _write_json(bdir / "train.json", train)
    (bdir / "extra_train.json").unlink()
    with pytest.raises(CorpusError, match=match):
        list(babel.iter_babel_motions(bdir, mdir))
    errors: list[str] = []
    names = [m.name for m in babel.iter_babel_motions(bdir, mdir, skip_bad=True, errors=errors)]
    assert names == ["babel/900", "babel/7692"] and len(errors) == 1 and "sequence 12" in errors[0]


def test_babel_unreadable_file(tmp_path):
    bdir, mdir = _babel_fixture(tmp_path)
    (bdir / "val.json").write_text("{not json")
    with pytest.raises(CorpusError, match=r"val\.json: unreadable JSON"):
        list(babel.iter_babel_motions(bdir, mdir))
    errors: list[str] = []
    names = [m.name for m in babel.iter_babel_motions(bdir, mdir, skip_bad=True, errors=errors)]
    assert names == ["babel/12", "babel/7692"] and "val.json" in errors[0]


def test_babel_motion_candidates():
    c = babel.babel_motion_candidates(Path("m"), "MPI_HDM05/MPI_HDM05/bk/HDM_bk_01_poses.npz")
    assert [p.as_posix() for p in c] == [
        "m/MPI_HDM05/MPI_HDM05/bk/HDM_bk_01_poses.npy",
        "m/MPI_HDM05/bk/HDM_bk_01_poses.npy",
        "m/HDM05/HDM05/bk/HDM_bk_01_poses.npy",
        "m/HDM05/bk/HDM_bk_01_poses.npy",
    ]


# ------------------------------------------------------------------------------------------ HumanML3D
def _h3d_fixture(tmp_path: Path, n_extra_sources: int = 0) -> Path:
    root = tmp_path / "HumanML3D"
    pose = root / "pose_data"

    # pose_data arrays: 52 joints, mirror-handed as HumanML3D's raw_pose_processing writes them
    def pose_data(n, seed):
        j = _skeleton(n, seed)
        j = np.concatenate([j, np.repeat(j[:, 20:22], 15, axis=1)], axis=1)  # (T, 52, 3)
        j[..., 0] *= -1
        return j

    _save(pose / "KIT" / "3" / "kick_left_poses.npy", pose_data(200, 0))
    _save(
        pose / "Eyes_Japan_Dataset" / "aita" / "walk-aita_poses.npy", pose_data(300, 1)
    )  # 60 frames dropped
    _save(pose / "CMU" / "01" / "01_01_poses.npy", pose_data(100, 2))
    _save(pose / "humanact12" / "humanact12" / "P01.npy", pose_data(50, 3))
    rows = [
        ("./pose_data/KIT/3/kick_left_poses.npy", 0, 60, "000000.npy"),
        ("./pose_data/KIT/3/kick_left_poses.npy", 100, 160, "000001.npy"),
        ("./pose_data/Eyes_Japan_Dataset/aita/walk-aita_poses.npy", 10, 70, "000002.npy"),
        ("./pose_data/CMU/01/01_01_poses.npy", 5, 95, "000003.npy"),  # 90% of the motion: dropped
        ("./pose_data/humanact12/humanact12/P01.npy", 0, -1, "000004.npy"),
    ]
    texts = {
        "000000": [
            "a person kicks with the left leg.#a/DET person/NOUN kick/VERB left/ADJ leg/NOUN#0.0#0.0",
            "someone lifts a leg#someone/PRON lift/VERB#1.0#2.5",
        ],
        "000001": ["a man turns right.#a/DET man/NOUN turn/VERB right/ADV#0.0#0.0"],
        "000002": ["walking forward#walk/VERB forward/ADV#0.0#0.0", "a person walks in a circle#...#nan#nan"],
        "000003": ["a person jumps#a/DET person/NOUN jump/VERB#0.0#0.0"],
        "000004": ["a person drinks#...#0.0#0.0", "lifts the cup#...#0.5#1.0"],
    }
    for i in range(n_extra_sources):
        _save(pose / "SFU" / f"{i:04d}" / "x_poses.npy", pose_data(60, 10 + i))
        rows.append((f"./pose_data/SFU/{i:04d}/x_poses.npy", 0, 20, f"1{i:05d}.npy"))
        texts[f"1{i:05d}"] = ["a person waves#...#0.0#0.0"]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source_path", "start_frame", "end_frame", "new_name"])
        w.writerows(rows)
    (root / "texts").mkdir()
    for name, lines in texts.items():
        (root / "texts" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_humanml3d_restore_end_to_end(tmp_path):
    root = _h3d_fixture(tmp_path)
    ms = {m.name: m for m in humanml3d.iter_humanml3d_motions(root, split_fractions=(1, 0, 0))}
    assert sorted(ms) == [
        "humanml3d/Eyes_Japan_Dataset/aita/walk-aita_poses",
        "humanml3d/KIT/3/kick_left_poses",
        "humanml3d/M/Eyes_Japan_Dataset/aita/walk-aita_poses",
        "humanml3d/M/KIT/3/kick_left_poses",
        "humanml3d/M/humanact12/humanact12/P01",
        "humanml3d/humanact12/humanact12/P01",
    ]
    # CMU/01/01_01: its only crop covers 90% of the motion -> dropped by the 80% rule -> no motion
    kick = ms["humanml3d/KIT/3/kick_left_poses"]
    assert kick.joints.shape == (200, 22, 3) and kick.fps == 20.0 and kick.meta["handedness_fixed"]
    assert chirality(kick.joints) > 0.9
    assert [(a.seg_id, a.text, a.start_s, a.end_s) for a in kick.annotations] == [
        ("000000_1", "a person kicks with the left leg.", 0.0, 3.0),
        ("000000_2", "someone lifts a leg", 1.0, 2.5),  # sub-span 1.0-2.5 s of the crop at 0 s
        ("000001_1", "a man turns right.", 5.0, 8.0),
    ]
    assert kick.annotations[0].extra["tokens"].startswith("a/DET") and kick.annotations[1].extra[
        "crop_s"
    ] == [0.0, 3.0]
    eyes = ms[
        "humanml3d/Eyes_Japan_Dataset/aita/walk-aita_poses"
    ]  # first 3 s (60 frames) dropped, as HumanML3D
    assert eyes.n_frames == 240 and eyes.meta["offset_frames"] == 60
    assert [(a.text, a.start_s, a.end_s) for a in eyes.annotations] == [
        ("walking forward", 0.5, 3.5),
        ("a person walks in a circle", 0.5, 3.5),
    ]  # nan#nan = whole crop
    act = ms["humanml3d/humanact12/humanact12/P01"]  # HumanAct12: the whole clip; 100% dropped, sub-span kept
    assert [(a.text, a.start_s, a.end_s) for a in act.annotations] == [("lifts the cup", 0.5, 1.0)]
    mk = ms["humanml3d/M/KIT/3/kick_left_poses"]
    np.testing.assert_allclose(mk.joints, mirror_joints(kick.joints))
    assert [(a.seg_id, a.text, a.start_s) for a in mk.annotations][::2] == [
        ("M000000_1", "a person kicks with the right leg.", 0.0),
        ("M000001_1", "a man turns left.", 5.0),
    ]
    assert mk.annotations[0].extra["tokens"] == "a/DET person/NOUN kick/VERB right/ADJ leg/NOUN"
    assert mk.meta["mirror_of"] == kick.name and mk.split == kick.split == "train"


def test_humanml3d_keep_offset_and_no_mirror(tmp_path):
    root = _h3d_fixture(tmp_path)
    ms = {m.name: m for m in humanml3d.iter_humanml3d_motions(root, mirror=False, trim_offsets=False)}
    assert not any("/M/" in n for n in ms)
    eyes = ms["humanml3d/Eyes_Japan_Dataset/aita/walk-aita_poses"]
    assert eyes.n_frames == 300 and (eyes.annotations[0].start_s, eyes.annotations[0].end_s) == (3.5, 6.5)


def test_humanml3d_80_percent_rule(tmp_path):
    root = _h3d_fixture(tmp_path)
    names = {m.name for m in humanml3d.iter_humanml3d_motions(root, max_moment_ratio=0.95, mirror=False)}
    assert "humanml3d/CMU/01/01_01_poses" in names  # 90% < 95%
    m = next(
        m
        for m in humanml3d.iter_humanml3d_motions(root, keep_unlabelled=True, mirror=False)
        if m.name == "humanml3d/CMU/01/01_01_poses"
    )
    assert m.annotations == [] and m.meta["moments_dropped_long"] == 1
    # every kept moment is at most 80% of its motion
    for m in humanml3d.iter_humanml3d_motions(root):
        assert all(a.duration_s <= 0.8 * m.duration_s + 1e-9 for a in m.annotations)


def test_humanml3d_splits_are_disjoint_by_source(tmp_path):
    root = _h3d_fixture(tmp_path, n_extra_sources=40)
    ms = list(humanml3d.iter_humanml3d_motions(root, seed=3, split_fractions=(0.6, 0.2, 0.2)))
    split_of: dict[str, str] = {}
    for m in ms:
        key = m.meta["amass_path"]
        assert split_of.setdefault(key, m.split) == m.split  # the mirror is in its source's split
    counts = {s: sum(1 for v in split_of.values() if v == s) for s in ("train", "val", "test")}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    again = {
        m.name: m.split
        for m in humanml3d.iter_humanml3d_motions(root, seed=3, split_fractions=(0.6, 0.2, 0.2))
    }
    assert again == {m.name: m.split for m in ms}  # seeded
    other = {
        m.name: m.split
        for m in humanml3d.iter_humanml3d_motions(root, seed=4, split_fractions=(0.6, 0.2, 0.2))
    }
    assert other != again
    s = humanml3d.assign_splits([f"k{i}" for i in range(100)], (0.8, 0.05, 0.15), seed=0)
    assert sorted(s.values()).count("train") == 80 and list(s.values()).count("val") == 5
    assert s == humanml3d.assign_splits([f"k{i}" for i in reversed(range(100))], (0.8, 0.05, 0.15), seed=0)


def test_humanml3d_fps_from_amass(tmp_path):
    root = _h3d_fixture(tmp_path)
    amass_root = tmp_path / "amass_data"
    (amass_root / "KIT" / "3").mkdir(parents=True)
    np.savez(amass_root / "KIT" / "3" / "kick_left_poses.npz", mocap_framerate=250.0)
    kick = next(
        m
        for m in humanml3d.iter_humanml3d_motions(root, amass_root=amass_root, mirror=False)
        if m.name.endswith("kick_left_poses")
    )
    assert kick.fps == pytest.approx(250 / 12) and kick.meta["mocap_fps"] == 250.0
    assert kick.annotations[-1].start_s == pytest.approx(100 / (250 / 12))


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_text", r"texts/000001\.txt: caption file not found"),
        ("bad_line", r"texts/000001\.txt:1: expected 'caption#tokens#start#end'"),
        (
            "outside",
            r"index\.csv: row 2 \(000001\.npy, \./pose_data/KIT/3/kick_left_poses\.npy\): crop frames "
            r"100-400 are outside the motion \(200 frames",
        ),
        (
            "nan",
            r"source \./pose_data/KIT/3/kick_left_poses\.npy .*kick_left_poses\.npy\): NaN/inf joint values",
        ),
        ("missing_motion", r"source \./pose_data/KIT/3/kick_left_poses\.npy .*motion file not found"),
    ],
)
def test_humanml3d_bad_records(tmp_path, case, match):
    root = _h3d_fixture(tmp_path)
    if case == "missing_text":
        (root / "texts" / "000001.txt").unlink()
    elif case == "bad_line":
        (root / "texts" / "000001.txt").write_text("no separators here\n")
    elif case == "outside":
        text = (
            (root / "index.csv")
            .read_text()
            .replace("kick_left_poses.npy,100,160", "kick_left_poses.npy,100,400")
        )
        (root / "index.csv").write_text(text)
    elif case == "nan":
        arr = np.load(root / "pose_data" / "KIT" / "3" / "kick_left_poses.npy")
        arr[50, 0] = np.nan
        np.save(root / "pose_data" / "KIT" / "3" / "kick_left_poses.npy", arr)
    elif case == "missing_motion":
        (root / "pose_data" / "KIT" / "3" / "kick_left_poses.npy").unlink()
    with pytest.raises(CorpusError, match=match):
        list(humanml3d.iter_humanml3d_motions(root, mirror=False))
    errors: list[str] = []
    ms = {
        m.name: m for m in humanml3d.iter_humanml3d_motions(root, mirror=False, skip_bad=True, errors=errors)
    }
    assert len(errors) == 1 and ("kick_left_poses" in errors[0] or "000001" in errors[0])
    assert "humanml3d/Eyes_Japan_Dataset/aita/walk-aita_poses" in ms  # the iterator went on
    kick = ms.get("humanml3d/KIT/3/kick_left_poses")
    if case in ("missing_text", "bad_line", "outside"):  # only that crop is lost
        assert [a.seg_id for a in kick.annotations] == ["000000_1", "000000_2"]
    else:  # a bad motion file loses the whole source
        assert kick is None


def test_humanml3d_features_only_source_and_store(tmp_path):
    """A source given as 263-features: cropped like joints; its mirror goes through features_to_joints."""
    features = pytest.importorskip("engine.corpus.features")
    root = _h3d_fixture(tmp_path)
    kick = root / "pose_data" / "KIT" / "3" / "kick_left_poses.npy"
    joints = as_motion_array(np.load(kick), kick).joints
    kick.unlink()
    np.save(kick, features.joints_to_features(joints))  # (199, 263)
    ms = {m.name: m for m in humanml3d.iter_humanml3d_motions(root)}
    m, mm = ms["humanml3d/KIT/3/kick_left_poses"], ms["humanml3d/M/KIT/3/kick_left_poses"]
    assert m.joints is None and m.features.shape == (199, 263) and m.n_frames == 200
    assert [(a.start_s, a.end_s) for a in m.annotations] == [(0.0, 3.0), (1.0, 2.5), (5.0, 8.0)]
    assert mm.joints.shape == (199, 22, 3) and chirality(mm.joints) > 0.9
    with CorpusStore.open(tmp_path / "corpus") as store:
        rep = store.add_motions(ms.values())
        assert rep.added == len(ms) and rep.bad == []
        st = store.stats()
        assert st.motions == 6 and st.annotations == sum(len(x.annotations) for x in ms.values())


def test_humanml3d_finds_renamed_amass_folders(tmp_path):
    root = _h3d_fixture(tmp_path)
    old = root / "pose_data" / "Eyes_Japan_Dataset"
    old.rename(root / "pose_data" / "EyesJapanDataset")  # AMASS's current name for the subset
    ms = [m for m in humanml3d.iter_humanml3d_motions(root, mirror=False) if "aita" in m.name]
    assert [m.name for m in ms] == ["humanml3d/Eyes_Japan_Dataset/aita/walk-aita_poses"]
    assert "EyesJapanDataset" in ms[0].path and ms[0].meta["offset_frames"] == 60


def test_humanml3d_index_errors(tmp_path):
    root = _h3d_fixture(tmp_path)
    (root / "index.csv").write_text("source,start,end,name\nx,0,1,a.npy\n")
    with pytest.raises(CorpusError, match=r"index\.csv: header"):
        list(humanml3d.iter_humanml3d_motions(root))
    (root / "index.csv").write_text("source_path,start_frame,end_frame,new_name\nx,zero,1,a.npy\n")
    with pytest.raises(CorpusError, match=r"index\.csv: row 1: malformed row"):
        list(humanml3d.iter_humanml3d_motions(root))


def test_humanml3d_helpers():
    assert (
        humanml3d.source_key("./pose_data/KIT/3/kick_high_left02_poses.npy") == "KIT/3/kick_high_left02_poses"
    )
    assert humanml3d.offset_frames("./pose_data/Eyes_Japan_Dataset/hamada/x.npy") == 60
    assert humanml3d.offset_frames("./pose_data/Transitions_mocap/mazen_c3d/x.npy") == 10
    assert humanml3d.offset_frames("./pose_data/TotalCapture/s3/x.npy") == 20
    assert humanml3d.offset_frames("./pose_data/humanact12/humanact12/x.npy") == 0
    assert humanml3d.offset_frames("./pose_data/KIT/3/x.npy") == 0


@pytest.mark.skipif(not SAMPLE.is_file(), reason="../shared/data/humanml3d-sample is not present")
def test_humanml3d_real_sample_as_source(tmp_path):
    """The real clip 012314 as a 'full sequence' of Eyes_Japan_Dataset: frames 149-320 of its timeline."""
    clip = np.load(SAMPLE)  # (170, 22, 3): proper handedness already
    full = np.concatenate([np.repeat(clip[:1], 60 + 149, axis=0), clip, np.repeat(clip[-1:], 40, axis=0)])
    root = tmp_path / "h3d"
    _save(root / "pose_data" / "Eyes_Japan_Dataset" / "yamaoka" / "tennis-15-first service_poses.npy", full)
    (root / "texts").mkdir()
    (root / "texts" / "012314.txt").write_text(
        "a person serves a tennis ball with the right hand#...#0.0#0.0\n"
    )
    (root / "index.csv").write_text(
        "source_path,start_frame,end_frame,new_name\n"
        "./pose_data/Eyes_Japan_Dataset/yamaoka/tennis-15-first service_poses.npy,"
        "149,319,012314.npy\n"
    )
    ms = list(humanml3d.iter_humanml3d_motions(root))
    m, mm = ms
    assert not m.meta.get("handedness_fixed")
    a = m.annotations[0]
    assert (a.start_s, a.end_s) == (149 / 20, 319 / 20)
    np.testing.assert_array_equal(m.joints[149:319], clip)
    assert mm.annotations[0].text == "a person serves a tennis ball with the left hand"


# ------------------------------------------------------------------------------------------ AMASS
def _amass_npz(path: Path, n: int = 121, fps: float = 120.0, **over) -> Path:
    rng = np.random.default_rng(0)
    d = {
        "poses": rng.normal(scale=0.1, size=(n, 156)),
        "trans": np.cumsum(rng.normal(scale=0.01, size=(n, 3)), 0),
        "betas": rng.normal(size=16),
        "gender": np.array("female"),
        "mocap_framerate": np.array(fps),
    }
    d.update(over)
    d = {k: v for k, v in d.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **d)
    return path


def test_amass_npz_parsing(tmp_path):
    seq = amass.read_amass_npz(_amass_npz(tmp_path / "a.npz", gender=np.array(b"male")))
    assert seq.poses.shape == (121, 156) and seq.trans.shape == (121, 3) and seq.betas.shape == (16,)
    assert seq.gender == "male" and seq.mocap_fps == 120.0 and seq.model_type == "smplh"
    x = amass.read_amass_npz(
        _amass_npz(
            tmp_path / "x.npz",
            poses=np.zeros((121, 165)),
            mocap_framerate=None,
            mocap_frame_rate=np.array(60.0),
            surface_model_type=np.array("smplx"),
        )
    )
    assert x.model_type == "smplx" and x.mocap_fps == 60.0
    assert amass.read_mocap_fps(tmp_path / "x.npz") == 60.0
    bad = {
        "missing": ({"trans": None}, r"m\.npz: not an AMASS motion file: missing trans"),
        "width": ({"poses": np.zeros((121, 72))}, r"poses have shape \(121, 72\)"),
        "nan": (
            {"poses": np.where(np.arange(121)[:, None] == 9, np.nan, np.zeros((121, 156)))},
            r"NaN/inf poses in 1 frames \(first: frame 9\)",
        ),
        "fps": ({"mocap_framerate": None}, "no mocap_framerate"),
        "short": ({"poses": np.zeros((1, 156)), "trans": np.zeros((1, 3))}, "zero-length"),
    }
    for over, match in bad.values():
        with pytest.raises(CorpusError, match=match):
            amass.read_amass_npz(_amass_npz(tmp_path / "m.npz", **over))
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(CorpusError, match=r"broken\.npz: unreadable"):
        amass.read_amass_npz(tmp_path / "broken.npz")


def test_amass_resample_and_axes():
    np.testing.assert_array_equal(amass.resample_indices(121, 120.0, 20.0), np.arange(0, 121, 6))
    idx = amass.resample_indices(251, 250.0, 20.0)  # 1 s at 250 Hz -> 21 frames at exactly 20 fps
    assert len(idx) == 21 and idx[1] == 12 and idx[2] == 25 and idx[-1] == 250
    assert len(amass.resample_indices(10, 20.0, 20.0)) == 10
    pts = np.eye(3)[None]  # x, y, z unit vectors
    out = amass.zup_to_canonical(pts)[0]
    assert np.linalg.det(out) == pytest.approx(1.0)  # a rotation, not a reflection
    np.testing.assert_array_equal(out[2], [0, 1, 0])  # AMASS up (z) -> canonical up (y)


def test_amass_error_paths(tmp_path, monkeypatch):
    f = _amass_npz(tmp_path / "data" / "s1" / "walk_poses.npz")
    with pytest.raises(CorpusError, match="no body model path given"):
        list(amass.iter_amass_motions([f], body_model=None))
    with pytest.raises(CorpusError, match=r"nowhere: body model path does not exist"):
        list(amass.iter_amass_motions([f], body_model=tmp_path / "nowhere"))
    monkeypatch.setitem(sys.modules, "smplx", None)  # as if smplx were not installed
    (tmp_path / "models").mkdir()
    with pytest.raises(CorpusError, match=r"smplx: the AMASS importer needs the `smplx` package"):
        list(amass.iter_amass_motions([f], body_model=tmp_path / "models"))


def test_amass_body_model_candidates(tmp_path):
    c = [p.relative_to(tmp_path).as_posix() for p in amass.body_model_candidates(tmp_path, "smplh", "female")]
    assert c[:3] == ["smplh/SMPLH_FEMALE.npz", "smplh/SMPLH_FEMALE.pkl", "smplh/female/model.npz"]
    assert "smplh/neutral/model.npz" in c and "male/model.npz" not in c


def _fake_smplh(path: Path) -> np.ndarray:
    """A stand-in SMPL+H model file (right shapes, joint j on vertex j). Returns the rest joints (z-up)."""
    n_verts, n_joints = 6890, 52
    parents = list(PARENTS) + [0] * 30
    for h, wrist in ((22, 20), (37, 21)):
        for finger in range(5):
            for k in range(3):
                parents[h + 3 * finger + k] = wrist if k == 0 else h + 3 * finger + k - 1
    rest_y = _skeleton(1)[0].astype(np.float64)  # canonical y-up rest joints
    rest = np.stack([-rest_y[:, 0], rest_y[:, 2], rest_y[:, 1]], axis=-1)  # back to AMASS z-up
    v = np.zeros((n_verts, 3))
    v[:22] = rest
    v[22:52] = rest[[20] * 15 + [21] * 15]
    jreg = np.zeros((n_joints, n_verts))
    jreg[np.arange(n_joints), np.arange(n_joints)] = 1.0
    weights = np.zeros((n_verts, n_joints))
    weights[:, 0] = 1.0
    np.savez_compressed(
        path,
        v_template=v,
        J_regressor=jreg,
        weights=weights,
        kintree_table=np.stack([np.array(parents), np.arange(n_joints)]),
        shapedirs=np.zeros((n_verts, 3, 16)),
        posedirs=np.zeros((n_verts, 3, 51 * 9)),
        f=np.array([[0, 1, 2]]),
    )
    return rest


def test_amass_with_smplx_body_model(tmp_path):
    pytest.importorskip("smplx", reason="smplx is not installed (optional, for the AMASS importer)")
    models = tmp_path / "body_models" / "smplh" / "female"
    models.mkdir(parents=True)
    rest = _fake_smplh(models / "model.npz")  # the AMASS / human_body_prior layout
    n = 121
    trans = np.zeros((n, 3))
    trans[:, 0] = np.linspace(0, 1.2, n)  # 1 m/s along AMASS x
    f = _amass_npz(
        tmp_path / "amass" / "ACCAD" / "s1" / "walk_poses.npz", n=n, poses=np.zeros((n, 156)), trans=trans
    )
    _amass_npz(
        tmp_path / "amass" / "ACCAD" / "s1" / "other_poses.npz", gender=np.array("male")
    )  # no male model
    np.savez(tmp_path / "amass" / "ACCAD" / "s1" / "shape.npz", betas=np.zeros(16), gender="female")
    errors: list[str] = []
    ms = list(
        amass.iter_amass_motions(
            [tmp_path / "amass"], body_model=tmp_path / "body_models", skip_bad=True, errors=errors
        )
    )
    assert [m.name for m in ms] == ["amass/ACCAD/s1/walk_poses"]
    assert len(errors) == 1 and "no SMPLH body model for gender 'male'" in errors[0]
    m = ms[0]
    assert m.fps == 20.0 and m.joints.shape == (21, 22, 3) and m.meta["mocap_fps"] == 120.0
    expected = amass.zup_to_canonical(rest[None] + trans[::6, None])  # zero pose: rest joints + translation
    np.testing.assert_allclose(m.joints, expected, atol=1e-5)
    assert chirality(m.joints) > 0.9
    assert m.path == str(f)
    # HumanML3D's integer-step resampling, and a joints folder for the BABEL importer
    (tmp_path / "amass" / "ACCAD" / "s1" / "other_poses.npz").unlink()
    _amass_npz(
        tmp_path / "amass" / "ACCAD" / "s2" / "fast_poses.npz", n=251, fps=250.0, poses=np.zeros((251, 156))
    )
    out = tmp_path / "joints"
    written = amass.export_joints(tmp_path / "amass", tmp_path / "body_models", out)
    assert [w.relative_to(out).as_posix() for w in written] == [
        "ACCAD/s1/walk_poses.npy",
        "ACCAD/s2/fast_poses.npy",
    ]
    assert np.load(out / "ACCAD" / "s2" / "fast_poses.npy").shape == (21, 22, 3)  # every 12th of 251 frames
    assert amass.export_joints(tmp_path / "amass", tmp_path / "body_models", out) == []  # already there
    fast = next(
        amass.iter_amass_motions(
            [tmp_path / "amass" / "ACCAD" / "s2"], tmp_path / "body_models", resample="humanml3d"
        )
    )
    assert fast.fps == pytest.approx(250 / 12) and fast.n_frames == 21
    _write_json(
        tmp_path / "babel" / "train.json",
        {
            "1": {
                "babel_sid": 1,
                "feat_p": "ACCAD/ACCAD/s1/walk_poses.npz",
                "dur": 1.0,
                "seq_ann": None,
                "frame_ann": {"labels": [_label("walk to the right", 0.0, 0.75, "a")]},
            }
        },
    )
    (b,) = babel.iter_babel_motions(tmp_path / "babel", out)
    assert b.n_frames == 21 and b.annotations[0].end_s == 0.75


def test_importers_yield_motions(tmp_path):
    """Every importer yields Motion objects the store's checks accept (features-only path, no features.py)."""
    d = _arrays_fixture(tmp_path)
    from engine.corpus.store import validate_motion

    for m in iter_array_motions(d / "annotations.json"):
        assert isinstance(m, Motion)
        validate_motion(m)
    bdir, mdir = _babel_fixture(tmp_path)
    for m in babel.iter_babel_motions(bdir, mdir):
        validate_motion(m)
    for m in humanml3d.iter_humanml3d_motions(_h3d_fixture(tmp_path)):
        validate_motion(m)
