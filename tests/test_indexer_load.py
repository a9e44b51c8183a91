"""Loading an index checks each file once, and nothing reaches FAISS or SQLite before its checksum
matches; the manifest names the localizer the index was built with (and old manifests still load)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.corpus import io as corpus_io
from engine.corpus.types import CorpusError
from indexer.index import open_index
from indexer.manifest import LocalizerRef, Manifest, read_current, version_dir
from localizer.fingerprint import localizer_fingerprint, resolve_checkpoint


@pytest.fixture
def hashed(monkeypatch):
    """Counts, per resolved path, the calls of the one sha256-of-a-file helper."""
    calls: Counter[Path] = Counter()
    real = corpus_io.sha256_file

    def counting(path, *args, **kwargs):
        calls[Path(path).resolve()] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(corpus_io, "sha256_file", counting)
    return calls


def _own_localizer(loc_run: Path, tmp_path: Path) -> Path:
    """A copy of the localizer run at a new path (so no fingerprint of it is remembered yet)."""
    out = tmp_path / "loc"
    out.mkdir()
    shutil.copyfile(resolve_checkpoint(loc_run), out / "best.pt")
    return out


def test_opening_a_searcher_hashes_each_file_once(pipeline, hashed, tmp_path):
    from engine.search import Searcher

    _, index, loc_run = pipeline
    loc = _own_localizer(loc_run, tmp_path)
    s = Searcher(index, localizer=loc)
    files = {(s.index.dir / name).resolve() for name in s.index.manifest.files}
    assert len(files) >= 5  # model.pt, chunks.sqlite, embeddings.arrow, index.faiss, motion_features.arrow
    assert hashed == Counter({**{f: 1 for f in files}, (loc / "best.pt").resolve(): 1})
    assert s.localizer_matches_index and s.use_cache  # same checkpoint bytes as the index's localizer


def test_a_searcher_over_an_opened_index_hashes_nothing_again(pipeline, hashed, tmp_path):
    """What `engine search` does with the built-in index: ensure_default_index opens it, the Searcher
    takes the ChunkIndex."""
    from engine.search import Searcher

    _, index, loc_run = pipeline
    loc = _own_localizer(loc_run, tmp_path)
    opened = open_index(index, device="cpu")
    after_open = Counter(hashed)
    s = Searcher(opened, localizer=loc)
    assert s.index is opened and s.index_dir == Path(index)
    files = {(opened.dir / name).resolve() for name in opened.manifest.files}
    assert after_open == Counter({f: 1 for f in files})
    assert hashed - after_open == Counter({(loc / "best.pt").resolve(): 1})


def test_localizer_fingerprint_is_the_checkpoint_sha256_and_remembered(pipeline, hashed, tmp_path):
    import hashlib

    from localizer.infer import Localizer

    loc = _own_localizer(pipeline[2], tmp_path)
    want = hashlib.sha256((loc / "best.pt").read_bytes()).hexdigest()
    assert localizer_fingerprint(loc) == localizer_fingerprint(loc / "best.pt") == want
    assert Localizer.load(loc).fingerprint() == want
    assert hashed[(loc / "best.pt").resolve()] == 1  # asked three times, hashed once
    (loc / "best.pt").write_bytes(b"another file")  # rewritten: hashed again
    assert localizer_fingerprint(loc) == hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(FileNotFoundError, match="best.pt"):
        localizer_fingerprint(tmp_path)


@pytest.mark.parametrize("victim", ["index.faiss", "chunks.sqlite"])
def test_a_corrupted_file_never_reaches_faiss_or_sqlite(pipeline, tmp_path, monkeypatch, victim):
    import faiss

    import indexer.index

    _, index, _ = pipeline
    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    path = version_dir(copy, read_current(copy)) / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    reached = []
    monkeypatch.setattr(faiss, "deserialize_index", lambda *a: reached.append("faiss"))
    monkeypatch.setattr(indexer.index, "ChunkDB", lambda *a, **k: reached.append("sqlite"))
    with pytest.raises(CorpusError, match=f"refusing to load: {victim}: checksum mismatch"):
        open_index(copy)
    assert reached == []


def test_manifest_names_the_localizer_and_old_manifests_load(pipeline):
    _, index, loc_run = pipeline
    vdir = version_dir(index, read_current(index))
    man = Manifest.read(vdir)
    assert man.localizer == LocalizerRef(str(loc_run), localizer_fingerprint(loc_run))
    assert man.localizer.sha256 == man.motion_feature_tag
    d = json.loads((vdir / "manifest.json").read_text())
    assert d["localizer"] == {"path": str(loc_run), "sha256": man.localizer.sha256}
    assert Manifest.from_dict(man.to_dict()) == man
    del d["localizer"]  # a manifest written before the field
    assert Manifest.from_dict(d).localizer is None
    with pytest.raises(CorpusError, match="malformed manifest"):
        Manifest.from_dict({**d, "localizer": {"path": "x"}})


def test_cli_index_build_records_the_localizer(pipeline, tmp_path):
    from engine.cli import app

    corpus, index, loc_run = pipeline
    model_pt = next(index.glob("versions/*/model.pt"))
    out = tmp_path / "idx"
    r = CliRunner().invoke(app, ["index", "build", "--corpus", str(corpus), "--out", str(out), "--model",
                                 str(model_pt), "--localizer", str(loc_run), "--json"])
    assert r.exit_code == 0, r.output
    man = Manifest.read(version_dir(out, read_current(out)))
    assert man.localizer == LocalizerRef(str(Path(loc_run).resolve()), localizer_fingerprint(loc_run))
    # An update that re-uses the cached features keeps naming the localizer; one without it has none.
    r = CliRunner().invoke(app, ["index", "remove", str(out), "--motion", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert Manifest.read(version_dir(out, read_current(out))).localizer == man.localizer
    r = CliRunner().invoke(app, ["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "plain"),
                                 "--model", str(model_pt), "--json"])
    assert r.exit_code == 0, r.output
    assert Manifest.read(version_dir(tmp_path / "plain", "000001")).localizer is None


def test_index_app_without_a_factory_refuses_localizer(pipeline, tmp_path):
    import typer

    from indexer.cli import make_index_app

    corpus, index, loc_run = pipeline
    app = typer.Typer()
    app.add_typer(make_index_app(), name="index")
    r = CliRunner().invoke(app, ["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "i"),
                                 "--localizer", str(loc_run)])
    assert r.exit_code == 1 and "no localizer support" in r.output
