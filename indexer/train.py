"""Training and evaluation of the retrieval model on a corpus store.

Training pairs are the annotations of the 'train' split: each annotated segment becomes a 2-10 s crop
(shorter segments are widened around their centre, longer ones give a random 10 s sub-window) paired
with its sentence. Model selection uses the 'val' split (never 'test').

A run directory holds::

    runs/<name>/
      config.json     the TrainConfig (with the model config) the run was started with
      last.pt         model + optimiser + epoch, rewritten atomically after every epoch (resume point)
      best.pt         the model with the best validation score (what `load_retrieval` returns)
      history.jsonl   one line of metrics per epoch

Re-running `train_retrieval` on the same run directory resumes after the last finished epoch; the
per-epoch randomness is derived from (seed, epoch), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.corpus.io import atomic_write_text, atomic_writer
from engine.corpus.mix import sampling_order, sampling_weights
from engine.corpus.sentences import label_key, training_texts
from engine.corpus.skeleton import FEATURE_DIM
from engine.corpus.types import CorpusError
from indexer.chunks import resample_window
from indexer.model import (
    RetrievalConfig,
    RetrievalModel,
    TextEncoder,
    drop_triple_loss,
    load_retrieval,
    model_rate_windows,
    pad_windows,
    resolve_device,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


@dataclass
class TrainConfig:
    """Optimisation and data settings of a retrieval training run."""

    model: RetrievalConfig | None = None  # None: RetrievalConfig() defaults
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 2.0
    margin: float = 0.2
    warmup_epochs: int = 5  # epochs that sum all violations before switching to the hardest negative
    motion_threshold: float = 0.75  # DropTriple: drop negatives this similar to the anchor's motion
    text_threshold: float = 0.75  # ... or to the anchor's sentence (frozen sentence-encoder cosine)
    min_crop_s: float = 2.0
    max_crop_s: float = 10.0
    train_split: str = "train"
    val_split: str = "val"
    max_items: int | None = None  # cap on training pairs (smoke runs)
    seed: int = 0
    # Mixed corpora (recorded from the CLI's --corpus list; the weights are applied by the CorpusMix given).
    corpora: list[dict] | None = None
    text_variants: bool = False  # draw each step's sentence among the moment's wordings (engine.corpus.sentences)
    # Labelled negatives: two moments with known, different labels are never dropped as false negatives
    # (so "waves the left hand" vs "... right hand" stays a negative); same label: always dropped.
    label_negatives: bool = False
    hard_negative_frac: float = 0.0  # share of each batch filled with partners: same content, other style/side
    feature_noise: float = 0.0  # Gaussian noise on the input features, in units of each channel's std
    # Fine-tuning: start from a trained model's weights (its run directory or checkpoint; its architecture
    # and input normalisation are kept), and optionally train the text projection only (the motion encoder
    # frozen: the motion side, and so every motion vector, stays as the init model made it).
    init: str | None = None
    freeze_motion: bool = False
    # Text-side smoothing: each step moves every (unit) sentence embedding by a random vector of this norm and
    # re-normalises it, so that the projection is trained on a neighbourhood of each wording (a paraphrase
    # lands near, not on, a training wording). 0: off.
    text_noise: float = 0.0
    # Pairs of a content weigh n ** -label_balance, n being that content's count in its corpus (0 = off, 1 =
    # every content drawn equally often), on top of the mix's corpus weights (engine.corpus.mix.group_weights).
    label_balance: float = 0.0

    def resolved_model(self) -> RetrievalConfig:
        return self.model or RetrievalConfig()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = dataclasses.asdict(self.resolved_model())
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if isinstance(kw.get("model"), dict):
            kw["model"] = RetrievalConfig.from_dict(kw["model"])
        return cls(**kw)


@dataclass
class Pair:
    """One annotated segment: its motion, its time span and its sentence (with its other wordings and
    its label key when known, for training)."""

    motion_id: int
    start_s: float
    end_s: float
    text: str
    texts: tuple[str, ...] = ()
    label: str | None = None

    @property
    def family(self) -> str | None:
        """The label without style and side: moments of one family are hard negatives of each other."""
        if self.label is None:
            return None
        return _SIDE.sub("", self.label.split("|")[0]).strip("-")


@dataclass
class DirectionMetrics:
    """Recall at 1/5/10 (fractions) and the median rank of the first correct item."""

    r1: float
    r5: float
    r10: float
    median_rank: float

    @classmethod
    def from_ranks(cls, ranks: np.ndarray) -> DirectionMetrics:
        if len(ranks) == 0:
            return cls(0.0, 0.0, 0.0, float("nan"))
        return cls(float(np.mean(ranks <= 1)), float(np.mean(ranks <= 5)), float(np.mean(ranks <= 10)),
                   float(np.median(ranks)))


@dataclass
class RetrievalEval:
    """Full-gallery retrieval on one split. A sentence and a segment match when they are the same pair,
    or when their texts are identical (identical sentences are indistinguishable queries)."""

    split: str
    n_pairs: int
    text_to_motion: DirectionMetrics
    motion_to_text: DirectionMetrics

    @property
    def rsum(self) -> float:
        t, m = self.text_to_motion, self.motion_to_text
        return t.r1 + t.r5 + t.r10 + m.r1 + m.r5 + m.r10

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "n_pairs": self.n_pairs,
                "text_to_motion": dataclasses.asdict(self.text_to_motion),
                "motion_to_text": dataclasses.asdict(self.motion_to_text), "rsum": self.rsum}


@dataclass
class TrainReport:
    run_dir: str
    epochs_done: int
    best_epoch: int
    best_val: RetrievalEval | None
    seconds: float
    resumed_from_epoch: int


# ---------------------------------------------------------------------------------------------- data
_SIDE = re.compile(r"-?(left|right|both)")


def collect_pairs(store, split: str, variants: bool = False) -> list[Pair]:
    """Every annotation of the split's motions, in (motion_id, start_s) order; `variants` also gives each
    its other wordings (`training_texts`)."""
    pairs: list[Pair] = []
    for mid in store.motion_ids(split=split):
        for a in store.annotations(mid):
            if a.end_s > a.start_s and a.text.strip():
                texts = tuple(training_texts(a)) if variants else (a.text.strip(),)
                pairs.append(Pair(mid, float(a.start_s), float(a.end_s), a.text.strip(), texts, label_key(a)))
    return pairs


def families(pairs: list[Pair]) -> dict[str, list[int]]:
    """Row indices of the pairs of each label family (`Pair.family`)."""
    by_family: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        if p.family is not None:
            by_family.setdefault(p.family, []).append(i)
    return by_family


def hard_partners(pairs: list[Pair], rows: np.ndarray, n: int, rng: np.random.Generator,
                  by_family: dict[str, list[int]] | None = None) -> list[int]:
    """Up to `n` extra rows, one per anchor of `rows` (in order) that has a partner: a pair of the same
    family (content without side) with another label (another style or side). `by_family`: `families(pairs)`,
    computed once per run by the trainer."""
    by_family = families(pairs) if by_family is None else by_family
    out: list[int] = []
    for r in rows:
        if len(out) >= n:
            break
        p = pairs[int(r)]
        if p.family is None:
            continue
        cands = [j for j in by_family[p.family] if pairs[j].label != p.label]
        if cands:
            out.append(int(cands[rng.integers(len(cands))]))
    return out


def label_masks(pairs: list[Pair], rows: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(known, same) (B, B) boolean masks: both moments labelled, and with the same label."""
    labels = [pairs[i].label for i in rows]
    ids = {lab: k for k, lab in enumerate(sorted({x for x in labels if x is not None}))}
    lab = torch.tensor([ids[x] if x is not None else -1 for x in labels], device=device)
    known = (lab[:, None] >= 0) & (lab[None, :] >= 0)
    return known, known & (lab[:, None] == lab[None, :])


