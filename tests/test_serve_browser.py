"""The web page of `engine serve` in a real browser (Debian chromium driven by Playwright) over the tiny
pipeline: search, ranked rows with scores, an animated skeleton preview, a BVH download that parses.

Skipped when Playwright or chromium is missing, unless ENGINE_REQUIRE_BROWSER=1 (CI), which fails instead.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from engine.request import SearchRequest

CHROMIUM = os.environ.get("ENGINE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REQUIRE = os.environ.get("ENGINE_REQUIRE_BROWSER") == "1"


def _missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no chromium at {CHROMIUM} (set ENGINE_CHROMIUM or apt-get install chromium)"
    return None


MISSING = _missing()
# Decided at import so that a skip does not first build the session's pipeline fixture.
pytestmark = pytest.mark.skipif(MISSING is not None and not REQUIRE, reason=MISSING or "")


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"ENGINE_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server_url(searcher):
    uvicorn = pytest.importorskip("uvicorn")
    from engine.serve import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(searcher=searcher), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 20 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    if MISSING is not None:
        _unavailable(MISSING)
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        except Error as e:
            _unavailable(f"chromium at {CHROMIUM} did not start: {e}")
        yield b
        b.close()


def test_search_page_previews_and_bvh_download(browser, server_url, searcher, tmp_path):
    from engine.corpus.bvh import read_bvh

    t0 = time.monotonic()
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    bad_responses: list[str] = []
    page.on("response", lambda r: bad_responses.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(server_url + "/")
    page.fill("#q", "kung fu pose")
    page.fill("#k", "8")
    page.fill("#limit", "5")
    page.press("#q", "Enter")
    page.wait_for_selector("#results li.moment", timeout=15_000)

    rows = page.locator("#results li.moment")
    want = searcher.search(SearchRequest("kung fu pose", k=8, limit=5, r_mode="moment")).moments
    assert rows.count() == len(want) > 0
    scores = [float(s) for s in rows.locator(".score").all_inner_texts()]
    assert scores == pytest.approx([m.score for m in want], abs=1e-3)
    assert scores == sorted(scores, reverse=True)
    assert rows.first.locator(".rank").inner_text() == "#1"
    assert "ms" in page.inner_text("#status")

    # The first preview has its joints and animates: two screenshots 300 ms apart differ.
    page.wait_for_function("previews.length > 0 && previews[0].motion !== null", timeout=15_000)
    canvas = rows.first.locator("canvas")
    page.wait_for_timeout(100)
    a = canvas.screenshot()
    page.wait_for_timeout(300)
    b = canvas.screenshot()
    assert a != b, "the skeleton preview did not change in 300 ms"

    with page.expect_download(timeout=15_000) as info:
        rows.first.locator(".dl-bvh").click()
    dl = info.value
    assert dl.suggested_filename.endswith(".bvh")
    path = tmp_path / dl.suggested_filename
    dl.save_as(path)
    text = path.read_text()
    assert text.startswith("HIERARCHY")
    bvh = read_bvh(path)
    m = want[0]
    fps = searcher.motions[m.motion_id].fps
    assert abs(bvh.n_frames - (m.end_s - m.start_s) * fps) <= 2

    # A request the API refuses shows its message (the form's own min/max checks would block k=0).
    page.evaluate("runSearch({q: 'kung fu pose', k: '0', limit: '5', lam: '5'})")
    page.wait_for_selector("#status.error", timeout=10_000)
    assert "k:" in page.inner_text("#status")
    assert not errors, errors
    assert len(bad_responses) == 1 and bad_responses[0].startswith("422 "), bad_responses
    ctx.close()
    assert time.monotonic() - t0 < 30
