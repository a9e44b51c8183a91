"""The ONNX query path (engine/onnx_path.py) against the torch path it replaces on a cold start.

Oracles: sentence-transformers for the text encoder; the torch Localizer for the localizer graph; the torch
backend's `engine search --json` for the whole search. Plus: the onnx path imports no torch, a damaged
graph is an IndexFileError naming it, stale or missing exports are not used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def bert_graph(tmp_path_factory):
    """The MiniLM exported once for this module: (OnnxBert, torch BertModel, sentence max_length)."""
    from engine.corpus.bert import load_bert, sentence_pipeline
    from engine.corpus.bert_onnx import OnnxBert, export_bert_onnx
    from engine.corpus.onnx_io import ort_session
    from engine.corpus.text import minilm_path

    path = minilm_path()
    max_length = sentence_pipeline(path).max_length
    out = tmp_path_factory.mktemp("bert") / "minilm.onnx"
    check = export_bert_onnx(path, out, max_length)
    assert check.sentence_cos_min >= 0.99999
    bert = load_bert(path, "cpu")
    return OnnxBert(ort_session(out.read_bytes(), str(out)), bert.wordpiece, bert.dim), bert, max_length


def test_onnx_text_encoder_matches_sentence_transformers(bert_graph, single_thread):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is the oracle here")
    from test_text import _cos_rows, _sentences

    from engine.corpus import text

    enc, _, max_length = bert_graph
    texts = _sentences()
    ref = text.SentenceEncoder(backend="sentence-transformers")
    a, b = enc.sentences(texts, max_length), ref.encode(texts)
    assert a.shape == b.shape == (100, 384) and a.dtype == np.float32
    cos = _cos_rows(a, b)
    assert cos.min() >= 0.9999, [(texts[i][:40], float(cos[i])) for i in np.argsort(cos)[:3]]
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_onnx_tokens_match_the_torch_encoder(bert_graph, single_thread):
    """The localizer's token embeddings (truncated to 32 tokens) equal the torch BERT's."""
    from test_text import _sentences

    enc, bert, _ = bert_graph
    texts = _sentences()[:60]
    a_emb, a_mask = enc.hidden(texts, 32)
    b_emb, b_mask = bert.hidden(texts, 32)
    np.testing.assert_array_equal(a_mask, b_mask)
    np.testing.assert_allclose(a_emb[a_mask], b_emb[b_mask], atol=1e-4)


# ----------------------------------------------------------------------------- the localizer graph
def _random_localizer(tmp_path: Path, variant: str):
    """A seeded, untrained localizer of the `tiny` preset saved as a checkpoint (any variant)."""
    import torch

    from localizer.config import make_config
    from localizer.infer import Localizer
    from localizer.model import MLPLocalizer

    cfg = make_config("tiny", variant)
    torch.manual_seed(0)
    model = MLPLocalizer(cfg.model).eval()
    run = tmp_path / variant
    run.mkdir()
    torch.save({"config": cfg.to_dict(), "model": model.state_dict()}, run / "best.pt")
    return Localizer.load(run)


@pytest.mark.parametrize("variant", ["mlpbase", "mlp", "mlp-s"])
def test_onnx_localizer_distributions_equal_torch(variant, bert_graph, tmp_path, single_thread):
    """Start / end / highlight of the ONNX graph equal torch's within TOLERANCE (1e-4, absolute) on motions
    of other lengths, batch sizes and sentences than it was traced with; and the decoded moments agree."""
    from localizer.onnx_export import TOLERANCE, export_localizer_onnx
    from localizer.outputs import EncodedMotion

    enc, _, _ = bert_graph
    loc = _random_localizer(tmp_path, variant)
    rng = np.random.default_rng(1)
    d = loc.config.model.d_model
    motions = [EncodedMotion(rng.normal(size=(t, d)).astype(np.float32), duration_s=t / 4, motion_id=i)
               for i, t in enumerate([1, 2, 7, 19, 32, 32, 11])]
    res = export_localizer_onnx(loc, tmp_path / "loc.onnx", motions, enc)
    assert res.max_abs_diff <= TOLERANCE
    from engine.corpus.onnx_io import ort_session
    from localizer.onnx_infer import OnnxLocalizer

    onnx_loc = OnnxLocalizer(ort_session((tmp_path / "loc.onnx").read_bytes(), "loc"), res.spec, enc)
    loc._text_encoder = _tokens(onnx_loc)  # the same token embeddings: the graphs alone are compared
    for text in ("a person jumps over a box and lands softly", "wave"):
        for bs in (2, 64):
            want = loc.distributions(text, motions, batch_size=bs)
            got = onnx_loc.distributions(text, motions, batch_size=bs)
            for a, b in zip(want, got):
                for x, y in ((a.p_start, b.p_start), (a.p_end, b.p_end), (a.highlight, b.highlight)):
                    assert x.shape == y.shape
                    np.testing.assert_allclose(y, x, atol=TOLERANCE)
        for top_m in (1, 3):
            want = loc.localize(text, motions, top_m=top_m)
            got = onnx_loc.localize(text, motions, top_m=top_m)
            assert [[(s.start_idx, s.end_idx) for s in r] for r in got] == \
                [[(s.start_idx, s.end_idx) for s in r] for r in want]


def _tokens(onnx_loc):
    from localizer.onnx_export import _Tokens

    return _Tokens(onnx_loc)


def test_glove_localizer_is_refused(tmp_path):
    """The ONNX path runs BERT text encoders only; another is refused in one line."""
    from engine.corpus.types import ModelError
    from engine.onnx_path import _bert_dir
    from indexer.model import RetrievalModel

    loc = _random_localizer(tmp_path, "mlpbase")
    loc.config.train.text_encoder = "glove"
    with pytest.raises(ModelError, match="GloVe"):
        _bert_dir(RetrievalModel.random(), loc)


# ----------------------------------------------------------------------------- the whole search
@pytest.fixture(scope="module")
def onnx_index(pipeline, tmp_path_factory):
    """A copy of the tiny pipeline's index with its ONNX query models exported: (index_dir, localizer_dir)."""
    from engine.onnx_path import export_query_models
    from engine.search import Searcher

    _, index, loc_run = pipeline
    root = tmp_path_factory.mktemp("onnx-index")
    copy = root / "index"
    shutil.copytree(index, copy)
    s = Searcher(copy, localizer=loc_run)
    export_query_models(s.index, s.retrieval, s.localizer, cache_dir=root / "onnx")
    return copy, loc_run


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env or ENV, cwd=str(ROOT))


