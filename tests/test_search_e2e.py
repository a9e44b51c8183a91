"""The whole pipeline on a tiny real configuration: synth corpus -> FAISS index (with the localizer's
cached motion encoding) -> Searcher -> ranked moments, through the library and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.request import SearchRequest


def test_moments_are_ranked_scored_and_inside_their_motion(searcher):
    res = searcher.search(SearchRequest("a person waves the right hand", k=8, lam=5.0, limit=15, r_mode="motion"))
    assert res.k == 8 and 0 < len(res.moments) <= 15
    scores = [m.score for m in res.moments]
    assert scores == sorted(scores, reverse=True)
    for m in res.moments:
        row = searcher.motions[m.motion_id]
        assert 0.0 <= m.start_s < m.end_s <= row.duration_s + 1e-6
        assert 0.0 < m.p_se <= 1.0
        assert m.score == pytest.approx(m.p_se * math.exp(5.0 * m.r), rel=1e-6)
        assert m.name == row.name and m.source == "synth"


def test_r_is_the_best_chunk_similarity_by_brute_force(searcher):
    text = "someone jumps"
    res = searcher.search(SearchRequest(text, k=12, limit=50, top_m=1, r_mode="motion"))
    q = searcher.retrieval.encode_text([text])
    mids, r = searcher.index.motion_scores_exact(q)
    exact = dict(zip(mids.tolist(), r[0].tolist()))
    for m in res.moments:
        assert m.r == pytest.approx(exact[m.motion_id], abs=1e-5)


@pytest.mark.parametrize("lam", [5.0, 10.0])
def test_pruned_search_equals_localizing_all_k(searcher, lam):
    for text in ("kung fu pose", "a person walks forward"):
        a = searcher.search(SearchRequest(text, k=12, lam=lam, limit=5, prune=True, r_mode="motion"))
        b = searcher.search(SearchRequest(text, k=12, lam=lam, limit=5, prune=False, r_mode="motion"))
        assert [(m.motion_id, m.start_s, m.end_s) for m in a.moments] == \
            [(m.motion_id, m.start_s, m.end_s) for m in b.moments]
        assert b.localized == 12 and a.localized <= b.localized


def test_cached_motion_encoding_equals_encoding_on_the_fly(pipeline, searcher):
    from engine.search import Searcher

    _, index, loc_run = pipeline
    fresh = Searcher(index, localizer=loc_run)
    fresh.use_cache = False
    assert searcher.use_cache
    a = searcher.search(SearchRequest("a person sits down", k=12, limit=10, r_mode="motion"))
    b = fresh.search(SearchRequest("a person sits down", k=12, limit=10, r_mode="motion"))
    assert [m.motion_id for m in a.moments] == [m.motion_id for m in b.moments]
    np.testing.assert_allclose([m.score for m in a.moments], [m.score for m in b.moments], rtol=1e-4)


def test_filters(searcher):
    res = searcher.search(SearchRequest("a person kicks", k=12, limit=30, min_moment_s=2.0, max_moment_s=6.0, r_mode="motion"))
    assert all(2.0 <= m.end_s - m.start_s <= 6.0 for m in res.moments)
    long_ids = {mid for mid, row in searcher.motions.items() if row.duration_s >= 15.0}
    res = searcher.search(SearchRequest("a person kicks", k=3, limit=30, min_motion_s=15.0, r_mode="motion"))
    assert {m.motion_id for m in res.moments} <= long_ids
    assert searcher.search(SearchRequest("a person kicks", k=3, sources=("nope",), r_mode="motion")).moments == []


@pytest.mark.parametrize("lam", [5.0, 20.0])
def test_moment_r_against_brute_force_and_exhaustive(searcher, lam):
    """r_mode="moment": each moment's r is the best similarity of the chunks covering it (recomputed here from
    the chunk table and a fresh FAISS-free dot product), at most its motion's r; pruning stays exact."""
    text = "a person kicks with the left leg"
    q = searcher.retrieval.encode_text([text])[0]
    mids, r_motion = searcher.index.motion_scores_exact(q[None])
    r_of = dict(zip(mids.tolist(), r_motion[0].tolist()))
    emb = searcher.index.embeddings()
    res = searcher.search(SearchRequest(text, k=10, lam=lam, limit=12, r_mode="moment"))
    full = searcher.search(SearchRequest(text, k=10, lam=lam, limit=12, r_mode="moment", prune=False))
    assert [(m.motion_id, m.start_s, m.end_s) for m in res.moments] == \
        [(m.motion_id, m.start_s, m.end_s) for m in full.moments]
    for m in res.moments:
        rows = np.flatnonzero(emb.motion_ids == m.motion_id)
        best = -np.inf
        for row, c in zip(rows, searcher.index.chunks(emb.chunk_ids[rows])):
            inter = max(0.0, min(c.end_s, m.end_s) - max(c.start_s, m.start_s))
            if inter >= 0.5 * min(c.end_s - c.start_s, m.end_s - m.start_s):
                best = max(best, float(np.dot(emb.vectors[row], q)))
        assert m.r == pytest.approx(best, abs=1e-5) and m.r <= r_of[m.motion_id] + 1e-6
        assert m.score == pytest.approx(m.p_se * math.exp(lam * m.r), rel=1e-6)
    with pytest.raises(ValueError, match="r_mode"):
        searcher.search(SearchRequest(text, r_mode="nope"))


