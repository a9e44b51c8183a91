"""eval.report: markdown tables laid out like the paper's Tables II and VIII, metrics JSON round trip."""

from __future__ import annotations

import json

import pytest

from engine.corpus.types import CorpusError
from eval import report
from eval.metrics import LocalizationScores, ideal_dcg
from eval.protocols import CmrResult, DcgScores, TslmResult


def _loc(protocol, r5, r7, r9, miou, **kw):
    return LocalizationScores(protocol=protocol, n_queries=100, recall_at_iou={0.5: r5, 0.7: r7, 0.9: r9},
                              miou=miou, **kw)


TSLM = [
    TslmResult("MLPBase", _loc("normal", 0.2852, 0.2120, 0.0890, 0.2851),
               _loc("assigned", 0.4242, 0.3176, 0.1396, 0.4297, cos_threshold=0.99, similarity_model="minilm"),
               dataset="BABEL"),
    TslmResult("MLP", _loc("normal", 0.3322, 0.2579, 0.1139, 0.3119),
               _loc("assigned", 0.5242, 0.4095, 0.1881, 0.4975, cos_threshold=0.99, similarity_model="minilm"),
               dataset="BABEL"),
    TslmResult("prior", _loc("normal", 0.10, 0.05, 0.01, 0.15), None, dataset="BABEL"),
]


def _cmr(setting, k, lam, r10, dcg10):
    ns = (10, 50, 100)
    return CmrResult(
        setting=setting, n_queries=50, k=k, lam=lam,
        recall={0.5: {10: r10, 50: 0.0796, 100: 0.1034}, 0.7: {10: 0.0265, 50: 0.0638, 100: 0.0822}},
        hit_rate={0.5: {10: r10, 50: 0.0796, 100: 0.1034}, 0.7: {10: 0.0265, 50: 0.0638, 100: 0.0822}},
        dcg=[DcgScores("Text-Motion", {10: dcg10, 50: 4.48, 100: 7.11}, {n: 0.3 for n in ns},
                       {n: ideal_dcg(n) for n in ns}),
             DcgScores("Text-Text", {10: 2.64, 50: 7.35, 100: 11.83}, {n: 0.5 for n in ns},
                       {n: ideal_dcg(n) for n in ns})],
    )


CMR = [_cmr("k=100, λ=5", 100, 5.0, 0.0333, 1.66), _cmr("k=200, λ=10", 200, 10.0, 0.0369, 1.78)]


def test_tslm_table_stacked_like_table_ii():
    md = report.tslm_table(TSLM, title="BABEL")
    lines = md.splitlines()
    assert lines[2] == "| Method | IoU@0.5 | IoU@0.7 | IoU@0.9 | mIoU |"
    assert "| *(a) Normal* |" in md and "| *(b) Assigned (cos > 0.99, minilm)* |" in md
    normal = lines[lines.index("| *(a) Normal* |  |  |  |  |") + 1:][:3]
    assert normal[0] == "| MLPBase | <u>28.52</u> | <u>21.20</u> | <u>8.90</u> | <u>28.51</u> |"
    assert normal[1] == "| MLP | **33.22** | **25.79** | **11.39** | **31.19** |"
    assert normal[2] == "| prior | 10.00 | 5.00 | 1.00 | 15.00 |"
    assert lines[-1] == "| prior | – | – | – | – |"  # no Assigned scores for the prior


def test_tslm_table_wide_and_errors():
    md = report.tslm_table(TSLM[:2], layout="wide", highlight=False)
    assert "| Method | Normal IoU@0.5 | Normal IoU@0.7 | Normal IoU@0.9 | Normal mIoU | Assigned IoU@0.5 |" in md
    assert "| MLP | 33.22 | 25.79 | 11.39 | 31.19 | 52.42 | 40.95 | 18.81 | 49.75 |" in md
    with pytest.raises(CorpusError):
        report.tslm_table(TSLM, layout="diagonal")


def test_cmr_table_like_table_viii():
    md = report.cmr_table(CMR)
    assert "| Hyperparameter | IoU@0.5 n=10 | IoU@0.5 n=50 | IoU@0.5 n=100 | IoU@0.7 n=10 |" in md
    assert "| k=100, λ=5 | 3.33 | 7.96 | 10.34 | 2.65 | 6.38 | 8.22 |" in md
    assert "| Ideal DCG | 4.54 | 12.90 | 20.94 | 4.54 | 12.90 | 20.94 |" in md
    assert "| k=200, λ=10 | 1.78 | 4.48 | 7.11 | 2.64 | 7.35 | 11.83 |" in md
    assert "| k=100, λ=5 | 30.00 | 30.00 | 30.00 | 50.00 | 50.00 | 50.00 |" in md  # NDCG in percent


def test_metrics_json_round_trip(tmp_path):
    results = TSLM + CMR
    p = report.write_metrics_json(tmp_path / "m" / "metrics.json", results, meta={"run": "run.jsonl"})
    raw = json.loads(p.read_text(encoding="utf-8"))
    assert raw["meta"] == {"run": "run.jsonl"} and raw["results"][0]["assigned"]["paper_threshold"] == 0.995
    back = report.read_metrics_json(p)
    assert back == results
    assert report.markdown_report(back) == report.markdown_report(results)
    md = report.markdown_report(results, title="Eval")
    assert md.startswith("# Eval") and "TSLM on BABEL" in md and "Corpus-level moment retrieval" in md


def test_read_metrics_json_errors(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"version": 1, "results": [{"kind": "other"}]}', encoding="utf-8")
    with pytest.raises(CorpusError, match="unknown kind"):
        report.read_metrics_json(p)
    p.write_text('{"version": 1, "results": [{"kind": "tslm"}]}', encoding="utf-8")
    with pytest.raises(CorpusError, match="malformed result"):
        report.read_metrics_json(p)
    p.write_text("not json", encoding="utf-8")
    with pytest.raises(CorpusError, match="cannot read"):
        report.read_metrics_json(p)
