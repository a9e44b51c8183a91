"""Importer: BABEL dense action labels (babel_v1.0_release) over AMASS motions.

Label files, as published (times in seconds):

    train.json / val.json:  {"<babel_sid>": {"babel_sid": 7692, "feat_p": "CMU/CMU/141/141_05_poses.npz",
                              "dur": 3.83, "url": ..., "seq_ann": {"labels": [...], ...},
                              "frame_ann": {"labels": [{"raw_label": "hopping left", "proc_label": "hop left",
                                                        "act_cat": ["hop"], "seg_id": "...",
                                                        "start_t": 1, "end_t": 2}, ...], ...} | null}}
    extra_train.json / extra_val.json: the same with "seq_anns" / "frame_anns": lists, one per annotator.
    test.json: labels withheld; only read when asked for.

Motions come from `motions_dir`, one `.npy` per AMASS sequence (joints or 263-features, see
`engine.corpus.importers`), keyed by `feat_p`. The first existing of these is used:

    1. <motions_dir>/<feat_p with .npz replaced by .npy>      CMU/CMU/141/141_05_poses.npy
    2. the same without the first folder                      CMU/141/141_05_poses.npy
       (the layout of HumanML3D's pose_data/, TMR and the MLP code)
    3. 1 and 2 with the dataset folders renamed as in the current AMASS release
       (BioMotionLab_NTroje -> BMLrub, DFaust_67 -> DFaust, MPI_HDM05 -> HDM05, ...: see AMASS_RENAMES)

The arrays must cover the whole AMASS sequence (BABEL times count from its first frame): for
HumanML3D's pose_data/ that holds (no dataset offsets are cut there). fps is `fps` (default 20)
unless the array's length disagrees with BABEL's `dur` by more than 3% (e.g. a 250 Hz source
downsampled by an integer step to 20.8 fps): then fps = n_frames / dur, noted in the motion's meta.

Labels: the text is `raw_label` (as the MLP paper; `label_field="proc_label"` for the processed form);
"transition" labels are dropped unless `keep_transitions`; a sequence without frame labels falls back
to its sequence labels as whole-motion labels, with a warning (`seq_fallback=False` skips it).
Sequences appearing in several files (e.g. train.json and extra_train.json) become one motion with the
labels of all annotators. Labels with an empty text or an empty span are dropped with a warning;
a label outside the motion is a bad record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.corpus.arrays import read_json
from engine.corpus.importers import AMASS_RENAMES, clip_span, load_motion_array, npy_candidates, report_bad
from engine.corpus.skeleton import FPS
from engine.corpus.types import Annotation, CorpusError, Motion

log = logging.getLogger(__name__)

DEFAULT_FILES = ("train", "val", "extra_train", "extra_val")
SPLIT_OF_FILE = {"train": "train", "val": "val", "test": "test", "extra_train": "train", "extra_val": "val"}
TRANSITION = "transition"
# fps is re-derived from BABEL's `dur` when n_frames / fps and `dur` differ by more than this fraction.
FPS_MISMATCH = 0.03


def babel_motion_candidates(motions_dir: Path, feat_p: str) -> list[Path]:
    """Where the `.npy` of a BABEL `feat_p` may be, in the order tried (see the module docstring)."""
    rel = npy_candidates(feat_p)[0]
    parts = rel.split("/")
    rels = [rel]
    if len(parts) > 1:
        rels.append("/".join(parts[1:]))
    for r in list(rels):
        renamed = "/".join(AMASS_RENAMES.get(part, part) for part in r.split("/"))
        if renamed != r:
            rels.append(renamed)
    out: list[Path] = []
    for r in rels:
        p = motions_dir / r
        if p not in out:
            out.append(p)
    return out


@dataclass
class _Label:
    text: str
    start_t: Any
    end_t: Any
    seg_id: str
    extra: dict[str, Any]
    whole: bool = False  # a sequence label standing for the whole motion


@dataclass
class _Sequence:
    sid: str
    feat_p: str
    dur: float
    split: str
    files: list[str] = field(default_factory=list)
    frame_labels: list[_Label] = field(default_factory=list)
    seq_labels: list[_Label] = field(default_factory=list)
    where: str = ""


def _labels(ann: Any, whole: bool, file: str, annotator: int | None, label_field: str) -> list[_Label]:
    if not isinstance(ann, dict):
        return []
    out = []
    for lab in ann.get("labels") or []:
        if not isinstance(lab, dict):
            continue
        text = lab.get(label_field)
        if text is None and label_field != "raw_label":
            text = lab.get("raw_label")
        extra = {
            "proc_label": lab.get("proc_label"),
            "raw_label": lab.get("raw_label"),
            "act_cat": lab.get("act_cat"),
            "file": file,
        }
        if ann.get("anntr_id") is not None:
            extra["anntr_id"] = ann["anntr_id"]
        if annotator is not None:
            extra["annotator"] = annotator
        if whole:
            extra["whole_motion"] = True
        out.append(
            _Label(
                text=str(text or "").strip(),
                start_t=lab.get("start_t"),
                end_t=lab.get("end_t"),
                seg_id=str(lab.get("seg_id") or ""),
                extra=extra,
                whole=whole,
            )
        )
    return out


def _collect(
    babel_dir: Path,
    files: Sequence[str],
    label_field: str,
    val_split: str,
    skip_bad: bool,
    errors: list[str] | None,
) -> dict[str, _Sequence]:
    seqs: dict[str, _Sequence] = {}
    for name in files:
        path = babel_dir / (name if name.endswith(".json") else f"{name}.json")
        stem = path.stem
        try:
            data = read_json(path)
            if not isinstance(data, dict):
                raise CorpusError(
                    str(path), f"expected an object babel_sid -> sequence, got {type(data).__name__}"
                )
        except CorpusError as e:
            if not skip_bad:
                raise
            report_bad(e, errors)
            continue
        split = SPLIT_OF_FILE.get(stem, stem)
        if split == "val":
            split = val_split
        for sid, entry in data.items():
            where = f"{path}: sequence {sid}"
            try:
                if not isinstance(entry, dict):
                    raise CorpusError(where, f"entry is a {type(entry).__name__}, expected an object")
                feat_p, dur = entry.get("feat_p"), entry.get("dur")
                if not isinstance(feat_p, str) or not feat_p:
                    raise CorpusError(where, 'missing "feat_p"')
                try:
                    dur = float(dur)
                except (TypeError, ValueError):
                    raise CorpusError(where, f'invalid "dur" {dur!r}') from None
            except CorpusError as e:
                if not skip_bad:
                    raise
                report_bad(e, errors)
                continue
            seq = seqs.get(str(sid))
            if seq is None:
                seq = seqs[str(sid)] = _Sequence(str(sid), feat_p, dur, split, where=f"{where} ({feat_p})")
            elif seq.feat_p != feat_p:
                e = CorpusError(where, f"feat_p {feat_p!r} differs from {seq.feat_p!r} in {seq.files[0]}")
                if not skip_bad:
                    raise e
                report_bad(e, errors)
                continue
            elif seq.split != split:
                log.warning(
                    "%s: also in split %r (%s); keeping %r", where, seq.split, seq.files[0], seq.split
                )
            seq.files.append(path.name)
            if "frame_anns" in entry or "seq_anns" in entry:  # extra_*.json: one annotation per annotator
                for k, fa in enumerate(entry.get("frame_anns") or []):
                    seq.frame_labels += _labels(fa, False, path.name, k, label_field)
                for k, sa in enumerate(entry.get("seq_anns") or []):
                    seq.seq_labels += _labels(sa, True, path.name, k, label_field)
            else:
                seq.frame_labels += _labels(entry.get("frame_ann"), False, path.name, None, label_field)
                seq.seq_labels += _labels(entry.get("seq_ann"), True, path.name, None, label_field)
    return seqs


def iter_babel_motions(
    babel_dir: Path | str,
    motions_dir: Path | str,
    files: Sequence[str] | None = None,
    label_field: str = "raw_label",
    keep_transitions: bool = False,
    seq_fallback: bool = True,
    layout: str = "auto",
    fps: float = FPS,
    val_split: str = "val",
    keep_unlabelled: bool = False,
    source: str = "babel",
    skip_bad: bool = False,
    errors: list[str] | None = None,
) -> Iterator[Motion]:
    """BABEL sequences as motions named `<source>/<babel_sid>`, in babel_sid order.

    `files`: label files to read (names with or without `.json`; default: those of train, val,
    extra_train, extra_val that exist). Splits: train/extra_train -> "train", val/extra_val ->
    `val_split` (the MLP paper evaluates on BABEL's val set: pass "test"), test -> "test".
    Sequences left without any label are skipped (logged) unless `keep_unlabelled`.
    A bad record (missing or bad motion file, label outside the motion, ...) raises CorpusError naming
    the label file, the sequence and the problem; with `skip_bad` it is reported into `errors` and skipped.
    """
    if label_field not in ("raw_label", "proc_label"):
        raise ValueError(f"label_field must be 'raw_label' or 'proc_label', not {label_field!r}")
    bdir, mdir = Path(babel_dir), Path(motions_dir)
    if not bdir.is_dir():
        raise CorpusError(str(bdir), "BABEL folder not found")
    if not mdir.is_dir():
        raise CorpusError(str(mdir), "motions folder not found")
    if files is None:
        files = [f for f in DEFAULT_FILES if (bdir / f"{f}.json").is_file()]
        if not files:
            raise CorpusError(
                str(bdir), f"no BABEL label files ({', '.join(f + '.json' for f in DEFAULT_FILES)})"
            )
    seqs = _collect(bdir, files, label_field, val_split, skip_bad, errors)
    n_fallback = 0
    for sid in sorted(seqs, key=lambda s: (len(s), s)):
        seq = seqs[sid]
        labels = seq.frame_labels
        if not labels and seq.seq_labels:
            if not seq_fallback:
                log.warning("%s: no frame labels; skipped (seq_fallback off)", seq.where)
                continue
            n_fallback += 1
            log.warning(
                "%s: no frame labels; using its %d sequence label(s) for the whole motion",
                seq.where,
                len(seq.seq_labels),
            )
            labels = seq.seq_labels
        try:
            motion = _sequence_motion(seq, labels, mdir, layout, fps, keep_transitions, source)
        except CorpusError as e:
            if not skip_bad:
                raise
            report_bad(e, errors)
            continue
        if not motion.annotations and not keep_unlabelled:
            log.info("%s: no usable labels, not imported", seq.where)
            continue
        yield motion
    if n_fallback:
        log.warning("BABEL: %d sequences without frame labels used their sequence labels", n_fallback)


def _sequence_motion(
    seq: _Sequence,
    labels: list[_Label],
    mdir: Path,
    layout: str,
    fps: float,
    keep_transitions: bool,
    source: str,
) -> Motion:
    candidates = babel_motion_candidates(mdir, seq.feat_p)
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise CorpusError(
            seq.where, f"motion file not found (looked for {', '.join(str(c) for c in candidates)})"
        )
    try:
        arr = load_motion_array(file, layout=layout)
    except CorpusError as e:
        raise CorpusError(f"{seq.where} ({e.where})", e.problem) from e
    meta: dict[str, Any] = {
        "babel_sid": seq.sid,
        "feat_p": seq.feat_p,
        "babel_dur_s": seq.dur,
        "files": seq.files,
        "layout": arr.kind,
    }
    if arr.handedness_fixed:
        meta["handedness_fixed"] = True
    duration_s = arr.n_frames / fps
    if seq.dur > 0 and abs(duration_s - seq.dur) > FPS_MISMATCH * seq.dur + 1.0 / fps:
        fps_from_dur = arr.n_frames / seq.dur
        if not 0.5 * fps <= fps_from_dur <= 2.0 * fps:
            raise CorpusError(
                seq.where,
                f"motion file {file} has {arr.n_frames} frames ({duration_s:.2f} s at "
                f"{fps:g} fps) but BABEL's dur is {seq.dur:.2f} s",
            )
        log.warning(
            "%s: %d frames at %g fps = %.2f s but dur = %.2f s; using fps %.3f",
            seq.where,
            arr.n_frames,
            fps,
            duration_s,
            seq.dur,
            fps_from_dur,
        )
        fps, duration_s = fps_from_dur, seq.dur
        meta["fps_from_babel_dur"] = True
    annotations: list[Annotation] = []
    n_transition = n_dropped = 0
    seen: set[str] = set()
    for i, lab in enumerate(labels):
        rec = f"{seq.where}, label {lab.seg_id or i}"
        if not lab.text:
            log.warning("%s: empty text, dropped", rec)
            n_dropped += 1
            continue
        if not keep_transitions and TRANSITION in (
            lab.text.lower(),
            str(lab.extra.get("proc_label") or "").lower(),
        ):
            n_transition += 1
            continue
        if lab.whole:
            start_s, end_s = 0.0, duration_s
        else:
            try:
                start_s, end_s = float(lab.start_t), float(lab.end_t)
            except (TypeError, ValueError):
                raise CorpusError(rec, f"non-numeric times {lab.start_t!r}..{lab.end_t!r}") from None
            start_s, end_s = clip_span(start_s, end_s, duration_s, rec)
        if end_s <= start_s:
            log.warning("%s: empty span %.3f-%.3f s, dropped", rec, start_s, end_s)
            n_dropped += 1
            continue
        seg_id = lab.seg_id or f"{seq.sid}_{i}"
        if seg_id in seen:
            seg_id = f"{seg_id}_{i}"
        seen.add(seg_id)
        annotations.append(
            Annotation(
                text=lab.text,
                start_s=start_s,
                end_s=end_s,
                seg_id=seg_id,
                extra={k: v for k, v in lab.extra.items() if v is not None},
            )
        )
    if n_transition:
        meta["transitions_dropped"] = n_transition
    if n_dropped:
        meta["labels_dropped"] = n_dropped
    annotations.sort(key=lambda a: (a.start_s, a.end_s))
    return Motion(
        name=f"{source}/{seq.sid}",
        source=source,
        fps=fps,
        joints=arr.joints,
        features=arr.features,
        annotations=annotations,
        split=seq.split,
        path=str(file),
        meta=meta,
    )
