"""The per-motion feature file round-trips exactly through its buffer-level reader (which avoids pyarrow's
pandas-importing `to_numpy`), for empty, single and many motions of different shapes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from indexer.arrow_io import read_motion_features, write_motion_features


@pytest.mark.parametrize("n", [0, 1, 7])
def test_motion_features_round_trip(tmp_path, n):
    rng = np.random.default_rng(n)
    feats = {int(i): rng.standard_normal((int(rng.integers(1, 40)), 5)).astype(np.float32)
             for i in rng.choice(1000, size=n, replace=False)}
    p = tmp_path / "f.arrow"
    write_motion_features(p, feats)
    got = read_motion_features(p)
    assert set(got) == set(feats)
    for k, v in feats.items():
        assert got[k].dtype == np.float32 and np.array_equal(got[k], v)


def test_reading_features_does_not_import_pandas(tmp_path):
    p = tmp_path / "f.arrow"
    write_motion_features(p, {3: np.ones((4, 2), np.float32)})
    code = (f"import sys; from pathlib import Path; from indexer.arrow_io import read_motion_features; "
            f"read_motion_features(Path({str(p)!r})); print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
