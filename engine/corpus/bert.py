"""BERT forward in plain torch, from a local Hugging Face directory (config.json, tokenizer.json,
model.safetensors): the text encoder of the query path, without importing `transformers` or
`sentence-transformers` (those imports cost seconds; this module costs `torch` + `tokenizers`).

`BertModel.hidden` gives the last hidden state, as `transformers.BertModel(...).last_hidden_state` does;
`BertModel.sentences` gives what the sentence-transformers pipeline Transformer -> mean Pooling ->
Normalize gives (all-MiniLM-L6-v2 is exactly that). Only absolute position embeddings and GELU are
supported; `is_plain_bert` says whether a directory fits, else the callers fall back to `transformers`.
Oracle tests in tests/test_text.py compare both outputs with the libraries.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.corpus.types import ModelError

log = logging.getLogger(__name__)

FILES = ("config.json", "tokenizer.json", "model.safetensors")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_dict(cls, d: dict, where: str) -> BertConfig:
        if d.get("model_type") != "bert":
            raise ModelError(where, f"model_type {d.get('model_type')!r} is not 'bert'")
        if d.get("hidden_act", "gelu") != "gelu":
            raise ModelError(where, f"hidden_act {d.get('hidden_act')!r} is not supported (only 'gelu')")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(where, f"position_embedding_type {d.get('position_embedding_type')!r} is not "
                                    "supported (only 'absolute')")
        try:
            c = cls(vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
                    n_layers=int(d["num_hidden_layers"]), n_heads=int(d["num_attention_heads"]),
                    intermediate_size=int(d["intermediate_size"]),
                    max_positions=int(d["max_position_embeddings"]),
                    type_vocab_size=int(d.get("type_vocab_size", 2)),
                    layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(where, f"bad BERT config: {e!r}") from e
        if c.hidden_size % c.n_heads:
            raise ModelError(where, f"hidden_size {c.hidden_size} is not a multiple of {c.n_heads} heads")
        return c


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(str(path), f"cannot read JSON: {e}") from e


def is_plain_bert(path: str | os.PathLike) -> bool:
    """Whether `path` holds a BERT model this module runs (config + tokenizer.json + safetensors)."""
    p = Path(path)
    if not all((p / f).is_file() for f in FILES):
        return False
    try:
        BertConfig.from_dict(_read_json(p / "config.json"), str(p / "config.json"))
    except ModelError:
        return False
    return True


@dataclass(frozen=True)
class SentencePipeline:
    """What a sentence-transformers directory asks for, when it is Transformer -> mean Pooling [-> Normalize]."""

    max_length: int


def sentence_pipeline(path: str | os.PathLike) -> SentencePipeline | None:
    """The mean-pooling pipeline of a sentence-transformers directory, or None when it is anything else
    (then only sentence-transformers itself reproduces it)."""
    p = Path(path)
    if not is_plain_bert(p):
        return None
    modules_file = p / "modules.json"
    if modules_file.is_file():
        modules = _read_json(modules_file)
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        if modules[0].get("path", "") not in ("", "."):
            return None
        pool_file = p / modules[1].get("path", "1_Pooling") / "config.json"
        pool = _read_json(pool_file) if pool_file.is_file() else {"pooling_mode_mean_tokens": True}
        modes = {k for k, v in pool.items() if k.startswith("pooling_mode") and v}
        if modes != {"pooling_mode_mean_tokens"}:
            return None
    cfg = _read_json(p / "config.json")
    max_length = int(cfg.get("max_position_embeddings", 512))
    st_file = p / "sentence_bert_config.json"
    if st_file.is_file():
        st = _read_json(st_file)
        max_length = min(max_length, int(st.get("max_seq_length") or max_length))
    return SentencePipeline(max_length=max_length)


class WordPiece:
    """A BERT directory's tokenizer.json through `tokenizers` (no torch): the token ids every BERT backend
    (plain torch here, ONNX Runtime in engine/corpus/bert_onnx.py) feeds its model."""

    def __init__(self, tokenizer_json: str | os.PathLike, max_positions: int):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as e:  # the Rust tokenizer raises its own exception type
            raise ModelError(str(tokenizer_json), f"cannot load the tokenizer: {e}") from e
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_positions = max_positions
        special = {}
        for name in ("[CLS]", "[SEP]", "[PAD]"):
            tid = self.tokenizer.token_to_id(name)
            if tid is None:
                raise ModelError(str(tokenizer_json), f"the vocabulary has no {name} token")
            special[name] = tid
        self.cls_id, self.sep_id, self.pad_id = special["[CLS]"], special["[SEP]"], special["[PAD]"]

    def token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        """[CLS] wordpieces [SEP], the wordpieces cut so that the whole fits in `max_length` (the
        tokenizers' 'longest first' truncation of a single sequence)."""
        if max_length < 2:
            raise ValueError(f"max_length {max_length} leaves no room for [CLS] and [SEP]")
        max_length = min(max_length, self.max_positions)
        if len(texts) == 1:  # a query: no trip through the tokenizer's thread pool
            encs = [self.tokenizer.encode(str(texts[0]), add_special_tokens=False)]
        else:
            encs = self.tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)
        return [[self.cls_id, *e.ids[: max_length - 2], self.sep_id] for e in encs]


