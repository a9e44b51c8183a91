"""Training loop of the MLP localizer: `train_localizer(data, run_dir, config)` and `load_localizer(path)`.

A run directory holds::

    runs/<name>/
      config.json       the LocalizerConfig (also embedded in every checkpoint)
      last.pt           model, optimizer, step, epoch, planned epochs, RNG states, history (resume point)
      best.pt           model + config + validation metrics of the best epoch (selected on 'val', never test)
      history.json      per epoch: mean loss, lr, mean loss terms (seq / span / rec / align, P_pred(true),
                        P_rec(true)) and validation metrics (with the median p_se and span ratio)
      text_cache.pt     token embeddings of every training / validation sentence (recomputed when absent)

Checkpoints are written to a temporary file and renamed, so a kill never leaves a half-written one.
Resuming after a kill restarts from last.pt (saved every `ckpt_every_steps` steps and at each epoch end)
and replays exactly what the uninterrupted run would have done: the data order of epoch e comes from
(seed, e) and the RNG states (dropout, perturbation, label flips) are restored.

Optimisation (mlp-notes.md): AdamW (0.9, 0.999), weight decay 0.01 except biases / norms / adjacencies,
lr x0.1 (`lr_decay`) after half of the planned steps (or cosine), gradient clipping, fixed seeds; the LP-Matcher perturbation rate
alpha rises linearly from `perturb_start` to `perturb_end` over the planned steps.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from engine.corpus.device import resolve_device as resolve_device_name
from engine.corpus.io import atomic_write_text, atomic_writer, load_weights
from engine.corpus.mix import sampling_order
from localizer.config import LocalizerConfig, make_config
from localizer.data import LocalizerData, PairSet, TextCache, collate, input_statistics, load_data
from localizer.decode import MaxSpan, decode_best, fit_max_span, index_to_seconds, temporal_iou
from localizer.fingerprint import resolve_checkpoint
from localizer.model import MLPLocalizer, mlp_loss

log = logging.getLogger(__name__)

CKPT_FORMAT = 1
IOU_THRESHOLDS = (0.5, 0.7, 0.9)


@dataclass
class EvalMetrics:
    """R@1 at IoU 0.5 / 0.7 / 0.9 and mIoU (in [0, 1]) of the top-1 span against the one ground truth."""

    n: int
    r1_iou0_5: float
    r1_iou0_7: float
    r1_iou0_9: float
    miou: float
    p_se_median: float | None = None  # median located score of the top-1 span
    span_ratio_median: float | None = None  # median predicted / true span length

    def score(self, metric: str) -> float:
        return {"miou": self.miou, "r1_iou0.5": self.r1_iou0_5, "r1_iou0.7": self.r1_iou0_7,
                "r1_iou0.9": self.r1_iou0_9}[metric]


@dataclass
class TrainProgress:
    """What the progress callback receives after every step ('train') and every evaluation ('eval')."""

    phase: str
    epoch: int  # 0-based epoch being run
    epochs: int  # planned epochs
    step: int  # optimizer steps done
    total_steps: int
    loss: float
    lr: float
    elapsed_s: float
    metrics: EvalMetrics | None = None


@dataclass
class TrainResult:
    run_dir: Path
    last_path: Path
    best_path: Path
    steps: int
    epochs: int
    best_score: float | None
    best_metrics: EvalMetrics | None
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- helpers
def resolve_device(device: str | torch.device | None) -> torch.device:
    """The one device resolver (`engine.corpus.device`: None is the CPU; CUDA only when asked for and
    present), as a torch.device."""
    return torch.device(resolve_device_name(None if device is None else str(device)))


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "adjacency" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> dict:
    """RNG states as tensors and plain Python values, so checkpoints load with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: dict, path: Path) -> None:
    with atomic_writer(path) as tmp:  # fsynced, renamed; a failed save leaves the old checkpoint
        torch.save(obj, tmp)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o).__name__)


