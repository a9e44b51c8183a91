"""Shared fixtures: a tiny real pipeline (synth corpus -> localizer trained 1 epoch -> random retrieval
model -> FAISS index with the localizer cache), built once per session.

`pipeline` gives (corpus_dir, index_dir, localizer_run_dir); `searcher` a Searcher over it.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    from engine.corpus import synth
    from engine.corpus.store import CorpusStore
    from engine.home import localizer_feature_fn
    from indexer.build import IndexConfig, build_index
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
    build_index(corpus, index, model, IndexConfig(), motion_feature_fn=fn, motion_feature_tag=tag)
    return corpus, index, loc_run


@pytest.fixture(scope="session")
def searcher(pipeline):
    from engine.search import Searcher

    _, index, loc_run = pipeline
    return Searcher(index, localizer=loc_run)
