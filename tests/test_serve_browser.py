"""The web page of `engine serve` in a real browser (Debian chromium driven by Playwright) over the tiny
pipeline: search, ranked rows with scores, the three.js preview (WebGL through SwiftShader: no GPU needed)
animating, play/pause, the scrubber and orbit controls, in/out handles that set the exported span (checked in the
downloaded BVH's frame count), BVH and GLB downloads that parse, "more like this" on a card.

Skipped when Playwright or chromium is missing, unless ENGINE_REQUIRE_BROWSER=1 (CI), which fails instead.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time

import pytest

from engine.request import SearchRequest

CHROMIUM = os.environ.get("ENGINE_CHROMIUM", "/usr/bin/chromium")
# WebGL on the CPU: ANGLE over SwiftShader (chromium no longer falls back to it without the unsafe flag).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run",
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


def _download(page, locator, tmp_path):
    with page.expect_download(timeout=15_000) as info:
        locator.click()
    dl = info.value
    path = tmp_path / dl.suggested_filename
    dl.save_as(path)
    return path


def _drag_to(page, handle, timeline, fraction: float) -> None:
    """Drag a timeline handle with the mouse to `fraction` of the timeline's width."""
    hb, tb = handle.bounding_box(), timeline.bounding_box()
    x0, y = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move(tb["x"] + fraction * tb["width"], y, steps=6)
    page.mouse.up()


def _span(row) -> tuple[float, float]:
    return float(row.get_attribute("data-in-s")), float(row.get_attribute("data-out-s"))


