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

__all__ = ["ServeError", "create_app", "is_loopback", "load_searcher", "run_server"]


class ServeError(EngineError):
    """The server cannot start: the message says what is missing and how to fix it."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(searcher, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve `create_app(searcher)` with uvicorn until interrupted (one process; requests share the lock)."""
    import uvicorn

    if not is_loopback(host):
        log.warning("binding %s: the API has no authentication; anyone who can reach this port can use it", host)
    uvicorn.run(create_app(searcher=searcher), host=host, port=port, log_level=log_level)
