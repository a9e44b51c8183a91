"""Corpus store integrity (issue 15, items 4 and 9): checksums per part file and per motion, checked at open,
on every read and by `verify`; leftovers of failed or killed imports; concurrent imports.

Tests taking `db_url` run on SQLite and (with ENGINE_TEST_PG_URL) PostgreSQL."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy import create_engine, text

from engine.corpus.store import CorpusStore
from engine.corpus.types import Annotation, CorpusError, Motion

ROOT = Path(__file__).resolve().parents[1]


def _motion(i: int, n_frames: int = 40, joints: bool = True) -> Motion:
    rng = np.random.default_rng(i)
    return Motion(name=f"test/m{i}", source="test", fps=20.0,
                  joints=rng.normal(size=(n_frames, 22, 3)).astype(np.float32) if joints else None,
                  features=rng.normal(size=(n_frames - 1, 263)).astype(np.float32),
                  annotations=[Annotation("a person waves", 0.2, 1.0, seg_id="s0")], split="train")


def _corpus(tmp_path, db_url, n: int = 4, batch_size: int = 2) -> Path:
    d = tmp_path / "corpus"
    with CorpusStore.open(d, url=db_url) as s:
        s.add_motions([_motion(i, n_frames=30 + 5 * i) for i in range(n)], batch_size=batch_size)
    return d


def _parts(d: Path) -> list[Path]:
    return sorted((d / "arrays").glob("part-*.arrow"))


def _raw_rows(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(joints, features) flat values of every row, read with pyarrow alone (no store checks)."""
    t = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    return [(np.array(t.column("joints")[i].values), np.array(t.column("features")[i].values))
            for i in range(t.num_rows)]


def _flip_data_bytes(path: Path) -> int:
    """XOR 64 bytes inside the features values buffer of row 0 (the data area; the file stays readable).
    Returns the row whose values changed."""
    t = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    target = np.asarray(t.column("features")[0].values)[100:104].tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(target)
    assert at > 0
    for k in range(at, at + 64):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))
    return 0


def _sql(d: Path, db_url: str | None, stmt: str, **params) -> None:
    url = db_url or f"sqlite:///{(d / 'corpus.sqlite').resolve()}"
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(text(stmt), params)
    eng.dispose()


# ---------------------------------------------------------------------------------------------- item 4
def test_flipped_bytes_in_an_arrow_data_area_are_caught(tmp_path, db_url):
    d = _corpus(tmp_path, db_url)
    part = _parts(d)[0]
    before = _raw_rows(part)
    _flip_data_bytes(part)
    after = _raw_rows(part)
    changed = [i for i, (b, a) in enumerate(zip(before, after)) if not np.array_equal(b[1], a[1])]
    assert changed == [0]  # the file still parses: the damage would be served silently without checksums
    with CorpusStore.open(d, create=False, url=db_url) as s:  # same size: the cheap open check passes
        victim = next(m for m in s.motion_ids() if s.get_motion(m, arrays=False).meta["_array_file"] == part.name
                      and s.get_motion(m, arrays=False).meta["_array_row"] == 0)
        name = s.get_motion(victim, arrays=False).name
        with pytest.raises(CorpusError, match="features .* differ from the sha256") as ei:
            s.features(victim)
        assert name in str(ei.value) and part.name in str(ei.value)
        with pytest.raises(CorpusError, match=name):
            s.get_motion(victim)
        other = next(m for m in s.motion_ids() if m != victim)
        s.features(other)  # undamaged motions still read
        rep = s.verify(full=True)
        assert not rep.ok
        assert any(part.name in p and "sha256" in p for p in rep.problems)
        assert any(name in p for p in rep.problems)
        assert s.verify(full=False).ok  # sizes only: a same-size flip needs the full check
    with pytest.raises(CorpusError, match=part.name):
        CorpusStore.open(d, create=False, url=db_url, verify="full")


def test_export_of_a_damaged_motion_is_refused(tmp_path):
    from engine.export import clip_joints

    d = _corpus(tmp_path, None)
    part = _parts(d)[0]
    before = _raw_rows(part)
    t = pa.ipc.open_file(pa.memory_map(str(part), "r")).read_all()
    target = np.asarray(t.column("joints")[1].values)[10:14].tobytes()  # row 1's joints this time
    data = bytearray(part.read_bytes())
    at = data.find(target)
    for k in range(at, at + 64):
        data[k] ^= 0xFF
    part.write_bytes(bytes(data))
    assert not np.array_equal(before[1][0], _raw_rows(part)[1][0])
    with CorpusStore.open(d, create=False) as s:
        victim = next(m for m in s.motion_ids() if s.get_motion(m, arrays=False).meta["_array_file"] == part.name
                      and s.get_motion(m, arrays=False).meta["_array_row"] == 1)
        with pytest.raises(CorpusError, match="joints .* differ from the sha256"):
            clip_joints(s, victim)
        s.features(victim)  # its features were not touched: reading them is fine


