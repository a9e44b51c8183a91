"""Training data for the localizer: (motion, annotation) pairs, snippets, ground-truth spans, text cache, batches.

- A motion becomes `SnippetMotion`: Joint Recover per frame, then T = min(F, S) mean-pooled snippets
  (T, 22, 12); D = (F + 1) / fps is the motion's duration (F feature frames come from F + 1 joint frames).
- A pair is one annotation of one motion; its ground-truth snippet span is the span with the best IoU to
  the labelled time span (`decode.seconds_to_span`).
- Token embeddings of each distinct sentence are computed once (`TextCache`) and reused every step.
- `synthetic_motions` makes random-walk motions with planted, labelled segments (a joint oscillating:
  "waving", ...) for tests and smoke runs; no file or store needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from engine.corpus.mix import sampling_weights
from engine.corpus.types import Annotation, CorpusError, Motion
from localizer.decode import seconds_to_span
from localizer.outputs import pad_rows
from localizer.snippets import FEATURE_DIM, motion_snippets

log = logging.getLogger(__name__)


@dataclass
class SnippetMotion:
    """A motion ready for the localizer: (T, 22, 12) float32 snippets covering `duration_s` seconds."""

    name: str
    snippets: np.ndarray
    duration_s: float
    motion_id: int | None = None

    @property
    def n_snippets(self) -> int:
        return int(self.snippets.shape[0])


@dataclass
class LocalizationPair:
    """One (motion, sentence) training / evaluation sample with its ground truth."""

    motion_index: int  # into PairSet.motions
    text: str
    start_s: float
    end_s: float
    start_idx: int
    end_idx: int
    texts: tuple[str, ...] = ()  # other wordings of the moment (training_texts), `text` first
    label: str | None = None  # the annotation's label key (engine.corpus.sentences.label_key), when labelled


@dataclass
class PairSet:
    motions: list[SnippetMotion] = field(default_factory=list)
    pairs: list[LocalizationPair] = field(default_factory=list)
    # Sampling probabilities of the pairs (a CorpusMix's weights, the label balance); None: every pair once
    # per epoch.
    probs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def texts(self) -> list[str]:
        return sorted({t for p in self.pairs for t in (p.texts or (p.text,))})

    def with_texts(self, rows: Sequence[int], rng: np.random.Generator) -> tuple[PairSet, list[int]]:
        """A view of `rows` in which each pair's sentence is drawn among its wordings (for one batch)."""
        pairs = [self.pairs[i] for i in rows]
        pairs = [replace(p, text=p.texts[rng.integers(len(p.texts))]) if len(p.texts) > 1 else p for p in pairs]
        return PairSet(self.motions, pairs), list(range(len(pairs)))


@dataclass
class LocalizerData:
    """Train and (optional) validation pairs. Model selection uses `val`, never a test split."""

    train: PairSet
    val: PairSet | None = None


def motion_features(motion: Motion) -> np.ndarray:
    """(F, 263) float32 features of a motion (computed from joints when absent); CorpusError when unusable."""
    where = f"motion {motion.name!r}" + (f" ({motion.path})" if motion.path else "")
    feats = motion.features
    if feats is None:
        if motion.joints is None:
            raise CorpusError(where, "has neither features nor joints")
        try:
            from engine.corpus.features import joints_to_features
        except ImportError as e:  # pragma: no cover - features.py is part of the engine
            raise CorpusError(where, f"has no features and they cannot be computed here: {e}") from e
        feats = joints_to_features(motion.joints)
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[1] != FEATURE_DIM or feats.shape[0] < 1:
        raise CorpusError(where, f"features have shape {tuple(feats.shape)}, expected (F >= 1, {FEATURE_DIM})")
    if not np.isfinite(feats).all():
        raise CorpusError(where, "features contain NaN/inf")
    return feats


