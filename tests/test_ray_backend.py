"""Ray backends: the index built on Ray Data workers equals the local build (also when it resumes a killed
local build), queries searched on Ray actors equal the local Searcher, and clear errors for a bad
`--backend` or a missing Ray. One small local Ray (2 CPUs) for the whole module."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("ray", reason="ray is not installed (pip install 'motion-search-engine[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'motion-search-engine[ray]')")

import indexer.stages as stages  # noqa: E402
from engine.corpus.types import Moment  # noqa: E402
from engine.request import SearchRequest  # noqa: E402
from indexer.build import build_index, remove_from_index  # noqa: E402
from indexer.config import IndexConfig  # noqa: E402
from indexer.index import open_index  # noqa: E402
from indexer.manifest import EMBEDDINGS, FAISS_FILE, Manifest, read_current, version_dir  # noqa: E402
from indexer.model import RetrievalConfig, RetrievalModel  # noqa: E402
from indexer.verify import verify  # noqa: E402

runner = CliRunner()
SMALL = RetrievalConfig(d_model=32, n_layers=1, n_heads=2, ff_dim=64, embed_dim=32)
BLOCKS = 32  # chunks per embed block: the tiny corpus makes 4 blocks


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(corpus_dir, model checkpoint, root) of synth 'tiny' seed 0 and a random small model."""
    from engine.corpus import synth
    from engine.corpus.store import CorpusStore

    root = tmp_path_factory.mktemp("ray")
    with CorpusStore.open(root / "corpus") as store:
        store.add_motions(synth.generate("tiny", seed=0))
    RetrievalModel.random(SMALL, seed=0).save(root / "model.pt")
    return root / "corpus", root / "model.pt", root


def _local(tiny, config: IndexConfig):
    corpus, model, root = tiny
    out = root / f"local-{config.block_chunks}"
    build_index(corpus, out, RetrievalModel.load(model), config)
    return out


def _comparable(man: Manifest) -> dict:
    """The manifest without timestamps, timings, backend and the hashes of float files (compared apart)."""
    d = man.to_dict()
    d.pop("created_utc")
    d["build"].pop("embed_backend")
    for key in ("seconds_exact", "seconds_index"):
        d["recall"].pop(key)
    for name in (EMBEDDINGS, FAISS_FILE):
        d["files"][name].pop("sha256")
    return d


