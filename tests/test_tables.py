"""Package data tables: the synthetic action table and the Bandai sentences live in engine/corpus/data/*.json."""

from __future__ import annotations

import copy
import fnmatch
import json
from functools import partial
from pathlib import Path

import pytest

from engine.corpus import bvh, synth_actions
from engine.corpus.tables import load_table
from engine.corpus.types import CorpusError

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "engine" / "corpus" / "data"


def _package_data_patterns() -> list[str]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["engine"]


def test_data_files_are_package_data():
    patterns = _package_data_patterns()
    files = sorted(DATA_DIR.glob("*.json"))
    assert {f.name for f in files} >= {"synth_actions.json", "bandai_phrases.json"}
    for f in files:
        rel = f.relative_to(ROOT / "engine").as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in package-data {patterns}"
        json.loads(f.read_text(encoding="utf-8"))


def test_action_table_round_trips_to_the_action_specs():
    entries = json.loads((DATA_DIR / "synth_actions.json").read_text(encoding="utf-8"))["actions"]
    assert list(synth_actions.ACTIONS) == [e["name"] for e in entries]  # order: the planner iterates it
    sides = {"left": synth_actions.LEFT, "right": synth_actions.RIGHT}
    for e in entries:
        spec = synth_actions.ACTIONS[e["name"]]
        assert spec.texts == tuple(e["texts"]) and spec.test_texts == tuple(e["test_texts"])
        assert spec.texts and spec.test_texts and not set(spec.texts) & set(spec.test_texts)
        assert spec.group == e["group"] and spec.dur_s == tuple(e["dur_s"]) and 0 < spec.dur_s[0] <= spec.dur_s[1]
        assert spec.long_ok == e.get("long_ok", False) and spec.gait == e.get("gait", False)
        assert spec.free_side == e.get("free_side", False) and spec.state == tuple(e.get("state", ("stand", "stand")))
        func, kw = (spec.fn.func, spec.fn.keywords) if isinstance(spec.fn, partial) else (spec.fn, {})
        assert func is synth_actions.PROGRAMS[e["program"]]
        if "gait_params" in e:
            g = kw["g"]
            assert synth_actions.Gait(**e["gait_params"]) == g
            assert spec.travel_m_s == tuple(e.get("travel_m_s", (g.lateral_m_s, g.forward_m_s)))
        for k, v in e.get("args", {}).items():
            want = sides[v] if k == "side" else tuple(sides[s] for s in v) if k == "sides" else v
            assert kw[k] == want, (e["name"], k)
    assert synth_actions.action_texts("wave_left", "test") == synth_actions.ACTIONS["wave_left"].test_texts


def test_adding_an_action_is_a_table_change_and_bad_entries_are_named():
    entries = copy.deepcopy(load_table("synth_actions.json", "actions"))
    new = dict(copy.deepcopy(entries[0]), name="wave_twice", program="wave", args={"sides": ["left", "right"]})
    actions = synth_actions.load_actions(entries + [new])
    assert list(actions)[-1] == "wave_twice" and actions["wave_twice"].fn.keywords["sides"] == (1, -1)
    with pytest.raises(CorpusError, match="duplicate action name 'idle'"):
        synth_actions.load_actions(entries + [entries[0]])
    with pytest.raises(CorpusError, match="'moonwalk'"):
        synth_actions.load_actions([dict(entries[0], name="x", program="moonwalk")])
    with pytest.raises(CorpusError, match="action 'y'"):
        synth_actions.load_actions([{k: v for k, v in entries[0].items() if k != "texts"} | {"name": "y"}])


def test_bandai_phrases_come_from_the_table():
    doc = json.loads((DATA_DIR / "bandai_phrases.json").read_text(encoding="utf-8"))
    assert bvh.BANDAI_CONTENT_PHRASES == {k: tuple(v) for k, v in doc["content"].items()}
    assert bvh.BANDAI_STYLE_PHRASES == {k: tuple(v) for k, v in doc["style"].items()}
    c, s = doc["content"]["bow"], doc["style"]["sad"]
    assert set(bvh.bandai_sentences("bow", "sad")) == {f"a person {a}{b}" for a in c for b in s}
