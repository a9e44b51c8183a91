"""The localizer's query-dependent part through ONNX Runtime, without torch: `OnnxLocalizer` answers the
calls the Searcher makes of a `Localizer` (localize, distributions, texts_tokens, fingerprint) from the
motions' cached query-independent encoding (the index's `motion_features.arrow`).

The graph (exported by localizer/onnx_export.py) is `MLPLocalizer.localize`: cached motion features
(B, T, d) + mask, token embeddings (B, N, text_dim) + mask -> p_start, p_end, highlight (B, T). Batching
(sorted by length, padded) and decoding (`localizer.outputs.decode_spans`) are the torch Localizer's.
Motions without a cached encoding cannot be localized here (S-Enc is not exported): `encode_motions`
refuses, and the Searcher only takes this backend for an index that caches this localizer's encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.corpus.types import ModelError
from localizer.decode import MaxSpan
from localizer.outputs import (
    EncodedMotion,
    LocalizedSpan,
    SpanDistributions,
    TokenLRU,
    batched_distributions,
    check_max_span,
    decode_spans,
)

INPUTS = ("motion", "motion_mask", "text", "text_mask")
OUTPUTS = ("p_start", "p_end", "highlight")


@dataclass(frozen=True)
class OnnxLocalizerSpec:
    """What the query path needs of a localizer checkpoint besides the graph (recorded at export, so that
    the checkpoint itself, a torch file, is never read here)."""

    sha256: str  # the checkpoint's (`localizer_fingerprint`)
    variant: str
    n_snippets: int
    d_model: int
    text_dim: int
    text_encoder: str
    max_tokens: int
    max_span: MaxSpan | None

    def to_dict(self) -> dict:
        return {"sha256": self.sha256, "variant": self.variant, "n_snippets": self.n_snippets,
                "d_model": self.d_model, "text_dim": self.text_dim, "text_encoder": self.text_encoder,
                "max_tokens": self.max_tokens, "max_span": self.max_span.to_dict() if self.max_span else None}

    @classmethod
    def from_dict(cls, d: dict) -> OnnxLocalizerSpec:
        return cls(sha256=str(d["sha256"]), variant=str(d["variant"]), n_snippets=int(d["n_snippets"]),
                   d_model=int(d["d_model"]), text_dim=int(d["text_dim"]), text_encoder=str(d["text_encoder"]),
                   max_tokens=int(d["max_tokens"]), max_span=MaxSpan.from_dict(d.get("max_span")))


class OnnxLocalizer:
    """A localizer graph in an ONNX Runtime session, with a token encoder (`hidden(texts, max_length)`, e.g.
    engine.corpus.bert_onnx.OnnxBert); same `localize` / `distributions` results as `Localizer`."""

    def __init__(self, session, spec: OnnxLocalizerSpec, token_encoder, text_cache_size: int = 1024):
        self.session = session
        self.spec = spec
        self.token_encoder = token_encoder
        self._text_cache = TokenLRU(text_cache_size)

    def fingerprint(self) -> str:
        return self.spec.sha256

    @property
    def n_snippets(self) -> int:
        return self.spec.n_snippets

    def texts_tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token embeddings (n_tokens, text_dim) of several sentences (LRU-cached), as `Localizer.texts_tokens`."""
        return self._text_cache.lookup(texts, lambda missing: self.token_encoder.hidden(missing, self.spec.max_tokens))

    def encode_motions(self, *args, **kwargs) -> list[EncodedMotion]:
        raise ModelError(self.spec.sha256[:12], "the ONNX localizer has no motion encoder (S-Enc is not exported): "
                                                "motions need the index's cached encoding; use --backend torch")

    def distributions(self, text: str | Sequence[str], motions: Sequence[EncodedMotion],
                      batch_size: int = 64) -> list[SpanDistributions]:
        """Start / end / highlight distributions of one sentence (or one per motion) on each motion, in the
        padded batches `Localizer.distributions` uses."""
        def run(m, m_mask, q, q_mask):
            return self.session.run(list(OUTPUTS), dict(zip(INPUTS, (m, m_mask, q, q_mask))))

        return batched_distributions(text, motions, batch_size, self.texts_tokens, run)

    def localize(self, text: str | Sequence[str], motions: Sequence[EncodedMotion], top_m: int = 1,
                 nms_iou: float = 0.5, max_span_s: float | str | None = "learned",
                 batch_size: int = 64) -> list[list[LocalizedSpan]]:
        """`Localizer.localize`: top-m moments of the sentence in each motion (the same decoding)."""
        check_max_span(max_span_s)
        return decode_spans(self.distributions(text, motions, batch_size=batch_size), top_m=top_m, nms_iou=nms_iou,
                            max_span_s=max_span_s, learned=self.spec.max_span)
