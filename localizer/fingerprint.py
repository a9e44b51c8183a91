"""Which localizer a run directory holds: `resolve_checkpoint` (best.pt, else last.pt) and
`localizer_fingerprint`, the sha256 of that checkpoint file. An index records the fingerprint of the
localizer whose motion encoding it caches (its manifest's `localizer`), and a searcher compares it with
its own (`Localizer.fingerprint()`).

Fingerprints are remembered per (file, size, mtime, inode), so one process hashes a checkpoint once
however often it asks; a rewritten or replaced file is hashed again.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from engine.corpus import io as corpus_io

CHECKPOINT_NAMES = ("best.pt", "last.pt")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint a localizer run directory selects (best.pt, else last.pt), or `path` itself for a file."""
    p = Path(path)
    if p.is_dir():
        for name in CHECKPOINT_NAMES:
            if (p / name).exists():
                return p / name
        raise FileNotFoundError(f"{p}: no best.pt or last.pt (train with `engine train localizer --run {p}`)")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    return p


def localizer_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of the localizer checkpoint a run directory (or checkpoint file) resolves to."""
    ckpt = resolve_checkpoint(path).resolve()
    st = ckpt.stat()
    return _checkpoint_sha256(str(ckpt), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _checkpoint_sha256(path: str, n_bytes: int, mtime_ns: int, inode: int) -> str:
    return corpus_io.sha256_file(path).sha256
