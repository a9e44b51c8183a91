"""How an index is built: `IndexConfig` (stored in every manifest) and the callback types of a build."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
MotionFeatureFn = Callable[[np.ndarray], np.ndarray]  # a motion's features (T-1, 263) -> the array to cache

KINDS = ("flat", "ivf", "hnsw", "ivfpq")


@dataclass
class IndexConfig:
    """How an index is built (stored in its manifest)."""

    kind: str = "flat"  # flat | ivf | hnsw | ivfpq
    window_s: float = 10.0
    stride_s: float = 1.0
    batch_size: int = 64  # chunks per encoder batch
    block_chunks: int = 4096  # chunks per embed block (the resume granularity of the embed stage)
    dtype: str = "fp32"  # fp32 | bf16 (autocast) for the chunk encoder
    split: str | None = None  # index only this split (None: every motion)
    source: str | None = None  # index only this source (None: every source)
    nlist: int | None = None  # IVF lists (None: about 4 sqrt(N), at most N / 39)
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    pq_m: int | None = None  # PQ sub-quantizers (None: dim / 8, a divisor of dim)
    pq_nbits: int = 8
    train_max: int = 200_000  # vectors used to train IVF / PQ
    recall_k: int = 10
    recall_queries: int = 256
    seed: int = 0
    # The window bank (indexer/bank.py): short windows of every motion with their embeddings, the fused
    # score's span similarity (+6 P@10 on val over chunks only, docs/results/scoring.md). It costs about 0.6x
    # the chunk embedding with the transformer encoder, a pooling per window with the window encoder.
    # None (auto): only with the window-encoder architecture; resolved when a build starts.
    window_bank: bool | None = True
    bank_sizes_s: tuple[float, ...] = (2.0, 4.0, 6.0, 10.0)  # the window_s size is the chunks themselves

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype {self.dtype!r}: choose fp32 or bf16")
        self.bank_sizes_s = tuple(float(x) for x in self.bank_sizes_s)
        if not all(x > 0 for x in self.bank_sizes_s):
            raise ValueError(f"bank sizes {self.bank_sizes_s}: every size must be positive (seconds)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bank_sizes_s"] = list(self.bank_sizes_s)  # as JSON reads it back (manifests are compared as dicts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {"window_bank": False, **d}  # manifests from before the bank: built without one
        return cls(**{k: v for k, v in d.items() if k in known})

    def chunking(self) -> dict[str, Any]:
        """The settings embeddings depend on (an incremental build must share them with its base)."""
        return {"window_s": self.window_s, "stride_s": self.stride_s, "dtype": self.dtype}
