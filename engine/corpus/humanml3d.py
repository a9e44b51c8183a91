"""Importer: HumanML3D (Restore), the untrimmed version of HumanML3D built in the MLP paper (Sec. IV-A).

HumanML3D cuts clips ("crops") out of AMASS sequences and captions each clip. HumanML3D (Restore)
puts the clips back: every AMASS *source* sequence becomes one untrimmed motion whose target moments
are its crops, so each caption gets a time span.

Inputs (HumanML3D's own layout):

    <root>/index.csv      source_path,start_frame,end_frame,new_name
                          ./pose_data/KIT/3/kick_high_left02_poses.npy,0,117,000000.npy
    <root>/texts/<new_name>.txt   one caption per line: "caption#tokens#start#end"; start/end are seconds
                          inside the crop (HumanML3D frames / 20), 0.0#0.0 meaning the whole crop
    <motions_dir>/<source_path without ./pose_data/>   the FULL source sequence, default
                          <root>/pose_data/: the output of HumanML3D's raw_pose_processing step (52 SMPL-H
                          joints, mirror-handed until its x *= -1, which `layout="auto"` detects), or joints
                          (T, 22, 3) / 263-features (T, 263) of the whole sequence (`amass.export_joints`
                          writes such a folder); AMASS's current folder names (BMLrub for
                          BioMotionLab_NTroje, ...) are found too.

What the importer does, following HumanML3D's cropping code (raw_pose_processing.ipynb):

- per-dataset offsets: HumanML3D drops the first frames of some datasets before applying index.csv
  (Eyes_Japan_Dataset and MPI_HDM05 3 s, TotalCapture and MPI_Limits 1 s, Transitions_mocap 0.5 s; at
  20 fps, so 60/60/20/20/10 frames; HumanAct12 clips are never cut and are always whole). By default the
  motion starts where HumanML3D's timeline starts (`trim_offsets=True`), so a crop at frames [s, e) is the
  moment [s/fps, e/fps); with `trim_offsets=False` the dropped frames are kept and the moments shifted.
- crop frames are Python slices (end -1 = one before the last, as HumanML3D); a crop ending at most
  0.25 s past the sequence is clipped, further is a bad record;
- a caption with its own start/end gives the sub-span [s + int(start*20), s + int(end*20)) of its crop;
- moments longer than `max_moment_ratio` (0.8) of their motion are dropped (the paper's filter);
  sources left without moments are skipped unless `keep_unlabelled`;
- `mirror=True` adds the left-right mirror of each motion (x negated, left/right joints swapped, as
  HumanML3D's 'M' files) named `<source>/M/<key>`, with left/right words swapped in its captions;
- splits are re-made by source (seeded): an AMASS sequence and its mirror are in exactly one split.

fps: `fps` (default 20); with `amass_root`, each source's rate is taken from its AMASS `.npz`
(mocap_framerate / int(mocap_framerate / 20), HumanML3D's integer downsampling, e.g. 250 Hz -> 20.83 fps).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from engine.corpus.importers import (
    AMASS_RENAMES,
    MotionArray,
    load_motion_array,
    mirror_joints,
    mirror_text,
    report_bad,
)
from engine.corpus.skeleton import FPS
from engine.corpus.types import Annotation, CorpusError, Motion

log = logging.getLogger(__name__)

H3D_FPS = 20  # the frame unit of index.csv and of the caption tags
# Seconds HumanML3D drops from the start of these AMASS datasets before cropping (matched as substrings
# of the source path, as HumanML3D does).
DATASET_OFFSETS_S = {
    "Eyes_Japan_Dataset": 3.0,
    "MPI_HDM05": 3.0,
    "TotalCapture": 1.0,
    "MPI_Limits": 1.0,
    "Transitions_mocap": 0.5,
}
HUMANACT12 = "humanact12"
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.05, 0.15)
SPLIT_NAMES = ("train", "val", "test")
CROP_OVERSHOOT_S = 0.25


@dataclass
class H3DCrop:
    """One row of index.csv."""

    row: int  # 1-based data row (line number - 1)
    source_path: str
    start_frame: int
    end_frame: int
    new_name: str

    @property
    def stem(self) -> str:
        return PurePosixPath(self.new_name).stem


@dataclass
class H3DCaption:
    """One line of a texts/<name>.txt file."""

    line: int
    caption: str
    tokens: str
    start_tag_s: float  # 0.0 and end_tag_s 0.0: the whole crop
    end_tag_s: float


def source_key(source_path: str) -> str:
    """'./pose_data/KIT/3/kick_high_left02_poses.npy' -> 'KIT/3/kick_high_left02_poses'."""
    parts = [p for p in PurePosixPath(source_path.replace("\\", "/")).parts if p not in (".", "/")]
    if parts and parts[0] == "pose_data":
        parts = parts[1:]
    key = "/".join(parts)
    for ext in (".npy", ".npz"):
        if key.endswith(ext):
            key = key[: -len(ext)]
    return key


def offset_frames(source_path: str) -> int:
    """Frames HumanML3D drops from the start of this source before applying index.csv."""
    if HUMANACT12 in source_path:
        return 0
    return sum(int(s * H3D_FPS) for name, s in DATASET_OFFSETS_S.items() if name in source_path)


def read_index(index_csv: Path) -> list[H3DCrop]:
    """Rows of HumanML3D's index.csv; CorpusError naming the file and row when malformed."""
    if not index_csv.is_file():
        raise CorpusError(str(index_csv), "file not found")
    try:
        with open(index_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CorpusError(str(index_csv), f"unreadable CSV: {e}") from e
    if not rows:
        raise CorpusError(str(index_csv), "empty file")
    header = [h.strip() for h in rows[0]]
    need = ("source_path", "start_frame", "end_frame", "new_name")
    if any(n not in header for n in need):
        raise CorpusError(str(index_csv), f"header {header} lacks one of {list(need)}")
    col = {n: header.index(n) for n in need}
    out = []
    for i, r in enumerate(rows[1:], 1):
        if not r or all(not c.strip() for c in r):
            continue
        where = f"{index_csv}: row {i}"
        try:
            out.append(
                H3DCrop(
                    row=i,
                    source_path=r[col["source_path"]].strip(),
                    start_frame=int(float(r[col["start_frame"]])),
                    end_frame=int(float(r[col["end_frame"]])),
                    new_name=r[col["new_name"]].strip(),
                )
            )
        except (IndexError, ValueError) as e:
            raise CorpusError(where, f"malformed row {r!r}: {e}") from e
    return out


def read_captions(path: Path, skip_bad: bool = False, errors: list[str] | None = None) -> list[H3DCaption]:
    """Captions of one texts/<name>.txt; CorpusError naming file:line for a malformed line."""
    if not path.is_file():
        raise CorpusError(str(path), "caption file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(str(path), f"unreadable caption file: {e}") from e
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parts = line.strip().rsplit("#", 3)
            if len(parts) != 4:
                raise CorpusError(f"{path}:{n}", f"expected 'caption#tokens#start#end', got {line!r}")
            caption, tokens, f_tag, t_tag = parts
            try:
                start, end = float(f_tag), float(t_tag)
            except ValueError:
                raise CorpusError(f"{path}:{n}", f"non-numeric start/end {f_tag!r}/{t_tag!r}") from None
            start = 0.0 if np.isnan(start) else start
            end = 0.0 if np.isnan(end) else end
            if not caption.strip():
                raise CorpusError(f"{path}:{n}", "empty caption")
            out.append(H3DCaption(n, caption.strip(), tokens.strip(), start, end))
        except CorpusError as e:
            if not skip_bad:
                raise
            report_bad(e, errors)
    return out


def assign_splits(
    keys: Sequence[str], fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS, seed: int = 0
) -> dict[str, str]:
    """Seeded split of source keys into train/val/test by `fractions` (exact counts, rounded).

    Depends only on the set of keys, the fractions and the seed (not on their order).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {tuple(fractions)}")
    total = float(sum(fractions))
    uniq = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(uniq))
    n_train = int(round(fractions[0] / total * len(uniq)))
    n_val = int(round(fractions[1] / total * len(uniq)))
    n_val = min(n_val, len(uniq) - n_train)
    out = {}
    for rank, idx in enumerate(order):
        out[uniq[idx]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def _mocap_fps(amass_root: Path, key: str) -> float | None:
    from engine.corpus.amass import read_mocap_fps

    renamed = "/".join(AMASS_RENAMES.get(part, part) for part in key.split("/"))
    for rel in dict.fromkeys((key, renamed)):
        p = amass_root / f"{rel}.npz"
        if p.is_file():
            return read_mocap_fps(p)
    return None


def _pose_data_fps(mocap_fps: float) -> float:
    """Rate of HumanML3D's pose_data arrays: every int(mocap_fps / 20)-th frame."""
    step = max(1, int(mocap_fps / H3D_FPS))
    return mocap_fps / step


def iter_humanml3d_motions(
    root: Path | str,
    motions_dir: Path | str | None = None,
    index_csv: Path | str | None = None,
    texts_dir: Path | str | None = None,
    layout: str = "auto",
    fps: float = FPS,
    amass_root: Path | str | None = None,
    max_moment_ratio: float = 0.8,
    mirror: bool = True,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 0,
    trim_offsets: bool = True,
    keep_unlabelled: bool = False,
    source: str = "humanml3d",
    skip_bad: bool = False,
    errors: list[str] | None = None,
) -> Iterator[Motion]:
    """HumanML3D (Restore) motions (see the module docstring): sources in sorted order, each then its mirror.

    Bad records raise CorpusError naming the file and record (index.csv row, caption file line, motion
    file); with `skip_bad` they are reported into `errors` and skipped: a bad motion file skips its
    source, a bad crop or caption line skips that moment only.
    """
    root = Path(root)
    index_csv = Path(index_csv) if index_csv is not None else root / "index.csv"
    texts_dir = Path(texts_dir) if texts_dir is not None else root / "texts"
    mdir = Path(motions_dir) if motions_dir is not None else root / "pose_data"
    if not texts_dir.is_dir():
        raise CorpusError(str(texts_dir), "caption folder not found")
    if not mdir.is_dir():
        raise CorpusError(
            str(mdir), "motions folder not found (the full AMASS sequences, e.g. HumanML3D's pose_data/)"
        )
    if not 0 < max_moment_ratio <= 1:
        raise ValueError(f"max_moment_ratio must be in (0, 1], got {max_moment_ratio}")
    crops = read_index(index_csv)
    groups: dict[str, list[H3DCrop]] = {}
    n_mirror_rows = 0
    for c in crops:
        if c.stem.startswith("M"):
            n_mirror_rows += 1  # HumanML3D's mirrors; this importer makes its own
            continue
        groups.setdefault(source_key(c.source_path), []).append(c)
    if n_mirror_rows:
        log.info(
            "%s: %d mirror rows ('M' names) ignored; mirrors are rebuilt from the sources",
            index_csv,
            n_mirror_rows,
        )
    split_of = assign_splits(list(groups), split_fractions, seed)
    ctx = _Ctx(root=root, index_csv=index_csv, texts_dir=texts_dir, motions_dir=mdir, layout=layout, fps=fps,
               amass_root=Path(amass_root) if amass_root else None, max_moment_ratio=max_moment_ratio,
               trim_offsets=trim_offsets, source=source, skip_bad=skip_bad, errors=errors)
    n_long = n_sources = 0
    for key in sorted(groups):
        rows = groups[key]
        where = (
            f"{index_csv}: source {rows[0].source_path} (rows {', '.join(str(c.row) for c in rows[:5])}"
            + (", ...)" if len(rows) > 5 else ")")
        )
        try:
            built = _build_source(ctx, key, rows, where, split_of[key])
        except CorpusError as e:
            if not skip_bad:
                raise
            report_bad(e, errors)
            continue
        motion, n_dropped = built
        n_long += n_dropped
        if not motion.annotations and not keep_unlabelled:
            log.info(
                "%s: no moment left (all longer than %.0f%% of the motion), not imported",
                where,
                100 * max_moment_ratio,
            )
            continue
        n_sources += 1
        yield motion
        if mirror:
            try:
                yield _mirrored(motion, source, key)
            except CorpusError as e:
                if not skip_bad:
                    raise
                report_bad(e, errors)
    log.info(
        "HumanML3D (Restore): %d sources, %d moments dropped by the %.0f%% rule",
        n_sources,
        n_long,
        100 * max_moment_ratio,
    )


def _source_file(root: Path, mdir: Path, rows: list[H3DCrop], key: str) -> tuple[Path, list[Path]]:
    """The full-sequence file of a source: <motions_dir>/<key>.npy, the same with AMASS's current
    dataset folder names (BioMotionLab_NTroje -> BMLrub, ...), or index.csv's path under the root."""
    cands = [mdir / f"{key}.npy"]
    renamed = "/".join(AMASS_RENAMES.get(part, part) for part in key.split("/"))
    if renamed != key:
        cands.append(mdir / f"{renamed}.npy")
    raw = rows[0].source_path
    if raw and (root / raw) not in cands:
        cands.append(root / raw)  # as written in index.csv, relative to the HumanML3D folder
    for c in cands:
        if c.is_file():
            return c, cands
    return cands[0], cands


@dataclass
class _Ctx:
    """The options of one HumanML3D import, passed to the per-source builder."""

    root: Path
    index_csv: Path
    texts_dir: Path
    motions_dir: Path
    layout: str
    fps: float
    amass_root: Path | None
    max_moment_ratio: float
    trim_offsets: bool
    source: str
    skip_bad: bool
    errors: list[str] | None


def _build_source(ctx: _Ctx, key: str, rows: list[H3DCrop], where: str, split: str) -> tuple[Motion, int]:
    fps = ctx.fps
    file, cands = _source_file(ctx.root, ctx.motions_dir, rows, key)
    if not file.is_file():
        raise CorpusError(where, f"motion file not found: {', '.join(str(c) for c in cands)}")
    src_path = rows[0].source_path
    is_act12 = HUMANACT12 in src_path
    negate = None
    if ctx.layout == "pose_data" and is_act12:
        negate = False  # HumanML3D does not flip HumanAct12's x
    try:
        arr = load_motion_array(file, layout=ctx.layout, negate_x=negate)
    except CorpusError as e:
        raise CorpusError(f"{where} ({e.where})", e.problem) from e
    meta: dict[str, Any] = {"amass_path": key, "layout": arr.kind, "h3d_names": [c.stem for c in rows]}
    if arr.handedness_fixed:
        meta["handedness_fixed"] = True
    if ctx.amass_root is not None and not is_act12:
        mocap = _mocap_fps(ctx.amass_root, key)
        if mocap is not None:
            fps = _pose_data_fps(mocap)
            meta["mocap_fps"] = mocap
        else:
            log.debug("%s: no AMASS .npz under %s; fps %g assumed", where, ctx.amass_root, fps)
    off = offset_frames(src_path)
    shift = 0
    if off:
        if off >= arr.n_frames - 1:
            raise CorpusError(
                where, f"{arr.n_frames} frames in {file}, fewer than HumanML3D's {off}-frame offset"
            )
        if ctx.trim_offsets:
            arr = arr.crop(off, arr.n_frames)
        else:
            shift = off
        meta["offset_frames"] = off
        meta["offset_trimmed"] = ctx.trim_offsets
    n = arr.n_frames
    h3d_n = n - shift  # frames on HumanML3D's timeline
    overshoot = int(round(CROP_OVERSHOOT_S * H3D_FPS))
    annotations: list[Annotation] = []
    n_long = 0
    for c in rows:
        rec = f"{ctx.index_csv}: row {c.row} ({c.new_name}, {c.source_path})"
        try:
            if is_act12:
                s, e = 0, h3d_n
            else:
                if c.start_frame >= h3d_n or (c.end_frame >= 0 and c.end_frame > h3d_n + overshoot):
                    raise CorpusError(
                        rec,
                        f"crop frames {c.start_frame}-{c.end_frame} are outside the motion "
                        f"({h3d_n} frames after the {off}-frame offset)",
                    )
                s, e, _ = slice(c.start_frame, c.end_frame).indices(h3d_n)
                if e <= s:
                    raise CorpusError(rec, f"empty crop {c.start_frame}-{c.end_frame} ({h3d_n} frames)")
            captions = read_captions(ctx.texts_dir / f"{c.stem}.txt", ctx.skip_bad, ctx.errors)
        except CorpusError as e:
            if not ctx.skip_bad:
                raise
            report_bad(e, ctx.errors)
            continue
        for cap in captions:
            whole = cap.start_tag_s == 0.0 and cap.end_tag_s == 0.0
            if whole:
                fs, fe = s, e
            else:
                fs, fe = s + int(cap.start_tag_s * H3D_FPS), min(e, s + int(cap.end_tag_s * H3D_FPS))
                if fe <= fs:
                    log.warning(
                        "%s:%d: empty sub-span %.2f-%.2f s of a %d-frame crop, dropped",
                        ctx.texts_dir / f"{c.stem}.txt",
                        cap.line,
                        cap.start_tag_s,
                        cap.end_tag_s,
                        e - s,
                    )
                    continue
            if (fe - fs) / n > ctx.max_moment_ratio:
                n_long += 1
                continue
            annotations.append(
                Annotation(
                    text=cap.caption,
                    start_s=(fs + shift) / fps,
                    end_s=(fe + shift) / fps,
                    seg_id=f"{c.stem}_{cap.line}",
                    extra={
                        "h3d_name": c.stem,
                        "tokens": cap.tokens,
                        "whole_crop": whole,
                        "crop_s": [(s + shift) / fps, (e + shift) / fps],
                    },
                )
            )
    annotations.sort(key=lambda a: (a.start_s, a.end_s, a.seg_id))
    meta["moments_dropped_long"] = n_long
    motion = Motion(
        name=f"{ctx.source}/{key}",
        source=ctx.source,
        fps=fps,
        joints=arr.joints,
        features=arr.features,
        annotations=annotations,
        split=split,
        path=str(file),
        meta=meta,
    )
    return motion, n_long


def _mirrored(m: Motion, source: str, key: str) -> Motion:
    where = f"motion {m.name!r} ({m.path})"
    if m.joints is not None:
        joints = mirror_joints(m.joints)
    else:
        try:
            from engine.corpus.features import features_to_joints
        except ImportError as e:
            raise CorpusError(
                where, f"mirroring a features-only motion needs engine.corpus.features: {e}"
            ) from e
        joints = mirror_joints(np.asarray(features_to_joints(m.features), dtype=np.float32))
    mm = MotionArray(Path(m.path), joints=joints)
    duration_s = mm.n_frames / m.fps
    anns = []
    for a in m.annotations:
        end_s = min(a.end_s, duration_s)  # recovered joints have one frame fewer than features + 1
        if end_s <= a.start_s:
            continue
        extra = dict(a.extra, mirror=True, tokens=mirror_text(str(a.extra.get("tokens", ""))))
        anns.append(
            Annotation(
                text=mirror_text(a.text), start_s=a.start_s, end_s=end_s, seg_id=f"M{a.seg_id}", extra=extra
            )
        )
    meta = dict(m.meta, mirror_of=m.name, layout="joints")
    return Motion(
        name=f"{source}/M/{key}",
        source=source,
        fps=m.fps,
        joints=joints,
        annotations=anns,
        split=m.split,
        path=m.path,
        meta=meta,
    )
