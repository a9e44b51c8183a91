"""The ONNX query path: export an index's query models once (torch), open them without torch.

`open_query_models(index, localizer_dir)` gives the (retrieval, localizer) pair the Searcher calls
(`encode_text`; `localize`, `fingerprint`) from the index version's ONNX graphs (indexer/query_models.py):
numpy + faiss + sqlite + onnxruntime + tokenizers, never torch. It raises `QueryModelsUnavailable` when
the version has none that fit, `IndexFileError` naming a graph whose bytes do not match the sidecar.

`export_query_models(index, retrieval, localizer)` writes them from loaded torch models: the BERT text
encoder (once per BERT, in $ENGINE_HOME/onnx), the retrieval model's text projection and the localizer's
query-dependent part, each checked against torch before the sidecar that makes them usable is written.
The CLI and the server export after a torch search (`load_searcher(backend="auto")`), so the next process
takes the fast path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from engine.corpus.types import IndexFileError, ModelError
from indexer.query_models import (
    TEXT_GRAPH,
    QueryModels,
    QueryModelsUnavailable,
    SourceFile,
    localizer_graph_name,
    read_graph,
)

if TYPE_CHECKING:
    from indexer.index import ChunkIndex

log = logging.getLogger(__name__)

BERT_SOURCES = ("config.json", "tokenizer.json", "model.safetensors")
TEXT_COS_MIN = 0.9999  # the whole text path (BERT + projection) against torch, at export


def onnx_cache_dir() -> Path:
    from engine.home import engine_home

    return engine_home() / "onnx"


def _index_localizer(index: ChunkIndex) -> str | None:
    man = index.manifest
    if man.motion_feature_tag is None:
        return None
    return man.localizer.sha256 if man.localizer is not None else man.motion_feature_tag


def open_query_models(index: ChunkIndex, localizer_dir: str | os.PathLike, threads: int | None = None):
    """(OnnxRetrieval, OnnxLocalizer) of the version's exported graphs for the localizer `localizer_dir`."""
    from engine.corpus.bert import WordPiece, sentence_pipeline
    from engine.corpus.bert_onnx import OnnxBert
    from engine.corpus.onnx_io import onnxruntime_available, ort_session
    from indexer.query_models import OnnxRetrieval
    from localizer.fingerprint import localizer_fingerprint
    from localizer.onnx_infer import OnnxLocalizer, OnnxLocalizerSpec

    vdir = index.dir
    qm = QueryModels.read(vdir)
    if qm is None:
        raise QueryModelsUnavailable(str(vdir), "no ONNX query models exported (one search with the torch "
                                                "backend exports them)")
    if qm.model_fingerprint != index.manifest.model_fingerprint:
        raise QueryModelsUnavailable(str(vdir), "the ONNX query models were exported from another retrieval model")
    sha = localizer_fingerprint(localizer_dir)
    try:
        spec = OnnxLocalizerSpec.from_dict(qm.localizer["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise IndexFileError(str(vdir / "query_models.json"), f"malformed localizer spec: {e!r}") from e
    if spec.sha256 != sha:
        raise QueryModelsUnavailable(str(vdir), f"the ONNX localizer was exported from another checkpoint than "
                                                f"{localizer_dir}")
    if _index_localizer(index) != sha:
        raise QueryModelsUnavailable(str(vdir), "the index does not cache this localizer's motion encoding")
    te = qm.text_encoder
    for name, src in te["sources"].items():
        if not src.matches(Path(te["dir"]) / name):
            raise QueryModelsUnavailable(str(vdir), f"the text encoder's {name} changed since the export")
    if not onnxruntime_available():
        raise QueryModelsUnavailable(str(vdir), "onnxruntime is not installed")
    import onnxruntime

    if qm.versions.get("onnxruntime") != onnxruntime.__version__:  # graphs are optimized for the exporting one
        raise QueryModelsUnavailable(str(vdir), f"the ONNX query models were optimized by onnxruntime "
                                                f"{qm.versions.get('onnxruntime')}, this is {onnxruntime.__version__}")
    files = qm.graph_paths(vdir)
    if TEXT_GRAPH not in files or qm.localizer["graph"] not in files:
        raise IndexFileError(str(vdir / "query_models.json"), "the sidecar lists no text or localizer graph")
    text_path, text_entry = files["text encoder"]
    proj_path, proj_entry = files[TEXT_GRAPH]
    loc_path, loc_entry = files[qm.localizer["graph"]]
    sessions = {}
    for key, (path, entry) in {"bert": (text_path, text_entry), "proj": (proj_path, proj_entry),
                               "loc": (loc_path, loc_entry)}.items():
        try:
            sessions[key] = ort_session(read_graph(path, entry), str(path), threads=threads)
        except ModelError as e:  # matched its sha256 but does not load: the file itself is bad
            raise IndexFileError(str(path), e.problem) from e
    pipeline = sentence_pipeline(te["dir"])
    if pipeline is None or pipeline.max_length != int(te["sentence_max_length"]):
        raise QueryModelsUnavailable(str(vdir), "the text encoder's pooling settings changed since the export")
    wp = WordPiece(Path(te["dir"]) / "tokenizer.json", int(te["max_positions"]))
    bert = OnnxBert(sessions["bert"], wp, int(te["dim"]))
    retrieval = OnnxRetrieval(sessions["proj"], bert, pipeline.max_length, int(te["embed_dim"]))
    return retrieval, OnnxLocalizer(sessions["loc"], spec, bert)


def _bert_dir(retrieval, localizer) -> str:
    """The one BERT directory both the retrieval model and the localizer read (else ModelError)."""
    from engine.corpus.bert import is_plain_bert, sentence_pipeline
    from engine.corpus.text import resolve_model_path

    rt = retrieval.config.text_model
    lt = localizer.config.train.text_encoder
    if lt == "glove":
        raise ModelError(str(localizer.checkpoint), "the ONNX path runs BERT text encoders only (this localizer "
                                                    "reads GloVe vectors)")
    r_dir = resolve_model_path(None if rt == "minilm" else rt)
    l_dir = resolve_model_path(lt)
    if os.path.realpath(r_dir) != os.path.realpath(l_dir):
        raise ModelError(str(localizer.checkpoint), f"the ONNX path needs one text encoder for retrieval and "
                                                    f"localizer (they read {r_dir} and {l_dir})")
    if not is_plain_bert(r_dir) or sentence_pipeline(r_dir) is None:
        raise ModelError(r_dir, "the ONNX path runs plain BERT mean-pooling encoders only (like all-MiniLM-L6-v2)")
    return r_dir


def export_query_models(index: ChunkIndex, retrieval, localizer, sources: Mapping[str, str | os.PathLike] = (),
                        cache_dir: str | os.PathLike | None = None,
                        notify: Callable[[], None] | None = None) -> QueryModels:
    """Export and check the query models of `index` for the loaded torch `retrieval` model and `localizer`,
    then write the sidecar (last, atomically). `sources`: {name: file} recorded so that a caller can tell,
    without torch, that the artefact still fits them (the built-in index's shipped checkpoints).
    ModelError when a model does not export or its graph differs from torch. `notify()` is called once the
    models are known to fit, before the export work (seconds)."""
    import numpy as np
    import onnxruntime
    import torch

    from engine.corpus.bert import load_bert, sentence_pipeline
    from engine.corpus.bert_onnx import CHECK_SENTENCES, OnnxBert, export_bert_onnx
    from engine.corpus.onnx_io import export_onnx, ort_session
    from indexer.manifest import FileEntry
    from indexer.query_models import OnnxRetrieval
    from localizer.infer import EncodedMotion
    from localizer.onnx_export import export_localizer_onnx

    t0 = time.perf_counter()
    vdir = index.dir
    sha = localizer.fingerprint()
    if _index_localizer(index) != sha:
        raise QueryModelsUnavailable(str(vdir), "the index does not cache this localizer's motion encoding, which "
                                                "the ONNX path needs")
    if retrieval.fingerprint() != index.manifest.model_fingerprint:
        raise ModelError(str(vdir), "the retrieval model is not the index's")
    bert_dir = _bert_dir(retrieval, localizer)
    pipeline = sentence_pipeline(bert_dir)
    if notify:
        notify()
    src = {name: SourceFile.of(Path(bert_dir) / name) for name in BERT_SOURCES}
    cache = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # Optimized by this onnxruntime (`export_onnx`): another version exports its own.
    bert_graph = cache / (f"bert-{src['model.safetensors'].sha256[:16]}-{src['tokenizer.json'].sha256[:8]}"
                          f"-ort{onnxruntime.__version__}.onnx")
    check = None
    if not bert_graph.is_file():
        check = export_bert_onnx(bert_dir, bert_graph, pipeline.max_length)
    bert_entry = SourceFile.of(bert_graph)
    bert = load_bert(bert_dir, "cpu")
    onnx_bert = OnnxBert(ort_session(bert_graph.read_bytes(), str(bert_graph)), bert.wordpiece, bert.dim)

    # The retrieval model's text projection: sentence (B, text_dim) -> unit query (B, E).
    proj = retrieval.text.cpu() if retrieval.device.type == "cpu" else None
    if proj is None:
        raise ModelError(str(vdir), "export the ONNX query models from a CPU retrieval model")
    export_onnx(proj, (torch.zeros(2, retrieval.config.text_dim),), vdir / TEXT_GRAPH, ["sentence"], ["query"],
                {"sentence": {0: "batch"}, "query": {0: "batch"}})
    onnx_retrieval = OnnxRetrieval(ort_session((vdir / TEXT_GRAPH).read_bytes(), str(vdir / TEXT_GRAPH)), onnx_bert,
                                   pipeline.max_length, retrieval.config.embed_dim)
    got = onnx_retrieval.encode_text(list(CHECK_SENTENCES))
    want = np.concatenate([retrieval.encode_text([t]) for t in CHECK_SENTENCES])
    text_cos = float(np.min(np.sum(got * want, axis=1)))
    if not text_cos >= TEXT_COS_MIN:
        raise ModelError(str(vdir / TEXT_GRAPH), f"the ONNX text path differs from torch (cosine {text_cos:.6f})")

    ids = sorted(index.motions)[:32]
    motions = [EncodedMotion(f, float(index.motions[m].duration_s), m) for m in ids
               if (f := index.motion_features(m)) is not None]
    loc_name = localizer_graph_name(sha)
    loc = export_localizer_onnx(localizer, vdir / loc_name, motions, onnx_bert)
    files = {name: SourceFile.of(vdir / name) for name in (TEXT_GRAPH, loc_name)}
    qm = QueryModels(
        model_fingerprint=index.manifest.model_fingerprint,
        files={k: FileEntry(v.sha256, v.bytes) for k, v in files.items()},
        text_encoder={"dir": str(bert_dir), "graph": str(bert_graph.resolve()),
                      "entry": FileEntry(bert_entry.sha256, bert_entry.bytes), "sources": src,
                      "sentence_max_length": pipeline.max_length, "max_positions": bert.config.max_positions,
                      "dim": bert.dim, "embed_dim": retrieval.config.embed_dim, "text_cos_min": text_cos,
                      **({"sentence_cos_min": check.sentence_cos_min, "hidden_max_abs": check.hidden_max_abs}
                         if check else {})},
        localizer={"graph": loc_name, "spec": loc.spec.to_dict(), "max_abs_diff": loc.max_abs_diff,
                   "path": str(localizer.checkpoint)},
        sources={name: SourceFile.of(p) for name, p in dict(sources).items()},
        versions={"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    qm.write(vdir)
    for p in vdir.glob("query_localizer-*.onnx"):  # graphs of earlier localizers
        if p.name != loc_name:
            p.unlink(missing_ok=True)
    log.info("exported the ONNX query models of %s in %.1f s", vdir, time.perf_counter() - t0)
    return qm