QUERIES = ("a person walks forward", "someone jumps twice", "kick with the left leg and turn around")


def test_search_json_identical_torch_vs_onnx(onnx_index):
    index, loc = onnx_index
    for q in QUERIES:
        out = {}
        for backend in ("torch", "onnx"):
            r = _cli("search", q, "--index", str(index), "--localizer", str(loc), "--k", "50", "--limit", "10",
                     "--json", "--backend", backend)
            assert r.returncode == 0, r.stderr[-2000:]
            out[backend] = json.loads(r.stdout)
        t, o = out["torch"], out["onnx"]
        assert len(t) == len(o) and t
        assert [m["motion_id"] for m in o] == [m["motion_id"] for m in t], q
        for a, b in zip(t, o):
            assert abs(a["start_s"] - b["start_s"]) <= 1e-4 and abs(a["end_s"] - b["end_s"]) <= 1e-4
            assert b["score"] == pytest.approx(a["score"], rel=1e-4)


def test_search_many_identical_torch_vs_onnx(onnx_index):
    """In process, every request setting the CLI offers: the same moments from both backends."""
    from engine.request import SearchRequest
    from engine.search import Searcher

    index, loc = onnx_index
    torch_s = Searcher(index, localizer=loc)
    onnx_s = Searcher(index, localizer=loc, backend="onnx")
    assert (torch_s.backend, onnx_s.backend) == ("torch", "onnx")
    reqs = [SearchRequest(q, k=40, limit=8, top_m=m, r_mode=r, prune=p)
            for q in QUERIES for m, r, p in ((1, "motion", True), (3, "moment", False), (5, "moment", True))]
    for a, b in zip(torch_s.search_many(reqs), onnx_s.search_many(reqs)):
        assert [(m.motion_id, m.start_s, m.end_s, m.label) for m in a.moments] == \
            [(m.motion_id, m.start_s, m.end_s, m.label) for m in b.moments]
        np.testing.assert_allclose([m.score for m in b.moments], [m.score for m in a.moments], rtol=1e-4)


