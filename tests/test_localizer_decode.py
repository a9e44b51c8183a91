"""Span decoding against brute force: joint argmax, top-m NMS, ground-truth spans, snippet <-> seconds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from localizer.decode import (
    SpanCandidate,
    decode_best,
    decode_top,
    index_to_seconds,
    max_len_snippets,
    nms,
    seconds_to_span,
    temporal_iou,
)


def _rand_dist(rng: np.random.Generator, t: int) -> np.ndarray:
    x = rng.gamma(0.3, size=t)
    return x / x.sum()


def _brute_best(ps, pe, max_len=None):
    best, arg = -1.0, None
    for i in range(len(ps)):
        for j in range(i, len(pe)):
            if max_len is not None and j - i >= max_len:
                continue
            if ps[i] * pe[j] > best:
                best, arg = ps[i] * pe[j], (i, j)
    return arg, best


def _brute_top(ps, pe, top_m, thr, max_len=None):
    cands = [SpanCandidate(i, j, float(ps[i] * pe[j])) for i in range(len(ps)) for j in range(i, len(pe))
             if (max_len is None or j - i < max_len) and ps[i] * pe[j] > 0]
    cands.sort(key=lambda c: (-c.p_se, c.start_idx * len(ps) + c.end_idx))
    kept = []
    for c in cands:
        if all(temporal_iou(c.start_idx, c.end_idx + 1, k.start_idx, k.end_idx + 1) <= thr for k in kept):
            kept.append(c)
        if len(kept) == top_m:
            break
    return kept


@pytest.mark.parametrize("max_len", [None, 1, 5])
def test_decode_best_equals_brute_force(max_len):
    rng = np.random.default_rng(0)
    t = 24
    ps = np.stack([_rand_dist(rng, t) for _ in range(16)])
    pe = np.stack([_rand_dist(rng, t) for _ in range(16)])
    dec = decode_best(torch.from_numpy(ps), torch.from_numpy(pe), max_len)
    for b in range(16):
        (i, j), best = _brute_best(ps[b], pe[b], max_len)
        assert (int(dec.start_idx[b]), int(dec.end_idx[b])) == (i, j)
        assert float(dec.p_se[b]) == pytest.approx(best, rel=1e-6)
        assert int(dec.start_idx[b]) <= int(dec.end_idx[b])


def test_decode_best_prefers_consistent_pair_over_independent_argmax():
    # Independent argmaxes would give start 3 > end 1; the joint decode must keep i_s <= i_e.
    ps = torch.tensor([0.1, 0.1, 0.1, 0.7])
    pe = torch.tensor([0.1, 0.6, 0.1, 0.2])
    dec = decode_best(ps, pe)
    assert (int(dec.start_idx[0]), int(dec.end_idx[0])) == (3, 3)
    assert float(dec.p_se[0]) == pytest.approx(0.7 * 0.2)


def test_decode_best_ignores_padding():
    ps = torch.tensor([[0.2, 0.8, 0.0, 0.0]])  # length 2, padded to 4 (p = 0 at padding)
    pe = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    dec = decode_best(ps, pe)
    assert int(dec.end_idx[0]) <= 1


@pytest.mark.parametrize("top_m,thr,max_len", [(1, 0.5, None), (3, 0.5, None), (5, 0.3, None), (4, 0.0, 6),
                                               (50, 0.7, None)])
def test_decode_top_equals_brute_force_nms(top_m, thr, max_len):
    rng = np.random.default_rng(top_m)
    for _ in range(5):
        t = int(rng.integers(1, 30))
        ps, pe = _rand_dist(rng, t), _rand_dist(rng, t)
        got = decode_top(ps, pe, top_m, thr, max_len)
        want = _brute_top(ps, pe, top_m, thr, max_len)
        assert [(c.start_idx, c.end_idx) for c in got] == [(c.start_idx, c.end_idx) for c in want]
        assert [c.p_se for c in got] == pytest.approx([c.p_se for c in want], rel=1e-9)


def test_nms_suppresses_overlaps_and_keeps_order():
    cands = [SpanCandidate(0, 9, 0.5), SpanCandidate(1, 9, 0.4), SpanCandidate(20, 29, 0.3),
             SpanCandidate(5, 14, 0.2), SpanCandidate(0, 9, 0.1)]
    kept = nms(cands, 0.5)
    # (1, 9) overlaps (0, 9) with IoU 0.9; (5, 14) with (0, 9) has IoU 5/15 = 0.33 <= 0.5; the duplicate goes.
    assert [(c.start_idx, c.end_idx) for c in kept] == [(0, 9), (20, 29), (5, 14)]
    assert [c.p_se for c in kept] == sorted([c.p_se for c in kept], reverse=True)
    assert [(c.start_idx, c.end_idx) for c in nms(cands, 0.3, top_m=2)] == [(0, 9), (20, 29)]
    for a, b in itertools.combinations(nms(cands, 0.2), 2):
        assert temporal_iou(a.start_idx, a.end_idx + 1, b.start_idx, b.end_idx + 1) <= 0.2


def test_index_to_seconds_and_max_len():
    assert index_to_seconds(0, 9, 10, 5.0) == (0.0, 5.0)
    assert index_to_seconds(2, 3, 8, 4.0) == pytest.approx((1.0, 2.0))
    assert max_len_snippets(None, 100, 10.0) is None
    assert max_len_snippets(2.0, 100, 10.0) == 20
    assert max_len_snippets(0.001, 100, 10.0) == 1


def test_seconds_to_span_equals_brute_force_best_iou():
    rng = np.random.default_rng(3)
    for _ in range(300):
        t = int(rng.integers(1, 40))
        d = float(rng.uniform(0.5, 30.0))
        a, b = sorted(rng.uniform(-0.5, d + 0.5, size=2))
        if b - a < 1e-3:
            continue
        got = seconds_to_span(a, b, t, d)
        s, e = max(a, 0.0), min(b, d)
        if e <= s:
            continue
        best = max(temporal_iou(i / t * d, (j + 1) / t * d, s, e) for i in range(t) for j in range(i, t))
        got_iou = temporal_iou(got[0] / t * d, (got[1] + 1) / t * d, s, e)
        assert got[0] <= got[1]
        assert got_iou == pytest.approx(best, abs=1e-9)


def test_seconds_to_span_exact_grid():
    assert seconds_to_span(1.0, 2.0, 10, 10.0) == (1, 1)
    assert seconds_to_span(0.0, 10.0, 10, 10.0) == (0, 9)
    assert seconds_to_span(2.0, 5.0, 20, 10.0) == (4, 9)


def test_decode_best_with_one_limit_per_row_equals_brute_force():
    rng = np.random.default_rng(7)
    b, t = 24, 20
    ps = np.stack([_rand_dist(rng, t) for _ in range(b)])
    pe = np.stack([_rand_dist(rng, t) for _ in range(b)])
    lim = rng.integers(1, t + 1, size=b)
    dec = decode_best(torch.from_numpy(ps), torch.from_numpy(pe), torch.from_numpy(lim))
    for r in range(b):
        (i, j), best = _brute_best(ps[r], pe[r], int(lim[r]))
        assert (int(dec.start_idx[r]), int(dec.end_idx[r])) == (i, j)
        assert float(dec.p_se[r]) == pytest.approx(best, rel=1e-6)
        assert j - i < lim[r]
