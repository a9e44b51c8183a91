"""Export a loaded `Localizer`'s query-dependent part (`MLPLocalizer.localize`, everything after S-Enc) to
ONNX, and check the graph against torch before anyone uses it.

Generic over the model configuration: the graph is traced from the model's own forward, then run by ONNX
Runtime on real cached motions at batch sizes, motion lengths and sentence lengths other than the traced
ones, and compared with `Localizer.distributions`. A variant whose graph does not reproduce torch within
`TOLERANCE` is refused (ModelError): the search then runs on torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.corpus.onnx_io import export_onnx, ort_session
from engine.corpus.types import ModelError
from localizer.infer import EncodedMotion, Localizer
from localizer.onnx_infer import INPUTS, OUTPUTS, OnnxLocalizer, OnnxLocalizerSpec

# Largest absolute difference allowed between the graph's and torch's start / end / highlight values.
TOLERANCE = 1e-4
CHECK_TEXTS = ("a person walks forward", "someone waves with the right hand and then jumps twice", "kick")


@dataclass(frozen=True)
class LocalizerExport:
    spec: OnnxLocalizerSpec
    max_abs_diff: float  # measured on the check batches


class _LocalizeGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, motion, motion_mask, text, text_mask):
        p = self.model.localize(motion, motion_mask, text, text_mask)
        return p.p_start, p.p_end, p.highlight


def localizer_spec(loc: Localizer) -> OnnxLocalizerSpec:
    c = loc.config
    return OnnxLocalizerSpec(sha256=loc.fingerprint(), variant=c.variant, n_snippets=c.model.n_snippets,
                             d_model=c.model.d_model, text_dim=c.model.text_dim, text_encoder=c.train.text_encoder,
                             max_tokens=c.train.max_tokens, max_span=c.max_span)


def export_localizer_onnx(loc: Localizer, out: str | os.PathLike, motions: Sequence[EncodedMotion],
                          token_encoder) -> LocalizerExport:
    """Write the graph of `loc` to `out` (atomically) and check it on `motions` (cached encodings, at least
    one) with `token_encoder` (the query path's); refused (file removed, ModelError) beyond TOLERANCE."""
    if loc.device.type != "cpu":
        raise ModelError(str(loc.checkpoint), "export the ONNX localizer from a CPU Localizer")
    if not motions:
        raise ModelError(str(loc.checkpoint), "no cached motion encodings to check the ONNX localizer on")
    spec = localizer_spec(loc)
    where = str(loc.checkpoint)
    # Traced on 2 motions of different lengths and a 4-token sentence; checked on other shapes below.
    d = spec.d_model
    m = torch.zeros(2, 5, d)
    m[0] = torch.randn(5, d, generator=torch.Generator().manual_seed(0))
    m[1, :3] = torch.randn(3, d, generator=torch.Generator().manual_seed(1))
    m_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    q = torch.randn(2, 4, spec.text_dim, generator=torch.Generator().manual_seed(2))
    q_mask = torch.tensor([[True] * 4, [True] * 3 + [False]])
    try:
        export_onnx(_LocalizeGraph(loc.model), (m, m_mask, q, q_mask), out, INPUTS, OUTPUTS,
                    {"motion": {0: "batch", 1: "snippets"}, "motion_mask": {0: "batch", 1: "snippets"},
                     "text": {0: "batch", 1: "tokens"}, "text_mask": {0: "batch", 1: "tokens"},
                     **{o: {0: "batch", 1: "snippets"} for o in OUTPUTS}})
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporter's own errors: this variant does not export
        raise ModelError(where, f"localizer variant {spec.variant!r} does not export to ONNX "
                                f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); use --backend torch") from e
    onnx_loc = OnnxLocalizer(ort_session(Path(out).read_bytes(), str(out)), spec, token_encoder)
    loc_check = Localizer(loc.model, loc.config, device="cpu", text_encoder=_Tokens(onnx_loc))
    worst = 0.0
    motions = list(motions)
    for bs in (1, 3, 64):
        for t in CHECK_TEXTS:
            want = loc_check.distributions(t, motions, batch_size=bs)
            got = onnx_loc.distributions(t, motions, batch_size=bs)
            for a, b in zip(want, got):
                for x, y in ((a.p_start, b.p_start), (a.p_end, b.p_end), (a.highlight, b.highlight)):
                    worst = max(worst, float(np.abs(np.asarray(x) - np.asarray(y)).max()))
    if not worst <= TOLERANCE:
        Path(out).unlink(missing_ok=True)
        raise ModelError(where, f"localizer variant {spec.variant!r}: its ONNX graph differs from torch by "
                                f"{worst:.2e} (> {TOLERANCE:g}); use --backend torch")
    return LocalizerExport(spec=spec, max_abs_diff=worst)


class _Tokens:
    """The torch Localizer's text encoder for the check: the ONNX path's token embeddings, so that the check
    compares the localizer graphs alone (the text encoder is checked on its own)."""

    def __init__(self, onnx_loc: OnnxLocalizer):
        self.onnx_loc = onnx_loc

    def encode(self, texts):
        from engine.corpus.text import TokenBatch

        arrays = self.onnx_loc.texts_tokens(texts)
        n = max(len(a) for a in arrays)
        emb = np.zeros((len(arrays), n, arrays[0].shape[1]), np.float32)
        mask = np.zeros((len(arrays), n), bool)
        for i, a in enumerate(arrays):
            emb[i, : len(a)], mask[i, : len(a)] = a, True
        return TokenBatch(emb=emb, mask=mask)
