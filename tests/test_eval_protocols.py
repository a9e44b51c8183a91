"""eval.protocols: Normal / Assigned localization, corpus recall and DCG, text-text relevance, the
prior-only baseline (fitted on a real corpus store), on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from engine.corpus.types import Annotation, CorpusError, Motion
from eval import metrics, protocols
from eval.runfile import GroundTruth, Run, RunRow, read_run, write_run

# Motion 1 has a walk at 1-3 s and a similar "moving forward" at 9-15 s (the paper's example), a wave at
# 4-5 s; motion 2 has another "walk forward" (never in motion 1's assigned sets).
TRUTH = [
    GroundTruth("A", 1, 1.0, 3.0, "a person walks forward"),
    GroundTruth("B", 1, 9.0, 15.0, "a human moving forward"),
    GroundTruth("C", 1, 4.0, 5.0, "a person waves"),
    GroundTruth("D", 2, 0.0, 2.0, "a person walks forward"),
]
SIM = np.array([
    [1.0, 0.8, 0.3, 1.0],
    [0.8, 1.0, 0.4, 0.8],
    [0.3, 0.4, 1.0, 0.3],
    [1.0, 0.8, 0.3, 1.0],
])


def _row(q, motion_id, start_s, end_s, rank=1, score=1.0):
    return RunRow(q, "", motion_id, start_s, end_s, rank, score)


RUN = [
    _row("A", 1, 9.0, 15.0),  # the other walk: Normal IoU 0, Assigned IoU 1
    _row("A", 1, 1.0, 3.0, rank=2),  # rank 2 never counts for R@1
    _row("B", 1, 9.0, 12.0),  # IoU 0.5
    _row("C", 2, 4.0, 5.0),  # right span, wrong motion -> 0
    # D missing -> 0
    _row("Z", 1, 0.0, 1.0),  # no ground truth: ignored
]


def test_normal_protocol_by_hand():
    s = protocols.evaluate_normal(RUN, TRUTH)
    np.testing.assert_allclose(s.ious, [0.0, 0.5, 0.0, 0.0])
    assert s.n_queries == 4 and s.n_missing == 1
    assert s.recall_at_iou == {0.5: 0.25, 0.7: 0.0, 0.9: 0.0}
    assert s.miou == pytest.approx(0.125)


def test_normal_needs_one_ground_truth_per_query():
    with pytest.raises(CorpusError, match="exactly one ground-truth row per query"):
        protocols.evaluate_normal(RUN, TRUTH + [GroundTruth("A", 1, 0.0, 1.0, "x")])


def test_assigned_sets_threshold_is_strict_and_per_motion():
    sets = protocols.assigned_sets(TRUTH, 0.6, similarity=SIM)
    assert [s.tolist() for s in sets] == [[0, 1], [0, 1], [2], [3]]  # D (motion 2) never joins A
    sets = protocols.assigned_sets(TRUTH, 0.8, similarity=SIM)  # 0.8 does not exceed 0.8
    assert [s.tolist() for s in sets] == [[0], [1], [2], [3]]
    sets = protocols.assigned_sets(TRUTH, 2.0, similarity=SIM)  # the query's own moment always counts
    assert [s.tolist() for s in sets] == [[0], [1], [2], [3]]


def test_assigned_protocol_by_hand():
    s = protocols.evaluate_assigned(RUN, TRUTH, 0.6, similarity=SIM, similarity_model="minilm")
    np.testing.assert_allclose(s.ious, [1.0, 0.5, 0.0, 0.0])  # B's 9-12 vs A's 1-3 stays 0.5
    assert s.recall_at_iou == {0.5: 0.5, 0.7: 0.25, 0.9: 0.25}
    assert s.miou == pytest.approx(0.375)
    assert s.cos_threshold == 0.6 and s.similarity_model == "minilm"
    assert s.mean_gt_per_query == pytest.approx(6 / 4)
    d = s.to_dict()
    assert d["cos_threshold"] == 0.6 and d["paper_threshold"] == pytest.approx(0.8)


def test_assigned_embeddings_match_similarity_matrix_oracle():
    rng = np.random.default_rng(3)
    n = 40
    truth = [GroundTruth(f"q{i}", int(rng.integers(0, 5)), float(i % 7), float(i % 7) + 2.0, f"t{i}")
             for i in range(n)]
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    full = emb @ emb.T  # (n, n)
    a = protocols.assigned_sets(truth, 0.3, embeddings=emb)
    b = protocols.assigned_sets(truth, 0.3, similarity=full)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # brute force: same motion and cos > 0.3, or itself
    for q in range(n):
        want = [g for g in range(n) if truth[g].motion_id == truth[q].motion_id and (g == q or full[q, g] > 0.3)]
        assert a[q].tolist() == want
    assert sum(len(x) for x in a) > n  # the case is not trivial


def test_assigned_input_errors():
    with pytest.raises(CorpusError, match="exactly one"):
        protocols.assigned_sets(TRUTH, 0.6)
    with pytest.raises(CorpusError, match=r"\(4, 4\)"):
        protocols.assigned_sets(TRUTH, 0.6, similarity=SIM[:3, :3])
    with pytest.raises(CorpusError, match="L2-normalised"):
        protocols.assigned_sets(TRUTH, 0.6, embeddings=np.ones((4, 3)))


def test_paper_thresholds_as_cosines():
    assert protocols.cos_from_paper_threshold(0.995) == pytest.approx(protocols.BABEL_ASSIGNED_COS)
    assert protocols.cos_from_paper_threshold(0.8) == pytest.approx(protocols.HUMANML3D_ASSIGNED_COS)


def test_assigned_with_real_sentence_encoder():
    """MiniLM similarities put "moving forward" in the walk's set at the HumanML3D threshold, not the wave."""
    from engine.corpus.text import sentence_encoder

    enc = sentence_encoder()
    emb = enc.encode([g.text for g in TRUTH])
    sets = protocols.assigned_sets(TRUTH, protocols.HUMANML3D_ASSIGNED_COS, embeddings=emb)
    assert sets[0].tolist() == [0, 1] and sets[2].tolist() == [2]
    res = protocols.evaluate_tslm(Run(RUN, {"method": "toy"}), TRUTH, cos_threshold=0.6, embeddings=emb,
                                  similarity_model="all-MiniLM-L6-v2")
    assert res.method == "toy"
    assert res.normal.miou == pytest.approx(0.125) and res.assigned.miou == pytest.approx(0.375)


