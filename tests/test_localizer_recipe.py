"""Training-recipe options of the localizer: flip noise, loss reduction, alignment direction / stop-gradient,
lambda_align ramp, LR schedules, recipes, per-term history and the learned maximum span."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from localizer.config import RECIPES, LocalizerConfig, make_config
from localizer.data import TextCache, synthetic_motions
from localizer.decode import MaxSpan, decode_best, fit_max_span
from localizer.infer import Localizer
from localizer.model import MLPConfig, MLPLocalizer, MLPOutput, mlp_loss
from localizer.train import lr_schedule, train_localizer, train_max_span

pytestmark = pytest.mark.usefixtures("single_thread")


def _cfg(**kw) -> MLPConfig:
    return MLPConfig(**{**dict(d_model=16, n_heads=2, n_sgpa=1, n_snippets=24, text_dim=8, dropout=0.0), **kw})


# ---------------------------------------------------------------------------------------------- flip noise
def test_replace_flip_mode_flips_at_half_the_rate_and_only_valid_positions():
    g = torch.Generator().manual_seed(0)
    mask = torch.cat([torch.ones(200, 50, dtype=torch.bool), torch.arange(50).expand(200, 50) < 30])
    index = torch.zeros(400, dtype=torch.long)
    onehot = torch.zeros(400, 50, dtype=torch.long)
    onehot[:, 0] = 1
    for mode, rate in (("xor", 0.2), ("replace", 0.1)):
        model = MLPLocalizer(_cfg(flip_rate=0.2, flip_mode=mode))
        flipped = model.flip_labels(index, mask, generator=g)
        assert torch.all(flipped[~mask] == 0)
        assert set(flipped.unique().tolist()) <= {0, 1}
        changed = (flipped != onehot * mask.long())[mask].float().mean()
        assert float(changed) == pytest.approx(rate, abs=0.01), mode


def test_flip_mode_is_validated():
    with pytest.raises(ValueError, match="flip_mode"):
        _cfg(flip_mode="swap")
    with pytest.raises(ValueError, match="align_direction"):
        _cfg(align_direction="both")
    with pytest.raises(ValueError, match="loss_reduce"):
        _cfg(loss_reduce="max")


# ---------------------------------------------------------------------------------------------- losses
def _fake_output(b: int = 3, t: int = 10, seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([10, 6, 8])[:b]
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)

    def logits():
        x = torch.randn(b, t, generator=g).masked_fill(~mask, float("-inf"))
        return x.requires_grad_(requires_grad)

    out = MLPOutput(start_logits=logits(), end_logits=logits(), highlight_logits=torch.randn(b, t, generator=g),
                    highlight=torch.rand(b, t, generator=g), rec_start_logits=logits(), rec_end_logits=logits())
    start = torch.tensor([1, 0, 3])[:b]
    end = torch.tensor([5, 4, 7])[:b]
    h = ((torch.arange(t) >= start[:, None]) & (torch.arange(t) <= end[:, None]) & mask).float()
    return out, mask, start, end, h


def _brute_kl(p_logits, q_logits, mask):
    """Mean over rows of sum_i p_i log(p_i / q_i) over valid positions (a loop, float64)."""
    total = 0.0
    for row in range(p_logits.shape[0]):
        v = mask[row]
        p = torch.softmax(p_logits[row, v].double(), 0)
        q = torch.softmax(q_logits[row, v].double(), 0)
        total += float((p * (p.log() - q.log())).sum())
    return total / p_logits.shape[0]


def test_sum_reduction_doubles_span_rec_and_align_but_not_seq():
    out, mask, s, e, h = _fake_output()
    mean = mlp_loss(out, _cfg(loss_reduce="mean"), mask, s, e, h)
    summ = mlp_loss(out, _cfg(loss_reduce="sum"), mask, s, e, h)
    for k in ("span", "rec", "align"):
        assert float(getattr(summ, k)) == pytest.approx(2 * float(getattr(mean, k)), rel=1e-6), k
    assert float(summ.seq) == pytest.approx(float(mean.seq))


def test_alignment_direction_matches_brute_force_kl():
    out, mask, s, e, h = _fake_output()
    for direction in ("rec_pred", "pred_rec"):
        terms = mlp_loss(out, _cfg(align_direction=direction, loss_reduce="sum"), mask, s, e, h)
        pairs = ((out.rec_start_logits, out.start_logits), (out.rec_end_logits, out.end_logits))
        want = sum(_brute_kl(r, p, mask) if direction == "rec_pred" else _brute_kl(p, r, mask) for r, p in pairs)
        assert float(terms.align) == pytest.approx(want, rel=1e-5), direction
    a = mlp_loss(out, _cfg(align_direction="rec_pred"), mask, s, e, h).align
    b = mlp_loss(out, _cfg(align_direction="pred_rec"), mask, s, e, h).align
    assert abs(float(a) - float(b)) > 1e-4  # the two directions really differ here


def test_align_detach_stops_the_gradient_into_p_rec_only():
    for detach in (False, True):
        out, mask, s, e, h = _fake_output(requires_grad=True)
        cfg = _cfg(align_detach=detach, lambda_seq=0.0, lambda_span=0.0, lambda_rec=0.0, lambda_align=1.0)
        mlp_loss(out, cfg, mask, s, e, h).total.backward()
        rec_grad = float(out.rec_start_logits.grad[mask].abs().sum())
        pred_grad = float(out.start_logits.grad[mask].abs().sum())
        assert pred_grad > 0
        assert (rec_grad == 0.0) == detach


def test_align_weight_overrides_lambda_and_diagnostics():
    out, mask, s, e, h = _fake_output()
    cfg = _cfg()
    full = mlp_loss(out, cfg, mask, s, e, h)
    zero = mlp_loss(out, cfg, mask, s, e, h, align_weight=0.0)
    assert float(full.total - zero.total) == pytest.approx(float(full.align), rel=1e-5)
    p_true = np.mean([float(torch.softmax(out.start_logits[r], 0)[s[r]]) for r in range(3)]
                     + [float(torch.softmax(out.end_logits[r], 0)[e[r]]) for r in range(3)])
    assert float(full.p_pred_true) == pytest.approx(p_true, rel=1e-5)
    assert 0 < full.as_floats()["p_rec_true"] < 1


# ---------------------------------------------------------------------------------------------- schedules
def test_lr_schedules():
    step = make_config("tiny", "mlp", recipe="official").train
    assert [lr_schedule(step, s, 10) / step.lr for s in (0, 4, 5, 9)] == [1.0, 1.0, 0.5, 0.5]
    today = make_config("tiny", "mlp").train
    assert lr_schedule(today, 5, 10) == pytest.approx(0.1 * today.lr)
    cos = make_config("tiny", "mlp", {"train.lr_schedule": "cosine", "train.lr_min_factor": 0.1}).train
    lrs = [lr_schedule(cos, s, 100) for s in range(101)]
    assert lrs[0] == pytest.approx(cos.lr) and lrs[-1] == pytest.approx(0.1 * cos.lr)
    assert lrs[50] == pytest.approx(cos.lr * (0.1 + 0.9 * 0.5))
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ValueError, match="lr_schedule"):
        make_config("tiny", "mlp", {"train.lr_schedule": "linear"})


def test_recipes():
    today = make_config("cpu-small", "mlp")
    assert today == make_config("cpu-small", "mlp", recipe="today")
    off = make_config("cpu-small", "mlp", recipe="official")
    assert (off.train.lr_decay, off.model.flip_mode, off.model.loss_reduce) == (0.5, "replace", "sum")
    fixed = make_config("cpu-small", "mlp", {"model.n_snippets": 96}, recipe="fixed")
    assert fixed.model.n_snippets == 96 and fixed.recipe == "fixed"  # explicit overrides win over the recipe
    assert make_config("cpu-small", "mlp", recipe="fixed").model.n_snippets == 128
    assert LocalizerConfig.from_dict(off.to_dict()) == off
    assert set(RECIPES) >= {"today", "official", "fixed"}
    with pytest.raises(ValueError, match="recipe"):
        make_config("tiny", "mlp", recipe="tomorrow")


# ---------------------------------------------------------------------------------------------- max span
def test_fit_max_span_covers_the_quantile_in_both_units():
    rng = np.random.default_rng(0)
    spans = []
    for _ in range(300):
        t = int(rng.integers(20, 65))
        d = float(rng.uniform(3.0, 60.0))
        i = int(rng.integers(0, t))
        j = int(min(t - 1, i + rng.integers(0, t // 2)))
        spans.append((i, j, t, d))
    for unit in ("seconds", "fraction"):
        ms = fit_max_span(spans, 0.9, unit)
        assert ms.unit == unit
        ok = np.mean([j - i + 1 <= ms.max_len(t, d) for i, j, t, d in spans])
        assert ok >= 0.9
    auto = fit_max_span(spans, 0.9, "auto")
    mean_len = {u: np.mean([fit_max_span(spans, 0.9, u).max_len(t, d) for _, _, t, d in spans])
                for u in ("seconds", "fraction")}
    assert auto.unit == min(mean_len, key=mean_len.get)
    assert MaxSpan.from_dict(auto.to_dict()) == auto
    with pytest.raises(ValueError):
        fit_max_span([], 0.9)


def test_decoding_with_the_learned_limit_never_returns_longer_spans():
    rng = np.random.default_rng(3)
    ms = MaxSpan(quantile=0.95, unit="seconds", seconds=2.0, fraction=0.3, n_spans=1)
    b, t = 32, 40
    durations = rng.uniform(4.0, 30.0, size=b)
    x = torch.from_numpy(rng.gamma(0.3, size=(2, b, t)))
    ps, pe = x[0] / x[0].sum(1, keepdim=True), x[1] / x[1].sum(1, keepdim=True)
    lim = torch.tensor([ms.max_len(t, float(d)) for d in durations])
    dec = decode_best(ps, pe, lim)
    free = decode_best(ps, pe)
    longer = 0
    for r in range(b):
        length = int(dec.end_idx[r] - dec.start_idx[r]) + 1
        assert length <= int(lim[r])
        assert length / t * durations[r] <= ms.seconds + 1e-9
        longer += int(free.end_idx[r] - free.start_idx[r]) + 1 > int(lim[r])
        # per-row limit equals decoding that row alone with its own scalar limit
        alone = decode_best(ps[r], pe[r], int(lim[r]))
        assert (int(alone.start_idx[0]), int(alone.end_idx[0])) == (int(dec.start_idx[r]), int(dec.end_idx[r]))
    assert longer > 0  # the limit was binding somewhere, so the test can fail


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def text_cache() -> TextCache:
    cache = TextCache(encoder_name="minilm", max_tokens=32)
    from localizer.data import SYNTHETIC_ACTIONS

    cache.add([t for _, texts in SYNTHETIC_ACTIONS.values() for t in texts])
    return cache


def test_training_logs_terms_and_stores_the_learned_max_span(tmp_path, text_cache):
    motions = synthetic_motions(30, seed=2, min_frames=60, max_frames=120)
    cfg = make_config("tiny", "mlp-s", {"train.epochs": 2, "train.batch_size": 8, "train.time_budget_min": None,
                                        "train.align_ramp": 0.5, "train.val_max_pairs": 30}, recipe="official")
    res = train_localizer(motions, tmp_path / "run", cfg, text_cache=text_cache)
    hist = json.loads((res.run_dir / "history.json").read_text())
    for h in hist:
        assert {"seq", "span", "rec", "align", "total", "p_pred_true", "p_rec_true"} <= set(h["terms"])
        assert 0 < h["terms"]["p_rec_true"] < 1 and h["lr"] > 0
        assert h["val"]["p_se_median"] is not None and h["val"]["span_ratio_median"] > 0
    assert hist[-1]["lr"] == pytest.approx(0.5 * cfg.train.lr)
    saved = torch.load(res.best_path, weights_only=True)
    ms = MaxSpan.from_dict(saved["config"]["max_span"])
    from localizer.data import load_data

    data = load_data(motions, cfg.model.n_snippets)
    assert ms == train_max_span(data.train, 0.95, "auto")
    loc = Localizer.load(res.run_dir, text_encoder=text_cache.encoder)
    assert loc.config.max_span == ms
    enc = loc.encode_motions([m.features for m in motions], fps=20.0)
    for text in ("a person waves the right hand", "clapping hands"):
        for spans, e in zip(loc.localize(text, enc, top_m=3), enc):
            for s in spans:
                assert s.end_idx - s.start_idx + 1 <= ms.max_len(e.n_snippets, e.duration_s)
    unlimited = loc.localize("a person waves the right hand", enc, max_span_s=None)
    assert len(unlimited) == len(enc)
    with pytest.raises(ValueError, match="max_span_s"):
        loc.localize("waving", enc, max_span_s="auto")
    # a checkpoint without a learned span (older runs) decodes without a limit
    old = LocalizerConfig.from_dict({k: v for k, v in saved["config"].items() if k != "max_span"})
    assert old.max_span is None and old.recipe == "official"
    assert math.isfinite(ms.seconds) and 0 < ms.fraction <= 1


# ---------------------------------------------------------------------------------------------- negatives
def test_shared_normalisation_loss_equals_brute_force_and_negatives_are_true_negatives(text_cache):
    from localizer.data import collate, pairs_from_motions
    from localizer.train import negative_rows, shared_norm_span_loss

    motions = synthetic_motions(12, seed=5, min_frames=30, max_frames=60)
    ps = pairs_from_motions(motions, 24)
    texts = [set() for _ in ps.motions]
    for p in ps.pairs:
        texts[p.motion_index].add(p.text)
    rows = list(range(min(10, len(ps))))
    neg = negative_rows(ps, rows, 3, texts)
    assert (neg >= 0).any()
    for i, r in enumerate(rows):
        for j in neg[i].tolist():
            if j < 0:
                continue
            q, p = ps.pairs[rows[j]], ps.pairs[r]
            assert q.motion_index != p.motion_index and p.text not in texts[q.motion_index]
    torch.manual_seed(0)
    model = MLPLocalizer(_cfg(text_dim=text_cache.dim, n_snippets=24)).eval()
    batch = collate(ps, rows, text_cache)
    with torch.no_grad():
        enc = model.encode_motion(batch.snippets, batch.m_mask)
        out = model.forward_encoded(enc, batch.m_mask, batch.text, batch.t_mask)
        for reduce in ("mean", "sum"):
            got = float(shared_norm_span_loss(model, enc, batch, out, neg, reduce))
            want = 0.0
            for which in ("start", "end"):
                for i in range(len(rows)):
                    def logits(m_row, i=i, which=which):
                        L = int(batch.m_mask[m_row].sum())
                        o = model.forward_encoded(enc[m_row: m_row + 1, :L], batch.m_mask[m_row: m_row + 1, :L],
                                                  batch.text[i: i + 1], batch.t_mask[i: i + 1])
                        return getattr(o, f"{which}_logits")[0]
                    allpos = torch.cat([logits(i)] + [logits(j) for j in neg[i].tolist() if j >= 0]).double()
                    target = int(getattr(batch, f"{which}_idx")[i])
                    want += float(-(allpos[target] - torch.logsumexp(allpos, 0))) / len(rows)
            want *= 0.5 if reduce == "mean" else 1.0
            assert got == pytest.approx(want, rel=1e-4), reduce
        per_motion = float(mlp_loss(out, model.cfg, batch.m_mask, batch.start_idx, batch.end_idx,
                                    batch.h_labels).span)
        assert float(shared_norm_span_loss(model, enc, batch, out, neg, "mean")) > per_motion


def test_training_with_in_batch_negatives(tmp_path, text_cache):
    motions = synthetic_motions(24, seed=3, min_frames=40, max_frames=80)
    cfg = make_config("tiny", "mlpbase", {"train.epochs": 1, "train.batch_size": 8, "train.time_budget_min": None,
                                          "train.negatives": 2, "train.val_max_pairs": 20})
    res = train_localizer(motions, tmp_path / "run", cfg, text_cache=text_cache)
    hist = json.loads((res.run_dir / "history.json").read_text())
    assert math.isfinite(hist[-1]["terms"]["span"]) and res.best_metrics is not None