def _assert_same_index(a_dir, b_dir) -> None:
    a, b = open_index(a_dir), open_index(b_dir)
    for col in ("chunk_id", "motion_id", "chunk_index", "start_frame", "end_frame", "start_s", "end_s"):
        np.testing.assert_array_equal(getattr(a.table, col), getattr(b.table, col))
    assert a.motions == b.motions
    ea, eb = a.embeddings(), b.embeddings()
    np.testing.assert_array_equal(ea.chunk_ids, eb.chunk_ids)
    np.testing.assert_array_equal(ea.motion_ids, eb.motion_ids)
    assert ea.vectors.dtype == eb.vectors.dtype == np.float32
    np.testing.assert_allclose(ea.vectors, eb.vectors, atol=1e-5)
    q = np.random.default_rng(0).normal(size=(32, a.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    (sa, ia), (sb, ib) = a.search(q, 10), b.search(q, 10)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, atol=1e-5)
    assert _comparable(a.manifest) == _comparable(b.manifest)
    assert verify(b_dir).ok


def test_cli_ray_build_equals_local_build(ray_cluster, tiny, tmp_path):
    from engine.cli import app

    corpus, model, _ = tiny
    local = _local(tiny, IndexConfig())
    r = runner.invoke(app, ["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "ray"),
                            "--model", str(model), "--backend", "ray", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["version"] == "000001" and rep["n_embedded"] == rep["n_chunks"] > 3 * BLOCKS
    assert Manifest.read(version_dir(tmp_path / "ray", "000001")).build["embed_backend"] == "ray"
    assert Manifest.read(version_dir(local, "000001")).build["embed_backend"] == "local"
    _assert_same_index(local, tmp_path / "ray")


def test_killed_local_build_resumes_on_ray(ray_cluster, tiny, tmp_path, monkeypatch):
    from indexer.ray_backend import RayEmbedBackend

    corpus, model_path, _ = tiny
    config = IndexConfig(block_chunks=BLOCKS)  # 4 blocks; Ray tasks of 13 chunks straddle them
    local = _local(tiny, config)
    model = RetrievalModel.load(model_path)
    real, calls = stages.embed_block, []

    def dies_on_second_block(b, spans, features_of):
        calls.append(len(spans))
        if len(calls) == 2:
            raise RuntimeError("simulated kill in the embed stage")
        return real(b, spans, features_of)

    monkeypatch.setattr(stages, "embed_block", dies_on_second_block)
    idx = tmp_path / "idx"
    with pytest.raises(RuntimeError, match="simulated kill"):
        build_index(corpus, idx, model, config)
    assert read_current(idx) is None
    monkeypatch.setattr(stages, "embed_block", real)
    rep = build_index(corpus, idx, model, config, embed_backend=RayEmbedBackend())
    assert rep.resumed and rep.stages_run[0] == "embed" and rep.n_embedded == rep.n_chunks - BLOCKS
    _assert_same_index(local, idx)


def _assert_same_moments(got: list[Moment], want: list[Moment]) -> None:
    """Equal results; floats up to the rounding of another thread count (workers run 1 torch thread)."""
    assert [(m.motion_id, m.source, m.label, m.name) for m in got] == [(m.motion_id, m.source, m.label, m.name)
                                                                      for m in want]
    for field in ("start_s", "end_s", "score", "p_se", "r"):
        np.testing.assert_allclose([getattr(m, field) for m in got], [getattr(m, field) for m in want],
                                   rtol=1e-5, atol=1e-6, err_msg=field)


def test_ray_search_queries_equal_local_searcher(ray_cluster, pipeline, searcher):
    from engine.distributed import ray_search_queries

    _, index, loc_run = pipeline
    texts = ["a person walks forward", "someone jumps", "a person waves", "kick", "sit down", "turn around"]
    queries = [(f"q{i}", t) for i, t in enumerate(texts)]
    req = SearchRequest("any", k=20, lam=5.0, limit=5, r_mode="motion")
    got = ray_search_queries(index, queries, req, localizer=loc_run, num_workers=2)
    assert list(got) == [qid for qid, _ in queries]
    for qid, text in queries:
        want = searcher.search(req.with_text(text)).moments
        assert want
        _assert_same_moments(got[qid], want)
    with pytest.raises(ValueError, match="duplicate"):  # checked before any worker starts
        ray_search_queries(index, [("a", "walk"), ("a", "run")], req, localizer=loc_run)


def test_eval_cmr_on_ray_equals_local(ray_cluster, pipeline, tmp_path):
    """`engine eval cmr --backend ray`: the same run files (moments, order) as the local run, both r modes."""
    from engine.evaluate import cmr_eval
    from eval.runfile import read_run

    _, index, loc_run = pipeline
    kw = dict(split="train", ks=(6,), lams=(5.0,), limit=5, max_queries=4, localizer=loc_run,
              sliding_window=False, r_modes=("motion", "moment"))
    local = cmr_eval(index, tmp_path / "local", **kw)
    ray_ = cmr_eval(index, tmp_path / "ray", backend="ray", ray_workers=2, **kw)
    assert set(local.runs) == set(ray_.runs) == {"mlp-k6-lam5", "mlp-k6-lam5-rmoment", "retrieval-only"}
    for name in local.runs:
        a, b = read_run(local.runs[name]).rows, read_run(ray_.runs[name]).rows
        assert [(x.query_id, x.motion_id, x.rank, x.start_s, x.end_s) for x in a] == \
            [(x.query_id, x.motion_id, x.rank, x.start_s, x.end_s) for x in b]
        assert [x.score for x in a] == pytest.approx([x.score for x in b], rel=1e-5)


def test_corpus_error_pickles():
    from engine.corpus.types import CorpusError

    e = pickle.loads(pickle.dumps(CorpusError("a.bvh", "truncated")))
    assert isinstance(e, CorpusError) and (e.where, e.problem, str(e)) == ("a.bvh", "truncated", "a.bvh: truncated")


def test_search_worker_errors_name_the_query_and_pickle(pipeline):
    from engine.distributed import SearchWorker

    _, index, loc_run = pipeline
    worker = SearchWorker(str(index), str(loc_run), "cpu")  # what each Ray actor holds
    req = SearchRequest("any", k=5, lam=5.0, limit=2)
    assert worker.search([("ok", "walk")], req)[0][0] == "ok"
    with pytest.raises(RuntimeError, match="query 'empty': RequestError: query: empty query") as e:
        worker.search([("ok", "walk"), ("empty", "  ")], req)
    assert str(pickle.loads(pickle.dumps(e.value))) == str(e.value)  # crosses Ray's process boundary
    with pytest.raises(RuntimeError, match="no-such-index"):
        SearchWorker(str(index.parent / "no-such-index"), str(loc_run), "cpu")


def test_moments_pickle():
    m = Moment(motion_id=3, source="synth", start_s=1.5, end_s=4.0, score=0.7, p_se=0.4, r=0.3, label="walk",
               name="synth/3")
    assert pickle.loads(pickle.dumps(m)) == m


def test_cli_ray_add_equals_local_add(ray_cluster, tiny, tmp_path):
    """`engine index add --backend ray`: the new motions' chunks embedded on Ray, the same version as a local add."""
    import shutil

    from engine.cli import app
    from engine.corpus.store import CorpusStore

    corpus, model, _ = tiny
    with CorpusStore.open(corpus, create=False) as store:
        ids = store.motion_ids()
    base = tmp_path / "base"
    build_index(corpus, base, RetrievalModel.load(model), IndexConfig())
    remove_from_index(base, ids[len(ids) // 2:])  # `add` puts these back
    shutil.copytree(base, tmp_path / "ray")
    shutil.copytree(base, tmp_path / "local")
    for name, extra in (("local", []), ("ray", ["--backend", "ray"])):
        r = runner.invoke(app, ["index", "add", str(tmp_path / name), "--json", *extra])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["n_embedded"] > 0
    assert Manifest.read(version_dir(tmp_path / "ray", read_current(tmp_path / "ray"))).build["embed_backend"] == "ray"
    _assert_same_index(tmp_path / "local", tmp_path / "ray")


@pytest.mark.parametrize("command", ["rebuild", "add", "sync"])
def test_bad_backend_on_lifecycle_commands(tiny, tmp_path, command):
    from engine.cli import app

    r = runner.invoke(app, ["index", command, str(tmp_path / "none"), "--backend", "nope"])
    assert r.exit_code != 0 and "--backend 'nope'" in r.output


def test_bad_backend_is_a_clear_error(tiny, tmp_path):
    from engine.cli import app

    corpus, model, _ = tiny
    r = runner.invoke(app, ["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "x"),
                            "--model", str(model), "--backend", "nope"])
    assert r.exit_code != 0
    assert "--backend 'nope'" in r.output and "local, ray" in r.output
    assert not (tmp_path / "x").exists()


def test_missing_ray_names_the_extra(tiny, tmp_path, monkeypatch):
    from engine.cli import app

    corpus, model, _ = tiny
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = runner.invoke(app, ["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "x"),
                            "--model", str(model), "--backend", "ray"])
    assert r.exit_code != 0
    assert "pip install 'motion-search-engine[ray]'" in r.output
    assert not (tmp_path / "x").exists()