def perturb_sentences(s: torch.Tensor, radius: float) -> torch.Tensor:
    """Unit sentence embeddings (B, D) moved by random vectors of norm `radius`, re-normalised."""
    noise = torch.randn_like(s)
    noise = noise * (radius / noise.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return torch.nn.functional.normalize(s + noise, dim=1)


def crop_span(start_s: float, end_s: float, duration_s: float, min_s: float, max_s: float,
              rng: np.random.Generator | None = None) -> tuple[float, float]:
    """A min_s..max_s window around [start_s, end_s] inside [0, duration_s].

    Short segments are widened around their centre (randomly shifted when `rng` is given), long ones
    are cut to a max_s sub-window (random with `rng`, centred without).
    """
    length = end_s - start_s
    if length > max_s:
        extra = length - max_s
        off = rng.uniform(0.0, extra) if rng is not None else extra / 2
        s, e = start_s + off, start_s + off + max_s
    elif length < min_s:
        grow = min_s - length
        left = rng.uniform(0.0, grow) if rng is not None else grow / 2
        s, e = start_s - left, end_s + (grow - left)
    else:
        s, e = start_s, end_s
    if s < 0.0:
        s, e = 0.0, e - s
    if e > duration_s:
        s, e = max(0.0, s - (e - duration_s)), duration_s
    return s, e


def crop_rows(n_rows: int, fps: float, start_s: float, end_s: float) -> tuple[int, int]:
    """The feature rows [a, b) of [start_s, end_s) at the motion's fps; at least one row."""
    a = int(np.clip(np.floor(start_s * fps + 1e-6), 0, max(n_rows - 1, 0)))
    b = int(np.clip(np.ceil(end_s * fps - 1e-6), a + 1, n_rows))
    return a, b


def crop_features(features: np.ndarray, fps: float, start_s: float, end_s: float, model_fps: float) -> np.ndarray:
    """Feature rows of [start_s, end_s) at the motion's fps, resampled to the model's fps; >= 1 row."""
    a, b = crop_rows(len(features), fps, start_s, end_s)
    return resample_window(np.asarray(features[a:b], np.float32), fps, model_fps)


class _MotionCache:
    """Feature arrays (memory-mapped views) and fps/duration of the motions a split uses."""

    def __init__(self, store, motion_ids):
        self.store = store
        self.features: dict[int, np.ndarray] = {}
        self.fps: dict[int, float] = {}
        self.duration_s: dict[int, float] = {}
        for mid in sorted(set(motion_ids)):
            m = store.get_motion(mid, arrays=False)
            self.fps[mid] = float(m.fps)
            self.duration_s[mid] = float(m.meta.get("_duration_s", 0.0))
            self.features[mid] = store.features(mid)
        self._model_rate: dict[int, np.ndarray] = {}

    def window(self, pair: Pair, cfg: TrainConfig, model_fps: float, rng: np.random.Generator | None) -> np.ndarray:
        """The crop's feature rows at the model's rate (transformer: the crop is all the encoder sees)."""
        f = self.features[pair.motion_id]
        s, e = self._crop_s(pair, cfg, rng)
        return crop_features(f, self.fps[pair.motion_id], s, e, model_fps)

    def span(self, pair: Pair, cfg: TrainConfig, model_fps: float,
             rng: np.random.Generator | None) -> tuple[np.ndarray, int, int]:
        """(whole motion at the model's rate, a, b): the same crop as `window` (the same draws from
        `rng`), as frames of the whole motion, for encoders that see the crop's context."""
        mid = pair.motion_id
        f = self.features[mid]
        s, e = self._crop_s(pair, cfg, rng)
        a, b = crop_rows(len(f), self.fps[mid], s, e)
        if mid not in self._model_rate:
            self._model_rate[mid] = resample_window(np.asarray(f, np.float32), self.fps[mid], model_fps)
        feats = self._model_rate[mid]
        win = model_rate_windows(np.array([[a, b]]), len(feats), self.fps[mid], model_fps)
        return feats, int(win[0, 0]), int(win[0, 1])

    def _crop_s(self, pair: Pair, cfg: TrainConfig, rng: np.random.Generator | None) -> tuple[float, float]:
        f = self.features[pair.motion_id]
        dur = self.duration_s[pair.motion_id] or (len(f) + 1) / self.fps[pair.motion_id]
        return crop_span(pair.start_s, pair.end_s, dur, cfg.min_crop_s, cfg.max_crop_s, rng)


def feature_stats(store, motion_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over every feature frame of the motions (float64 accumulation)."""
    n = 0
    s = np.zeros(FEATURE_DIM, np.float64)
    ss = np.zeros(FEATURE_DIM, np.float64)
    for mid in motion_ids:
        f = np.asarray(store.features(mid), np.float64)
        n += len(f)
        s += f.sum(0)
        ss += (f * f).sum(0)
    if n == 0:
        raise CorpusError("training split", "no feature frames to compute the normalisation from")
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


# ---------------------------------------------------------------------------------------------- eval
def _ranks(sim: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """1 + number of non-positives scoring above the best positive, per row."""
    best = np.where(pos, sim, -np.inf).max(axis=1)
    return 1 + ((sim > best[:, None]) & ~pos).sum(axis=1)


def evaluate_retrieval(model: RetrievalModel, store, split: str = "test", block: int = 1024,
                       max_pairs: int | None = None) -> RetrievalEval:
    """Full-gallery R@1/5/10 and median rank, text->motion and motion->text, over every annotated
    segment of `split` (deterministic centred 2-10 s crops, the training crop rule without randomness)."""
    pairs = collect_pairs(store, split)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    if not pairs:
        nan = DirectionMetrics.from_ranks(np.zeros(0))
        return RetrievalEval(split, 0, nan, nan)
    cfg = TrainConfig()
    cache = _MotionCache(store, [p.motion_id for p in pairs])
    was_training = model.training
    model.eval()
    try:
        if model.config.arch == "window":  # each crop pooled from its whole motion (with its context)
            motion = np.zeros((len(pairs), model.config.embed_dim), np.float32)
            by_motion: dict[int, list[int]] = {}
            for i, p in enumerate(pairs):
                by_motion.setdefault(p.motion_id, []).append(i)
            for idx in by_motion.values():
                spans = [cache.span(pairs[i], cfg, model.config.fps, None) for i in idx]
                motion[idx] = model.encode_windows(spans[0][0], [(a, b) for _, a, b in spans])
        else:
            windows = [cache.window(p, cfg, model.config.fps, None) for p in pairs]
            motion = model.encode_motion(windows)
        texts = [p.text for p in pairs]
        uniq, group = np.unique(np.array([t.lower() for t in texts], dtype=object), return_inverse=True)
        text_u = model.encode_text([str(u) for u in uniq])
    finally:
        model.train(was_training)
    text = text_u[group]  # (n, E)
    t2m, m2t = [], []
    for i in range(0, len(pairs), block):
        sl = slice(i, i + block)
        pos = group[sl, None] == group[None, :]  # (b, n) identical sentences count as matches
        t2m.append(_ranks(text[sl] @ motion.T, pos))
        m2t.append(_ranks(motion[sl] @ text.T, pos))
    return RetrievalEval(split, len(pairs), DirectionMetrics.from_ranks(np.concatenate(t2m)),
                         DirectionMetrics.from_ranks(np.concatenate(m2t)))


# ---------------------------------------------------------------------------------------------- train
def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_writer(path) as tmp:
        torch.save(obj, tmp)


def _param_groups(model: RetrievalModel, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name or name.endswith("emb_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_retrieval(store, run_dir: str | os.PathLike, config: TrainConfig | None = None,
                    progress: ProgressFn | None = None, device: str | None = None,
                    text_encoder: TextEncoder | None = None) -> TrainReport:
    """Train (or resume) the retrieval model on `store`'s train split; select on the val split.

    Writes `run_dir`/config.json, last.pt, best.pt, history.jsonl (see the module docstring).
    `progress(stage, done, total)` is called after every batch. A run directory started with another
    config (other than `epochs`) is refused.
    """
    t0 = time.perf_counter()
    config = config or TrainConfig()
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = run / "config.json"
    if cfg_path.exists():
        old = TrainConfig.from_dict(json.loads(cfg_path.read_text())).to_dict()  # fields added since: defaults
        new = config.to_dict()
        diff = sorted(k for k in set(old) | set(new) if k != "epochs" and old.get(k) != new.get(k))
        if diff:
            raise ValueError(f"{run}: run was started with another config (differs in {', '.join(diff)}); "
                             "use a new run directory")
    _atomic_json(cfg_path, config.to_dict())

    mcfg = config.resolved_model()
    dev = resolve_device(device)
    pairs = collect_pairs(store, config.train_split, variants=config.text_variants)
    if config.max_items is not None:
        pairs = pairs[: config.max_items]
    if len(pairs) < 2:
        raise CorpusError(f"corpus {store.dir}", f"split {config.train_split!r} has {len(pairs)} annotated "
                                                 "segments; at least 2 are needed to train")
    cache = _MotionCache(store, [p.motion_id for p in pairs])

    torch.manual_seed(config.seed)
    model = RetrievalModel(mcfg, text_encoder=text_encoder)
    if config.init:
        init = load_retrieval(config.init, device="cpu", text_encoder=text_encoder)
        if init.config.identity() != mcfg.identity():
            raise ValueError(f"{config.init}: its architecture differs from this run's "
                             f"({init.config.identity()} vs {mcfg.identity()}); pass the same model options")
        model.load_state_dict(init.state_dict())  # weights and the init's input normalisation
    else:
        model.set_feature_stats(*feature_stats(store, sorted(cache.features)))
    if config.freeze_motion:
        if not config.init:
            raise ValueError("freeze_motion needs an init model (a frozen random motion encoder learns nothing)")
        model.motion.requires_grad_(False)
    model.to(dev)
    opt = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)

    start_epoch, best_score, best_epoch = 0, -np.inf, -1
    last_path = run / "last.pt"
    if last_path.exists():
        ck = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"]["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, best_score, best_epoch = int(ck["epoch"]), float(ck["best_score"]), int(ck["best_epoch"])
        log.info("%s: resuming after epoch %d", run, start_epoch)
    resumed_from = start_epoch

    # Frozen sentence embeddings, computed once per distinct sentence (every wording of every pair).
    texts = sorted({t for p in pairs for t in (p.texts or (p.text,))})
    tindex = {t: i for i, t in enumerate(texts)}
    sent = torch.as_tensor(model.text_encoder.encode(texts), dtype=torch.float32, device=dev)  # (U, 384)
    text_ids = np.array([tindex[p.text] for p in pairs])
    variant_ids = [np.array([tindex[t] for t in (p.texts or (p.text,))]) for p in pairs]
    # The mix's corpus weights and the label balance (None: every pair once per epoch).
    probs = sampling_weights(store, [p.motion_id for p in pairs], [p.label for p in pairs], config.label_balance)
    std_t = model.feature_std.detach().clone() if config.feature_noise > 0 else None
    by_family = families(pairs) if config.hard_negative_frac > 0 else None

    has_val = bool(collect_pairs(store, config.val_split))
    best_val: RetrievalEval | None = None
    n_batches = max(1, len(pairs) // config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 100_003 + epoch)
        hardest = epoch >= config.warmup_epochs
        model.train()
        order = sampling_order(rng, len(pairs), probs)
        losses: list[float] = []
        dropped: list[float] = []  # fraction of negatives DropTriple dropped, per batch
        for b in range(n_batches):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            if config.hard_negative_frac > 0:  # the batch's tail: partners of its first anchors
                n_hard = int(round(config.hard_negative_frac * len(idx)))
                extra = hard_partners(pairs, idx, n_hard, rng, by_family)
                idx = np.concatenate([idx[:len(idx) - len(extra)], np.array(extra, dtype=idx.dtype)])
            if len(idx) < 2:
                continue
            if mcfg.arch == "window":  # crops with their context, pooled over the crop
                x, valid, pool = model.window_batch([cache.span(pairs[i], config, mcfg.fps, rng) for i in idx])
                pool_t = torch.from_numpy(pool).to(dev)
            else:
                x, valid = pad_windows([cache.window(pairs[i], config, mcfg.fps, rng) for i in idx])
                pool_t = None
            x_t = torch.from_numpy(x).to(dev)
            if std_t is not None:
                x_t = x_t + config.feature_noise * std_t * torch.randn_like(x_t)
            v_t = torch.from_numpy(valid).to(dev)
            tids = np.array([v[rng.integers(len(v))] for v in (variant_ids[i] for i in idx)]) \
                if config.text_variants else text_ids[idx]
            s_t = sent[torch.as_tensor(tids, device=dev)]  # (B, 384)
            if config.text_noise > 0:
                s_t = perturb_sentences(s_t, config.text_noise)
            if config.freeze_motion:
                with torch.no_grad():
                    model.motion.eval()  # frozen: no dropout either
                    m = model.motion_forward(x_t, v_t, pool_t)  # (B, E)
            else:
                m = model.motion_forward(x_t, v_t, pool_t)  # (B, E)
            t = model.text_forward(s_t)  # (B, E)
            sim = m @ t.T  # (B, B) motion x text
            with torch.no_grad():
                msim = m @ m.T if hardest else None
                tsim = s_t @ s_t.T if hardest else None
                if hardest and config.label_negatives:
                    known, same = label_masks(pairs, [int(i) for i in idx], dev)
                    msim = msim.masked_fill(known, -1.0)  # labelled pairs: the labels decide, not the motion
                    tsim = torch.where(known, same.float() * 2.0, tsim)
                if hardest:
                    off = ~torch.eye(len(idx), dtype=torch.bool, device=dev)
                    dropped.append(float(((msim > config.motion_threshold) | (tsim > config.text_threshold))[off]
                                         .float().mean()))
            loss = drop_triple_loss(sim, msim, tsim, margin=config.margin, hardest=hardest,
                                    motion_threshold=config.motion_threshold,
                                    text_threshold=config.text_threshold)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(f"epoch {epoch + 1}/{config.epochs}", b + 1, n_batches)
        model.eval()
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
                                  "hardest": hardest,
                                  "dropped_negatives": float(np.mean(dropped)) if dropped else 0.0}
        if has_val:
            val = evaluate_retrieval(model, store, config.val_split)
            record["val"] = val.to_dict()
            score = val.rsum
        else:
            val, score = None, float(epoch)  # no validation split: keep the latest
        if score > best_score:
            best_score, best_epoch, best_val = score, epoch + 1, val
            model.save(run / "best.pt")
        _atomic_torch_save({"model": model.checkpoint(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                            "best_score": float(best_score), "best_epoch": best_epoch}, last_path)
        with open(run / "history.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        log.info("epoch %d: %s", epoch + 1, record)
    if best_val is None and has_val and (run / "best.pt").exists():
        best_val = evaluate_retrieval(RetrievalModel.load(run / "best.pt", device=dev, text_encoder=text_encoder),
                                      store, config.val_split)
    return TrainReport(str(run), max(config.epochs, start_epoch), best_epoch, best_val,
                       time.perf_counter() - t0, resumed_from)
