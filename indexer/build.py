"""Building an index: full builds and incremental updates, each a new version published atomically.

`build_index` / `rebuild_index` embed every motion; `add_to_index` / `remove_from_index` / `sync_index`
make a new version from the live one, re-using the embeddings of unchanged motions. Chunk ids are
deterministic (see indexer/chunks.py), so an updated index equals a full rebuild. Each turns its arguments
into one `indexer.stages.BuildRequest` and runs the stages (indexer/stages.py lists the files each writes).

Where the rest lives:

- `indexer.config`: `IndexConfig`;  `indexer.manifest`: the version layout, `Manifest`, `LocalizerRef`;
- `indexer.index`: `open_index` -> `ChunkIndex` (the read path);  `indexer.verify`: `verify`;
- `indexer.versions`: `index_info`, `prune_versions`;  `indexer.embed`: `EmbedBackend`, `EmbedJob`;
- `indexer.arrow_io` (Arrow files), `indexer.faiss_index` (FAISS, exact top-k, recall).

Those names are re-exported here, so `from indexer.build import open_index` keeps working.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from engine.corpus.types import CorpusError
from indexer.arrow_io import Embeddings, read_embeddings, read_motion_features  # noqa: F401 (re-exported)
from indexer.chunks import ChunkDB, IndexedMotion, chunk_window, plan_chunks  # noqa: F401 (re-exported)
from indexer.config import KINDS, IndexConfig, MotionFeatureFn, ProgressFn  # noqa: F401 (re-exported)
from indexer.embed import EmbedBackend, EmbedJob, embed_chunks, feature_reader  # noqa: F401 (re-exported)
from indexer.faiss_index import exact_topk, faiss_factory_string, make_faiss_index, measure_recall  # noqa: F401
from indexer.index import ChunkHits, ChunkIndex, MotionHits, open_index  # noqa: F401 (re-exported)
from indexer.inputs import corpus_info, corpus_motions, model_from, open_store, store_from_info
from indexer.manifest import (  # noqa: F401 (re-exported)
    CHUNKS_DB,
    EMBEDDINGS,
    FAISS_FILE,
    MODEL_FILE,
    MOTION_FEATURES,
    LocalizerRef,
    Manifest,
    read_current,
    version_dir,
)
from indexer.stages import STAGES, BuildReport, BuildRequest, run_build  # noqa: F401 (re-exported)
from indexer.verify import VerifyReport, check_files, verify  # noqa: F401 (re-exported)
from indexer.versions import IndexInfo, VersionInfo, index_info, index_lock, prune_versions  # noqa: F401

log = logging.getLogger(__name__)


def build_index(corpus, index_dir: str | os.PathLike, model, config: IndexConfig | None = None,
                device: str | None = None, motion_feature_fn: MotionFeatureFn | None = None,
                motion_feature_tag: str | None = None, progress: ProgressFn | None = None,
                force: bool = False, embed_backend: EmbedBackend | None = None,
                localizer: LocalizerRef | None = None) -> BuildReport:
    """Full build of every (split/source-filtered) corpus motion into a new version of `index_dir`.

    `corpus`: a CorpusStore or its directory. `model`: a RetrievalModel, a run directory or a checkpoint.
    A killed build re-run with the same arguments resumes; an up-to-date index is left alone unless
    `force`. `motion_feature_fn(features (T-1, 263)) -> array` caches a per-motion array (e.g. the
    localizer's query-independent features) keyed by motion_id; `motion_feature_tag` names it, and
    `localizer` (the checkpoint it came from) is recorded in the manifest for searchers to default to.
    `embed_backend` (e.g. `indexer.ray_backend.RayEmbedBackend`) computes the chunk vectors elsewhere;
    None embeds in this process. Either gives the same index.
    """
    config = config or IndexConfig()
    index_dir = Path(index_dir)
    store = open_store(corpus)
    model = model_from(model, device)
    with index_lock(index_dir):
        motions = corpus_motions(store, config)
        return run_build(BuildRequest(
            index_dir=index_dir, op="full", config=config, model=model, store=store, motions=tuple(motions),
            corpus_info=corpus_info(store), motion_feature_fn=motion_feature_fn,
            motion_feature_tag=motion_feature_tag, localizer=localizer, progress=progress, force=force,
            embed_backend=embed_backend))


def _live(index_dir: Path) -> tuple[str, Path, Manifest]:
    """(version, its directory, its manifest) of the live version, after checking its files."""
    current = read_current(index_dir)
    if current is None:
        raise FileNotFoundError(f"{index_dir}: no index version yet (build one with `engine index build`)")
    vdir = version_dir(index_dir, current)
    man = Manifest.read(vdir)
    problems = check_files(vdir, man)
    if problems:
        raise CorpusError(str(vdir), "; ".join(problems))
    return current, vdir, man


def rebuild_index(index_dir: str | os.PathLike, corpus=None, model=None, config: IndexConfig | None = None,
                  device: str | None = None, motion_feature_fn: MotionFeatureFn | None = None,
                  motion_feature_tag: str | None = None, progress: ProgressFn | None = None,
                  embed_backend: EmbedBackend | None = None, localizer: LocalizerRef | None = None) -> BuildReport:
    """Full rebuild into a new version; corpus, model and config default to the live version's."""
    index_dir = Path(index_dir)
    _, vdir, man = _live(index_dir)
    if corpus is None:
        corpus = store_from_info(man.corpus)
    if model is None:
        from indexer.model import RetrievalModel

        model = RetrievalModel.load(vdir / MODEL_FILE, device=device)
    return build_index(corpus, index_dir, model, config or IndexConfig.from_dict(man.config), device=device,
                       motion_feature_fn=motion_feature_fn, motion_feature_tag=motion_feature_tag,
                       progress=progress, force=True, embed_backend=embed_backend, localizer=localizer)


def _update(index_dir: Path, op: str, corpus=None, add_ids: Iterable[int] | None = None,
            remove_ids: Iterable[int] = (), add_all_missing: bool = False, device: str | None = None,
            motion_feature_fn: MotionFeatureFn | None = None, motion_feature_tag: str | None = None,
            localizer: LocalizerRef | None = None, progress: ProgressFn | None = None,
            embed_backend: EmbedBackend | None = None) -> BuildReport:
    """A new version from the live one: `remove_ids` dropped, `add_ids` (or with `add_all_missing`, every
    corpus motion in the index's filter) added or, when their length changed, re-embedded; with op "sync",
    motions gone from the corpus are removed too."""
    with index_lock(index_dir):
        current, vdir, man = _live(index_dir)
        config = IndexConfig.from_dict(man.config)
        from indexer.model import RetrievalModel

        model = RetrievalModel.load(vdir / MODEL_FILE, device=device)
        if model.fingerprint() != man.model_fingerprint:
            raise CorpusError(str(vdir / MODEL_FILE), "model fingerprint differs from the manifest")
        with ChunkDB(vdir / CHUNKS_DB) as db:
            base_motions = {m.motion_id: m for m in db.motions()}
        store = open_store(corpus) if (corpus is not None or add_all_missing or add_ids) else None
        if store is None and (add_all_missing or add_ids):
            store = store_from_info(man.corpus)
        remove = {int(i) for i in remove_ids}
        unknown = sorted(remove - set(base_motions))
        if unknown:
            log.warning("%s: motions %s are not in the index", index_dir, unknown[:10])
        incoming: list[IndexedMotion] = []
        if add_ids is not None:
            incoming = corpus_motions(store, config, add_ids)
        elif add_all_missing:
            incoming = corpus_motions(store, config)
        if op == "sync":
            present = {m.motion_id for m in incoming}
            remove |= {mid for mid in base_motions if mid not in present}
        motions = {mid: m for mid, m in base_motions.items() if mid not in remove}
        changed = set()
        for m in incoming:
            old = motions.get(m.motion_id)
            if old is not None and (old.n_frames != m.n_frames or abs(old.fps - m.fps) > 1e-9):
                changed.add(m.motion_id)
            if old is None or m.motion_id in changed:
                motions[m.motion_id] = m
        reuse = {mid for mid in motions if mid in base_motions and mid not in changed}
        if man.motion_feature_tag and motion_feature_fn is None and len(reuse) < len(motions):
            where = man.localizer.path if man.localizer is not None else f"sha256 {man.motion_feature_tag[:12]}"
            raise CorpusError(str(index_dir), f"the live version caches the localizer's motion encoding ({where}); "
                                              "pass --localizer RUN (the localizer the index was built with; "
                                              "motion_feature_fn= in the library) so that new motions are encoded "
                                              "the same way")
        tag = motion_feature_tag or (man.motion_feature_tag if motion_feature_fn is None else None)
        if motion_feature_fn is None and tag:
            motion_feature_fn = _no_features  # every motion is re-used; never called
        if localizer is None and tag is not None and tag == man.motion_feature_tag:
            localizer = man.localizer  # the cached features still come from the live version's localizer
        return run_build(BuildRequest(
            index_dir=index_dir, op=op, config=config, model=model, store=store,
            motions=tuple(motions[k] for k in sorted(motions)),
            corpus_info=corpus_info(store) if store is not None else man.corpus, reuse=frozenset(reuse),
            base_version=current, motion_feature_fn=motion_feature_fn, motion_feature_tag=tag,
            localizer=localizer, progress=progress, embed_backend=embed_backend))


def _no_features(features: np.ndarray) -> np.ndarray:  # pragma: no cover - guarded above
    raise RuntimeError("no motion_feature_fn")


def add_to_index(index_dir: str | os.PathLike, corpus=None, motion_ids: Iterable[int] | None = None,
                 device: str | None = None, motion_feature_fn: MotionFeatureFn | None = None,
                 motion_feature_tag: str | None = None, progress: ProgressFn | None = None,
                 embed_backend: EmbedBackend | None = None, localizer: LocalizerRef | None = None) -> BuildReport:
    """New version with `motion_ids` (default: every corpus motion not yet indexed, within the index's
    split/source filter) added; unchanged motions keep their embeddings. Uses the live version's model."""
    return _update(Path(index_dir), "add", corpus, add_ids=motion_ids, add_all_missing=motion_ids is None,
                   device=device, motion_feature_fn=motion_feature_fn, motion_feature_tag=motion_feature_tag,
                   localizer=localizer, progress=progress, embed_backend=embed_backend)


def remove_from_index(index_dir: str | os.PathLike, motion_ids: Iterable[int],
                      progress: ProgressFn | None = None) -> BuildReport:
    """New version without `motion_ids`; nothing is re-embedded and no corpus is needed."""
    return _update(Path(index_dir), "remove", remove_ids=motion_ids, progress=progress)


def sync_index(index_dir: str | os.PathLike, corpus=None, device: str | None = None,
               motion_feature_fn: MotionFeatureFn | None = None, motion_feature_tag: str | None = None,
               progress: ProgressFn | None = None, embed_backend: EmbedBackend | None = None,
               localizer: LocalizerRef | None = None) -> BuildReport:
    """New version matching the corpus: new motions added, motions gone from it removed."""
    return _update(Path(index_dir), "sync", corpus, add_all_missing=True, device=device,
                   motion_feature_fn=motion_feature_fn, motion_feature_tag=motion_feature_tag,
                   localizer=localizer, progress=progress, embed_backend=embed_backend)
