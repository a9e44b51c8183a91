"""Exact top-n pruning: the pruned ranking equals localizing all k motions (oracle), and saves work."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.request import validate_query
from engine.search import SpanHit, rank_moments


def _setup(seed: int, k: int = 200, top_m: int = 3):
    rng = np.random.default_rng(seed)
    r = np.sort(rng.uniform(0.0, 0.9, size=k))[::-1]
    ids = rng.permutation(10_000)[:k]
    spans = {}
    for mid in ids:
        starts = rng.uniform(0, 50, size=top_m)
        p = np.sort(rng.beta(0.5, 2.0, size=top_m))[::-1]
        spans[int(mid)] = [SpanHit(float(s), float(s + rng.uniform(0.5, 8)), float(pp)) for s, pp in zip(starts, p)]
    calls = []

    def localize(batch):
        calls.append(list(batch))
        return [spans[int(m)] for m in batch]

    return ids, r, spans, localize, calls


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lam,limit", [(5.0, 10), (10.0, 10), (5.0, 1), (1.0, 50)])
def test_pruned_equals_exhaustive(seed, lam, limit):
    ids, r, spans, localize, calls = _setup(seed)
    full, st_full = rank_moments(ids, r, localize, lam, limit, batch_size=16, prune=False)
    assert st_full.localized == len(ids)
    pruned, st = rank_moments(ids, r, localize, lam, limit, batch_size=16, prune=True)
    assert [(c.motion_id, c.start_s, c.end_s) for c in pruned] == [(c.motion_id, c.start_s, c.end_s) for c in full]
    # Brute force over every candidate, independent of rank_moments.
    every = [(h.p_se * math.exp(lam * rr), mid, h.start_s) for mid, rr in zip(ids, r) for h in spans[int(mid)]]
    every.sort(key=lambda x: -x[0])
    assert [round(c.score, 12) for c in full] == [round(x[0], 12) for x in every[:limit]]
    assert st.localized <= st_full.localized


def test_pruning_saves_work_when_scores_separate():
    ids, r, spans, localize, calls = _setup(0)
    _, st = rank_moments(ids, r, localize, 10.0, 10, batch_size=16, prune=True)
    assert st.localized < len(ids)


def test_keep_filter_and_sorted_input():
    ids, r, spans, localize, _ = _setup(1)
    got, _ = rank_moments(ids, r, localize, 5.0, 20, keep=lambda m, s, e: e - s >= 4.0)
    assert got and all(c.end_s - c.start_s >= 4.0 for c in got)
    with pytest.raises(ValueError, match="sorted"):
        rank_moments(ids, r[::-1], localize, 5.0, 10)


@pytest.mark.parametrize("bad,msg", [("", "empty query"), ("   ", "empty query"), ("x" * 513, "limit is 512")])
def test_query_validation(bad, msg):
    with pytest.raises(ValueError, match=msg):
        validate_query(bad)
    assert validate_query("  kung fu pose ") == "kung fu pose"


def _no_dups(moments, iou=0.3, cap=2):
    from engine.corpus.spans import temporal_iou

    by_motion = {}
    for m in moments:
        by_motion.setdefault(m.motion_id, []).append(m)
    for ms in by_motion.values():
        assert len(ms) <= cap
        for i, a in enumerate(ms):
            for b in ms[i + 1:]:
                assert temporal_iou(a.start_s, a.end_s, b.start_s, b.end_s) < iou
                assert not (a.start_s <= b.start_s and b.end_s <= a.end_s)
                assert not (b.start_s <= a.start_s and a.end_s <= b.end_s)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma,cap", [(1.0, 2), (0.3, 1), (0.0, 0)])
def test_dedup_cap_and_gamma_pruned_equals_brute_force(seed, gamma, cap):
    """With de-duplication, a per-motion cap and p_se ** gamma, pruning still returns exactly the brute-force
    top-n: every motion's candidates de-duplicated greedily by score, then all sorted."""
    from engine.corpus.spans import temporal_iou

    ids, r, spans, localize, _ = _setup(seed, top_m=5)
    lam, limit = 5.0, 10
    kw = dict(gamma=gamma, dedup_iou=0.3, per_motion=cap)
    pruned, st = rank_moments(ids, r, localize, lam, limit, batch_size=16, prune=True, **kw)
    full, _ = rank_moments(ids, r, localize, lam, limit, batch_size=16, prune=False, **kw)
    assert [(m.motion_id, m.start_s) for m in pruned] == [(m.motion_id, m.start_s) for m in full]
    every = []
    for order, (mid, rr) in enumerate(zip(ids, r)):
        cands = sorted(((h.p_se ** gamma * math.exp(lam * rr), h) for h in spans[int(mid)]),
                       key=lambda x: (-x[0], x[1].start_s))
        kept = []
        for sc, h in cands:
            if cap and len(kept) >= cap:
                break
            if all(temporal_iou(h.start_s, h.end_s, k.start_s, k.end_s) < 0.3
                   and not (h.start_s <= k.start_s and k.end_s <= h.end_s)
                   and not (k.start_s <= h.start_s and h.end_s <= k.end_s) for _, k in kept):
                kept.append((sc, h))
        every += [(-sc, order, h.start_s, int(mid)) for sc, h in kept]
    every.sort()
    assert [(x[3], x[2]) for x in every[:limit]] == [(m.motion_id, m.start_s) for m in full]
    assert [m.rank for m in full] == list(range(1, len(full) + 1))
    _no_dups(full, cap=cap or 99)