def test_onnx_query_path_imports_no_torch(onnx_index):
    index, loc = onnx_index
    code = ("import sys\n"
            "from engine.search import load_searcher\n"
            "from engine.request import SearchRequest\n"
            f"s = load_searcher({str(index)!r}, localizer={str(loc)!r}, backend='onnx')\n"
            "res = s.search(SearchRequest('a person walks forward', k=50, limit=5))\n"
            "assert res.moments and s.backend == 'onnx'\n"
            "heavy = ('torch', 'sqlalchemy', 'pandas', 'sentence_transformers', 'transformers', 'safetensors')\n"
            "print([m for m in heavy if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout


def test_damaged_graph_is_named(onnx_index, tmp_path):
    """A flipped byte in an exported graph: --backend onnx is one error naming the file, verify reports it,
    auto searches on torch and exports again (after which onnx works)."""
    from engine.corpus.types import IndexFileError
    from engine.search import Searcher, load_searcher
    from indexer.verify import verify

    index, loc = onnx_index
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    graph = next(copy.glob("versions/*/query_localizer-*.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match=graph.name):
        Searcher(copy, localizer=loc, backend="onnx")
    rep = verify(copy, deep=False)
    assert not rep.ok and any(graph.name in p and "checksum" in p for p in rep.problems), rep.problems
    r = _cli("search", "kick", "--index", str(copy), "--localizer", str(loc), "--backend", "onnx")
    assert r.returncode != 0 and graph.name in r.stderr and "checksum mismatch" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line, no traceback
    s = load_searcher(copy, localizer=loc, backend="auto")
    assert s.backend == "torch"
    assert Searcher(copy, localizer=loc, backend="onnx").backend == "onnx"  # exported again
    assert verify(copy, deep=False).ok


def test_missing_or_stale_exports_are_not_used(pipeline, onnx_index, tmp_path):
    from engine.search import Searcher, load_searcher
    from indexer.query_models import QueryModelsUnavailable

    _, index, loc = pipeline
    bare = tmp_path / "bare"
    shutil.copytree(index, bare)
    for p in bare.glob("versions/*/query_*"):  # an earlier `engine search` (auto) may have exported them
        p.unlink()
    index = bare
    with pytest.raises(QueryModelsUnavailable, match="no ONNX query models"):
        Searcher(index, localizer=loc, backend="onnx")
    onnx_idx, _ = onnx_index
    other = tmp_path / "other-loc"
    shutil.copytree(loc, other)
    with open(other / "best.pt", "ab") as f:  # another checkpoint (its sha256 differs)
        f.write(b"\0")
    with pytest.raises(QueryModelsUnavailable, match="another checkpoint"):
        Searcher(onnx_idx, localizer=other, backend="onnx")
    r = _cli("search", "kick", "--index", str(index), "--localizer", str(loc), "--backend", "onnx")
    assert r.returncode != 0 and "no ONNX query models" in r.stderr, r.stderr
    assert load_searcher(onnx_idx, localizer=loc, backend="auto").backend == "onnx"


def test_corpus_reader_equals_the_store(pipeline):
    from engine.corpus import reader as reader_mod
    from engine.corpus import store as store_mod
    from engine.corpus.reader import open_reader
    from engine.corpus.store import CorpusStore

    for name in ("FORMAT_VERSION", "MANIFEST", "SQLITE_NAME"):
        assert getattr(reader_mod, name) == getattr(store_mod, name)

    corpus, _, _ = pipeline
    reader = open_reader(corpus)
    assert reader is not None
    with CorpusStore.open(corpus, create=False) as store:
        assert reader.motion_table() == store.motion_table()
        for m in store.motion_ids()[:20]:
            assert reader.annotations(m) == store.annotations(m)
        mid = store.motion_ids()[0]
        np.testing.assert_array_equal(reader.features(mid), store.features(mid))  # through the store
    reader.close()


def test_numpy_best_pair_equals_decode_best():
    """`decode_best_np` (what both backends decode top-1 with) equals the torch `decode_best`, ties included."""
    import torch

    from localizer.decode import decode_best, decode_best_np

    rng = np.random.default_rng(0)
    for t in (1, 2, 5, 17, 64):
        for trial in range(20):
            ps = rng.dirichlet(np.ones(t)).astype(np.float32)
            pe = rng.dirichlet(np.ones(t)).astype(np.float32)
            if trial % 4 == 0:  # ties: quantised probabilities
                ps, pe = np.round(ps * 4) / 4 + 0.25, np.round(pe * 4) / 4 + 0.25
            for max_len in (None, 1, max(1, t // 3)):
                d = decode_best(torch.from_numpy(ps), torch.from_numpy(pe), max_len)
                want = (int(d.start_idx[0]), int(d.end_idx[0]), float(d.p_se[0]))
                assert decode_best_np(ps, pe, max_len) == want


def test_malformed_sidecar_is_named(onnx_index, tmp_path):
    from engine.corpus.types import IndexFileError
    from engine.search import Searcher
    from indexer.query_models import QUERY_MODELS

    index, loc = onnx_index
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    side = next(copy.glob(f"versions/*/{QUERY_MODELS}"))
    d = json.loads(side.read_text())
    del d["text_encoder"]["dim"]
    side.write_text(json.dumps(d))
    with pytest.raises(IndexFileError, match="malformed query models sidecar"):
        Searcher(copy, localizer=loc, backend="onnx")
    side.write_text("{not json")
    with pytest.raises(IndexFileError, match=QUERY_MODELS):
        Searcher(copy, localizer=loc, backend="onnx")


def test_index_build_with_a_localizer_exports_the_query_models(pipeline, tmp_path):
    """`engine index build --localizer` prepares the fast path: the first search takes onnx."""
    from typer.testing import CliRunner

    from engine.cli import app
    from engine.search import load_searcher

    corpus, index, loc_run = pipeline
    model_pt = next(index.glob("versions/*/model.pt"))
    out = tmp_path / "idx"
    r = CliRunner().invoke(app, ["index", "build", "--corpus", str(corpus), "--out", str(out), "--model",
                                 str(model_pt), "--localizer", str(loc_run), "--json"])
    assert r.exit_code == 0, r.output
    assert list(out.glob("versions/*/query_models.json"))
    assert load_searcher(out, backend="onnx").backend == "onnx"
