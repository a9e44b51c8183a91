"""Paired comparison of two models on the same queries: the per-query label match of two `fit_score.py
--report` files (one per model pair), with paired-bootstrap 95% intervals.

    python scripts/compare_reports.py NEW.json OLD.json [--set eval/queries/bandai-paraphrases-val.tsv]
        [--setting 'engine, fused'] [--json]

For every query set both reports hold (or `--set`), and each method (`--setting`: a prefix of the
method's name, e.g. 'engine, fused', 'sliding'), it prints NEW − OLD on P@10, nDCG@10 and AP@100 over the
queries both evaluated. Fitted weights may differ between the two reports; the queries must be the same
(same split sample, same query file), which is checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.labelmatch import compare_reports


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("new", type=Path)
    ap.add_argument("old", type=Path)
    ap.add_argument("--set", action="append", dest="sets", help="query set name (default: every common set)")
    ap.add_argument("--setting", default="engine, fused", help="method name prefix")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        reports = [json.loads(p.read_text()) for p in (args.new, args.old)]
        rows = compare_reports(*reports, sets=args.sets, prefix=args.setting)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"| query set | metric | {args.new.name} | {args.old.name} | difference [95% CI] | queries |")
    print("|---|---|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['set']} | {r['metric']} | {100 * r['new']:.1f} | {100 * r['old']:.1f} | "
              f"{100 * r['diff']:+.1f} [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}] | {r['n_queries']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
