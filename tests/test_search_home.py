"""The Searcher takes its localizer from the index (and says when it is given another one); the built-in
index is opened verified, and rebuilt when the shipped models are not the ones it was built with."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import Counter
from pathlib import Path

from engine.corpus import io as corpus_io
from indexer.manifest import FileEntry, LocalizerRef, Manifest, read_current, version_dir
from localizer.fingerprint import localizer_fingerprint


# ---------------------------------------------------------------------------------------------- Searcher
def test_searcher_defaults_to_the_index_localizer(pipeline):
    from engine.search import Searcher

    _, index, loc_run = pipeline
    s = Searcher(index)
    assert s.localizer.checkpoint == Path(loc_run) / "best.pt"
    assert s.localizer.fingerprint() == localizer_fingerprint(loc_run)
    assert s.localizer_matches_index and s.use_cache


def test_searcher_with_another_localizer_says_so(pipeline, caplog):
    from engine.home import default_localizer_path
    from engine.search import Searcher

    _, index, loc_run = pipeline
    assert localizer_fingerprint(default_localizer_path()) != localizer_fingerprint(loc_run)
    with caplog.at_level(logging.WARNING, logger="engine.search"):
        s = Searcher(index, localizer=default_localizer_path())
    assert not s.localizer_matches_index and not s.use_cache
    assert any("differs from the one the index was built with" in r.getMessage() and str(loc_run) in r.getMessage()
               for r in caplog.records)


def test_searcher_falls_back_to_the_shipped_localizer_when_the_index_one_is_gone(pipeline, tmp_path, caplog):
    from engine.home import default_localizer_path
    from engine.search import Searcher
    from indexer.build import build_index

    corpus, index, loc_run = pipeline
    gone = tmp_path / "gone"
    model_pt = next(index.glob("versions/*/model.pt"))
    from indexer.model import RetrievalModel

    build_index(corpus, tmp_path / "idx", RetrievalModel.load(model_pt),
                localizer=LocalizerRef(str(gone), localizer_fingerprint(loc_run)))
    with caplog.at_level(logging.WARNING, logger="engine.search"):
        s = Searcher(tmp_path / "idx")
    assert s.localizer.checkpoint == default_localizer_path() / "best.pt"
    assert not s.localizer_matches_index
    assert any("is gone" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------- staleness
def _manifest(model: str = "m" * 64, localizer: LocalizerRef | None = None, tag: str | None = None,
              bank: bool = True) -> Manifest:
    return Manifest(version="000001", config={"window_bank": bank}, model_fingerprint=model, dim=4, n_motions=1, n_chunks=1,
                    files={"model.pt": FileEntry("0" * 64, 1)}, localizer=localizer, motion_feature_tag=tag)


def test_default_index_stale_decision():
    from engine.home import default_index_stale

    ref = LocalizerRef("/shipped/localizer-demo", "l" * 64)
    fresh = _manifest(localizer=ref, tag=ref.sha256)
    assert default_index_stale(fresh, "m" * 64, "l" * 64) is None
    assert "retrieval model changed" in default_index_stale(fresh, "n" * 64, "l" * 64)
    assert "localizer changed" in default_index_stale(fresh, "m" * 64, "k" * 64)
    # Built before the window bank (the default fused score's s): rebuilt once.
    assert "no window bank" in default_index_stale(_manifest(localizer=ref, bank=False), "m" * 64, "l" * 64)
    # Manifests from before `localizer` carry the checkpoint's sha256 as the motion feature tag.
    assert default_index_stale(_manifest(tag="l" * 64), "m" * 64, "l" * 64) is None
    assert "localizer changed" in default_index_stale(_manifest(tag="k" * 64), "m" * 64, "l" * 64)
    assert "localizer changed" in default_index_stale(_manifest(), "m" * 64, "l" * 64)  # no cache at all
    # The same checkpoint at another path (a reinstalled package) is not a change.
    moved = dataclasses.replace(fresh, localizer=LocalizerRef("/elsewhere", "l" * 64))
    assert default_index_stale(moved, "m" * 64, "l" * 64) is None


def test_ensure_default_index_opens_verified_and_rebuilds_for_new_models(monkeypatch, tmp_path, caplog,
                                                                         single_thread):
    """One tiny built-in index: built, then re-used (each file hashed once, nothing rebuilt), then rebuilt
    when the shipped retrieval model changes, and when a file is damaged."""
    import engine.home as home
    from indexer.index import ChunkIndex
    from indexer.model import RetrievalConfig, RetrievalModel

    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "home"))
    first = home.ensure_default_index(preset="tiny")
    assert isinstance(first, ChunkIndex) and first.version == "000001"
    shipped = LocalizerRef(str(home.default_localizer_path()), localizer_fingerprint(home.default_localizer_path()))
    assert first.manifest.localizer == shipped
    index_dir = home.default_index_dir()

    calls: Counter[Path] = Counter()
    real = corpus_io.sha256_file

    def counting(path, *args, **kwargs):
        calls[Path(path).resolve()] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(corpus_io, "sha256_file", counting)
    again = home.ensure_default_index(preset="tiny")
    assert again.version == "000001" and read_current(index_dir) == "000001"
    assert calls == Counter({(again.dir / name).resolve(): 1 for name in again.manifest.files})
    monkeypatch.setattr(corpus_io, "sha256_file", real)

    # New shipped retrieval model: rebuilt (the corpus is kept), and the log says why.
    other = tmp_path / "retrieval-new"
    other.mkdir()
    RetrievalModel.random(RetrievalConfig(d_model=16, n_layers=1, n_heads=2, ff_dim=32, embed_dim=16,
                                          text_hidden=None), seed=1).save(other / "best.pt")
    monkeypatch.setitem(home.MODEL_SETS, "default", dataclasses.replace(home.MODEL_SETS["default"], retrieval=other))
    with caplog.at_level(logging.WARNING, logger="engine.home"):
        rebuilt = home.ensure_default_index(preset="tiny")
    assert rebuilt.version == "000002" and rebuilt.dim == 16
    assert any("shipped retrieval model changed" in r.getMessage() for r in caplog.records)
    assert home.ensure_default_index(preset="tiny").version == "000002"

    # A damaged file: the index does not load, so it is rebuilt rather than reused.
    (version_dir(index_dir, "000002") / "embeddings.arrow").write_bytes(b"damaged")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.home"):
        healed = home.ensure_default_index(preset="tiny")
    assert healed.version == "000003" and any("does not load" in r.getMessage() for r in caplog.records)
    shutil.rmtree(tmp_path / "home")


# ---------------------------------------------------------------------------------------------- model sets
def test_model_sets_pick_models_and_index_dirs(monkeypatch, tmp_path):
    import pytest

    import engine.home as home
    from engine.corpus.types import RequestError

    monkeypatch.setenv("ENGINE_HOME", str(tmp_path))
    monkeypatch.delenv("ENGINE_MODELS", raising=False)
    for name, ms in home.MODEL_SETS.items():
        assert (ms.retrieval / "best.pt").exists() and (ms.localizer / "best.pt").exists(), name
        assert (ms.retrieval / "MODEL_CARD.md").exists() and (ms.localizer / "MODEL_CARD.md").exists(), name
        assert home.default_retrieval_path(name) == ms.retrieval and home.default_localizer_path(name) == ms.localizer
    assert home.default_index_dir() == tmp_path / "demo-index"
    assert home.default_index_dir("synthetic") == tmp_path / "demo-index-synthetic"
    monkeypatch.setenv("ENGINE_MODELS", "synthetic")
    assert home.model_set().name == "synthetic" and home.default_index_dir() == tmp_path / "demo-index-synthetic"
    with pytest.raises(RequestError, match="unknown model set 'nope'"):
        home.model_set("nope")
    # the synthetic set has seen no third-party data
    for p in (home.MODEL_SETS["synthetic"].retrieval, home.MODEL_SETS["synthetic"].localizer):
        assert "non-commercial" not in (p / "MODEL_CARD.md").read_text().lower()


def test_cli_models_flag_errors(tmp_path):
    from typer.testing import CliRunner

    from engine.cli import app

    r = CliRunner().invoke(app, ["search", "kung fu", "--models", "nope"])
    assert r.exit_code != 0 and "unknown model set" in r.output
    r = CliRunner().invoke(app, ["search", "kung fu", "--models", "synthetic", "--index", str(tmp_path)])
    assert r.exit_code != 0 and "--models" in r.output


def test_builtin_fast_path_checks_the_shipped_models_and_the_bank(monkeypatch, tmp_path, single_thread):
    """The torch-free open of the built-in index (engine.home.open_default_index_fast) takes it only when its
    exported query models come from the shipped checkpoints and it has a window bank, as the torch path's
    staleness check requires; otherwise the torch path rebuilds it."""
    import json

    import pytest

    import engine.home as home
    from engine.search import load_searcher
    from indexer.query_models import QueryModelsUnavailable

    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "home"))
    with pytest.raises(QueryModelsUnavailable, match="not built yet"):
        home.open_default_index_fast()
    home.ensure_default_index(preset="tiny")
    load_searcher(None, backend="auto")  # torch path, then exports the query models for the next process
    fast = home.open_default_index_fast()
    assert fast.version == "000001" and fast.manifest.config.get("window_bank")
    man = version_dir(home.default_index_dir(), "000001") / "manifest.json"
    d = json.loads(man.read_text())
    d["config"]["window_bank"] = False
    man.write_text(json.dumps(d))
    with pytest.raises(QueryModelsUnavailable, match="no window bank"):
        home.open_default_index_fast()
    with pytest.raises(QueryModelsUnavailable, match="not built yet"):
        home.open_default_index_fast(models="synthetic")
