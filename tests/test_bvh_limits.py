"""Bounded and validated BVH import (issue 15 items 1, 2, 5, 6, 12): hostile files fail with a named
CorpusError, under an address-space cap (RLIMIT_AS) so that a regression fails instead of eating the machine."""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_bvh import POS, ROT, identity_map, smpl_bvh, write_bvh

from engine.corpus import bvh
from engine.corpus.limits import ImportLimits, check_plausible_joints
from engine.corpus.store import CorpusStore
from engine.corpus.types import CorpusError

ROOT = Path(__file__).resolve().parents[1]
# A normal import (numpy + scipy, one BLAS thread) peaks at about 350 MB of address space; the hostile
# inputs below needed 4-7 GB before the limits existed.
AS_CAP_BYTES = 1280 << 20


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_CAP_BYTES, AS_CAP_BYTES))


def run_capped(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Python `code` in a subprocess whose address space is capped at AS_CAP_BYTES."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_cap_address_space, env=env, cwd=ROOT)


IMPORT_ONE = """
    import sys
    from engine.corpus import bvh
    from engine.corpus.types import CorpusError
    from engine.corpus.limits import ImportLimits
    try:
        m = bvh.bvh_to_motion(sys.argv[1], limits=ImportLimits.from_overrides(sys.argv[2:]))
        print("imported", m.n_frames)
    except CorpusError as e:
        print("refused:", e)
"""


def assert_refused(proc: subprocess.CompletedProcess, path: Path, problem: str) -> None:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith(f"refused: {path}: "), proc.stdout
    assert problem in proc.stdout, proc.stdout


def test_capped_subprocess_imports_a_normal_file(tmp_path):
    path, _ = smpl_bvh(tmp_path, "ok.bvh", n_frames=600)
    proc = run_capped(IMPORT_ONE, str(path))
    assert proc.stdout.startswith("imported "), proc.stdout + proc.stderr


def test_huge_frame_time_is_refused_before_resampling(tmp_path):
    path, _ = smpl_bvh(tmp_path, "slow.bvh", n_frames=10, frame_time=1e6)  # 10 frames, 116 days at 20 fps
    assert_refused(run_capped(IMPORT_ONE, str(path)), path, "Frame Time 1e+06 s is outside")
    limits = ImportLimits(max_frame_time_s=1e7)
    with pytest.raises(CorpusError, match=r"slow.bvh: 10 frames at 1e-06 fps last 1e\+07 s, over the limit"):
        bvh.read_bvh(path, limits)
    limits = ImportLimits(max_frame_time_s=1e7, max_duration_s=1e8)
    with pytest.raises(CorpusError, match=r"slow.bvh: resampling gives 180000001 frames, over the limit of 288000"):
        bvh.bvh_to_motion(path, limits=limits)


def test_sparse_2gb_file_is_refused_without_reading(tmp_path):
    path = tmp_path / "sparse.bvh"
    with open(path, "wb") as fh:
        fh.truncate(2 << 30)  # sparse: no disk used
    assert_refused(run_capped(IMPORT_ONE, str(path)), path, "file is 2048.0 MiB, over the limit of 512.0 MiB")


def _bomb(tmp_path: Path, n_mib: int) -> tuple[Path, bytes, bytes]:
    """n_mib MiB of motion lines as concatenated gzip members of 1 MiB each (about 1 KB each on disk)."""
    member = gzip.compress(b"0\n" * (1 << 19), compresslevel=9)
    head = gzip.compress(b"HIERARCHY\nROOT a\n{\nOFFSET 0 0 0\nCHANNELS 1 Xposition\n}\nMOTION\nFrames: 1\n"
                         b"Frame Time: 0.05\n")
    path = tmp_path / "bomb.bvh.gz"
    path.write_bytes(head + member * n_mib)
    return path, head, member


def test_gzip_bomb_stops_at_the_decompressed_limit(tmp_path):
    path, head, member = _bomb(tmp_path, 1024)  # 1 GiB: reading it whole would pass the address-space cap
    assert path.stat().st_size < 4 << 20
    proc = run_capped(IMPORT_ONE, str(path), f"max_decompressed_bytes={32 << 20}")
    assert_refused(proc, path, "decompresses to more than 32.0 MiB")
    small = tmp_path / "small.bvh.gz"
    small.write_bytes(head + member * 2)  # 2 MiB: within a 4 MiB limit, over a 1 MiB one
    with pytest.raises(CorpusError, match="decompresses to more than 1.0 MiB"):
        bvh.read_bvh(small, ImportLimits(max_decompressed_bytes=1 << 20))
    assert bvh.read_bvh(small, ImportLimits(max_decompressed_bytes=4 << 20)).n_frames == 1


@pytest.mark.slow
def test_gzip_bomb_with_the_default_limit(tmp_path):
    path, _, _ = _bomb(tmp_path, 4096)  # 4 MB on disk, 4 GiB of text (issue 15's bomb)
    assert_refused(run_capped(IMPORT_ONE, str(path)), path, "decompresses to more than 512.0 MiB")


def test_declared_frames_beyond_the_file_are_refused_before_allocation(tmp_path):
    path, _ = smpl_bvh(tmp_path, "many.bvh", n_frames=3)
    text = path.read_text().replace("Frames: 3", f"Frames: {10**12}")
    path.write_text(text)
    with pytest.raises(CorpusError, match=r"many.bvh: Frames: 1000000000000 but only 3 motion lines"):
        bvh.read_bvh(path, ImportLimits(max_duration_s=1e15))


def _chain_bvh(path: Path, n_joints: int) -> Path:
    names = [f"j{i}" for i in range(n_joints)]
    parents = [-1] + [i // 2 for i in range(n_joints - 1)]  # a binary tree: deep enough, no recursion limit
    offsets = np.tile([0.0, 1.0, 0.0], (n_joints, 1))
    chans = [POS + ROT] + [ROT] * (n_joints - 1)
    motion = np.zeros((2, 6 + 3 * (n_joints - 1)))
    return write_bvh(path, names, parents, offsets, chans, motion)


def test_joint_count_is_capped(tmp_path):
    path = _chain_bvh(tmp_path / "wide.bvh", 1001)
    with pytest.raises(CorpusError, match=r"wide.bvh: line \d+: more than 1000 joints, over the limit"):
        bvh.read_bvh(path)
    data = bvh.read_bvh(path, ImportLimits(max_joints=2000))
    assert len(data.joint_names) == 1001 and data.n_channels == 6 + 3000
    with pytest.raises(CorpusError, match="more than 10 joints"):
        bvh.read_bvh(_chain_bvh(tmp_path / "w11.bvh", 11), ImportLimits(max_joints=10))


def test_limit_overrides_are_parsed_and_checked():
    lim = ImportLimits.from_overrides(["max_file_bytes=2e9", "max-joints=5000", "max_joint_speed_m_s=250"])
    assert lim.max_file_bytes == 2_000_000_000 and lim.max_joints == 5000 and lim.max_joint_speed_m_s == 250.0
    for bad, msg in (("nope=1", "NAME=VALUE"), ("max_joints=1.5", "whole number"), ("max_joints=x", "not a number"),
                     ("max_bone_m=-1", "positive"), ("max_duration_s=inf", "positive")):
        with pytest.raises(CorpusError, match=msg):
            ImportLimits.from_overrides([bad])


# ------------------------------------------------------------------------------ absurd values (item 5)
def test_finite_but_absurd_root_position_is_refused(tmp_path):
    path, _ = smpl_bvh(tmp_path, "far.bvh", n_frames=5)
    lines = path.read_text().splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("Frame Time")) + 1
    vals = lines[first + 2].split()
    vals[0] = "1e30"
    lines[first + 2] = " ".join(vals)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"far.bvh: joint coordinate \de\+\d\d m at frame \d+ is beyond the bound of 10000 m"):
        bvh.bvh_to_motion(path)
    vals[0] = "50"  # a 50 m jump in one frame: finite, within 10 km, but no person moves at 1,000 m/s
    lines[first + 2] = " ".join(vals)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"far.bvh: a joint moves at .* m/s between frames .* over the physical"):
        bvh.bvh_to_motion(path)
    assert bvh.bvh_to_motion(path, limits=ImportLimits(max_joint_speed_m_s=1e4)).n_frames > 0


