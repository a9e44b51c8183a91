"""The `engine data` commands, in-process with Typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from engine.cli import app
from engine.corpus.store import CorpusStore
from engine.corpus.types import Annotation, Motion

runner = CliRunner()


def _corpus(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "c"
    with CorpusStore.open(d) as s:
        s.add_motions([Motion(name=f"t/{i}", source="t", fps=20.0,
                              joints=rng.normal(size=(41, 22, 3)).astype(np.float32),
                              features=rng.normal(size=(40, 263)).astype(np.float32),
                              annotations=[Annotation("a person jumps", 0.5, 1.5)], split="test")
                       for i in range(2)])
    return d


def test_stats_json(tmp_path):
    d = _corpus(tmp_path)
    r = runner.invoke(app, ["data", "stats", str(d), "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert st["motions"] == 2 and st["annotations"] == 2 and st["duration_s"] == 4.1


def test_show_by_name_and_id(tmp_path):
    d = _corpus(tmp_path)
    r = runner.invoke(app, ["data", "show", str(d), "t/1", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["motion_id"] == 2 and info["annotations"][0]["text"] == "a person jumps"
    r = runner.invoke(app, ["data", "show", str(d), "1"])
    assert r.exit_code == 0 and "t/0" in r.stdout


def test_errors_go_to_stderr_with_nonzero_exit(tmp_path):
    r = runner.invoke(app, ["data", "stats", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "not a corpus directory" in r.stderr
    d = _corpus(tmp_path)
    r = runner.invoke(app, ["data", "show", str(d), "nope"])
    assert r.exit_code == 1 and "no motion named 'nope'" in r.stderr


def test_help_is_instant_and_imports_nothing_heavy():
    code = ("import sys; from engine.cli import app; "
            "heavy = [m for m in ('torch', 'faiss', 'numpy', 'sqlalchemy', 'transformers') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_search_rejects_bad_input_before_loading_anything(tmp_path):
    r = runner.invoke(app, ["search", "", "--index", str(tmp_path / "idx")])
    assert r.exit_code == 1 and "empty query" in r.stderr
    r = runner.invoke(app, ["search", "x" * 513, "--index", str(tmp_path / "idx")])
    assert r.exit_code == 1 and "limit is 512" in r.stderr
    r = runner.invoke(app, ["search", "kung fu pose", "--k", "0", "--index", str(tmp_path / "idx")])
    assert r.exit_code == 1 and "--k must be positive" in r.stderr
    r = runner.invoke(app, ["search", "kung fu pose", "--index", str(tmp_path / "idx")])
    assert r.exit_code == 1 and "engine index build" in r.stderr
    q = tmp_path / "q.txt"
    q.write_text("wave\n\n" + "y" * 600 + "\n")
    r = runner.invoke(app, ["search", "--queries", str(q), "--index", str(tmp_path / "idx")])
    assert r.exit_code == 1 and "query 3" in r.stderr


def test_search_refuses_a_corrupted_index(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    (d / "CURRENT").write_text("v-does-not-exist\n")
    r = runner.invoke(app, ["search", "kung fu pose", "--index", str(d)])
    assert r.exit_code == 1 and "cannot load the index" in r.stderr and "engine index verify" in r.stderr
