"""eval.runfile: JSONL / TSV round trips, metadata, and clear errors on bad rows."""

from __future__ import annotations

import json

import pytest

from engine.corpus.types import CorpusError, Moment
from eval.runfile import (
    GroundTruth,
    RunRow,
    read_ground_truth,
    read_run,
    rows_from_moments,
    write_ground_truth,
    write_run,
)

ROWS = [
    RunRow("q1", 'a person "walks"\tforward', 3, 0.1, 2.35, 1, 0.9, 0.5, 0.71),
    RunRow("q1", 'a person "walks"\tforward', 5, 1.0 / 3.0, 4.0, 2, 0.25, 0.125, None),
    RunRow("q2", "jumps,\nthen lands", 3, 0.0, 0.0, 1, -1e-9, None, None),
]
TRUTH = [
    GroundTruth("q1", 3, 0.0, 2.5, 'a person "walks"\tforward'),
    GroundTruth("q1", 4, 1.0, 2.0, 'a person "walks"\tforward'),
    GroundTruth("q2", 3, 0.2, 0.9, "jumps,\nthen lands"),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
def test_run_round_trip(tmp_path, suffix):
    meta = {"method": "MLP", "k": 100, "lam": 5.0}
    p = write_run(tmp_path / f"run{suffix}", ROWS, meta=meta)
    run = read_run(p)
    assert run.rows == ROWS  # exact floats, None kept, tabs / quotes / newlines in the text kept
    assert run.meta == meta
    by_q = run.by_query()
    assert list(by_q) == ["q1", "q2"] and [r.rank for r in by_q["q1"]] == [1, 2]


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
def test_run_without_meta_and_truth_round_trip(tmp_path, suffix):
    run = read_run(write_run(tmp_path / f"r{suffix}", ROWS))
    assert run.rows == ROWS and run.meta == {}
    assert read_ground_truth(write_ground_truth(tmp_path / f"gt{suffix}", TRUTH)) == TRUTH


def test_by_query_sorts_by_rank(tmp_path):
    rows = [RunRow("q", "x", 1, 0, 1, 2, 0.1), RunRow("q", "x", 1, 1, 2, 1, 0.2)]
    assert [r.rank for r in read_run(write_run(tmp_path / "r.jsonl", rows)).by_query()["q"]] == [1, 2]


def test_rows_from_moments():
    ms = [Moment(motion_id=4, source="babel", start_s=1.0, end_s=2.0, score=0.8, p_se=0.4, r=0.6),
          Moment(motion_id=2, source="babel", start_s=0.0, end_s=1.5, score=0.5, p_se=0.3, r=0.5)]
    rows = rows_from_moments("q9", "walk", ms)
    assert rows == [RunRow("q9", "walk", 4, 1.0, 2.0, 1, 0.8, 0.4, 0.6), RunRow("q9", "walk", 2, 0.0, 1.5, 2, 0.5, 0.3, 0.5)]


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rec(**kw):
    d = {"query_id": "q1", "query": "walk", "motion_id": 1, "start_s": 0.0, "end_s": 1.0, "rank": 1,
         "score": 0.5, "p_se": None, "r": None}
    d.update(kw)
    return json.dumps(d)


@pytest.mark.parametrize("bad, needle", [
    (_rec(start_s=2.0, end_s=1.0), "reversed span"),
    (_rec(rank=0), "rank must be >= 1"),
    (_rec(motion_id="seven"), "motion_id must be an integer"),
    (_rec(motion_id=1.5), "motion_id must be an integer"),
    (_rec(score="NaN"), "score must be finite"),
    (json.dumps({"query_id": "q1", "query": "walk"}), "missing field 'motion_id'"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
])
def test_read_run_errors_name_file_and_line(tmp_path, bad, needle):
    p = _write_lines(tmp_path / "run.jsonl", [_rec(rank=1, query_id="q0"), bad])
    with pytest.raises(CorpusError) as e:
        read_run(p)
    assert needle in str(e.value)
    assert f"{p}:2" in str(e.value)


def test_duplicate_rank_is_an_error(tmp_path):
    p = _write_lines(tmp_path / "run.jsonl", [_rec(), _rec(start_s=0.5)])
    with pytest.raises(CorpusError, match="duplicate rank 1 for query 'q1' \\(first on line 1\\)"):
        read_run(p)
    with pytest.raises(CorpusError, match="duplicate rank"):
        write_run(tmp_path / "w.jsonl", [ROWS[0], ROWS[0]])


def test_tsv_errors(tmp_path):
    p = tmp_path / "run.tsv"
    p.write_text("query_id\tquery\tmotion_id\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="header lacks column"):
        read_run(p)
    write_run(p, ROWS[:1])
    text = p.read_text(encoding="utf-8").rstrip("\n") + "\textra\n"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(CorpusError, match=f"{p}:2: 10 cells but the header has 9"):
        read_run(p)
    (tmp_path / "empty.tsv").write_text("", encoding="utf-8")
    with pytest.raises(CorpusError, match="no header"):
        read_run(tmp_path / "empty.tsv")


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(CorpusError, match=r"\.jsonl or \.tsv"):
        write_run(tmp_path / "run.csv", ROWS)
    with pytest.raises(CorpusError, match="cannot read"):
        read_run(tmp_path / "absent.jsonl")


def test_ground_truth_errors(tmp_path):
    p = _write_lines(tmp_path / "gt.jsonl", [
        json.dumps({"query_id": "q", "motion_id": 1, "start_s": 0, "end_s": 1, "text": "walk"}),
        json.dumps({"query_id": "q", "motion_id": 1, "start_s": 3, "end_s": 1, "text": "walk"}),
    ])
    with pytest.raises(CorpusError, match=f"{p}:2: reversed span"):
        read_ground_truth(p)
    with pytest.raises(CorpusError, match="reversed span"):
        write_ground_truth(tmp_path / "g.tsv", [GroundTruth("q", 1, 2.0, 1.0, "x")])
