"""Command-line bodies for the retrieval model and the chunk index, ready for `engine/cli.py` to mount:

    from indexer.cli import make_index_app, train_retrieval_cmd, eval_retrieval_cmd
    app.add_typer(make_index_app(factory), name="index")   # engine index build|rebuild|add|remove|sync|verify|info|prune
    train_app.command("retrieval")(train_retrieval_cmd)    # engine train retrieval --corpus DIR --run runs/NAME
    eval_app.command("retrieval")(eval_retrieval_cmd)      # engine eval retrieval --corpus DIR --run runs/NAME

Heavy imports stay inside the command bodies so `engine --help` is instant. Errors go to stderr with a
non-zero exit; `--json` prints machine-readable results.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import typer

from engine.corpus.progress import StageBars

# (localizer run dir, device=...) -> (features -> the array to cache per motion, the localizer's sha256).
# The application layer (engine/cli.py) passes one to `make_index_app`: the indexer never imports the
# localizer, it only stores what this callable returns per motion.
MotionFeatureFactory = Callable[..., tuple[Callable, str]]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


_Bars = StageBars  # the one progress helper (engine/corpus/progress.py)


class _LocalizerFeatures:
    """`--localizer RUN` -> (motion_feature_fn, tag, LocalizerRef), or (None, None, None) without one."""

    def __init__(self, factory: MotionFeatureFactory | None):
        self.factory = factory

    def __call__(self, localizer: Path | None, device: str | None):
        from indexer.manifest import LocalizerRef

        if localizer is None:
            return None, None, None
        if self.factory is None or not localizer.exists():
            _fail(f"{localizer}: no such localizer run (or no localizer support in this application)")
        fn, tag = self.factory(localizer, device=device or "cpu")
        return fn, tag, LocalizerRef(path=str(localizer.resolve()), sha256=tag)


def _open_corpus(corpus: Path):
    from engine.corpus.store import CorpusStore
    from engine.corpus.types import EngineError

    try:
        return CorpusStore.open(corpus, create=False)
    except FileNotFoundError as e:
        _fail(str(e))
    except EngineError as e:  # a damaged corpus (unreadable database, missing or resized part file)
        _fail(str(e), 2)


def open_training_corpora(corpora: list[str]):
    """One corpus (a plain store), or several `DIR[:WEIGHT]` as a CorpusMix; a clear error otherwise."""
    from engine.corpus.mix import CorpusSpec, open_mix
    from engine.corpus.types import EngineError

    if not corpora:
        _fail("give at least one --corpus")
    try:
        specs = [CorpusSpec.parse(c) for c in corpora]
        if len(specs) == 1 and specs[0].weight == 1.0:
            return _open_corpus(specs[0].path), [specs[0].to_dict()]
        return open_mix(specs), [sp.to_dict() for sp in specs]
    except EngineError as e:
        _fail(str(e), 2)


def _load_model(model: Path | None, device: str | None):
    from indexer.model import RetrievalModel, load_retrieval

    if model is None:
        typer.echo("warning: no --model given: using an untrained, seeded retrieval model (search results are "
                   "meaningless; train one with `engine train retrieval`)", err=True)
        return RetrievalModel.random(seed=0)
    try:
        return load_retrieval(model, device=device)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))


def _embed_backend(backend: str, address: str | None, num_cpus: int | None, workers: int | None):
    """The build's embed backend for `--backend` (None: this process); exits with a message when unusable."""
    from indexer.ray_backend import BACKENDS, RayOptions, RayUnavailable, make_backend

    if backend not in BACKENDS:
        _fail(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "local" and (address or num_cpus or workers):
        typer.echo("warning: --ray-* options are ignored without --backend ray", err=True)
    try:
        return make_backend(backend, RayOptions(address=address, num_cpus=num_cpus, num_workers=workers))
    except RayUnavailable as e:
        _fail(str(e))


def _report_build(rep, as_json: bool) -> None:
    if as_json:
        _print_json(rep.to_dict())
        return
    if rep.up_to_date:
        typer.echo(f"{rep.index_dir}: version {rep.version} is up to date ({rep.n_motions} motions, "
                   f"{rep.n_chunks} chunks)")
        return
    recall = f", recall@{rep.recall.k} vs exact {rep.recall.recall:.3f}" if rep.recall else ""
    typer.echo(f"{rep.index_dir}: version {rep.version} live ({rep.op}{', resumed' if rep.resumed else ''}): "
               f"{rep.n_motions} motions, {rep.n_chunks} chunks, {rep.n_embedded} embedded "
               f"({rep.chunks_per_s:.1f}/s), {rep.n_reused} re-used, {rep.seconds:.1f} s{recall}")


BACKEND_OPTION = typer.Option("local", "--backend",
                              help="local | ray: embed the chunks in this process or on Ray Data workers.")
RAY_ADDRESS_OPTION = typer.Option(None, "--ray-address", help="Ray cluster to use ('auto', 'ray://HOST:10001'); "
                                  "default: start a local Ray for this build.")
RAY_NUM_CPUS_OPTION = typer.Option(None, "--ray-num-cpus", min=1,
                                   help="CPUs of the local Ray started for this build (default: all).")
RAY_WORKERS_OPTION = typer.Option(None, "--ray-workers", min=1,
                                  help="Embed workers, 1 CPU each (default: one per cluster CPU).")


def _build_command(features: _LocalizerFeatures, after_build: Callable[[Path], None] | None = None) -> Callable:
    """`engine index build`, with `--localizer` served by `features`; `after_build(index_dir)` runs after a
    build with a localizer (the engine exports the ONNX query models there)."""

    def index_build(
        corpus: Path = typer.Option(..., "--corpus", help="Corpus directory."),
        out: Path = typer.Option(..., "--out", help="Index directory (created; new builds become new versions)."),
        model: Path | None = typer.Option(None, "--model", help="Retrieval run directory or checkpoint."),
        kind: str = typer.Option("flat", "--kind", help="flat | ivf | hnsw | ivfpq"),
        dtype: str = typer.Option("fp32", "--dtype", help="fp32 | bf16 chunk encoder"),
        split: str | None = typer.Option(None, "--split", help="Index only this split (default: all motions)."),
        window_s: float = typer.Option(10.0, "--window-s"),
        stride_s: float = typer.Option(1.0, "--stride-s"),
        batch_size: int = typer.Option(64, "--batch-size"),
        window_bank: bool = typer.Option(
            True, "--window-bank/--no-window-bank",
            help="Cache 2/4/6 s windows (stride half the window) with their embeddings: the fused score's span "
                 "similarity (about 0.6x the chunk embedding time with a transformer retrieval model)."),
        device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
        force: bool = typer.Option(False, "--force", help="Build even when the live version is up to date."),
        localizer: Path | None = typer.Option(None, "--localizer",
                                              help="Localizer run: cache its query-independent motion encoding."),
        backend: str = BACKEND_OPTION,
        ray_address: str | None = RAY_ADDRESS_OPTION,
        ray_num_cpus: int | None = RAY_NUM_CPUS_OPTION,
        ray_workers: int | None = RAY_WORKERS_OPTION,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Chunk every motion (10 s windows, 1 s stride), embed the chunks and write a new index version."""
        from engine.corpus.types import CorpusError
        from indexer.build import build_index
        from indexer.config import IndexConfig

        try:
            config = IndexConfig(kind=kind, dtype=dtype, split=split, window_s=window_s, stride_s=stride_s,
                                 batch_size=batch_size, window_bank=window_bank)
        except ValueError as e:
            _fail(str(e))
        embed_backend = _embed_backend(backend, ray_address, ray_num_cpus, ray_workers)
        fn, tag, loc_ref = features(localizer, device)
        store = _open_corpus(corpus)
        m = _load_model(model, device)
        try:
            with _Bars() as bars:
                rep = build_index(store, out, m, config, device=device, progress=bars, force=force,
                                  motion_feature_fn=fn, motion_feature_tag=tag, embed_backend=embed_backend,
                                  localizer=loc_ref)
        except (CorpusError, RuntimeError) as e:
            _fail(f"{e}\n(the previous version, if any, is still live; re-run to resume)")
        finally:
            store.close()
        _report_build(rep, as_json)
        if after_build is not None and loc_ref is not None:
            after_build(out)

    return index_build


def index_rebuild(
    index_dir: Path = typer.Argument(..., help="Index directory."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Default: the corpus the live version read."),
    model: Path | None = typer.Option(None, "--model", help="Default: the live version's model."),
    kind: str | None = typer.Option(None, "--kind", help="Default: the live version's kind."),
    window_bank: bool | None = typer.Option(
        None, "--window-bank/--no-window-bank",
        help="Cache the window bank (default: as the live version)."),
    device: str | None = typer.Option(None, "--device"),
    backend: str = BACKEND_OPTION,
    ray_address: str | None = RAY_ADDRESS_OPTION,
    ray_num_cpus: int | None = RAY_NUM_CPUS_OPTION,
    ray_workers: int | None = RAY_WORKERS_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Full rebuild into a new version (e.g. after training a new model or to change the FAISS kind)."""
    import dataclasses

    from engine.corpus.types import CorpusError
    from indexer.build import rebuild_index
    from indexer.config import IndexConfig
    from indexer.versions import index_info

    embed_backend = _embed_backend(backend, ray_address, ray_num_cpus, ray_workers)
    info = index_info(index_dir)
    if info.manifest is None:
        _fail(f"{index_dir}: no live index version to rebuild; use `engine index build`")
    config = IndexConfig.from_dict(info.manifest.config)
    if kind:
        try:
            config = dataclasses.replace(config, kind=kind)
        except ValueError as e:
            _fail(str(e))
    if window_bank is not None:
        config = dataclasses.replace(config, window_bank=window_bank)
    store = _open_corpus(corpus) if corpus else None
    m = _load_model(model, device) if model else None
    try:
        with _Bars() as bars:
            rep = rebuild_index(index_dir, store, m, config, device=device, progress=bars,
                                embed_backend=embed_backend)
    except (CorpusError, RuntimeError, FileNotFoundError) as e:
        _fail(str(e))
    _report_build(rep, as_json)


def _add_command(features: _LocalizerFeatures) -> Callable:
    """`engine index add`, with `--localizer` served by `features`."""

    def index_add(
        index_dir: Path = typer.Argument(..., help="Index directory."),
        corpus: Path | None = typer.Option(None, "--corpus", help="Default: the corpus the live version read."),
        motion: list[int] | None = typer.Option(None, "--motion", help="Motion ids (default: all not indexed)."),
        device: str | None = typer.Option(None, "--device"),
        localizer: Path | None = typer.Option(None, "--localizer",
                                              help="Localizer run whose motion encoding the index caches."),
        backend: str = BACKEND_OPTION,
        ray_address: str | None = RAY_ADDRESS_OPTION,
        ray_num_cpus: int | None = RAY_NUM_CPUS_OPTION,
        ray_workers: int | None = RAY_WORKERS_OPTION,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """New version with motions added; only their chunks are embedded."""
        from engine.corpus.types import CorpusError
        from indexer.build import add_to_index

        fn, tag, loc_ref = features(localizer, device)
        store = _open_corpus(corpus) if corpus else None
        embed_backend = _embed_backend(backend, ray_address, ray_num_cpus, ray_workers)
        try:
            with _Bars() as bars:
                rep = add_to_index(index_dir, store, motion or None, device=device, progress=bars,
                                   motion_feature_fn=fn, motion_feature_tag=tag, embed_backend=embed_backend,
                                   localizer=loc_ref)
        except (CorpusError, RuntimeError, FileNotFoundError) as e:
            _fail(str(e))
        _report_build(rep, as_json)

    return index_add


def index_remove(
    index_dir: Path = typer.Argument(..., help="Index directory."),
    motion: list[int] = typer.Option(..., "--motion", help="Motion ids to remove."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """New version without the given motions (nothing is re-embedded)."""
    from engine.corpus.types import CorpusError
    from indexer.build import remove_from_index

    try:
        rep = remove_from_index(index_dir, motion)
    except (CorpusError, RuntimeError, FileNotFoundError) as e:
        _fail(str(e))
    _report_build(rep, as_json)


def index_sync(
    index_dir: Path = typer.Argument(..., help="Index directory."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Default: the corpus the live version read."),
    device: str | None = typer.Option(None, "--device"),
    backend: str = BACKEND_OPTION,
    ray_address: str | None = RAY_ADDRESS_OPTION,
    ray_num_cpus: int | None = RAY_NUM_CPUS_OPTION,
    ray_workers: int | None = RAY_WORKERS_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """New version matching the corpus: new motions added, deleted ones removed."""
    from engine.corpus.types import CorpusError
    from indexer.build import sync_index

    store = _open_corpus(corpus) if corpus else None
    embed_backend = _embed_backend(backend, ray_address, ray_num_cpus, ray_workers)
    try:
        with _Bars() as bars:
            rep = sync_index(index_dir, store, device=device, progress=bars, embed_backend=embed_backend)
    except (CorpusError, RuntimeError, FileNotFoundError) as e:
        _fail(str(e))
    _report_build(rep, as_json)


def index_verify(
    index_dir: Path = typer.Argument(..., help="Index directory."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Also compare with this corpus."),
    quick: bool = typer.Option(False, "--quick", help="Checksums only (no FAISS/SQL/Arrow cross-checks)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check the live version: file checksums, then FAISS <-> SQL <-> Arrow consistency. Exit 1 on problems."""
    from indexer.verify import verify

    store = _open_corpus(corpus) if corpus else None
    rep = verify(index_dir, corpus=store, deep=not quick)
    if as_json:
        _print_json(rep.to_dict())
    else:
        typer.echo(f"{index_dir}: version {rep.version}: {'OK' if rep.ok else 'PROBLEMS'} "
                   f"({rep.files_checked} files, {rep.n_motions} motions, {rep.n_chunks} chunks)")
        for p in rep.problems:
            typer.echo(f"problem: {p}", err=True)
        for w in rep.warnings:
            typer.echo(f"warning: {w}", err=True)
    if not rep.ok:
        raise typer.Exit(1)


def index_info_cmd(
    index_dir: Path = typer.Argument(..., help="Index directory."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The live version's manifest summary and every version."""
    from indexer.versions import index_info

    info = index_info(index_dir)
    if as_json:
        _print_json(info.to_dict())
        return
    if info.manifest is None:
        _fail(f"{index_dir}: no live index version")
    m = info.manifest
    typer.echo(f"{index_dir}: version {info.current}, {m.faiss_kind} ({m.faiss_class}), dim {m.dim}, "
               f"{m.n_motions} motions, {m.n_chunks} chunks, model {m.model_fingerprint[:12]}, "
               f"corpus {m.corpus.get('dir')}")
    for v in info.versions:
        state = "live" if v.current else ("complete" if v.complete else "unfinished")
        typer.echo(f"  {v.version}  {state:10s} {v.op or '-':6s} {v.n_chunks or '-'} chunks  {v.created_utc or ''}")


def index_prune(
    index_dir: Path = typer.Argument(..., help="Index directory."),
    keep: int = typer.Option(2, "--keep", help="Complete versions to keep (the live one always stays)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Delete old versions and unfinished builds."""
    from indexer.versions import prune_versions

    removed = prune_versions(index_dir, keep=keep)
    if as_json:
        _print_json({"removed": removed})
    else:
        typer.echo(f"removed versions: {', '.join(removed) or 'none'}")


def make_index_app(motion_feature_factory: MotionFeatureFactory | None = None,
                   after_build: Callable[[Path], None] | None = None) -> typer.Typer:
    """The `engine index ...` sub-app. `motion_feature_factory` serves `--localizer RUN` (build, add):
    it gives the function whose output the index caches per motion and the localizer's sha256, recorded
    in the manifest; without one, `--localizer` is refused. `after_build(index_dir)`: called after
    `build --localizer` (the engine's exports the query models for the fast search path)."""
    app = typer.Typer(help="Build, update and check the FAISS chunk index.", no_args_is_help=True)
    features = _LocalizerFeatures(motion_feature_factory)
    app.command("build")(_build_command(features, after_build))
    app.command("rebuild")(index_rebuild)
    app.command("add")(_add_command(features))
    app.command("remove")(index_remove)
    app.command("sync")(index_sync)
    app.command("verify")(index_verify)
    app.command("info")(index_info_cmd)
    app.command("prune")(index_prune)
    return app


def train_retrieval_cmd(
    corpus: list[str] = typer.Option(..., "--corpus",
                                     help="Corpus directory (train/val splits); repeat to mix corpora, each as "
                                          "DIR or DIR:WEIGHT (its share of the training draws)."),
    run: Path = typer.Option(..., "--run", help="Run directory, e.g. runs/retrieval (re-run to resume)."),
    epochs: int = typer.Option(40, "--epochs"),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(1e-4, "--lr"),
    warmup_epochs: int = typer.Option(5, "--warmup-epochs", help="Epochs summing all violations."),
    d_model: int = typer.Option(256, "--d-model"),
    n_layers: int = typer.Option(3, "--layers"),
    arch: str = typer.Option("transformer", "--arch",
                             help="Motion encoder: transformer (one pass per window) | window (one conv pass "
                                  "per motion, windows pooled from it; fast index builds)."),
    window_pool: str = typer.Option("mean", "--window-pool", help="Pooling of the window encoder: mean | attn."),
    seed: int = typer.Option(0, "--seed"),
    text_variants: bool = typer.Option(False, "--text-variants",
                                       help="Each step draws one of the moment's wordings (labelled corpora)."),
    label_negatives: bool = typer.Option(False, "--label-negatives",
                                         help="Moments with different known labels are never dropped as "
                                              "false negatives (left vs right, one style vs another)."),
    hard_negatives: float = typer.Option(0.0, "--hard-negatives", min=0.0, max=0.5,
                                         help="Share of each batch filled with same-content, other-style/side "
                                              "partners of its first items."),
    feature_noise: float = typer.Option(0.0, "--feature-noise", min=0.0,
                                        help="Gaussian input noise, in units of each feature's std."),
    init: Path | None = typer.Option(None, "--init",
                                     help="Fine-tune: start from this trained model (run directory or .pt); "
                                          "pass the model options it was trained with."),
    freeze_motion: bool = typer.Option(False, "--freeze-motion",
                                       help="With --init: train the text projection only; the motion encoder "
                                            "(and every motion vector) stays as the init model made it."),
    text_noise: float = typer.Option(0.0, "--text-noise", min=0.0, max=2.0,
                                     help="Each step moves every sentence embedding by a random vector of this "
                                          "norm (unit embeddings; 0.5 is about a paraphrase's distance)."),
    label_balance: float = typer.Option(0.0, "--label-balance", min=0.0, max=1.0,
                                        help="Draw a content's moments with weight n**-B (n: its count in its "
                                             "corpus): 0 off, 1 every content equally often."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train the text-motion retrieval model (DropTriple loss), selecting the checkpoint on 'val' (the
    union of the corpora's val splits)."""
    from engine.corpus.types import CorpusError
    from indexer.model import RetrievalConfig
    from indexer.train import TrainConfig, train_retrieval

    try:
        mcfg = RetrievalConfig(d_model=d_model, n_layers=n_layers, arch=arch, window_pool=window_pool)
    except ValueError as e:
        _fail(str(e), code=2)
    store, recorded = open_training_corpora(corpus)
    config = TrainConfig(model=mcfg, epochs=epochs,
                         batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs, seed=seed,
                         corpora=recorded if len(recorded) > 1 else None, text_variants=text_variants,
                         label_negatives=label_negatives, hard_negative_frac=hard_negatives,
                         feature_noise=feature_noise, init=str(init) if init else None,
                         freeze_motion=freeze_motion, text_noise=text_noise,
                         label_balance=label_balance)
    try:
        with _Bars() as bars:
            rep = train_retrieval(store, run, config, progress=bars, device=device)
    except (CorpusError, ValueError) as e:
        _fail(str(e))
    finally:
        store.close()
    out = {"run_dir": rep.run_dir, "epochs_done": rep.epochs_done, "best_epoch": rep.best_epoch,
           "resumed_from_epoch": rep.resumed_from_epoch, "seconds": round(rep.seconds, 1),
           "best_val": rep.best_val.to_dict() if rep.best_val else None}
    if as_json:
        _print_json(out)
    else:
        v = rep.best_val
        val = (f"val R@1/5/10 t2m {v.text_to_motion.r1:.3f}/{v.text_to_motion.r5:.3f}/{v.text_to_motion.r10:.3f}"
               if v else "no val split")
        typer.echo(f"{run}: {rep.epochs_done} epochs, best epoch {rep.best_epoch} ({val}), {rep.seconds:.0f} s")


def eval_retrieval_cmd(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus directory."),
    run: Path = typer.Option(..., "--run", help="Run directory or checkpoint."),
    split: str = typer.Option("test", "--split"),
    device: str | None = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Full-gallery retrieval: R@1/5/10 and median rank, text->motion and motion->text."""
    from indexer.train import evaluate_retrieval

    m = _load_model(run, device)
    store = _open_corpus(corpus)
    try:
        rep = evaluate_retrieval(m, store, split)
    finally:
        store.close()
    if as_json:
        _print_json(rep.to_dict())
        return
    typer.echo(f"{split}: {rep.n_pairs} pairs")
    for name, d in (("text->motion", rep.text_to_motion), ("motion->text", rep.motion_to_text)):
        typer.echo(f"  {name}: R@1 {d.r1:.3f}  R@5 {d.r5:.3f}  R@10 {d.r10:.3f}  MedR {d.median_rank:g}")
