"""`engine serve`: the HTTP API and the web page over one Searcher.

    from engine.serve import create_app, load_searcher, run_server
    run_server(load_searcher(index_dir), host="127.0.0.1", port=8000)

The app itself is in `engine.serve.app`; the page is hand-written HTML/JS/CSS in `engine/serve/static/`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

from engine.serve.app import create_app

log = logging.getLogger(__name__)

__all__ = ["ServeError", "create_app", "is_loopback", "load_searcher", "run_server"]


class ServeError(RuntimeError):
    """The server cannot start: the message says what is missing and how to fix it."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_searcher(index: str | Path | None = None, localizer: str | Path | None = None, device: str = "cpu",
                  notify: Callable[[str], None] | None = None,
                  progress: Callable[[str, int, int], None] | None = None, warmup: bool = True):
    """Open the Searcher once (the built-in index, prepared on first use, when `index` is None).

    `warmup` runs one small query so that the first request does not pay for lazy model initialisation.
    """
    from engine.corpus.types import CorpusError
    from engine.search import Searcher

    if index is None:
        from engine.home import default_index_dir, ensure_default_index

        if not (default_index_dir() / "CURRENT").exists() and notify:
            notify("preparing the built-in corpus and its index (first run only, a few minutes) ...")
        index = ensure_default_index(progress=progress, device=device)  # opened and verified
    elif not Path(index).exists():
        raise ServeError(f"{index}: no such index; build one with `engine index build --corpus CORPUS_DIR "
                         f"--out {index} --model RUN_DIR`")
    if localizer is not None and not Path(localizer).exists():
        raise ServeError(f"{localizer}: no such localizer run directory")
    try:
        searcher = Searcher(index, localizer=localizer, device=device)
    except (CorpusError, FileNotFoundError, ValueError, OSError) as e:
        where = getattr(index, "index_dir", index)
        raise ServeError(f"{where}: cannot load the index ({e}); check it with `engine index verify {where}`") from e
    if warmup and searcher.meta:
        searcher.search("a person walks forward", k=min(8, len(searcher.meta)), limit=1)
    return searcher


def run_server(searcher, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve `create_app(searcher)` with uvicorn until interrupted (one process; requests share the lock)."""
    import uvicorn

    if not is_loopback(host):
        log.warning("binding %s: the API has no authentication; anyone who can reach this port can use it", host)
    uvicorn.run(create_app(searcher=searcher), host=host, port=port, log_level=log_level)
