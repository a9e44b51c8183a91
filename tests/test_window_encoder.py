"""Window encoder (indexer/window_encoder.py): pooling oracle, exact context, index fast path == slow path,
old transformer checkpoints unchanged, and the --arch round trip through training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from engine.corpus.store import CorpusStore
from engine.corpus.types import Annotation, Motion
from indexer.build import add_to_index, build_index, remove_from_index
from indexer.chunks import plan_chunks
from indexer.cli import eval_retrieval_cmd, train_retrieval_cmd
from indexer.config import IndexConfig
from indexer.embed import embed_chunks, embed_chunks_direct, feature_reader
from indexer.faiss_index import exact_topk
from indexer.index import open_index
from indexer.model import RetrievalConfig, RetrievalModel, load_retrieval
from indexer.window_encoder import context_segment

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5  # max abs difference between unit embeddings computed two ways in fp32


def _window_cfg(pool: str = "mean", stride: int = 4, **kw) -> RetrievalConfig:
    return RetrievalConfig(arch="window", d_model=16, embed_dim=16, text_hidden=None, dropout=0.0,
                           window_pool=pool, window_stride=stride, window_dilations=(1, 2, 4), **kw)


def _model(pool: str = "mean", stride: int = 4, seed: int = 0) -> RetrievalModel:
    m = RetrievalModel.random(_window_cfg(pool, stride), seed=seed)
    rng = np.random.default_rng(seed)
    m.set_feature_stats(rng.normal(0, 0.1, 263), rng.uniform(0.5, 2.0, 263))
    return m


def _brute_force(model: RetrievalModel, feats: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """The definition, computed slowly: the stack on the whole motion, then each window pooled frame by
    frame (every frame takes its snippet's feature) in a Python loop."""
    enc = model.motion
    c = model.config.window_config()
    x = (torch.from_numpy(feats) - model.feature_mean) / model.feature_std
    with torch.no_grad():
        h, scores = enc.snippet_features(x[None], torch.ones(1, len(feats), dtype=torch.bool))
        h = h[0].double()
        out = []
        for a, b in windows:
            if scores is None:
                acc = torch.zeros(h.shape[1], dtype=torch.float64)
                for t in range(a, b):
                    acc += h[t // c.stride]
                pooled = acc / (b - a)
            else:
                heads = h.view(len(h), c.pool_heads, -1)
                num = torch.zeros_like(heads[0])
                den = torch.zeros(c.pool_heads, dtype=torch.float64)
                for t in range(a, b):
                    w = torch.exp(scores[0, t // c.stride].double())
                    num += w[:, None] * heads[t // c.stride]
                    den += w
                pooled = (num / den[:, None]).reshape(-1)
            out.append(enc.embed(pooled[None].float())[0].numpy())
    return np.stack(out)


WINDOWS = np.array([(0, 200), (3, 57), (20, 220), (199, 399), (430, 437), (436, 437), (0, 437), (101, 102),
                    (250, 437)])


@pytest.mark.parametrize("pool,stride", [("mean", 4), ("attn", 4), ("mean", 1), ("attn", 3)])
def test_pooled_windows_equal_the_definition_and_a_direct_encoding(pool, stride):
    model = _model(pool, stride)
    feats = np.random.default_rng(1).normal(size=(437, 263)).astype(np.float32)
    fast = model.encode_windows(feats, WINDOWS)
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(fast, _brute_force(model, feats, WINDOWS), atol=TOL)
    # Direct encoding: each window on its own segment with its context (the training path).
    np.testing.assert_allclose(fast, model.encode_windows_direct(feats, WINDOWS, batch_size=4), atol=TOL)
    # The whole motion in pieces (each with its context) is the same as one pass.
    np.testing.assert_allclose(fast, model.encode_windows(feats, WINDOWS, piece_snippets=5), atol=TOL)
    # A bare clip is a whole motion: encode_motion of the clip == its single full window.
    clip = feats[40:140]
    np.testing.assert_allclose(model.encode_motion([clip])[0], model.encode_windows(clip, [(0, 100)])[0], atol=TOL)
    # ...and differs from the window pooled with its context (the edge frames see their neighbours).
    assert np.abs(model.encode_motion([clip])[0] - model.encode_windows(feats, [(40, 140)])[0]).max() > 1e-3


def test_context_segment_is_exactly_what_a_window_depends_on():
    model = _model("attn")
    c = model.config.window_config()
    assert c.context_snippets == 7 and c.context_frames == 28  # (3 - 1) / 2 * (1 + 2 + 4) snippets of 4
    assert context_segment(437, 50, 90, 4, 7) == (20, 120)
    assert context_segment(437, 3, 430, 4, 7) == (0, 437)
    with pytest.raises(ValueError, match="outside"):
        context_segment(10, 5, 11, 4, 7)
    feats = np.random.default_rng(2).normal(size=(300, 263)).astype(np.float32)
    a, b = 100, 180
    s, e = context_segment(len(feats), a, b, c.stride, c.context_snippets)
    ref = model.encode_windows(feats, [(a, b)])[0]
    for t, inside in ((s - 1, False), (e, False), (s, True), (e - 1, True), (a - 1, True)):
        g = feats.copy()
        g[t] += 5.0
        moved = np.abs(model.encode_windows(g, [(a, b)])[0] - ref).max()
        assert (moved > 1e-4) if inside else (moved < 1e-6), (t, inside, moved)


def test_encode_motion_of_window_model_is_padding_invariant_and_bf16_close():
    model = _model("attn")
    rng = np.random.default_rng(0)
    windows = [rng.normal(size=(n, 263)).astype(np.float32) for n in (5, 40, 17, 200, 1)]
    batched = model.encode_motion(windows, batch_size=3)
    alone = np.concatenate([model.encode_motion([w]) for w in windows])
    np.testing.assert_allclose(batched, alone, atol=TOL)
    feats = rng.normal(size=(400, 263)).astype(np.float32)
    f32 = model.encode_windows(feats, WINDOWS[:4])
    bf16 = model.encode_windows(feats, WINDOWS[:4], dtype="bf16")
    assert np.all(np.sum(f32 * bf16, axis=1) > 0.95)
    with pytest.raises(ValueError, match="0 <= a < b"):
        model.encode_windows(feats, [(10, 10)])


# ---------------------------------------------------------------------------------------------- index
def _random_walk(i: int, n_frames: int, fps: float = 20.0) -> Motion:
    rng = np.random.default_rng(1000 + i)
    feats = np.cumsum(rng.normal(0, 0.1, (n_frames - 1, 263)), axis=0).astype(np.float32)
    return Motion(name=f"rw/{i}", source="rw", fps=fps, joints=np.zeros((n_frames, 22, 3), np.float32),
                  features=feats, split="test", annotations=[Annotation("a person wanders", 0.0, min(1.0, (n_frames - 1) / fps))])


LENGTHS = [(30, 20.0), (200, 20.0), (207, 20.0), (640, 20.0), (45, 20.0), (900, 30.0), (330, 20.0), (21, 20.0)]


@pytest.fixture
def corpus(tmp_path):
    store = CorpusStore.open(tmp_path / "corpus")
    store.add_motions([_random_walk(i, n, fps) for i, (n, fps) in enumerate(LENGTHS)])
    yield store
    store.close()


def test_index_build_fast_path_equals_per_chunk_slow_path(corpus, tmp_path):
    model = _model("attn")
    rep = build_index(corpus, tmp_path / "idx", model, IndexConfig(block_chunks=16))
    idx = open_index(tmp_path / "idx")
    emb = idx.embeddings()
    motions = sorted(idx.motions.values(), key=lambda m: m.motion_id)
    spans = [s for m in motions for s in plan_chunks(m.motion_id, m.n_frames, m.fps)]
    assert rep.n_chunks == len(spans) == len(emb.chunk_ids)
    fps = {m.motion_id: m.fps for m in motions}
    slow = embed_chunks_direct(model, spans, fps, feature_reader(corpus), batch_size=7)
    assert [s.chunk_id for s in spans] == list(emb.chunk_ids)
    np.testing.assert_allclose(emb.vectors, slow, atol=TOL)
    q = np.random.default_rng(0).normal(size=(12, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores, ids = idx.search(q, 10)
    ref_s, ref_rows = exact_topk(q, slow, 10)
    np.testing.assert_array_equal(ids, emb.chunk_ids[ref_rows])
    np.testing.assert_allclose(scores, ref_s, atol=TOL)
    # The loaded model of the index is a window model and encodes like the build.
    loaded = idx.load_model()
    assert loaded.config.arch == "window" and loaded.fingerprint() == model.fingerprint()
    again = embed_chunks(loaded, spans[:20], fps, feature_reader(corpus), 64, "fp32")
    np.testing.assert_allclose(again, emb.vectors[:20], atol=TOL)


def test_incremental_builds_with_the_window_encoder_equal_a_full_rebuild(corpus, tmp_path):
    model = _model("mean")
    build_index(corpus, tmp_path / "inc", model, IndexConfig(block_chunks=16))
    new = corpus.add_motions([_random_walk(100, 333), _random_walk(101, 15)])
    added = add_to_index(tmp_path / "inc", corpus)
    assert added.n_embedded == sum(len(plan_chunks(0, n, 20.0)) for n in (333, 15))
    remove_from_index(tmp_path / "inc", [new.motion_ids[1], 3])
    corpus.remove_motions([new.motion_ids[1], 3])
    build_index(corpus, tmp_path / "full", model, IndexConfig(block_chunks=16))
    a, b = open_index(tmp_path / "inc").embeddings(), open_index(tmp_path / "full").embeddings()
    np.testing.assert_array_equal(a.chunk_ids, b.chunk_ids)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=TOL)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_shipped_transformer_checkpoint_loads_unchanged(tmp_path):
    """engine/models/retrieval-demo was written before `arch` existed: it loads as a transformer with the
    same fingerprint and the same embeddings as the code before the window encoder (reference file made
    with that code: tests/data/retrieval_demo_reference.npz)."""
    path = ROOT / "engine/models/retrieval-demo/best.pt"
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert "arch" not in ck["config"]
    ref = np.load(ROOT / "tests/data/retrieval_demo_reference.npz")
    model = RetrievalModel.load(path)
    assert model.config.arch == "transformer" and model.context_frames == 0
    assert model.fingerprint() == str(ref["fingerprint"])
    rng = np.random.default_rng(int(ref["seed"]))
    wins = [rng.normal(size=(int(n), 263)).astype(np.float32) for n in ref["lengths"]]
    np.testing.assert_allclose(model.encode_motion(wins), ref["emb"], atol=1e-5)
    # encode_windows on a transformer = each window encoded on its own.
    feats = np.concatenate(wins)
    np.testing.assert_allclose(model.encode_windows(feats, [(0, 200), (200, 237)]), ref["emb"][:2], atol=1e-5)
    # A re-saved checkpoint records its architecture, and keeps the fingerprint.
    model.save(tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["config"]["arch"] == "transformer"
    assert RetrievalModel.load(tmp_path / "m.pt").fingerprint() == model.fingerprint()


def test_window_checkpoint_roundtrip_and_bad_arch(tmp_path):
    model = _model("attn", seed=3)
    model.save(tmp_path / "w.pt")
    ck = torch.load(tmp_path / "w.pt", weights_only=True)
    assert ck["config"]["arch"] == "window" and ck["config"]["window_pool"] == "attn"
    loaded = RetrievalModel.load(tmp_path / "w.pt")
    assert loaded.fingerprint() == model.fingerprint()
    assert _model("mean", seed=3).fingerprint() != model.fingerprint()
    feats = np.random.default_rng(0).normal(size=(120, 263)).astype(np.float32)
    win = WINDOWS[:2] // 4
    np.testing.assert_array_equal(loaded.encode_windows(feats, win), model.encode_windows(feats, win))
    with pytest.raises(ValueError, match="arch"):
        RetrievalConfig(arch="lstm")
    with pytest.raises(ValueError, match="pool"):
        RetrievalConfig(arch="window", window_pool="max")


# ---------------------------------------------------------------------------------------------- training
def _labelled_corpus(path: Path) -> None:
    rng = np.random.default_rng(0)
    motions = []
    for i in range(12):
        f = rng.normal(0, 0.3, (159, 263)).astype(np.float32)
        a = i % 3
        f[20:80, a * 20:(a + 1) * 20] += 2.0
        motions.append(Motion(name=f"t/{i}", source="t", fps=20.0, joints=np.zeros((160, 22, 3), np.float32),
                              features=f, split="train" if i < 8 else "val" if i < 10 else "test",
                              annotations=[Annotation(["a person waves", "a person jumps", "a person kicks"][a],
                                                      1.0, 4.0)]))
    with CorpusStore.open(path) as s:
        s.add_motions(motions)


def test_arch_round_trip_through_a_tiny_training_run(tmp_path):
    _labelled_corpus(tmp_path / "c")
    app = typer.Typer()
    train_app, eval_app = typer.Typer(), typer.Typer()
    train_app.command("retrieval")(train_retrieval_cmd)
    eval_app.command("retrieval")(eval_retrieval_cmd)
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
    runner = CliRunner()
    for arch in ("window", "transformer"):
        run = tmp_path / f"run-{arch}"
        r = runner.invoke(app, ["train", "retrieval", "--corpus", str(tmp_path / "c"), "--run", str(run),
                                "--epochs", "1", "--batch-size", "4", "--d-model", "16", "--layers", "1",
                                "--arch", arch, "--window-pool", "attn", "--device", "cpu", "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["epochs_done"] == 1
        assert json.loads((run / "config.json").read_text())["model"]["arch"] == arch
        model = load_retrieval(run)
        assert model.config.arch == arch and model.config.d_model == 16
        r = runner.invoke(app, ["eval", "retrieval", "--corpus", str(tmp_path / "c"), "--run", str(run),
                                "--split", "test", "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["n_pairs"] == 2
    r = runner.invoke(app, ["train", "retrieval", "--corpus", str(tmp_path / "c"), "--run", str(tmp_path / "x"),
                            "--arch", "lstm"])
    assert r.exit_code == 2 and "lstm" in r.output
