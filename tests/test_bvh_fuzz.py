"""Fuzzing the BVH import with mutants of the real files in ../shared/data (issue 15).

Rule: every mutant either imports correctly (plausible joints, finite features) or is refused with a
`CorpusError` that names it; no other exception, and nothing already stored is lost. The slow suite runs
a few hundred seeded mutants; the default suite a small seeded sample.
"""

from __future__ import annotations

import gzip
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest

from engine.corpus import bvh
from engine.corpus.limits import check_plausible_joints
from engine.corpus.store import CorpusStore
from engine.corpus.types import CorpusError

DATA = Path(os.environ.get("ENGINE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
# Small real files of each family (set 1 plain, set 2 gzipped, CMU 131 and 135).
SOURCES = (
    "bandai-namco/set1/dataset-1_bow_normal_001.bvh",
    "bandai-namco/set1/dataset-1_walk_normal_001.bvh",
    "bandai-namco/set2/dataset-2_walk_normal_001.bvh.gz",
    "cmu/131_01.bvh",
    "cmu/135_04.bvh",
)
GOOD = "bandai-namco/set1/dataset-1_walk_normal_001.bvh"
ODD_VALUES = ("1e30", "-1e30", "1e308", "1e400", "nan", "-inf", "0", "-0", "abc", "-", "1e-300", "99999",
              "123456789012345678901234567890", "0x10", "1,5", "\u0661")
ODD_FRAME_TIMES = ("0", "-1", "1e6", "1e-9", "nan", "abc", "0.1", "0.00833333", "1e-4")


def _load(rel: str) -> bytes:
    p = DATA / rel
    return gzip.decompress(p.read_bytes()) if rel.endswith(".gz") else p.read_bytes()


_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _number_spans(text: bytes, in_motion: bool) -> list[tuple[int, int]]:
    cut = text.find(b"MOTION")
    lo, hi = (cut, min(len(text), cut + 200_000)) if in_motion else (0, cut)
    return [m.span() for m in _NUMBER.finditer(text, lo, hi)]


def mutate(text: bytes, rng: random.Random) -> tuple[bytes, str, bool]:
    """(mutant bytes, what was done, whether to corrupt the gzip stream itself)."""
    kind = rng.choice(("truncate", "flip", "value", "header_value", "frames", "frame_time", "drop_line",
                       "dup_line", "channels", "rename", "insert", "brace", "gzip_bytes"))
    b = bytearray(text)
    if kind == "truncate":
        n = rng.randrange(len(b))
        return bytes(b[:n]), f"truncate at {n}", False
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= rng.randrange(1, 256)
        return bytes(b), "flip bytes", False
    if kind in ("value", "header_value"):
        spans = _number_spans(text, in_motion=kind == "value")
        a, e = rng.choice(spans)
        v = rng.choice(ODD_VALUES).encode()
        return bytes(b[:a] + v + b[e:]), f"{kind} {text[a:e]!r} -> {v!r}", False
    if kind == "frames":
        m = re.search(rb"Frames:\s*(\d+)", text)
        n = int(m.group(1))
        v = str(rng.choice((0, 1, n - 1, n + 1, n * 2, 10**9, 10**15))).encode()
        return text[: m.start(1)] + v + text[m.end(1):], f"Frames {n} -> {v!r}", False
    if kind == "frame_time":
        m = re.search(rb"Frame Time:\s*(\S+)", text)
        v = rng.choice(ODD_FRAME_TIMES).encode()
        return text[: m.start(1)] + v + text[m.end(1):], f"Frame Time -> {v!r}", False
    lines = text.split(b"\n")
    header_end = next(i for i, ln in enumerate(lines) if ln.strip() == b"MOTION")
    if kind in ("drop_line", "dup_line"):
        i = rng.randrange(len(lines)) if rng.random() < 0.3 else rng.randrange(header_end + 3)
        if kind == "drop_line":
            del lines[i]
        else:
            lines.insert(i, lines[i])
        return b"\n".join(lines), f"{kind} {i}", False
    if kind == "channels":
        idx = [i for i in range(header_end) if b"CHANNELS" in lines[i]]
        i = rng.choice(idx)
        lines[i] = re.sub(rb"CHANNELS\s+(\d+)", lambda m: b"CHANNELS " + str(rng.choice((0, 2, 3, 7, 60))).encode(),
                          lines[i])
        return b"\n".join(lines), f"channels line {i}", False
    if kind == "rename":
        idx = [i for i in range(header_end) if b"JOINT" in lines[i] or b"ROOT" in lines[i]]
        i = rng.choice(idx)
        lines[i] = lines[i].rsplit(None, 1)[0] + b" " + rng.choice((b"Hips", b"x\xff\xfe", b"", b"{", b"JOINT"))
        return b"\n".join(lines), f"rename line {i}", False
    if kind == "insert":
        pos = rng.randrange(len(b))
        junk = rng.choice((b"\xef\xbb\xbf", b"\x00", b"\xff\xfe", b"}", b"{", b"End Site", b"MOTION\n",
                           bytes(rng.randrange(256) for _ in range(16))))
        return bytes(b[:pos] + junk + b[pos:]), f"insert {junk!r} at {pos}", False
    if kind == "brace":
        idx = [i for i in range(header_end) if lines[i].strip() in (b"{", b"}")]
        del lines[rng.choice(idx)]
        return b"\n".join(lines), "drop a brace", False
    return text, "gzip stream bytes", True


def make_mutants(out: Path, n: int, seed: int) -> list[tuple[Path, str]]:
    rng = random.Random(seed)
    texts = {rel: _load(rel) for rel in SOURCES}
    made = []
    for i in range(n):
        rel = SOURCES[i % len(SOURCES)]
        data, what, corrupt_gz = mutate(texts[rel], rng)
        gz = rel.endswith(".gz") or corrupt_gz
        path = out / f"mutant_{i:04d}.bvh{'.gz' if gz else ''}"
        if gz:
            packed = bytearray(gzip.compress(data, compresslevel=1))
            if corrupt_gz:
                for _ in range(rng.randint(1, 4)):
                    packed[rng.randrange(len(packed))] ^= rng.randrange(1, 256)
            path.write_bytes(bytes(packed))
        else:
            path.write_bytes(data)
        made.append((path, f"{rel}: {what}"))
    return made


def check_mutant(path: Path, what: str) -> str | None:
    """None when the rule holds for this mutant, else a description of the violation."""
    try:
        m = bvh.bvh_to_motion(path)
    except CorpusError as e:
        if str(path) not in str(e):
            return f"{what}: error does not name the file: {e}"
        return None
    except Exception as e:  # noqa: BLE001 - the rule under test: no other exception
        return f"{what}: {type(e).__name__}: {e}"
    try:
        assert m.joints.shape[1:] == (22, 3) and m.joints.shape[0] >= 2
        check_plausible_joints(m.joints, m.fps, str(path))
        assert m.features is not None and np.isfinite(m.features).all()
        assert m.features.shape == (m.joints.shape[0] - 1, 263)
    except (AssertionError, CorpusError) as e:
        return f"{what}: imported but implausible: {e}"
    return None


def run_fuzz(tmp_path: Path, n: int, seed: int) -> None:
    for rel in SOURCES:
        if not (DATA / rel).is_file():
            pytest.skip(f"shared data not found: {DATA / rel} (the fuzz test mutates real files from ../shared/data)")
    corpus = tmp_path / "corpus"
    with CorpusStore.open(corpus) as store:
        store.add_motions([bvh.bvh_to_motion(DATA / GOOD)])
        good_id = store.motion_id("bandai/dataset-1_walk_normal_001")
        good = store.get_motion(good_id)
    mdir = tmp_path / "mutants"
    mdir.mkdir()
    mutants = make_mutants(mdir, n, seed)
    violations = [v for p, w in mutants if (v := check_mutant(p, w)) is not None]
    assert not violations, "\n".join(violations[:20])
    errors: list[str] = []
    with CorpusStore.open(corpus) as store:
        report = store.add_motions(bvh.iter_bvh_motions([mdir], skip_bad=True, errors=errors), skip_bad=True)
        assert report.added + len(errors) + len(report.bad) == n
        assert all(any(p.name in e for p, _ in mutants) for e in errors + report.bad)
        still = store.get_motion(good_id)
        np.testing.assert_array_equal(still.joints, good.joints)
        np.testing.assert_array_equal(still.features, good.features)
        assert [a.text for a in still.annotations] == [a.text for a in good.annotations]
        assert store.stats().motions == 1 + report.added


def test_fuzz_sample(tmp_path):
    run_fuzz(tmp_path, n=20, seed=15)


@pytest.mark.slow
def test_fuzz_hundreds(tmp_path):
    run_fuzz(tmp_path, n=400, seed=2024)