def lr_schedule(tc, step: int, total_steps: int) -> float:
    """Learning rate at optimizer step `step` (0-based) of `total_steps` planned: `tc.lr_schedule` "step"
    (x lr_decay from step int(lr_decay_at * total) on) or "cosine" (lr -> lr * lr_min_factor)."""
    if tc.lr_schedule == "cosine":
        frac = min(1.0, step / max(1, total_steps))
        lo = tc.lr * tc.lr_min_factor
        return lo + (tc.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return tc.lr * (tc.lr_decay if step >= int(tc.lr_decay_at * total_steps) else 1.0)


def train_max_span(train: PairSet, quantile: float | None, unit: str = "auto") -> MaxSpan | None:
    """The learned maximum span of a training set (None when `quantile` is None or there are no pairs)."""
    if quantile is None or len(train) == 0:
        return None
    spans = [(p.start_idx, p.end_idx, train.motions[p.motion_index].n_snippets,
              train.motions[p.motion_index].duration_s) for p in train.pairs]
    return fit_max_span(spans, quantile, unit)


def negative_rows(pairset: PairSet, rows: list[int], n_neg: int, motion_texts: list[set[str]]) -> torch.Tensor:
    """(B, n_neg) batch rows whose motions serve as in-batch negatives of each row's sentence, -1 where the
    batch has too few: the next rows in batch order (cyclically) whose motion differs and carries no annotation
    with the same sentence (an exact-text false negative)."""
    b = len(rows)
    out = torch.full((b, n_neg), -1, dtype=torch.long)
    pairs = [pairset.pairs[r] for r in rows]
    for i, p in enumerate(pairs):
        k = 0
        for shift in range(1, b):
            j = (i + shift) % b
            q = pairs[j]
            if q.motion_index == p.motion_index or p.text in motion_texts[q.motion_index]:
                continue
            out[i, k] = j
            k += 1
            if k == n_neg:
                break
    return out


def shared_norm_span_loss(model: MLPLocalizer, enc: torch.Tensor, batch, out, neg: torch.Tensor,
                          loss_reduce: str = "mean") -> torch.Tensor:
    """Span loss with shared normalisation (CONQUER): the start (end) softmax of each sentence runs over its own
    motion's positions and those of its in-batch negative motions concatenated; the target is the true index
    in its own motion. Negatives see the inference condition (all matcher labels [PAD], no recovering input).
    `neg` (B, n) from `negative_rows`; -1 entries contribute no positions."""
    b, t = batch.m_mask.shape
    n = neg.shape[1]
    neg = neg.to(enc.device)
    valid = neg >= 0
    j = neg.clamp(min=0).reshape(-1)  # (B*n,)
    i = torch.arange(b, device=enc.device).repeat_interleave(n)
    neg_mask = batch.m_mask[j] & valid.reshape(-1, 1)
    neg_mask[:, 0] |= ~valid.reshape(-1)  # keep one position so no row is all padding (masked again below)
    neg_out = model.forward_encoded(enc[j], neg_mask, batch.text[i], batch.t_mask[i])
    keep = (batch.m_mask[j] & valid.reshape(-1, 1)).reshape(b, n * t)
    k = 0.5 if loss_reduce == "mean" else 1.0
    losses = []
    for pos_logits, neg_logits, target in ((out.start_logits, neg_out.start_logits, batch.start_idx),
                                           (out.end_logits, neg_out.end_logits, batch.end_idx)):
        neg_l = neg_logits.float().reshape(b, n * t).masked_fill(~keep, float("-inf"))
        losses.append(torch.nn.functional.cross_entropy(torch.cat([pos_logits.float(), neg_l], dim=1), target))
    return k * (losses[0] + losses[1])


def _mean_terms(terms: list[dict[str, float]]) -> dict[str, float]:
    """Per-key mean of the per-step loss terms (keys present in any step)."""
    keys = sorted({k for t in terms for k in t})
    return {k: float(np.mean([t[k] for t in terms if k in t])) for k in keys}


# ---------------------------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def evaluate(model: MLPLocalizer, pairset: PairSet, text_cache: TextCache, batch_size: int = 64,
             device: torch.device | str = "cpu", bf16: bool = False, indices: list[int] | None = None,
             max_span: MaxSpan | None = None) -> EvalMetrics:
    """Top-1 decoding of every pair (or `indices`), batched by motion length; all matcher labels [PAD].

    `max_span`: the learned span limit (the run's `config.max_span`), None = no limit.
    """
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    idx = list(range(len(pairset))) if indices is None else list(indices)
    idx.sort(key=lambda i: pairset.motions[pairset.pairs[i].motion_index].n_snippets)
    ious: list[float] = []
    p_se: list[float] = []
    ratios: list[float] = []
    try:
        for k in range(0, len(idx), batch_size):
            chunk = idx[k: k + batch_size]
            b = collate(pairset, chunk, text_cache).to(dev)
            with autocast(dev, bf16):
                probs = model.localize(model.encode_motion(b.snippets, b.m_mask), b.m_mask, b.text, b.t_mask)
            lim = None
            if max_span is not None:
                sms = [pairset.motions[pairset.pairs[i].motion_index] for i in chunk]
                lim = torch.tensor([max_span.max_len(sm.n_snippets, sm.duration_s) for sm in sms], device=dev)
            dec = decode_best(probs.p_start, probs.p_end, lim)
            for row, i in enumerate(chunk):
                p = pairset.pairs[i]
                sm = pairset.motions[p.motion_index]
                t_s, t_e = index_to_seconds(int(dec.start_idx[row]), int(dec.end_idx[row]), sm.n_snippets,
                                            sm.duration_s)
                ious.append(temporal_iou(t_s, t_e, p.start_s, p.end_s))
                p_se.append(float(dec.p_se[row]))
                ratios.append((t_e - t_s) / max(p.end_s - p.start_s, 1e-9))
    finally:
        model.train(was_training)
    a = np.asarray(ious, dtype=np.float64)
    if a.size == 0:
        return EvalMetrics(n=0, r1_iou0_5=0.0, r1_iou0_7=0.0, r1_iou0_9=0.0, miou=0.0)
    return EvalMetrics(n=int(a.size), r1_iou0_5=float((a >= 0.5).mean()), r1_iou0_7=float((a >= 0.7).mean()),
                       r1_iou0_9=float((a >= 0.9).mean()), miou=float(a.mean()),
                       p_se_median=float(np.median(p_se)), span_ratio_median=float(np.median(ratios)))


