"""The `engine` command line: one Typer sub-app per area.

Heavy imports (numpy, torch, faiss, sqlalchemy) live inside command bodies so `engine --help` is instant.
Data output has `--json`; errors go to stderr with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

from engine.corpus.progress import StageBars, progress_display
from engine.corpus.types import EngineError
from engine.request import SearchRequest

# OpenMP spin-waiting makes BLAS/FAISS 5-30x slower on a shared 2-core machine (bench/bench_index.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

class _EngineGroup(TyperGroup):
    """The root command group: any EngineError that reaches it is one `error:` line on stderr, exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EngineError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:  # disk full, permission denied, read-only file system: the file and the reason
            where = f"{e.filename}: " if e.filename is not None else ""
            typer.echo(f"error: {where}{e.strerror or e}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(help="Search engine for human motion: find the moments a sentence describes.",
                  no_args_is_help=True, add_completion=False, cls=_EngineGroup)
data_app = typer.Typer(help="Build and inspect motion corpora.", no_args_is_help=True)
import_app = typer.Typer(help="Import motion data into a corpus directory (appends).", no_args_is_help=True)
train_app = typer.Typer(help="Train the retrieval model and the localizer (runs/<name>/).", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate retrieval, localization and corpus moment retrieval.", no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.add_typer(import_app, name="import")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


def _mount_indexer() -> None:
    from indexer.cli import eval_retrieval_cmd, make_index_app, train_retrieval_cmd

    def motion_feature_factory(run_dir, device="cpu"):
        from engine.home import localizer_feature_fn

        return localizer_feature_fn(run_dir, device=device)

    def after_build(index_dir):  # the ONNX query models, so that the first search is a fast one
        from engine.search import prepare_fast_path

        prepare_fast_path(index_dir, notify=lambda m: typer.echo(m, err=True))

    app.add_typer(make_index_app(motion_feature_factory, after_build=after_build), name="index")
    train_app.command("retrieval")(train_retrieval_cmd)
    eval_app.command("retrieval")(eval_retrieval_cmd)


_mount_indexer()


DEFAULT_REQUEST = SearchRequest("defaults")  # the defaults every front end shares


def fail(message: str, code: int = 1) -> None:
    """Print an error to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _progress():
    """A rich progress display on stderr (hidden when stderr is not a terminal)."""
    return progress_display()


def _bar_fn(prog):
    """The (stage, done, total) progress callback of library code, drawn as one bar per stage on `prog`."""
    return StageBars(prog)


def _open_store(corpus: Path, verify: str = "sizes"):
    """An existing corpus, or a clear error naming the directory (a damaged one: exit 2)."""
    from engine.corpus.store import CorpusStore
    from engine.corpus.types import EngineError

    try:
        return CorpusStore.open(corpus, create=False, verify=verify)
    except FileNotFoundError as e:
        fail(str(e))
    except EngineError as e:
        fail(str(e), 2)


DB_URL_OPTION = typer.Option(
    None, "--db-url", help="SQLAlchemy URL for the metadata, e.g. postgresql+psycopg://user@host/db "
    "(default: CORPUS/corpus.sqlite; recorded in the corpus manifest).")


def _store_import(out: Path, motions, skip_bad: bool, as_json: bool, description: str,
                  total: int | None = None, url: str | None = None, extra_bad: list[str] | None = None) -> None:
    """Feed motions into the store at `out`, with progress; print the report."""
    import time

    from engine.corpus.store import CorpusStore
    from engine.corpus.types import CorpusError

    t0 = time.perf_counter()
    store = CorpusStore.open(out, url=url)
    try:
        with _progress() as prog:
            task = prog.add_task(description, total=total)
            report = store.add_motions(motions, skip_bad=skip_bad, progress=lambda n: prog.advance(task, n))
        stats = store.stats().to_dict()
    except CorpusError as e:
        fail(f"{e} (nothing of the failing batch was stored; use --skip-bad to import the rest)")
    finally:
        store.close()
    bad = (extra_bad or []) + report.bad
    if bad and report.added == 0 and report.skipped_existing == 0:
        fail("nothing imported:\n" + "\n".join(bad))
    result = {"corpus": str(out), "added": report.added, "skipped_existing": report.skipped_existing,
              "bad": bad, "seconds": round(time.perf_counter() - t0, 2), "corpus_stats": stats}
    if as_json:
        print_json(result)
    else:
        typer.echo(f"{out}: added {report.added}, already present {report.skipped_existing}, "
                   f"skipped bad {len(bad)} in {result['seconds']} s; corpus now {stats['motions']} motions, "
                   f"{stats['annotations']} annotations, {stats['duration_s'] / 60:.1f} min")
        for b in bad:
            typer.echo(f"skipped: {b}", err=True)


# ---------------------------------------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Corpus directory to create or append to."),
    preset: str = typer.Option("demo", help="tiny | small | demo | large | scale"),
    seed: int = typer.Option(0, help="Random seed (same seed, same corpus)."),
    n: int | None = typer.Option(None, "--n", help="Override the preset's number of motions."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    db_url: str | None = DB_URL_OPTION,
) -> None:
    """Generate the built-in procedural corpus (40+ actions, untrimmed 10-120 s sequences)."""
    import dataclasses

    from engine.corpus import synth

    if preset not in synth.PRESETS:
        fail(f"unknown preset {preset!r}; choose from {', '.join(synth.PRESETS)}")
    config = synth.PRESETS[preset]
    if n is not None:
        if n <= 0:
            fail("--n must be positive")
        config = dataclasses.replace(config, n_motions=n)
    _store_import(out, synth.generate(config, seed=seed), False, as_json,
                  f"synth {preset}", total=config.n_motions, url=db_url)


@import_app.command("bvh")
def import_bvh(
    paths: list[Path] = typer.Argument(..., help="BVH files (.bvh, .bvh.gz) or folders to walk."),
    out: Path | None = typer.Option(None, "--out", help="Corpus directory to create or append to "
                                    "(required unless --dry-run)."),
    preset: str = typer.Option("auto", help="Skeleton preset: auto | bandai | cmu131 | cmu135 | smpl."),
    map_file: Path | None = typer.Option(None, "--map", help="Custom joint map JSON (see data/README.md)."),
    source: str | None = typer.Option(None, help="Source name stored with each motion (default: by preset)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Report bad files and import the rest."),
    limit: list[str] = typer.Option([], "--limit", help="Raise an import limit, NAME=VALUE (repeatable), e.g. "
                                    "max_file_bytes=2e9, max_decompressed_bytes, max_duration_s, "
                                    "max_resampled_frames, min_frame_time_s, max_frame_time_s, max_joints, "
                                    "max_coordinate_m, max_joint_speed_m_s, max_bone_m, min_skeleton_m."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Diagnose each file (preset, units, declared vs "
                                 "estimated fps, up axis, T-pose, frames) and write nothing."),
    no_checks: bool = typer.Option(False, "--no-checks", help="Import files that fail a check (e.g. a declared "
                                   "fps the motion contradicts) instead of quarantining them."),
    as_json: bool = typer.Option(False, "--json"),
    db_url: str | None = DB_URL_OPTION,
) -> None:
    """Import BVH motion capture (any skeleton, retargeted to the canonical 22 joints at 20 fps)."""
    from engine.corpus import bvh
    from engine.corpus.fsnames import display_path
    from engine.corpus.limits import ImportLimits
    from engine.corpus.types import CorpusError

    for p in paths:
        if not p.exists():
            fail(f"{display_path(p)}: no such file or directory")
    try:
        limits = ImportLimits.from_overrides(limit)
    except CorpusError as e:
        fail(str(e), 2)
    if dry_run:
        _bvh_dry_run(paths, str(map_file) if map_file else preset, limits, as_json)
        return
    if out is None:
        fail("--out is required (or pass --dry-run to only diagnose the files)")
    errors: list[str] = []
    motions = bvh.iter_bvh_motions(paths, preset=str(map_file) if map_file else preset, source=source,
                                   skip_bad=skip_bad, errors=errors, limits=limits, checks=not no_checks)
    _store_import(out, motions, skip_bad, as_json, "import bvh", extra_bad=errors, url=db_url)


def _bvh_dry_run(paths: list[Path], preset: str, limits, as_json: bool) -> None:
    """`engine data import bvh --dry-run`: one diagnosis per file (engine.corpus.bvh_diagnose), nothing written."""
    from engine.corpus.bvh import find_bvh_files
    from engine.corpus.bvh_diagnose import diagnose_bvh
    from engine.corpus.types import CorpusError

    try:
        from engine.corpus.bvh import resolve_preset

        resolved = resolve_preset(preset)
    except CorpusError as e:
        fail(str(e), 2)
    files, missing = find_bvh_files(paths)
    diags = []
    with _progress() as prog:
        task = prog.add_task("diagnose bvh", total=len(files))
        for f in files:
            diags.append(diagnose_bvh(f, resolved, limits))
            prog.advance(task)
    n_bad = sum(not d.ok for d in diags)
    if as_json:
        print_json({"files": [d.to_dict() for d in diags], "other_problems": [str(e) for e in missing],
                    "n_files": len(diags), "n_failed": n_bad,
                    "n_warned": sum(bool(d.warnings) for d in diags)})
        return
    for d in diags:
        if d.error:
            typer.echo(f"{d.path}: FAILED unreadable: {d.error}")
            continue
        head = "ok" if d.ok else "FAILED " + ",".join(d.failed)
        fps = f"{d.declared_fps:g} fps declared" + (f", looks like {d.estimated_fps:g}" if d.estimated_fps else "")
        scale = f", {d.unit} ({d.scale_m:g} m/unit)" if d.scale_m else ""
        missing_j = f" (missing {', '.join(d.missing_joints[:10])})" if d.missing_joints else ""
        typer.echo(f"{d.path}: {head}: preset {d.preset}{missing_j}{scale}, {fps}, up {d.up_axis or '?'}, "
                   f"T-pose frame 0: {'yes' if d.tpose_first_frame else 'no'}, {d.n_frames} frames, "
                   f"{d.duration_s:g} s")
        for w in d.warnings:
            typer.echo(f"  warning: {w}")
    for e in missing:
        typer.echo(f"warning: {e}")
    typer.echo(f"{len(diags)} files, {n_bad} failing a check, {sum(bool(d.warnings) for d in diags)} with warnings")


@import_app.command("arrays")
def import_arrays(
    annotations: Path = typer.Argument(..., help="Annotations JSON: {keyid: {path, duration, annotations: [...]}}."),
    out: Path = typer.Option(..., "--out", help="Corpus directory to create or append to."),
    motions: Path | None = typer.Option(None, help="Folder of .npy files (default: beside the JSON)."),
    source: str = typer.Option("arrays", help="Source name stored with each motion."),
    fps: float | None = typer.Option(None, help="Frame rate when the JSON gives none (default 20)."),
    layout: str = typer.Option("auto", help="auto | joints | features"),
    splits: Path | None = typer.Option(None, help="Folder of train.txt/val.txt/test.txt keyid lists."),
    drop_unlabelled: bool = typer.Option(False, "--drop-unlabelled", help="Skip motions with no annotations."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Report bad records and import the rest."),
    as_json: bool = typer.Option(False, "--json"),
    db_url: str | None = DB_URL_OPTION,
) -> None:
    """Import .npy joints (T x 22 x 3) or 263-features (T x 263) with annotations in the unified schema."""
    from engine.corpus.arrays import iter_array_motions

    errors: list[str] = []
    it = iter_array_motions(annotations, motions_dir=motions, source=source, fps=fps, layout=layout,
                            splits_dir=splits, keep_unlabelled=not drop_unlabelled, skip_bad=skip_bad,
                            errors=errors)
    _store_import(out, it, skip_bad, as_json, "import arrays", extra_bad=errors, url=db_url)


@import_app.command("babel")
def import_babel(
    babel_dir: Path = typer.Argument(..., help="Folder with train.json, val.json (and extra_*.json)."),
    motions: Path = typer.Option(..., help="Folder of joint/263-feature .npy files keyed by the AMASS path."),
    out: Path = typer.Option(..., "--out"),
    files: str | None = typer.Option(None, help="Comma-separated BABEL files (default: train,val)."),
    label: str = typer.Option("raw_label", help="raw_label | proc_label"),
    keep_transitions: bool = typer.Option(False, "--keep-transitions"),
    no_seq_fallback: bool = typer.Option(False, "--no-seq-fallback", help="Skip sequences whose frame_ann is null."),
    layout: str = typer.Option("auto"),
    fps: float = typer.Option(20.0),
    source: str = typer.Option("babel"),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    as_json: bool = typer.Option(False, "--json"),
    db_url: str | None = DB_URL_OPTION,
) -> None:
    """Import BABEL frame-level labels with motions from a folder keyed by feat_p."""
    from engine.corpus.babel import iter_babel_motions

    errors: list[str] = []
    it = iter_babel_motions(babel_dir, motions, files=files.split(",") if files else None, label_field=label,
                            keep_transitions=keep_transitions, seq_fallback=not no_seq_fallback, layout=layout,
                            fps=fps, source=source, skip_bad=skip_bad, errors=errors)
    _store_import(out, it, skip_bad, as_json, "import babel", extra_bad=errors, url=db_url)


@import_app.command("humanml3d")
def import_humanml3d(
    root: Path = typer.Argument(..., help="HumanML3D folder (index.csv, texts/)."),
    out: Path = typer.Option(..., "--out"),
    motions: Path | None = typer.Option(None, help="Full-sequence joints/features keyed by AMASS path."),
    amass: Path | None = typer.Option(None, help="AMASS root (to find renamed dataset folders)."),
    no_mirror: bool = typer.Option(False, "--no-mirror", help="Do not add left-right mirrored motions."),
    max_moment_ratio: float = typer.Option(0.8, help="Drop moments longer than this fraction of the motion."),
    split_fractions: str = typer.Option("0.8,0.05,0.15", help="train,val,test fractions (by source motion)."),
    seed: int = typer.Option(0),
    keep_offset_frames: bool = typer.Option(False, "--keep-offset-frames"),
    layout: str = typer.Option("auto"),
    fps: float = typer.Option(20.0),
    source: str = typer.Option("humanml3d"),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    as_json: bool = typer.Option(False, "--json"),
    db_url: str | None = DB_URL_OPTION,
) -> None:
    """Import HumanML3D (Restore): crops grouped into untrimmed source motions."""
    from engine.corpus.humanml3d import iter_humanml3d_motions

    try:
        fr = tuple(float(x) for x in split_fractions.split(","))
        assert len(fr) == 3
    except (ValueError, AssertionError):
        fail(f"--split-fractions {split_fractions!r}: expected three comma-separated numbers")
    errors: list[str] = []
    it = iter_humanml3d_motions(root, motions_dir=motions, layout=layout, fps=fps, amass_root=amass,
                                max_moment_ratio=max_moment_ratio, mirror=not no_mirror, split_fractions=fr,
                                seed=seed, trim_offsets=not keep_offset_frames, source=source,
                                skip_bad=skip_bad, errors=errors)
    _store_import(out, it, skip_bad, as_json, "import humanml3d", extra_bad=errors, url=db_url)


@import_app.command("amass")
def import_amass(
    paths: list[Path] = typer.Argument(..., help="AMASS .npz files or folders."),
    body_model: Path = typer.Option(..., "--body-model", help="SMPL+H / SMPL-X model folder (smplx layout)."),
    out: Path = typer.Option(..., "--out"),
    fps: float = typer.Option(20.0),
    resample: str = typer.Option("nearest", help="nearest | humanml3d"),
    source: str = typer.Option("amass"),
    split: str | None = typer.Option(None),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    as_json: bool = typer.Option(False, "--json"),
    db_url: str | None = DB_URL_OPTION,
) -> None:
    """Import AMASS SMPL-H parameter files through smplx (needs the body model)."""
    from engine.corpus.amass import iter_amass_motions

    errors: list[str] = []
    it = iter_amass_motions(paths, body_model, fps=fps, resample=resample, source=source, split=split,
                            skip_bad=skip_bad, errors=errors)
    _store_import(out, it, skip_bad, as_json, "import amass", extra_bad=errors, url=db_url)


@data_app.command("amass-joints")
def data_amass_joints(
    amass_dir: Path = typer.Argument(..., help="AMASS root folder."),
    body_model: Path = typer.Option(..., "--body-model"),
    out: Path = typer.Option(..., "--out", help="Folder for joint .npy files keyed by AMASS path."),
    resample: str = typer.Option("humanml3d"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
) -> None:
    """Export AMASS joints as .npy files (the motions folder BABEL and HumanML3D imports read)."""
    from engine.corpus.amass import export_joints
    from engine.corpus.types import CorpusError

    errors: list[str] = []
    try:
        written = export_joints(amass_dir, body_model, out, resample=resample, overwrite=overwrite,
                                skip_bad=skip_bad, errors=errors)
    except (CorpusError, FileNotFoundError, ImportError) as e:
        fail(str(e))
    typer.echo(f"wrote {len(written)} files to {out}")
    for e in errors:
        typer.echo(f"skipped: {e}", err=True)


@data_app.command("compose")
def data_compose(
    out: Path = typer.Option(..., "--out", help="Corpus directory to create or append to."),
    root: Path = typer.Option(Path("../shared/data/bandai-namco"), help="The Bandai Namco dataset folder."),
    seed: int = typer.Option(0),
    n: int | None = typer.Option(None, "--n", help="Number of composed sequences (default: all clips used)."),
    min_s: float = typer.Option(10.0, "--min-s", help="Shortest composed sequence (s)."),
    max_s: float = typer.Option(120.0, "--max-s", help="Longest composed sequence (s)."),
    sets: str = typer.Option("set1,set2", help="Comma-separated Bandai sets to use."),
    as_json: bool = typer.Option(False, "--json"),
    db_url: str | None = DB_URL_OPTION,
) -> None:
    """Compose the real-motion benchmark: untrimmed sequences of labelled Bandai Namco clips."""
    from engine.corpus import compose

    if not root.is_dir():
        fail(f"{root}: no such folder (point --root at the Bandai Namco dataset with set1/ and set2/)")
    if not 0 < min_s < max_s:
        fail(f"--min-s {min_s} / --max-s {max_s}: need 0 < min < max")
    errors: list[str] = []
    it = compose.compose_bandai(root, seed=seed, n_motions=n, min_s=min_s, max_s=max_s,
                                sets=tuple(x for x in sets.split(",") if x), errors=errors)
    _store_import(out, it, False, as_json, "compose bandai", total=n, extra_bad=errors, url=db_url)


@data_app.command("augment")
def data_augment(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus whose training motions are augmented."),
    out: Path = typer.Option(..., "--out", help="Corpus directory to create or append to (copies only)."),
    mirror: bool = typer.Option(False, "--mirror", help="Also mirrored copies (left/right swapped in the text)."),
    speeds: str = typer.Option("1", "--speeds", help="Comma-separated speed factors, e.g. 0.8,1.2."),
    proportions: float = typer.Option(0.0, "--proportions",
                                      help="Scale each limb group's bones by 1 ± this (e.g. 0.1); 0: as recorded."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N training motions."),
    as_json: bool = typer.Option(False, "--json"),
    db_url: str | None = DB_URL_OPTION,
) -> None:
    """Augmented copies of a corpus's training motions, for training (see engine/corpus/augment.py)."""
    from engine.corpus import augment

    try:
        speed_list = [float(x) for x in speeds.split(",") if x.strip()]
    except ValueError:
        fail(f"--speeds {speeds!r}: expected comma-separated numbers")
    if corpus.resolve() == out.resolve():
        fail(f"--out {out}: must differ from --corpus (the copies go into a corpus of their own)")
    kinds = augment.specs(mirror, speed_list, proportions)
    if not kinds:
        fail("nothing to do: give --mirror, --speeds other than 1, or --proportions")
    src = _open_store(corpus)
    try:
        n = len(src.motion_ids(split="train"))
        n = min(n, limit) if limit is not None else n
        _store_import(out, augment.augmented_motions(src, kinds, limit=limit), False, as_json,
                      f"augment ({', '.join(k.tag for k in kinds)})", total=n * len(kinds), url=db_url)
    finally:
        src.close()


@data_app.command("stats")
def data_stats(
    corpus: Path = typer.Argument(..., help="Corpus directory."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Counts and durations of a corpus."""
    from engine.corpus.types import EngineError

    store = _open_store(corpus)
    try:
        st = store.stats().to_dict()
    except EngineError as e:
        fail(str(e), 2)
    finally:
        store.close()
    if as_json:
        print_json(st)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=str(corpus))
    t.add_column("key")
    t.add_column("value", justify="right")
    for k, v in st.items():
        t.add_row(k, json.dumps(v) if isinstance(v, dict) else str(v))
    Console().print(t)


@data_app.command("show")
def data_show(
    corpus: Path = typer.Argument(..., help="Corpus directory."),
    motion: str = typer.Argument(..., help="Motion id or name."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One motion's metadata and annotations."""
    from engine.corpus.types import EngineError

    store = _open_store(corpus)
    try:
        mid = int(motion) if motion.isdigit() else store.motion_id(motion)
        m = store.get_motion(mid, arrays=False)
    except KeyError as e:
        fail(f"{corpus}: {e.args[0]}")
    except EngineError as e:
        fail(str(e), 2)
    finally:
        store.close()
    info = {"motion_id": m.motion_id, "name": m.name, "source": m.source, "path": m.path, "fps": m.fps,
            "split": m.split, "duration_s": m.meta["_duration_s"],
            "meta": {k: v for k, v in m.meta.items() if not k.startswith("_")},
            "annotations": [{"seg_id": a.seg_id, "text": a.text, "start_s": a.start_s, "end_s": a.end_s,
                             **({"extra": a.extra} if a.extra else {})} for a in m.annotations]}
    if as_json:
        print_json(info)
        return
    typer.echo(f"#{m.motion_id} {m.name} [{m.source}, {m.split}] {info['duration_s']:.2f} s @ {m.fps:g} fps  {m.path}")
    for a in m.annotations:
        typer.echo(f"  {a.start_s:8.2f} - {a.end_s:8.2f} s  {a.text}")


@data_app.command("verify")
def data_verify(
    corpus: Path = typer.Argument(..., help="Corpus directory."),
    repair: bool = typer.Option(False, "--repair", help="Remove part files no motion references and stale "
                                "temporary files; record checksums of motions stored before checksums existed."),
    quick: bool = typer.Option(False, "--quick", help="Sizes only (no sha256 of files and motions)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check every part file (size, sha256) and every motion's arrays. Exit 1 on damaged or missing data."""
    from engine.corpus.types import EngineError

    store = _open_store(corpus, verify="none")  # a damaged corpus must open to be reported on
    try:
        rep = store.verify(full=not quick, repair=repair)
    except EngineError as e:
        fail(str(e), 2)
    finally:
        store.close()
    if as_json:
        print_json(rep.to_dict())
    else:
        checked = f"sha256 of {rep.bytes_hashed / 1e6:.1f} MB" if rep.full else "sizes only"
        typer.echo(f"{corpus}: {'OK' if rep.ok else 'PROBLEMS'} ({rep.files} part files, {rep.motions} motions, "
                   f"{checked}; {rep.unverified_motions} unverified)")
        for line in rep.problems:
            typer.echo(f"problem: {line}", err=True)
        for line in rep.warnings:
            typer.echo(f"warning: {line}", err=True)
        for line in rep.removed:
            typer.echo(f"removed: {line}")
        if repair and (rep.recorded_files or rep.recorded_motions):
            typer.echo(f"recorded checksums of {rep.recorded_files} part files and {rep.recorded_motions} motions")
        for line in rep.not_repaired:
            typer.echo(f"not repaired: {line}", err=True)
    if not rep.ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- train / eval
@train_app.command("localizer")
def train_localizer_cmd(
    corpus: list[str] = typer.Option(..., "--corpus", help="Corpus directory (train split; val for selection); "
                                                          "repeat to mix corpora, each as DIR or DIR:WEIGHT."),
    run: Path = typer.Option(..., "--run", help="Run directory, e.g. runs/mlp (re-run to resume)."),
    preset: str = typer.Option("cpu-small", help="paper | cpu-base | cpu-small | tiny"),
    variant: str = typer.Option("mlp", help="mlp | mlp-s | mlpbase | ablations (see localizer/config.py)"),
    epochs: int | None = typer.Option(None, help="Override the preset's epochs."),
    budget_min: float | None = typer.Option(None, "--budget-min", help="Fit the epochs into this many minutes."),
    seed: int = typer.Option(0),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    restart: bool = typer.Option(False, "--restart", help="Start over instead of resuming."),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (1 is fastest on a busy 2-core box)."),
    text_encoder: str | None = typer.Option(None, "--text-encoder", help="minilm | glove | mpnet | a local HF dir"),
    recipe: str = typer.Option("today", "--recipe", help="today | official | fixed (localizer/config.py RECIPES)"),
    text_variants: bool = typer.Option(False, "--text-variants",
                                       help="Each step draws one of the moment's wordings (labelled corpora)."),
    label_balance: float | None = typer.Option(None, "--label-balance", min=0.0, max=1.0,
                                               help="Draw a content's moments with weight n**-B (n: its count "
                                                    "in its corpus): 0 off, 1 every content equally often."),
    settings: list[str] = typer.Option([], "--set", help="KEY=VALUE config override, e.g. model.flip_rate=0.2 "
                                                          "(repeatable)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train the MLP localizer (Motion Label Prior); model selection on the val split (the union of the
    corpora's), never test."""
    from localizer.config import make_config
    from localizer.train import train_localizer

    over: dict = {"train.seed": seed}
    if epochs is not None:
        over["train.epochs"] = epochs
    if budget_min is not None:
        over["train.time_budget_min"] = budget_min
    if bf16:
        over["train.bf16"] = True
    if text_encoder is not None:
        over["train.text_encoder"] = text_encoder
    if text_variants:
        over["train.text_variants"] = True
    if label_balance is not None:
        over["train.label_balance"] = label_balance
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set {item!r}: expected KEY=VALUE")
        over[key.strip()] = value.strip()
    try:
        config = make_config(preset, variant, over, recipe=recipe)
    except (ValueError, TypeError) as e:
        fail(str(e))
    from indexer.cli import open_training_corpora

    store, _ = open_training_corpora(corpus)
    with _progress() as prog:
        task = prog.add_task("train localizer", total=None)

        def cb(p) -> None:
            prog.update(task, completed=p.step, total=p.total_steps,
                        description=f"epoch {p.epoch + 1}/{p.epochs} loss {p.loss:.3f}")
            if p.phase == "eval" and p.metrics is not None and not sys.stderr.isatty():
                m = p.metrics
                typer.echo(f"epoch {p.epoch + 1}/{p.epochs} step {p.step} loss {p.loss:.3f} val mIoU {m.miou:.3f} "
                           f"R@1 IoU0.5 {m.r1_iou0_5:.3f} IoU0.7 {m.r1_iou0_7:.3f} p_se med {m.p_se_median or 0:.3f} "
                           f"span ratio med {m.span_ratio_median or 0:.2f} ({p.elapsed_s:.0f} s)", err=True)

        try:
            res = train_localizer(store, run, config, progress=cb, device=device, resume=not restart,
                                  num_threads=threads)
        except (ValueError, FileNotFoundError) as e:
            fail(str(e))
    out = {"run": str(run), "steps": res.steps, "epochs": res.epochs, "best_score": res.best_score,
           "best": res.best_metrics.__dict__ if res.best_metrics else None}
    if as_json:
        print_json(out)
    else:
        typer.echo(f"{run}: {res.epochs} epochs, {res.steps} steps; best val {out['best']}")


def _bars():
    """A progress display and its (stage, done, total) callback."""
    prog = _progress()
    return prog, _bar_fn(prog)


@eval_app.command("localize")
def eval_localize_cmd(
    corpus: Path = typer.Option(..., "--corpus"),
    localizer: list[str] = typer.Option(..., "--localizer", help="NAME=RUN_DIR (repeatable) or RUN_DIR."),
    out: Path = typer.Option(..., "--out", help="Folder for run files, metrics.json and report.md."),
    split: str = typer.Option("test"),
    retrieval: Path | None = typer.Option(None, "--retrieval", help="Retrieval run: adds the sliding-window baseline."),
    assigned_cos: float = typer.Option(0.6, help="Assigned protocol: sentence cosine threshold."),
    max_queries: int | None = typer.Option(None, help="Evaluate a seeded sample of the queries."),
    dataset: str = typer.Option(""),
    device: str = typer.Option("cpu"),
    max_span: str = typer.Option("learned", "--max-span",
                                 help="Localizer span limit: learned (from the checkpoint) | none | SECONDS."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Single-motion localization: R@1 IoU{0.5,0.7,0.9} and mIoU, Normal and Assigned, with baselines."""
    from engine.evaluate import localize_eval
    from eval.report import tslm_table

    span_limit: float | str | None = None if max_span.lower() == "none" else max_span
    if span_limit not in (None, "learned"):
        try:
            span_limit = float(max_span)
        except ValueError:
            fail(f"--max-span {max_span!r}: expected learned, none or a number of seconds")
    paths = {}
    for item in localizer:
        name, _, path = item.rpartition("=")
        paths[name or Path(path).name] = path
        if not Path(path).exists():
            fail(f"{path}: no such localizer run")
    prog, bar = _bars()
    with prog:
        res = localize_eval(corpus, paths, out, split=split, retrieval_path=retrieval, cos_threshold=assigned_cos,
                            max_queries=max_queries, device=device, dataset=dataset, progress=bar,
                            max_span_s=span_limit)
    table = tslm_table(res.results, title=f"{dataset or corpus} ({split}, {res.meta['queries']} queries)")
    _report_eval(res, table, out, as_json)


def _report_eval(res, table: str, out: Path, as_json: bool) -> None:
    """Write the markdown table beside the run files; print it, or the metrics as JSON."""
    (out / "report.md").write_text(table + "\n")
    if as_json:
        print_json({"metrics": [r.to_dict() for r in res.results], "meta": res.meta, "timings_s": res.timings_s,
                    "label_match": [r.to_dict() for r in getattr(res, "label_results", [])],
                    "comparisons": [d.to_dict() for d in getattr(res, "comparisons", [])]})
    else:
        typer.echo(table)


@eval_app.command("cmr")
def eval_cmr_cmd(
    index: Path = typer.Option(..., "--index"),
    out: Path = typer.Option(..., "--out"),
    split: str = typer.Option("test", help="Queries: the annotations of this split of the index's corpus."),
    k: list[int] = typer.Option([100, 200], "--k"),
    lam: list[float] = typer.Option([5.0, 10.0], "--lam"),
    gamma: list[float] = typer.Option([1.0], "--gamma", help="Powers of p_se, repeatable: 1 is the paper's score, "
                                      "others p_se ** gamma * exp(lam * r)."),
    fused: bool = typer.Option(False, "--fused", help="Also rank by the fused score with the fitted weights "
                               "(score.json beside the localizer; scripts/fit_score.py), for each --k and --r."),
    limit: int = typer.Option(100, "--limit"),
    max_queries: int | None = typer.Option(300, help="A seeded sample of the queries (None: all)."),
    localizer: Path | None = typer.Option(None, "--localizer"),
    device: str = typer.Option("cpu"),
    sliding_window: bool = typer.Option(True, "--sliding-window/--no-sliding-window",
                                        help="Also run the sliding-window localizer baseline."),
    window_s: list[float] = typer.Option([2.0, 4.0, 6.0], "--window-s",
                                         help="Sliding-window sizes (s) besides the index's 10 s chunks."),
    r_mode: list[str] = typer.Option(["motion", "moment"], "--r", help="r in the score, repeatable: motion | moment."),
    backend: str = typer.Option("local", "--backend", help="local | ray (queries spread over Ray workers)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster: auto | ray://HOST:10001 "
                                           "(default: start a local Ray)."),
    ray_workers: int = typer.Option(2, "--ray-workers", help="Ray search workers (one Searcher each)."),
    label_key: str | None = typer.Option(None, "--label-key", help="Annotation `extra` key that names a moment's "
                                         "label, for label-match P@10/nDCG@10/mAP@100 (default: action or content)."),
    queries: Path | None = typer.Option(None, "--queries", help="Your own query set instead of the split's "
                                        "annotations: TSV `label<TAB>text` or JSONL {label, text}."),
    relevance: bool = typer.Option(True, "--relevance/--label-match-only", help="Also the Recall/DCG tables "
                                   "(their relevance embeds every returned moment: slow); or label match only."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Corpus moment retrieval: Recall@n,IoU@mu, DCG/NDCG and label-match P@10/nDCG@10/mAP@100 over a
    (k, lambda) grid, with baselines and paired-bootstrap intervals."""
    from engine.evaluate import cmr_eval
    from engine.request import R_MODES
    from eval.report import cmr_table

    if backend not in ("local", "ray"):
        fail(f"--backend {backend!r}: choose one of local, ray")
    bad = [m for m in r_mode if m not in R_MODES]
    if bad:
        fail(f"--r {bad[0]!r}: choose from {', '.join(R_MODES)}")
    prog, bar = _bars()
    from engine.corpus.types import CorpusError

    try:
        with prog:
            res = cmr_eval(index, out, split=split, ks=k, lams=lam, limit=limit, max_queries=max_queries,
                           localizer=localizer, device=device, sliding_window=sliding_window,
                           window_sizes_s=window_s, r_modes=r_mode, backend=backend, ray_address=ray_address,
                           ray_workers=ray_workers, progress=bar, label_key=label_key, queries_file=queries,
                           gammas=gamma, relevance=relevance, fused=fused)
    except (CorpusError, FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        fail(f"eval cmr: {e}")
    from eval.report import label_match_table

    title = f"{index} ({queries or split}, {res.meta['queries']} queries)"
    table = cmr_table(res.results, title=title) if res.results else f"**{title}**"
    if res.label_results:
        table += "\n\n" + label_match_table(res.label_results, res.comparisons)
    _report_eval(res, table, out, as_json)


@eval_app.command("run")
def eval_run_cmd(
    runs: list[Path] = typer.Argument(..., help="Run files (.jsonl/.tsv) written by `eval cmr` or `search --run-out`."),
    truth: Path = typer.Option(..., "--truth", help="Ground-truth file (e.g. the truth.jsonl `eval cmr` writes)."),
    index: Path | None = typer.Option(None, "--index", help="Index for the relevance models and the corpus "
                                      "(default: the one the run's metadata names)."),
    device: str = typer.Option("cpu"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score run files written earlier (Recall@n,IoU, DCG/NDCG), the same way `eval cmr` does, without searching."""
    from engine.evaluate import eval_run_files
    from eval.report import cmr_table

    for p in [*runs, truth]:
        if not p.exists():
            fail(f"{p}: no such file")
    results = eval_run_files(runs, truth, index_dir=index, device=device)
    if as_json:
        print_json({"metrics": [r.to_dict() for r in results], "runs": [str(p) for p in runs]})
    else:
        typer.echo(cmr_table(results, title=f"{truth} ({results[0].n_queries if results else 0} queries)"))


@eval_app.command("report")
def eval_report_cmd(
    metrics: list[Path] = typer.Argument(..., help="metrics.json files"),
    out: Path | None = typer.Option(None, "--out", help="Also write the tables to this markdown file."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists (a regular file only)."),
) -> None:
    """Markdown tables (paper layout) from metrics JSON files."""
    from eval.report import markdown_report, read_metrics_json

    results = []
    for p in metrics:
        if not p.exists():
            fail(f"{p}: no such file")
        results.extend(read_metrics_json(p))
    md = markdown_report(results)
    if out:
        from engine.corpus.io import atomic_write_text, check_output_target

        atomic_write_text(check_output_target(out, force), md)
    typer.echo(md)


# ---------------------------------------------------------------------------------------------- serve
MODELS_OPTION = typer.Option(None, "--models", help="Shipped model set of the built-in index: default (trained on "
                             "procedural + Bandai Namco motion; non-commercial) | synthetic (procedural only). "
                             "Default: $ENGINE_MODELS, else default.")


@app.command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default; no auth)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    index: Path | None = typer.Option(None, "--index", help="Index directory (default: the built-in corpus's)."),
    localizer: Path | None = typer.Option(None, "--localizer", help="Localizer run dir (default: shipped model)."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    token: str | None = typer.Option(None, "--token", envvar="ENGINE_TOKEN",
                                     help="Require this token on every request (needed beyond loopback)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without a token."),
    header_timeout_s: float = typer.Option(10.0, "--header-timeout-s", help="Close connections whose request "
                                           "headers take longer."),
    batch_window_ms: float = typer.Option(4.0, "--batch-window-ms", help="Searches arriving within this window "
                                          "share one localizer pass (0: no waiting)."),
    cache_size: int = typer.Option(256, "--cache-size", help="Recent results kept (0: no result cache)."),
    models: str | None = MODELS_OPTION,
    threads: int | None = typer.Option(None, "--threads", help="torch threads of the searches (default: torch's; "
                                       "1 is fastest on a busy 2-core box)."),
) -> None:
    """Serve the HTTP API (/search, /motions, /docs) and the web page with skeleton previews."""
    from engine.serve import is_loopback, load_searcher, run_server

    if not 0 < port < 65536:
        fail(f"--port must be in 1..65535 (got {port})")
    if token is not None and len(token) < 16:
        fail("--token must be at least 16 characters (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe())'`)")
    if not is_loopback(host) and token is None and not insecure:
        fail(f"--host {host} is reachable from other machines: pass --token (or set ENGINE_TOKEN), or --insecure "
             "to serve without authentication")
    if not 0 < header_timeout_s <= 600:
        fail(f"--header-timeout-s must be in (0, 600] (got {header_timeout_s})")
    if not 0 <= batch_window_ms <= 1000 or cache_size < 0:
        fail("--batch-window-ms must be in 0..1000 and --cache-size at least 0")
    if threads is not None:
        if threads < 1:
            fail(f"--threads must be at least 1 (got {threads})")
        import torch

        torch.set_num_threads(threads)
    try:
        searcher = load_searcher(_index_for(index, models), localizer=localizer, device=device,
                                 notify=lambda m: typer.echo(m, err=True), warmup=True, models=models)
    except EngineError as e:
        fail(str(e))
    if not is_loopback(host) and token is None:
        typer.echo(f"warning: binding {host}: the API has no authentication (--insecure)", err=True)
    typer.echo(f"serving on http://{host}:{port}/{'?token=…' if token else ''}  (API docs: /docs)", err=True)
    run_server(searcher, host=host, port=port, log_level=log_level, token=token, header_timeout_s=header_timeout_s,
               batch_options={"window_s": batch_window_ms / 1000.0, "cache_size": cache_size})


# ---------------------------------------------------------------------------------------------- export / render
CLIP_CORPUS_OPTION = typer.Option(None, "--corpus", help="Corpus directory (default: the built-in corpus).")
CLIP_INDEX_OPTION = typer.Option(None, "--index", help="Use the corpus this index directory was built from.")


def _clip_store(corpus: Path | None, index: Path | None):
    """The store of --corpus, of --index's corpus, or the built-in corpus (prepared on first use)."""
    from engine.corpus.store import CorpusStore
    from engine.export import corpus_location
    from engine.home import default_corpus_ready

    try:
        if corpus is not None or index is not None or default_corpus_ready():
            where, url = corpus_location(corpus, index)
        else:
            typer.echo("preparing the built-in corpus and its index (first run only, a few minutes) ...", err=True)
            with _progress() as prog:
                where, url = corpus_location(progress=_bar_fn(prog))
        return CorpusStore.open(where, url=url, create=False)
    except (FileNotFoundError, ValueError, OSError) as e:
        fail(str(e))


@app.command("export")
def export_cmd(
    motion: str = typer.Argument(..., help="Motion id or name (as `engine search` lists them)."),
    out: Path = typer.Option(..., "--out", help="File to write."),
    start: float | None = typer.Option(None, "--start", help="Clip start in seconds (default 0)."),
    end: float | None = typer.Option(None, "--end", help="Clip end in seconds (default: the motion's end)."),
    fmt: str | None = typer.Option(None, "--format", help="bvh | npy | json | glb (default: --out's suffix, else bvh)."),
    corpus: Path | None = CLIP_CORPUS_OPTION,
    index: Path | None = CLIP_INDEX_OPTION,
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists (a regular file only)."),
    skeleton: str = typer.Option("canonical", "--skeleton", help="canonical (SMPL 22 joints) | source (the "
                                 "original BVH file's skeleton and frames; BVH imports only)."),
    fps: float | None = typer.Option(None, "--fps", help="--skeleton source: resample to this rate (slerp)."),
    in_place: bool = typer.Option(False, "--in-place", help="--skeleton source: remove the horizontal root "
                                  "translation."),
    from_zero: bool = typer.Option(False, "--from-zero", help="--skeleton source: start at the origin "
                                   "(facing as in the source)."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write a span of a motion: BVH (SMPL 22 joints, cm), .npy ((F, 22, 3) float32, m), JSON or GLB (glTF).

    With --skeleton source, a BVH cut of the motion's original file (same hierarchy and channels)."""
    from engine.clipfile import serialize_clip
    from engine.corpus.io import atomic_write_bytes, check_output_target
    from engine.export import FORMATS, ClipError, clip_joints, resolve_motion_id

    if skeleton not in ("canonical", "source"):
        fail(f"unknown --skeleton {skeleton!r}; choose canonical or source")
    if skeleton == "canonical" and (fps is not None or in_place or from_zero):
        fail("--fps, --in-place and --from-zero apply to --skeleton source only")
    fmt = fmt or (out.suffix.lower().lstrip(".") if out.suffix.lower().lstrip(".") in FORMATS else "bvh")
    if skeleton == "source" and fmt.lower().lstrip(".") != "bvh":
        fail("--skeleton source writes BVH only (--format bvh)")
    check_output_target(out, force)
    store = _clip_store(corpus, index)
    try:
        clip = clip_joints(store, resolve_motion_id(store, motion), start, end)
        if skeleton == "source":
            from engine.export_source import source_clip_bytes

            exported, src_info = source_clip_bytes(store, clip.motion_id, start, end, fps=fps, in_place=in_place,
                                                   from_zero=from_zero)
        else:
            exported, src_info = serialize_clip(clip, fmt), {}
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, exported.data)
    except (ClipError, OSError) as e:
        fail(str(e))
    finally:
        store.close()
    if as_json:
        print_json({"path": str(out), "format": fmt.lower().lstrip("."), "bytes": len(exported.data),
                    "motion_id": clip.motion_id, "name": clip.name, "fps": clip.fps, "start_s": clip.start_s,
                    "end_s": clip.end_s, "n_frames": clip.n_frames, "skeleton": skeleton, **src_info})
    else:
        typer.echo(str(out))


@app.command("render")
def render_cmd(
    motion: str = typer.Argument(..., help="Motion id or name (as `engine search` lists them)."),
    out: Path = typer.Option(..., "--out", help="Animation to write: .gif, or .mp4 (needs imageio-ffmpeg)."),
    start: float | None = typer.Option(None, "--start", help="Highlight start in seconds (default 0)."),
    end: float | None = typer.Option(None, "--end", help="Highlight end in seconds (default: the motion's end)."),
    context_s: float = typer.Option(1.0, "--context-s", help="Seconds shown before and after the highlight."),
    corpus: Path | None = CLIP_CORPUS_OPTION,
    index: Path | None = CLIP_INDEX_OPTION,
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists (a regular file only)."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Preview a span of a motion as a stick-figure animation (highlighted span in orange)."""
    from engine.corpus.io import check_output_target
    from engine.export import ClipError, resolve_motion_id
    from engine.render import RenderError, render_motion

    check_output_target(out, force)
    store = _clip_store(corpus, index)
    try:
        res = render_motion(store, resolve_motion_id(store, motion), out, start, end, context_s=context_s)
    except (ClipError, RenderError, OSError) as e:
        fail(str(e))
    finally:
        store.close()
    if as_json:
        print_json({"path": str(res.path), "n_frames": res.n_frames, "fps": res.fps, "start_s": res.start_s,
                    "end_s": res.end_s, "highlighted_frames": sum(res.highlighted)})
    else:
        typer.echo(str(res.path))


# ---------------------------------------------------------------------------------------------- search
def _read_queries(path: Path) -> list[tuple[str, str]]:
    """(query_id, text) from a text file (one query per line) or JSONL ({"id"/"query_id", "text"/"query"})."""
    if not path.exists():
        fail(f"{path}: no such file")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                rec = json.loads(line)
                out.append((str(rec.get("id", rec.get("query_id", i))), str(rec.get("text", rec.get("query", "")))))
            except (json.JSONDecodeError, AttributeError) as e:
                fail(f"{path}:{i}: not a JSON object ({e})")
        else:
            out.append((str(i), line))
    if not out:
        fail(f"{path}: no queries")
    return out


CLI_FLAG = {"query": "query", "r_mode": "--r"}  # SearchRequest field -> the flag that sets it


def _request_error(e) -> str:
    """A SearchRequest error in the words of the CLI: `--top-m must be ...`."""
    flag = CLI_FLAG.get(e.where, "--" + e.where.replace("_", "-"))
    return e.problem if flag == "query" else f"{flag} {e.problem}"


@app.command("search")
def search_cmd(
    query: str | None = typer.Argument(None, help='What to find, e.g. "kung fu pose".'),
    k: int = typer.Option(DEFAULT_REQUEST.k, "--k", help="Motions retrieved before localization (top-k by chunk "
                          "similarity)."),
    lam: float | None = typer.Option(None, "--lam", help="Score = p_se * exp(lam * r) (default 5; with --score "
                                     "fused, the fitted value)."),
    limit: int = typer.Option(DEFAULT_REQUEST.limit, "--limit", "-n", help="Moments to return."),
    index: Path | None = typer.Option(None, "--index", help="Index directory (default: the built-in corpus's)."),
    localizer: Path | None = typer.Option(None, "--localizer", help="Localizer run dir (default: the index's)."),
    queries: Path | None = typer.Option(None, "--queries", help="Batch: a file with one query per line (or JSONL)."),
    run_out: Path | None = typer.Option(None, "--run-out", help="Also write the results as a run file (.jsonl/.tsv)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --run-out if it exists (a regular file only)."),
    source: list[str] | None = typer.Option(None, "--source", help="Only motions of this source (repeatable)."),
    min_motion_s: float | None = typer.Option(None, help="Only motions at least this long."),
    max_motion_s: float | None = typer.Option(None, help="Only motions at most this long."),
    min_moment_s: float | None = typer.Option(None, help="Only moments at least this long."),
    max_moment_s: float | None = typer.Option(None, help="Only moments at most this long."),
    top_m: int = typer.Option(DEFAULT_REQUEST.top_m, "--top-m", help="Candidate moments per motion (temporal NMS)."),
    no_prune: bool = typer.Option(False, "--no-prune", help="Localize all k motions (no exact top-n pruning)."),
    r_mode: str = typer.Option(DEFAULT_REQUEST.r_mode, "--r", help="r in the score: moment (the best chunk covering "
                               "the moment; better NDCG in docs/results.md) | motion (the paper: the motion's best chunk)."),
    score: str = typer.Option(DEFAULT_REQUEST.score, "--score", help="fused: p_se ** gamma * exp(lam * r + mu * s), "
                              "s the span's own window similarity, weights fitted on val (score.json) | paper: "
                              "p_se * exp(lam * r)."),
    gamma: float | None = typer.Option(None, "--gamma", help="The fused score's power of p_se (default: fitted)."),
    mu: float | None = typer.Option(None, "--mu", help="The fused score's weight of s (default: fitted)."),
    per_motion: int = typer.Option(DEFAULT_REQUEST.per_motion, "--per-motion", help="At most this many moments of "
                                   "one motion (0: no cap); near-duplicates are always dropped."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Print the moments as JSON."),
    like: str | None = typer.Option(None, "--like", help="More like this: moments similar to a span, "
                                    "MOTION:START-END (MOTION an id or name as listed, START/END seconds), "
                                    "instead of a query; uses --k, --limit, --per-motion."),
    include_self: bool = typer.Option(False, "--include-self", help="With --like: also moments of the example's "
                                      "own motion (never the example span itself)."),
    models: str | None = MODELS_OPTION,
    backend: str = typer.Option("auto", "--backend", help="auto | torch | onnx: the query models' runtime. auto "
                                "takes ONNX Runtime (no torch import: a fast cold start) when the index has its "
                                "exported query models, else torch, and exports them for the next search."),
) -> None:
    """Find the moments that match a sentence: ranked (motion, start-end s) with scores."""
    from engine.corpus.types import RequestError
    from engine.request import SearchRequest

    if like is not None:
        if query is not None or queries is not None or run_out is not None:
            fail("--like takes the place of a query: give no QUERY, --queries or --run-out with it")
        if source or any(x is not None for x in (min_motion_s, max_motion_s, min_moment_s, max_moment_s)):
            fail("--like does not take --source or the length filters")
        _search_like(like, include_self, k=k, limit=limit, per_motion=per_motion, index=index,
                     localizer=localizer, device=device, as_json=as_json, models=models)
        return
    if include_self:
        fail("--include-self goes with --like")
    if (query is None) == (queries is None):
        fail('give one query (engine search "kung fu pose") or --queries FILE')
    batch = _read_queries(queries) if queries is not None else [("1", query)]
    requests = []
    for qid, text in batch:
        try:
            requests.append((qid, SearchRequest(text, k=k, lam=lam, limit=limit, top_m=top_m, prune=not no_prune,
                                                r_mode=r_mode, score=score, gamma=gamma, mu=mu,
                                                per_motion=per_motion,
                                                sources=tuple(source or ()),
                                                min_motion_s=min_motion_s, max_motion_s=max_motion_s,
                                                min_moment_s=min_moment_s, max_moment_s=max_moment_s)))
        except RequestError as e:
            fail(f"query {qid}: {_request_error(e)}" if queries is not None and e.where == "query"
                 else _request_error(e))
    if run_out is not None:
        from engine.corpus.io import check_output_target

        check_output_target(run_out, force, flag="--run-out")
    if backend not in ("auto", "torch", "onnx"):
        fail(f"--backend {backend!r}: choose one of auto, torch, onnx")
    searcher = _open_searcher(index, localizer, device, models, backend=backend)
    results = [(qid, searcher.search(req)) for qid, req in requests]
    if run_out is not None:
        from engine.evaluate import run_meta_for
        from eval.runfile import rows_from_moments, write_run

        rows = [row for qid, res in results for row in rows_from_moments(qid, res.query, res.moments)]
        write_run(run_out, rows, meta=run_meta_for(searcher, "MLP", "engine search", requests[0][1]))
    if as_json:
        data = [{"query_id": qid, **res.to_dict()} for qid, res in results]
        print_json(data if queries is not None else data[0]["moments"])
        return
    from rich.console import Console
    from rich.table import Table

    # Piped or redirected output has no terminal width: use a wide table rather than rich's 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    for qid, res in results:
        total_ms = 1000 * sum(res.timings_s.values())
        t = Table(title=f'"{res.query}"  (k={res.k}, λ={res.lam:g}, localized {res.localized}, {total_ms:.0f} ms)')
        for col, just in (("#", "right"), ("motion", "left"), ("source file", "left"), ("start–end (s)", "right"),
                          ("score", "right"), ("p_se", "right"), ("r", "right"), ("label", "left")):
            t.add_column(col, justify=just)
        for m in res.moments:
            t.add_row(str(m.rank), f"{m.motion_id} {m.name}", m.path or m.source, f"{m.start_s:7.2f} – {m.end_s:7.2f}",
                      f"{m.score:.3f}", f"{m.p_se:.3f}", f"{m.r:.3f}", m.label or "")
        console.print(t)


def _index_for(index: Path | None, models: str | None) -> Path | None:
    """--index, or None for the built-in index of --models; both at once, or an unknown set: one error line."""
    if models is not None:
        if index is not None:
            fail("--models picks the built-in index's models; an --index was built with its own (give one of the two)")
        from engine.home import model_set

        try:
            model_set(models)
        except EngineError as e:
            fail(str(e))
    return index


def _open_searcher(index: Path | None, localizer: Path | None, device: str, models: str | None = None,
                   backend: str = "torch"):
    """The Searcher of `engine search` (the built-in index of the model set, prepared with progress, when
    `index` is None); a missing index or a bad --localizer / --device / --models / --backend is one
    error line."""
    from engine.search import load_searcher

    index = _index_for(index, models)
    if index is not None and not index.exists():
        fail(f"{index}: no such index; build one with `engine index build --corpus CORPUS_DIR --out {index} "
             "--model RUN_DIR`")
    try:
        with _progress() as prog:
            return load_searcher(index, localizer=localizer, device=device, progress=_bar_fn(prog),
                                 notify=lambda m: typer.echo(m, err=True), models=models, backend=backend)
    except EngineError as e:
        fail(str(e))


def _parse_like(spec: str) -> tuple[str, float, float]:
    """MOTION:START-END -> (motion, start_s, end_s); a bad spec is a one-line error naming --like."""
    motion, sep, span = spec.rpartition(":")
    start, dash, end = span.partition("-")
    if not sep or not motion.strip() or not dash:
        fail(f"--like {spec!r}: expected MOTION:START-END, e.g. --like 12:3.5-7 (seconds)")
    try:
        return motion.strip(), float(start), float(end)
    except ValueError:
        fail(f"--like {spec!r}: START and END must be numbers of seconds, e.g. --like 12:3.5-7")
        raise  # unreachable: fail exits


def _search_like(spec: str, include_self: bool, k: int, limit: int, per_motion: int, index: Path | None,
                 localizer: Path | None, device: str, as_json: bool, models: str | None = None) -> None:
    """`engine search --like MOTION:START-END`: "more like this" (engine/like.py), printed like a search."""
    from engine.corpus.types import EngineError, RequestError
    from engine.export import MotionNotFoundError, resolve_motion_id
    from engine.like import search_like
    from engine.request import LikeRequest

    motion, start_s, end_s = _parse_like(spec)
    searcher = _open_searcher(index, localizer, device, models)
    try:
        mid = resolve_motion_id(searcher.store, motion)
        res = search_like(searcher, LikeRequest(mid, start_s, end_s, k=k, limit=limit, per_motion=per_motion,
                                                include_self=include_self))
    except MotionNotFoundError as e:
        fail(f"--like: {e}")
    except RequestError as e:
        fail(f"--like {spec}: {e.where}: {e.problem}")
    except EngineError as e:
        fail(str(e))
    if as_json:
        print_json(res.to_dict()["moments"])
        return
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    info = searcher.motions[mid]
    total_ms = 1000 * sum(res.timings_s.values())
    t = Table(title=f"like {mid} {info.name} {res.request.start_s:.2f}–{res.request.end_s:.2f} s  "
                    f"(k={res.k}, {total_ms:.0f} ms)")
    for col, just in (("#", "right"), ("motion", "left"), ("source file", "left"), ("start–end (s)", "right"),
                      ("similarity", "right"), ("label", "left")):
        t.add_column(col, justify=just)
    for m in res.moments:
        t.add_row(str(m.rank), f"{m.motion_id} {m.name}", m.path or m.source, f"{m.start_s:7.2f} – {m.end_s:7.2f}",
                  f"{m.score:.3f}", m.label or "")
    console.print(t)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
