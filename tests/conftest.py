"""Shared fixtures.

- `pipeline`: a tiny real pipeline (synth corpus -> localizer trained 1 epoch -> random retrieval model ->
  FAISS index with the localizer cache, its manifest naming the localizer), built once per session: (corpus_dir, index_dir, localizer_run_dir);
  `searcher` a Searcher over it.
- `db_url`: the corpus store's metadata database, parametrized: None (SQLite in the corpus directory) and a
  fresh database on the PostgreSQL server named by ENGINE_TEST_PG_URL (scripts/test.sh starts one). Without
  that variable the PostgreSQL case skips, unless ENGINE_REQUIRE_POSTGRES=1 (set by scripts/test.sh when it
  runs as root, as in CI), where it fails.
"""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors: one intra-op thread is as fast, and immune to OpenMP spin-waits on a busy 2-core box."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    if request.param == "sqlite":
        yield None
        return
    base = os.environ.get("ENGINE_TEST_PG_URL")
    if not base:
        if os.environ.get("ENGINE_REQUIRE_POSTGRES") == "1":
            pytest.fail("ENGINE_REQUIRE_POSTGRES=1 but ENGINE_TEST_PG_URL is not set")
        pytest.skip("no PostgreSQL server: set ENGINE_TEST_PG_URL=postgresql+psycopg://user@host:port/db "
                    "(scripts/test.sh starts a throwaway one)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"engine_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    from engine.corpus import synth
    from engine.corpus.store import CorpusStore
    from engine.home import localizer_feature_fn
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.manifest import LocalizerRef
    from indexer.model import RetrievalConfig, RetrievalModel
    from localizer.config import make_config
    from localizer.train import train_localizer

    root = tmp_path_factory.mktemp("e2e")
    corpus = root / "corpus"
    with CorpusStore.open(corpus) as store:
        store.add_motions(synth.generate("tiny", seed=3))
        loc_run = root / "loc"
        cfg = make_config("tiny", "mlp", {"train.epochs": 1, "train.time_budget_min": None})
        train_localizer(store, loc_run, cfg)
    model = RetrievalModel.random(RetrievalConfig(d_model=32, n_layers=1, n_heads=2, ff_dim=64, embed_dim=32), seed=0)
    fn, tag = localizer_feature_fn(loc_run)
    index = root / "index"
    build_index(corpus, index, model, IndexConfig(), motion_feature_fn=fn, motion_feature_tag=tag,
                localizer=LocalizerRef(str(loc_run), tag))
    return corpus, index, loc_run


@pytest.fixture(scope="session")
def searcher(pipeline):
    from engine.search import Searcher

    _, index, loc_run = pipeline
    return Searcher(index, localizer=loc_run)
