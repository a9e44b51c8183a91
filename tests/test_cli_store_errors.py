"""`engine data verify` and the store's error paths on the command line (issue 15, items 4, 7 and 9):
a damaged corpus is one `error:` line (exit 2) or a list of problems (exit 1), never a traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.corpus.store import CorpusStore
from engine.corpus.types import Annotation, Motion

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _corpus(tmp_path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    d = tmp_path / "c"
    with CorpusStore.open(d) as s:
        s.add_motions([Motion(name=f"t/{i}", source="t", fps=20.0,
                              joints=rng.normal(size=(41, 22, 3)).astype(np.float32),
                              features=rng.normal(size=(40, 263)).astype(np.float32),
                              annotations=[Annotation("a person jumps", 0.5, 1.5)], split="test")
                       for i in range(n)], batch_size=2)
    return d


def _one_error_line(r, *needles: str) -> str:
    assert "Traceback" not in r.output and "Traceback" not in r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _flip(part: Path) -> None:
    t = pa.ipc.open_file(pa.memory_map(str(part), "r")).read_all()
    target = np.array(t.column("features")[0].values)[50:54].tobytes()
    data = bytearray(part.read_bytes())
    at = data.find(target)
    for k in range(at, at + 64):
        data[k] ^= 0x5A
    part.write_bytes(bytes(data))


def _corrupt_sqlite(path: Path, how: str) -> None:
    data = path.read_bytes()
    rng = np.random.default_rng(1)
    if how == "garbage":
        path.write_bytes(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif how == "header-kept":  # a valid SQLite header, every page after it garbage
        path.write_bytes(data[:100] + rng.integers(0, 256, len(data) - 100, dtype=np.uint8).tobytes())
    elif how == "truncated":
        path.write_bytes(data[:4096])
    else:
        raise AssertionError(how)


# ---------------------------------------------------------------------------------------------- data verify
def test_data_verify_ok_and_json(tmp_path):
    d = _corpus(tmp_path)
    r = runner.invoke(app, ["data", "verify", str(d)])
    assert r.exit_code == 0, r.output
    assert "OK" in r.stdout and "2 part files, 3 motions" in r.stdout and r.stderr == ""
    r = runner.invoke(app, ["data", "verify", str(d), "--json"])
    rep = json.loads(r.stdout)
    assert r.exit_code == 0 and rep["ok"] and rep["motions"] == 3 and rep["bytes_hashed"] > 0


def test_data_verify_catches_a_flipped_byte_naming_file_and_motion(tmp_path):
    d = _corpus(tmp_path)
    part = sorted((d / "arrays").glob("part-*.arrow"))[0]
    _flip(part)
    r = runner.invoke(app, ["data", "verify", str(d)])
    assert r.exit_code == 1 and "PROBLEMS" in r.stdout
    problems = [ln for ln in r.stderr.splitlines() if ln.startswith("problem: ")]
    assert any(part.name in p and "sha256" in p for p in problems)
    assert any("motion 't/" in p and "features" in p for p in problems)
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["data", "verify", str(d), "--quick"])  # sizes only: same size, not caught
    assert r.exit_code == 0
    r = runner.invoke(app, ["data", "verify", str(d), "--repair"])  # damaged data is reported, not "repaired"
    assert r.exit_code == 1 and "not repaired: " in r.stderr


def test_data_verify_catches_a_swapped_array_file(tmp_path):
    from sqlalchemy import create_engine, text

    d = _corpus(tmp_path)
    a, b = sorted(p.name for p in (d / "arrays").glob("part-*.arrow"))
    eng = create_engine(f"sqlite:///{d / 'corpus.sqlite'}")
    with eng.begin() as c:
        mid = c.execute(text("SELECT motion_id FROM motions WHERE array_file = :a AND array_row = 0"), {"a": a}).scalar()
        c.execute(text("UPDATE motions SET array_file = :b WHERE motion_id = :m"), {"b": b, "m": mid})
    eng.dispose()
    r = runner.invoke(app, ["data", "verify", str(d)])
    assert r.exit_code == 1
    assert any(f"(id {mid})" in ln and b in ln for ln in r.stderr.splitlines() if ln.startswith("problem: "))
    out = tmp_path / "x.npy"
    r = runner.invoke(app, ["export", str(mid), "--corpus", str(d), "--out", str(out)])
    assert r.exit_code != 0 and not out.exists()  # another motion's frames are not written
    assert f"(id {mid})" in (r.stderr + str(r.exception))


def test_data_verify_repair_removes_orphans_and_temporaries_only(tmp_path):
    d = _corpus(tmp_path)
    orphan = d / "arrays" / "part-00000000deadbeef.arrow"
    shutil.copy(sorted((d / "arrays").glob("part-*.arrow"))[0], orphan)
    keep = d / "arrays" / "README.txt"
    keep.write_text("mine")
    r = runner.invoke(app, ["data", "verify", str(d), "--json"])
    rep = json.loads(r.stdout)
    assert r.exit_code == 0 and rep["orphans"] == [orphan.name] and rep["removed"] == []
    r = runner.invoke(app, ["data", "verify", str(d), "--repair"])
    assert r.exit_code == 0 and f"removed: {orphan}" in r.stdout
    assert not orphan.exists() and keep.exists()
    r = runner.invoke(app, ["data", "stats", str(d), "--json"])
    assert json.loads(r.stdout)["motions"] == 3


def test_data_verify_repair_records_checksums_of_an_old_corpus(tmp_path):
    from sqlalchemy import create_engine, text

    d = _corpus(tmp_path)
    eng = create_engine(f"sqlite:///{d / 'corpus.sqlite'}")
    with eng.begin() as c:  # a corpus written before checksums existed
        c.execute(text("DROP TABLE motion_digests"))
        c.execute(text("DROP TABLE array_files"))
    eng.dispose()
    r = runner.invoke(app, ["data", "verify", str(d)])
    assert r.exit_code == 0 and "3 unverified" in r.stdout and "before checksums" in r.stderr
    r = runner.invoke(app, ["data", "verify", str(d), "--repair"])
    assert r.exit_code == 0 and "recorded checksums of 2 part files and 3 motions" in r.stdout
    r = runner.invoke(app, ["data", "verify", str(d)])
    assert r.exit_code == 0 and "0 unverified" in r.stdout and r.stderr == ""


def test_data_verify_on_a_resized_part_file(tmp_path):
    d = _corpus(tmp_path)
    part = sorted((d / "arrays").glob("part-*.arrow"))[1]
    with open(part, "r+b") as f:
        f.truncate(part.stat().st_size - 16)
    r = runner.invoke(app, ["data", "stats", str(d)])  # the cheap open check refuses it
    _one_error_line(r, part.name, "engine data verify")
    assert r.exit_code == 2
    r = runner.invoke(app, ["data", "verify", str(d)])  # and verify reports it
    assert r.exit_code == 1 and part.name in r.stderr and "Traceback" not in r.output


# ---------------------------------------------------------------------------------------------- corrupted SQL
@pytest.mark.parametrize("how", ["garbage", "header-kept", "truncated"])
def test_corrupted_corpus_sqlite_is_one_error_line(tmp_path, how):
    d = _corpus(tmp_path)
    _corrupt_sqlite(d / "corpus.sqlite", how)
    for args in (["data", "stats", str(d)], ["data", "stats", str(d), "--json"], ["data", "show", str(d), "t/1"],
                 ["data", "show", str(d), "2"], ["data", "verify", str(d)],
                 ["index", "verify", str(tmp_path / "idx"), "--corpus", str(d)]):
        r = runner.invoke(app, args)
        _one_error_line(r, "corpus.sqlite")
        assert r.exit_code == 2, (args, r.output)


def test_database_failing_after_open_is_one_error_line(tmp_path):
    from sqlalchemy import create_engine, text

    d = _corpus(tmp_path)
    eng = create_engine(f"sqlite:///{d / 'corpus.sqlite'}")
    with eng.begin() as c:  # a damaged schema: the open check passes, the first query on the table fails
        c.execute(text("DROP TABLE annotations"))
        c.execute(text("CREATE TABLE annotations (x INTEGER)"))
    eng.dispose()
    for args in (["data", "stats", str(d)], ["data", "show", str(d), "t/1"]):
        r = runner.invoke(app, args)
        line = _one_error_line(r, "corpus.sqlite", "no such column")
        assert r.exit_code == 2 and "SELECT" not in line


def test_index_verify_with_a_corrupted_corpus(pipeline, tmp_path):
    corpus, index, _ = pipeline
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    r = runner.invoke(app, ["index", "verify", str(index), "--corpus", str(copy)])
    assert r.exit_code == 0, r.output
    part = sorted((copy / "arrays").glob("part-*.arrow"))[0]
    _flip(part)  # a flipped byte in the corpus the index was built from: verify-OK would be a lie
    r = runner.invoke(app, ["index", "verify", str(index), "--corpus", str(copy)])
    assert r.exit_code == 1 and "PROBLEMS" in r.stdout
    assert any(ln.startswith("problem: corpus: ") and part.name in ln for ln in r.stderr.splitlines())
    _corrupt_sqlite(copy / "corpus.sqlite", "header-kept")
    r = runner.invoke(app, ["index", "verify", str(index), "--corpus", str(copy)])
    _one_error_line(r, "corpus.sqlite")
    assert r.exit_code == 2


# ---------------------------------------------------------------------------------------------- imports
class _FullDisk:
    """A pa.OSFile stand-in: the disk fills up after 2000 bytes."""

    def __init__(self, path, mode="wb"):
        self.f = open(path, mode)  # noqa: SIM115 - closed in close()
        self.closed = False

    def write(self, data):
        if self.f.tell() > 2000:
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


def test_import_on_a_full_disk_is_one_error_line_and_loses_nothing(tmp_path, monkeypatch):
    d = _corpus(tmp_path)
    files = sorted(os.listdir(d / "arrays"))
    monkeypatch.setattr(pa, "OSFile", _FullDisk)
    r = runner.invoke(app, ["data", "synth", "--preset", "tiny", "--n", "2", "--out", str(d)])
    monkeypatch.undo()
    _one_error_line(r, "No space left on device", "part-")
    assert r.exit_code in (1, 2)
    assert sorted(os.listdir(d / "arrays")) == files
    r = runner.invoke(app, ["data", "verify", str(d), "--json"])
    rep = json.loads(r.stdout)
    assert r.exit_code == 0 and rep["motions"] == 3 and rep["orphans"] == [] and rep["warnings"] == []


def test_two_concurrent_imports_of_the_same_files_both_succeed(tmp_path):
    d = tmp_path / "c"
    CorpusStore.open(d).close()
    cmd = [sys.executable, "-m", "engine.cli", "data", "synth", "--preset", "tiny", "--n", "4", "--out", str(d),
           "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    reports = [json.loads(out) for out, _ in outs]
    assert sum(r["added"] for r in reports) == 4
    assert sorted(r["added"] + r["skipped_existing"] for r in reports) == [4, 4]
    r = runner.invoke(app, ["data", "verify", str(d), "--json"])
    rep = json.loads(r.stdout)
    assert r.exit_code == 0 and rep["motions"] == 4 and rep["orphans"] == []
