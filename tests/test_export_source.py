"""Export on the source skeleton (engine.export_source) and BVH import diagnostics (engine.corpus.bvh_diagnose),
on real files of ../shared/data (copied into tmp_path so that they can be removed or changed)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from engine.corpus import bvh as B
from engine.corpus.bvh_diagnose import diagnose_bvh
from engine.corpus.store import CorpusStore
from engine.corpus.types import CorpusError
from engine.export import ClipError
from engine.export_source import resample_motion, source_clip_text

DATA = Path(os.environ.get("ENGINE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
TAKES = {"bandai": "bandai-namco/set1/dataset-1_walk_normal_001.bvh", "cmu": "cmu/131_01.bvh"}
HOP = "cmu/131_03.bvh"

pytestmark = pytest.mark.shared_data


def need(rel: str) -> Path:
    p = DATA / rel
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (tests that read real files need ../shared/data)")
    return p


def _import(tmp_path: Path, rel: str) -> tuple[CorpusStore, int, Path]:
    src = tmp_path / "src" / Path(rel).name
    src.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(need(rel), src)
    store = CorpusStore.open(tmp_path / "corpus")
    store.add_motions([B.bvh_to_motion(src)])
    return store, store.motion_ids()[-1], src


def _motion_lines(text: str) -> list[str]:
    body = text[B._MOTION_RE.search(text).end():]
    return [ln.rstrip("\r") for ln in body.splitlines() if ln.strip()][2:]


def _normalised(j: np.ndarray) -> np.ndarray:
    """The importer's normalisation of a span: floor at y = 0, pelvis of frame 0 at x = z = 0."""
    j = np.asarray(j, dtype=np.float64).copy()
    j[..., 1] -= j[..., 1].min()
    return j - j[0, 0] * np.array([1.0, 0.0, 1.0])


# ------------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("take", sorted(TAKES))
def test_source_export_round_trips(tmp_path, take):
    store, mid, src = _import(tmp_path, TAKES[take])
    source = B.read_bvh(src)
    text, info = source_clip_text(store, mid, 1.0, 3.0)
    out = tmp_path / "cut.bvh"
    out.write_text(text, encoding="utf-8")
    cut = B.read_bvh(out)
    # Same hierarchy and channel layout.
    assert [n.name for n in cut.nodes] == [n.name for n in source.nodes]
    assert [n.channels for n in cut.nodes] == [n.channels for n in source.nodes]
    assert [n.parent for n in cut.nodes] == [n.parent for n in source.nodes]
    np.testing.assert_array_equal(np.stack([n.offset for n in cut.nodes]), np.stack([n.offset for n in source.nodes]))
    assert cut.fps == source.fps
    # Its frames are the source frames whose times fall in [1, 3) s, their lines byte-equal.
    first = math.ceil(1.0 * source.fps - 1e-9)
    n = round(2.0 * source.fps)
    assert (info["source_first_frame"], cut.n_frames) == (first, n)
    np.testing.assert_array_equal(cut.motion, source.motion[first:first + n])
    src_text = src.read_bytes().decode("utf-8")
    assert _motion_lines(text) == _motion_lines(src_text)[first:first + n]
    assert text.startswith(src_text[: B._MOTION_RE.search(src_text).start()])  # header byte-equal
    # Re-imported, it gives the stored span's canonical joints.
    again = B.bvh_to_motion(out).joints
    stored = store.joints(mid)[20:60]
    assert again.shape == stored.shape
    assert np.abs(_normalised(again) - _normalised(stored)).max() < 1e-5
    store.close()


# ----------------------------------------------------------------------------------------------- errors
def test_missing_and_changed_source_are_named_errors(tmp_path):
    store, mid, src = _import(tmp_path, TAKES["bandai"])
    with open(src, "a", encoding="utf-8") as fh:
        fh.write(" \n")
    with pytest.raises(ClipError, match=r"changed since the import.*canonical") as e:
        source_clip_text(store, mid, 0.0, 1.0)
    assert str(src.resolve()) in str(e.value)
    src.unlink()
    with pytest.raises(ClipError, match=r"is missing.*canonical") as e:
        source_clip_text(store, mid, 0.0, 1.0)
    assert str(src.resolve()) in str(e.value)
    store.close()


def test_synthetic_motion_has_no_source_skeleton(tmp_path):
    from engine.corpus import synth

    with CorpusStore.open(tmp_path / "c") as store:
        store.add_motions(list(synth.generate(synth.PRESETS["tiny"], seed=0))[:1])
        mid = store.motion_ids()[0]
        with pytest.raises(ClipError, match=r"source skeleton is unavailable: it is a synth motion.*canonical"):
            source_clip_text(store, mid, 0.0, 2.0)


