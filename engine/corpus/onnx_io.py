"""ONNX files of the query path: the one exporter (torch -> an .onnx file, atomically) and the one loader
(verified bytes -> an ONNX Runtime session). Used by the BERT text encoder (engine/corpus/bert_onnx.py), the
retrieval model's text projection (indexer/query_models.py) and the localizer (localizer/onnx_infer.py).

Loading never executes code: an ONNX file is a protobuf graph of standard operators and its weights. The
session is built from the bytes whose sha256 the caller checked (no window between check and use), with
no custom-operator libraries and no external data (an exported graph holds its weights inline, and a
graph loaded from bytes cannot name files to read). torch is imported by `export_onnx` only;
onnxruntime by `ort_session` only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from engine.corpus.io import atomic_writer
from engine.corpus.types import ModelError

OPSET = 17


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported (the ONNX query path needs it)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _options(threads: int | None = None, optimized: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # No spin-waiting between kernels: on a shared 2-core machine it steals the cores other work needs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Graphs are optimized once, at export (`export_onnx`): a session then loads them as they are, which
    # halves the session start of the BERT graph (0.15 s instead of 0.33 s).
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimized
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    opts.log_severity_level = 3  # errors only: no optimizer chatter on stderr
    return opts


def ort_session(data: bytes, where: str, threads: int | None = None):
    """An ONNX Runtime CPU session over a graph's bytes (as `export_onnx` wrote it: already optimized); a
    file that does not parse as one is a ModelError naming `where`. `threads`: intra-op threads (default:
    $OMP_NUM_THREADS, else ONNX Runtime's choice)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ModelError(where, "the ONNX query path needs onnxruntime (pip install onnxruntime)") from e
    opts = _options(threads)
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        text = " ".join(str(e).split())[:300]
        raise ModelError(where, f"not a loadable ONNX graph: {text}") from e


def export_onnx(module, args: Sequence, path: str | os.PathLike, input_names: Sequence[str],
                output_names: Sequence[str], dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Trace `module(*args)` into an ONNX graph (the TorchScript exporter, opset `OPSET`), optimize it with
    ONNX Runtime's hardware-independent graph optimizations (what `ort_session` then skips) and write it
    atomically to `path`. Needs the `onnx` package (the exporter's) and onnxruntime."""
    import warnings

    import torch

    try:
        import onnx  # noqa: F401 - the exporter needs it; say so in one line
    except ImportError as e:
        raise ModelError(str(path), "exporting the ONNX query models needs the onnx package (pip install onnx)") from e
    module = module.eval()
    with atomic_writer(path) as tmp, torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and GRU batch-size notes
        torch.onnx.export(module, tuple(args), str(tmp), input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic_axes, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
        import onnxruntime as ort

        opts = _options(optimized=False)
        opt_path = tmp.with_name(tmp.name + ".opt")
        opts.optimized_model_filepath = str(opt_path)
        try:
            ort.InferenceSession(str(tmp), sess_options=opts, providers=["CPUExecutionProvider"])
            os.replace(opt_path, tmp)
        finally:
            opt_path.unlink(missing_ok=True)
