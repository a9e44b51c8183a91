"""Where the built-in corpus and its index live, which shipped models they use, and how they are prepared
on first use.

`ENGINE_HOME` (default `~/.cache/motion-engine`) holds `demo-corpus/` and one index per model set
(`demo-index/` for the default set, `demo-index-NAME/` for another). The models are shipped in the package
(`engine/models/`, each with its MODEL_CARD.md), in two sets (`--models NAME`, or `ENGINE_MODELS`):

- `default`: trained on the procedural corpus and on real Bandai Namco motion capture (CC BY-NC 4.0:
  non-commercial use only, attribution to Bandai Namco Research);
- `synthetic`: trained on the procedural corpus only, for users who need models free of non-commercial data.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indexer.index import ChunkIndex
    from indexer.manifest import Manifest

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class ModelSet:
    """A shipped retrieval model and localizer that go together, and the terms they may be used under."""

    name: str
    retrieval: Path
    localizer: Path
    licence: str


MODEL_SETS: dict[str, ModelSet] = {
    "default": ModelSet("default", MODELS_DIR / "retrieval-mix", MODELS_DIR / "localizer-mix",
                        "trained on Bandai Namco Research motion capture: CC BY-NC 4.0, non-commercial use only"),
    "synthetic": ModelSet("synthetic", MODELS_DIR / "retrieval-demo", MODELS_DIR / "localizer-demo",
                          "trained on procedural motion only"),
}


def model_set(name: str | None = None) -> ModelSet:
    """The model set `name` (None: `ENGINE_MODELS`, else "default"); an unknown name is a RequestError."""
    from engine.corpus.types import RequestError

    key = name or os.environ.get("ENGINE_MODELS") or "default"
    if key not in MODEL_SETS:
        raise RequestError("models", f"unknown model set {key!r}; choose one of {', '.join(MODEL_SETS)}")
    return MODEL_SETS[key]


def engine_home() -> Path:
    return Path(os.environ.get("ENGINE_HOME", "~/.cache/motion-engine")).expanduser()


def default_retrieval_path(models: str | None = None) -> Path:
    return model_set(models).retrieval


def default_localizer_path(models: str | None = None) -> Path:
    return model_set(models).localizer


def default_index_dir(models: str | None = None) -> Path:
    name = model_set(models).name
    return engine_home() / ("demo-index" if name == "default" else f"demo-index-{name}")


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


def shipped_checkpoints(models: str | None = None) -> dict[str, Path]:
    """A model set's checkpoint files, by name: what the built-in index's ONNX query models record
    (indexer/query_models.py `sources`), so that a process can tell, without torch, that they still fit."""
    from localizer.fingerprint import resolve_checkpoint

    ms = model_set(models)
    names = ("best.pt", "model.pt", "last.pt")  # the order `indexer.model.load_retrieval` picks (torch-free here)
    ret = next((ms.retrieval / n for n in names if (ms.retrieval / n).is_file()), ms.retrieval / names[0])
    return {"retrieval": ret, "localizer": resolve_checkpoint(ms.localizer)}


def open_default_index_fast(device: str = "cpu", models: str | None = None) -> ChunkIndex:
    """The built-in index, opened without torch, when its ONNX query models were exported from the shipped
    checkpoints as they are now (their sha256, recorded at export, after `ensure_default_index` had checked
    that the index fits them). Else `QueryModelsUnavailable`: the torch path checks and rebuilds."""
    from indexer.index import open_index
    from indexer.manifest import Manifest, read_current, version_dir
    from indexer.query_models import QueryModels, QueryModelsUnavailable

    index_dir = default_index_dir(models)
    current = read_current(index_dir)
    if current is None:
        raise QueryModelsUnavailable(str(index_dir), "the built-in index is not built yet")
    qm = QueryModels.read(version_dir(index_dir, current))
    if qm is None:
        raise QueryModelsUnavailable(str(index_dir), "no ONNX query models exported yet")
    for name, path in shipped_checkpoints(models).items():
        src = qm.sources.get(name)
        if src is None or not src.matches(path):
            raise QueryModelsUnavailable(str(index_dir), f"the shipped {name} model changed since the export")
    if not Manifest.read(version_dir(index_dir, current)).config.get("window_bank"):  # as default_index_stale
        raise QueryModelsUnavailable(str(index_dir), "the built-in index has no window bank")
    return open_index(index_dir, device=device)


def ensure_default_index(progress: Callable[[str, int, int], None] | None = None, device: str = "cpu",
                         preset: str = "demo", models: str | None = None) -> ChunkIndex:
    """The built-in index of a model set, opened (every file's checksum verified once): built, with the
    built-in corpus, when absent, when it does not load, or when the set's models changed since."""
    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.index import open_index
    from indexer.manifest import LocalizerRef, Manifest, read_current, version_dir
    from indexer.model import load_retrieval
    from localizer.fingerprint import localizer_fingerprint

    ms = model_set(models)
    index_dir = default_index_dir(ms.name)
    model = load_retrieval(ms.retrieval, device=device)
    localizer = LocalizerRef(str(ms.localizer), localizer_fingerprint(ms.localizer))
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
    fn, tag = localizer_feature_fn(ms.localizer, device=device)
    build_index(corpus, index_dir, model, IndexConfig(), device=device, motion_feature_fn=fn,
                motion_feature_tag=tag, localizer=localizer, progress=progress, force=True)
    return open_index(index_dir, device=device)
