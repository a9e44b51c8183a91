"""Importer: a folder of `.npy` motions plus one annotations JSON in the unified (TMR-like) schema.

    {
      "<keyid>": {
        "path": "relative/path/to/motion(.npy optional)",
        "duration": 12.4,                     # seconds (checked against the array, warning only)
        "fps": 20,                            # optional, default 20 (or the importer's `fps`)
        "split": "train",                     # optional; or splits/<split>.txt files (TMR layout)
        "annotations": [
          {"seg_id": "0001_seg_0", "text": "walk forward", "start": 0.5, "end": 3.25, ...}
        ]
      }, ...
    }

Paths are relative to `motions_dir` (default: the JSON's folder). Arrays are joints (T, 22, 3) or
263-dim features (T, 263), told apart by shape (see `engine.corpus.importers`). Extra fields of an
annotation (e.g. "babel_id") go to `Annotation.extra`. The motion is named `<source>/<keyid>`.
This reads the annotation files TMR and the MLP code write (`babel.json`, `humanml3d.json`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.corpus.importers import clip_span, load_motion_array, npy_candidates, report_bad
from engine.corpus.skeleton import FPS
from engine.corpus.types import Annotation, CorpusError, Motion

log = logging.getLogger(__name__)

_ANN_KEYS = ("seg_id", "text", "start", "end")


def read_json(path: Path) -> Any:
    """Parse a JSON file; CorpusError naming the file when missing or unreadable."""
    if not path.is_file():
        raise CorpusError(str(path), "file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(str(path), f"unreadable JSON: {e}") from e


def read_split_files(splits_dir: Path) -> dict[str, str]:
    """keyid -> split from `<splits_dir>/<split>.txt`, one keyid a line; a keyid in two files is an error."""
    out: dict[str, str] = {}
    for f in sorted(splits_dir.glob("*.txt")):
        split = f.stem
        for line_no, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            key = line.strip()
            if not key:
                continue
            if key in out and out[key] != split:
                raise CorpusError(f"{f}:{line_no}", f"keyid {key!r} is also in split {out[key]!r}")
            out[key] = split
    return out


def iter_array_motions(
    annotations_json: Path | str,
    motions_dir: Path | str | None = None,
    source: str = "arrays",
    fps: float | None = None,
    layout: str = "auto",
    splits_dir: Path | str | None = None,
    keep_unlabelled: bool = True,
    skip_bad: bool = False,
    errors: list[str] | None = None,
) -> Iterator[Motion]:
    """Motions of an annotations JSON in the unified schema (see the module docstring), in key order.

    `fps` is the default for entries without "fps" (default 20). `splits_dir` holds `<split>.txt`
    keyid lists; by default `<json folder>/splits` is used when it exists, and an entry's own "split"
    field wins. Entries with no annotations are imported unless `keep_unlabelled` is False.
    An unreadable JSON always raises; a bad entry (missing file, bad shape, NaN frames, label outside
    the motion, ...) raises CorpusError naming the JSON, the keyid and the problem, or with `skip_bad`
    is reported into `errors` and skipped.
    """
    ann_path = Path(annotations_json)
    data = read_json(ann_path)
    if not isinstance(data, dict):
        raise CorpusError(str(ann_path), f"expected an object keyid -> entry, got {type(data).__name__}")
    mdir = Path(motions_dir) if motions_dir is not None else ann_path.parent
    if splits_dir is None and (ann_path.parent / "splits").is_dir():
        splits_dir = ann_path.parent / "splits"
    split_of = read_split_files(Path(splits_dir)) if splits_dir is not None else {}
    default_fps = float(fps) if fps is not None else FPS
    for key in sorted(data, key=str):
        where = f"{ann_path}: entry {key!r}"
        try:
            motion = _entry_motion(
                key, data[key], where, mdir, source, default_fps, layout, split_of.get(str(key))
            )
        except CorpusError as e:
            if not skip_bad:
                raise
            report_bad(e, errors)
            continue
        if not motion.annotations and not keep_unlabelled:
            log.info("%s: no annotations, not imported", where)
            continue
        yield motion


def _entry_motion(
    key: str,
    entry: Any,
    where: str,
    mdir: Path,
    source: str,
    default_fps: float,
    layout: str,
    split: str | None,
) -> Motion:
    if not isinstance(entry, dict):
        raise CorpusError(where, f"entry is a {type(entry).__name__}, expected an object")
    rel = entry.get("path")
    if not isinstance(rel, str) or not rel.strip():
        raise CorpusError(where, 'missing "path"')
    fps = entry.get("fps", default_fps)
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise CorpusError(where, f"invalid fps {fps!r}") from None
    if not (fps > 0 and fps < 10_000):
        raise CorpusError(where, f"invalid fps {fps!r}")
    candidates = [mdir / c for c in npy_candidates(rel)]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise CorpusError(where, f"motion file not found: {candidates[0]}")
    try:
        arr = load_motion_array(file, layout=layout)
    except CorpusError as e:
        raise CorpusError(f"{where} ({e.where})", e.problem) from e
    duration_s = arr.n_frames / fps
    declared = entry.get("duration")
    if isinstance(declared, (int, float)) and abs(float(declared) - duration_s) > max(
        0.25, 0.02 * duration_s
    ):
        log.warning(
            '%s: "duration" %.3f s but the motion has %d frames = %.3f s at %g fps',
            where,
            float(declared),
            arr.n_frames,
            duration_s,
            fps,
        )
    anns = entry.get("annotations") or []
    if not isinstance(anns, list):
        raise CorpusError(where, '"annotations" is not a list')
    annotations: list[Annotation] = []
    for i, a in enumerate(anns):
        rec = f"{where}, annotation {i}"
        if not isinstance(a, dict):
            raise CorpusError(rec, "not an object")
        text = a.get("text")
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(rec, 'missing or empty "text"')
        try:
            start_s, end_s = float(a["start"]), float(a["end"])
        except KeyError as e:
            raise CorpusError(rec, f"missing {e.args[0]!r}") from None
        except (TypeError, ValueError):
            raise CorpusError(rec, f"non-numeric times {a.get('start')!r}..{a.get('end')!r}") from None
        start_s, end_s = clip_span(start_s, end_s, duration_s, rec)
        if end_s <= start_s:
            raise CorpusError(rec, f"empty span {start_s:.3f}-{end_s:.3f}s")
        extra = {k: v for k, v in a.items() if k not in _ANN_KEYS}
        annotations.append(
            Annotation(
                text=text.strip(),
                start_s=start_s,
                end_s=end_s,
                seg_id=str(a.get("seg_id", f"{key}_{i}")),
                extra=extra,
            )
        )
    split = entry.get("split", split)
    meta = {"keyid": str(key), "rel_path": rel, "layout": arr.kind}
    if arr.handedness_fixed:
        meta["handedness_fixed"] = True
    return Motion(
        name=f"{source}/{key}",
        source=source,
        fps=fps,
        joints=arr.joints,
        features=arr.features,
        annotations=annotations,
        split=str(split) if split is not None else None,
        path=str(file),
        meta=meta,
    )
