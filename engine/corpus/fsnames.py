"""File names as the bytes they are.

On POSIX a file name is bytes; Python decodes it with ``surrogateescape``, so a name that is not UTF-8
(``b"walk\\xff.bvh"``) becomes a str holding lone surrogates (``"walk\\udcff.bvh"``). Such a str opens the
file fine but cannot be encoded: not into SQL, JSON, or a terminal. Here:

- `name_bytes`: the original bytes (for hashing, e.g. the deterministic train/val/test split);
- `storable`: a printable, encodable and stable form in which each undecodable byte is written as
  ``\\xNN`` (``"walk\\\\xff.bvh"``), used for motion names and paths in the store and for messages. Names
  that are valid UTF-8 are returned unchanged, so their keys do not change.
"""

from __future__ import annotations

import os


def name_bytes(name: str | os.PathLike) -> bytes:
    """The bytes of a (file) name: surrogate-escaped bytes restored, valid text as UTF-8."""
    s = os.fspath(name)
    if isinstance(s, bytes):
        return s
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that no decoder produced (e.g. from JSON \ud800 escapes)
        return s.encode("utf-8", "surrogatepass")


def storable(name: str | os.PathLike) -> str:
    """An encodable, stable text form of a name: undecodable bytes become ``\\xNN``."""
    s = os.fspath(name)
    if isinstance(s, bytes):
        return s.decode("utf-8", "backslashreplace")
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return name_bytes(s).decode("utf-8", "backslashreplace")


def display_path(path: str | os.PathLike) -> str:
    """A path for messages and for the store (see `storable`)."""
    return storable(os.fsdecode(path))
