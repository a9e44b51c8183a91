#!/bin/bash
# usage: val.sh NAME INDEX [LOCALIZER] -> val split (60 q) + val paraphrases P@10 with the shipped weights; report in docs/results/models/mix3/val/NAME.json
NAME=$1; IDX=$2; LOC=${3:+--localizer $3}
python3 scripts/fit_score.py --index $IDX $LOC --split val --max-queries 60 --lams 1 --gammas 0.5 --mus 10 --no-write \
  --queries eval/queries/bandai-paraphrases-val.tsv --report docs/results/models/mix3/val/$NAME.json 2>&1 | grep -v "localize:\|grid:" > docs/results/models/mix3/val/$NAME.log
grep "^| 1 \|^| engine, \|sliding\|retrieval only (best" docs/results/models/mix3/val/$NAME.log | head -5