def test_implausible_bone_lengths_are_refused(tmp_path):
    cm, _ = smpl_bvh(tmp_path, "cm.bvh", n_frames=3, scale=100.0)  # centimetres read as metres
    with pytest.raises(CorpusError, match=r"cm.bvh: bone \w+->\w+ is .* m long, over the plausible 2.5 m"):
        bvh.bvh_to_motion(cm, preset=identity_map(tmp_path, scale="m"))
    assert bvh.bvh_to_motion(cm, preset=identity_map(tmp_path)).meta["scale_m"] == 0.01  # detected units: fine
    path, _ = smpl_bvh(tmp_path, "tiny.bvh", n_frames=3)  # metres read as centimetres
    with pytest.raises(CorpusError, match=r"tiny.bvh: the skeleton's bones add up to .* under the plausible"):
        bvh.bvh_to_motion(path, preset=identity_map(tmp_path, scale="cm"))


def test_plausibility_check_directly():
    rng = np.random.default_rng(0)
    j = 0.1 * rng.normal(size=(4, 5, 3))
    check_plausible_joints(j, 20.0, "x", bones=((0, 1),))
    j[2, 3, 1] = np.nan
    with pytest.raises(CorpusError, match="x: NaN/inf joint positions in 1 of 4 frames"):
        check_plausible_joints(j, 20.0, "x")


# -------------------------------------------------------------------------------- item 12: BOM, facing
def test_utf8_bom_is_stripped(tmp_path):
    path, _ = smpl_bvh(tmp_path, "bom.bvh", n_frames=3)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert bvh.read_bvh(path).n_frames == 3
    gz = tmp_path / "bom2.bvh.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert bvh.bvh_to_motion(gz).meta["source_frames"] == 3


