"""MLP model: Joint Recover, snippets, masked BN, padded batching, cached S-Enc, label priors, losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.corpus.types import CorpusError
from localizer.config import VARIANTS, make_config
from localizer.model import PAD_LABEL, MLPConfig, MLPLocalizer, mlp_loss, smpl_adjacency
from localizer.snippets import motion_snippets, pool_snippets, snippet_edges

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = DATA / "humanml3d-sample"


pytestmark = pytest.mark.usefixtures("single_thread")


def _cfg(variant: str = "mlp", **kw) -> MLPConfig:
    over = {"model.d_model": 16, "model.n_heads": 2, "model.n_sgpa": 2, "model.n_snippets": 24,
            "model.text_dim": 8, "model.dropout": 0.1}
    over.update({f"model.{k}": v for k, v in kw.items()})
    return make_config("tiny", variant, over).model


def _batch(lengths, n_tok, seed=0, text_dim=8):
    g = torch.Generator().manual_seed(seed)
    b, t, n = len(lengths), max(lengths), max(n_tok)
    x = torch.randn(b, t, 22, 12, generator=g)
    m_mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    q = torch.randn(b, n, text_dim, generator=g)
    q_mask = torch.arange(n).unsqueeze(0) < torch.tensor(n_tok).unsqueeze(1)
    x[~m_mask] = 0.0
    q[~q_mask] = 0.0
    return x, m_mask, q, q_mask


# ---------------------------------------------------------------------------------------------- snippets
@pytest.mark.skipif(not SAMPLE.exists(), reason="../shared/data/humanml3d-sample not beside the clone")
def test_snippets_of_golden_humanml3d_clip():
    feats = np.load(SAMPLE / "new_joint_vecs" / "012314.npy")
    joints = np.load(SAMPLE / "new_joints" / "012314.npy")
    full = motion_snippets(feats, 256)  # 170 frames <= 256: one frame per snippet
    assert full.shape == (170, 22, 12)
    np.testing.assert_allclose(full[:, 0, 6:9], joints[:, 0], atol=1e-5)  # integrated root trajectory
    np.testing.assert_array_equal(full[:, 5, 0:6], feats[:, 67 + 4 * 6: 67 + 5 * 6])  # joint 5 rotation
    pooled = motion_snippets(feats, 32)
    edges = snippet_edges(170, 32)
    assert pooled.shape == (32, 22, 12)
    np.testing.assert_allclose(pooled[7], full[edges[7]:edges[8]].mean(axis=0), atol=1e-6)


def test_snippets_reject_bad_features():
    with pytest.raises(CorpusError, match="walk_01"):
        motion_snippets(np.zeros((5, 262), np.float32), 32, where="motion 'walk_01'")


def test_snippet_edges_and_pooling():
    assert snippet_edges(10, 256).tolist() == list(range(11))
    e = snippet_edges(1000, 256)
    assert len(e) == 257 and e[0] == 0 and e[-1] == 1000 and (np.diff(e) >= 1).all()
    x = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_allclose(pool_snippets(x, 4)[:, 0], [np.mean(x[a:b]) for a, b in
                                                           zip(snippet_edges(10, 4)[:-1], snippet_edges(10, 4)[1:])])
    assert pool_snippets(x, 20).shape == (10, 1)
    s = motion_snippets(np.zeros((300, 263), np.float32), 64)
    assert s.shape == (64, 22, 12) and s.dtype == np.float32


# ---------------------------------------------------------------------------------------------- model pieces
def test_adjacency_is_smpl_tree_with_self_loops():
    a = smpl_adjacency()
    assert torch.equal(a, a.T) and torch.all(a.diagonal() == 1)
    assert int(a.sum()) == 22 + 2 * 21


@pytest.mark.parametrize("variant", ["mlp", "mlp-s", "mlpbase", "mlp-unshared", "mlp-s-pe-before"])
def test_batched_padded_inference_equals_one_at_a_time(variant):
    torch.manual_seed(0)
    model = MLPLocalizer(_cfg(variant))
    # train a few steps so BN running stats and weights are not at their initial values
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for s in range(3):
        x, mm, q, qm = _batch([20, 7, 13], [5, 3, 8], seed=10 + s)
        start, end = torch.tensor([1, 0, 2]), torch.tensor([5, 3, 9])
        h = ((torch.arange(20) >= start[:, None]) & (torch.arange(20) <= end[:, None]) & mm).float()
        mlp_loss(model(x, mm, q, qm), model.cfg, mm, start, end, h).total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    model.eval()
    lengths, n_tok = [20, 7, 13, 1], [5, 3, 8, 1]
    x, mm, q, qm = _batch(lengths, n_tok, seed=1)
    x[~mm] = 1e3  # garbage in the padding must not matter
    q[~qm] = -1e3
    with torch.inference_mode():
        batched = model.localize(model.encode_motion(x, mm), mm, q, qm)
        for i, (t, n) in enumerate(zip(lengths, n_tok)):
            one = model.localize(model.encode_motion(x[i:i + 1, :t], mm[i:i + 1, :t]), mm[i:i + 1, :t],
                                 q[i:i + 1, :n], qm[i:i + 1, :n])
            torch.testing.assert_close(batched.p_start[i, :t], one.p_start[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batched.p_end[i, :t], one.p_end[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batched.highlight[i, :t], one.highlight[0], atol=1e-5, rtol=1e-4)
            assert torch.all(batched.p_start[i, t:] == 0) and torch.all(batched.p_end[i, t:] == 0)
            assert float(batched.p_start[i].sum()) == pytest.approx(1.0, abs=1e-5)
    # a saturated model (h = 0 everywhere, flat distributions) would make this test vacuous
    assert float(batched.highlight[mm].mean()) > 1e-2 and float(batched.p_start[0].std()) > 1e-3


def test_cached_senc_path_equals_uncached():
    torch.manual_seed(1)
    model = MLPLocalizer(_cfg("mlp")).eval()
    x, mm, q, qm = _batch([12, 9], [4, 6], seed=2)
    with torch.inference_mode():
        full = model(x, mm, q, qm)
        cached = model.encode_motion(x, mm).clone()
        again = model.forward_encoded(cached, mm, q, qm)
    torch.testing.assert_close(full.start_logits, again.start_logits)
    torch.testing.assert_close(full.end_logits, again.end_logits)
    assert torch.all(cached[~mm] == 0)


def test_masked_batchnorm_statistics_ignore_padding():
    torch.manual_seed(2)
    cfg = _cfg("mlp")
    a, b = MLPLocalizer(cfg), MLPLocalizer(cfg)
    b.load_state_dict(a.state_dict())
    a.train()
    b.train()
    a.in_drop.p = b.in_drop.p = 0.0
    x, mm, _, _ = _batch([10, 4], [1, 1], seed=3)
    # same valid snippets, but b's batch carries 30 extra padded snippets full of garbage
    xb = torch.cat([x, torch.full((2, 30, 22, 12), 50.0)], dim=1)
    mb = torch.cat([mm, torch.zeros(2, 30, dtype=torch.bool)], dim=1)
    ya, yb = a.encode_motion(x, mm), b.encode_motion(xb, mb)
    torch.testing.assert_close(ya[mm], yb[:, :10][mm])
    bn_a, bn_b = a.senc.input_layer.bn, b.senc.input_layer.bn
    torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean)
    torch.testing.assert_close(bn_a.running_var, bn_b.running_var)


def test_recovering_part_does_not_leak_labels_into_predictions():
    torch.manual_seed(3)
    model = MLPLocalizer(_cfg("mlp")).eval()
    x, mm, q, qm = _batch([15, 6], [4, 3], seed=4)
    pred = model.forward_encoded(model.encode_motion(x, mm), mm, q, qm)
    fs = model.flip_labels(torch.tensor([2, 1]), mm)
    fe = model.flip_labels(torch.tensor([8, 4]), mm)
    both = model.forward_encoded(model.encode_motion(x, mm), mm, q, qm, None, fs, fe)
    torch.testing.assert_close(pred.start_logits, both.start_logits)
    torch.testing.assert_close(pred.end_logits, both.end_logits)
    assert both.rec_start_logits is not None and both.rec_end_logits is not None
    assert torch.isinf(both.rec_start_logits[1, 6:]).all()  # padding masked in the recovering part too
    other = model.forward_encoded(model.encode_motion(x, mm), mm, q, qm, None, 1 - fs * mm.long(), fe)
    assert not torch.allclose(other.rec_start_logits[mm], both.rec_start_logits[mm])  # it does read the labels


def test_perturb_labels_block_and_flip_rate():
    model = MLPLocalizer(_cfg("mlp", flip_rate=0.25))
    mm = torch.arange(24).unsqueeze(0) < torch.tensor([[20], [9], [24]])
    h = torch.zeros(mm.shape)
    h[:, 3:7] = 1.0
    g = torch.Generator().manual_seed(0)
    for alpha in (0.0, 0.5, 0.8, 1.0):
        lab = model.perturb_labels(h, mm, alpha, generator=g)
        assert torch.all(lab[~mm] == PAD_LABEL)
        for row, length in enumerate([20, 9, 24]):
            hidden = (lab[row, :length] == PAD_LABEL).nonzero().flatten()
            assert len(hidden) == int(np.floor(alpha * length))
            if len(hidden):
                assert int(hidden[-1] - hidden[0]) + 1 == len(hidden)  # contiguous
            keep = lab[row, :length] != PAD_LABEL
            assert torch.equal(lab[row, :length][keep], h[row, :length][keep].long())
    big = torch.ones(400, 50, dtype=torch.bool)
    flipped = model.flip_labels(torch.zeros(400, dtype=torch.long), big, generator=g)
    onehot = torch.zeros(400, 50, dtype=torch.long)
    onehot[:, 0] = 1
    assert float((flipped != onehot).float().mean()) == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_trains_one_step_with_finite_gradients(variant):
    torch.manual_seed(4)
    model = MLPLocalizer(_cfg(variant)).train()
    x, mm, q, qm = _batch([16, 5, 11], [4, 2, 6], seed=5)
    start, end = torch.tensor([2, 0, 4]), torch.tensor([9, 3, 10])
    h = ((torch.arange(16) >= start[:, None]) & (torch.arange(16) <= end[:, None]) & mm).float()
    labels = model.perturb_labels(h, mm, 0.8) if model.cfg.label_prior else None
    fs = model.flip_labels(start, mm) if model.cfg.recovering else None
    fe = model.flip_labels(end, mm) if model.cfg.recovering else None
    out = model(x, mm, q, qm, labels, fs, fe)
    terms = mlp_loss(out, model.cfg, mm, start, end, h)
    assert torch.isfinite(terms.total)
    assert (float(terms.rec.detach()) > 0) == model.cfg.recovering
    assert (float(terms.align.detach()) != 0) == (model.cfg.recovering and model.cfg.alignment)
    terms.total.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_bf16_autocast_runs_and_is_close_to_fp32():
    torch.manual_seed(5)
    model = MLPLocalizer(_cfg("mlp")).eval()
    x, mm, q, qm = _batch([12, 8], [4, 4], seed=6)
    with torch.inference_mode():
        ref = model.localize(model.encode_motion(x, mm), mm, q, qm)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.localize(model.encode_motion(x, mm), mm, q, qm)
    assert low.p_start.dtype == torch.float32
    assert float((low.p_start - ref.p_start).abs().max()) < 0.05


def test_config_validation():
    with pytest.raises(ValueError, match="multiple"):
        MLPConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="pos_encoding"):
        MLPConfig(pos_encoding="middle")
    with pytest.raises(ValueError, match="unknown"):
        make_config("tiny", "mlp", {"model.nope": 1})
    with pytest.raises(ValueError, match="variant"):
        make_config("tiny", "mlp-xl")