def test_a_swapped_array_file_is_caught(tmp_path, db_url):
    d = _corpus(tmp_path, db_url)
    a, b = _parts(d)
    # Point a motion at row 0 of the other file (another motion's arrays, another length).
    with CorpusStore.open(d, create=False, url=db_url) as s:
        rows = {m: s.get_motion(m, arrays=False).meta for m in s.motion_ids()}
    src = next(m for m, meta in rows.items() if meta["_array_row"] == 0 and meta["_array_file"] == a.name)
    _sql(d, db_url, "UPDATE motions SET array_file = :f WHERE motion_id = :m", f=b.name, m=src)
    with CorpusStore.open(d, create=False, url=db_url) as s:
        name = s.get_motion(src, arrays=False).name
        with pytest.raises(CorpusError) as ei:
            s.joints(src)
        assert name in str(ei.value) and b.name in str(ei.value)
        rep = s.verify(full=True)
        assert not rep.ok and any(name in p for p in rep.problems)


def test_a_swap_to_a_same_length_motion_is_caught_by_the_digest(tmp_path, db_url):
    d = tmp_path / "corpus"
    with CorpusStore.open(d, url=db_url) as s:  # two files whose row 0 motions have the same length
        s.add_motions([_motion(0, 40), _motion(1, 33)])
        s.add_motions([_motion(2, 40)])
        ids = {s.get_motion(m, arrays=False).name: m for m in s.motion_ids()}
    with CorpusStore.open(d, create=False, url=db_url) as s:
        a = s.get_motion(ids["test/m0"], arrays=False).meta["_array_file"]
        b = s.get_motion(ids["test/m2"], arrays=False).meta["_array_file"]
    assert a != b
    _sql(d, db_url, "UPDATE motions SET array_file = :f WHERE motion_id = :m", f=b, m=ids["test/m0"])
    with CorpusStore.open(d, create=False, url=db_url) as s:
        with pytest.raises(CorpusError, match=r"test/m0.*differ from the sha256") as ei:
            s.features(ids["test/m0"])
        assert b in str(ei.value)
        with pytest.raises(CorpusError, match="test/m0"):
            s.joints(ids["test/m0"])
        np.testing.assert_array_equal(s.features(ids["test/m2"]), _motion(2, 40).features)


