"""eval.metrics on hand-computed cases: temporal IoU edge cases, R@1 / mIoU, corpus recall, DCG."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.corpus.types import CorpusError
from eval import metrics


def iou1(a, b) -> float:
    return float(metrics.temporal_iou([a], [b])[0, 0])


def test_iou_hand_cases():
    assert iou1((0, 4), (0, 4)) == 1.0
    assert iou1((0, 4), (2, 6)) == pytest.approx(2 / 6)
    assert iou1((0, 10), (2, 4)) == pytest.approx(0.2)  # nested
    assert iou1((2, 4), (0, 10)) == pytest.approx(0.2)  # nested, other way round
    assert iou1((0, 1), (1, 2)) == 0.0  # touching
    assert iou1((0, 1), (3, 5)) == 0.0  # disjoint
    assert iou1((0.5, 1.5), (1.0, 3.0)) == pytest.approx(0.5 / 2.5)


def test_iou_zero_length_spans():
    assert iou1((2, 2), (0, 4)) == 0.0  # a point inside a span
    assert iou1((2, 2), (2, 2)) == 0.0  # two identical points: union 0 -> 0, never a hit
    assert iou1((0, 4), (4, 4)) == 0.0


@pytest.mark.parametrize("bad", [[(3.0, 1.0)], [(0.0, float("nan"))], [(float("-inf"), 1.0)]])
def test_iou_rejects_reversed_and_nonfinite(bad):
    with pytest.raises(CorpusError) as e:
        metrics.temporal_iou([(0.0, 1.0)] + bad, [(0.0, 1.0)])
    assert "a[1]" in str(e.value)
    with pytest.raises(CorpusError):
        metrics.temporal_iou_paired(bad, [(0.0, 1.0)])


def test_iou_shape_errors():
    with pytest.raises(CorpusError):
        metrics.temporal_iou(np.zeros((3, 3)), [(0, 1)])
    with pytest.raises(CorpusError):
        metrics.temporal_iou_paired([(0, 1), (1, 2)], [(0, 1)])


def test_iou_pairwise_matches_loop_oracle():
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 10, size=(17, 2)), axis=1)
    b = np.sort(rng.uniform(0, 10, size=(11, 2)), axis=1)
    b[0] = a[0]  # one exact match
    b[1] = (a[1, 1], a[1, 1] + 1.0)  # one touching pair
    got = metrics.temporal_iou(a, b)
    assert got.shape == (17, 11)
    for i in range(17):
        for j in range(11):
            inter = max(0.0, min(a[i, 1], b[j, 1]) - max(a[i, 0], b[j, 0]))
            union = (a[i, 1] - a[i, 0]) + (b[j, 1] - b[j, 0]) - inter
            assert got[i, j] == pytest.approx(inter / union if union > 0 else 0.0, abs=1e-12)
    assert got[0, 0] == pytest.approx(1.0) and got[1, 1] == 0.0
    np.testing.assert_allclose(metrics.temporal_iou(b, a), got.T)
    np.testing.assert_allclose(metrics.temporal_iou_paired(a[:11], b), np.diag(got[:11]))


def test_best_iou_over_sets():
    pred = [(9, 15), (0, 2), (5, 6)]
    sets = [np.array([(1, 3), (9, 15)]), np.array([(1, 3)]), np.zeros((0, 2))]
    np.testing.assert_allclose(metrics.best_iou_over_sets(pred, sets), [1.0, 1 / 3, 0.0])
    with pytest.raises(CorpusError):
        metrics.best_iou_over_sets(pred, sets[:2])
    with pytest.raises(CorpusError):
        metrics.best_iou_over_sets(pred, [np.array([(3, 1)]), sets[1], sets[2]])


def test_localization_scores_by_hand():
    s = metrics.localization_scores(np.array([1.0, 0.7, 0.69, 0.5, 0.0]))
    assert s.n_queries == 5
    assert s.recall_at_iou == {0.5: pytest.approx(0.8), 0.7: pytest.approx(0.4), 0.9: pytest.approx(0.2)}
    assert s.miou == pytest.approx(2.89 / 5)
    assert metrics.localization_scores(np.zeros(0)).miou == 0.0
    with pytest.raises(CorpusError):
        metrics.localization_scores(np.array([1.2]))


def test_first_hit_ranks_credits_each_ground_truth_once():
    # one query, two GT moments on motion 7; ranks 1-3 all hit GT A (duplicates), rank 4 is GT B's span
    # on the wrong motion, rank 5 hits GT B.
    pm = np.array([7, 7, 7, 8, 7])
    ps = np.array([(0, 2), (0.1, 2), (0, 2.1), (10, 12), (10, 12)])
    gm = np.array([7, 7])
    gs = np.array([(0, 2), (10, 12)])
    fr = metrics.first_hit_ranks(pm, ps, gm, gs, 0.5)
    np.testing.assert_array_equal(fr, [1, 5])
    assert metrics.recall_at_n(fr, 1) == 0.5  # three hits on A count once
    assert metrics.recall_at_n(fr, 4) == 0.5
    assert metrics.recall_at_n(fr, 5) == 1.0
    # at IoU 0.96 rank 2 ((0.1, 2): IoU 0.95) no longer counts, rank 3 (IoU 2/2.1 = 0.952) neither
    fr = metrics.first_hit_ranks(pm, ps, gm, gs, 0.96)
    np.testing.assert_array_equal(fr, [1, 5])
    fr = metrics.first_hit_ranks(pm[1:], ps[1:], gm, gs, 0.96)
    np.testing.assert_array_equal(fr, [np.inf, 4])
    # empty ranked list: nothing hit
    assert metrics.recall_at_n(metrics.first_hit_ranks(pm[:0], ps[:0], gm, gs, 0.5), 10) == 0.0


def test_one_prediction_may_hit_near_duplicate_ground_truths():
    fr = metrics.first_hit_ranks(np.array([1]), np.array([(0, 10)]), np.array([1, 1]),
                                 np.array([(0, 10), (0.5, 10)]), 0.7)
    np.testing.assert_array_equal(fr, [1, 1])


def test_dcg_by_hand():
    rel = [3, 2, 3, 0, 1, 2]
    want = 3 + 2 / math.log2(3) + 3 / 2 + 0 + 1 / math.log2(6) + 2 / math.log2(7)
    assert metrics.dcg_at_n(rel, 6) == pytest.approx(want)
    assert want == pytest.approx(6.861, abs=1e-3)
    assert metrics.dcg_at_n(rel, 2) == pytest.approx(3 + 2 / math.log2(3))
    assert metrics.dcg_at_n(rel, 100) == pytest.approx(want)  # a short list adds nothing after its end
    ideal = metrics.dcg_at_n([3, 3, 3, 2, 2, 2], 6)
    assert metrics.ndcg_at_n(rel, 6, ideal_relevances=[3, 2, 3, 0, 1, 2, 3, 2]) == pytest.approx(want / ideal)
    assert metrics.ndcg_at_n([1.0] * 10, 10) == pytest.approx(1.0)
    assert metrics.ndcg_at_n([0.5] * 10, 10) == pytest.approx(0.5)
    with pytest.raises(CorpusError):
        metrics.dcg_at_n(rel, 0)


def test_ideal_dcg_matches_paper_table_viii():
    assert round(metrics.ideal_dcg(10), 2) == 4.54
    assert round(metrics.ideal_dcg(50), 2) == 12.90
    assert round(metrics.ideal_dcg(100), 2) == 20.94
