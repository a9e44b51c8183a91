"""Error paths a user meets: each is one `error:` line on stderr with a non-zero exit, never a traceback,
and nothing a command refuses to touch is changed (issue: reliability; architecture: EngineError)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.corpus import synth
from engine.corpus.io import atomic_writer, check_output_target
from engine.corpus.store import CorpusStore
from engine.corpus.types import EngineError

runner = CliRunner()


def _one_line_error(r, code=None):
    assert "Traceback" not in r.output, r.output
    assert r.exit_code != 0 if code is None else r.exit_code == code, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("errors") / "corpus"
    with CorpusStore.open(d) as store:
        store.add_motions(synth.generate("tiny", seed=1))
    return d


def _export(corpus, out, *extra):
    return runner.invoke(app, ["export", "1", "--end", "1", "--out", str(out), "--corpus", str(corpus), *extra])


def test_export_refuses_symlinks_fifos_devices_and_directories(corpus, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "link.bvh"
    link.symlink_to(target)
    fifo = tmp_path / "pipe.bvh"
    os.mkfifo(fifo)
    for out, needle in ((link, "symbolic link"), (fifo, "not a regular file"), (Path("/dev/null"), "not a regular"),
                        (tmp_path, "directory")):
        line = _one_line_error(_export(corpus, out, "--force"), code=2)
        assert needle in line and str(out) in line
    assert link.is_symlink() and target.read_text() == "keep me"
    assert fifo.exists() and not fifo.is_file()
    assert Path("/dev/null").is_char_device()


def test_export_needs_force_to_overwrite_a_regular_file(corpus, tmp_path):
    out = tmp_path / "clip.bvh"
    assert _export(corpus, out).exit_code == 0
    first = out.read_bytes()
    out.write_text("old")
    line = _one_line_error(_export(corpus, out), code=2)
    assert "--force" in line and out.read_text() == "old"
    r = _export(corpus, out, "--force")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == first
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary file left beside it


def test_render_and_run_out_refuse_existing_files(corpus, tmp_path):
    out = tmp_path / "clip.gif"
    out.write_text("old")
    r = runner.invoke(app, ["render", "1", "--end", "1", "--out", str(out), "--corpus", str(corpus)])
    assert "--force" in _one_line_error(r, code=2) and out.read_text() == "old"
    run = tmp_path / "run.jsonl"
    run.write_text("old")
    r = runner.invoke(app, ["search", "walk", "--run-out", str(run), "--index", str(tmp_path / "idx")])
    assert "--run-out exists" in _one_line_error(r, code=2) and run.read_text() == "old"


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(OSError), atomic_writer(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    with pytest.raises(EngineError, match="exists"):
        check_output_target(target)
    assert check_output_target(target, force=True) == target


def test_disk_full_and_permission_denied_are_one_line(corpus, tmp_path, monkeypatch):
    import engine.corpus.io as io

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(io, "atomic_write_bytes", full)
    line = _one_line_error(_export(corpus, tmp_path / "a.bvh"))
    assert "No space left on device" in line and "a.bvh" in line

    def denied(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(io, "atomic_write_bytes", denied)
    line = _one_line_error(_export(corpus, tmp_path / "b.bvh"))
    assert "Permission denied" in line and "b.bvh" in line


@pytest.mark.parametrize("device,needle", [("bogus", "unknown device"), ("cuda:x", "unknown device")])
def test_bad_device_is_one_line(tmp_path, device, needle):
    r = runner.invoke(app, ["search", "walk", "--device", device, "--index", str(tmp_path)])
    assert needle in _one_line_error(r)


def test_cuda_on_a_cpu_build_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = runner.invoke(app, ["search", "walk", "--device", "cuda", "--index", str(tmp_path)])
    assert "no usable CUDA device" in _one_line_error(r)


def test_a_bad_localizer_is_named_as_the_localizer(pipeline, tmp_path):
    _, index, _ = pipeline
    bad = tmp_path / "loc"
    bad.mkdir()
    (bad / "best.pt").write_bytes(b"not a checkpoint")
    r = runner.invoke(app, ["search", "walk", "--index", str(index), "--localizer", str(bad)])
    line = _one_line_error(r)
    assert "localizer" in line and str(bad) in line and "cannot load the index" not in line