def test_open_checks_sizes_and_names_the_file(tmp_path, db_url):
    d = _corpus(tmp_path, db_url)
    part = _parts(d)[1]
    with open(part, "ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(CorpusError, match=rf"{part.name}: .*bytes, .*recorded.*engine data verify"):
        CorpusStore.open(d, create=False, url=db_url)
    with CorpusStore.open(d, create=False, url=db_url, verify="none") as s:  # what `data verify` uses
        rep = s.verify(full=False)
        assert not rep.ok and any(part.name in p for p in rep.problems)
    part.unlink()
    with pytest.raises(CorpusError, match=rf"{part.name}: missing"):
        CorpusStore.open(d, create=False, url=db_url)
    with pytest.raises(ValueError, match="verify must be"):
        CorpusStore.open(d, create=False, url=db_url, verify="bogus")


def test_reads_hash_once_and_return_the_stored_values(tmp_path, db_url):
    d = _corpus(tmp_path, db_url, n=3, batch_size=10)
    with CorpusStore.open(d, create=False, url=db_url, verify="full") as s:
        for m in s.motion_ids():
            got = s.get_motion(m)
            ref = _motion(int(got.name.split("m")[-1]), n_frames=got.n_frames)
            np.testing.assert_array_equal(got.features, ref.features)
            np.testing.assert_array_equal(s.joints(m), ref.joints)
            f = s.features(m)
            assert not f.flags.writeable and not f.flags.owndata  # still a zero-copy view
        assert len(s._verified) == 2 * 3  # features + joints of each motion, hashed once
        assert s.verify().ok and s.verify().unverified_motions == 0


def test_features_only_motions_are_verified_too(tmp_path):
    d = tmp_path / "corpus"
    with CorpusStore.open(d) as s:
        s.add_motions([_motion(0, joints=False), _motion(1)])
    part = _parts(d)[0]
    _flip_data_bytes(part)
    with CorpusStore.open(d, create=False) as s:
        with pytest.raises(CorpusError, match="test/m0"):
            s.joints(1)  # recovered from the (damaged) features


def _make_legacy(d: Path, db_url: str | None) -> None:
    """What a corpus written before checksums looks like: no array_files / motion_digests rows."""
    _sql(d, db_url, "DELETE FROM motion_digests")
    _sql(d, db_url, "DELETE FROM array_files")


def test_corpus_without_checksums_opens_and_repair_records_them(tmp_path, db_url):
    d = _corpus(tmp_path, db_url)
    _make_legacy(d, db_url)
    with CorpusStore.open(d, create=False, url=db_url, verify="full") as s:
        np.testing.assert_array_equal(s.features(1), _motion(0, 30).features)  # unverified, still served
        rep = s.verify()
        assert rep.ok and rep.unverified_motions == 4 and len(rep.unverified_files) == 2
        assert any("before checksums" in w for w in rep.warnings)
        rep = s.verify(repair=True)
        assert rep.recorded_motions == 4 and rep.recorded_files == 2 and rep.not_repaired == []
        rep = s.verify()
        assert rep.ok and rep.unverified_motions == 0 and rep.unverified_files == [] and rep.warnings == []
    _flip_data_bytes(_parts(d)[0])  # now a flip is caught
    with CorpusStore.open(d, create=False, url=db_url) as s:
        assert not s.verify().ok


def test_repair_does_not_bless_damaged_unverified_motions(tmp_path, db_url):
    d = _corpus(tmp_path, db_url)
    _make_legacy(d, db_url)
    part = _parts(d)[0]
    _flip_data_bytes(part)
    with CorpusStore.open(d, create=False, url=db_url) as s:
        rep = s.verify(repair=True)
        # The content hash the store always kept catches it: not recorded, reported
        assert any("content hash does not reproduce" in w for w in rep.warnings)
        assert rep.recorded_motions == 3 and rep.recorded_files == 1
        assert any(part.name in n for n in rep.not_repaired)


# ---------------------------------------------------------------------------------------------- item 9
class _FullDisk:
    """A pa.OSFile stand-in that writes 1000 bytes and then fails like a full disk."""

    def __init__(self, path, mode="wb"):
        self.f = open(path, mode)  # noqa: SIM115 - closed in close()
        self.closed = False

    def write(self, data):
        if self.f.tell() > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(bytes(data))

    def tell(self):
        return self.f.tell()

    def flush(self):
        self.f.flush()

    def close(self):
        self.f.close()
        self.closed = True

    def writable(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_disk_full_leaves_no_temp_file_and_loses_nothing(tmp_path, db_url, monkeypatch):
    d = _corpus(tmp_path, db_url, n=2)
    before = sorted(os.listdir(d / "arrays"))
    monkeypatch.setattr(pa, "OSFile", _FullDisk)
    with CorpusStore.open(d, create=False, url=db_url) as s:
        with pytest.raises((CorpusError, OSError), match="No space left") as ei:
            s.add_motions([_motion(5), _motion(6)])
        monkeypatch.undo()
        assert isinstance(ei.value, CorpusError) and "part-" in str(ei.value)
        assert sorted(os.listdir(d / "arrays")) == before  # no .tmp left to keep the disk full
        assert s.stats().motions == 2 and s.verify().ok
        assert s.add_motions([_motion(5)]).added == 1  # and the next import works


_KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    from sqlalchemy.orm.session import SessionTransaction
    from engine.corpus.store import CorpusStore
    from engine.corpus.types import Motion

    def killed(self):
        os._exit(137)  # the process dies between the Arrow rename and the SQL commit

    SessionTransaction.commit = killed
    rng = np.random.default_rng(7)
    m = Motion(name="test/killed", source="test", fps=20.0, joints=rng.normal(size=(30, 22, 3)).astype(np.float32),
               features=rng.normal(size=(29, 263)).astype(np.float32))
    with CorpusStore.open(sys.argv[1], url=sys.argv[2] or None) as s:
        s.add_motions([m])
""")


def test_kill_between_rename_and_commit_leaves_an_orphan_that_repair_removes(tmp_path, db_url):
    d = _corpus(tmp_path, db_url, n=2)
    before = sorted(os.listdir(d / "arrays"))
    r = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(d), db_url or ""], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 137, r.stderr
    orphan = sorted(set(os.listdir(d / "arrays")) - set(before))
    assert len(orphan) == 1 and orphan[0].startswith("part-")
    # Files the store does not name as its own are never touched.
    foreign = ["notes.txt", "part-mine.arrow", "part-0123456789abcdef.arrow.bak", "Part-0123456789abcdef.arrow"]
    for n in foreign:
        (d / "arrays" / n).write_text("keep me")
    with CorpusStore.open(d, create=False, url=db_url) as s:
        assert s.stats().motions == 2
        rep = s.verify()
        assert rep.ok and rep.orphans == orphan
        rep = s.verify(repair=True)
        assert rep.removed == [str(d / "arrays" / orphan[0])] and rep.not_repaired == []
        assert s.verify().orphans == []
        np.testing.assert_array_equal(s.features(1), _motion(0, 30).features)
    assert sorted(os.listdir(d / "arrays")) == sorted(before + foreign)


def test_repair_leaves_files_alone_while_an_import_holds_the_lock(tmp_path):
    d = _corpus(tmp_path, None, n=2)
    stray = d / "arrays" / "part-00000000deadbeef.arrow"
    temp = d / "arrays" / ".part-00000000deadbeef.arrow.99999.tmp"
    with CorpusStore.open(d, create=False) as writer, writer._lock(exclusive=False):  # an import in flight
        stray.write_bytes(b"x")
        temp.write_bytes(b"x")
        with CorpusStore.open(d, create=False) as s:
            rep = s.verify(repair=True)
            assert rep.removed == [] and any("import is running" in n for n in rep.not_repaired)
        assert stray.exists() and temp.exists()
    with CorpusStore.open(d, create=False) as s:  # the open sweeps temporaries (cheap), not part files
        assert not temp.exists() and stray.exists()
        assert s.verify(repair=True).removed == [str(stray)]


def test_repair_refuses_to_sweep_when_the_database_references_nothing(tmp_path, db_url):
    d = _corpus(tmp_path, db_url, n=2)
    with CorpusStore.open(d, create=False, url=db_url) as s:
        s.remove_motions(s.motion_ids())
        rep = s.verify(repair=True)
        assert rep.removed == [] and any("references none" in n for n in rep.not_repaired)
    assert len(_parts(d)) == 1


def test_stale_legacy_temp_file_is_removed_on_open(tmp_path):
    d = _corpus(tmp_path, None, n=1)
    old = d / "arrays" / "part-0123456789abcdef.arrow.tmp"  # the name older versions wrote
    old.write_bytes(b"half a file")
    with CorpusStore.open(d, create=False):
        pass
    assert not old.exists()


# ---------------------------------------------------------------------------------------------- item 7
def test_concurrent_import_of_the_same_motions_is_idempotent(tmp_path, db_url):
    d = _corpus(tmp_path, db_url, n=0)
    first = CorpusStore.open(d, create=False, url=db_url)
    second = CorpusStore.open(d, create=False, url=db_url)

    def racing():
        """Yields motions 0-3; before the second store writes them, the first stores 0 and 1."""
        yield from (_motion(i) for i in range(4))
        first.add_motions([_motion(0), _motion(1)])

    try:
        rep = second.add_motions(racing())
        assert rep.added == 2 and rep.skipped_existing == 2 and rep.bad == []
        assert second.stats().motions == 4
        vr = second.verify()
        assert vr.ok and vr.orphans == []
        names = {second.get_motion(m).name for m in second.motion_ids()}
        assert names == {f"test/m{i}" for i in range(4)}
    finally:
        first.close()
        second.close()


def test_concurrent_import_of_different_content_is_a_one_line_error(tmp_path, db_url):
    d = _corpus(tmp_path, db_url, n=0)
    first = CorpusStore.open(d, create=False, url=db_url)
    second = CorpusStore.open(d, create=False, url=db_url)
    other = _motion(9)
    other.name = "test/m0"

    def racing():
        yield _motion(0)
        first.add_motions([other])

    try:
        with pytest.raises(CorpusError, match="test/m0.*different content") as ei:
            second.add_motions(racing())
        assert "\n" not in str(ei.value) and "INSERT" not in str(ei.value)
        assert second.stats().motions == 1 and second.verify().orphans == []
    finally:
        first.close()
        second.close()


def test_database_errors_are_one_corpus_error_naming_the_database(tmp_path):
    d = _corpus(tmp_path, None, n=2)
    with CorpusStore.open(d, create=False) as s:
        _sql(d, None, "DROP TABLE annotations")
        with pytest.raises(CorpusError, match=r"corpus\.sqlite: cannot read or write the metadata database") as ei:
            s.stats()
        assert "SELECT" not in str(ei.value) and "\n" not in str(ei.value)
