"""One search request: the defaults, the limits and the validation every front end shares.

The CLI (`engine search`), the HTTP API (`/search`), run-file metadata, the Ray pool, evaluation and the
benches all build a `SearchRequest`; `Searcher.search(request)` takes nothing else. A bad field raises
`RequestError(field, problem)`: the CLI prints it as `--field`, the API as a 422 naming the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from engine.corpus.types import RequestError
from engine.scoring import DEFAULT_LAM, PAPER, ScoreWeights

MAX_QUERY_CHARS = 512
MAX_K = 10_000
MAX_LIMIT = 1_000
MAX_LAM = 100.0
MAX_TOP_M = 100
R_MODES = ("moment", "motion")
SCORES = ("fused", "paper")


def validate_query(text: str | None) -> str:
    """The query stripped of surrounding space, or a RequestError("query", ...) saying what is wrong."""
    if text is None or not str(text).strip():
        raise RequestError("query", "empty query: type what the motion should show, e.g. \"kung fu pose\"")
    if len(text) > MAX_QUERY_CHARS:
        raise RequestError("query", f"query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    return str(text).strip()


def _int_in(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(name, f"must be an integer (got {value!r})")
    if value <= 0 and lo >= 1:
        raise RequestError(name, f"must be positive (got {value})")
    if not lo <= value <= hi:
        raise RequestError(name, f"must be in {lo}..{hi} (got {value})")
    return value


def _float_in(name: str, value: Any, lo: float, hi: float | None) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RequestError(name, f"must be a number (got {value!r})") from None
    if not math.isfinite(x):
        raise RequestError(name, f"must be a finite number (got {value})")
    if x < lo or (hi is not None and x > hi):
        raise RequestError(name, f"must be in {lo:g}..{hi:g} (got {value})" if hi is not None
                           else f"must be at least {lo:g} (got {value})")
    return x


@dataclass(frozen=True)
class SearchRequest:
    """What to find and how. Score = p_se ** gamma * exp(lam * r + mu * s); see `engine.scoring`.

    - `k`: motions retrieved by chunk similarity before localization (capped at the corpus size);
    - `limit`: moments returned; `top_m`: candidate moments per motion (temporal NMS at `nms_iou`);
    - `r_mode`: "moment" (the best chunk covering the moment; the default) or "motion" (the paper: the
      motion's best chunk);
    - `score`: "fused" (the default: it beats the paper's on val, docs/results/scoring.md) ranks by
      p_se ** gamma * exp(lam * r + mu * s), s being the span's own similarity (its best-IoU window of the
      index's window bank), with the weights fitted on a validation split (`score.json`, engine/scoring.py;
      the paper's weights when none fit the models); `lam`, `gamma`, `mu` given override the fitted ones.
      "paper" ranks by p_se * exp(lam * r) (lam default 5; gamma and mu are not used);
    - `dedup_iou`, `per_motion`: a moment that overlaps a better one of the same motion by IoU >= dedup_iou,
      or contains it or lies inside it, is dropped; at most `per_motion` moments per motion (0: no cap);
    - `prune`: exact top-n pruning (the result equals the exhaustive one); `use_cache`: reuse encoded
      motions across requests;
    - filters: `sources`, motion length (`min_motion_s`, `max_motion_s`), moment length
      (`min_moment_s`, `max_moment_s`).
    """

    text: str
    k: int = 200
    lam: float | None = None  # None: 5 for the paper's score, the fitted value for the fused one
    limit: int = 10
    top_m: int = 3
    nms_iou: float = 0.5
    r_mode: str = "moment"
    score: str = "fused"
    gamma: float | None = None
    mu: float | None = None
    dedup_iou: float = 0.3
    per_motion: int = 2
    prune: bool = True
    batch_size: int = 32
    sources: tuple[str, ...] = ()
    min_motion_s: float | None = None
    max_motion_s: float | None = None
    min_moment_s: float | None = None
    max_moment_s: float | None = None
    use_cache: bool = True
    # Free-form tag carried into run files (e.g. the query id of a batch); not used by the search.
    tags: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "text", validate_query(self.text))
        _int_in("k", self.k, 1, MAX_K)
        if self.lam is None and self.score == "paper":
            set_(self, "lam", DEFAULT_LAM)
        if self.lam is not None:
            set_(self, "lam", _float_in("lam", self.lam, 0.0, MAX_LAM))
        _int_in("limit", self.limit, 1, MAX_LIMIT)
        _int_in("top_m", self.top_m, 1, MAX_TOP_M)
        set_(self, "nms_iou", _float_in("nms_iou", self.nms_iou, 0.0, 1.0))
        _int_in("batch_size", self.batch_size, 1, 4096)
        if self.score not in SCORES:
            raise RequestError("score", f"must be one of {', '.join(SCORES)} (got {self.score!r})")
        if self.gamma is not None:
            set_(self, "gamma", _float_in("gamma", self.gamma, 0.0, 10.0))
        if self.mu is not None:
            set_(self, "mu", _float_in("mu", self.mu, 0.0, MAX_LAM))
        set_(self, "dedup_iou", _float_in("dedup_iou", self.dedup_iou, 0.0, 1.0))
        if self.per_motion != 0:
            _int_in("per_motion", self.per_motion, 1, MAX_TOP_M)
        if self.r_mode not in R_MODES:
            raise RequestError("r_mode", f"must be one of {', '.join(R_MODES)} (got {self.r_mode!r})")
        if isinstance(self.sources, str):
            set_(self, "sources", (self.sources,))
        set_(self, "sources", tuple(str(s) for s in (self.sources or ())))
        for lo_name, hi_name in (("min_motion_s", "max_motion_s"), ("min_moment_s", "max_moment_s")):
            lo, hi = getattr(self, lo_name), getattr(self, hi_name)
            if lo is not None:
                set_(self, lo_name, lo := _float_in(lo_name, lo, 0.0, None))
            if hi is not None:
                set_(self, hi_name, hi := _float_in(hi_name, hi, 0.0, None))
            if lo is not None and hi is not None and lo > hi:
                raise RequestError(lo_name, f"{lo:g} is above {hi_name} {hi:g}")

    # ------------------------------------------------------------------ helpers
    def weights(self, fitted: ScoreWeights | None = None) -> ScoreWeights:
        """The score's weights: the paper's (lam, gamma 1, mu 0), or for "fused" the `fitted` ones (the
        paper's when None) with this request's lam / gamma / mu where given."""
        if self.score == "paper":
            return ScoreWeights(lam=float(self.lam), gamma=1.0, mu=0.0)
        base = fitted or PAPER
        return ScoreWeights(lam=base.lam if self.lam is None else self.lam,
                            gamma=base.gamma if self.gamma is None else self.gamma,
                            mu=base.mu if self.mu is None else self.mu)

    @property
    def filters_motions(self) -> bool:
        return bool(self.sources) or self.min_motion_s is not None or self.max_motion_s is not None

    @property
    def filters_moments(self) -> bool:
        return self.min_moment_s is not None or self.max_moment_s is not None

    def keeps_moment(self, start_s: float, end_s: float) -> bool:
        d = end_s - start_s
        return ((self.min_moment_s is None or d >= self.min_moment_s)
                and (self.max_moment_s is None or d <= self.max_moment_s))

    def keeps_motion(self, source: str, duration_s: float) -> bool:
        return ((not self.sources or source in self.sources)
                and (self.min_motion_s is None or duration_s >= self.min_motion_s)
                and (self.max_motion_s is None or duration_s <= self.max_motion_s))

    def with_text(self, text: str) -> SearchRequest:
        """The same request for another query (a batch shares everything but the text)."""
        return replace(self, text=text)

    def settings(self) -> dict[str, Any]:
        """Everything but the text and tags: what a run file records of the request."""
        d = asdict(self)
        for key in ("text", "tags"):
            d.pop(key)
        d["sources"] = list(self.sources)
        return d

    @classmethod
    def field_names(cls) -> Sequence[str]:
        return [f.name for f in fields(cls)]


MIN_LIKE_SPAN_S = 0.5  # the shortest example span "more like this" embeds
LIKE_SPAN_TOLERANCE_S = 1e-6  # a span may end this much past the motion's end (frame-boundary rounding)


@dataclass(frozen=True)
class LikeRequest:
    """"More like this": the moments most similar to a span of a motion (query by example; `engine.like`).

    - `motion_id`, `start_s`, `end_s`: the example span (at least MIN_LIKE_SPAN_S long; `check_span` checks
      it against the motion once the corpus is known);
    - `k`: motions retrieved by chunk similarity to the span's embedding (capped at the corpus size);
    - `refine`: of these, the best `refine` (by r) are represented by their 10 s chunks and their short
      windows, the others by their chunks alone (the short windows are read from the index's window bank;
      an index without one embeds them, ~1 s per motion on one CPU thread the first time, then cached);
    - `limit`, `dedup_iou`, `per_motion`: as in `SearchRequest`;
    - `include_self`: also return moments of the example's own motion (never the example itself: a
      moment of that motion overlapping it by IoU >= `self_iou` is always left out).
    """

    motion_id: int
    start_s: float
    end_s: float
    k: int = 200
    limit: int = 10
    refine: int = 30
    dedup_iou: float = 0.3
    per_motion: int = 2
    include_self: bool = False
    self_iou: float | None = 0.5  # None keeps the example itself too (a library-only check that it finds itself)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.motion_id, bool) or not isinstance(self.motion_id, int) or self.motion_id < 0:
            raise RequestError("motion_id", f"must be a motion id, a non-negative integer (got {self.motion_id!r})")
        set_(self, "start_s", _float_in("start_s", self.start_s, 0.0, None))
        set_(self, "end_s", _float_in("end_s", self.end_s, 0.0, None))
        if self.start_s >= self.end_s:
            raise RequestError("start_s", f"{self.start_s:g} s is not before end_s {self.end_s:g} s")
        if self.end_s - self.start_s < MIN_LIKE_SPAN_S:
            raise RequestError("end_s", f"the span {self.start_s:g}-{self.end_s:g} s is "
                                        f"{self.end_s - self.start_s:.3g} s long; the shortest is {MIN_LIKE_SPAN_S:g} s")
        _int_in("k", self.k, 1, MAX_K)
        _int_in("limit", self.limit, 1, MAX_LIMIT)
        if self.refine != 0:
            _int_in("refine", self.refine, 1, MAX_K)
        set_(self, "dedup_iou", _float_in("dedup_iou", self.dedup_iou, 0.0, 1.0))
        if self.per_motion != 0:
            _int_in("per_motion", self.per_motion, 1, MAX_TOP_M)
        if not isinstance(self.include_self, bool):
            raise RequestError("include_self", f"must be true or false (got {self.include_self!r})")
        if self.self_iou is not None:
            set_(self, "self_iou", _float_in("self_iou", self.self_iou, 0.0, 1.0))

    def check_span(self, motions: dict) -> None:
        """RequestError unless the motion is in `motions` (id -> MotionInfo) and the span lies inside it."""
        info = motions.get(self.motion_id)
        if info is None:
            raise RequestError("motion_id", f"no motion with id {self.motion_id} in this index's corpus "
                                            f"({len(motions)} motions)")
        if self.end_s > info.duration_s + LIKE_SPAN_TOLERANCE_S:
            raise RequestError("end_s", f"{self.end_s:g} s is past the end of motion {self.motion_id} "
                                        f"{info.name!r} ({info.duration_s:g} s long)")

    # What `SearchResult.to_dict` (the JSON of the CLI and the API) reads of a request.
    @property
    def text(self) -> str:
        return f"like motion {self.motion_id} {self.start_s:.2f}-{self.end_s:.2f} s"

    @property
    def lam(self) -> float:
        return 0.0

    r_mode = "moment"  # r: the similarity of the moment's own window to the example
    score = "span"  # moments are ranked by that similarity alone (no localizer: it needs a text)

    def settings(self) -> dict[str, Any]:
        return asdict(self)
