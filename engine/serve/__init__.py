"""`engine serve`: the HTTP API and the web page over one Searcher.

    from engine.serve import create_app, load_searcher, run_server
    run_server(load_searcher(index_dir), host="127.0.0.1", port=8000)

The app itself is in `engine.serve.app`; the page is hand-written HTML/JS/CSS in `engine/serve/static/`.
"""

from __future__ import annotations

import ipaddress
import logging

from engine.corpus.types import EngineError
from engine.search import load_searcher
from engine.serve.app import create_app

log = logging.getLogger(__name__)

__all__ = ["ServeError", "create_app", "is_loopback", "load_searcher", "run_server", "server_config"]


class ServeError(EngineError):
    """The server cannot start: the message says what is missing and how to fix it."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_config(searcher, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                  token: str | None = None, header_timeout_s: float = 10.0, keep_alive_s: float = 5.0,
                  max_connections: int = 64, max_request_line_bytes: int = 2 << 20,
                  batch_options: dict | None = None):
    """The uvicorn configuration `run_server` serves (tests start a server from the same one).

    Slow clients are cut off: request headers must arrive within `header_timeout_s`, idle keep-alive
    connections close after `keep_alive_s`, and beyond `max_connections` new ones get a 503. h11 buffers
    request lines (and headers) up to `max_request_line_bytes`, far beyond the app's URL limit, so that an
    over-long query (1 MB, say) gets the app's 414 instead of a connection reset; with `max_connections`
    that bounds the server's buffers (64 x 2 MiB)."""
    import uvicorn

    from engine.serve.app import MAX_URL_CHARS
    from engine.serve.protocol import protocol_with_timeout

    return uvicorn.Config(create_app(searcher=searcher, token=token, batch_options=batch_options), host=host, port=port, log_level=log_level,
                          http=protocol_with_timeout(header_timeout_s), timeout_keep_alive=int(keep_alive_s),
                          limit_concurrency=max_connections,
                          h11_max_incomplete_event_size=max(max_request_line_bytes, 2 * MAX_URL_CHARS))


def run_server(searcher, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
               token: str | None = None, header_timeout_s: float = 10.0, batch_options: dict | None = None) -> None:
    """Serve `create_app(searcher, token=token)` with uvicorn until interrupted (one process)."""
    import uvicorn

    if not is_loopback(host) and token is None:
        log.warning("binding %s without a token: anyone who can reach this port can use the API", host)
    uvicorn.Server(server_config(searcher, host=host, port=port, log_level=log_level, token=token,
                                 header_timeout_s=header_timeout_s, batch_options=batch_options)).run()
