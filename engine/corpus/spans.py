"""Temporal spans: the one scalar IoU every layer uses (decoding's NMS, search labels and de-duplication).

The vectorised, validating forms for evaluation are in `eval.metrics` (pairwise and row-wise); they
follow the same convention: IoU = |A ∩ B| / |A ∪ B|, touching spans have IoU 0, and two zero-length
spans have IoU 0.
"""

from __future__ import annotations


def temporal_iou(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    """IoU of two intervals [a_start, a_end] and [b_start, b_end] (0 when the union has no length)."""
    inter = max(0.0, min(a_end, b_end) - max(a_start, b_start))
    union = (a_end - a_start) + (b_end - b_start) - inter
    return inter / union if union > 0 else 0.0