# ----------------------------------------------------------------------------------- corpus retrieval
CMR_TRUTH = [
    GroundTruth("q1", 10, 0.0, 2.0, "kick"),
    GroundTruth("q1", 11, 5.0, 6.0, "kick"),  # q1 has two GT moments
    GroundTruth("q2", 12, 1.0, 3.0, "wave"),
    GroundTruth("q3", 13, 0.0, 1.0, "sit"),  # missing from the run
]
CMR_RUN = [
    _row("q1", 10, 0.0, 2.0, rank=1),  # hits GT 1
    _row("q1", 10, 0.0, 1.9, rank=2),  # hits GT 1 again (IoU 0.95): credited once
    _row("q1", 12, 5.0, 6.0, rank=3),  # GT 2's span on the wrong motion
    _row("q1", 11, 5.0, 6.6, rank=4),  # GT 2 at IoU 1/1.6 = 0.625: hit at 0.5 only
    _row("q2", 12, 0.0, 2.0, rank=1),  # IoU 1/3
    _row("q2", 12, 1.0, 2.5, rank=2),  # IoU 0.75
    _row("qx", 10, 0.0, 2.0, rank=1),  # no ground truth: ignored
]


def test_cmr_recall_by_hand():
    run = Run(CMR_RUN, meta={"k": 100, "lam": 5})
    res = protocols.evaluate_cmr(run, CMR_TRUTH, n_values=(1, 2, 4, 10), iou_thresholds=(0.5, 0.7))
    assert res.setting == "k=100, λ=5" and res.k == 100 and res.lam == 5.0
    assert res.n_queries == 3 and res.n_missing == 1
    # per query recall at IoU 0.5: q1 [1/2, 1/2, 1, 1], q2 [0, 1, 1, 1], q3 zeros
    assert res.recall[0.5] == pytest.approx({1: 0.5 / 3, 2: 1.5 / 3, 4: 2 / 3, 10: 2 / 3})
    # IoU 0.7: q1 never gets GT 2
    assert res.recall[0.7] == pytest.approx({1: 0.5 / 3, 2: 1.5 / 3, 4: 1.5 / 3, 10: 1.5 / 3})
    assert res.hit_rate[0.5] == pytest.approx({1: 1 / 3, 2: 2 / 3, 4: 2 / 3, 10: 2 / 3})
    assert res.recall_at(4, 0.5) == pytest.approx(2 / 3)
    assert res.mean_gt_per_query == pytest.approx(4 / 3)


def test_cmr_dcg_with_given_relevances():
    run = Run(CMR_RUN)
    rel = protocols.relevance_from_rows("score", run, lambda r: 1.0 if r.rank % 2 else 0.5)
    res = protocols.evaluate_cmr(run, CMR_TRUTH, n_values=(1, 2, 10), relevances=[rel], setting="toy")
    d = res.dcg[0]
    q1 = 1 + 0.5 / np.log2(3) + 1 / 2 + 0.5 / np.log2(5)
    q2 = 1 + 0.5 / np.log2(3)
    assert d.relevance == "score" and res.setting == "toy"
    assert d.dcg[1] == pytest.approx(2 / 3)  # q3 (missing) counts 0
    assert d.dcg[10] == pytest.approx((q1 + q2) / 3)
    assert d.ideal[10] == pytest.approx(metrics.ideal_dcg(10))
    assert d.ndcg[10] == pytest.approx((q1 + q2) / 3 / metrics.ideal_dcg(10))
    bad = protocols.RunRelevance("bad", {"q1": np.ones(2)})
    with pytest.raises(CorpusError, match="2 relevances for 4 run rows"):
        protocols.evaluate_cmr(run, CMR_TRUTH, relevances=[bad])


