"""Mean fit objective of each (lam, gamma, mu) over several `fit_score.py --report` grids; prints the top points.

    python docs/results/models/mix3/combine_grids.py fit-bandai-val.json fit-demo-val.json
"""

import json
import sys

grids = [{(r["lam"], r["gamma"], r["mu"]): r["objective"] for r in json.load(open(p))["grid"]} for p in sys.argv[1:]]
common = set.intersection(*(set(g) for g in grids))
rows = sorted(((sum(g[k] for g in grids) / len(grids), k, [g[k] for g in grids]) for k in common), reverse=True)
for mean, k, per in rows[:12]:
    print(f"λ={k[0]:g} γ={k[1]:g} μ={k[2]:g}: mean {mean:.4f}  per corpus {' '.join(f'{x:.4f}' for x in per)}")
