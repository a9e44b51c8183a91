"""A hostile or unlucky index directory: every damage is a named problem or a one-line error, never a
traceback, and `engine index verify` OK means `engine search` can load it (issue: reliability)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.corpus.types import CorpusError
from indexer.manifest import MANIFEST, MODEL_FILE, read_current, version_dir
from indexer.verify import verify

runner = CliRunner()


@pytest.fixture()
def index_copy(pipeline, tmp_path):
    _, index, _ = pipeline
    dst = tmp_path / "index"
    shutil.copytree(index, dst)
    return dst


def _manifest_path(index):
    return version_dir(index, read_current(index)) / MANIFEST


def _one_line(r):
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines, r.output
    return lines


@pytest.mark.parametrize("damage", ["files-list", "format-string", "current-binary", "current-traversal"])
def test_damaged_manifest_or_pointer_is_a_named_problem(index_copy, damage):
    man = _manifest_path(index_copy)
    if damage == "files-list":
        d = json.loads(man.read_text())
        d["files"] = list(d["files"])
        man.write_text(json.dumps(d))
    elif damage == "format-string":
        d = json.loads(man.read_text())
        d["format_version"] = "one"
        man.write_text(json.dumps(d))
    elif damage == "current-binary":
        (index_copy / "CURRENT").write_bytes(b"\xff\xfe\x00garbage")
    else:
        (index_copy / "CURRENT").write_text("../../etc\n")
    rep = verify(index_copy)
    assert not rep.ok and rep.problems
    lines = _one_line(runner.invoke(app, ["index", "verify", str(index_copy)]))
    assert any(("manifest" in ln or "CURRENT" in ln or "version pointer" in ln) for ln in lines), lines
    with pytest.raises((CorpusError, FileNotFoundError)):
        from indexer.index import open_index

        open_index(index_copy)


def test_verify_loads_the_model_the_way_search_does(index_copy):
    """A model.pt replaced by another file whose hash was written into the manifest passes the checksum
    check, but search refuses to load it: verify must say so too."""
    import hashlib

    vdir = version_dir(index_copy, read_current(index_copy))
    (vdir / MODEL_FILE).write_bytes(b"not a torch checkpoint at all")
    man = json.loads((vdir / MANIFEST).read_text())
    data = (vdir / MODEL_FILE).read_bytes()
    man["files"][MODEL_FILE] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (vdir / MANIFEST).write_text(json.dumps(man))
    rep = verify(index_copy)
    assert not rep.ok and any(MODEL_FILE in p and "load" in p for p in rep.problems), rep.problems


def test_a_non_finite_embedding_is_refused_naming_the_motion(pipeline, tmp_path, monkeypatch):
    import indexer.stages as stages
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.model import RetrievalConfig, RetrievalModel

    corpus, _, _ = pipeline
    real = stages.embed_block

    def poisoned(b, spans, features_of):
        vecs = real(b, spans, features_of)
        vecs[0, :] = np.nan
        return vecs

    monkeypatch.setattr(stages, "embed_block", poisoned)
    model = RetrievalModel.random(RetrievalConfig(d_model=32, n_layers=1, n_heads=2, ff_dim=64, embed_dim=32), seed=0)
    with pytest.raises(CorpusError, match=r"motion \d+ .*non-finite"):
        build_index(corpus, tmp_path / "idx", model, IndexConfig())
    assert read_current(tmp_path / "idx") is None  # nothing published


def test_index_add_without_the_localizer_names_the_flag(pipeline, tmp_path):
    """An index that caches the localizer's motion encoding cannot take new motions without it: the error
    names `--localizer` (not only the library's parameter)."""
    from engine.corpus import synth
    from engine.corpus.store import CorpusStore

    corpus, index, _ = pipeline
    c2, i2 = tmp_path / "corpus", tmp_path / "index"
    shutil.copytree(corpus, c2)
    shutil.copytree(index, i2)
    with CorpusStore.open(c2, create=False) as st:
        st.add_motions(synth.generate("tiny", seed=99))
    r = runner.invoke(app, ["index", "add", str(i2), "--corpus", str(c2)])
    assert r.exit_code != 0 and "pass --localizer RUN" in r.output and "Traceback" not in r.output, r.output