def _fused_setup(seed: int, k: int = 200, top_m: int = 3):
    """Spans with their own s <= their motion's s_max, which is independent of r (so the bound order differs
    from the r order)."""
    rng = np.random.default_rng(100 + seed)
    r = np.sort(rng.uniform(0.0, 0.9, size=k))[::-1]
    s_max = rng.uniform(-0.2, 0.9, size=k)
    ids = rng.permutation(10_000)[:k]
    spans = {}
    for mid, sm in zip(ids, s_max):
        starts = rng.uniform(0, 50, size=top_m)
        p = rng.beta(0.5, 2.0, size=top_m)
        s = sm - rng.uniform(0, 0.4, size=top_m)
        s[rng.integers(top_m)] = sm  # one span sits on the motion's best window
        spans[int(mid)] = [SpanHit(float(a), float(a + rng.uniform(0.5, 8)), float(pp), None, float(ss))
                           for a, pp, ss in zip(starts, p, s)]
    calls = []

    def localize(batch):
        calls.append(list(batch))
        return [spans[int(m)] for m in batch]

    return ids, r, s_max, spans, localize, calls


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lam,gamma,mu,limit", [(5.0, 1.0, 5.0, 10), (0.0, 0.5, 10.0, 10), (2.0, 0.0, 20.0, 10),
                                                 (5.0, 0.5, 2.0, 1), (1.0, 1.0, 1.0, 50)])
def test_fused_pruned_equals_exhaustive_and_brute_force(seed, lam, gamma, mu, limit):
    from engine.scoring import ScoreWeights

    w = ScoreWeights(lam=lam, gamma=gamma, mu=mu)
    ids, r, s_max, spans, localize, calls = _fused_setup(seed)
    full, st_full = rank_moments(ids, r, localize, None, limit, batch_size=16, prune=False, weights=w, s_max=s_max)
    assert st_full.localized == len(ids)
    calls.clear()
    pruned, st = rank_moments(ids, r, localize, None, limit, batch_size=16, prune=True, weights=w, s_max=s_max)
    assert [(c.motion_id, c.start_s, c.end_s, c.score) for c in pruned] == \
        [(c.motion_id, c.start_s, c.end_s, c.score) for c in full]
    every = [(h.p_se ** gamma * math.exp(lam * rr + mu * h.s), mid, h.start_s)
             for mid, rr in zip(ids, r) for h in spans[int(mid)]]
    every.sort(key=lambda x: -x[0])
    np.testing.assert_allclose([c.score for c in full], [x[0] for x in every[:limit]], rtol=1e-12)
    assert all(c.s is not None for c in full)
    # The localized motions are those of highest bound, in that order.
    bound = np.array([w.bound(rr, sm) for rr, sm in zip(r, s_max)])
    order = [int(ids[i]) for i in np.argsort(-bound, kind="stable")]
    assert [m for batch in calls for m in batch] == order[:st.localized]


def test_fused_pruning_saves_work_and_needs_s():
    from engine.scoring import ScoreWeights

    ids, r, s_max, spans, localize, _ = _fused_setup(0)
    w = ScoreWeights(lam=2.0, gamma=1.0, mu=20.0)
    _, st = rank_moments(ids, r, localize, None, 10, batch_size=16, weights=w, s_max=s_max)
    assert st.localized < len(ids)
    with pytest.raises(ValueError, match="s_max"):
        rank_moments(ids, r, localize, None, 10, weights=w)
    with pytest.raises(ValueError, match="span's s"):
        rank_moments(ids, r, lambda b: [[SpanHit(0.0, 1.0, 0.5)] for _ in b], None, 10, weights=w, s_max=s_max)
    # mu = 0: the paper's ranking whatever s is.
    paper, _ = rank_moments(ids, r, localize, 5.0, 10)
    same, _ = rank_moments(ids, r, localize, None, 10, weights=ScoreWeights(lam=5.0), s_max=s_max)
    assert [(c.motion_id, c.start_s) for c in paper] == [(c.motion_id, c.start_s) for c in same]
