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
    """(features -> cached S-Enc output, tag) for the index's per-motion cache of the localizer."""
    from engine.search import localizer_tag
    from localizer.infer import Localizer

    loc = Localizer.load(localizer_path, device=device)

    def fn(features):
        return loc.encode_motions([features])[0].features

    return fn, localizer_tag(localizer_path)


def ensure_default_index(progress: Callable[[str, int, int], None] | None = None, device: str = "cpu",
                         preset: str = "demo") -> Path:
    """Build the built-in corpus and its index when absent (each step atomic); return the index dir."""
    from indexer.build import IndexConfig, build_index, verify
    from indexer.manifest import read_current
    from indexer.model import load_retrieval

    index_dir = default_index_dir()
    try:
        if read_current(index_dir) and verify(index_dir, deep=False).ok:
            return index_dir
    except (FileNotFoundError, OSError, ValueError):
        pass
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
    model = load_retrieval(default_retrieval_path(), device=device)
    build_index(corpus, index_dir, model, IndexConfig(), device=device, motion_feature_fn=fn,
                motion_feature_tag=tag, progress=progress)
    return index_dir
