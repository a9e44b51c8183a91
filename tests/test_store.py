"""The corpus store: SQL metadata + Arrow arrays, idempotent import, atomic batches, bad input.

Tests taking the `store` fixture or `db_url` run twice: SQLite and PostgreSQL (tests/conftest.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.corpus.store import CorpusStore, content_hash
from engine.corpus.types import Annotation, CorpusError, Motion


def _motion(i: int, n_frames: int = 40, seed: int | None = None, **kw) -> Motion:
    rng = np.random.default_rng(i if seed is None else seed)
    joints = rng.normal(size=(n_frames, 22, 3)).astype(np.float32)
    feats = rng.normal(size=(n_frames - 1, 263)).astype(np.float32)
    ann = kw.pop("annotations", [Annotation("a person waves", 0.2, 1.0, seg_id="s0", extra={"action": "wave"})])
    return Motion(name=f"test/m{i}", source="test", fps=20.0, joints=joints, features=feats,
                  annotations=ann, split=kw.pop("split", "train"), path=f"/data/m{i}.npy", **kw)


@pytest.fixture
def store(tmp_path, db_url):
    s = CorpusStore.open(tmp_path / "corpus", url=db_url)
    yield s
    s.close()


def test_roundtrip_arrays_and_metadata(store):
    ms = [_motion(i, n_frames=30 + i) for i in range(5)]
    rep = store.add_motions(ms, batch_size=2)  # three batches -> three part files
    assert rep.added == 5 and rep.skipped_existing == 0 and rep.bad == []
    assert len(os.listdir(store.dir / "arrays")) == 3
    for m in ms:
        got = store.get_motion(m.motion_id)
        assert got.name == m.name and got.split == "train" and got.fps == 20.0
        np.testing.assert_array_equal(got.joints, m.joints)
        np.testing.assert_array_equal(got.features, m.features)
        assert [(a.text, a.start_s, a.end_s, a.extra) for a in got.annotations] == \
            [("a person waves", 0.2, 1.0, {"action": "wave"})]
    st = store.stats()
    assert st.motions == 5 and st.annotations == 5
    assert st.duration_s == pytest.approx(sum(m.n_frames for m in ms) / 20.0)
    assert st.by_split == {"train": 5}


def test_arrays_are_zero_copy_readonly_views(store):
    store.add_motions([_motion(0)])
    f = store.features(1)
    assert not f.flags.writeable and not f.flags.owndata  # a view into the memory-mapped file


def test_import_is_idempotent(store):
    ms = [_motion(i) for i in range(3)]
    store.add_motions(ms)
    rep = store.add_motions([_motion(i) for i in range(3)])
    assert rep.added == 0 and rep.skipped_existing == 3
    assert store.stats().motions == 3 and store.stats().annotations == 3


def test_same_name_different_content_is_an_error(store):
    store.add_motions([_motion(0)])
    changed = _motion(0, seed=99)
    assert content_hash(changed) != content_hash(_motion(0))
    with pytest.raises(CorpusError, match="test/m0.*different content"):
        store.add_motions([changed])


def _bad_cases():
    nan = _motion(10)
    nan.joints[5, 3, 1] = np.nan
    inf_f = _motion(11)
    inf_f.features[2, 100] = np.inf
    zero = _motion(12)
    zero.joints, zero.features = zero.joints[:1], zero.features[:0]
    width = _motion(13)
    width.features = width.features[:, :251]
    outside = _motion(14, annotations=[Annotation("kick", 1.0, 9.0)])  # motion is 2 s long
    reversed_ = _motion(15, annotations=[Annotation("kick", 1.0, 0.5)])
    joints_shape = _motion(16)
    joints_shape.joints = joints_shape.joints[:, :21]
    return [
        (nan, "NaN/inf joint values"),
        (inf_f, "NaN/inf feature values"),
        (zero, "zero-length"),
        (width, r"features have shape \(39, 251\)"),
        (outside, "outside the motion"),
        (reversed_, "not after start"),
        (joints_shape, r"joints have shape \(40, 21, 3\)"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_bad_input_names_record_and_loses_nothing(store, case):
    store.add_motions([_motion(0), _motion(1)])
    before = store.stats()
    files_before = sorted(os.listdir(store.dir / "arrays"))
    bad, pattern = _bad_cases()[case]
    with pytest.raises(CorpusError, match=pattern) as ei:
        store.add_motions([_motion(2), bad, _motion(3)], batch_size=10)
    assert bad.name in str(ei.value)
    # Nothing of the failing batch was written, nothing already stored was lost.
    assert store.stats() == before
    assert sorted(os.listdir(store.dir / "arrays")) == files_before
    np.testing.assert_array_equal(store.get_motion(1).joints, _motion(0).joints)


def test_skip_bad_reports_and_imports_the_rest(store):
    bad, _ = _bad_cases()[0]
    rep = store.add_motions([_motion(2), bad, _motion(3)], skip_bad=True)
    assert rep.added == 2 and len(rep.bad) == 1 and bad.name in rep.bad[0]
    assert {store.get_motion(i).name for i in store.motion_ids()} == {"test/m2", "test/m3"}


def test_failed_commit_removes_its_array_file(store, monkeypatch):
    store.add_motions([_motion(0)])
    files_before = sorted(os.listdir(store.dir / "arrays"))

    from sqlalchemy.orm import Session

    def boom(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Session, "flush", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        store.add_motions([_motion(1)])
    monkeypatch.undo()
    assert sorted(os.listdir(store.dir / "arrays")) == files_before
    assert store.stats().motions == 1


def test_reopen_and_filters(tmp_path, db_url):
    d = tmp_path / "c"
    with CorpusStore.open(d, url=db_url) as s:
        s.add_motions([_motion(0, split="train"), _motion(1, split="test"), _motion(2, split="test")])
    with pytest.raises(FileNotFoundError, match="not a corpus directory"):
        CorpusStore.open(tmp_path / "nothing", create=False)
    with CorpusStore.open(d, create=False) as s:
        assert len(s.motion_ids(split="test")) == 2
        assert [m.name for m in s.iter_motions(split="train", arrays=False)] == ["test/m0"]
        assert s.motion_id("test/m2") == 3
        assert s.remove_motions([3]) == 1
        assert s.stats().motions == 2 and s.stats().annotations == 2


def test_features_computed_from_joints(tmp_path):
    pytest.importorskip("engine.corpus.features")
    from engine.corpus.features import joints_to_features

    rng = np.random.default_rng(0)
    # A smooth random walk so that IK is well defined.
    base = np.cumsum(rng.normal(scale=0.01, size=(60, 22, 3)), axis=0) + rng.normal(size=(1, 22, 3))
    m = Motion(name="walk", source="test", fps=20.0, joints=base.astype(np.float32))
    with CorpusStore.open(tmp_path / "c") as s:
        s.add_motions([m])
        got = s.features(1)
    assert got.shape == (59, 263)
    np.testing.assert_allclose(got, joints_to_features(base.astype(np.float32)), rtol=1e-5, atol=1e-5)


def test_cli_import_with_db_url_records_it_in_the_manifest(tmp_path, db_url):
    """`--db-url` stores the metadata there; later commands find it through the corpus manifest."""
    import json

    from typer.testing import CliRunner

    from engine.cli import app

    out = tmp_path / "c"
    args = ["data", "synth", "--preset", "tiny", "--n", "6", "--out", str(out), "--json"]
    r = CliRunner().invoke(app, args + (["--db-url", db_url] if db_url else []))
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text()).get("url") == db_url
    assert (out / "corpus.sqlite").exists() == (db_url is None)
    r = CliRunner().invoke(app, ["data", "stats", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["motions"] == 6
    with CorpusStore.open(out, create=False) as s:
        m = s.get_motion(s.motion_ids()[0])
        assert m.joints.shape[1:] == (22, 3) and s.url.startswith("sqlite" if db_url is None else "postgresql")


def test_unreachable_database_is_a_clear_error_and_writes_no_manifest(tmp_path):
    url = "postgresql+psycopg://someone:secret@127.0.0.1:1/nothing"
    with pytest.raises(CorpusError, match=r"someone:\*\*\*@127.0.0.1:1/nothing: cannot open the metadata database"):
        CorpusStore.open(tmp_path / "c", url=url)
    assert not (tmp_path / "c" / "manifest.json").exists()
