"""The fused score on a real tiny pipeline with a window bank: the span's own similarity s, exact pruning
(pruned == exhaustive), the fitted weights file, and the cached bank equal to embedding on first use."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from engine.request import SearchRequest
from engine.scoring import PAPER, FittedScore, ScoreWeights

TEXTS = ("kung fu pose", "a person waves the right hand", "someone jumps", "a person walks forward")


def _build(pipeline, tmp_path_factory, bank: bool):
    from engine.home import localizer_feature_fn
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.manifest import LocalizerRef
    from indexer.model import RetrievalModel

    corpus, index, loc_run = pipeline
    model = RetrievalModel.load(next(index.glob("versions/*/model.pt")))
    fn, tag = localizer_feature_fn(loc_run)
    out = tmp_path_factory.mktemp("bank" if bank else "plain") / "index"
    build_index(corpus, out, model, IndexConfig(window_bank=bank), motion_feature_fn=fn, motion_feature_tag=tag,
                localizer=LocalizerRef(str(loc_run), tag))
    return out


@pytest.fixture(scope="module")
def bank_index(pipeline, tmp_path_factory):
    return _build(pipeline, tmp_path_factory, bank=True)


@pytest.fixture(scope="module")
def plain_index(pipeline, tmp_path_factory):
    """The same index without a window bank (`--no-window-bank`)."""
    return _build(pipeline, tmp_path_factory, bank=False)


@pytest.fixture(scope="module")
def plain_searcher(plain_index, pipeline):
    from engine.search import Searcher

    return Searcher(plain_index, localizer=pipeline[2])


@pytest.fixture(scope="module")
def bank_searcher(bank_index, pipeline):
    from engine.search import Searcher

    return Searcher(bank_index, localizer=pipeline[2])


def _key(res):
    """Motions and spans exactly; scores to float32 round-off (the fast localizer batches the pruned and the
    exhaustive runs differently, and padded batches round differently)."""
    return [(m.motion_id, m.start_s, m.end_s) for m in res.moments]


def _same(a, b) -> bool:
    return _key(a) == _key(b) and all(x.score == pytest.approx(y.score, rel=1e-5)
                                      for x, y in zip(a.moments, b.moments))


@pytest.mark.parametrize("mu,lam,gamma", [(10.0, 0.0, 1.0), (5.0, 5.0, 0.5), (20.0, 2.0, 0.0)])
def test_fused_pruned_equals_exhaustive_on_the_engine(bank_searcher, mu, lam, gamma):
    for text in TEXTS:
        for r_mode in ("moment", "motion"):
            req = SearchRequest(text, k=12, limit=5, score="fused", lam=lam, gamma=gamma, mu=mu, r_mode=r_mode,
                                batch_size=2)
            a = bank_searcher.search(req)
            b = bank_searcher.search(SearchRequest(text, k=12, limit=5, score="fused", lam=lam, gamma=gamma, mu=mu,
                                                   r_mode=r_mode, batch_size=2, prune=False))
            assert _same(a, b) and b.localized == 12 and a.localized <= 12
            assert a.weights == ScoreWeights(lam=lam, gamma=gamma, mu=mu)
            for m in a.moments:
                assert m.score == pytest.approx(m.p_se ** gamma * math.exp(lam * m.r + mu * m.s), rel=1e-9)


def test_s_is_the_best_iou_bank_window_by_brute_force(bank_searcher):
    """s re-derived from scratch: every chunk and every 2/4/6 s window re-embedded one by one from the
    features, the window of highest IoU with the moment (the most similar among ties)."""
    from engine.corpus.spans import temporal_iou
    from indexer.chunks import resample_window

    s = bank_searcher
    model, store = s.retrieval, s.store
    text = "a person waves the right hand"
    res = s.search(SearchRequest(text, k=12, limit=8, score="fused", lam=1.0, gamma=1.0, mu=5.0))
    q = model.encode_text([text])[0]
    for m in res.moments:
        feats = np.asarray(store.features(m.motion_id), np.float32)
        fps = s.motions[m.motion_id].fps
        n = len(feats)
        chunks, chunk_vecs = s.index.motion_chunks(m.motion_id)
        wins = [tuple(c) for c in chunks]
        sims = list(chunk_vecs @ q)
        for size in (2.0, 4.0, 6.0):
            w = round(size * fps)
            if 2 <= w < n:
                starts = list(range(0, n - w + 1, w // 2))
                if starts[-1] != n - w:
                    starts.append(n - w)
                for a in starts:
                    wins.append((a / fps, (a + w) / fps))
                    sims.append(float(model.encode_motion([resample_window(feats[a:a + w], fps, model.config.fps)])[0] @ q))
        ious = [temporal_iou(m.start_s, m.end_s, a, b) for a, b in wins]
        best = max(ious)
        want = max(si for si, iou in zip(sims, ious) if iou >= best - 1e-12)
        assert m.s == pytest.approx(want, abs=1e-4)
        assert m.s <= max(sims) + 1e-4


def test_fitted_weights_are_loaded_only_for_their_models(bank_index, plain_index, pipeline, tmp_path, caplog):
    from engine.search import Searcher

    s = Searcher(bank_index, localizer=pipeline[2])
    w = ScoreWeights(lam=2.0, gamma=0.5, mu=7.0)
    path = tmp_path / "score.json"
    FittedScore(w, s.localizer_fingerprint, s.index.manifest.model_fingerprint, window_bank=True,
                fit={"split": "val"}).write(path)
    fitted = Searcher(bank_index, localizer=pipeline[2], score_file=path)
    assert fitted.fused_weights == w
    res = fitted.search(SearchRequest("someone jumps", k=12, limit=5, score="fused"))
    assert res.weights == w and res.to_dict()["mu"] == 7.0 and res.lam == 2.0
    over = fitted.search(SearchRequest("someone jumps", k=12, limit=5, score="fused", mu=0.0))
    assert over.weights == ScoreWeights(lam=2.0, gamma=0.5, mu=0.0)
    paper = fitted.search(SearchRequest("someone jumps", k=12, limit=5, score="paper"))
    assert SearchRequest("x").score == "fused"  # the default
    assert paper.weights == PAPER and all(m.s is None for m in paper.moments)
    # A chunks-only variant for the same models: the bank index keeps its bank variant, and writing the
    # same variant again replaces it.
    w2 = ScoreWeights(lam=3.0, gamma=1.0, mu=1.0)
    FittedScore(w2, s.localizer_fingerprint, s.index.manifest.model_fingerprint, window_bank=False).write(path)
    FittedScore(w, s.localizer_fingerprint, s.index.manifest.model_fingerprint, window_bank=True).write(path)
    assert len(json.loads(path.read_text())["variants"]) == 2
    assert Searcher(bank_index, localizer=pipeline[2], score_file=path).fused_weights == w
    assert Searcher(plain_index, localizer=pipeline[2], score_file=path).fused_weights == w2  # no bank there
    # Fitted for another retrieval model: the paper's weights, with a warning.
    d = json.loads(path.read_text())
    for v in d["variants"]:
        v["retrieval_fingerprint"] = "0" * 64
    path.write_text(json.dumps(d))
    with caplog.at_level(logging.WARNING):
        other = Searcher(bank_index, localizer=pipeline[2], score_file=path)
    assert other.fused_weights == PAPER and "other localizer or retrieval model" in caplog.text
    path.write_text("{not json")
    with pytest.raises(ValueError, match="fit_score"):
        Searcher(bank_index, localizer=pipeline[2], score_file=path)
    with pytest.raises(ValueError, match="no such fused-score"):
        Searcher(bank_index, localizer=pipeline[2], score_file=tmp_path / "nope.json")


def test_cached_bank_equals_embedding_on_first_use(bank_searcher, plain_searcher):
    """The sliding-window baseline's WindowBank reads the index's bank; without one it embeds the same
    windows itself: same windows, same vectors, same baseline rows."""
    searcher = plain_searcher
    from engine.evaluate import sliding_window_cmr_rows
    from engine.windows import WindowBank

    cached = WindowBank(bank_searcher.index, bank_searcher.retrieval, bank_searcher.store, bank_searcher.motions)
    computed = WindowBank(searcher.index, searcher.retrieval, searcher.store, searcher.motions)
    assert cached.cached and not computed.cached
    for mid in list(searcher.motions)[:6]:
        (sa, va), (sb, vb) = cached.windows(mid), computed.windows(mid)
        np.testing.assert_allclose(sa, sb, atol=1e-9)
        np.testing.assert_allclose(va, vb, atol=1e-5)
    assert cached.windows_embedded == 0 and computed.windows_embedded > 0
    queries = {"q1": "a person waves the right hand", "q2": "someone jumps"}
    ra = sliding_window_cmr_rows(cached, bank_searcher.index, bank_searcher.retrieval, queries, k=8, limit=8)
    rb = sliding_window_cmr_rows(computed, searcher.index, searcher.retrieval, queries, k=8, limit=8)
    assert [(r.motion_id, r.start_s, r.end_s) for r in ra] == [(r.motion_id, r.start_s, r.end_s) for r in rb]


def test_fit_reranks_exactly_as_the_searcher_and_picks_the_best(bank_searcher, tmp_path):
    from engine import fitscore
    from engine.evaluate import detect_label_key, label_pool, split_queries
    from eval.labelmatch import evaluate_label_match

    s = bank_searcher
    annotations = {m: s.store.annotations(m) for m in s.motions}
    key = detect_label_key(annotations)
    assert key is not None
    spans = label_pool(annotations, key)
    _, queries, labels = split_queries(s.store, "train", 6, key)
    assert labels
    req = SearchRequest("fit", k=10, limit=20, batch_size=4)
    cands = fitscore.collect(s, queries, req)
    assert all(len(c.motion_ids) == 10 and max(c.s_max) <= 1.0 + 1e-6 for c in cands)
    ws = fitscore.grid(lams=(0.0, 5.0), mus=(0.0, 10.0), gammas=(0.5, 1.0))
    assert ws[0] == PAPER and len(ws) == 8
    for w in (PAPER, ScoreWeights(lam=0.0, gamma=0.5, mu=10.0)):
        assert fitscore.self_check(s, cands, w, req, n=6) == 0
    rows = fitscore.fit(cands, labels, spans, req, ws)
    assert [r.objective for r in rows] == sorted((r.objective for r in rows), reverse=True)
    # query groups (the split's queries, a paraphrase set): each group's mean counts once, whatever its size
    qids = sorted(labels)
    groups = [qids[:1], qids[1:]]
    grouped = fitscore.fit(cands, labels, spans, req, ws, groups=groups)
    for r in grouped[:3]:
        pq = r.result.per_query
        per = [np.mean([0.5 * (pq[q]["p@10"] + pq[q]["ndcg@10"]) for q in g]) for g in groups]
        assert r.objective == pytest.approx(float(np.mean(per)))
    assert [r.objective for r in grouped] == sorted((r.objective for r in grouped), reverse=True)
    for r in rows[:2]:  # each row is the label match of the re-ranked lists
        want = evaluate_label_match(fitscore.rows_for(cands, r.weights, req), labels, spans)
        assert r.result.precision == want.precision and r.result.ndcg == want.ndcg


def test_self_check_allows_only_near_tie_swaps():
    """fitscore.same_ranking: a swap of two near-equal scores (float32 rounding of differently batched
    passes) is faithful; any other reorder, a missing moment or a changed span is not."""
    from types import SimpleNamespace as M

    from engine.fitscore import same_ranking

    a, b, c = M(motion_id=1, start_s=0.0, end_s=2.0, score=10.0), M(motion_id=2, start_s=1.0, end_s=3.0,
                                                                     score=5.00001), M(motion_id=3, start_s=0.0,
                                                                                       end_s=1.0, score=5.0)
    assert same_ranking([a, b, c], [a, b, c])
    b2, c2 = M(**{**b.__dict__, "score": 5.0000001}), M(**{**c.__dict__, "score": 5.0000002})
    assert same_ranking([a, b2, c2], [a, c2, b2])  # near-tie swapped
    assert not same_ranking([a, b, c], [b, a, c])  # 10 vs 5: a real reorder
    assert not same_ranking([a, b], [a, b, c])
    assert not same_ranking([a, b, c], [a, b, M(**{**c.__dict__, "end_s": 1.5})])