def test_cli_export_source_and_its_errors(tmp_path):
    from engine.cli import app

    store, mid, src = _import(tmp_path, TAKES["cmu"])
    store.close()
    runner = CliRunner()
    out = tmp_path / "x.bvh"
    r = runner.invoke(app, ["export", str(mid), "--corpus", str(tmp_path / "corpus"), "--start", "1", "--end", "2",
                            "--skeleton", "source", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert (rep["n_frames"], rep["fps"], rep["skeleton"]) == (120, 120.0, "source")
    assert B.read_bvh(out).n_frames == 120
    src.unlink()
    r = runner.invoke(app, ["export", str(mid), "--corpus", str(tmp_path / "corpus"), "--skeleton", "source",
                            "--out", str(tmp_path / "y.bvh")])
    assert r.exit_code != 0 and "is missing" in r.output and "canonical" in r.output


# ------------------------------------------------------------------------------------------- resampling
def _rot(bvh: B.BvhData, values: np.ndarray, node: int) -> Rotation:
    n = bvh.nodes[node]
    ks = [k for k, ch in enumerate(n.channels) if ch.endswith("rotation")]
    axes = "".join(n.channels[k][0] for k in ks)
    return Rotation.from_euler(axes.upper(), values[..., [n.channel_start + k for k in ks]], degrees=True)


@pytest.mark.parametrize("take", sorted(TAKES))
def test_resampling_is_rotation_correct(tmp_path, take):
    store, mid, src = _import(tmp_path, TAKES[take])
    source = B.read_bvh(src)
    # At the source rate, the resampled clip is the cut.
    cut, _ = source_clip_text(store, mid, 1.0, 2.0)
    same, _ = source_clip_text(store, mid, 1.0, 2.0, fps=source.fps)
    assert same == cut
    # Off the frame grid by a hair, the slerp -> Euler path gives the source rotations back.
    first = math.ceil(source.fps)
    pos = np.arange(first, first + 20) + 1e-7
    near = resample_motion(source, pos)
    nodes = [j for j, n in enumerate(source.nodes) if sum(c.endswith("rotation") for c in n.channels) == 3]
    for j in nodes:
        got, want = _rot(source, near, j), _rot(source, source.motion[first:first + 20], j)
        assert np.max((got.inv() * want).magnitude()) < 1e-5
    # Half-way positions are the geodesic midpoints (oracle: scipy rotation vectors), positions lerped.
    half = resample_motion(source, np.arange(first, first + 20) + 0.5)
    r0, r1 = source.motion[first:first + 20], source.motion[first + 1:first + 21]
    for j in nodes:
        a, b = _rot(source, r0, j), _rot(source, r1, j)
        mid_rot = a * Rotation.from_rotvec(0.5 * (a.inv() * b).as_rotvec())
        assert np.max((_rot(source, half, j).inv() * mid_rot).magnitude()) < 1e-6
    pcols = [n.channel_start + k for n in source.nodes for k, c in enumerate(n.channels) if c.endswith("position")]
    np.testing.assert_allclose(half[:, pcols], 0.5 * (r0 + r1)[:, pcols], atol=1e-9)
    # Exported at twice the rate: every other frame is a source line, unchanged.
    text, info = source_clip_text(store, mid, 1.0, 2.0, fps=2 * source.fps)
    lines, src_lines = _motion_lines(text), _motion_lines(src.read_text(encoding="utf-8"))
    n_src = round(source.fps)
    assert info["n_frames"] == len(lines) == 2 * n_src - 1
    assert lines[::2] == src_lines[first:first + n_src]
    out = tmp_path / "fast.bvh"
    out.write_text(text, encoding="utf-8")
    assert B.read_bvh(out).fps == pytest.approx(2 * source.fps, rel=1e-6)
    store.close()


# ------------------------------------------------------------------------------------ in place / from zero
@pytest.mark.parametrize("in_place,from_zero", [(True, False), (False, True), (True, True)])
def test_in_place_and_from_zero(tmp_path, in_place, from_zero):
    store, mid, src = _import(tmp_path, TAKES["bandai"])
    plain, _ = source_clip_text(store, mid, 1.0, 3.0)
    moved, _ = source_clip_text(store, mid, 1.0, 3.0, in_place=in_place, from_zero=from_zero)
    paths = []
    for name, text in (("plain", plain), ("moved", moved)):
        (tmp_path / f"{name}.bvh").write_text(text, encoding="utf-8")
        paths.append(B.read_bvh(tmp_path / f"{name}.bvh"))
    a, b = paths
    hips = a.index("Hips")  # Bandai: joint_Root stays at 0, Hips carries the translation; y is up
    pa, pb = B.bvh_positions(a), B.bvh_positions(b)
    h0 = pa[0, hips, [0, 2]]
    if in_place and from_zero:
        want = np.zeros_like(pa[:, hips, [0, 2]])
    elif in_place:
        want = np.broadcast_to(h0, pa[:, hips, [0, 2]].shape)
    else:
        want = pa[:, hips, [0, 2]] - h0
    np.testing.assert_allclose(pb[:, hips, [0, 2]], want, atol=1e-5)
    np.testing.assert_allclose(pb[..., 1], pa[..., 1], atol=1e-5)  # heights unchanged
    # The body below the hips keeps its pose relative to them (rotations, facing); joint_Root does not move.
    body = [j for j in range(len(a.nodes)) if j >= hips]
    np.testing.assert_allclose(pb[:, body] - pb[:, [hips]], pa[:, body] - pa[:, [hips]], atol=1e-5)
    np.testing.assert_allclose(pb[:, 0], pa[:, 0], atol=1e-9)
    store.close()


# ------------------------------------------------------------------------------------------ diagnostics
def _misdeclared(tmp_path: Path) -> Path:
    """131_03 (a hop) with every other frame kept but Frame Time unchanged: declares 120 fps, really 60."""
    text = need(HOP).read_text(encoding="utf-8")
    m = B._MOTION_RE.search(text)
    lines = _motion_lines(text)[::2]
    out = tmp_path / "131_03_really60.bvh"
    out.write_text(text[: m.start()] + f"MOTION\nFrames: {len(lines)}\nFrame Time: .0083333\n" + "\n".join(lines) + "\n",
                   encoding="utf-8")
    return out


def test_dry_run_flags_a_wrong_declared_fps(tmp_path):
    good = diagnose_bvh(need(HOP))
    assert good.ok and good.preset == "cmu131" and good.declared_fps == 120 and good.estimated_fps is None
    assert (good.up_axis, good.tpose_first_frame, good.n_frames, good.unit) == ("+y", False, 1102, "cmu")
    bad = diagnose_bvh(_misdeclared(tmp_path))
    assert bad.failed == ["fps"] and bad.estimated_fps == 60
    assert any("looks like 60 fps" in w for w in bad.warnings)


def test_dry_run_reports_presets_tpose_and_unmapped(tmp_path):
    d = diagnose_bvh(need("cmu/135_03.bvh"))
    assert d.ok and d.preset == "cmu135" and d.tpose_first_frame is True and d.unit == "cm"
    b = diagnose_bvh(need(TAKES["bandai"]))
    assert b.ok and b.preset == "bandai" and b.tpose_first_frame is False and b.declared_fps == 30
    assert b.duration_s == pytest.approx(b.n_frames / 30, abs=1e-3)
    # A Bandai file with one joint renamed: no preset matches; the nearest one names what is missing.
    text = need(TAKES["bandai"]).read_text(encoding="utf-8").replace("Toes_R", "ToeBase_R")
    (tmp_path / "renamed.bvh").write_text(text, encoding="utf-8")
    u = diagnose_bvh(tmp_path / "renamed.bvh")
    assert u.failed == ["unmapped"] and u.preset == "unmapped" and u.missing_joints == ["Toes_R"]


def test_import_quarantines_a_wrong_fps_under_skip_bad(tmp_path):
    from engine.cli import app

    bad = _misdeclared(tmp_path)
    good = tmp_path / "good.bvh"
    shutil.copyfile(need(TAKES["bandai"]), good)
    runner = CliRunner()
    r = runner.invoke(app, ["data", "import", "bvh", str(bad), str(good), "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["n_failed"] == 1 and not (tmp_path / "corpus").exists()
    with pytest.raises(CorpusError, match="quarantined: declares 120 fps but the motion looks like 60 fps"):
        B.bvh_to_motion(bad)
    r = runner.invoke(app, ["data", "import", "bvh", str(bad), str(good), "--out", str(tmp_path / "corpus")])
    assert r.exit_code != 0 and "131_03_really60.bvh" in r.output
    r = runner.invoke(app, ["data", "import", "bvh", str(bad), str(good), "--out", str(tmp_path / "corpus"),
                            "--skip-bad", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout if hasattr(r, "stdout") else r.output)
    assert rep["added"] == 1 and len(rep["bad"]) == 1 and "quarantined" in rep["bad"][0]
    assert B.bvh_to_motion(bad, checks=False).fps == 20  # --no-checks imports it anyway