def snippet_motion(features: np.ndarray, fps: float, n_snippets: int, name: str = "",
                   motion_id: int | None = None) -> SnippetMotion:
    """Raw (F, 263) features at `fps` -> SnippetMotion.

    D = (F + 1) / fps: the duration of the motion the F feature frames came from (`Motion.duration_s`, the
    store's duration), so an index that caches `EncodedMotion`s with the store's duration agrees exactly.
    """
    if not (fps and math.isfinite(fps) and fps > 0):
        raise CorpusError(f"motion {name!r}", f"invalid fps {fps!r}")
    feats = np.asarray(features, dtype=np.float32)
    return SnippetMotion(name=name, snippets=motion_snippets(feats, n_snippets, where=f"motion {name!r}"),
                         duration_s=(feats.shape[0] + 1) / float(fps), motion_id=motion_id)


def make_pair(motion_index: int, sm: SnippetMotion, ann: Annotation,
              variants: bool = False) -> LocalizationPair | None:
    """Pair with its ground-truth snippet span; None (with a warning) when the span is empty inside the motion."""
    s, e = max(0.0, ann.start_s), min(ann.end_s, sm.duration_s)
    if not ann.text.strip() or e <= s:
        log.warning("motion %r: skipped annotation %r (%.3f-%.3f s, motion %.3f s)", sm.name, ann.text,
                    ann.start_s, ann.end_s, sm.duration_s)
        return None
    i_s, i_e = seconds_to_span(s, e, sm.n_snippets, sm.duration_s)
    texts: tuple[str, ...] = ()
    from engine.corpus.sentences import label_key

    if variants:
        from engine.corpus.sentences import training_texts

        texts = tuple(training_texts(ann))
    return LocalizationPair(motion_index=motion_index, text=ann.text.strip(), start_s=s, end_s=e,
                            start_idx=i_s, end_idx=i_e, texts=texts, label=label_key(ann))


def pairs_from_motions(motions: Iterable[Motion], n_snippets: int, skip_bad: bool = False,
                       variants: bool = False) -> PairSet:
    """Every annotation of every motion becomes a pair; motions without annotations are left out.
    `variants`: each pair also carries its other wordings (engine.corpus.sentences.training_texts)."""
    out = PairSet()
    for m in motions:
        if not m.annotations:
            continue
        try:
            sm = snippet_motion(motion_features(m), m.fps, n_snippets, name=m.name, motion_id=m.motion_id)
        except CorpusError as e:
            if not skip_bad:
                raise
            log.warning("skipped: %s", e)
            continue
        idx = len(out.motions)
        pairs = [p for p in (make_pair(idx, sm, a, variants) for a in m.annotations) if p is not None]
        if pairs:
            out.motions.append(sm)
            out.pairs.extend(pairs)
    return out


def pairs_from_store(store, split: str, n_snippets: int, skip_bad: bool = True, variants: bool = False,
                     balance: float = 0.0) -> PairSet:
    """Pairs of one split of a `CorpusStore` or `CorpusMix` (features read from the memory-mapped arrays);
    a mix of several corpora, or a label `balance` > 0, also gives the pairs' sampling probabilities
    (`engine.corpus.mix.sampling_weights`)."""

    def motions():
        for mid in store.motion_ids(split=split):
            m = store.get_motion(mid, arrays=False)
            if not m.annotations:
                continue
            try:
                m.features = np.asarray(store.features(mid), dtype=np.float32)
            except CorpusError as e:
                if not skip_bad:
                    raise
                log.warning("skipped: %s", e)
                continue
            yield m

    out = pairs_from_motions(motions(), n_snippets, skip_bad=skip_bad, variants=variants)
    out.probs = sampling_weights(store, [out.motions[p.motion_index].motion_id for p in out.pairs],
                                 [p.label for p in out.pairs], balance)
    return out


