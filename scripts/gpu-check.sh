#!/usr/bin/env bash
# The prepared GPU check (issue 13, part 4): the whole path on CUDA when a device is present, in under
# 8 minutes, figures to one JSON file. Never required: CI and the tests stay CPU-only.
#
#   bash scripts/gpu-check.sh [OUT_JSON] [gpu_check.py options]   # default OUT_JSON: $OUT/gpu-check.json
#   bash scripts/gpu-check.sh /tmp/g.json --device cpu --quick      # CPU smoke test (about a minute)
#
# On a bare machine with no registry (the device machine): first, where pip works,
#   bash scripts/gpu-check-prepare.sh       # wheels into .whl/, the MiniLM shape into .gpucheck/
# then carry both (device `run` with carry [".whl", ".gpucheck"]) and run this script there. It installs
# the carried wheels into /tmp/gpu-check-site (nothing else is installed or fetched) and runs the project
# from this checkout (PYTHONPATH), under the machine's own torch. What is missing degrades to a recorded
# reason in the JSON (e.g. faiss without GPU support), never to a failed run of the other steps.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_JSON="${OUT:-.}/gpu-check.json"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT_JSON="$1"; shift; fi
PY="${PYTHON:-python3}"
LIMIT_S="${GPU_CHECK_LIMIT_S:-470}"   # hard stop (the driver stops starting steps at --budget-s 450)

if ls .whl/*.whl >/dev/null 2>&1; then
  for whl in .whl/*.whl; do   # one at a time: a wheel for another Python must not stop the others
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site "$whl" >/dev/null 2>&1 \
      && echo "gpu-check: installed $(basename "$whl")" >&2 \
      || echo "gpu-check: could not install $(basename "$whl") here; going on without it" >&2
  done
  export PYTHONPATH="/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2

timeout "$LIMIT_S" "$PY" scripts/gpu_check.py --out "$OUT_JSON" "$@"
rc=$?
if [ $rc -eq 124 ]; then
  echo "gpu-check: stopped at the ${LIMIT_S} s limit; $OUT_JSON holds the steps that finished" >&2
fi
exit $rc