class BertModel:
    """A frozen BERT encoder: WordPiece via `tokenizers`, forward in plain torch (fp32, inference mode)."""

    recent_size = 64  # single sequences kept (query encodings shared by the sentence and token paths)

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        import torch
        from safetensors.torch import load_file

        p = Path(path)
        missing = [f for f in FILES if not (p / f).is_file()]
        if missing:
            raise ModelError(str(p), f"not a BERT directory this encoder reads (missing {', '.join(missing)})")
        self.path = str(p)
        self.config = BertConfig.from_dict(_read_json(p / "config.json"), str(p / "config.json"))
        self.dim = self.config.hidden_size
        self.device = torch.device(device)
        self.wordpiece = WordPiece(p / "tokenizer.json", self.config.max_positions)
        self.tokenizer = self.wordpiece.tokenizer
        self.cls_id, self.sep_id, self.pad_id = self.wordpiece.cls_id, self.wordpiece.sep_id, self.wordpiece.pad_id
        try:
            raw = load_file(str(p / "model.safetensors"), device=str(self.device))
        except Exception as e:
            raise ModelError(str(p / "model.safetensors"), f"cannot load the weights: {e}") from e
        self.w = {k.removeprefix("bert."): v.float() for k, v in raw.items()}
        need = [f"embeddings.{n}" for n in ("word_embeddings.weight", "position_embeddings.weight",
                                             "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias")]
        parts = [f"attention.self.{n}.{t}" for n in ("query", "key", "value") for t in ("weight", "bias")]
        parts += [f"{n}.{t}" for n in ("attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                                       "output.dense", "output.LayerNorm") for t in ("weight", "bias")]
        need += [f"encoder.layer.{i}.{n}" for i in range(self.config.n_layers) for n in parts]
        absent = [k for k in need if k not in self.w]
        if absent:
            raise ModelError(str(p / "model.safetensors"), f"missing tensors: {', '.join(absent[:3])}"
                             + (f" and {len(absent) - 3} more" if len(absent) > 3 else ""))
        self.layers = []
        for i in range(self.config.n_layers):
            def g(name: str, pre: str = f"encoder.layer.{i}."):
                return self.w[pre + name]

            self.layers.append({
                # query, key and value of a layer as one matmul
                "qkv_w": torch.cat([g(f"attention.self.{n}.weight") for n in ("query", "key", "value")]),
                "qkv_b": torch.cat([g(f"attention.self.{n}.bias") for n in ("query", "key", "value")]),
                "ao_w": g("attention.output.dense.weight"), "ao_b": g("attention.output.dense.bias"),
                "ln1_w": g("attention.output.LayerNorm.weight"), "ln1_b": g("attention.output.LayerNorm.bias"),
                "in_w": g("intermediate.dense.weight"), "in_b": g("intermediate.dense.bias"),
                "out_w": g("output.dense.weight"), "out_b": g("output.dense.bias"),
                "ln2_w": g("output.LayerNorm.weight"), "ln2_b": g("output.LayerNorm.bias"),
            })
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[int, ...], object] = OrderedDict()

    # -- tokens -------------------------------------------------------------------------------------------
    def token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        """`WordPiece.token_ids` (the encoder's tokens)."""
        return self.wordpiece.token_ids(texts, max_length)

    def _pad(self, ids: list[list[int]]):
        import torch

        n = max(len(x) for x in ids)
        arr = np.full((len(ids), n), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), n), dtype=bool)
        for b, x in enumerate(ids):
            arr[b, : len(x)] = x
            mask[b, : len(x)] = True
        return torch.from_numpy(arr).to(self.device), torch.from_numpy(mask).to(self.device)

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, ids, mask):
        """Last hidden state (B, N, D) of padded ids (B, N) with key mask (B, N) bool."""
        import torch.nn.functional as F

        c, w = self.config, self.w
        B, N = ids.shape
        H, dh = c.n_heads, c.hidden_size // c.n_heads
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:N][None]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = F.layer_norm(x, (c.hidden_size,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                         c.layer_norm_eps)
        attn_mask = mask[:, None, None, :]  # keys only; every row has its [CLS] to attend to
        for L in self.layers:
            qkv = F.linear(x, L["qkv_w"], L["qkv_b"]).view(B, N, 3, H, dh).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
            a = a.transpose(1, 2).reshape(B, N, c.hidden_size)
            x = F.layer_norm(F.linear(a, L["ao_w"], L["ao_b"]) + x, (c.hidden_size,), L["ln1_w"], L["ln1_b"],
                             c.layer_norm_eps)
            h = F.gelu(F.linear(x, L["in_w"], L["in_b"]))
            x = F.layer_norm(F.linear(h, L["out_w"], L["out_b"]) + x, (c.hidden_size,), L["ln2_w"], L["ln2_b"],
                             c.layer_norm_eps)
        return x

    def _batches(self, ids: list[list[int]], batch_size: int):
        """Index groups of similar length (less padding); results are put back in input order."""
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for s in range(0, len(order), batch_size):
            yield order[s: s + batch_size]

    def _one(self, ids: list[int]):
        """Last hidden state (n, D) of one unpadded sequence, from a small LRU of recent sequences: a query
        shorter than both limits is encoded once for its sentence vector and its tokens."""
        key = tuple(ids)
        with self._lock:
            h = self._recent.get(key)
            if h is not None:
                self._recent.move_to_end(key)
                return h
        t, m = self._pad([ids])
        h = self.forward(t, m)[0]
        with self._lock:
            self._recent[key] = h
            while len(self._recent) > self.recent_size:
                self._recent.popitem(last=False)
        return h

    def hidden(self, texts: list[str], max_length: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Per-token last hidden states (B, N, D) float32 and mask (B, N) bool, N the longest in `texts`
        (padded to it, as a tokenizer called with padding=True and truncation to `max_length` does)."""
        import torch

        ids = self.token_ids(list(texts), max_length)
        n = max((len(x) for x in ids), default=0)
        emb = np.zeros((len(ids), n, self.dim), dtype=np.float32)
        mask = np.zeros((len(ids), n), dtype=bool)
        with torch.inference_mode():
            if len(ids) == 1:
                emb[0] = self._one(ids[0]).float().cpu().numpy()
                mask[0] = True
                return emb, mask
            for group in self._batches(ids, batch_size):
                t, m = self._pad([ids[i] for i in group])
                h = self.forward(t, m).float().cpu().numpy()
                for j, i in enumerate(group):
                    k = len(ids[i])
                    emb[i, :k] = h[j, :k]
                    mask[i, :k] = True
        return emb, mask

    def sentences(self, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
        """(B, D) float32: mean of the token states under the attention mask, L2-normalised."""
        import torch
        import torch.nn.functional as F

        ids = self.token_ids(list(texts), max_length)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        with torch.inference_mode():
            if len(ids) == 1:
                h = self._one(ids[0])
                pooled = h.sum(0, keepdim=True) / float(h.shape[0])
                return F.normalize(pooled, p=2, dim=1).float().cpu().numpy()
            for group in self._batches(ids, batch_size):
                t, m = self._pad([ids[i] for i in group])
                h = self.forward(t, m)
                mf = m.unsqueeze(-1).to(h.dtype)
                pooled = (h * mf).sum(1) / mf.sum(1).clamp(min=1e-9)
                out[group] = F.normalize(pooled, p=2, dim=1).float().cpu().numpy()
        return out


@lru_cache(maxsize=4)
def load_bert(path: str, device: str = "cpu") -> BertModel:
    """Process-wide cached BertModel: the sentence and the token encoders of one model share its weights."""
    log.debug("loading BERT weights from %s on %s", path, device)
    return BertModel(path, device=device)
