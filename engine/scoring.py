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
    """Weights of the fused score and what they were fitted for: one variant of `score.json`, which holds one
    per (localizer, retrieval model, window bank or chunks only)."""

    weights: ScoreWeights
    localizer_sha256: str
    retrieval_fingerprint: str
    window_bank: bool  # fitted with the index's window bank (s from 2-10 s windows) or its chunks only
    fit: dict[str, Any] = field(default_factory=dict)  # split, queries, metric, grid, the table of the fit

    def to_dict(self) -> dict[str, Any]:
        return {"weights": asdict(self.weights), "localizer_sha256": self.localizer_sha256,
                "retrieval_fingerprint": self.retrieval_fingerprint, "window_bank": self.window_bank,
                "fit": self.fit}

    def same_models(self, other: FittedScore) -> bool:
        return (self.localizer_sha256, self.retrieval_fingerprint, self.window_bank) == \
            (other.localizer_sha256, other.retrieval_fingerprint, other.window_bank)

    def write(self, path: str | Path) -> None:
        """Add this variant to `path` (replacing one fitted for the same models and bank setting)."""
        path = Path(path)
        old = read_fitted(path) if path.is_file() else []
        variants = [v for v in old if not v.same_models(self)] + [self]
        atomic_write_text(path, json.dumps({"kind": "fused-score", "variants": [v.to_dict() for v in variants]},
                                           indent=2, sort_keys=True) + "\n")


def read_fitted(path: str | Path) -> list[FittedScore]:
    """Every variant of a `score.json`."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict) or d.get("kind") != "fused-score" or not isinstance(d.get("variants"), list):
            raise ValueError("not a fused-score file")
        return [FittedScore(weights=ScoreWeights(**v["weights"]), localizer_sha256=str(v["localizer_sha256"]),
                            retrieval_fingerprint=str(v["retrieval_fingerprint"]), window_bank=bool(v["window_bank"]),
                            fit=dict(v.get("fit") or {})) for v in d["variants"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(str(path), f"unreadable fused-score weights ({e}); re-fit them with "
                                    "scripts/fit_score.py") from e


def score_file_for(localizer_path: str | Path) -> Path:
    """Where the fitted weights of a localizer live: `score.json` in its run directory (beside the file)."""
    p = Path(localizer_path)
    return (p if p.is_dir() else p.parent) / SCORE_FILE


def load_fitted(path: str | Path | None, localizer_sha256: str, retrieval_fingerprint: str,
                has_bank: bool) -> tuple[ScoreWeights, str]:
    """(the fused score's weights, where they come from): the variant of `path` fitted for this localizer and
    retrieval model, with a window bank if the index has one (else chunks only); failing that the other bank
    setting's, with a warning; with none for these models (or no file), the paper's weights."""
    if path is None or not Path(path).is_file():
        return PAPER, "paper (no fitted weights)"
    mine = [v for v in read_fitted(path)
            if v.localizer_sha256 == localizer_sha256 and v.retrieval_fingerprint == retrieval_fingerprint]
    if not mine:
        log.warning("%s: fitted for another localizer or retrieval model; the fused score uses the paper's "
                    "weights (re-fit with scripts/fit_score.py)", path)
        return PAPER, "paper (fitted weights are for other models)"
    exact = [v for v in mine if v.window_bank == has_bank]
    if exact:
        return exact[0].weights, f"{path} ({'window bank' if has_bank else 'chunks only'})"
    v = mine[0]
    log.warning("%s: fitted %s, but this index has %s; using those weights (re-fit with scripts/fit_score.py, "
                "or build the index %s)", path, "with a window bank" if v.window_bank else "on chunks only",
                "one" if has_bank else "none", "without --window-bank" if has_bank else "with --window-bank")
    return v.weights, f"{path} ({'window bank' if v.window_bank else 'chunks only'}, other bank setting)"
