"""The ranking score of a moment, and the fitted weights of the fused score (`score.json`).

A candidate moment of a motion has three signals: `p_se` (the localizer's joint start/end probability), `r`
(a retrieval similarity of 10 s chunks: the motion's best, or the best covering the moment, per `r_mode`) and
`s` (its own similarity: the window-bank window with the best IoU to the span, indexer/bank.py). The score is

    score = p_se ** gamma * exp(lam * r + mu * s)        (log score = gamma log p_se + lam r + mu s)

The paper's `p_se * exp(lam * r)` is gamma = 1, mu = 0 (`SearchRequest(score="paper")`). The fused score
(`score="fused"`) uses weights fitted on a validation split by `scripts/fit_score.py`, stored in `score.json`
next to the localizer with the fingerprints of the localizer and retrieval model they were fitted for.

Exact pruning: with gamma, lam, mu >= 0 and p_se <= 1, a moment of a motion scores at most
`exp(lam * r_motion + mu * s_max)`, where s_max is the motion's best bank window: `ScoreWeights.bound`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.corpus.io import atomic_write_text
from engine.corpus.types import ModelError

log = logging.getLogger(__name__)

SCORE_FILE = "score.json"
DEFAULT_LAM = 5.0  # the paper's lambda


@dataclass(frozen=True)
class ScoreWeights:
    """score = p_se ** gamma * exp(lam * r + mu * s); every weight >= 0 (the pruning bound needs it)."""

    lam: float = DEFAULT_LAM
    gamma: float = 1.0
    mu: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lam", "gamma", "mu"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"score weight {name} must be a finite number >= 0 (got {v!r})")

    @property
    def uses_span(self) -> bool:
        """Whether the span's own bank similarity s enters the score."""
        return self.mu > 0

    def score(self, p_se: float, r: float, s: float | None = None) -> float:
        return float(p_se) ** self.gamma * math.exp(self.lam * r + (self.mu * s if self.mu and s is not None else 0.0))

    def bound(self, r_motion: float, s_max: float | None = None) -> float:
        """The highest score any moment of a motion can reach: p_se <= 1, r <= r_motion, s <= s_max."""
        return math.exp(self.lam * r_motion + (self.mu * s_max if self.mu and s_max is not None else 0.0))


PAPER = ScoreWeights()


@dataclass
class FittedScore:
    """Weights of the fused score and what they were fitted for (the content of `score.json`)."""

    weights: ScoreWeights
    localizer_sha256: str
    retrieval_fingerprint: str
    window_bank: bool  # fitted with the index's window bank (s from 2-10 s windows) or its chunks only
    fit: dict[str, Any] = field(default_factory=dict)  # split, queries, metric, grid, the table of the fit

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "fused-score", "weights": asdict(self.weights), "localizer_sha256": self.localizer_sha256,
                "retrieval_fingerprint": self.retrieval_fingerprint, "window_bank": self.window_bank,
                "fit": self.fit}

    def write(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> FittedScore:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict) or d.get("kind") != "fused-score":
                raise ValueError("not a fused-score file")
            return cls(weights=ScoreWeights(**d["weights"]), localizer_sha256=str(d["localizer_sha256"]),
                       retrieval_fingerprint=str(d["retrieval_fingerprint"]), window_bank=bool(d["window_bank"]),
                       fit=dict(d.get("fit") or {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(str(path), f"unreadable fused-score weights ({e}); re-fit them with "
                                        "scripts/fit_score.py") from e


def score_file_for(localizer_path: str | Path) -> Path:
    """Where the fitted weights of a localizer live: `score.json` in its run directory (beside the file)."""
    p = Path(localizer_path)
    return (p if p.is_dir() else p.parent) / SCORE_FILE


def load_fitted(path: str | Path | None, localizer_sha256: str, retrieval_fingerprint: str,
                has_bank: bool) -> tuple[ScoreWeights, str]:
    """(the fused score's weights, where they come from). Fitted weights are used only for the localizer and
    retrieval model they were fitted with; otherwise (or with no file) the paper's weights, with a warning
    when a file was there."""
    if path is None or not Path(path).is_file():
        return PAPER, "paper (no fitted weights)"
    fitted = FittedScore.read(path)
    if fitted.localizer_sha256 != localizer_sha256 or fitted.retrieval_fingerprint != retrieval_fingerprint:
        log.warning("%s: fitted for another localizer or retrieval model; the fused score uses the paper's "
                    "weights (re-fit with scripts/fit_score.py)", path)
        return PAPER, "paper (fitted weights are for other models)"
    if fitted.window_bank and not has_bank and fitted.weights.uses_span:
        log.warning("%s: fitted with a window bank, but this index has none (build it with --window-bank); "
                    "the span similarity comes from the 10 s chunks", path)
    return fitted.weights, str(path)
