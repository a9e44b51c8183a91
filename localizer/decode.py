"""Span decoding: exact joint argmax over i_s <= i_e, top-m true pairs with temporal NMS, snippets <-> seconds.

The paper's lost Eq. 13 (mlp-notes.md): ``(i_s, i_e) = argmax_{i_s <= i_e} P_s(i_s) P_e(i_e)``, the located
score ``p_se`` is that maximum. Times: ``t_s = i_s / T * D``, ``t_e = (i_e + 1) / T * D`` with T the motion's
own number of snippets and D the duration the snippets cover. Top-m moments are true (start, end) pairs of
the upper-triangular joint matrix, greedily suppressed by temporal IoU (the authors' "top-5" picked starts
and ends independently, which gives inconsistent pairs).

torch is imported only by the functions that take tensors (`joint_matrix`, `decode_best`: training and
evaluation); `decode_top` and `decode_best_np` are numpy, so the query path imports this module without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.corpus.spans import temporal_iou  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import torch


@dataclass
class SpanCandidate:
    """One decoded span in snippet indices (inclusive end) with its joint probability."""

    start_idx: int
    end_idx: int
    p_se: float


@dataclass
class DecodedBatch:
    """Best span per row of a batch."""

    start_idx: torch.Tensor  # (B,) long
    end_idx: torch.Tensor  # (B,) long
    p_se: torch.Tensor  # (B,) float


def max_len_snippets(max_span_s: float | None, n_snippets: int, duration_s: float) -> int | None:
    """Longest allowed span in snippets for a limit in seconds (None = no limit): the most snippets whose
    span does not exceed the limit, but at least one."""
    if max_span_s is None or duration_s <= 0:
        return None
    return max(1, int(math.floor(max_span_s / duration_s * n_snippets + 1e-9)))


def joint_matrix(p_start: torch.Tensor, p_end: torch.Tensor, max_len: int | torch.Tensor | None = None) -> torch.Tensor:
    """(..., T, T) matrix P_s(i) P_e(j) kept where i <= j (and j - i < max_len), else 0.

    `max_len`: one limit in snippets, or one per row of a (B, T) batch (a (B,) tensor); None = no limit.
    """
    import torch

    t = p_start.shape[-1]
    outer = p_start.unsqueeze(-1) * p_end.unsqueeze(-2)  # (..., T, T)
    i = torch.arange(t, device=p_start.device)
    diff = i.unsqueeze(0) - i.unsqueeze(1)  # (T, T): j - i
    keep = diff >= 0
    if max_len is not None:
        if isinstance(max_len, torch.Tensor) and max_len.dim() > 0:
            lim = max_len.to(device=p_start.device).reshape(max_len.shape + (1, 1))  # (B, 1, 1)
            keep = keep & (diff < lim)
        else:
            keep = keep & (diff < int(max_len))
    return outer * keep


def joint_matrix_np(p_start: np.ndarray, p_end: np.ndarray, max_len: int | None = None) -> np.ndarray:
    """`joint_matrix` of one motion's (T,) numpy distributions: the same products in the same dtype."""
    t = p_start.shape[-1]
    i = np.arange(t)
    diff = i[None, :] - i[:, None]  # (T, T): j - i
    keep = diff >= 0
    if max_len is not None:
        keep &= diff < int(max_len)
    return np.outer(p_start, p_end) * keep


def decode_best_np(p_start: np.ndarray, p_end: np.ndarray, max_len: int | None = None) -> tuple[int, int, float]:
    """`decode_best` of one motion in numpy: (start_idx, end_idx, p_se) of the float32 joint argmax, ties to
    the smallest flat index (what `decode_best` returns for that row)."""
    ps = np.asarray(p_start, dtype=np.float32).reshape(-1)
    pe = np.asarray(p_end, dtype=np.float32).reshape(-1)
    t = ps.shape[0]
    flat = joint_matrix_np(ps, pe, max_len).reshape(-1)
    a = int(np.argmax(flat))
    return a // t, a % t, float(flat[a])