def test_text_text_relevance_by_hand():
    labels = {
        10: [Annotation("kick", 0.0, 2.0), Annotation("wave", 1.5, 10.0)],
        11: [Annotation("punch", 5.0, 6.0)],
    }
    vocab = {"kick": [1, 0, 0], "wave": [0, 1, 0], "punch": [0.6, 0.8, 0], "sit": [-1, 0, 0]}

    def encode(texts):
        return np.array([vocab[t] for t in texts], dtype=np.float32)

    rows = [
        RunRow("q", "kick", 10, 0.0, 2.0, 1, 1.0),  # kick covers it fully; wave covers 0.5 s of 2 s
        RunRow("q", "kick", 10, 1.9, 9.0, 2, 0.9),  # only wave counts -> cos 0
        RunRow("q", "kick", 11, 5.5, 8.0, 3, 0.8),  # punch: 0.5 of its 1 s covered -> 0.6
        RunRow("q", "kick", 12, 0.0, 1.0, 4, 0.7),  # no labels on the motion
        RunRow("s", "sit", 10, 0.0, 2.0, 1, 0.5),  # negative cosine -> 0
    ]
    rel = protocols.text_text_relevance(rows, labels, encode)
    np.testing.assert_allclose(rel.by_query["q"], [1.0, 0.0, 0.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(rel.by_query["s"], [0.0])
    strict = protocols.text_text_relevance(rows, labels, encode, min_cover=0.6)
    np.testing.assert_allclose(strict.by_query["q"], [1.0, 0.0, 0.0, 0.0], atol=1e-6)
    from_truth = protocols.labels_by_motion(CMR_TRUTH)
    assert [a.text for a in from_truth[10]] == ["kick"] and from_truth[11][0].start_s == 5.0


# ----------------------------------------------------------------------------- baseline and ground truth
def _motion(name, n_frames, annotations, split="train"):
    rng = np.random.default_rng(len(name))
    return Motion(name=name, source="test", fps=20.0, joints=rng.normal(size=(n_frames, 22, 3)).astype(np.float32),
                  features=rng.normal(size=(n_frames - 1, 263)).astype(np.float32),
                  annotations=annotations, split=split)


def test_prior_span_by_hand():
    # durations 10 s and 4 s; relative spans (0.1, 0.5), (0.5, 1.0), (0.0, 0.5) -> mean (0.2, 0.6667)
    ms = [_motion("a", 200, [Annotation("x", 1.0, 5.0), Annotation("y", 5.0, 10.0)]),
          _motion("b", 80, [Annotation("z", 0.0, 2.0)])]
    prior = protocols.PriorSpan.fit(ms)
    assert prior.n_annotations == 3
    assert prior.rel_start == pytest.approx(0.2) and prior.rel_end == pytest.approx(2 / 3)
    np.testing.assert_allclose(prior.spans_s([10.0, 3.0]), [[2.0, 20 / 3], [0.6, 2.0]])
    with pytest.raises(CorpusError):
        protocols.PriorSpan.fit([])


def test_prior_baseline_end_to_end_on_a_store(tmp_path):
    from engine.corpus.store import CorpusStore

    train = [_motion(f"t{i}", 200, [Annotation("walk", 2.0, 6.0, seg_id="s0")]) for i in range(3)]
    test = [_motion("e0", 100, [Annotation("walk", 1.0, 3.0, seg_id="s0"), Annotation("jump", 4.0, 5.0)],
                    split="test")]
    with CorpusStore.open(tmp_path / "corpus") as store:
        store.add_motions(train + test)
        prior = protocols.PriorSpan.fit(store.iter_motions(split="train", arrays=False))
        truth = protocols.ground_truth_from_motions(store.iter_motions(split="test", arrays=False))
        durations = {row.motion_id: row.duration_s for row in store.motion_table()}
    assert prior.rel_start == pytest.approx(0.2) and prior.rel_end == pytest.approx(0.6)
    mid = truth[0].motion_id
    assert [(g.query_id, g.text) for g in truth] == [(f"{mid}:s0", "walk"), (f"{mid}:1", "jump")]
    rows = protocols.prior_run(truth, durations, prior)  # both queries predict (1, 3) s on the 5 s motion
    assert [(r.start_s, r.end_s) for r in rows] == [pytest.approx((1.0, 3.0))] * 2
    run = read_run(write_run(tmp_path / "prior.jsonl", rows, meta={"method": "prior"}))
    res = protocols.evaluate_tslm(run, truth)
    assert res.method == "prior"
    np.testing.assert_allclose(res.normal.ious, [1.0, 0.0], atol=1e-9)
    with pytest.raises(CorpusError, match="no duration"):
        protocols.prior_run(truth, {}, prior)


def test_ground_truth_from_motions_errors():
    m = _motion("a", 40, [Annotation("x", 1.0, 0.5)])
    m.motion_id = 3
    with pytest.raises(CorpusError, match="annotation 0"):
        protocols.ground_truth_from_motions([m])
    m.motion_id = None
    with pytest.raises(CorpusError, match="no motion_id"):
        protocols.ground_truth_from_motions([m])
