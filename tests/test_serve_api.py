"""`engine serve`'s HTTP API on the tiny pipeline: same results as the Searcher, 4xx for every bad input,
clip downloads, health, the OpenAPI schema, and concurrent requests equal to sequential ones."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from engine.request import SearchRequest  # noqa: E402
from engine.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(searcher):
    with TestClient(create_app(searcher=searcher)) as c:
        yield c


def _key(moments):
    return [(m["motion_id"], m["start_s"], m["end_s"], m["score"]) for m in moments]


@pytest.mark.parametrize("q,k,lam,limit,r_mode", [("kung fu pose", 8, 5.0, 10, None),
                                                   ("a person waves the right hand", 12, 2.5, 3, "motion"),
                                                   ("someone jumps", 3, 0.0, 20, "moment")])
def test_search_equals_the_searcher(client, searcher, q, k, lam, limit, r_mode):
    params = {"q": q, "k": k, "lam": lam, "limit": limit} | ({"r": r_mode} if r_mode else {})
    r = client.get("/search", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    want = searcher.search(SearchRequest(q, k=k, lam=lam, limit=limit, r_mode=r_mode or "moment"))  # the API's default
    assert body["query"] == want.query and body["k"] == want.k and body["lam"] == lam and body["r"] == (r_mode or "moment")
    assert len(body["moments"]) == len(want.moments) > 0
    for i, (got, m) in enumerate(zip(body["moments"], want.moments), 1):
        assert got["rank"] == i
        assert (got["motion_id"], got["start_s"], got["end_s"]) == (m.motion_id, m.start_s, m.end_s)
        assert got["score"] == pytest.approx(m.score, rel=1e-12)
        assert got["p_se"] == pytest.approx(m.p_se, rel=1e-12) and got["r"] == pytest.approx(m.r, rel=1e-12)
        assert got["label"] == m.label and got["name"] == m.name and got["source"] == m.source
        assert got["duration_s"] == pytest.approx(searcher.motions[m.motion_id].duration_s)
    assert set(body["timings_s"]) >= {"embed_text", "retrieve", "localize"}


def test_search_defaults_and_k_larger_than_the_corpus(client, searcher):
    r = client.get("/search", params={"q": "kung fu pose", "k": 10000})
    assert r.status_code == 200, r.text
    assert r.json()["k"] <= len(searcher.motions)
    assert 0 < len(r.json()["moments"]) <= 10  # default limit


@pytest.mark.parametrize("params,where", [
    ({}, "q"),
    ({"q": ""}, "q"),
    ({"q": "   "}, "q"),
    ({"q": "x" * 513}, "q"),
    ({"q": "walk", "k": 0}, "k"),
    ({"q": "walk", "k": -5}, "k"),
    ({"q": "walk", "k": 10001}, "k"),
    ({"q": "walk", "k": "abc"}, "k"),
    ({"q": "walk", "k": 1.5}, "k"),
    ({"q": "walk", "limit": 0}, "limit"),
    ({"q": "walk", "limit": 1001}, "limit"),
    ({"q": "walk", "lam": -0.1}, "lam"),
    ({"q": "walk", "lam": 100.5}, "lam"),
    ({"q": "walk", "lam": "nan"}, "lam"),
    ({"q": "walk", "lam": "inf"}, "lam"),
    ({"q": "walk", "lam": "-inf"}, "lam"),
    ({"q": "walk", "r": "chunk"}, "r"),
    ({"q": "walk", "lam": "five"}, "lam"),
])
def test_bad_search_parameters_are_4xx_with_a_message(client, params, where):
    r = client.get("/search", params=params)
    assert 400 <= r.status_code < 500, (params, r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail.startswith(f"{where}:"), detail


def test_query_of_512_chars_is_accepted(client):
    r = client.get("/search", params={"q": ("walk " * 103)[:512], "k": 2, "limit": 1})
    assert r.status_code == 200, r.text


def test_motion_metadata_annotations_and_preview_joints(client, searcher):
    mid = next(iter(searcher.motions))
    r = client.get(f"/motions/{mid}")
    assert r.status_code == 200
    body = r.json()
    row = searcher.motions[mid]
    assert body["name"] == row.name and body["duration_s"] == pytest.approx(row.duration_s)
    assert body["joints"] is None
    anns = searcher.store.annotations(mid)
    assert [(a["text"], a["start_s"], a["end_s"]) for a in body["annotations"]] == \
        [(a.text, a.start_s, a.end_s) for a in anns]

    r = client.get(f"/motions/{mid}", params={"joints": "true"})
    j = r.json()["joints"]
    assert j["fps"] <= 20.0 and j["n_joints"] == 22 and len(j["parents"]) == 22
    full = searcher.store.joints(mid)  # (F, 22, 3)
    step = int(np.ceil(row.fps / 20.0 - 1e-9))
    data = np.asarray(j["data"]).reshape(j["n_frames"], 22, 3)
    np.testing.assert_allclose(data, full[::step], atol=6e-4)


@pytest.mark.parametrize("path,status", [
    ("/motions/987654", 404), ("/motions/-1", 404), ("/motions/abc", 422),
    ("/motions/987654/clip?format=bvh", 404), ("/nope", 404),
])
def test_unknown_motions_are_404_with_a_message(client, path, status):
    r = client.get(path)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def _clip(client, mid, start_s, end_s, fmt):
    r = client.get(f"/motions/{mid}/clip", params={"start_s": start_s, "end_s": end_s, "format": fmt})
    assert r.status_code == 200, r.text
    disp = r.headers["content-disposition"]
    assert disp.startswith("attachment;") and f".{fmt}" in disp
    return r


def test_clip_downloads(client, searcher, tmp_path):
    from engine.corpus.bvh import read_bvh

    mid = next(iter(searcher.motions))
    fps = searcher.motions[mid].fps
    f0, f1 = 20, 50
    start_s, end_s = f0 / fps, f1 / fps
    want = searcher.store.joints(mid)[f0:f1]  # (30, 22, 3)

    arr = np.load(io.BytesIO(_clip(client, mid, start_s, end_s, "npy").content), allow_pickle=False)
    assert arr.shape == want.shape
    np.testing.assert_array_equal(arr, want)

    text = _clip(client, mid, start_s, end_s, "bvh").text
    assert text.startswith("HIERARCHY")
    (tmp_path / "clip.bvh").write_text(text)
    bvh = read_bvh(tmp_path / "clip.bvh")
    assert bvh.n_frames == f1 - f0

    doc = json.loads(_clip(client, mid, start_s, end_s, "json").content)
    np.testing.assert_allclose(np.asarray(doc["frames"]), want, atol=1e-4)


@pytest.mark.parametrize("params", [
    {"start_s": 2.0, "end_s": 1.0, "format": "bvh"},
    {"start_s": -1.0, "end_s": 1.0, "format": "bvh"},
    {"start_s": 0.0, "end_s": 1e6, "format": "npy"},
    {"start_s": 0.0, "end_s": 0.01, "format": "npy"},
    {"start_s": 0.0, "end_s": 1.0, "format": "fbx"},
    {"start_s": "nan", "end_s": 1.0, "format": "bvh"},
    {"start_s": 0.0, "end_s": "inf", "format": "bvh"},
    {"start_s": "abc", "end_s": 1.0, "format": "bvh"},
])
def test_bad_clips_are_4xx_with_a_message(client, searcher, params):
    mid = next(iter(searcher.motions))
    r = client.get(f"/motions/{mid}/clip", params=params)
    assert 400 <= r.status_code < 500, (params, r.status_code, r.text)
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_health_and_openapi(client, searcher):
    h = client.get("/health").json()
    man = searcher.index.manifest
    assert h == {"status": "ok", "index_version": man.version, "motions": man.n_motions, "chunks": man.n_chunks,
                 "corpus_motions": len(searcher.motions), "localizer": str(searcher.localizer_path),
                 "localizer_matches_index": True}
    schema = client.get("/openapi.json").json()
    assert {"/search", "/motions/{motion_id}", "/motions/{motion_id}/clip", "/health"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="search-form"' in page.text and "<canvas" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert "https://" not in page.text  # nothing from a CDN


def test_concurrent_requests_equal_sequential(client):
    queries = ["kung fu pose", "a person waves the right hand", "someone jumps", "a person sits down"]
    params = [{"q": q, "k": 8, "limit": 5} for q in queries]
    sequential = {p["q"]: _key(client.get("/search", params=p).json()["moments"]) for p in params}

    def one(i):
        r = client.get("/search", params=params[i % len(params)])
        assert r.status_code == 200, r.text
        return params[i % len(params)]["q"], _key(r.json()["moments"])

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(16)))
    for q, got in results:
        assert got == sequential[q]


def test_searcher_loaded_once_and_unexpected_errors_are_json_500(searcher, caplog):
    calls = []

    class Broken:
        motions = searcher.motions
        store = searcher.store
        index = searcher.index

        def search(self, *a, **kw):
            raise RuntimeError("boom")

        search_many = search

    def factory():
        calls.append(1)
        return Broken()

    app = create_app(searcher_factory=factory)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/health").status_code == 200
        with caplog.at_level("ERROR", logger="engine.serve.app"):
            r = c.get("/search", params={"q": "walk"})
        assert r.status_code == 500
        rid = r.headers["x-request-id"]
        # The client gets an id to quote, never paths, SQL or the exception; the log has the detail.
        assert rid in r.json()["detail"] and "boom" not in r.text
        assert any(rid in rec.getMessage() and "boom" in (rec.exc_text or str(rec.exc_info)) for rec in caplog.records)
        assert c.get("/health").status_code == 200
    assert len(calls) == 1


def test_create_app_needs_a_searcher():
    with pytest.raises(ValueError):
        create_app()


def test_cli_serve_wires_options_and_reports_a_missing_index(monkeypatch, tmp_path, searcher):
    from typer.testing import CliRunner

    import engine.serve
    from engine.cli import app

    r = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no such index" in r.output

    seen = {}
    monkeypatch.setattr(engine.serve, "load_searcher", lambda index, **kw: seen.update(index=index, **kw) or searcher)
    monkeypatch.setattr(engine.serve, "run_server", lambda s, **kw: seen.update(searcher=s, **kw))
    r = CliRunner().invoke(app, ["serve", "--index", str(tmp_path), "--port", "8123"])
    assert r.exit_code == 0, r.output
    assert seen["index"] == tmp_path and seen["searcher"] is searcher
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123


@pytest.mark.parametrize("params,problem", [
    ({"skeleton": "source"}, "source skeleton is unavailable: it is a synth motion"),
    ({"skeleton": "source", "format": "npy"}, "BVH only"),
    ({"skeleton": "bone"}, "unknown skeleton"),
    ({"fps": 30}, "skeleton=source only"),
])
def test_source_skeleton_clip_errors_explain(client, searcher, params, problem):
    mid = next(iter(searcher.motions))
    r = client.get(f"/motions/{mid}/clip", params={"start_s": 0.0, "end_s": 1.0} | params)
    assert r.status_code == 422, r.text
    assert problem in r.json()["detail"]
