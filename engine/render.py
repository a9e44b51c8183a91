"""Preview rendering: a stick-figure animation of canonical joints as .gif (Pillow) or .mp4 (ffmpeg).

The figure is drawn in 2D by an orthographic camera (azimuth `RenderConfig.azimuth_deg`, elevation
`elevation_deg`) that follows the pelvis sideways, over a floor grid, on an Agg canvas (no pyplot, no global backend switch).
Bones inside the highlighted span are drawn in `HIGHLIGHT_COLOR` (left limbs a lighter shade), bones
outside it in `CONTEXT_COLOR`; a progress bar under the figure marks the span (translucent) and the
current time (black cursor), and a label shows the time in seconds.

Frames are subsampled to at most `max_fps` and `max_frames` (a longer window plays at a lower rate).
.mp4 needs the PyPI package ``imageio-ffmpeg`` (its bundled ffmpeg binary); .gif needs only Pillow.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.corpus.io import atomic_writer
from engine.corpus.skeleton import JOINT_NAMES, N_JOINTS, PARENTS

log = logging.getLogger(__name__)

SUFFIXES: tuple[str, ...] = (".gif", ".mp4")
HIGHLIGHT_COLOR = "#e4572e"  # right limbs and trunk inside the highlight
HIGHLIGHT_LEFT_COLOR = "#f4a259"
CONTEXT_COLOR = "#3b6ea5"  # right limbs and trunk outside it
CONTEXT_LEFT_COLOR = "#8fb3dc"
_LEFT_JOINTS = frozenset(i for i, n in enumerate(JOINT_NAMES) if n.startswith("l_"))


class RenderError(ValueError):
    """Bad render input (shape, fps, span, file type) or a missing encoder; the message says which."""


@dataclass
class RenderConfig:
    """Look and budget of a preview. Sizes in pixels are even (libx264 needs even frame sizes)."""

    max_fps: float = 15.0
    max_frames: int = 300
    width_px: int = 320
    height_px: int = 352
    dpi: int = 80
    azimuth_deg: float = 35.0  # camera position around the vertical axis, 0 = in front (+z)
    elevation_deg: float = 12.0
    bone_width: float = 3.0
    grid_step_m: float = 0.5
    min_half_width_m: float = 1.1  # half the visible width around the pelvis, at least


@dataclass
class RenderResult:
    """What `render_clip` wrote: the file, its frame rate, and per frame its time and highlight flag."""

    path: Path
    n_frames: int
    fps: float  # of the written file
    start_s: float  # time of the first frame written
    end_s: float  # time just after the last frame written
    frame_times_s: tuple[float, ...] = field(default=())
    highlighted: tuple[bool, ...] = field(default=())


def _camera(config: RenderConfig) -> tuple[np.ndarray, np.ndarray]:
    """Screen right and up unit vectors (3,) of the orthographic camera (x left, y up, z forward)."""
    a, e = math.radians(config.azimuth_deg), math.radians(config.elevation_deg)
    toward_camera = np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    right = np.cross([0.0, 1.0, 0.0], toward_camera)
    right /= np.linalg.norm(right)
    up = np.cross(toward_camera, right)
    return right, up


def _ffmpeg_path() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RenderError("writing .mp4 needs the ffmpeg binary of the PyPI package imageio-ffmpeg "
                          "(pip install imageio-ffmpeg); or write a .gif instead") from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:
        raise RenderError(f"imageio-ffmpeg found no ffmpeg binary ({e}); write a .gif instead") from None


def _gif_writer(animation, fps: float):
    """matplotlib's PillowWriter with a fast per-frame palette (octree) instead of median cut at save."""
    from PIL import Image

    class FastPillowWriter(animation.PillowWriter):
        def grab_frame(self, **savefig_kwargs):
            canvas = self.fig.canvas
            canvas.draw()
            rgb = np.asarray(canvas.buffer_rgba())[..., :3]  # (H, W, 3) uint8
            self._frames.append(Image.fromarray(np.ascontiguousarray(rgb)).quantize(
                colors=128, method=Image.Quantize.FASTOCTREE))

    return FastPillowWriter(fps=fps)


def render_window(n_frames: int, fps: float, highlight: tuple[float, float] | None,
                  context_s: float) -> tuple[int, int]:
    """Frames ``[first, end)`` to render: the highlight plus `context_s` each side, or everything."""
    if highlight is None:
        return 0, n_frames
    h0, h1 = highlight
    first = max(0, int(math.floor((h0 - context_s) * fps + 1e-6)))
    end = min(n_frames, int(math.ceil((h1 + context_s) * fps - 1e-6)))
    return first, max(end, first + 1)


