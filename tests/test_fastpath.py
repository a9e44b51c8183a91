"""The fast query path against the plain one (oracles).

- `localizer.fast.pair_probs` (motion bank, per-sentence attention maps, reassociated fusion) gives the
  distributions `MLPLocalizer.localize` gives one pair at a time, for every architecture variant;
- `decode_top_batch` gives `decode_top`'s spans and p_se row by row (peaked, flat and tied distributions,
  span limits, padding);
- `Searcher(fast=True)` returns the moments of `Searcher(fast=False)` (same motions, spans, order) on a tiny
  real index, alone, through `search_many`, the micro-batcher under concurrency and its result cache;
- the vectorised moment r equals `moment_rs` motion by motion.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from engine.request import SearchRequest

VARIANTS = [
    ("tiny", "mlp", {}),
    ("tiny", "mlpbase", {}),
    ("tiny", "mlp", {"model.n_sgpa": 2, "model.shared_tenc": False, "model.pos_encoding": "before"}),
    ("tiny", "mlp", {"model.label_prior": False, "model.n_heads": 4}),
]


def _model(preset, variant, overrides, seed=0):
    from localizer.config import make_config
    from localizer.model import MLPLocalizer

    cfg = make_config(preset, variant, dict(overrides))
    torch.manual_seed(seed)
    model = MLPLocalizer(cfg.model).eval()
    with torch.no_grad():  # move the BatchNorm statistics off their defaults
        for mod in model.modules():
            if hasattr(mod, "running_mean") and isinstance(mod.running_mean, torch.Tensor):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("preset,variant,overrides", VARIANTS)
def test_pair_probs_equal_the_plain_model_one_pair_at_a_time(single_thread, preset, variant, overrides):
    from localizer.fast import MotionBank, pair_probs, text_side
    from localizer.infer import EncodedMotion

    model = _model(preset, variant, overrides)
    cfg = model.cfg
    g = np.random.default_rng(1)
    lengths = [cfg.n_snippets, 1, 5, cfg.n_snippets - 3, 17, 2, cfg.n_snippets, 9]
    motions = [EncodedMotion(features=g.normal(size=(t, cfg.d_model)).astype(np.float32), duration_s=3.0 + t / 10,
                             motion_id=100 + i) for i, t in enumerate(lengths)]
    tokens = [g.normal(size=(n, cfg.text_dim)).astype(np.float32) for n in (4, 1, 9)]
    bank = MotionBank(model)
    bank.slots(motions[:3])  # filled in two steps: slots survive the bank's growth
    pairs = [(i % len(tokens), j) for i in range(3) for j in range(len(motions))]
    text_idx = torch.tensor([u for u, _ in pairs])
    slots = bank.slots([motions[j] for _, j in pairs])
    probs, mask = pair_probs(model, bank, slots, text_side(model, tokens), text_idx)
    assert len(bank) == len(motions)
    with torch.inference_mode():
        for row, (u, j) in enumerate(pairs):
            m = torch.from_numpy(motions[j].features)[None]
            q = torch.from_numpy(tokens[u])[None]
            ref = model.localize(m, torch.ones(m.shape[:2], dtype=torch.bool), q,
                                 torch.ones(q.shape[:2], dtype=torch.bool))
            t = lengths[j]
            assert int(mask[row].sum()) == t
            for got, want in ((probs.p_start, ref.p_start), (probs.p_end, ref.p_end), (probs.highlight, ref.highlight)):
                torch.testing.assert_close(got[row, :t], want[0], rtol=1e-4, atol=1e-6)
                assert not bool(got[row, t:].any())  # nothing at padding


def _dists(kind, b, t, g):
    if kind == "peaked":
        x = g.normal(size=(b, t)) * 4
    elif kind == "mild":
        x = g.normal(size=(b, t)) * 0.5
    elif kind == "flat":  # exact ties everywhere
        x = np.zeros((b, t))
    else:  # few distinct values: many tied pairs
        x = g.integers(0, 3, size=(b, t)).astype(np.float64)
    p = torch.softmax(torch.from_numpy(x).float(), dim=1)
    return p


@pytest.mark.parametrize("kind", ["peaked", "mild", "flat", "tied"])
@pytest.mark.parametrize("top_m,nms_iou", [(1, 0.5), (3, 0.5), (5, 0.3), (3, 0.0), (4, 1.0)])
def test_decode_top_batch_equals_decode_top_row_by_row(kind, top_m, nms_iou):
    from localizer.decode import decode_top, decode_top_batch

    g = np.random.default_rng(abs(hash((kind, top_m, nms_iou))) % 2**32)
    b, t = 24, 40
    ps, pe = _dists(kind, b, t, g), _dists(kind, b, t, g)
    lengths = g.integers(1, t + 1, size=b)
    lengths[:3] = (t, 1, 2)
    max_len = [None if i % 4 == 0 else int(g.integers(1, t + 2)) for i in range(b)]
    for row in range(b):  # padded positions: whatever the caller leaves there is ignored
        ps[row, lengths[row]:] = 0.5
    got = decode_top_batch(ps, pe, lengths, top_m, nms_iou, max_len)
    want = [decode_top(ps[row, :lengths[row]], pe[row, :lengths[row]], top_m, nms_iou, max_len[row]) for row in range(b)]
    assert got == want


def test_window_max_equals_brute_force():
    from localizer.decode import window_max

    g = torch.Generator().manual_seed(0)
    for t in (1, 2, 3, 8, 33, 128):
        x = torch.rand(20, t, generator=g, dtype=torch.float64)
        lim = torch.randint(1, t + 4, (20,), generator=g)
        want = torch.tensor([[float(x[b, i: i + int(lim[b])].max()) for i in range(t)] for b in range(20)],
                            dtype=torch.float64)
        assert torch.equal(window_max(x, lim), want)


# ---------------------------------------------------------------------------------------------- search level
REQS = [
    SearchRequest("kung fu pose", k=12, limit=10),
    SearchRequest("a person waves the right hand", k=12, limit=10, r_mode="motion"),
    SearchRequest("someone jumps", k=12, limit=5, top_m=1),
    SearchRequest("a person kicks", k=12, limit=10, min_moment_s=1.0, max_moment_s=5.0, per_motion=1),
    SearchRequest("a person sits down", k=12, limit=8, prune=False, nms_iou=0.3, top_m=5),
    SearchRequest("kung fu pose", k=3, limit=20, lam=10.0, batch_size=1),
    SearchRequest("a person walks", k=12, limit=10, score="fused", gamma=0.5, dedup_iou=0.6, per_motion=0),
]


@pytest.fixture(scope="module")
def plain(pipeline):
    from engine.search import Searcher

    _, index, loc_run = pipeline
    return Searcher(index, localizer=loc_run, fast=False)


def _same_moments(a, b):
    assert [m.motion_id for m in a.moments] == [m.motion_id for m in b.moments]
    for x, y in zip(a.moments, b.moments):
        assert abs(x.start_s - y.start_s) <= 1e-6 and abs(x.end_s - y.end_s) <= 1e-6
        assert x.rank == y.rank and x.label == y.label
    assert [m.score for m in a.moments] == pytest.approx([m.score for m in b.moments], rel=1e-5)
    assert [m.r for m in a.moments] == pytest.approx([m.r for m in b.moments], rel=1e-6, abs=1e-7)


def test_fast_search_equals_plain_search(searcher, plain):
    assert searcher.fast and not plain.fast
    for req in REQS:
        fast = searcher.search(req)
        _same_moments(fast, plain.search(req))
        assert fast.moments  # the tiny index answers every request
        exhaustive = searcher.search(dataclasses.replace(req, prune=False))  # pruning stays exact
        _same_moments(fast, exhaustive)


def test_fast_batched_paths_equal_plain_search(searcher, plain):
    from engine.serve.batcher import MicroBatcher

    want = {r: plain.search(r) for r in REQS}
    many = searcher.search_many(REQS + REQS[:3])  # repeated requests: their pairs run once
    for res in many:
        _same_moments(res, want[res.request])
    batcher = MicroBatcher(searcher, window_s=0.05, max_batch=8, cache_size=len(REQS))
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(batcher.search, REQS * 2))
        for res in got:
            _same_moments(res, want[res.request])
        assert batcher.batches < len(REQS) * 2  # batches formed
        cached = [batcher.search(r) for r in REQS]
        assert all(c.cached for c in cached)
        for res in cached:
            _same_moments(res, want[res.request])
    finally:
        batcher.close()


def test_fast_path_without_the_motion_cache_equals_plain(pipeline, plain):
    from engine.search import Searcher

    _, index, loc_run = pipeline
    naive = Searcher(index, localizer=loc_run, use_motion_cache=False)
    for req in REQS[:3]:
        _same_moments(naive.search(req), plain.search(req))
    assert naive._bank is None  # nothing kept


def test_moment_rs_many_equals_moment_rs(searcher):
    q = searcher.retrieval.encode_text(["a person waves"])[0]
    ids = sorted(searcher.motions)[:6] + [10 ** 9]  # and a motion the index does not hold
    g = np.random.default_rng(0)
    spans = []
    for mid in ids:
        d = searcher.motions[mid].duration_s if mid in searcher.motions else 5.0
        a = np.sort(g.uniform(0, d, size=(int(g.integers(0, 5)), 2)), axis=1)
        spans.append(a)
    got = searcher.moment_rs_many(q, ids[:-1], spans[:-1])
    for mid, sp, r in zip(ids, spans, got):
        np.testing.assert_array_equal(r, searcher.moment_rs(q, mid, sp.reshape(-1, 2)))
        assert r.shape == (len(sp),)