def decode_best(p_start: torch.Tensor, p_end: torch.Tensor, max_len: int | torch.Tensor | None = None) -> DecodedBatch:
    """Exact argmax of P_s(i) P_e(j) over i <= j (and j - i < max_len) for each row of (B, T) distributions
    (0 at padding). `max_len`: an int or one per row ((B,) tensor). Ties go to the smallest flat index
    (earliest start, then earliest end).
    """
    if p_start.dim() == 1:
        p_start, p_end = p_start.unsqueeze(0), p_end.unsqueeze(0)
    b, t = p_start.shape
    flat = joint_matrix(p_start.float(), p_end.float(), max_len).reshape(b, t * t)  # (B, T*T)
    p_se, arg = flat.max(dim=1)
    return DecodedBatch(start_idx=arg // t, end_idx=arg % t, p_se=p_se)


@dataclass
class MaxSpan:
    """A learned maximum span length: the `quantile` of the training spans, in seconds and as a fraction of
    the motion's duration; `unit` says which one decoding applies ("seconds" or "fraction").

    Spans are measured on the ground-truth snippet spans the model is trained on, ``(i_e - i_s + 1) / T * D``
    seconds, so the limit in snippets (`max_len`) admits at least that `quantile` of the training spans.
    """

    quantile: float
    unit: str
    seconds: float
    fraction: float
    n_spans: int

    def __post_init__(self) -> None:
        if self.unit not in ("seconds", "fraction"):
            raise ValueError(f"MaxSpan.unit must be 'seconds' or 'fraction', got {self.unit!r}")

    def max_len(self, n_snippets: int, duration_s: float) -> int:
        """Longest allowed span in snippets for a motion of T = `n_snippets` snippets over `duration_s`."""
        if self.unit == "fraction":
            return max(1, int(math.floor(self.fraction * n_snippets + 1e-9)))
        lim = max_len_snippets(self.seconds, n_snippets, duration_s)
        return n_snippets if lim is None else lim

    def to_dict(self) -> dict:
        return {"quantile": self.quantile, "unit": self.unit, "seconds": self.seconds, "fraction": self.fraction,
                "n_spans": self.n_spans}

    @classmethod
    def from_dict(cls, d: dict | None) -> MaxSpan | None:
        if not d:
            return None
        return cls(quantile=float(d["quantile"]), unit=str(d["unit"]), seconds=float(d["seconds"]),
                   fraction=float(d["fraction"]), n_spans=int(d["n_spans"]))


def fit_max_span(spans: list[tuple[int, int, int, float]], quantile: float = 0.95, unit: str = "auto") -> MaxSpan:
    """MaxSpan from training spans (start_idx, end_idx, n_snippets, duration_s).

    `unit` "auto" picks the unit whose limit is tighter on the training motions (the smaller mean allowed
    length in snippets), both admitting the same `quantile` of the training spans.
    """
    if not spans:
        raise ValueError("fit_max_span: no training spans")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"fit_max_span: quantile must lie in (0, 1], got {quantile}")
    if unit not in ("auto", "seconds", "fraction"):
        raise ValueError(f"fit_max_span: unit must be 'auto', 'seconds' or 'fraction', got {unit!r}")
    a = np.asarray(spans, dtype=np.float64)
    n_snip = a[:, 2]
    length = a[:, 1] - a[:, 0] + 1.0
    sec = float(np.quantile(length / n_snip * a[:, 3], quantile, method="higher"))
    frac = float(np.quantile(length / n_snip, quantile, method="higher"))
    if unit == "auto":
        lim = {u: np.mean([MaxSpan(quantile, u, sec, frac, len(a)).max_len(int(t), float(d))
                           for t, d in zip(n_snip, a[:, 3])]) for u in ("seconds", "fraction")}
        unit = "seconds" if lim["seconds"] <= lim["fraction"] else "fraction"
    return MaxSpan(quantile=quantile, unit=unit, seconds=sec, fraction=frac, n_spans=len(a))


