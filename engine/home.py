"""Where the built-in corpus and its index live, and how they are prepared on first use.

`ENGINE_HOME` (default `~/.cache/motion-engine`) holds `demo-corpus/` and `demo-index/`. The models are
shipped in the package (`engine/models/`), trained by the project's own commands:

    engine data synth --preset demo --out corpora/demo
    engine train retrieval --corpus corpora/demo --run engine/models/retrieval-demo ...
    engine train localizer --corpus corpora/demo --run engine/models/localizer-demo ...
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indexer.index import ChunkIndex
    from indexer.manifest import Manifest

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "models"


def engine_home() -> Path:
    return Path(os.environ.get("ENGINE_HOME", "~/.cache/motion-engine")).expanduser()


def default_retrieval_path() -> Path:
    return MODELS_DIR / "retrieval-demo"


def default_localizer_path() -> Path:
    return MODELS_DIR / "localizer-demo"


def default_index_dir() -> Path:
    return engine_home() / "demo-index"


def default_corpus_dir() -> Path:
    return engine_home() / "demo-corpus"


def default_corpus_ready() -> bool:
    """Whether the built-in corpus has been generated completely (it is renamed into place with a marker)."""
    corpus = default_corpus_dir()
    return (corpus / "manifest.json").exists() and (corpus / ".complete").exists()


def localizer_feature_fn(localizer_path: Path, device: str = "cpu") -> tuple[Callable, str]:
    """(features -> cached S-Enc output, the localizer's fingerprint) for the index's per-motion cache."""
    from localizer.infer import Localizer

    loc = Localizer.load(localizer_path, device=device)

    def fn(features):
        return loc.encode_motions([features])[0].features

    return fn, loc.fingerprint()


def default_index_stale(manifest: Manifest, retrieval_fingerprint: str, localizer_sha256: str) -> str | None:
    """Why the built-in index no longer fits the shipped models (a sentence for the log), or None.

    The index must have been embedded with the shipped retrieval model, must cache the encoding of
    the shipped localizer: its manifest's `localizer.sha256` (or, in manifests written before that field,
    the motion feature tag, which held the same checkpoint sha256), and must have a window bank."""
    if manifest.model_fingerprint != retrieval_fingerprint:
        return (f"the shipped retrieval model changed (index {manifest.model_fingerprint[:12]}, "
                f"shipped {retrieval_fingerprint[:12]})")
    index_loc = manifest.localizer.sha256 if manifest.localizer is not None else manifest.motion_feature_tag
    if index_loc != localizer_sha256:
        return f"the shipped localizer changed (index {str(index_loc)[:12]}, shipped {localizer_sha256[:12]})"
    if not manifest.config.get("window_bank"):
        return "it has no window bank (the default fused score's span similarity)"
    return None


def ensure_default_index(progress: Callable[[str, int, int], None] | None = None, device: str = "cpu",
                         preset: str = "demo") -> ChunkIndex:
    """The built-in index, opened (every file's checksum verified once): built, with the built-in corpus,
    when absent, when it does not load, or when the shipped models changed since it was built."""
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.index import open_index
    from indexer.manifest import LocalizerRef, Manifest, read_current, version_dir
    from indexer.model import load_retrieval
    from localizer.fingerprint import localizer_fingerprint

    index_dir = default_index_dir()
    model = load_retrieval(default_retrieval_path(), device=device)
    localizer = LocalizerRef(str(default_localizer_path()), localizer_fingerprint(default_localizer_path()))
    reason = "none built yet"
    try:
        current = read_current(index_dir)
        if current is not None:
            reason = default_index_stale(Manifest.read(version_dir(index_dir, current)), model.fingerprint(),
                                         localizer.sha256)
            if reason is None:
                return open_index(index_dir, device=device)
    except (FileNotFoundError, OSError, ValueError) as e:  # ValueError: EngineError and its subclasses
        reason = f"the index does not load ({e})"
    log_fn = log.info if reason == "none built yet" else log.warning
    log_fn("building the built-in index in %s: %s", index_dir, reason)
    corpus = default_corpus_dir()
    if not default_corpus_ready():
        from engine.corpus import synth
        from engine.corpus.store import CorpusStore

        tmp = corpus.with_name(corpus.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(corpus, ignore_errors=True)
        config = synth.PRESETS[preset]
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress:
                progress("built-in corpus", done[0], config.n_motions)

        with CorpusStore.open(tmp) as store:
            store.add_motions(synth.generate(config, seed=0), progress=tick)
        (tmp / ".complete").write_text(preset)
        os.replace(tmp, corpus)
    fn, tag = localizer_feature_fn(default_localizer_path(), device=device)
    build_index(corpus, index_dir, model, IndexConfig(), device=device, motion_feature_fn=fn,
                motion_feature_tag=tag, localizer=localizer, progress=progress, force=True)
    return open_index(index_dir, device=device)
