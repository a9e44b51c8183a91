"""The BERT text encoder (engine/corpus/bert.py) as an ONNX graph: exported once from the plain-torch
forward, run by ONNX Runtime on the query path without importing torch.

The graph takes token ids and an attention mask (B, N) int64 and returns the last hidden state (B, N, D)
(`BertModel.hidden`) and the mean-pooled, L2-normalised sentence vector (B, D) (`BertModel.sentences`, the
sentence-transformers pipeline of all-MiniLM-L6-v2). Token ids come from the same `WordPiece` as the torch
encoder's. `OnnxBert` runs one sequence at a time, unpadded, as the torch encoder does for a query.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.corpus.bert import WordPiece

# Sentences the export is checked on (the torch encoder against the graph, at other lengths than traced).
CHECK_SENTENCES = (
    "a person walks forward and turns around",
    "kung fu pose",
    "someone jumps",
    "the man picks up a box from the floor with both hands, then puts it on a shelf above his head",
    "wave",
)


@dataclass(frozen=True)
class BertExport:
    """What an export measured: the worst cosine of the graph's sentence vectors and the largest absolute
    difference of its hidden states, against the torch encoder, on `CHECK_SENTENCES`."""

    sentence_cos_min: float
    hidden_max_abs: float


def export_bert_onnx(model_dir: str | os.PathLike, out: str | os.PathLike, max_length: int) -> BertExport:
    """Export the BERT of `model_dir` to `out` (atomically), then check the graph against the torch forward;
    a graph that differs (cosine < 0.99999) is removed and refused (ModelError)."""
    import torch

    from engine.corpus.bert import load_bert
    from engine.corpus.onnx_io import export_onnx, ort_session
    from engine.corpus.types import ModelError

    bert = load_bert(str(model_dir), "cpu")

    class Graph(torch.nn.Module):
        def forward(self, ids, attention_mask):
            mask = attention_mask > 0
            h = bert.forward(ids, mask)
            mf = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * mf).sum(1) / mf.sum(1).clamp(min=1e-9)
            return h, torch.nn.functional.normalize(pooled, p=2, dim=1)

    ids = bert.token_ids(["a person walks forward", "someone waves both hands above the head"], max_length)
    n = max(len(x) for x in ids)
    arr = np.full((len(ids), n), bert.pad_id, np.int64)
    msk = np.zeros((len(ids), n), np.int64)
    for b, x in enumerate(ids):
        arr[b, : len(x)], msk[b, : len(x)] = x, 1
    export_onnx(Graph(), (torch.from_numpy(arr), torch.from_numpy(msk)), out, ["input_ids", "attention_mask"],
                ["hidden", "sentence"], {"input_ids": {0: "batch", 1: "tokens"},
                                         "attention_mask": {0: "batch", 1: "tokens"}, "hidden": {0: "batch", 1: "tokens"},
                                         "sentence": {0: "batch"}})
    enc = OnnxBert(ort_session(Path(out).read_bytes(), str(out)), bert.wordpiece, bert.dim)
    got_s = enc.sentences(list(CHECK_SENTENCES), max_length)
    want_s = np.concatenate([bert.sentences([t], max_length) for t in CHECK_SENTENCES])
    cos = float(np.min(np.sum(got_s * want_s, axis=1)))
    diff = 0.0
    for t in CHECK_SENTENCES:
        g, _ = enc.hidden([t], max_length)
        w, _ = bert.hidden([t], max_length)
        diff = max(diff, float(np.abs(g - w).max()))
    if not cos >= 0.99999:
        Path(out).unlink(missing_ok=True)
        raise ModelError(str(model_dir), f"the ONNX export of this BERT differs from its torch forward (sentence "
                                         f"cosine {cos:.6f}); use --backend torch")
    return BertExport(sentence_cos_min=cos, hidden_max_abs=diff)


class OnnxBert:
    """`BertModel.hidden` / `BertModel.sentences` through an ONNX Runtime session of the exported graph."""

    recent_size = 64

    def __init__(self, session, wordpiece: WordPiece, dim: int):
        self.session = session
        self.wordpiece = wordpiece
        self.dim = dim
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _one(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(hidden (n, D), sentence (D,)) of one unpadded sequence, from a small LRU of recent ones."""
        key = tuple(ids)
        with self._lock:
            got = self._recent.get(key)
            if got is not None:
                self._recent.move_to_end(key)
                return got
        arr = np.asarray([ids], dtype=np.int64)
        h, s = self.session.run(["hidden", "sentence"], {"input_ids": arr, "attention_mask": np.ones_like(arr)})
        got = (np.asarray(h[0], np.float32), np.asarray(s[0], np.float32))
        with self._lock:
            self._recent[key] = got
            while len(self._recent) > self.recent_size:
                self._recent.popitem(last=False)
        return got

    def hidden(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-token last hidden states (B, N, D) float32 and mask (B, N) bool, N the longest in `texts`."""
        ids = self.wordpiece.token_ids(list(texts), max_length)
        n = max((len(x) for x in ids), default=0)
        emb = np.zeros((len(ids), n, self.dim), dtype=np.float32)
        mask = np.zeros((len(ids), n), dtype=bool)
        for i, x in enumerate(ids):
            emb[i, : len(x)] = self._one(x)[0]
            mask[i, : len(x)] = True
        return emb, mask

    def sentences(self, texts: list[str], max_length: int) -> np.ndarray:
        """(B, D) float32: mean-pooled, L2-normalised sentence vectors."""
        ids = self.wordpiece.token_ids(list(texts), max_length)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for i, x in enumerate(ids):
            out[i] = self._one(x)[1]
        return out