def render_clip(joints: np.ndarray, fps: float, out_path: str | os.PathLike,
                highlight: tuple[float, float] | None = None, title: str | None = None,
                context_s: float = 1.0, config: RenderConfig | None = None) -> RenderResult:
    """Animate joints (F, 22, 3) at `fps` into `out_path` (.gif or .mp4), written atomically.

    `highlight` (start_s, end_s) is drawn in the highlight colour and the animation covers it plus
    `context_s` seconds each side (clipped to the motion); without it the whole motion is drawn.
    """
    config = config or RenderConfig()
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise RenderError(f"{out}: unsupported preview type {out.suffix or '(none)'!r}; use .gif or .mp4")
    j = np.asarray(joints, dtype=np.float64)
    if j.ndim != 3 or j.shape[1:] != (N_JOINTS, 3) or j.shape[0] < 1:
        raise RenderError(f"{out}: joints have shape {tuple(j.shape)}, expected (F, {N_JOINTS}, 3)")
    if not np.isfinite(j).all():
        raise RenderError(f"{out}: joints contain NaN/inf")
    if not (fps and math.isfinite(fps) and fps > 0):
        raise RenderError(f"{out}: invalid fps {fps!r}")
    if not (math.isfinite(context_s) and context_s >= 0):
        raise RenderError(f"{out}: context_s must be >= 0, got {context_s!r}")
    duration_s = j.shape[0] / fps
    if highlight is not None:
        h0, h1 = float(highlight[0]), float(highlight[1])
        if not (math.isfinite(h0) and math.isfinite(h1)) or h1 <= h0 or h0 < 0 or h0 >= duration_s:
            raise RenderError(f"{out}: highlight {h0:.3f}-{h1:.3f}s is empty or outside the motion "
                              f"(0-{duration_s:.3f}s)")
        highlight = (h0, h1)
    ffmpeg = _ffmpeg_path() if suffix == ".mp4" else None

    first, end = render_window(j.shape[0], fps, highlight, context_s)
    step = max(1, math.ceil(fps / config.max_fps - 1e-9), math.ceil((end - first) / config.max_frames))
    frames = np.arange(first, end, step)  # (N,) source frame indices
    out_fps = fps / step
    times = frames / fps
    lit = (np.zeros(len(frames), bool) if highlight is None
           else (times >= highlight[0] - 1e-9) & (times < highlight[1] - 1e-9))

    import matplotlib
    from matplotlib import animation
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    right, up = _camera(config)
    pts = j[frames]  # (N, 22, 3)
    sx, sy = pts @ right, pts @ up  # (N, 22) screen coordinates in metres
    centre_x = sx[:, 0]  # the camera follows the pelvis sideways
    half_w = max(config.min_half_width_m, float(np.abs(sx - centre_x[:, None]).max()) + 0.25)
    y_lo, y_hi = float(sy.min()) - 0.15, float(sy.max()) + 0.15
    aspect = (config.height_px * 0.84) / config.width_px  # the stick-figure axes' height / width
    half_w = max(half_w, (y_hi - y_lo) / (2 * aspect))
    y_hi = y_lo + 2 * half_w * aspect

    fig = Figure(figsize=(config.width_px / config.dpi, config.height_px / config.dpi), dpi=config.dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.09, 1.0, 0.84))
    ax.set_axis_off()
    ax.set_ylim(y_lo, y_hi)
    # Floor grid (y = 0) around the whole trajectory, projected once.
    xz = j[first:end, 0][:, [0, 2]]
    lo = np.floor((xz.min(axis=0) - 2.0) / config.grid_step_m) * config.grid_step_m
    hi = np.ceil((xz.max(axis=0) + 2.0) / config.grid_step_m) * config.grid_step_m
    segs = []
    for x in np.arange(lo[0], hi[0] + 1e-9, config.grid_step_m):
        segs.append([[x, 0.0, lo[1]], [x, 0.0, hi[1]]])
    for z in np.arange(lo[1], hi[1] + 1e-9, config.grid_step_m):
        segs.append([[lo[0], 0.0, z], [hi[0], 0.0, z]])
    segs3 = np.asarray(segs)  # (S, 2, 3)
    ax.add_collection(LineCollection(np.stack([segs3 @ right, segs3 @ up], axis=-1), colors="#d0d0d0",
                                     linewidths=0.6, zorder=0))
    children = np.arange(1, N_JOINTS)
    parents = np.array(PARENTS[1:])
    left = np.isin(children, sorted(_LEFT_JOINTS))
    colors_on = np.where(left, HIGHLIGHT_LEFT_COLOR, HIGHLIGHT_COLOR).tolist()
    colors_off = np.where(left, CONTEXT_LEFT_COLOR, CONTEXT_COLOR).tolist()
    bone_xy = np.stack([np.stack([sx[:, parents], sy[:, parents]], axis=-1),
                        np.stack([sx[:, children], sy[:, children]], axis=-1)], axis=2)  # (N, 21, 2, 2)
    bones = LineCollection([], linewidths=config.bone_width, capstyle="round", zorder=2)
    ax.add_collection(bones)
    head = ax.plot([], [], "o", ms=7, zorder=3)[0]
    if title:
        fig.text(0.5, 0.985, title, ha="center", va="top", fontsize=8, wrap=True)
    time_text = ax.text(0.02, 0.02, "", transform=ax.transAxes, fontsize=8, family="monospace")
    bar = fig.add_axes((0.06, 0.035, 0.88, 0.03))
    bar.set_xlim(times[0], max(end / fps, times[0] + 1e-6))
    bar.set_ylim(0, 1)
    bar.set_xticks([])
    bar.set_yticks([])
    bar.set_facecolor("#eeeeee")
    if highlight is not None:
        bar.add_patch(Rectangle((highlight[0], 0), highlight[1] - highlight[0], 1, color=HIGHLIGHT_COLOR,
                                alpha=0.35, lw=0))
    cursor = bar.axvline(times[0], color="black", lw=2)

    if ffmpeg is not None:
        writer = animation.FFMpegWriter(fps=out_fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p"])
    else:
        writer = _gif_writer(animation, out_fps)
    out.parent.mkdir(parents=True, exist_ok=True)
    head_idx = JOINT_NAMES.index("head")
    try:
        with atomic_writer(out) as tmp, matplotlib.rc_context({"animation.ffmpeg_path": ffmpeg} if ffmpeg else {}):
            with writer.saving(fig, str(tmp), dpi=config.dpi):
                for k in range(len(frames)):
                    on = bool(lit[k])
                    bones.set_segments(bone_xy[k])
                    bones.set_color(colors_on if on else colors_off)
                    head.set_data([sx[k, head_idx]], [sy[k, head_idx]])
                    head.set_color(HIGHLIGHT_COLOR if on else CONTEXT_COLOR)
                    ax.set_xlim(centre_x[k] - half_w, centre_x[k] + half_w)
                    time_text.set_text(f"t = {times[k]:6.2f} s")
                    cursor.set_xdata([times[k], times[k]])
                    writer.grab_frame()
    except FileNotFoundError as e:  # ffmpeg binary vanished between the check and the run
        raise RenderError(f"{out}: cannot run ffmpeg ({e}); write a .gif instead") from e
    log.debug("%s: %d frames at %.2f fps", out, len(frames), out_fps)
    return RenderResult(path=out, n_frames=len(frames), fps=out_fps, start_s=float(times[0]),
                        end_s=float(times[-1] + 1.0 / out_fps), frame_times_s=tuple(float(t) for t in times),
                        highlighted=tuple(bool(x) for x in lit))


def render_motion(store, motion_id: int, out_path: str | os.PathLike, start_s: float | None = None,
                  end_s: float | None = None, context_s: float = 1.0,
                  config: RenderConfig | None = None) -> RenderResult:
    """Render a stored motion, highlighting ``[start_s, end_s)`` (checked like `engine.export.clip_joints`)
    with `context_s` around it; with neither time given, the whole motion without highlight."""
    from engine.export import clip_joints

    clip = clip_joints(store, motion_id, start_s, end_s)  # validates the span, names the motion
    whole = start_s is None and end_s is None
    title = clip.name if whole else f"{clip.name}  {clip.start_s:.2f}-{clip.end_s:.2f} s"
    return render_clip(store.joints(clip.motion_id), clip.fps, out_path,
                       highlight=None if whole else (clip.start_s, clip.end_s), title=title,
                       context_s=context_s, config=config)
