"""Inference API of the localizer, the one the search engine calls.

    loc = Localizer.load("runs/mlp-small", device="cpu")          # or device="cuda", bf16=True
    enc = loc.encode_motions([store.features(mid) for mid in ids], fps=[...], motion_ids=ids)   # cacheable
    spans = loc.localize("a person waves", enc, top_m=3)          # list (per motion) of LocalizedSpan
    loc.fingerprint()                                             # sha256 of the checkpoint it was loaded from

`encode_motions` runs the query-independent part (Joint Recover, pooling, S-Enc) and returns one
`EncodedMotion` (T x d float32 + duration) per motion, which an index can store and feed back later;
`localize` runs the query-dependent part for one sentence against many motions in padded batches
under `torch.inference_mode` and decodes exact top-m (start, end) pairs with temporal NMS
(`localizer.outputs.decode_spans`, shared with the ONNX Runtime backend, localizer/onnx_infer.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from localizer.config import LocalizerConfig
from localizer.data import pad_snippets, snippet_motion
from localizer.decode import decode_best, max_len_snippets
from localizer.fingerprint import localizer_fingerprint, resolve_checkpoint
from localizer.model import MLPLocalizer
from localizer.outputs import (  # noqa: F401 (EncodedMotion, LocalizedSpan: re-exported)
    EncodedMotion,
    LocalizedSpan,
    SpanDistributions,
    TokenLRU,
    batched_distributions,
    check_max_span,
    decode_spans,
)
from localizer.train import autocast, load_localizer, resolve_device

if TYPE_CHECKING:
    from localizer.fast import MotionBank

log = logging.getLogger(__name__)


class Localizer:
    """A trained MLP localizer with its text encoder; batched, cache-friendly inference."""

    def __init__(self, model: MLPLocalizer, config: LocalizerConfig, device: str | torch.device | None = "cpu",
                 bf16: bool = False, text_encoder=None, text_cache_size: int = 1024,
                 checkpoint: str | Path | None = None):
        self.device = resolve_device(device)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None  # the file it was loaded from
        self.model = model.to(self.device).eval()
        self.config = config
        self.bf16 = bf16
        self._text_encoder = text_encoder
        self._text_cache = TokenLRU(text_cache_size)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = "cpu", bf16: bool = False,
             text_encoder=None) -> Localizer:
        """From a run directory (best.pt, else last.pt) or a checkpoint file."""
        model, config = load_localizer(path, device=device)
        return cls(model, config, device=device, bf16=bf16, text_encoder=text_encoder,
                   checkpoint=resolve_checkpoint(path))

    def fingerprint(self) -> str:
        """sha256 of the checkpoint this localizer was loaded from (what an index records as its localizer)."""
        if self.checkpoint is None:
            raise ValueError("this Localizer was not loaded from a checkpoint file, so it has no fingerprint")
        return localizer_fingerprint(self.checkpoint)

    @property
    def n_snippets(self) -> int:
        return self.config.model.n_snippets

    # ------------------------------------------------------------------ text
    @property
    def text_encoder(self):
        if self._text_encoder is None:
            from engine.corpus.text import token_encoder

            tc = self.config.train
            self._text_encoder = token_encoder(tc.text_encoder, device=str(self.device), max_tokens=tc.max_tokens)
            if self._text_encoder.dim != self.config.model.text_dim:
                raise ValueError(f"text encoder {tc.text_encoder!r} gives {self._text_encoder.dim}-d tokens; "
                                 f"the model was trained on {self.config.model.text_dim}-d tokens")
        return self._text_encoder

    def text_tokens(self, text: str) -> np.ndarray:
        """(n_tokens, text_dim) float32 token embeddings of one sentence (LRU-cached)."""
        return self.texts_tokens([text])[0]

    def texts_tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token embeddings of several sentences; the ones not cached are encoded in one batch."""

        def encode(missing: list[str]):
            tb = self.text_encoder.encode(missing)
            return tb.emb, tb.mask

        return self._text_cache.lookup(texts, encode)

    # ------------------------------------------------------------------ motions (query independent)
    @torch.inference_mode()
    def encode_motions(self, features: Sequence[np.ndarray], fps: float | Sequence[float] = 20.0,
                       motion_ids: Sequence[int | None] | None = None, batch_size: int = 64) -> list[EncodedMotion]:
        """Raw (F_i, 263) feature arrays -> EncodedMotion list (same order). Padded snippets never enter BN."""
        n = len(features)
        fps_list = [float(fps)] * n if isinstance(fps, (int, float)) else [float(f) for f in fps]
        ids = list(motion_ids) if motion_ids is not None else [None] * n
        if len(fps_list) != n or len(ids) != n:
            raise ValueError("encode_motions: features, fps and motion_ids must have the same length")
        sms = [snippet_motion(f, r, self.n_snippets, name=str(i), motion_id=i)
               for f, r, i in zip(features, fps_list, ids)]
        out: list[EncodedMotion | None] = [None] * n
        order = sorted(range(n), key=lambda i: sms[i].n_snippets)
        for k in range(0, n, batch_size):
            chunk = order[k: k + batch_size]
            x, mask = pad_snippets([sms[i].snippets for i in chunk])
            with autocast(self.device, self.bf16):
                enc = self.model.encode_motion(x.to(self.device), mask.to(self.device))
            enc = enc.float().cpu().numpy()
            for row, i in enumerate(chunk):
                out[i] = EncodedMotion(features=enc[row, : sms[i].n_snippets].copy(), duration_s=sms[i].duration_s,
                                       motion_id=ids[i])
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ localization
    @torch.inference_mode()
    def distributions(self, text: str | Sequence[str], motions: Sequence[EncodedMotion],
                      batch_size: int = 64) -> list[SpanDistributions]:
        """Start / end / highlight distributions of one sentence (or one sentence per motion) on each motion."""
        dev = self.device

        def run(m, m_mask, q, q_mask):
            with autocast(dev, self.bf16):
                probs = self.model.localize(*(torch.from_numpy(a).to(dev) for a in (m, m_mask, q, q_mask)))
            return tuple(t.float().cpu().numpy() for t in (probs.p_start, probs.p_end, probs.highlight))

        return batched_distributions(text, motions, batch_size, self.texts_tokens, run)

    def localize(self, text: str | Sequence[str], motions: Sequence[EncodedMotion], top_m: int = 1,
                 nms_iou: float = 0.5, max_span_s: float | str | None = "learned",
                 batch_size: int = 64) -> list[list[LocalizedSpan]]:
        """Top-m moments (true (start, end) pairs, temporal NMS) of the sentence in each motion.

        `max_span_s`: "learned" (default) applies the checkpoint's learned maximum span (`config.max_span`,
        none for checkpoints trained before it existed); a number is a limit in seconds; None = no limit.
        """
        check_max_span(max_span_s)
        return decode_spans(self.distributions(text, motions, batch_size=batch_size), top_m=top_m, nms_iou=nms_iou,
                            max_span_s=max_span_s, learned=self.config.max_span)

    def motion_bank(self) -> MotionBank:
        """An empty MotionBank for this model (the fast path's per-index cache of query-independent tensors)."""
        from localizer.fast import MotionBank

        return MotionBank(self.model, device=self.device)

    def _max_lens(self, lengths: Sequence[int], durations: Sequence[float],
                  max_span_s: float | str | None) -> list[int | None]:
        if isinstance(max_span_s, str) and max_span_s != "learned":
            raise ValueError(f"max_span_s must be 'learned', a number of seconds or None, got {max_span_s!r}")
        if max_span_s == "learned":
            learned = self.config.max_span
            return [learned.max_len(t, d) if learned is not None else None for t, d in zip(lengths, durations)]
        return [max_len_snippets(max_span_s, t, d) for t, d in zip(lengths, durations)]

    @torch.inference_mode()
    def localize_pairs(self, texts: Sequence[str], motions: Sequence[EncodedMotion], top_m: int = 1,
                       nms_iou: float = 0.5, max_span_s: float | str | None = "learned",
                       bank: MotionBank | None = None, batch_size: int = 64) -> list[list[LocalizedSpan]]:
        """`localize` of pair i = (texts[i], motions[i]) for every i, on the fast path (`localizer.fast`):
        the motions' query-independent tensors come from `bank` (filled as needed; a throw-away one when
        None), each distinct sentence is prepared once, the pairs run in padded batches of `batch_size`
        (64: the activations stay in a core's L2 cache; larger batches are 10-15% slower on this machine)
        and all spans are decoded at once (`decode_top_batch`). Same spans as `localize` (oracle tests);
        every motion needs its motion_id. A bf16 Localizer answers with `localize`."""
        from localizer.decode import decode_top_batch
        from localizer.fast import pair_probs, text_side

        if len(texts) != len(motions):
            raise ValueError("localize_pairs: one text per motion")
        if not motions:
            return []
        if self.bf16:  # the fast path is float32 (its in-place products do not mix dtypes): the plain one
            return self.localize(list(texts), motions, top_m=top_m, nms_iou=nms_iou, max_span_s=max_span_s)
        bank = bank if bank is not None else self.motion_bank()
        uniq: dict[str, int] = {}
        text_idx = [uniq.setdefault(t.strip(), len(uniq)) for t in texts]
        tokens = self.texts_tokens(list(uniq))
        ts = text_side(self.model, tokens, device=self.device)
        slots = bank.slots(motions)
        tidx = torch.tensor(text_idx, dtype=torch.long, device=self.device)
        n = len(motions)
        ps = torch.zeros((n, self.n_snippets))  # every pair's distributions, 0 past its motion's end
        pe = torch.zeros((n, self.n_snippets))
        for a in range(0, n, batch_size):
            probs, _ = pair_probs(self.model, bank, slots[a: a + batch_size], ts, tidx[a: a + batch_size])
            t = probs.p_start.shape[1]
            ps[a: a + batch_size, :t] = probs.p_start.float().cpu()
            pe[a: a + batch_size, :t] = probs.p_end.float().cpu()
        lengths = [em.n_snippets for em in motions]
        max_lens = self._max_lens(lengths, [em.duration_s for em in motions], max_span_s)
        if top_m == 1:  # as `localize`: decode_best's float32 product, ties to the smallest flat index
            lim = None if all(m is None for m in max_lens) else torch.tensor(
                [self.n_snippets + 1 if m is None else m for m in max_lens], dtype=torch.long)
            dec = decode_best(ps, pe, lim)
            cands = [[(int(i), int(j), float(p))] for i, j, p in
                     zip(dec.start_idx.tolist(), dec.end_idx.tolist(), dec.p_se.tolist())]
        else:
            cands = [[(c.start_idx, c.end_idx, c.p_se) for c in row]
                     for row in decode_top_batch(ps, pe, lengths, top_m, nms_iou, max_lens)]
        results: list[list[LocalizedSpan]] = []
        for em, t, row in zip(motions, lengths, cands):
            d = em.duration_s
            results.append([LocalizedSpan(start_s=i_s / t * d, end_s=(i_e + 1) / t * d, p_se=p, start_idx=i_s,
                                          end_idx=i_e, motion_id=em.motion_id) for i_s, i_e, p in row])
        return results

    def localize_features(self, text: str, features: Sequence[np.ndarray], fps: float | Sequence[float] = 20.0,
                          motion_ids: Sequence[int | None] | None = None, **kwargs) -> list[list[LocalizedSpan]]:
        """Convenience: encode raw feature arrays, then `localize`."""
        return self.localize(text, self.encode_motions(features, fps, motion_ids), **kwargs)
