"""One SearchRequest: its defaults are the front ends' defaults, its validation names the field, and the
CLI, the HTTP API, the run files and `engine eval run` all go through it."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.corpus.types import RequestError
from engine.request import MAX_K, SearchRequest


@pytest.mark.parametrize("field,value", [
    ("k", 0), ("k", MAX_K + 1), ("k", 1.5), ("limit", 0), ("lam", math.nan), ("lam", math.inf), ("lam", -1.0),
    ("lam", 1e6), ("top_m", 0), ("nms_iou", 1.5), ("r_mode", "chunk"), ("min_moment_s", math.nan),
    ("max_motion_s", -2.0), ("batch_size", 0),
])
def test_bad_fields_raise_a_request_error_naming_the_field(field, value):
    with pytest.raises(RequestError) as e:
        SearchRequest("walk", **{field: value})
    assert e.value.where == field


def test_text_is_validated_and_normalised():
    assert SearchRequest("  kung fu pose ").text == "kung fu pose"
    for bad in ("", "   ", "x" * 513):
        with pytest.raises(RequestError) as e:
            SearchRequest(bad)
        assert e.value.where == "query"
    with pytest.raises(RequestError, match="min_moment_s"):
        SearchRequest("walk", min_moment_s=5.0, max_moment_s=2.0)


def test_filters_and_settings():
    req = SearchRequest("walk", sources="synth", min_moment_s=1.0, max_moment_s=3.0)
    assert req.sources == ("synth",) and req.filters_motions and req.filters_moments
    assert req.keeps_moment(0.0, 2.0) and not req.keeps_moment(0.0, 4.0)
    assert req.keeps_motion("synth", 10.0) and not req.keeps_motion("bandai", 10.0)
    assert "text" not in req.settings() and req.settings()["k"] == 200
    assert req.with_text("run").text == "run" and req.with_text("run").k == req.k


@pytest.mark.parametrize("args,needle", [
    (["--lam", "nan"], "--lam must be a finite number"),
    (["--lam", "inf"], "--lam must be a finite number"),
    (["--lam", "1e6"], "--lam must be in"),
    (["--top-m", "0"], "--top-m must be positive"),
    (["--min-moment-s", "nan"], "--min-moment-s must be a finite number"),
    (["--r", "chunk"], "--r must be one of"),
])
def test_cli_rejects_bad_search_flags_in_one_line(tmp_path, args, needle):
    r = CliRunner().invoke(app, ["search", "kung fu pose", "--index", str(tmp_path / "idx"), *args])
    assert r.exit_code == 1, r.output
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_cli_and_http_print_the_same_moment_fields(pipeline, searcher):
    from fastapi.testclient import TestClient

    from engine.serve import create_app

    _, index, loc_run = pipeline
    # --backend torch: the HTTP side's Searcher runs torch, and the fields are compared exactly (the onnx
    # backend gives the same moments with scores equal to ~1e-6, tests/test_onnx_path.py)
    r = CliRunner().invoke(app, ["search", "kung fu pose", "--k", "6", "--limit", "4", "--index", str(index),
                                 "--localizer", str(loc_run), "--json", "--backend", "torch"])
    assert r.exit_code == 0, r.output
    cli = json.loads(r.stdout)
    with TestClient(create_app(searcher=searcher)) as c:
        http = c.get("/search", params={"q": "kung fu pose", "k": 6, "limit": 4}).json()["moments"]
    assert cli == http  # same request defaults, same typed moments, same serialisation
    assert [m["rank"] for m in cli] == list(range(1, len(cli) + 1))
    assert all(m["path"] == searcher.motions[m["motion_id"]].path for m in cli)


def test_eval_run_reproduces_eval_cmr_from_its_run_files(pipeline, tmp_path):
    from engine.evaluate import cmr_eval
    from eval.runfile import read_run

    _, index, loc_run = pipeline
    out = tmp_path / "cmr"
    res = cmr_eval(index, out, split="train", ks=(6,), lams=(5.0,), limit=5, max_queries=4, localizer=loc_run,
                   r_modes=("motion", "moment"), window_sizes_s=(2.0,))
    meta = read_run(res.runs["mlp-k6-lam5-rmoment"]).run_meta
    assert (meta.k, meta.lam, meta.r_mode, meta.limit, meta.score) == (6, 5.0, "moment", 5, "paper")
    assert meta.index == str(index) and meta.index_version and meta.retrieval_fingerprint
    assert meta.localizer_fingerprint
    runs = [res.runs[name] for name in res.runs]
    r = CliRunner().invoke(app, ["eval", "run", *map(str, runs), "--truth", str(out / "truth.jsonl"), "--json"])
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)["metrics"]
    assert again == [x.to_dict() for x in res.results]

    r = CliRunner().invoke(app, ["eval", "run", str(runs[0]), "--truth", str(tmp_path / "none.jsonl")])
    assert r.exit_code == 1 and "no such file" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query_id": "1"}\n')
    r = CliRunner().invoke(app, ["eval", "run", str(bad), "--truth", str(out / "truth.jsonl")])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.output