def load_data(source, n_snippets: int, train_split: str = "train", val_split: str = "val",
              variants: bool = False, balance: float = 0.0) -> LocalizerData:
    """`source`: a LocalizerData (returned as it is), a CorpusStore, a corpus directory, or an iterable of
    Motion (split field used). `balance`: the training pairs' label balance (`group_weights`)."""
    if isinstance(source, LocalizerData):
        return source
    if isinstance(source, (str, Path)):
        from engine.corpus.store import CorpusStore

        store = CorpusStore.open(source, create=False)
        try:
            return load_data(store, n_snippets, train_split, val_split, variants, balance)
        finally:
            store.close()
    if hasattr(source, "motion_ids") and hasattr(source, "features"):
        train = pairs_from_store(source, train_split, n_snippets, variants=variants, balance=balance)
        val = pairs_from_store(source, val_split, n_snippets)
        return LocalizerData(train=train, val=val if len(val) else None)
    motions = list(source)
    train = pairs_from_motions([m for m in motions if m.split == train_split], n_snippets, variants=variants)
    train.probs = sampling_weights(None, [train.motions[p.motion_index].motion_id for p in train.pairs],
                                   [p.label for p in train.pairs], balance)
    val = pairs_from_motions([m for m in motions if m.split == val_split], n_snippets)
    return LocalizerData(train=train, val=val if len(val) else None)


def input_statistics(pairset: PairSet) -> tuple[np.ndarray, np.ndarray]:
    """Per (joint, channel) mean and std (22, 12) over all snippets of a pair set (for standardisation)."""
    total = np.zeros((22, 12), np.float64)
    total_sq = np.zeros((22, 12), np.float64)
    n = 0
    for sm in pairset.motions:
        x = sm.snippets.astype(np.float64)
        total += x.sum(axis=0)
        total_sq += (x * x).sum(axis=0)
        n += x.shape[0]
    if n == 0:
        return np.zeros((22, 12), np.float32), np.ones((22, 12), np.float32)
    mean = total / n
    var = np.maximum(total_sq / n - mean * mean, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


# ---------------------------------------------------------------------------------------------- text
class TextCache:
    """Token embeddings (n_tokens, dim) float16 per distinct sentence, computed once with a TokenEncoder."""

    def __init__(self, encoder=None, encoder_name: str | None = None, max_tokens: int = 32):
        self._encoder = encoder
        self.encoder_name = encoder_name or "minilm"
        self.max_tokens = max_tokens
        self.table: dict[str, np.ndarray] = {}

    @property
    def encoder(self):
        if self._encoder is None:
            from engine.corpus.text import token_encoder

            self._encoder = token_encoder(self.encoder_name, max_tokens=self.max_tokens)
        return self._encoder

    @property
    def dim(self) -> int:
        if self.table:
            return int(next(iter(self.table.values())).shape[1])
        return int(self.encoder.dim)

    def add(self, texts: Iterable[str], batch_size: int = 128) -> int:
        """Encode the sentences not cached yet (longest first, in batches); returns how many were added."""
        todo = sorted({t for t in texts if t not in self.table}, key=len, reverse=True)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i: i + batch_size]
            tb = self.encoder.encode(chunk)
            for text, emb, mask in zip(chunk, tb.emb, tb.mask):
                self.table[text] = np.asarray(emb[mask.astype(bool)], dtype=np.float16)
        return len(todo)

    def get(self, text: str) -> np.ndarray:
        if text not in self.table:
            self.add([text])
        return self.table[text]

    def save(self, path: Path) -> None:
        tmp = Path(str(path) + ".tmp")
        torch.save({"encoder_name": self.encoder_name, "max_tokens": self.max_tokens,
                    "table": {k: torch.from_numpy(v) for k, v in self.table.items()}}, tmp)
        tmp.replace(path)

    def load(self, path: Path) -> bool:
        """Merge a saved cache made by the same encoder; False when absent or from another encoder."""
        if not Path(path).exists():
            return False
        d = torch.load(path, map_location="cpu", weights_only=True)
        if d.get("encoder_name") != self.encoder_name or d.get("max_tokens") != self.max_tokens:
            return False
        self.table.update({k: v.numpy() for k, v in d["table"].items()})
        return True


# ---------------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    snippets: torch.Tensor  # (B, T, 22, 12)
    m_mask: torch.Tensor  # (B, T) bool
    text: torch.Tensor  # (B, N, D)
    t_mask: torch.Tensor  # (B, N) bool
    start_idx: torch.Tensor  # (B,)
    end_idx: torch.Tensor  # (B,)
    h_labels: torch.Tensor  # (B, T) float, 1 inside the ground-truth span

    def to(self, device: str | torch.device) -> Batch:
        return Batch(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})


