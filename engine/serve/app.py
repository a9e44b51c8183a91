"""The HTTP API and the web page of `engine serve`: one Searcher, loaded once, shared by every request.

    GET /search?q=&k=&lam=&limit=              ranked moments (the same list as `Searcher.search`)
    POST /search {motion_id, start_s, end_s}   "more like this": moments similar to a span (`engine.like`)
    GET /motions/{motion_id}[?joints=true]     metadata + annotations (+ joints for the preview, <= 20 fps)
    GET /motions/{motion_id}/clip?start_s=&end_s=&format=bvh|npy|json|glb[&skeleton=source]   a clip download
    GET /health                                index version and counts
    GET /                                      the web page (engine/serve/static/)

The Searcher's caches are plain dicts, so searches hold one lock; reads of the corpus store (previews,
clips) hold another, so a preview never waits behind a search (the store opens one SQLAlchemy session
per call and its Arrow files are read-only memory maps). Endpoints are sync functions, run by
Starlette's thread pool. Bad input is a 4xx with a message
({"detail": "..."}); anything unexpected a JSON 500 that names the error.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import math
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from engine.corpus.types import MotionInfo, RequestError
from engine.request import MAX_K, MAX_LAM, MAX_LIMIT, MAX_QUERY_CHARS, SearchRequest

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULTS = SearchRequest("defaults")
MAX_URL_CHARS = 8192  # 414 beyond (a query is at most 512 characters)
MAX_BODY_BYTES = 1 << 20  # 413 beyond
TOKEN_COOKIE = "engine_token"
HTTP_PARAM = {"query": "q", "r_mode": "r"}  # SearchRequest field -> query parameter, in error messages
PREVIEW_FPS = 20.0
JOINT_DECIMALS = 3  # millimetres


# ---------------------------------------------------------------------------------------------- schema
class MomentOut(BaseModel):
    rank: int
    motion_id: int
    name: str
    source: str
    path: str
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
    score: str  # which score ranked the moments: fused | paper
    limit: int
    localized: int
    cached: bool  # answered from the server's cache of recent results
    moments: list[MomentOut]
    timings_s: dict[str, float]


class LikeIn(BaseModel):
    """"More like this": the example span, and how many moments to return (`engine.request.LikeRequest`)."""

    motion_id: int
    start_s: float
    end_s: float
    k: int = DEFAULTS.k
    limit: int = DEFAULTS.limit
    per_motion: int = DEFAULTS.per_motion
    include_self: bool = False


class LikeSpanOut(BaseModel):
    motion_id: int
    start_s: float
    end_s: float
    include_self: bool


class LikeOut(SearchOut):
    like: LikeSpanOut  # the example span


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
    localizer: str  # the localizer run searches use
    localizer_matches_index: bool  # False: not the one the index was built with (its motion cache is unused)


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
        self._batcher = None
        self.batch_options: dict[str, Any] = {}
        self.lock = threading.RLock()  # searches (the Searcher's caches)
        self.store_lock = threading.Lock()  # corpus-store reads outside a search

    def get(self):
        if self._searcher is not None:  # built: no lock (a preview must not wait for a running search)
            return self._searcher
        with self.lock:
            if self._searcher is None:
                self._searcher = self._factory()
            return self._searcher

    def batcher(self):
        """The micro-batcher over the Searcher (made on first use; it searches under `lock`)."""
        if self._batcher is None:
            s = self.get()
            with self.lock:
                if self._batcher is None:
                    from engine.serve.batcher import MicroBatcher

                    self._batcher = MicroBatcher(s, lock=self.lock, **self.batch_options)
        return self._batcher


def _first_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body")]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def _safe_filename(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "clip"
    return name[:150]


# ---------------------------------------------------------------------------------------------- app
def create_app(searcher=None, searcher_factory: Callable[[], Any] | None = None,
               index_dir: str | Path | None = None, localizer: str | Path | None = None,
               device: str = "cpu", token: str | None = None, batch_options: dict[str, Any] | None = None) -> FastAPI:
    """The FastAPI app over one Searcher: given, made by `searcher_factory`, or opened from `index_dir`.

    Given a factory or paths, the Searcher is loaded when the app starts (lifespan), once.
    With `token`, every endpoint (the page and static files included) needs it: an `Authorization: Bearer`
    header, or `?token=` once (the page then keeps it in an HttpOnly, same-site cookie).
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
    holder.batch_options = dict(batch_options or {})  # MicroBatcher(window_s=, max_batch=, cache_size=)

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

    # ------------------------------------------------------------------ limits and authentication
    @app.middleware("http")
    async def guard(request: Request, call_next):
        target = len(request.url.path) + len(request.url.query)
        if target > MAX_URL_CHARS:
            return JSONResponse(status_code=414, content={"detail": f"request URL is {target} characters long; "
                                                                    f"the limit is {MAX_URL_CHARS}"})
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return JSONResponse(status_code=413, content={"detail": f"request body over {MAX_BODY_BYTES} bytes"})
        from_query = False
        if token is not None:
            given = _bearer(request.headers.get("authorization")) or request.cookies.get(TOKEN_COOKIE)
            if given is None and "token" in request.query_params:
                given, from_query = request.query_params["token"], True
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse(status_code=401, headers={"WWW-Authenticate": "Bearer"},
                                    content={"detail": "missing or wrong token: send `Authorization: Bearer TOKEN` "
                                                       "(or open the page once with ?token=TOKEN)"})
        response = await call_next(request)
        if from_query:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    # ------------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _first_error(exc)})

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # The detail (paths, SQL, stack) goes to the server log only; the client gets an id to quote.
        rid = uuid.uuid4().hex[:12]
        log.exception("request %s: unexpected error on %s %s", rid, request.method, request.url.path)
        return JSONResponse(status_code=500, headers={"X-Request-ID": rid},
                            content={"detail": f"internal error (request id {rid}; the server log has the details)"})

    def _motion_row(s, motion_id: int) -> MotionInfo:
        row = s.motions.get(motion_id)
        if row is None:
            raise HTTPException(404, f"no motion with id {motion_id} in this index's corpus "
                                     f"({len(s.motions)} motions)")
        return row

    # ------------------------------------------------------------------ API
    @app.get("/search", response_model=SearchOut, responses=ERRORS, tags=["search"])
    def search(
        q: str = Query(..., description=f'What to find, e.g. "kung fu pose" (1-{MAX_QUERY_CHARS} characters).'),
        k: int = Query(DEFAULTS.k, description=f"Motions retrieved before localization (1-{MAX_K}; capped at "
                       "the corpus size)."),
        lam: float | None = Query(None, description=f"Score = p_se * exp(lam * r) (0-{MAX_LAM:g}; default 5, "
                                  "with score=fused the fitted value)."),
        limit: int = Query(DEFAULTS.limit, description=f"Moments to return (1-{MAX_LIMIT})."),
        r: Literal["moment", "motion"] = Query(DEFAULTS.r_mode, description="r in the score: moment (the best "
                                               "chunk covering the moment) or motion (the paper: the motion's best chunk)."),
        score: Literal["fused", "paper"] = Query(DEFAULTS.score, description="fused: p_se ** gamma * exp(lam * r "
                                                 "+ mu * s) (fitted on val) | paper: p_se * exp(lam * r)."),
        per_motion: int = Query(DEFAULTS.per_motion, description="At most this many moments of one motion "
                                "(0: no cap)."),
    ) -> SearchOut:
        """Ranked moments for a sentence (retrieve top-k motions, localize, score, rank)."""
        try:
            req = SearchRequest(q, k=k, lam=lam, limit=limit, r_mode=r, score=score, per_motion=per_motion)
        except RequestError as e:
            raise HTTPException(422, f"{HTTP_PARAM.get(e.where, e.where)}: {e.problem}") from None
        res = holder.batcher().search(req)
        return SearchOut(**res.to_dict())

    @app.post("/search", response_model=LikeOut, responses=ERRORS, tags=["search"])
    def search_like(body: LikeIn) -> LikeOut:
        """More like this: the moments of other motions (with include_self, of its own motion too, never the
        span itself) most similar to a span, by the retrieval model's embedding of it. No localizer: it is
        conditioned on a text, and an example has none (score = r = the window's similarity, p_se = 1)."""
        from engine.like import search_like as like
        from engine.request import LikeRequest

        s = holder.get()
        try:
            req = LikeRequest(body.motion_id, body.start_s, body.end_s, k=body.k, limit=body.limit,
                              per_motion=body.per_motion, include_self=body.include_self)
            if req.motion_id not in s.motions:
                _motion_row(s, req.motion_id)  # 404
            with holder.lock:  # the Searcher's store and the window cache are shared
                res = like(s, req)
        except RequestError as e:
            raise HTTPException(422, f"{e.where}: {e.problem}") from None
        return LikeOut(**res.to_dict())

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
        out = MotionOut(**dataclasses.asdict(row), annotations=anns)
        if arr is not None:
            out.joints = _preview_joints(arr, row.fps)
        return out

    @app.get("/motions/{motion_id}/clip", responses={**ERRORS, 200: {
        "content": {"application/octet-stream": {}}, "description": "The clip as a file (attachment)"}},
        response_class=Response, tags=["motions"])
    def clip(
        motion_id: int,
        start_s: float = Query(0.0, allow_inf_nan=False, description="Clip start, seconds."),
        end_s: float | None = Query(None, allow_inf_nan=False, description="Clip end, seconds (default: the end)."),
        format: str = Query("bvh", description="bvh | npy | json | glb"),
        skeleton: str = Query("canonical", description="canonical (SMPL 22 joints) | source (the original BVH "
                              "file's skeleton and frames; BVH imports only, format bvh)"),
        fps: float | None = Query(None, gt=0, le=1000, allow_inf_nan=False,
                                  description="skeleton=source: resample to this rate"),
        in_place: bool = Query(False, description="skeleton=source: remove the horizontal root translation"),
        from_zero: bool = Query(False, description="skeleton=source: start at the origin"),
    ) -> Response:
        """A span of a motion as a BVH, NPY ((F, 22, 3) joints), JSON or GLB (glTF 2.0) file download."""
        from engine.clipfile import clip_bytes
        from engine.export import ClipError

        if skeleton not in ("canonical", "source"):
            raise HTTPException(422, f"unknown skeleton {skeleton!r}; choose canonical or source")
        if skeleton == "source" and format.lower().lstrip(".") != "bvh":
            raise HTTPException(422, "skeleton=source exports BVH only (format=bvh)")
        if skeleton == "canonical" and (fps is not None or in_place or from_zero):
            raise HTTPException(422, "fps, in_place and from_zero apply to skeleton=source only")
        s = holder.get()
        with holder.store_lock:
            _motion_row(s, motion_id)
            try:
                if skeleton == "source":
                    from engine.export_source import source_clip_bytes

                    exp, _ = source_clip_bytes(s.store, motion_id, start_s, end_s, fps=fps, in_place=in_place,
                                               from_zero=from_zero)
                else:
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
                         chunks=int(man.n_chunks), corpus_motions=len(s.motions),
                         localizer=str(getattr(s, "localizer_path", "")),
                         localizer_matches_index=bool(getattr(s, "localizer_matches_index", False)))

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