def test_labels_come_from_overlapping_annotations(searcher):
    res = searcher.search(SearchRequest("a person claps", k=12, limit=10, r_mode="motion"))
    texts = {a.text for mid in searcher.motions for a in searcher.store.annotations(mid)}
    assert any(m.label for m in res.moments)
    assert all(m.label is None or m.label in texts for m in res.moments)


def test_cli_json_and_batch(pipeline, tmp_path):
    _, index, loc_run = pipeline
    runner = CliRunner()
    r = runner.invoke(app, ["search", "kung fu pose", "--k", "6", "--index", str(index), "--localizer", str(loc_run),
                            "--json"])
    assert r.exit_code == 0, r.output
    moments = json.loads(r.stdout)
    assert moments and {"motion_id", "source", "start_s", "end_s", "score", "p_se", "r", "label"} <= set(moments[0])
    q = tmp_path / "q.txt"
    q.write_text("kung fu pose\na person waves\n")
    run = tmp_path / "run.jsonl"
    r = runner.invoke(app, ["search", "--queries", str(q), "--k", "6", "--index", str(index), "--localizer",
                            str(loc_run), "--run-out", str(run), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [d["query"] for d in data] == ["kung fu pose", "a person waves"]
    from eval.runfile import read_run

    assert set(read_run(run).by_query()) == {"1", "2"}
    r = runner.invoke(app, ["search", "kung fu pose", "--k", "6", "--index", str(index), "--localizer", str(loc_run)])
    assert r.exit_code == 0 and "kung fu pose" in r.stdout


def test_pyramid_windows_cover_every_size_and_the_end():
    from engine.evaluate import pyramid_windows

    win = pyramid_windows(103, (20, 40, 200), 5)
    assert set((win[:, 1] - win[:, 0]).tolist()) == {20, 40, 103}
    for w in (20, 40):
        starts = sorted(a for a, b in win if b - a == w)
        assert starts[0] == 0 and starts[-1] == 103 - w and all(0 < y - x <= 5 for x, y in zip(starts, starts[1:]))


def test_localize_and_cmr_evaluation_jobs(pipeline, tmp_path):
    from engine.evaluate import cmr_eval, localize_eval
    from eval.runfile import read_run

    corpus, index, loc_run = pipeline
    model_pt = next(index.glob("versions/*/model.pt"))
    out = localize_eval(corpus, {"mlp": loc_run}, tmp_path / "loc", split="train", retrieval_path=model_pt,
                        max_queries=8, window_sizes=(20, 60), window_stride=10)
    methods = [r.method for r in out.results]
    assert methods[0].startswith("Prior") and "mlp" in methods and methods[-1].startswith("Retrieval")
    for r in out.results:
        assert r.normal.n_queries == 8 and 0.0 <= r.normal.miou <= 1.0
        assert r.assigned is not None and r.assigned.miou >= r.normal.miou - 1e-9  # more ground truths, never worse
    assert {p.name for p in (tmp_path / "loc").iterdir()} >= {"metrics.json", "truth.jsonl", "run-mlp.jsonl"}

    res = cmr_eval(index, tmp_path / "cmr", split="train", ks=(6,), lams=(5.0,), limit=10, max_queries=4,
                   localizer=loc_run, fused=True)
    assert [r.setting for r in res.results][-2:] == ["Retrieval only (best 10 s chunk)", "Sliding windows k=6"]
    # The fused run (no score.json for this localizer: the paper's weights, so the same moments).
    assert [r.setting for r in res.results][1] == "MLP k=6, fused λ=5 γ=1 μ=0"
    assert read_run(res.runs["mlp-k6-fused"]).by_query() == read_run(res.runs["mlp-k6-lam5"]).by_query()
    for r in res.results:
        assert r.n_queries == 4 and all(0.0 <= v <= 1.0 for per in r.recall.values() for v in per.values())
    run = read_run(res.runs["mlp-k6-lam5"])
    assert run.meta["k"] == 6 and len(run.by_query()) == 4


def test_sliding_window_cmr_baseline_against_brute_force(pipeline, searcher):
    """Each moment is the best window of its motion (every 10 s chunk and every 2 s / 4 s window,
    re-embedded here from the features one by one), motions are the top-k by r, ranked by similarity."""
    from engine.evaluate import WindowBank, sliding_window_cmr_rows

    idx, model, store = searcher.index, searcher.retrieval, searcher.store
    bank = WindowBank(idx, model, store, searcher.motions, sizes_s=(2.0, 4.0))
    text = "a person waves the right hand"
    rows = sliding_window_cmr_rows(bank, idx, model, {"q": text}, k=5, limit=5)
    q = model.encode_text([text])[0]
    mids, r = idx.motion_scores_exact(q[None])
    top = set(mids[np.argsort(-r[0], kind="stable")[:5]].tolist())
    assert {row.motion_id for row in rows} == top
    assert [row.rank for row in rows] == [1, 2, 3, 4, 5]
    assert [row.score for row in rows] == sorted((row.score for row in rows), reverse=True)
    for row in rows:
        feats = np.asarray(store.features(row.motion_id))
        fps = searcher.motions[row.motion_id].fps
        n = len(feats)
        spans = [(c.start_s, c.end_s) for c in idx.table.chunks(idx.embeddings().chunk_ids[
            idx.embeddings().motion_ids == row.motion_id])]
        for w in (40, 80):
            if w < n:
                spans += [(a / fps, (a + w) / fps) for a in range(0, n - w + 1, w // 2)] + [((n - w) / fps, n / fps)]
        sims = [float(model.encode_motion([feats[round(a * fps): round(b * fps)]])[0] @ q) for a, b in spans]
        best = int(np.argmax(sims))
        assert row.score == pytest.approx(sims[best], abs=1e-4)
        assert (row.start_s, row.end_s) == pytest.approx(spans[best], abs=1e-6)


def test_cli_index_build_caches_the_localizer_encoding(pipeline, tmp_path):
    from engine.search import Searcher

    corpus, index, loc_run = pipeline
    model_pt = next(index.glob("versions/*/model.pt"))
    out = tmp_path / "idx"
    r = CliRunner().invoke(app, ["index", "build", "--corpus", str(corpus), "--out", str(out), "--model",
                                 str(model_pt), "--localizer", str(loc_run), "--json"])
    assert r.exit_code == 0, r.output
    assert list(out.glob("versions/*/motion_features.arrow"))
    s = Searcher(out, localizer=loc_run)
    assert s.use_cache
    r = CliRunner().invoke(app, ["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "x"),
                                 "--model", str(model_pt), "--localizer", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no such localizer run" in r.stderr


@pytest.mark.parametrize("score", ["paper", "fused"])
def test_no_near_duplicates_in_any_top10(searcher, score):
    """The engine's own output: within one motion no two top-10 moments overlap by IoU >= 0.3 or contain one
    another, and no motion has more than the per-motion cap (2 by default)."""
    from engine.corpus.spans import temporal_iou

    for text in ("kung fu pose", "a person waves the right hand", "someone jumps", "a person walks forward"):
        req = SearchRequest(text, k=12, limit=10, top_m=5, score=score, gamma=0.5)
        res = searcher.search(req)
        moments = res.moments
        assert moments
        by_motion = {}
        for m in moments:
            by_motion.setdefault(m.motion_id, []).append(m)
        for ms in by_motion.values():
            assert len(ms) <= req.per_motion
            for i, a in enumerate(ms):
                for b in ms[i + 1:]:
                    assert temporal_iou(a.start_s, a.end_s, b.start_s, b.end_s) < 0.3
                    assert not (a.start_s <= b.start_s <= b.end_s <= a.end_s)
                    assert not (b.start_s <= a.start_s <= a.end_s <= b.end_s)
        if score == "fused":
            w = res.weights
            assert w.gamma == 0.5
            assert all(m.score == pytest.approx(m.p_se ** 0.5 * math.exp(w.lam * m.r + w.mu * (m.s or 0.0)), rel=1e-6)
                       for m in moments)