def nms(candidates: list[SpanCandidate], iou_threshold: float, top_m: int | None = None) -> list[SpanCandidate]:
    """Greedy temporal NMS over candidates sorted by p_se (descending); spans as [start_idx, end_idx + 1)."""
    kept: list[SpanCandidate] = []
    for c in sorted(candidates, key=lambda c: -c.p_se):
        if all(temporal_iou(c.start_idx, c.end_idx + 1, k.start_idx, k.end_idx + 1) <= iou_threshold for k in kept):
            kept.append(c)
            if top_m is not None and len(kept) >= top_m:
                break
    return kept


def decode_top(p_start: np.ndarray | torch.Tensor, p_end: np.ndarray | torch.Tensor, top_m: int = 1,
               nms_iou: float = 0.5, max_len: int | None = None) -> list[SpanCandidate]:
    """Top-m (start, end) pairs of one motion's valid distributions (T,), greedy NMS at `nms_iou`.

    Exact: candidates are visited in descending joint probability (only a growing prefix is sorted), so the
    result equals NMS over all T (T + 1) / 2 pairs. Pairs with zero probability are never returned.
    """
    ps = np.asarray(p_start, dtype=np.float64).reshape(-1)  # numpy or a CPU tensor
    pe = np.asarray(p_end, dtype=np.float64).reshape(-1)
    t = ps.shape[0]
    if t == 0 or top_m < 1:
        return []
    flat = joint_matrix_np(ps, pe, max_len).reshape(-1)  # (T*T,)
    n_pos = int((flat > 0).sum())
    if top_m == 1 or n_pos == 0:
        if n_pos == 0:
            return []
        a = int(np.argmax(flat))
        return [SpanCandidate(a // t, a % t, float(flat[a]))]
    k = min(n_pos, max(64, 16 * top_m))
    while True:
        if k < flat.size:  # the first k of the (descending p, ascending index) order, ties included exactly
            v = -np.partition(-flat, k - 1)[k - 1]  # the k-th largest value
            above = np.flatnonzero(flat > v)
            part = np.concatenate([above, np.flatnonzero(flat == v)[: k - len(above)]])
        else:
            part = np.arange(flat.size)
        order = part[np.lexsort((part, -flat[part]))]  # descending p, ties by flat index
        cands = [SpanCandidate(int(a // t), int(a % t), float(flat[a])) for a in order if flat[a] > 0]
        kept = nms(cands, nms_iou, top_m)
        if len(kept) >= top_m or k >= n_pos:
            return kept
        k = min(n_pos, 4 * k)


def index_to_seconds(start_idx: int, end_idx: int, n_snippets: int, duration_s: float) -> tuple[float, float]:
    """(t_s, t_e) = (i_s / T * D, (i_e + 1) / T * D)."""
    return start_idx / n_snippets * duration_s, (end_idx + 1) / n_snippets * duration_s


def seconds_to_span(start_s: float, end_s: float, n_snippets: int, duration_s: float) -> tuple[int, int]:
    """Ground-truth snippet span: the (i_s, i_e), i_s <= i_e, whose [i_s/T*D, (i_e+1)/T*D] has the best IoU
    with [start_s, end_s] (times clipped to the motion). Exact; ties go to the earliest start, then end.
    """
    t, d = n_snippets, float(duration_s)
    if t < 1 or d <= 0:
        raise ValueError(f"seconds_to_span: need n_snippets >= 1 and duration > 0, got {t}, {d}")
    s = min(max(start_s, 0.0), d)
    e = min(max(end_s, 0.0), d)
    if e <= s:  # degenerate: the snippet that contains the point
        i = min(t - 1, max(0, int(s / d * t)))
        return i, i
    xs, xe = s / d * t, e / d * t
    # The optimum has its start edge at floor/ceil of xs and its end edge at floor/ceil of xe; widen by one
    # on each side so float rounding can never exclude it.
    s_c = range(max(0, math.floor(xs) - 1), min(t - 1, math.ceil(xs) + 1) + 1)
    e_c = range(max(1, math.floor(xe) - 1), min(t, math.ceil(xe) + 1) + 1)  # exclusive end edges
    best, best_iou = (0, t - 1), -1.0
    for i in s_c:
        for j in e_c:
            if j <= i:
                continue
            iou = temporal_iou(i, j, xs, xe)
            if iou > best_iou + 1e-12:
                best, best_iou = (i, j - 1), iou
    return best


def decode_top_batch(p_start: np.ndarray | torch.Tensor, p_end: np.ndarray | torch.Tensor,
                     lengths: Sequence[int] | np.ndarray, top_m: int = 1, nms_iou: float = 0.5,
                     max_len: Sequence[int | None] | None = None, grids: Sequence[int] = (8, 16, 32)
                     ) -> list[list[SpanCandidate]]:
    """`decode_top` of every row of (B, T) padded distributions at once (row b valid over its first
    lengths[b] snippets, its limit max_len[b]): the same spans and p_se as `decode_top` row by row.

    Exact by a bound instead of a sort of all T (T + 1) / 2 pairs: with the R best starts and the R best
    ends of a row, every pair outside that R x R grid scores at most
    ``bound = max((R+1)-th start * best end, best start * (R+1)-th end)``. The grid's pairs above the bound are
    therefore the head of the full descending order, and greedy NMS over them (each step: the best pair
    still alive, ties to the earliest start, then end) keeps what NMS over all pairs keeps, as long as it
    keeps top_m of them. Rows where it keeps fewer try the next grid size of `grids`, then `decode_top`.
    """
    import torch

    ps = torch.as_tensor(p_start).to(torch.float64)
    pe = torch.as_tensor(p_end).to(torch.float64)
    if ps.dim() != 2 or ps.shape != pe.shape:
        raise ValueError(f"decode_top_batch: need two (B, T) arrays, got {tuple(ps.shape)} and {tuple(pe.shape)}")
    b, t = ps.shape
    lens = torch.as_tensor(np.asarray(lengths, dtype=np.int64)).reshape(b)
    lims = list(max_len) if max_len is not None else [None] * b
    out: list[list[SpanCandidate] | None] = [[] for _ in range(b)] if top_m < 1 or t == 0 else [None] * b
    if b == 0 or top_m < 1 or t == 0:
        return out  # type: ignore[return-value]
    valid = torch.arange(t).unsqueeze(0) < lens.unsqueeze(1)  # (B, T)
    zero = torch.zeros((), dtype=torch.float64)
    ps, pe = torch.where(valid, ps, zero), torch.where(valid, pe, zero)
    lim = torch.tensor([t + 1 if m is None else int(m) for m in lims], dtype=torch.long)
    todo = torch.arange(b)
    for r in grids:
        if not len(todo):
            break
        r = min(int(r), t)
        got, ok_rows = _decode_grid(ps[todo], pe[todo], lim[todo], r, top_m, nms_iou, exhaustive=r == t)
        for row, cands, ok in zip(todo.tolist(), got, ok_rows):
            if ok:
                out[row] = cands
        todo = todo[~torch.as_tensor(ok_rows, dtype=torch.bool)]
    for row in todo.tolist():  # still undecided: flat distributions or a large top_m
        n = int(lens[row])
        out[row] = decode_top(ps[row, :n], pe[row, :n], top_m, nms_iou, lims[row])
    return out  # type: ignore[return-value]


def window_max(x: torch.Tensor, lim: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T): max of x[b, i : i + lim[b]] (positions past T count as 0; lim >= 1), by doubling:
    level k holds the max over 2^k positions, and a window is the max of two overlapping levels."""
    import torch

    b, t = x.shape
    levels = [x]
    width = 1
    while 2 * width <= min(int(lim.max()), t):
        prev = levels[-1]
        nxt = prev.clone()
        nxt[:, : t - width] = torch.maximum(prev[:, : t - width], prev[:, width:])
        levels.append(nxt)
        width *= 2
    n = lim.clamp(max=t)
    k = torch.floor(torch.log2(n.to(torch.float64))).to(torch.long).clamp(max=len(levels) - 1)  # (B,)
    k = torch.minimum(k, torch.tensor(len(levels) - 1))
    while True:  # float log2 may round up at powers of two
        too_big = (2 ** k) > n
        if not bool(too_big.any()):
            break
        k = k - too_big.long()
    stack = torch.cat([torch.stack(levels), torch.zeros((len(levels), b, 1), dtype=x.dtype)], dim=2)  # (K, B, T+1)
    lvl = stack[k, torch.arange(b)]  # (B, T+1): each row at its level
    i = torch.arange(t).unsqueeze(0)
    j = (i + (n - 2 ** k).unsqueeze(1)).clamp(max=t)  # the second, overlapping half (t: the zero pad)
    return torch.maximum(lvl[:, :t], torch.gather(lvl, 1, j))


def _decode_grid(ps: torch.Tensor, pe: torch.Tensor, lim: torch.Tensor, r: int, top_m: int, nms_iou: float,
                 exhaustive: bool) -> tuple[list[list[SpanCandidate]], list[bool]]:
    """Greedy NMS over each row's R x R grid of best starts x best ends (see `decode_top_batch`); per row
    its kept spans and whether they are certain (top_m kept, or the grid held every pair)."""
    import torch

    b, t = ps.shape
    # A start's best pair: p_s(i) * max p_e over its allowed ends [i, i + lim); an end's: p_e(j) * max p_s
    # over [j - lim + 1, j]. The grid takes the R starts and the R ends with the best of these.
    key_s = ps * window_max(pe, lim)
    key_e = pe * window_max(ps.flip(1), lim).flip(1)
    k = r + 1 if r < t else r  # one more: the best start / end left outside the grid
    ks_v, si = torch.topk(key_s, k, dim=1)  # (B, R (+1)), descending
    ke_v, ei = torch.topk(key_e, k, dim=1)
    if exhaustive:
        bound = torch.full((b, 1), -1.0, dtype=torch.float64)
    else:  # a pair outside the grid has its start or its end outside, so it scores at most this
        bound = torch.maximum(ks_v[:, r], ke_v[:, r]).unsqueeze(1)
    si, ei = si[:, :r], ei[:, :r]
    sv, ev = torch.gather(ps, 1, si), torch.gather(pe, 1, ei)
    si, order = torch.sort(si, dim=1)  # ascending snippet index: the grid is in flat-index order
    sv = torch.gather(sv, 1, order)
    ei, order = torch.sort(ei, dim=1)
    ev = torch.gather(ev, 1, order)
    i_s = si.unsqueeze(2).expand(-1, -1, r).reshape(b, r * r)
    i_e = ei.unsqueeze(1).expand(-1, r, -1).reshape(b, r * r)
    p = (sv.unsqueeze(2) * ev.unsqueeze(1)).reshape(b, r * r)  # exact products of the float32 inputs
    ok = (i_e >= i_s) & (i_e - i_s < lim.unsqueeze(1)) & (p > 0) & (p > bound)
    p = torch.where(ok, p, torch.full((), -1.0, dtype=p.dtype))
    s, e = i_s.to(torch.float64), i_e.to(torch.float64) + 1.0  # [start, end) as decode_top's NMS measures
    rows = torch.arange(b)
    picks = []
    for _ in range(top_m):
        best, arg = p.max(dim=1)  # the first maximum: the earliest start, then end, among ties
        has = best > 0
        if not bool(has.any()):
            break
        picks.append((arg, best, has))
        ks, ke = s[rows, arg].unsqueeze(1), e[rows, arg].unsqueeze(1)
        inter = (torch.minimum(e, ke) - torch.maximum(s, ks)).clamp_(min=0.0)
        union = (e - s) + (ke - ks) - inter
        iou = torch.where(union > 0, inter / union, torch.zeros((), dtype=inter.dtype))
        p.masked_fill_((iou > nms_iou) & has.unsqueeze(1), -1.0)
        p[rows, arg] = -1.0
    cands: list[list[SpanCandidate]] = [[] for _ in range(b)]
    if picks:
        arg, best, has = (torch.stack(x, dim=1) for x in zip(*picks))  # (B, picks)
        starts = torch.gather(si, 1, arg // r).tolist()
        ends = torch.gather(ei, 1, arg % r).tolist()
        for row, (ss, ee, vv, hh) in enumerate(zip(starts, ends, best.tolist(), has.tolist())):
            cands[row] = [SpanCandidate(i, j, v) for i, j, v, h in zip(ss, ee, vv, hh) if h]
    return cands, [exhaustive or len(c) >= top_m for c in cands]
