"""Fit the fused score's weights (lam, gamma, mu) on a validation split, write score.json, report test.

    python scripts/fit_score.py --index IDX [--localizer RUN] [--split val] [--out RUN/score.json] \
        [--test-split test --test-max-queries 200] [--queries eval/queries/synth-paraphrases.tsv] \
        [--report docs/results/scoring/demo.json]

1. The queries of `--split` (every annotation, or a seeded `--max-queries` sample) are localized once over
   their top-k motions (engine/fitscore.py); every (lam, gamma, mu) of the grid re-ranks them with the
   engine's Ranker and is scored by label match; the best mean of P@10 and nDCG@10 wins (ties: the paper).
   `--fit-queries F ...`: validation (label, text) sets (e.g. eval/queries/bandai-paraphrases-val.tsv) join
   the fit, each set weighing as much as the split's queries.
2. The Searcher itself, with the chosen weights, must return exactly the re-ranked lists (self-check).
3. score.json (engine/scoring.py) is written beside the localizer (or `--out`), naming the localizer and
   retrieval model it is valid for; `SearchRequest(score="fused")` then uses it.
4. With `--test-split` / `--queries`: paper vs fused vs sliding windows vs retrieval only on those queries,
   with paired-bootstrap 95% intervals. These never feed back into the choice.

The fit never reads a test split: `--split test` is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _progress(stage: str, done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"  {stage}: {done}/{total}", file=sys.stderr, flush=True)


def _table(results, title: str) -> str:
    lines = [f"**{title}**", "", "| method | P@10 | nDCG@10 | mAP@100 | queries |", "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.setting} | {100 * r.precision[10]:.1f} | {100 * r.ndcg[10]:.1f} | {100 * r.map_at:.1f} "
                     f"| {r.n_queries} |")
    return "\n".join(lines)


def _diffs(diffs) -> str:
    return "\n".join(f"- {d.a} − {d.b}: {d.metric} {100 * d.mean:+.1f} [{100 * d.lo:+.1f}, {100 * d.hi:+.1f}]"
                     for d in diffs)


def compare_methods(searcher, queries, labels, spans, req, fused_w, progress=None):
    """Label match of paper, fused, sliding windows and retrieval only on one query set, and the paired
    bootstrap of paper and fused against every other method."""
    from engine.evaluate import retrieval_only_rows, sliding_window_cmr_rows
    from engine.fitscore import collect, rows_for
    from engine.scoring import PAPER
    from engine.windows import WindowBank
    from eval.labelmatch import compare, evaluate_label_match

    t0 = time.perf_counter()
    cands = collect(searcher, queries, req, progress=progress)
    t_loc = time.perf_counter() - t0
    paper = evaluate_label_match(rows_for(cands, PAPER, req), labels, spans, setting="engine, paper score (λ=5)")
    fused = evaluate_label_match(rows_for(cands, fused_w, req), labels, spans,
                                 setting=f"engine, fused score (λ={fused_w.lam:g} γ={fused_w.gamma:g} μ={fused_w.mu:g})")
    bank = WindowBank(searcher.index, searcher.retrieval, searcher.store, searcher.motions)
    t0 = time.perf_counter()
    sw = evaluate_label_match(sliding_window_cmr_rows(bank, searcher.index, searcher.retrieval, queries, req.k,
                                                      req.limit), labels, spans, setting=f"sliding windows k={req.k}")
    t_sw = time.perf_counter() - t0
    ro = evaluate_label_match(retrieval_only_rows(searcher, queries, req.limit), labels, spans,
                              setting="retrieval only (best 10 s chunk)")
    results = [fused, paper, sw, ro]
    diffs = [compare(a, b, metric=m) for a, b in ((fused, paper), (fused, sw), (fused, ro), (paper, sw), (paper, ro))
             for m in ("p@10", "ndcg@10", "ap@100")]
    return results, diffs, {"localize_s": t_loc, "sliding_window_s": t_sw, "bank_cached": bank.cached,
                            "windows_embedded": bank.windows_embedded}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True, type=Path)
    ap.add_argument("--localizer", type=Path, default=None, help="default: the index's")
    ap.add_argument("--split", default="val", help="the split the weights are fitted on (never test)")
    ap.add_argument("--max-queries", type=int, default=None, help="a seeded sample of the split (default: all)")
    ap.add_argument("--label-key", default=None, help="default: detected (synthetic action, Bandai content)")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=200, help="motions per localizer pass (speed only)")
    ap.add_argument("--r", dest="r_mode", default="moment", choices=("moment", "motion"))
    ap.add_argument("--lams", type=float, nargs="+", default=None)
    ap.add_argument("--mus", type=float, nargs="+", default=None)
    ap.add_argument("--gammas", type=float, nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=None, help="score.json to write (default: beside the localizer)")
    ap.add_argument("--no-write", action="store_true", help="report only")
    ap.add_argument("--test-split", default=None, help="also compare the methods on this split")
    ap.add_argument("--test-max-queries", type=int, default=None)
    ap.add_argument("--queries", type=Path, nargs="*", default=(), help="also compare on these (label, text) sets")
    ap.add_argument("--fit-queries", type=Path, nargs="*", default=(),
                    help="validation (label, text) sets that join the fit, each weighing as much as the split's "
                         "queries (e.g. eval/queries/bandai-paraphrases-val.tsv; never a test set)")
    ap.add_argument("--report", type=Path, default=None, help="write every table as JSON here")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.split == "test" or args.split == args.test_split:
        ap.error("fit on a validation split, never on the split you report (--split val)")
    if {p.resolve() for p in args.fit_queries} & {p.resolve() for p in args.queries}:
        ap.error("a query set that joins the fit (--fit-queries) cannot also be reported (--queries)")

    from engine import fitscore
    from engine.evaluate import detect_label_key, label_pool, read_labelled_queries, split_queries
    from engine.request import SearchRequest
    from engine.scoring import PAPER, FittedScore
    from engine.search import Searcher
    from eval.labelmatch import compare

    searcher = Searcher(args.index, localizer=args.localizer, device=args.device)
    annotations = {m: searcher.store.annotations(m) for m in searcher.motions}
    label_key = args.label_key or detect_label_key(annotations)
    if label_key is None:
        ap.error("the corpus's annotations carry no known label key; pass --label-key")
    spans = label_pool(annotations, label_key)
    _, queries, labels = split_queries(searcher.store, args.split, args.max_queries, label_key)
    queries = {q: t for q, t in queries.items() if q in labels}
    if not queries:
        ap.error(f"no labelled annotations in split {args.split!r}")
    groups = [list(queries)]
    for i, path in enumerate(args.fit_queries, 1):
        user = read_labelled_queries(path)
        extra = {f"f{i}-{j}": t for j, (_, t) in enumerate(user, 1)}
        queries.update(extra)
        labels.update({f"f{i}-{j}": lab for j, (lab, _) in enumerate(user, 1)})
        groups.append(list(extra))
    req = SearchRequest("fit", k=args.k, limit=args.limit, r_mode=args.r_mode, batch_size=args.batch_size)
    print(f"{args.index}: bank={'yes' if searcher.index.has_bank else 'no (chunks only)'}, {len(queries)} "
          f"{args.split} queries, label key {label_key!r}", flush=True)
    t0 = time.perf_counter()
    cands = fitscore.collect(searcher, queries, req, progress=_progress)
    t_loc = time.perf_counter() - t0
    weights = fitscore.grid(*(g for g in (args.lams or fitscore.LAMS, args.mus or fitscore.MUS,
                                          args.gammas or fitscore.GAMMAS)))
    t0 = time.perf_counter()
    rows = fitscore.fit(cands, labels, spans, req, weights, progress=_progress,
                        groups=groups if len(groups) > 1 else None)
    t_fit = time.perf_counter() - t0
    best = rows[0]
    paper = next(r for r in rows if r.weights == PAPER)
    print(f"\nval grid ({len(rows)} settings, localize {t_loc:.0f} s, grid {t_fit:.0f} s), top 10:")
    print("| λ | γ | μ | P@10 | nDCG@10 | mAP@100 |\n|---:|---:|---:|---:|---:|---:|")
    for r in rows[:10] + ([paper] if paper not in rows[:10] else []):
        d = r.to_dict()
        print(f"| {d['lam']:g} | {d['gamma']:g} | {d['mu']:g} | {100 * d['p@10']:.1f} | {100 * d['ndcg@10']:.1f} "
              f"| {100 * d['map@100']:.1f} |" + (" (paper)" if r is paper else ""))
    val_diffs = [compare(best.result, paper.result, metric=m) for m in ("p@10", "ndcg@10", "ap@100")]
    print("\nval, chosen − paper:\n" + _diffs(val_diffs))
    mismatches = {str(w): fitscore.self_check(searcher, cands, w, req) for w in {best.weights, PAPER}}
    print(f"self-check (Searcher vs re-ranked, first 10 queries, queries that differ): {mismatches}")
    if any(mismatches.values()):
        print("error: the Searcher does not reproduce the fit's ranking", file=sys.stderr)
        return 1
    w = best.weights
    print(f"\nchosen: lam={w.lam:g} gamma={w.gamma:g} mu={w.mu:g}")
    fit_info = {"index": str(args.index), "split": args.split, "n_queries": len(queries), "label_key": label_key,
                "fit_queries": [str(p) for p in args.fit_queries],
                "k": args.k, "r_mode": args.r_mode,
                "objective": "mean of label-match P@10 and nDCG@10" + (
                    ", each query set (the split's, each --fit-queries file) weighing equally" if len(groups) > 1
                    else ""),
                "val": best.to_dict(), "paper_val": paper.to_dict(),
                "val_vs_paper": [d.to_dict() for d in val_diffs], "grid_size": len(rows),
                "top": [r.to_dict() for r in rows[:20]]}
    if not args.no_write:
        out = args.out or (Path(searcher.score_file))
        FittedScore(w, searcher.localizer_fingerprint, searcher.index.manifest.model_fingerprint,
                    window_bank=searcher.index.has_bank, fit=fit_info).write(out)
        print(f"wrote {out}")

    report = {"fit": fit_info, "grid": [r.to_dict() for r in rows], "self_check": mismatches, "sets": {}}
    sets = []
    if args.test_split:
        _, tq, tl = split_queries(searcher.store, args.test_split, args.test_max_queries, label_key)
        sets.append((f"{args.test_split} split", {q: t for q, t in tq.items() if q in tl}, tl))
    for path in args.queries:
        user = read_labelled_queries(path)
        sets.append((str(path), {f"u{i}": t for i, (_, t) in enumerate(user, 1)},
                     {f"u{i}": lab for i, (lab, _) in enumerate(user, 1)}))
    for name, qs, ls in sets:
        results, diffs, info = compare_methods(searcher, qs, ls, spans, req, w, progress=_progress)
        print("\n" + _table(results, f"{name}, {len(qs)} queries (k={args.k}, {args.r_mode} r, top {args.limit})"))
        print(_diffs(diffs))
        report["sets"][name] = {"results": [{**r.to_dict(), "per_query": r.per_query} for r in results],
                                "comparisons": [d.to_dict() for d in diffs],
                                **info}
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
