"""Diagnosis: a copy of a query TSV with each query replaced by its nearest training wording (raw MiniLM
cosine), when the cosine is >= GATE. Validation sets only.

    python docs/results/models/mix3/val/snap_to_wordings.py eval/queries/bandai-paraphrases-val.tsv OUT.tsv 0
"""

import csv
import sys

from engine.corpus.bvh import BANDAI_CONTENT_PHRASES
from engine.corpus.sentences import content_wordings
from engine.corpus.text import SentenceEncoder

src, dst, gate = sys.argv[1], sys.argv[2], float(sys.argv[3])
rows = [r for r in csv.reader(open(src), delimiter="\t") if r and not r[0].startswith("#") and r[0] != "label"]
wordings = sorted({w.replace("{s}", "").strip() for c in BANDAI_CONTENT_PHRASES for w in content_wordings(c)})
enc = SentenceEncoder()
sims = enc.encode([r[1] for r in rows]) @ enc.encode(wordings).T
with open(dst, "w") as f:
    f.write("label\ttext\n")
    for r, s in zip(rows, sims):
        j = int(s.argmax())
        print(f"{s[j]:.2f} {r[0]:>18} | {r[1]:<42} -> {wordings[j]}")
        f.write(f"{r[0]}\t{wordings[j] if s[j] >= gate else r[1]}\n")