# ---------------------------------------------------------------------------------------------- loading
def load_localizer(path: str | Path, device: str | torch.device | None = "cpu") -> tuple[MLPLocalizer, LocalizerConfig]:
    """(model in eval mode, config) from a run directory (best.pt, else last.pt) or a checkpoint file."""
    ckpt_path = resolve_checkpoint(path)
    try:
        ckpt = load_weights(ckpt_path)
        config = LocalizerConfig.from_dict(ckpt["config"])
        model = MLPLocalizer(config.model)
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError, ValueError, OSError, pickle.UnpicklingError) as e:
        raise ValueError(f"{ckpt_path}: not a usable localizer checkpoint ({e})") from e
    model.to(resolve_device(device)).eval()
    return model, config


# ---------------------------------------------------------------------------------------------- training
def _prepare_text(data: LocalizerData, run_dir: Path, cfg: LocalizerConfig, text_cache: TextCache | None) -> TextCache:
    cache = text_cache or TextCache(encoder_name=cfg.train.text_encoder, max_tokens=cfg.train.max_tokens)
    path = run_dir / "text_cache.pt"
    if text_cache is None and cache.load(path):
        log.info("text cache: %d sentences from %s", len(cache.table), path)
    texts = set(data.train.texts()) | (set(data.val.texts()) if data.val is not None else set())
    t0 = time.perf_counter()
    added = cache.add(texts)
    if added:
        log.info("text cache: encoded %d sentences in %.1f s", added, time.perf_counter() - t0)
    if added or not path.exists():
        cache.save(path)
    return cache


