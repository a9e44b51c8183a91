""""More like this" (engine/like.py) on the tiny pipeline: the example finds itself when it is not excluded,
by default no result overlaps the example or comes from its motion, the ranking equals a brute-force
re-embedding of every window, and bad spans are RequestErrors, one-line CLI errors and 4xx over HTTP."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.corpus.spans import temporal_iou
from engine.corpus.types import RequestError
from engine.request import LikeRequest

runner = CliRunner()


@pytest.fixture(scope="module")
def like(searcher, single_thread):
    from engine.like import like_searcher

    return like_searcher(searcher)


def _a_motion(searcher, min_s: float = 6.0) -> int:
    """A motion long enough for a few windows (the tiny corpus has several)."""
    return next(m for m, info in sorted(searcher.motions.items()) if info.duration_s >= min_s)


def _chunk(searcher, mid: int, i: int = 0) -> tuple[float, float]:
    spans, _ = searcher.index.motion_chunks(mid)
    return float(spans[i, 0]), float(spans[i, 1])


def test_the_exact_chunk_finds_itself_first_when_not_excluded(searcher, like):
    mid = _a_motion(searcher)
    a, b = _chunk(searcher, mid)
    res = like.search(LikeRequest(mid, a, b, k=5, limit=5, include_self=True, self_iou=None))
    top = res.moments[0]
    assert (top.motion_id, top.start_s, top.end_s) == (mid, pytest.approx(a), pytest.approx(b))
    assert top.score == pytest.approx(1.0, abs=1e-4) and top.rank == 1
    # The span's embedding is the stored chunk embedding (same frames, same model).
    spans, vecs = searcher.index.motion_chunks(mid)
    assert float(like.embed(LikeRequest(mid, a, b)) @ vecs[0]) == pytest.approx(1.0, abs=1e-4)


def test_a_short_window_finds_itself_first(searcher, like):
    mid = _a_motion(searcher)
    fps = searcher.motions[mid].fps
    w = int(round(2.0 * fps))
    a, b = w // 2 / fps, (w // 2 + w) / fps  # the second 2 s window (stride 1 s)
    res = like.search(LikeRequest(mid, a, b, k=3, limit=3, include_self=True, self_iou=None))
    assert (res.moments[0].motion_id, res.moments[0].start_s, res.moments[0].end_s) == (
        mid, pytest.approx(a), pytest.approx(b))


@pytest.mark.parametrize("include_self", [False, True])
def test_default_excludes_the_example_and_its_motion(searcher, like, include_self):
    mid = _a_motion(searcher)
    a, b = _chunk(searcher, mid)
    res = like.search(LikeRequest(mid, a, b, k=len(searcher.motions), limit=50, include_self=include_self))
    assert res.moments
    mine = [m for m in res.moments if m.motion_id == mid]
    if include_self:
        assert mine, "include_self keeps other moments of the example's motion"
    else:
        assert not mine
    for m in mine:
        assert temporal_iou(m.start_s, m.end_s, a, b) < 0.5
    assert [m.rank for m in res.moments] == list(range(1, len(res.moments) + 1))
    scores = [m.score for m in res.moments]
    assert scores == sorted(scores, reverse=True)
    for m in res.moments:
        info = searcher.motions[m.motion_id]
        assert m.name == info.name and m.duration_s == info.duration_s and m.r == m.score and m.p_se == 1.0
        assert 0 <= m.start_s < m.end_s <= info.duration_s + 1e-6


def test_ranking_equals_brute_force_over_every_window(searcher, like):
    """Oracle: every chunk and every 2/4/6 s window of every other motion re-embedded one by one; the top
    moments (per-motion cap and de-duplication off) are the best windows overall."""
    from engine.windows import pyramid_windows

    mid = _a_motion(searcher)
    fps = searcher.motions[mid].fps
    a, b = 1.0, 1.0 + 3.0
    feats = np.asarray(searcher.store.features(mid))
    q = searcher.retrieval.encode_motion([feats[round(a * fps): round(b * fps)]])[0]
    res = like.search(LikeRequest(mid, a, b, k=len(searcher.motions), limit=8, refine=len(searcher.motions),
                                  per_motion=0, dedup_iou=1.0))
    every = []
    for m, info in searcher.motions.items():
        if m == mid:
            continue
        f = np.asarray(searcher.store.features(m))
        spans, _ = searcher.index.motion_chunks(m)
        wins = [(float(s), float(e)) for s, e in spans]
        for size_s in (2.0, 4.0, 6.0):
            w = int(round(size_s * info.fps))
            if 2 <= w < len(f):
                wins += [(s / info.fps, e / info.fps) for s, e in pyramid_windows(len(f), [w], w // 2)]
        for s, e in wins:
            x = float(searcher.retrieval.encode_motion([f[round(s * info.fps): round(e * info.fps)]])[0] @ q)
            every.append((x, m, s, e))
    every.sort(key=lambda t: -t[0])
    got = [(m.score, m.motion_id, m.start_s, m.end_s) for m in res.moments]
    assert [g[0] for g in got] == pytest.approx([t[0] for t in every[:8]], abs=1e-4)
    assert {(g[1], round(g[2], 4)) for g in got} == {(t[1], round(t[2], 4)) for t in every[:8]}


def test_refine_zero_returns_chunks_only(searcher, like):
    """Without refinement every moment is one of its motion's 10 s chunks, with its stored embedding's score."""
    mid = _a_motion(searcher)
    a, b = 1.0, 4.0
    q = like.embed(LikeRequest(mid, a, b))
    res = like.search(LikeRequest(mid, a, b, k=len(searcher.motions), limit=20, refine=0))
    assert res.moments
    for m in res.moments:
        spans, vecs = searcher.index.motion_chunks(m.motion_id)
        j = [i for i, (s, e) in enumerate(spans.tolist()) if (s, e) == pytest.approx((m.start_s, m.end_s))]
        assert j and m.score == pytest.approx(float(vecs[j[0]] @ q), abs=1e-5)


def test_dedup_and_per_motion_cap(searcher, like):
    mid = _a_motion(searcher)
    res = like.search(LikeRequest(mid, 0.0, 2.0, k=len(searcher.motions), limit=100, per_motion=2))
    by_motion: dict[int, list] = {}
    for m in res.moments:
        by_motion.setdefault(m.motion_id, []).append(m)
    for ms in by_motion.values():
        assert len(ms) <= 2
        for i, x in enumerate(ms):
            for y in ms[i + 1:]:
                assert temporal_iou(x.start_s, x.end_s, y.start_s, y.end_s) < 0.3
                assert not (x.start_s <= y.start_s and y.end_s <= x.end_s)
                assert not (y.start_s <= x.start_s and x.end_s <= y.end_s)


@pytest.mark.parametrize("kw,where", [
    (dict(motion_id=-1, start_s=0, end_s=1), "motion_id"),
    (dict(motion_id=1, start_s=2, end_s=1), "start_s"),
    (dict(motion_id=1, start_s=1, end_s=1), "start_s"),
    (dict(motion_id=1, start_s=1, end_s=1.2), "end_s"),
    (dict(motion_id=1, start_s=-1, end_s=1), "start_s"),
    (dict(motion_id=1, start_s=float("nan"), end_s=1), "start_s"),
    (dict(motion_id=1, start_s=0, end_s=float("inf")), "end_s"),
    (dict(motion_id=1, start_s=0, end_s=1, k=0), "k"),
    (dict(motion_id=1, start_s=0, end_s=1, limit=100_000), "limit"),
    (dict(motion_id=1, start_s=0, end_s=1, refine=-1), "refine"),
])
def test_bad_requests(kw, where):
    with pytest.raises(RequestError) as e:
        LikeRequest(**kw)
    assert e.value.where == where


def test_spans_checked_against_the_corpus(searcher, like):
    with pytest.raises(RequestError, match="no motion with id 999999"):
        like.search(LikeRequest(999_999, 0, 1))
    mid = _a_motion(searcher)
    dur = searcher.motions[mid].duration_s
    with pytest.raises(RequestError, match="past the end") as e:
        like.search(LikeRequest(mid, dur - 1, dur + 1))
    assert e.value.where == "end_s"
    like.search(LikeRequest(mid, dur - 1, dur))  # up to the very end is fine


# ---------------------------------------------------------------------------------------------- CLI
def _cli(pipeline, *args):
    _, index, loc_run = pipeline
    return runner.invoke(app, ["search", *args, "--index", str(index), "--localizer", str(loc_run)])


def test_cli_like_json_and_table(pipeline, searcher, like):
    mid = _a_motion(searcher)
    name = searcher.motions[mid].name
    r = _cli(pipeline, "--like", f"{name}:0-3", "--k", "6", "--limit", "4", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    want = like.search(LikeRequest(mid, 0.0, 3.0, k=6, limit=4)).moments
    assert [(m["motion_id"], m["start_s"], m["end_s"]) for m in got] == [
        (m.motion_id, m.start_s, m.end_s) for m in want]
    assert len(got) == 4 and all(m["motion_id"] != mid for m in got) and got[0]["rank"] == 1
    r = _cli(pipeline, "--like", f"{mid}:0-3", "--k", "6", "--limit", "4", "--include-self")
    assert r.exit_code == 0, r.output
    assert f"like {mid} {name}" in r.stdout


@pytest.mark.parametrize("spec,needle", [
    ("nosuchmotion:0-2", "no motion with this id or name"),
    ("{mid}:2-1", "start_s"),
    ("{mid}:0-0.2", "shortest is 0.5 s"),
    ("{mid}:0-9999", "past the end"),
    ("{mid}:nan-2", "finite"),
    ("{mid}:a-b", "must be numbers"),
    ("{mid}", "expected MOTION:START-END"),
])
def test_cli_like_bad_spans_are_one_line(pipeline, searcher, spec, needle):
    r = _cli(pipeline, "--like", spec.format(mid=_a_motion(searcher)))
    assert r.exit_code in (1, 2)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], r.stderr
    assert r.stdout == ""


def test_cli_like_refuses_a_query_too(pipeline, searcher):
    r = _cli(pipeline, "walk", "--like", "1:0-2")
    assert r.exit_code == 1 and "--like takes the place of a query" in r.stderr
    r = _cli(pipeline, "walk", "--include-self")
    assert r.exit_code == 1 and "--include-self goes with --like" in r.stderr


# ---------------------------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def client(searcher):
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from engine.serve import create_app

    with TestClient(create_app(searcher=searcher)) as c:
        yield c


def test_post_search(client, searcher, like):
    mid = _a_motion(searcher)
    r = client.post("/search", json={"motion_id": mid, "start_s": 0.5, "end_s": 3.5, "k": 6, "limit": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    want = like.search(LikeRequest(mid, 0.5, 3.5, k=6, limit=5))
    assert body["like"] == {"motion_id": mid, "start_s": 0.5, "end_s": 3.5, "include_self": False}
    assert [(m["motion_id"], m["start_s"], m["end_s"]) for m in body["moments"]] == [
        (m.motion_id, m.start_s, m.end_s) for m in want.moments]
    assert body["moments"][0]["score"] == pytest.approx(want.moments[0].score)
    assert all(m["motion_id"] != mid for m in body["moments"]) and body["k"] == 6
    r = client.post("/search", json={"motion_id": mid, "start_s": 0.5, "end_s": 3.5, "include_self": True})
    assert r.status_code == 200 and any(m["motion_id"] == mid for m in r.json()["moments"])
    assert client.get("/search", params={"q": "kung fu pose", "k": 4}).status_code == 200  # GET unchanged


@pytest.mark.parametrize("body,status,needle", [
    ({"motion_id": 999999, "start_s": 0, "end_s": 1}, 404, "no motion with id 999999"),
    ({"motion_id": "{mid}", "start_s": 2, "end_s": 1}, 422, "start_s"),
    ({"motion_id": "{mid}", "start_s": 0, "end_s": 0.1}, 422, "shortest"),
    ({"motion_id": "{mid}", "start_s": 0, "end_s": 9999}, 422, "past the end"),
    ({"motion_id": "{mid}", "start_s": -1, "end_s": 1}, 422, "start_s"),
    ({"motion_id": "{mid}", "start_s": 0, "end_s": 2, "k": 0}, 422, "k"),
    ({"motion_id": "{mid}", "start_s": "x", "end_s": 2}, 422, "start_s"),
    ({"start_s": 0, "end_s": 2}, 422, "motion_id"),
])
def test_post_search_bad_spans_are_4xx(client, searcher, body, status, needle):
    mid = _a_motion(searcher)
    body = {k: (mid if v == "{mid}" else v) for k, v in body.items()}
    r = client.post("/search", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_post_search_non_finite_is_4xx(client, searcher):
    mid = _a_motion(searcher)
    r = client.post("/search", content=f'{{"motion_id": {mid}, "start_s": NaN, "end_s": 2}}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "start_s" in r.json()["detail"]
