"""Label-match relevance (eval/labelmatch.py) against a brute-force re-implementation on seeded data,
plus the hand-checkable cases: duplicates credited once, short lists, unlabelled queries, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.labelmatch import (
    REPORT_METRICS,
    LabelledSpan,
    compare,
    compare_reports,
    evaluate_label_match,
    paired_bootstrap,
)
from eval.runfile import RunRow


def _row(q, m, s, e, rank):
    return RunRow(q, "text", m, s, e, rank, 1.0 / rank)


def _brute(rows_by_q, labels, spans, n=10, map_n=100, iou=0.5):
    out = {}
    for q, lab in labels.items():
        pool = [(s.motion_id, s.start_s, s.end_s) for s in spans if s.label == lab]
        if not pool:
            continue
        credited = set()
        rel = []
        for r in sorted(rows_by_q.get(q, []), key=lambda x: x.rank):
            best, best_iou = None, -1.0
            for j, (m, a, b) in enumerate(pool):
                if m != r.motion_id or j in credited:
                    continue
                inter = max(0.0, min(b, r.end_s) - max(a, r.start_s))
                union = (b - a) + (r.end_s - r.start_s) - inter
                v = inter / union if union > 0 else 0.0
                if v >= iou and v > best_iou:
                    best, best_iou = j, v
            if best is not None:
                credited.add(best)
            rel.append(1.0 if best is not None else 0.0)
        rel = np.array(rel + [0.0] * max(0, map_n - len(rel)))
        p = rel[:n].sum() / n
        dcg = sum(rel[i] / math.log2(i + 2) for i in range(n))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(n, len(pool))))
        hits = [i for i in range(map_n) if rel[i]]
        ap = sum(rel[: i + 1].sum() / (i + 1) for i in hits) / min(map_n, len(pool)) if hits else 0.0
        out[q] = (p, dcg / idcg, ap)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_label_match_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels_all = ["walk", "kick", "wave"]
    spans = []
    for m in range(8):
        for _ in range(rng.integers(1, 5)):
            a = float(rng.uniform(0, 50))
            spans.append(LabelledSpan(m, a, a + float(rng.uniform(1, 6)), str(rng.choice(labels_all))))
    labels = {f"q{i}": str(rng.choice(labels_all + ["absent"])) for i in range(12)}
    rows = []
    for q in labels:
        for rank in range(1, int(rng.integers(0, 30)) + 1):
            if rng.random() < 0.5 and spans:  # near a real annotation (maybe a duplicate)
                s = spans[int(rng.integers(len(spans)))]
                d = float(rng.normal(0, 0.7))
                rows.append(_row(q, s.motion_id, s.start_s + d, s.end_s + d, rank))
            else:
                a = float(rng.uniform(0, 50))
                rows.append(_row(q, int(rng.integers(8)), a, a + 3.0, rank))
    res = evaluate_label_match(rows, labels, spans)
    by_q = {}
    for r in rows:
        by_q.setdefault(r.query_id, []).append(r)
    want = _brute(by_q, labels, spans)
    assert set(res.per_query) == set(want)
    for q, (p, ndcg, ap) in want.items():
        got = res.per_query[q]
        assert got["p@10"] == pytest.approx(p) and got["ndcg@10"] == pytest.approx(ndcg)
        assert got["ap@100"] == pytest.approx(ap)
    assert res.n_unlabelled == sum(1 for lab in labels.values() if lab == "absent")


def test_duplicates_are_credited_once_and_short_lists_count_misses():
    spans = [LabelledSpan(1, 10.0, 14.0, "kick"), LabelledSpan(2, 0.0, 4.0, "kick")]
    rows = [_row("q", 1, 10.0, 14.0, 1), _row("q", 1, 10.2, 14.1, 2), _row("q", 2, 0.5, 4.0, 3)]
    res = evaluate_label_match(rows, {"q": "kick"}, spans)
    pq = res.per_query["q"]
    assert pq["p@10"] == pytest.approx(0.2)  # two distinct annotations found, the duplicate earns nothing
    assert pq["ap@100"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    ideal = 1 + 1 / math.log2(3)
    assert pq["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / ideal)


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    a = rng.random(300)
    mean, lo, hi = paired_bootstrap(a, a)
    assert mean == lo == hi == 0.0
    mean, lo, hi = paired_bootstrap(a + 0.1, a + rng.normal(0, 0.05, 300))
    assert lo > 0 and lo < mean < hi
    spans = [LabelledSpan(1, 0.0, 4.0, "walk")]
    good = evaluate_label_match([_row("q", 1, 0.0, 4.0, 1)], {"q": "walk"}, spans, setting="good")
    bad = evaluate_label_match([_row("q", 1, 20.0, 24.0, 1)], {"q": "walk"}, spans, setting="bad")
    d = compare(good, bad)
    assert (d.mean, d.a, d.b, d.n_queries) == (pytest.approx(0.1), "good", "bad", 1)


def test_cmr_eval_reports_label_match_for_split_and_user_queries(pipeline, tmp_path):
    import json

    from engine.evaluate import cmr_eval
    from eval.runfile import read_run

    _, index, loc_run = pipeline
    res = cmr_eval(index, tmp_path / "split", split="train", ks=(6,), lams=(5.0,), limit=10, max_queries=6,
                   localizer=loc_run, r_modes=("moment",), window_sizes_s=(2.0,))
    assert res.meta["label_key"] == "action"
    assert [r.setting for r in res.label_results] == [r.setting for r in res.results]
    assert all(r.n_queries == 6 and 0 <= r.precision[10] <= 1 and 0 <= r.map_at <= 1 for r in res.label_results)
    labels = json.loads((tmp_path / "split" / "query-labels.json").read_text())["labels"]
    assert len(labels) == 6
    # Every label of a split query is the action of its own annotation.
    from engine.corpus.store import CorpusStore

    store = CorpusStore.open(json.loads(next(index.glob("versions/*/manifest.json")).read_text())["corpus"]["dir"],
                             create=False)
    for qid, label in labels.items():
        mid, seg = qid.split(":")
        assert label in {a.extra["action"] for a in store.annotations(int(mid))}
    assert {(d.a, d.b, d.metric) for d in res.comparisons} >= {
        ("MLP k=6, λ=5, moment r", "Retrieval only (best 10 s chunk)", "p@10")}

    qf = tmp_path / "mine.tsv"
    qf.write_text("# my studio's words\nlabel\ttext\nwave_right\tguy says hi with his right hand\n"
                  "jump_in_place\thops up and down\n")
    res = cmr_eval(index, tmp_path / "user", ks=(6,), lams=(5.0,), limit=10, localizer=loc_run,
                   r_modes=("moment",), sliding_window=False, queries_file=qf)
    assert res.results == [] and len(res.label_results) == 2 and res.label_results[0].n_queries <= 2
    assert read_run(res.runs["mlp-k6-lam5-rmoment"]).by_query().keys() == {"u1", "u2"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nx\ty\n")
    with pytest.raises(ValueError, match="label<TAB>text"):
        cmr_eval(index, tmp_path / "bad", ks=(6,), lams=(5.0,), localizer=loc_run, queries_file=bad)


def _report(per_query: dict[str, dict[str, float]], setting: str = "engine, fused score (λ=1 γ=0.5 μ=10)") -> dict:
    return {"sets": {"q.tsv": {"results": [{"setting": setting, "per_query": per_query},
                                           {"setting": "sliding windows k=200", "per_query": per_query}]}}}


def test_compare_reports_pairs_queries_across_two_models():
    rng = np.random.default_rng(0)
    qids = [f"u{i}" for i in range(40)]
    old = {q: {m: float(rng.integers(0, 11)) / 10 for m in REPORT_METRICS} for q in qids}
    new = {q: {m: min(1.0, v + 0.1 * (i % 2)) for m, v in old[q].items()} for i, q in enumerate(qids)}
    rows = compare_reports(_report(new, "engine, fused score (λ=2 γ=1 μ=5)"), _report(old))
    assert [r["metric"] for r in rows] == list(REPORT_METRICS)
    for r in rows:
        d = np.array([new[q][r["metric"]] - old[q][r["metric"]] for q in qids])
        assert r["diff"] == pytest.approx(d.mean()) and r["lo"] <= r["diff"] <= r["hi"]
        assert r["new"] == pytest.approx(np.mean([new[q][r["metric"]] for q in qids])) and r["n_queries"] == 40
    assert compare_reports(_report(old), _report(old), prefix="sliding")[0]["diff"] == 0.0
    with pytest.raises(ValueError, match="different queries"):
        compare_reports(_report({q: new[q] for q in qids[:30]}), _report(old))
    with pytest.raises(KeyError, match="no method"):
        compare_reports(_report(new), _report(old), prefix="retrieval only")
    with pytest.raises(KeyError, match="not in both"):
        compare_reports(_report(new), _report(old), sets=["other.tsv"])
    stale = {"sets": {"q.tsv": {"results": [{"setting": "engine, fused"}]}}}
    with pytest.raises(KeyError, match="per-query"):
        compare_reports(stale, _report(old))
