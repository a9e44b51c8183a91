"""`engine serve` beyond the happy path: a token on every endpoint, limits on request size, slow clients
cut off, and 500s that tell the client nothing but a request id (issue: reliability and security)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from engine.serve import create_app, server_config  # noqa: E402

TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def secured(searcher):
    with TestClient(create_app(searcher=searcher, token=TOKEN)) as c:
        yield c


@pytest.mark.parametrize("path", ["/health", "/", "/static/app.js", "/search?q=walk&k=2", "/openapi.json"])
def test_every_endpoint_needs_the_token(secured, path):
    secured.cookies.clear()
    assert secured.get(path).status_code == 401
    assert secured.get(path, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert secured.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_page_opened_with_the_token_keeps_it_in_a_cookie(secured):
    secured.cookies.clear()
    r = secured.get("/", params={"token": TOKEN})
    assert r.status_code == 200 and "httponly" in r.headers["set-cookie"].lower()
    assert secured.get("/health").status_code == 200  # the page's own requests carry the cookie
    secured.cookies.clear()
    assert secured.get("/health").status_code == 401


def test_long_urls_and_bodies_are_refused(client_plain):
    r = client_plain.get("/search", params={"q": "x" * 10_000})
    assert r.status_code == 414 and "limit" in r.json()["detail"]
    r = client_plain.post("/search", content=b"x" * ((1 << 20) + 1))
    assert r.status_code == 413


@pytest.fixture(scope="module")
def client_plain(searcher):
    with TestClient(create_app(searcher=searcher)) as c:
        yield c


@pytest.fixture(scope="module")
def live_server(searcher):
    """A real uvicorn server (the configuration `engine serve` runs) on a free loopback port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(server_config(searcher, port=port, log_level="warning", header_timeout_s=0.5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(10)


def _recv_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    return out


def test_a_one_megabyte_query_gets_414_not_a_reset(live_server):
    with socket.create_connection(("127.0.0.1", live_server)) as s:
        s.sendall(b"GET /search?q=" + b"x" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = _recv_all(s, 10)
    assert reply.startswith(b"HTTP/1.1 414"), reply[:200]


def test_slow_headers_are_cut_off(live_server):
    with socket.create_connection(("127.0.0.1", live_server)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        t0 = time.time()
        reply = _recv_all(s, 5)
        waited = time.time() - t0
    assert reply == b"" and waited < 4  # closed by the server after ~0.5 s, not by our 5 s timeout
    with socket.create_connection(("127.0.0.1", live_server)) as s:  # a normal request still works
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _recv_all(s, 10).startswith(b"HTTP/1.1 200")


def test_serving_beyond_loopback_needs_a_token(monkeypatch, searcher, tmp_path):
    import engine.serve
    from engine.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--index", str(tmp_path)])
    assert r.exit_code == 1 and "--token" in r.stderr
    r = runner.invoke(app, ["serve", "--token", "short", "--index", str(tmp_path)])
    assert r.exit_code == 1 and "at least 16" in r.stderr
    seen = {}
    monkeypatch.setattr(engine.serve, "load_searcher", lambda index, **kw: searcher)
    monkeypatch.setattr(engine.serve, "run_server", lambda s, **kw: seen.update(kw))
    r = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--index", str(tmp_path)], env={"ENGINE_TOKEN": TOKEN})
    assert r.exit_code == 0, r.output
    assert seen["token"] == TOKEN and seen["host"] == "0.0.0.0"
    r = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--insecure", "--index", str(tmp_path)])
    assert r.exit_code == 0 and "no authentication" in r.stderr and seen["token"] is None
