"""The HTTP API and the web page of `engine serve`: one Searcher, loaded once, shared by every request.

    GET /search?q=&k=&lam=&limit=              ranked moments (the same list as `Searcher.search`)
    GET /motions/{motion_id}[?joints=true]     metadata + annotations (+ joints for the preview, <= 20 fps)
    GET /motions/{motion_id}/clip?start_s=&end_s=&format=bvh|npy|json|glb   a clip as a file download
    GET /health                                index version and counts
    GET /                                      the web page (engine/serve/static/)

The Searcher's caches are plain dicts, so searches hold one lock; reads of the corpus store (previews,
clips) hold another, so a preview never waits behind a search (the store opens one SQLAlchemy session
per call and its Arrow files are read-only memory maps). Endpoints are sync functions, run by
Starlette's thread pool. Bad input is a 4xx with a message
({"detail": "..."}); anything unexpected a JSON 500 that names the error.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_K = 10_000
MAX_LIMIT = 1_000
MAX_LAM = 100.0
PREVIEW_FPS = 20.0
JOINT_DECIMALS = 3  # millimetres


# ---------------------------------------------------------------------------------------------- schema
class MomentOut(BaseModel):
    rank: int
    motion_id: int
    name: str
    source: str
    start_s: float
    end_s: float
    score: float
    p_se: float
    r: float
    label: str | None
    duration_s: float


class SearchOut(BaseModel):
    query: str
    k: int
    lam: float
    r: str  # which r the score used: moment | motion
    limit: int
    localized: int
    moments: list[MomentOut]
    timings_s: dict[str, float]


class AnnotationOut(BaseModel):
    text: str
    start_s: float
    end_s: float
    seg_id: str


class JointsOut(BaseModel):
    fps: float
    n_frames: int
    n_joints: int
    parents: list[int]
    # Row-major (n_frames, n_joints, 3) in metres, y-up, rounded to millimetres, flattened.
    data: list[float]


class MotionOut(BaseModel):
    motion_id: int
    name: str
    source: str
    fps: float
    n_frames: int
    duration_s: float
    split: str | None
    path: str
    annotations: list[AnnotationOut]
    joints: JointsOut | None = None


class HealthOut(BaseModel):
    status: str
    index_version: str
    motions: int
    chunks: int
    corpus_motions: int


class ErrorOut(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such motion"},
    422: {"model": ErrorOut, "description": "Invalid parameters (the message says which and why)"},
}


# ---------------------------------------------------------------------------------------------- state
class SearcherHolder:
    """The one Searcher of the app, built on first use (or at startup), and the lock that guards it."""

    def __init__(self, factory: Callable[[], Any]):
        self._factory = factory
        self._searcher = None
        self.lock = threading.RLock()  # searches (the Searcher's caches)
        self.store_lock = threading.Lock()  # corpus-store reads outside a search

    def get(self):
        if self._searcher is not None:  # built: no lock (a preview must not wait for a running search)
            return self._searcher
        with self.lock:
            if self._searcher is None:
                self._searcher = self._factory()
            return self._searcher


def _first_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body")]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


def _safe_filename(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "clip"
    return name[:150]


def _finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise HTTPException(422, f"{name}: must be a finite number (got {value})")


# ---------------------------------------------------------------------------------------------- app
def create_app(searcher=None, searcher_factory: Callable[[], Any] | None = None,
               index_dir: str | Path | None = None, localizer: str | Path | None = None,
               device: str = "cpu") -> FastAPI:
    """The FastAPI app over one Searcher: given, made by `searcher_factory`, or opened from `index_dir`.

    Given a factory or paths, the Searcher is loaded when the app starts (lifespan), once.
    """
    if searcher is not None:
        def factory():
            return searcher
    elif searcher_factory is not None:
        factory = searcher_factory
    elif index_dir is not None:
        def factory():
            from engine.search import Searcher

            return Searcher(index_dir, localizer=localizer, device=device)
    else:
        raise ValueError("create_app: give a searcher, a searcher_factory or an index_dir")
    holder = SearcherHolder(factory)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        holder.get()
        yield

    app = FastAPI(title="Motion search engine",
                  description="Type a sentence, get the moments of a motion-capture library that show it.",
                  version="0.1.0", lifespan=lifespan)
    app.state.holder = holder
    app.add_middleware(GZipMiddleware, minimum_size=2048)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _first_error(exc)})

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}: {exc}"})

    def _motion_row(s, motion_id: int) -> dict[str, Any]:
        row = s.meta.get(motion_id)
        if row is None:
            raise HTTPException(404, f"no motion with id {motion_id} in this index's corpus "
                                     f"({len(s.meta)} motions)")
        return row

    # ------------------------------------------------------------------ API
    @app.get("/search", response_model=SearchOut, responses=ERRORS, tags=["search"])
    def search(
        q: str = Query(..., min_length=1, max_length=512, description='What to find, e.g. "kung fu pose".'),
        k: int = Query(200, ge=1, le=MAX_K, description="Motions retrieved before localization."),
        lam: float = Query(5.0, ge=0.0, le=MAX_LAM, allow_inf_nan=False, description="Score = p_se * exp(lam * r)."),
        limit: int = Query(10, ge=1, le=MAX_LIMIT, description="Moments to return."),
        r: Literal["moment", "motion"] = Query("moment", description="r in the score: moment (the best chunk "
                                               "covering the moment) or motion (the paper: the motion's best chunk)."),
    ) -> SearchOut:
        """Ranked moments for a sentence (retrieve top-k motions, localize, score, rank)."""
        from engine.search import validate_query

        try:
            text = validate_query(q)
        except ValueError as e:
            raise HTTPException(422, f"q: {e}") from None
        s = holder.get()
        with holder.lock:
            k_eff = min(k, max(1, len(s.meta)))
            res = s.search(text, k=k_eff, lam=lam, limit=limit, r_mode=r)
            moments = [MomentOut(rank=i, motion_id=m.motion_id, name=m.name, source=m.source, start_s=m.start_s,
                                 end_s=m.end_s, score=m.score, p_se=m.p_se, r=m.r, label=m.label,
                                 duration_s=float(s.meta[m.motion_id]["duration_s"]))
                       for i, m in enumerate(res.moments, 1)]
        return SearchOut(query=res.query, k=res.k, lam=res.lam, r=r, limit=limit, localized=res.localized,
                         moments=moments, timings_s={kk: round(v, 6) for kk, v in res.timings_s.items()})

    @app.get("/motions/{motion_id}", response_model=MotionOut, responses=ERRORS, tags=["motions"])
    def motion(
        motion_id: int,
        joints: bool = Query(False, description="Also return the joints (<= 20 fps) for a preview."),
    ) -> MotionOut:
        """A motion's metadata and annotations (and, with joints=true, its skeleton for the preview)."""
        s = holder.get()
        with holder.store_lock:
            row = _motion_row(s, motion_id)
            anns = [AnnotationOut(text=a.text, start_s=a.start_s, end_s=a.end_s, seg_id=a.seg_id)
                    for a in s.store.annotations(motion_id)]
            arr = s.store.joints(motion_id) if joints else None
        out = MotionOut(motion_id=motion_id, name=row["name"], source=row["source"], fps=float(row["fps"]),
                        n_frames=int(row["n_frames"]), duration_s=float(row["duration_s"]), split=row.get("split"),
                        path=row.get("path") or "", annotations=anns)
        if arr is not None:
            out.joints = _preview_joints(arr, float(row["fps"]))
        return out

    @app.get("/motions/{motion_id}/clip", responses={**ERRORS, 200: {
        "content": {"application/octet-stream": {}}, "description": "The clip as a file (attachment)"}},
        response_class=Response, tags=["motions"])
    def clip(
        motion_id: int,
        start_s: float = Query(0.0, allow_inf_nan=False, description="Clip start, seconds."),
        end_s: float | None = Query(None, allow_inf_nan=False, description="Clip end, seconds (default: the end)."),
        format: str = Query("bvh", description="bvh | npy | json | glb"),
    ) -> Response:
        """A span of a motion as a BVH, NPY ((F, 22, 3) joints), JSON or GLB (glTF 2.0) file download."""
        from engine.export import ClipError, clip_bytes

        s = holder.get()
        with holder.store_lock:
            _motion_row(s, motion_id)
            try:
                exp = clip_bytes(s.store, motion_id, start_s, end_s, format)
            except ClipError as e:
                raise HTTPException(422, str(e)) from None
        fname = _safe_filename(exp.filename)
        return Response(content=exp.data, media_type=exp.media_type,
                        headers={"Content-Disposition": f'attachment; filename="{fname}"'})

    @app.get("/health", response_model=HealthOut, tags=["meta"])
    def health() -> HealthOut:
        """Liveness and what is loaded."""
        s = holder.get()
        man = s.index.manifest
        return HealthOut(status="ok", index_version=str(man.version), motions=int(man.n_motions),
                         chunks=int(man.n_chunks), corpus_motions=len(s.meta))

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _preview_joints(arr, fps: float) -> JointsOut:
    """(F, 22, 3) -> every n-th frame so that the rate is <= 20 fps, rounded to mm, flattened."""
    import numpy as np

    from engine.corpus.skeleton import PARENTS

    step = max(1, int(math.ceil(fps / PREVIEW_FPS - 1e-9)))
    sub = np.asarray(arr, dtype=np.float64)[::step]  # (F', J, 3)
    sub = np.round(sub, JOINT_DECIMALS)
    return JointsOut(fps=fps / step, n_frames=int(sub.shape[0]), n_joints=int(sub.shape[1]),
                     parents=list(PARENTS[: sub.shape[1]]), data=sub.reshape(-1).tolist())
