"""Durable file writes, shared by every layer: the one place that knows temp-name + fsync + rename.

- `atomic_write_bytes(path, data)` / `atomic_write_text(path, text)`: a whole file at once.
- `atomic_writer(path)`: a context manager that yields a temporary path beside `path` for writers that
  need a file name (Arrow, FAISS, torch.save); on success it is fsynced and renamed over `path`, on any
  error it is removed, so a failed write leaves nothing behind and never a half-written target.
- `check_output_target(path, force)`: what a command may write to a user's `--out`: absent, or an
  existing regular file with `force`; never a symlink, FIFO, device or directory.
- `sha256_file(path, keep_data=False)`: the one sha256-of-a-file helper (index checksums, checkpoint
  fingerprints). Callers use it through this module (`io.sha256_file`), so one patch sees every file hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.corpus.types import EngineError


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it is durable (no-op where directories have no fds)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike) -> Path:
    """A hidden temporary name beside `path`, unique to this process and thread; it keeps the suffix, for
    writers that pick a format by it (e.g. `.clip.gif.123-456.tmp.gif`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on normal exit fsync it and rename it over `path` (then fsync the directory).

    On an exception the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary name, fsync, rename over `path`, fsync the directory."""
    with atomic_writer(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_output_target(path: str | os.PathLike, force: bool = False, flag: str = "--out") -> Path:
    """The path a command may write a user-named output to, or an EngineError naming it.

    Allowed: a path that does not exist, or an existing regular file when `force`.
    Refused: symlinks, FIFOs, devices, sockets, directories (an atomic rename would replace them)."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p
    if stat.S_ISLNK(st.st_mode):
        raise EngineError(str(p), f"{flag} is a symbolic link; refusing to replace it (name the real file)")
    if stat.S_ISDIR(st.st_mode):
        raise EngineError(str(p), f"{flag} is a directory; name a file")
    if not stat.S_ISREG(st.st_mode):
        raise EngineError(str(p), f"{flag} is not a regular file (a device, FIFO or socket); refusing to write")
    if not force:
        raise EngineError(str(p), f"{flag} exists; pass --force to overwrite it")
    return p


@dataclass(frozen=True)
class FileDigest:
    """A file's sha256 and size; with `data`, the very bytes that were hashed (read once, so a caller that
    uses them has no window between the check and the use)."""

    sha256: str
    n_bytes: int
    data: bytes | None = None


def sha256_file(path: str | os.PathLike, keep_data: bool = False, block: int = 1 << 22) -> FileDigest:
    """sha256 of a file, streamed in blocks; `keep_data` also returns the bytes read."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        if keep_data:  # one read into one buffer (joining blocks copied a 90 MB graph once more)
            data = fh.read()
            h.update(data)
            return FileDigest(h.hexdigest(), len(data), data)
        while chunk := fh.read(block):
            h.update(chunk)
            n += len(chunk)
    return FileDigest(h.hexdigest(), n, None)


def load_weights(path: str | os.PathLike):
    """`torch.load(path, weights_only=True)` on the CPU: the one way checkpoints are read, so a file that holds
    anything but tensors and plain values is refused (never unpickled) with a one-line `ModelError` naming it
    (torch's own refusal is several paragraphs that suggest loading untrusted code)."""
    import pickle

    import torch

    from engine.corpus.types import ModelError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        text = str(e)
        if "Weights only load failed" in text or "WeightsUnpickler" in text or isinstance(e, pickle.UnpicklingError):
            raise ModelError(str(path), "not a checkpoint of weights (anything else is refused, never unpickled)") from e
        raise ModelError(str(path), f"unreadable checkpoint: {' '.join(text.split())[:300]}") from e
