"""Types shared by every part of the engine. Times are in seconds; fps is stored per motion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: importing the types must not import numpy (`engine --help`)
    import numpy as np


@dataclass
class Annotation:
    """A labelled moment inside a motion."""

    text: str
    start_s: float
    end_s: float
    seg_id: str = ""
    # Free-form label fields (e.g. BABEL act_cat, Bandai content/style, synthetic action name).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Motion:
    """One untrimmed motion on the canonical skeleton.

    `joints` is (n_frames, 22, 3) in metres, y-up, at `fps`. `features` is the HumanML3D 263-dim
    representation, (n_frames - 1, 263), computed from `joints` when not given.
    `name` is the motion's unique key in a corpus (e.g. "bandai/dataset-2_walk_normal_001").
    """

    name: str
    source: str
    fps: float
    joints: np.ndarray | None = None
    features: np.ndarray | None = None
    annotations: list[Annotation] = field(default_factory=list)
    split: str | None = None
    path: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    motion_id: int | None = None  # assigned by the store

    @property
    def n_frames(self) -> int:
        if self.joints is not None:
            return int(self.joints.shape[0])
        if self.features is not None:
            return int(self.features.shape[0]) + 1
        raise ValueError(f"motion {self.name!r} has neither joints nor features")

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps


@dataclass
class Chunk:
    """A fixed-length window of a motion, the unit the retrieval index stores."""

    chunk_id: int
    motion_id: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class MotionInfo:
    """A motion's light metadata (no arrays): what every front end, index and evaluation reads of a motion."""

    motion_id: int
    name: str
    source: str
    fps: float
    n_frames: int
    duration_s: float
    split: str | None = None
    path: str = ""


@dataclass(frozen=True)
class Moment:
    """A search result: a span of one motion with its scores, and what every front end prints of it.

    `rank` is 1-based in the result list (0 before ranking); `name`, `path` and `duration_s` are the
    motion's; `label` is the corpus annotation that best overlaps the span, when there is one."""

    motion_id: int
    start_s: float
    end_s: float
    score: float
    p_se: float
    r: float
    rank: int = 0
    source: str = ""
    name: str = ""
    path: str = ""
    duration_s: float = 0.0
    label: str | None = None
    s: float | None = None  # the span's own window similarity, when the score used it (engine/scoring.py)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the CLI (`--json`) and the HTTP API share."""
        d = {"rank": self.rank, "motion_id": self.motion_id, "name": self.name, "source": self.source,
             "path": self.path, "start_s": self.start_s, "end_s": self.end_s,
             "score": self.score, "p_se": self.p_se, "r": self.r, "label": self.label,
             "duration_s": self.duration_s}
        if self.s is not None:
            d["s"] = self.s
        return d


class EngineError(ValueError):
    """A problem a user can act on: the message names where (file, record, flag) and what is wrong.

    The CLI prints any EngineError as one `error:` line on stderr and exits with 2. Subclasses say which
    layer it came from, so that a FAISS or model error is not called a corpus error."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem

    def __reduce__(self):  # picklable across processes (Ray workers, multiprocessing)
        return (type(self), (self.where, self.problem))


class CorpusError(EngineError):
    """Bad input data: a motion file, an annotation, the corpus store."""


class IndexFileError(EngineError):
    """An index directory, manifest or index file that is missing, corrupted or inconsistent."""


class ModelError(EngineError):
    """A model checkpoint or configuration that cannot be loaded or does not fit."""


class RequestError(EngineError):
    """A search or command request with a bad parameter (names the parameter)."""