def train_localizer(
    data,
    run_dir: str | Path,
    config: LocalizerConfig | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    device: str | torch.device | None = "cpu",
    resume: bool = True,
    text_cache: TextCache | None = None,
    num_threads: int | None = None,
) -> TrainResult:
    """Train (or resume) a localizer run.

    `data`: a CorpusStore, a corpus directory, an iterable of Motion (their `split` field is used) or a
    `LocalizerData`. Pairs come from split `config.train.train_split`; model selection uses
    `config.train.val_split` (when that split is empty, best.pt is the last epoch's model).
    `config`: None resumes with the run's config.json (or the cpu-small preset for a new run).
    `resume`: continue from run_dir/last.pt when present; False starts over (overwriting the run).
    `num_threads`: torch intra-op threads for this process (None leaves torch's default). On a small shared
    CPU, 1 avoids OpenMP spin-waits when other processes hold the cores.
    """
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    ckpt = None
    if resume and last_path.exists():
        ckpt = load_weights(last_path)
        saved = LocalizerConfig.from_dict(ckpt["config"])
        # text_dim follows the text encoder (set when the run started), so it is not compared
        if config is not None and replace(config.model, text_dim=saved.model.text_dim) != saved.model:
            raise ValueError(f"{run_dir}: holds a run with another model config; pass resume=False to start "
                             "over or use a new run directory")
        if config is not None and config.train != saved.train:
            log.warning("%s: resuming with the run's saved training settings, not the ones given", run_dir)
        config = saved
    else:
        if config is None:
            config = LocalizerConfig.load(run_dir / "config.json") if (run_dir / "config.json").exists() \
                else make_config("cpu-small", "mlp")
        for stale in (last_path, best_path, run_dir / "history.json"):  # starting over: no mixed runs
            stale.unlink(missing_ok=True)
    tc = config.train

    data = load_data(data, config.model.n_snippets, tc.train_split, tc.val_split, tc.text_variants,
                     tc.label_balance)
    if len(data.train) == 0:
        raise ValueError(f"no training pairs (split {tc.train_split!r} has no annotated motions)")
    text_cache = _prepare_text(data, run_dir, config, text_cache)
    if text_cache.dim != config.model.text_dim:
        if ckpt is not None:
            raise ValueError(f"{run_dir}: text encoder gives {text_cache.dim}-d tokens, the run expects "
                             f"{config.model.text_dim}")
        log.info("text_dim set to %d (the text encoder's)", text_cache.dim)
        config = replace(config, model=replace(config.model, text_dim=text_cache.dim))
    if ckpt is None:
        config = replace(config, max_span=train_max_span(data.train, tc.max_span_quantile, tc.max_span_unit))
        if config.max_span is not None:
            ms = config.max_span
            log.info("max span (q=%.2f of %d training spans): %.2f s or %.3f of the motion; decoding uses %s",
                     ms.quantile, ms.n_spans, ms.seconds, ms.fraction, ms.unit)
    config.save(run_dir / "config.json")

    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    random.seed(tc.seed)
    model = MLPLocalizer(config.model)
    if ckpt is None:
        mean, std = input_statistics(data.train)
        model.set_input_stats(torch.from_numpy(mean), torch.from_numpy(std))
    model.to(dev)
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=tc.betas)

    n_train = len(data.train)
    steps_per_epoch = math.ceil(n_train / tc.batch_size)
    planned_epochs = tc.epochs
    step = 0
    best_score: float | None = None
    best_metrics: EvalMetrics | None = None
    history: list[dict] = []
    budget_fitted = tc.time_budget_min is None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        planned_epochs = int(ckpt["planned_epochs"])
        if int(ckpt["steps_per_epoch"]) != steps_per_epoch:
            raise ValueError(f"{run_dir}: the training data changed since the run started "
                             f"({ckpt['steps_per_epoch']} steps per epoch then, {steps_per_epoch} now)")
        best_score = ckpt.get("best_score")
        best_metrics = EvalMetrics(**ckpt["best_metrics"]) if ckpt.get("best_metrics") else None
        history = list(ckpt.get("history", []))
        budget_fitted = True
        _set_rng_state(ckpt["rng"])
        log.info("resumed %s at step %d (epoch %d of %d)", run_dir, step, step // steps_per_epoch, planned_epochs)

    motion_texts = [set() for _ in data.train.motions]
    for p in data.train.pairs:
        motion_texts[p.motion_index].update(p.texts or (p.text,))
    val_indices = None
    if data.val is not None and tc.val_max_pairs is not None and len(data.val) > tc.val_max_pairs:
        val_indices = sorted(np.random.default_rng(tc.seed).choice(len(data.val), tc.val_max_pairs,
                                                                   replace=False).tolist())

    def total_steps() -> int:
        return planned_epochs * steps_per_epoch

    def lr_at(s: int) -> float:
        return lr_schedule(tc, s, total_steps())

    def align_weight_at(s: int) -> float:
        lam = config.model.lambda_align
        if tc.align_ramp <= 0:
            return lam
        return lam * min(1.0, s / max(1.0, tc.align_ramp * total_steps()))

    def alpha_at(s: int) -> float:
        m = config.model
        return m.perturb_start + (m.perturb_end - m.perturb_start) * min(1.0, s / max(1, total_steps()))

    def save_last(epoch_losses: list[float]) -> None:
        _atomic_save({"format": CKPT_FORMAT, "config": config.to_dict(), "model": model.state_dict(),
                      "optimizer": opt.state_dict(), "step": step, "planned_epochs": planned_epochs,
                      "steps_per_epoch": steps_per_epoch, "best_score": best_score,
                      "best_metrics": asdict(best_metrics) if best_metrics else None, "history": history,
                      "epoch_losses": epoch_losses, "epoch_terms": epoch_terms, "rng": _rng_state()}, last_path)

    def emit(phase: str, epoch: int, loss: float, metrics: EvalMetrics | None = None) -> None:
        if progress is not None:
            progress(TrainProgress(phase=phase, epoch=epoch, epochs=planned_epochs, step=step,
                                   total_steps=total_steps(), loss=loss, lr=lr_at(max(0, step - 1)),
                                   elapsed_s=time.perf_counter() - t_start, metrics=metrics))

    t_start = time.perf_counter()
    model.train()
    probe_steps = min(8, max(1, steps_per_epoch - 1))  # measured inside the first epoch when possible
    t_probe = None
    epoch_losses: list[float] = list(ckpt.get("epoch_losses", [])) if ckpt is not None else []
    epoch_terms: list[dict[str, float]] = list(ckpt.get("epoch_terms", [])) if ckpt is not None else []
    stopped_for_time = False
    while step < total_steps():
        epoch = step // steps_per_epoch
        epoch_rng = np.random.default_rng([tc.seed, epoch])
        order = sampling_order(epoch_rng, n_train, data.train.probs)
        for b_i in range(step - epoch * steps_per_epoch, steps_per_epoch):
            if step == 1 and t_probe is None:
                t_probe = time.perf_counter()  # the first step warms up; time the next ones
            rows = order[b_i * tc.batch_size: (b_i + 1) * tc.batch_size].tolist()
            pairset = data.train
            if tc.text_variants:  # this batch's wordings (seeded by step, so a resumed run draws the same)
                pairset, rows = data.train.with_texts(rows, np.random.default_rng([tc.seed, 7, step]))
            batch = collate(pairset, rows, text_cache).to(dev)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            m_labels = flip_s = flip_e = None
            if config.model.label_prior:
                m_labels = model.perturb_labels(batch.h_labels, batch.m_mask, alpha_at(step))
            if config.model.recovering:
                flip_s = model.flip_labels(batch.start_idx, batch.m_mask)
                flip_e = model.flip_labels(batch.end_idx, batch.m_mask)
            shared = None
            with autocast(dev, tc.bf16):
                if tc.negatives > 0:
                    enc = model.encode_motion(batch.snippets, batch.m_mask)
                    out = model.forward_encoded(enc, batch.m_mask, batch.text, batch.t_mask, m_labels, flip_s, flip_e)
                    neg = negative_rows(pairset, rows, tc.negatives, motion_texts)
                    shared = shared_norm_span_loss(model, enc, batch, out, neg, config.model.loss_reduce)
                else:
                    out = model(batch.snippets, batch.m_mask, batch.text, batch.t_mask, m_labels, flip_s, flip_e)
            terms = mlp_loss(out, config.model, batch.m_mask, batch.start_idx, batch.end_idx, batch.h_labels,
                             align_weight=align_weight_at(step), span_loss=shared)
            opt.zero_grad(set_to_none=True)
            terms.total.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            step += 1
            loss = float(terms.total.detach())
            if not math.isfinite(loss):
                raise FloatingPointError(f"{run_dir}: loss became {loss} at step {step}")
            epoch_losses.append(loss)
            epoch_terms.append(terms.as_floats())
            if not budget_fitted and t_probe is not None and step >= probe_steps + 1:
                budget_fitted = True
                sec_per_step = (time.perf_counter() - t_probe) / (step - 1)
                budget_s = tc.time_budget_min * 60.0
                # one evaluation per epoch costs about a forward pass over val: ~1/3 of a training step per batch
                n_val = len(val_indices) if val_indices is not None else (len(data.val) if data.val else 0)
                per_epoch = sec_per_step * (steps_per_epoch + math.ceil(n_val / tc.eval_batch_size) / 3.0)
                left_s = budget_s - (time.perf_counter() - t_start)
                fit = max(step // steps_per_epoch + 1, int(left_s / (per_epoch * 1.05)))
                if fit < planned_epochs:
                    log.warning("%.2f s/step: %d epochs would take %.0f min > budget %.0f min; training %d epochs",
                                sec_per_step, planned_epochs, planned_epochs * per_epoch / 60,
                                tc.time_budget_min, fit)
                    planned_epochs = fit
            if tc.ckpt_every_steps and step % tc.ckpt_every_steps == 0 and step % steps_per_epoch != 0:
                save_last(epoch_losses)
            emit("train", epoch, loss)
            if (tc.time_budget_min is not None and step % steps_per_epoch != 0
                    and time.perf_counter() - t_start > tc.time_budget_min * 60.0 * 1.1):
                stopped_for_time = True
                break
            if step >= total_steps():
                break
        # ---- end of epoch (or stop): evaluate, keep the best, save
        rec = {"epoch": epoch, "step": step, "loss": float(np.mean(epoch_losses)) if epoch_losses else None,
               "lr": lr_at(max(0, step - 1)), "terms": _mean_terms(epoch_terms)}
        epoch_losses = []
        epoch_terms = []
        metrics = None
        if data.val is not None:
            metrics = evaluate(model, data.val, text_cache, tc.eval_batch_size, dev, tc.bf16, val_indices,
                               max_span=config.max_span)
            rec["val"] = asdict(metrics)
            score = metrics.score(tc.select_metric)
            if best_score is None or score > best_score:
                best_score, best_metrics = score, metrics
                _atomic_save({"format": CKPT_FORMAT, "config": config.to_dict(), "model": model.state_dict(),
                              "step": step, "epoch": epoch, "metrics": asdict(metrics)}, best_path)
            log.info("epoch %d step %d loss %.4f val %s=%.4f (best %.4f)", epoch, step, rec["loss"] or 0.0,
                     tc.select_metric, score, best_score)
        else:
            log.info("epoch %d step %d loss %.4f (no validation split)", epoch, step, rec["loss"] or 0.0)
        history.append(rec)
        save_last([])
        atomic_write_text(run_dir / "history.json", json.dumps(history, indent=2, default=_json_default))
        emit("eval", epoch, rec["loss"] or 0.0, metrics)
        if stopped_for_time:
            log.warning("%s: stopped at step %d after the time budget of %.0f min; resume to continue",
                        run_dir, step, tc.time_budget_min)
            break
    if data.val is None or not best_path.exists():
        _atomic_save({"format": CKPT_FORMAT, "config": config.to_dict(), "model": model.state_dict(),
                      "step": step, "epoch": planned_epochs - 1, "metrics": None}, best_path)
    return TrainResult(run_dir=run_dir, last_path=last_path, best_path=best_path, steps=step,
                       epochs=planned_epochs, best_score=best_score, best_metrics=best_metrics, history=history)


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class StepTiming:
    """Seconds per training step (forward + backward + AdamW) and per inference batch, on random full-length data."""

    preset: str
    variant: str
    bf16: bool
    batch_size: int
    n_snippets: int
    train_step_s: float
    infer_batch_s: float


def time_steps(config: LocalizerConfig, n_steps: int = 5, n_tokens: int = 12, device: str | None = "cpu",
               bf16: bool | None = None, seed: int = 0) -> StepTiming:
    """Median time of `n_steps` training steps on a batch of motions with the full S snippets (the worst case)."""
    dev = resolve_device(device)
    use_bf16 = config.train.bf16 if bf16 is None else bf16
    m, tc = config.model, config.train
    g = torch.Generator().manual_seed(seed)
    b, t = tc.batch_size, m.n_snippets
    x = torch.randn(b, t, 22, 12, generator=g).to(dev)
    mm = torch.ones(b, t, dtype=torch.bool, device=dev)
    q = torch.randn(b, n_tokens, m.text_dim, generator=g).to(dev)
    qm = torch.ones(b, n_tokens, dtype=torch.bool, device=dev)
    start = torch.randint(0, t // 2, (b,), generator=g).to(dev)
    end = (start + t // 4).clamp(max=t - 1)
    pos = torch.arange(t, device=dev).unsqueeze(0)
    h = ((pos >= start.unsqueeze(1)) & (pos <= end.unsqueeze(1))).float()
    torch.manual_seed(seed)
    model = MLPLocalizer(m).to(dev).train()
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = []
    for _ in range(n_steps + 1):
        t0 = time.perf_counter()
        labels = model.perturb_labels(h, mm, 0.9) if m.label_prior else None
        fs = model.flip_labels(start, mm) if m.recovering else None
        fe = model.flip_labels(end, mm) if m.recovering else None
        with autocast(dev, use_bf16):
            out = model(x, mm, q, qm, labels, fs, fe)
        loss = mlp_loss(out, m, mm, start, end, h).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or 1e9)
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    model.eval()
    infer = []
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter()
            with autocast(dev, use_bf16):
                model.localize(model.encode_motion(x, mm), mm, q, qm)
            sync()
            infer.append(time.perf_counter() - t0)
    return StepTiming(preset=config.preset, variant=config.variant, bf16=use_bf16, batch_size=b, n_snippets=t,
                      train_step_s=float(np.median(times[1:])), infer_batch_s=float(np.median(infer[1:])))