def pad_snippets(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (T_i, ...) arrays into a zero-padded (B, T_max, ...) tensor and its (B, T_max) bool mask."""
    out, mask = pad_rows(arrays)
    return torch.from_numpy(out), torch.from_numpy(mask)


def collate(pairset: PairSet, indices: Sequence[int], text_cache: TextCache) -> Batch:
    pairs = [pairset.pairs[i] for i in indices]
    snippets, m_mask = pad_snippets([pairset.motions[p.motion_index].snippets for p in pairs])
    text, t_mask = pad_snippets([text_cache.get(p.text).astype(np.float32) for p in pairs])
    start = torch.tensor([p.start_idx for p in pairs], dtype=torch.long)
    end = torch.tensor([p.end_idx for p in pairs], dtype=torch.long)
    pos = torch.arange(m_mask.shape[1]).unsqueeze(0)
    h = ((pos >= start.unsqueeze(1)) & (pos <= end.unsqueeze(1)) & m_mask).float()
    return Batch(snippets=snippets, m_mask=m_mask, text=text, t_mask=t_mask, start_idx=start, end_idx=end,
                 h_labels=h)


# ---------------------------------------------------------------------------------------------- synthetic
# action -> (joints that oscillate, sentences)
SYNTHETIC_ACTIONS: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "wave": ((19, 21), ("a person waves the right hand", "waving", "someone waves")),
    "kick": ((4, 7, 10), ("kicking with the left leg", "a person kicks", "kick")),
    "nod": ((12, 15), ("nodding the head", "a person nods", "nod")),
    "clap": ((18, 20, 19, 21), ("clapping hands", "a person claps", "clap")),
}


def synthetic_motions(n_motions: int, seed: int = 0, fps: float = 20.0, min_frames: int = 80,
                      max_frames: int = 200, val_fraction: float = 0.2,
                      actions: Sequence[str] | None = None) -> list[Motion]:
    """Random-walk 263-dim feature sequences with 1-2 planted segments where some joints oscillate.

    The oscillation goes into the planted joints' root-relative positions [4:67] and local velocities
    [196:259]; each segment is labelled with a sentence of its action. Splits: 'train' / 'val'.
    """
    rng = np.random.default_rng(seed)
    names = list(actions or SYNTHETIC_ACTIONS)
    motions: list[Motion] = []
    n_val = int(round(n_motions * val_fraction))
    for k in range(n_motions):
        n = int(rng.integers(min_frames, max_frames + 1))
        feats = np.cumsum(rng.normal(0.0, 0.01, size=(n, FEATURE_DIM)), axis=0).astype(np.float32)
        feats[:, 3] += 0.9  # root height
        feats[:, 259:263] = 0.0
        anns: list[Annotation] = []
        n_seg = int(rng.integers(1, 3))
        free = np.ones(n, dtype=bool)
        for _ in range(n_seg):
            length = int(rng.integers(max(8, n // 6), max(9, n // 2)))
            starts = [s for s in range(0, n - length) if free[s: s + length].all()]
            if not starts:
                break
            s0 = int(rng.choice(starts))
            free[s0: s0 + length] = False
            action = names[int(rng.integers(len(names)))]
            joints, texts = SYNTHETIC_ACTIONS[action]
            t = np.arange(length) / fps
            amp, freq = 0.15 + 0.05 * rng.random(), 1.5 + rng.random()
            wave = amp * np.sin(2 * np.pi * freq * t)
            dwave = np.diff(wave, prepend=wave[0])
            for j in joints:
                for c in range(3):
                    feats[s0: s0 + length, 4 + (j - 1) * 3 + c] += wave * (1.0 if c != 1 else 0.5)
                    feats[s0: s0 + length, 193 + j * 3 + c] += dwave
            text = texts[int(rng.integers(len(texts)))]
            anns.append(Annotation(text=text, start_s=s0 / fps, end_s=(s0 + length) / fps, seg_id=f"{len(anns)}",
                                   extra={"action": action}))
        motions.append(Motion(name=f"synthetic/{k:05d}", source="synthetic", fps=fps, features=feats,
                              annotations=anns, split="val" if k < n_val else "train"))
    return motions
