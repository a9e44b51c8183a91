"""What a build reads: the corpus store (given, or the one a manifest names), the motions to index, and
the retrieval model (given, or loaded from a run directory or checkpoint)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.corpus.types import CorpusError
from indexer.chunks import IndexedMotion
from indexer.config import IndexConfig


def open_store(corpus):
    """A CorpusStore for `corpus` (a store, its directory, or None)."""
    from engine.corpus.store import CorpusStore

    if corpus is None:
        return None
    if isinstance(corpus, CorpusStore):
        return corpus
    return CorpusStore.open(corpus, create=False)


def store_from_info(info: dict[str, Any]):
    """The corpus store a manifest's `corpus` entry ({"dir", "url"?}) names."""
    from engine.corpus.store import CorpusStore

    if not info.get("dir"):
        raise CorpusError("index manifest", "records no corpus; pass one")
    return CorpusStore.open(info["dir"], url=info.get("url"), create=False)


def corpus_info(store) -> dict[str, Any]:
    """The manifest's `corpus` entry of a store: its directory, and its SQL URL when not the default."""
    default = f"sqlite:///{(Path(store.dir) / 'corpus.sqlite').resolve()}"
    info: dict[str, Any] = {"dir": str(Path(store.dir).resolve())}
    if store.url != default:
        info["url"] = store.url
    return info


def corpus_motions(store, config: IndexConfig, motion_ids: Iterable[int] | None = None) -> list[IndexedMotion]:
    """The motions `motion_ids` of the corpus (all of them must exist), or every motion within the
    config's split / source filter."""
    rows = store.motion_table()
    if motion_ids is not None:
        wanted = {int(i) for i in motion_ids}
        known = {r.motion_id for r in rows}
        missing = sorted(wanted - known)
        if missing:
            raise CorpusError(f"corpus {store.dir}", f"no motions with ids {missing[:10]}")
        rows = [r for r in rows if r.motion_id in wanted]
    else:
        rows = [r for r in rows if (config.split is None or r.split == config.split)
                and (config.source is None or r.source == config.source)]
    return [IndexedMotion(r.motion_id, r.name, r.source, r.fps, r.n_frames, r.duration_s, r.split) for r in rows]


def model_from(model, device: str | None):
    """A RetrievalModel in eval mode from a model, a run directory or a checkpoint."""
    from indexer.model import RetrievalModel, load_retrieval

    if isinstance(model, RetrievalModel):
        return model.eval()
    if model is None:
        raise ValueError("a retrieval model (RetrievalModel or run directory) is needed to build an index")
    return load_retrieval(model, device=device)
