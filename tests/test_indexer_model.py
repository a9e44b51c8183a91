"""Retrieval model: DropTriple loss on hand-made matrices, encoder masking, checkpoints, training + eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.corpus.store import CorpusStore
from engine.corpus.types import Annotation, Motion
from indexer.model import RetrievalConfig, RetrievalModel, drop_triple_loss, load_retrieval
from indexer.train import (
    DirectionMetrics,
    TrainConfig,
    _ranks,
    crop_span,
    evaluate_retrieval,
    train_retrieval,
)

TINY = RetrievalConfig(d_model=32, n_layers=1, n_heads=2, ff_dim=64, embed_dim=32, text_hidden=None, dropout=0.0)


# ---------------------------------------------------------------------------------------------- loss
def test_drop_triple_two_by_two_by_hand():
    sim = torch.tensor([[0.9, 0.1], [0.8, 0.5]])
    # motion->text: anchor 1 vs text 0: 0.2 + 0.8 - 0.5 = 0.5; text->motion: text 0 vs motion 1: 0.2 + 0.8 - 0.9 = 0.1
    assert drop_triple_loss(sim, hardest=False).item() == pytest.approx((0.5 + 0.1) / 2)
    assert drop_triple_loss(sim, hardest=True).item() == pytest.approx((0.5 + 0.1) / 2)


def test_drop_triple_sum_vs_hardest_and_dropping():
    sim = torch.tensor([[0.5, 0.6, 0.4],
                        [0.0, 0.9, 0.0],
                        [0.1, 0.0, 0.3]])
    # m->t costs (rows): r0: t1 0.3, t2 0.1 | r1: 0, 0 | r2: t0 0.0, t1 0 (0.2+0.1-0.3=0)
    # t->m costs (columns): c0 (pos 0.5): m1 0, m2 0 | c1 (pos 0.9): m0 0 (0.2+0.6-0.9<0), m2 0 | c2 (pos 0.3): m0 0.3, m1 0
    assert drop_triple_loss(sim, hardest=False).item() == pytest.approx((0.3 + 0.1 + 0.3) / 3)
    assert drop_triple_loss(sim, hardest=True).item() == pytest.approx((0.3 + 0.3) / 3)
    # Pair (0, 1) is a false negative by motion similarity: the hardest negative of row 0 becomes t2 (0.1).
    msim = torch.eye(3)
    msim[0, 1] = msim[1, 0] = 0.8
    assert drop_triple_loss(sim, motion_sim=msim, hardest=True).item() == pytest.approx((0.1 + 0.3) / 3)
    # Pair (0, 2) by text similarity as well: row 0 and column 2 have no negatives left.
    tsim = torch.eye(3)
    tsim[0, 2] = tsim[2, 0] = 0.9
    assert drop_triple_loss(sim, msim, tsim, hardest=True).item() == pytest.approx(0.0)
    # Below the thresholds nothing is dropped.
    assert drop_triple_loss(sim, msim * 0.9, tsim * 0.8, hardest=True).item() == pytest.approx((0.3 + 0.3) / 3)


def test_drop_triple_gradients_flow_only_through_violations():
    sim = torch.tensor([[0.9, 0.1], [0.8, 0.5]], requires_grad=True)
    drop_triple_loss(sim, hardest=True).backward()
    g = sim.grad.numpy() * 2
    np.testing.assert_allclose(g, [[-1.0, 0.0], [1.0 + 1.0, -1.0]])


# ---------------------------------------------------------------------------------------------- model
def test_encode_motion_padding_invariant_and_unit_norm():
    model = RetrievalModel.random(TINY, seed=1)
    rng = np.random.default_rng(0)
    windows = [rng.normal(size=(n, 263)).astype(np.float32) for n in (5, 40, 17, 200, 1)]
    batched = model.encode_motion(windows, batch_size=3)
    alone = np.concatenate([model.encode_motion([w]) for w in windows])
    np.testing.assert_allclose(batched, alone, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    bf16 = model.encode_motion(windows, dtype="bf16")
    assert np.all(np.sum(bf16 * batched, axis=1) > 0.95)
    with pytest.raises(ValueError, match="263"):
        model.encode_motion([np.zeros((4, 12), np.float32)])


def test_checkpoint_roundtrip(tmp_path):
    model = RetrievalModel.random(TINY, seed=3)
    model.set_feature_stats(np.full(263, 0.5), np.full(263, 2.0))
    model.save(tmp_path / "m.pt")
    loaded = RetrievalModel.load(tmp_path / "m.pt")
    assert loaded.fingerprint() == model.fingerprint()
    assert RetrievalModel.random(TINY, seed=4).fingerprint() != model.fingerprint()
    x = np.random.default_rng(0).normal(size=(2, 30, 263)).astype(np.float32)
    np.testing.assert_array_equal(loaded.encode_motion(x), model.encode_motion(x))
    assert load_retrieval(tmp_path / "m.pt").fingerprint() == model.fingerprint()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        RetrievalModel.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="no retrieval checkpoint"):
        load_retrieval(tmp_path / "empty_run")


def test_crop_span_rules():
    assert crop_span(3.0, 6.0, 20.0, 2.0, 10.0) == (3.0, 6.0)
    assert crop_span(3.0, 3.5, 20.0, 2.0, 10.0) == pytest.approx((2.25, 4.25))  # widened around the centre
    assert crop_span(0.0, 0.5, 20.0, 2.0, 10.0) == pytest.approx((0.0, 2.0))  # clamped at the start
    assert crop_span(19.5, 20.0, 20.0, 2.0, 10.0) == pytest.approx((18.0, 20.0))  # and at the end
    assert crop_span(0.0, 30.0, 40.0, 2.0, 10.0) == pytest.approx((10.0, 20.0))  # long: centred 10 s
    rng = np.random.default_rng(0)
    for _ in range(100):
        s, e = crop_span(5.0, 25.0, 40.0, 2.0, 10.0, rng)
        assert 5.0 <= s and e <= 25.0 and e - s == pytest.approx(10.0)


def test_ranks_oracle():
    sim = np.array([[0.9, 0.8, 0.1], [0.2, 0.1, 0.3], [0.5, 0.5, 0.4]])
    pos = np.array([[True, False, False], [False, True, False], [False, True, True]])
    # row 0: best pos 0.9 -> rank 1; row 1: pos 0.1, two negatives above -> 3; row 2: best pos 0.5, neg 0.5 ties -> 1
    np.testing.assert_array_equal(_ranks(sim, pos), [1, 3, 1])
    m = DirectionMetrics.from_ranks(np.array([1, 3, 7, 20]))
    assert (m.r1, m.r5, m.r10, m.median_rank) == (0.25, 0.5, 0.75, 5.0)


# ---------------------------------------------------------------------------------------------- training
ACTIONS = [("a person waves", "someone waves a hand"), ("a person jumps", "someone hops up"),
           ("a person kicks", "someone kicks forward")]


def _labelled_motion(i: int, split: str, rng: np.random.Generator) -> Motion:
    n = 200
    f = rng.normal(0, 0.3, (n - 1, 263)).astype(np.float32)
    anns = []
    for k in range(3):
        a = int(rng.integers(0, 3))
        s = k * 3.0 + 0.5
        e = s + float(rng.uniform(1.5, 2.5))
        f[int(s * 20):int(e * 20), a * 20:(a + 1) * 20] += 2.0  # the action's signature channels
        anns.append(Annotation(ACTIONS[a][int(rng.integers(0, 2))], s, e))
    return Motion(name=f"syn/{i}", source="syn", fps=20.0, joints=np.zeros((n, 22, 3), np.float32), features=f,
                  annotations=anns, split=split)


@pytest.fixture(scope="module")
def labelled_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    store = CorpusStore.open(tmp_path_factory.mktemp("train") / "corpus")
    store.add_motions([_labelled_motion(i, "train" if i < 20 else "val" if i < 26 else "test", rng)
                       for i in range(30)])
    yield store
    store.close()


def test_train_selects_on_val_and_resumes_exactly(labelled_store, tmp_path):
    cfg = TrainConfig(model=TINY, epochs=5, batch_size=16, lr=1e-3, warmup_epochs=2)
    untrained = evaluate_retrieval(RetrievalModel.random(TINY, seed=0), labelled_store, "val")
    full = train_retrieval(labelled_store, tmp_path / "full", cfg)
    assert full.epochs_done == 5 and full.resumed_from_epoch == 0 and 1 <= full.best_epoch <= 5
    assert full.best_val.rsum > untrained.rsum + 0.5
    hist = [json.loads(line) for line in (tmp_path / "full" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5] and [h["hardest"] for h in hist] == [False] * 2 + [True] * 3
    assert hist[0]["loss"] > hist[-1]["loss"]
    assert max(h["val"]["rsum"] for h in hist) == pytest.approx(full.best_val.rsum)

    # Interrupted after 3 epochs, then resumed to 5: the same weights as the uninterrupted run.
    train_retrieval(labelled_store, tmp_path / "split", TrainConfig(**{**cfg.__dict__, "epochs": 3}))
    resumed = train_retrieval(labelled_store, tmp_path / "split", cfg)
    assert resumed.resumed_from_epoch == 3
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]["state_dict"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)

    best = load_retrieval(tmp_path / "full")  # best.pt, loaded from the path alone
    again = evaluate_retrieval(best, labelled_store, "val")
    assert again.rsum == pytest.approx(full.best_val.rsum)
    test = evaluate_retrieval(best, labelled_store, "test")
    assert test.n_pairs == 12 and 0.0 <= test.text_to_motion.r1 <= 1.0 and test.motion_to_text.r10 > 0
    with pytest.raises(ValueError, match="another config"):
        train_retrieval(labelled_store, tmp_path / "full", TrainConfig(**{**cfg.__dict__, "lr": 5e-4}))