def test_search_page_previews_and_bvh_download(browser, server_url, searcher, tmp_path):
    import pygltflib

    from engine.corpus.bvh import read_bvh

    t0 = time.monotonic()
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # Console errors too (a failing module import or WebGL error), except the refused request's own line.
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
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

    # The first preview has its joints, draws through WebGL (three.js) and animates: the frame shown
    # advances by itself and the canvas pixels change with it.
    row = rows.first
    page.wait_for_selector("#results li.moment[data-ready][data-frame]", timeout=20_000)
    assert page.evaluate("previews.length > 0 && previews[0].motion !== null && !!previews[0].scene")
    canvas = row.locator("canvas")
    a, fa = canvas.screenshot(), row.get_attribute("data-frame")
    page.wait_for_function(f"document.querySelector('#results li.moment').dataset.frame !== '{fa}'",
                           timeout=10_000)
    b = canvas.screenshot()
    assert a != b, "the 3D preview's pixels did not change when its frame advanced"

    # Pause holds the frame; the scrubber moves it; play resumes.
    row.locator(".play").click()
    assert row.locator(".play").get_attribute("aria-label") == "play"
    f_paused = row.get_attribute("data-frame")
    page.wait_for_timeout(250)
    assert row.get_attribute("data-frame") == f_paused
    overview = row.locator(".overview")
    box = overview.bounding_box()
    m = want[0]
    duration_s = searcher.motions[m.motion_id].duration_s
    n_preview = page.evaluate("previews[0].motion.n")
    page.mouse.click(box["x"] + 0.25 * box["width"], box["y"] + box["height"] / 2)
    page.wait_for_function(f"Math.abs(previews[0].frame - {0.25 * (n_preview - 1)}) <= 2", timeout=10_000)
    assert abs(int(row.get_attribute("data-frame")) - 0.25 * (n_preview - 1)) <= 2
    page.wait_for_timeout(250)
    assert row.get_attribute("data-frame") == str(page.evaluate("previews[0].frame"))  # still paused there
    assert float(page.evaluate("previews[0].t")) == pytest.approx(0.25 * duration_s, abs=0.05 * duration_s)
    # Orbit controls: dragging on the paused preview turns the camera (and the picture) around the body.
    cam = "previews[0].camera.position.toArray()"
    before_cam, before_px = page.evaluate(cam), canvas.screenshot()
    cb = canvas.bounding_box()
    page.mouse.move(cb["x"] + 0.5 * cb["width"], cb["y"] + 0.5 * cb["height"])
    page.mouse.down()
    page.mouse.move(cb["x"] + 0.8 * cb["width"], cb["y"] + 0.5 * cb["height"], steps=5)
    page.mouse.up()
    page.wait_for_function("!previews[0].dirty", timeout=10_000)
    after_cam = page.evaluate(cam)
    assert max(abs(x - y) for x, y in zip(after_cam, before_cam)) > 0.1, (before_cam, after_cam)
    assert canvas.screenshot() != before_px
    # A plain wheel over the preview leaves the camera alone (the page scrolls); Ctrl + wheel zooms.
    dist = "previews[0].camera.position.distanceTo(previews[0].controls.target)"
    d0 = page.evaluate(dist)
    page.mouse.move(cb["x"] + 0.5 * cb["width"], cb["y"] + 0.5 * cb["height"])
    page.mouse.wheel(0, 300)
    for _ in range(50):  # the page (not the camera) takes the wheel: the preview moves up (smooth scrolling)
        if abs(canvas.bounding_box()["y"] - cb["y"]) > 1:
            break
        page.wait_for_timeout(100)
    assert abs(canvas.bounding_box()["y"] - cb["y"]) > 1
    assert page.evaluate(dist) == pytest.approx(d0, rel=1e-6)
    canvas.scroll_into_view_if_needed()
    cb2 = canvas.bounding_box()
    page.mouse.move(cb2["x"] + 0.5 * cb2["width"], cb2["y"] + 0.5 * cb2["height"])
    page.keyboard.down("Control")
    page.mouse.wheel(0, 300)
    page.keyboard.up("Control")
    page.wait_for_function(f"Math.abs({dist} - {d0}) > 0.05", timeout=10_000)
    row.locator(".play").click()
    assert row.locator(".play").get_attribute("aria-label") == "pause"

    # The handles start on the found moment's frames (what the clip endpoint cuts for it).
    fps = searcher.motions[m.motion_id].fps
    in_s, out_s = _span(row)
    assert in_s == pytest.approx(math.floor(m.start_s * fps + 1e-6) / fps, abs=1e-6)
    assert out_s == pytest.approx(math.ceil(m.end_s * fps - 1e-6) / fps, abs=1e-6)
    bvh = read_bvh(_download(page, row.locator(".dl-bvh"), tmp_path))
    assert bvh.n_frames == round((out_s - in_s) * fps)

    # Dragging the handles changes the span; the downloads then cut exactly the handles' span.
    timeline = row.locator(".timeline")
    _drag_to(page, row.locator(".handle.out"), timeline, 0.9)
    _drag_to(page, row.locator(".handle.in"), timeline, 0.3)
    new_in, new_out = _span(row)
    assert (new_in, new_out) != (in_s, out_s)
    assert new_in < new_out and 0 <= new_in and new_out <= duration_s + 1e-6
    assert round(new_in * fps, 6) == round(new_in * fps) and round(new_out * fps, 6) == round(new_out * fps)
    assert row.locator(".span-s").inner_text().startswith(f"{new_in:.2f}")
    path = _download(page, row.locator(".dl-bvh"), tmp_path)
    assert path.name.endswith(f"_{new_in:.2f}-{new_out:.2f}s.bvh"), path.name
    bvh = read_bvh(path)
    n_span = round((new_out - new_in) * fps)
    assert bvh.n_frames == n_span != round((out_s - in_s) * fps)
    assert abs(bvh.frame_time_s - 1 / fps) < 1e-9
    # The out handle nudged one frame with the keyboard.
    row.locator(".handle.out").focus()
    page.keyboard.press("ArrowLeft")
    assert _span(row)[1] == pytest.approx(new_out - 1 / fps, abs=1e-6)
    glb = pygltflib.GLTF2.load_from_bytes(_download(page, row.locator(".dl-glb"), tmp_path).read_bytes())
    times = glb.accessors[glb.animations[0].samplers[0].input]
    assert times.count == n_span - 1 and len(glb.nodes) == 22

    # "More like this" on the card: its current in/out span is the example (POST /search); the results are
    # the LikeSearcher's for that span, none from the example's motion, shown and previewed as a search's.
    from engine.like import like_searcher
    from engine.request import LikeRequest

    like_in, like_out = _span(row)
    like_mid = int(row.get_attribute("data-motion-id"))
    row.locator("button.like").click()
    page.wait_for_function("document.querySelector('#status').textContent.includes('like motion')",
                           timeout=20_000)
    want_like = like_searcher(searcher).search(LikeRequest(like_mid, like_in, like_out, k=8, limit=5)).moments
    assert rows.count() == len(want_like) > 0
    assert [int(x) for x in rows.evaluate_all("rs => rs.map(r => r.dataset.motionId)")] == [
        m.motion_id for m in want_like]
    assert like_mid not in [m.motion_id for m in want_like]
    scores = [float(s) for s in rows.locator(".score").all_inner_texts()]
    assert scores == pytest.approx([m.score for m in want_like], abs=1e-3)
    assert f"like={like_mid}" in page.url.replace("%3A", ":")
    page.wait_for_selector("#results li.moment[data-ready][data-frame]", timeout=20_000)

    # A new search replaces the previews (the old ones are disposed) and the new first one animates.
    page.fill("#q", "a person walks forward")
    page.press("#q", "Enter")
    page.wait_for_function("previews.length > 0 && previews[0].moment.motion_id !== undefined && "
                           "document.querySelector('#status').textContent.includes('walks forward')",
                           timeout=20_000)
    page.wait_for_selector("#results li.moment[data-ready][data-frame]", timeout=20_000)
    f1 = rows.first.get_attribute("data-frame")
    page.wait_for_function(f"document.querySelector('#results li.moment').dataset.frame !== '{f1}'",
                           timeout=10_000)

    # A request the API refuses shows its message (the form's own min/max checks would block k=0).
    page.evaluate("runSearch({q: 'kung fu pose', k: '0', limit: '5', lam: '5'})")
    page.wait_for_selector("#status.error", timeout=10_000)
    assert "k:" in page.inner_text("#status")
    assert not errors, errors
    assert len(bad_responses) == 1 and bad_responses[0].startswith("422 "), bad_responses
    ctx.close()
    assert time.monotonic() - t0 < 120  # a hang guard (SwiftShader on a busy 2-core machine), not a benchmark

