"""Package data tables (``engine/corpus/data/*.json``): data that the code reads, kept out of the code.

- ``synth_actions.json``: the actions of the procedural corpus (loaded by `engine.corpus.synth_actions`);
- ``bandai_phrases.json``: the sentences for the Bandai Namco labels (`engine.corpus.bvh`).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from engine.corpus.types import CorpusError


@cache
def _load(name: str) -> Any:
    where = f"engine/corpus/data/{name}"
    try:
        text = (resources.files("engine.corpus") / "data" / name).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise CorpusError(where, f"cannot read the package data table: {e}") from e


def load_table(name: str, key: str) -> Any:
    """The value under `key` of the JSON table `name` (parsed once; callers must not modify it)."""
    doc = _load(name)
    if not isinstance(doc, dict) or key not in doc:
        raise CorpusError(f"engine/corpus/data/{name}", f"missing key {key!r}")
    return doc[key]
