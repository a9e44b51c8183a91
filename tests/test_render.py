"""Preview rendering (engine/render.py): GIF frames, highlight colouring, frame budget, mp4, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageSequence
from typer.testing import CliRunner

from engine.corpus import synth
from engine.corpus.store import CorpusStore
from engine.render import (
    CONTEXT_COLOR,
    HIGHLIGHT_COLOR,
    RenderConfig,
    RenderError,
    render_clip,
    render_motion,
)

runner = CliRunner()


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])


def _count(frame: Image.Image, hex_color: str, tol: int = 12) -> int:
    """Pixels within `tol` of a colour in every channel."""
    a = np.asarray(frame.convert("RGB")).astype(int)
    return int((np.abs(a - _rgb(hex_color)).max(axis=-1) <= tol).sum())


@pytest.fixture(scope="module")
def motion():
    m = next(iter(synth.generate("tiny", seed=1)))
    return m.joints, m.fps


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("render") / "corpus"
    with CorpusStore.open(d) as s:
        s.add_motions(synth.generate(synth.SynthConfig(n_motions=2, min_duration_s=10.0, max_duration_s=12.0),
                                     seed=2))
    return d


def test_gif_frames_and_highlight_colour(motion, tmp_path):
    joints, fps = motion
    out = tmp_path / "sub" / "clip.gif"
    res = render_clip(joints, fps, out, highlight=(3.0, 4.5), title="a person waves", context_s=1.0)
    assert res.path == out and out.is_file() and list(out.parent.iterdir()) == [out]  # no temp file left
    assert res.fps <= 15.0 and res.fps == pytest.approx(10.0)  # 20 fps source, every 2nd frame
    assert res.start_s == pytest.approx(2.0) and res.end_s == pytest.approx(5.5)
    times = np.asarray(res.frame_times_s)
    np.testing.assert_array_equal(res.highlighted, (times >= 3.0 - 1e-9) & (times < 4.5 - 1e-9))
    assert sum(res.highlighted) == 15 and res.n_frames == 35

    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames == res.n_frames > 1
        frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)]
    arrays = [np.asarray(f) for f in frames]
    assert all(not np.array_equal(a, b) for a, b in zip(arrays, arrays[1:]))  # every frame changes
    for k, (frame, lit) in enumerate(zip(frames, res.highlighted)):
        hot, cold = _count(frame, HIGHLIGHT_COLOR), _count(frame, CONTEXT_COLOR)
        if lit:
            assert hot > 100 and cold == 0, (k, hot, cold)
        else:
            assert hot == 0 and cold > 100, (k, hot, cold)


def test_frame_budget_and_whole_motion(motion, tmp_path):
    joints, fps = motion
    cfg = RenderConfig(max_frames=12, width_px=160, height_px=176, dpi=40)
    res = render_clip(joints, fps, tmp_path / "all.gif", config=cfg)
    assert 2 <= res.n_frames <= 12 and not any(res.highlighted)
    step = math.ceil(joints.shape[0] / 12)
    assert res.fps == pytest.approx(fps / step) and res.frame_times_s[1] == pytest.approx(step / fps)
    with Image.open(tmp_path / "all.gif") as im:
        assert im.n_frames == res.n_frames and im.size == (160, 176)
    # The window is clipped at the motion's ends.
    res = render_clip(joints, fps, tmp_path / "edge.gif", highlight=(0.0, 0.5), context_s=2.0, config=cfg)
    assert res.start_s == 0.0 and res.highlighted[0]


@pytest.mark.parametrize("kwargs,message", [
    ({"out_path": "x.png"}, "use .gif or .mp4"),
    ({"highlight": (5.0, 4.0)}, "empty or outside"),
    ({"highlight": (1e4, 1e4 + 1)}, "outside the motion"),
    ({"fps": 0.0}, "invalid fps"),
    ({"context_s": -1.0}, "context_s"),
    ({"joints": np.zeros((10, 21, 3))}, "expected (F, 22, 3)"),
])
def test_bad_input(motion, tmp_path, kwargs, message):
    joints, fps = motion
    args = {"joints": joints, "fps": fps, "out_path": "x.gif", **kwargs}
    args["out_path"] = tmp_path / args["out_path"]
    with pytest.raises(RenderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render_clip(**args)
    assert not list(tmp_path.iterdir())


def test_mp4(motion, tmp_path):
    imageio_ffmpeg = pytest.importorskip(
        "imageio_ffmpeg", reason="imageio-ffmpeg is not installed (pip install imageio-ffmpeg); .mp4 needs it")
    joints, fps = motion
    out = tmp_path / "clip.mp4"
    res = render_clip(joints, fps, out, highlight=(2.0, 3.0), context_s=0.5)
    data = out.read_bytes()
    assert data[4:8] == b"ftyp"
    n_frames, secs = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert n_frames == res.n_frames == 20 and secs == pytest.approx(2.0, abs=0.15)


def test_render_motion_and_cli(corpus, tmp_path):
    from engine.cli import app

    with CorpusStore.open(corpus, create=False) as store:
        mid = store.motion_ids()[0]
        name = store.get_motion(mid, arrays=False).name
        res = render_motion(store, mid, tmp_path / "a.gif", 1.0, 2.0, context_s=0.5,
                            config=RenderConfig(width_px=160, height_px=176, dpi=40))
        assert res.n_frames == 20 and sum(res.highlighted) == 10

    out = tmp_path / "cli.gif"
    r = runner.invoke(app, ["render", name, "--start", "2", "--end", "3", "--context-s", "0.5", "--out", str(out),
                            "--corpus", str(corpus), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["path"] == str(out) and info["n_frames"] == 20 and info["highlighted_frames"] == 10
    with Image.open(out) as im:
        assert im.n_frames == 20

    for args, needle in [([str(mid), "--start", "3", "--end", "1"], name),
                         (["synth/none", "--end", "1"], "synth/none"),
                         ([str(mid), "--end", "1", "--out", str(tmp_path / "x.png")], ".png")]:
        if "--out" not in args:
            args = args + ["--out", str(tmp_path / "bad.gif")]
        r = runner.invoke(app, ["render", *args, "--corpus", str(corpus)])
        assert r.exit_code != 0 and needle in r.stderr and "error:" in r.stderr, (args, r.stderr)
    assert not (tmp_path / "bad.gif").exists()
