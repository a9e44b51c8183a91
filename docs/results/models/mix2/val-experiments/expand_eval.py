"""Tried, not shipped: kNN query expansion over the training wordings, scored on the val paraphrases.

    PYTHONPATH=. python docs/results/models/mix2/val-experiments/expand_eval.py ALPHA N TAU INDEX

The query's projection is blended with the projections of its N nearest training wordings (raw MiniLM
cosine, softmax at temperature TAU, weight ALPHA); RetrievalModel.encode_text is patched for this run only.
"""

import runpy
import sys

import numpy as np

import indexer.model as im
from engine.corpus.bvh import BANDAI_CONTENT_PHRASES
from engine.corpus.sentences import content_wordings

alpha, n, tau = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
orig = im.RetrievalModel.encode_text
state = {}


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def enc(self, texts):
    p = orig(self, texts)
    if alpha == 0:
        return p
    if "raw" not in state:
        words = sorted({w.replace("{s}", "") for c in BANDAI_CONTENT_PHRASES for w in content_wordings(c)})
        state["raw"], state["proj"] = _unit(self.text_encoder.encode(words)), orig(self, words)
    sims = _unit(self.text_encoder.encode(list(texts))) @ state["raw"].T
    top = np.argsort(-sims, axis=1)[:, :n]
    out = []
    for i in range(len(texts)):
        s = sims[i, top[i]]
        w = np.exp((s - s.max()) / tau)
        e = p[i] + alpha * ((w / w.sum()) @ state["proj"][top[i]])
        out.append(e / np.linalg.norm(e))
    return np.stack(out).astype(np.float32)


im.RetrievalModel.encode_text = enc
sys.argv = ["fit_score", "--index", sys.argv[4], "--split", "val", "--max-queries", "20", "--lams", "0",
            "--gammas", "0.25", "--mus", "10", "--no-write", "--queries", "eval/queries/bandai-paraphrases-val.tsv"]
runpy.run_path("scripts/fit_score.py", run_name="__main__")