def test_facing_error_names_the_file(tmp_path):
    from engine.corpus.skeleton import JOINT_NAMES, PARENTS, RAW_OFFSETS

    # hips exactly as wide as the shoulders: HumanML3D's (swapped) across-body vector is zero
    pose = np.zeros((22, 3))
    pose[0] = [0, 0.9, 0]
    for k in range(1, 22):
        pose[k] = pose[PARENTS[k]] + RAW_OFFSETS[k] * 0.15
    offsets = pose - np.concatenate([[np.zeros(3)], pose[list(PARENTS[1:])]])
    motion = np.zeros((3, 6 + 21 * 3))
    motion[:, :3] = offsets[0]
    path = write_bvh(tmp_path / "flat.bvh", list(JOINT_NAMES), list(PARENTS), offsets, [POS + ROT] + [ROT] * 21,
                     motion)
    with pytest.raises(CorpusError, match=r"flat.bvh: cannot determine the facing direction"):
        bvh.bvh_to_motion(path)


# --------------------------------------------------------------------------- item 2: non-UTF-8 names
def test_non_utf8_file_names_import_idempotently(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good, _ = smpl_bvh(src, "plain.bvh", n_frames=4)
    raw = os.fsencode(src) + b"/walk\xff\xfe.bvh"
    with open(raw, "wb") as fh:
        fh.write(good.read_bytes())
    with open(os.fsencode(src) + b"/bad\xff.bvh", "wb") as fh:
        fh.write(b"HIERARCHY\nROOT x\n{\n")
    errors: list[str] = []
    motions = list(bvh.iter_bvh_motions([src], skip_bad=True, errors=errors))
    names = sorted(m.name for m in motions)
    assert names == ["bvh/plain", "bvh/walk\\xff\\xfe"]
    assert len(errors) == 1 and "bad\\xff.bvh" in errors[0] and "truncated" in errors[0]
    errors[0].encode("utf-8")  # printable
    odd = next(m for m in motions if m.name != "bvh/plain")
    assert odd.path.endswith("walk\\xff\\xfe.bvh") and odd.split in ("train", "val", "test")
    assert odd.split == bvh.take_split(os.fsdecode(b"walk\xff\xfe"))
    corpus = tmp_path / "corpus"
    with CorpusStore.open(corpus) as store:
        rep = store.add_motions(motions)
        assert rep.added == 2
    again = list(bvh.iter_bvh_motions([src], skip_bad=True))
    with CorpusStore.open(corpus) as store:
        rep = store.add_motions(again)
        assert rep.added == 0 and rep.skipped_existing == 2
        got = store.get_motion(store.motion_id("bvh/walk\\xff\\xfe"))
        np.testing.assert_array_equal(got.joints, odd.joints)


def test_cli_import_reports_limits_and_odd_names(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    smpl_bvh(src, "ok.bvh", n_frames=4)
    smpl_bvh(src, "slow.bvh", n_frames=10, frame_time=1e6)
    with open(os.fsencode(src) + b"/odd\xff.bvh", "wb") as fh:
        fh.write((src / "ok.bvh").read_bytes())
    out = tmp_path / "corpus"
    cmd = [sys.executable, "-m", "engine.cli", "data", "import", "bvh", str(src), "--out", str(out), "--skip-bad",
           "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["added"] == 2 and len(report["bad"]) == 1 and "slow.bvh" in report["bad"][0]
    assert "Frame Time 1e+06 s is outside" in report["bad"][0]
    proc = subprocess.run(cmd + ["--limit", "max_frame_time_s=2e6"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)  # the raised limit reached the import: now the duration limit refuses it
    assert report["skipped_existing"] == 2 and len(report["bad"]) == 1 and "over the limit of 14400 s" in report["bad"][0]
    proc = subprocess.run(cmd + ["--limit", "bogus=1"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "bogus=1" in proc.stderr


# ------------------------------------------------------------------------ bounded working memory
@pytest.mark.parametrize("frame_time", [1 / 30, 1 / 120, 1 / 20, 1 / 7])
def test_blocked_forward_kinematics_matches_one_block(tmp_path, monkeypatch, frame_time):
    rng = np.random.default_rng(1)
    path, _ = smpl_bvh(tmp_path, "b.bvh", n_frames=97, frame_time=frame_time)
    data = bvh.read_bvh(path)
    data.motion[:, 6:] += rng.uniform(-40, 40, size=data.motion[:, 6:].shape)  # rotations in degrees
    data.motion[:, :3] += np.cumsum(rng.normal(scale=0.01, size=(97, 3)), axis=0)
    whole = bvh.bvh_positions(data, fps_out=20.0, drop_frames=2)
    ref = bvh.retarget(data, bvh.PRESETS["smpl"])
    monkeypatch.setattr(bvh, "BLOCK_NODE_FRAMES", 5 * len(data.nodes))  # blocks of 5 (or fewer) frames
    assert len(list(bvh.bvh_position_blocks(data, fps_out=20.0, drop_frames=2))) > 3
    np.testing.assert_array_equal(bvh.bvh_positions(data, fps_out=20.0, drop_frames=2), whole)
    np.testing.assert_array_equal(bvh.retarget(data, bvh.PRESETS["smpl"]).joints, ref.joints)
