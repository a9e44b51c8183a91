"""The index / retrieval command bodies, mounted on a Typer app and run in-process with CliRunner."""

from __future__ import annotations

import json

import numpy as np
import typer
from typer.testing import CliRunner

from engine.corpus.store import CorpusStore
from engine.corpus.types import Annotation, Motion
from indexer.cli import eval_retrieval_cmd, make_index_app, train_retrieval_cmd
from indexer.model import RetrievalConfig, RetrievalModel

app = typer.Typer()
app.add_typer(make_index_app(), name="index")
train_app = typer.Typer()
train_app.command("retrieval")(train_retrieval_cmd)
eval_app = typer.Typer()
eval_app.command("retrieval")(eval_retrieval_cmd)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
runner = CliRunner()


def _corpus(path, n=4, start=0):
    rng = np.random.default_rng(start)
    with CorpusStore.open(path) as s:
        s.add_motions([Motion(name=f"c/{i}", source="c", fps=20.0,
                              joints=rng.normal(size=(61 + 40 * i, 22, 3)).astype(np.float32),
                              features=rng.normal(size=(60 + 40 * i, 263)).astype(np.float32),
                              annotations=[Annotation("a person jumps", 0.5, 2.5)], split="test")
                       for i in range(start, start + n)])


def test_index_commands_end_to_end(tmp_path):
    _corpus(tmp_path / "c")
    model = RetrievalModel.random(RetrievalConfig(d_model=32, n_layers=1, n_heads=2, ff_dim=64, embed_dim=16,
                                                  text_hidden=None), seed=0)
    model.save(tmp_path / "m.pt")
    idx = str(tmp_path / "idx")
    r = runner.invoke(app, ["index", "build", "--corpus", str(tmp_path / "c"), "--out", idx,
                            "--model", str(tmp_path / "m.pt"), "--json"])
    assert r.exit_code == 0, r.output
    built = json.loads(r.stdout)
    assert built["version"] == "000001" and built["n_motions"] == 4 and built["recall"]["recall"] == 1.0

    _corpus(tmp_path / "c", n=1, start=10)
    r = runner.invoke(app, ["index", "add", idx, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["op"] == "add" and json.loads(r.stdout)["n_motions"] == 5
    r = runner.invoke(app, ["index", "remove", idx, "--motion", "1", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["n_motions"] == 4
    r = runner.invoke(app, ["index", "rebuild", idx, "--kind", "hnsw", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["version"] == "000004"
    r = runner.invoke(app, ["index", "verify", idx, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"]
    r = runner.invoke(app, ["index", "info", idx])
    assert r.exit_code == 0 and "hnsw" in r.stdout and "000004" in r.stdout
    r = runner.invoke(app, ["index", "prune", idx, "--keep", "1", "--json"])
    assert json.loads(r.stdout)["removed"] == ["000001", "000002", "000003"]

    r = runner.invoke(app, ["eval", "retrieval", "--corpus", str(tmp_path / "c"), "--run", str(tmp_path / "m.pt"),
                            "--json"])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["split"] == "test" and ev["n_pairs"] == 5 and 0.0 <= ev["text_to_motion"]["r1"] <= 1.0

    # A corrupted live file: verify exits 1 naming it.
    from indexer.manifest import version_dir

    f = version_dir(idx, "000004") / "index.faiss"
    f.write_bytes(f.read_bytes()[:-8])
    r = runner.invoke(app, ["index", "verify", idx])
    assert r.exit_code == 1 and "index.faiss" in r.output and "checksum" in r.output


def test_index_build_errors_are_clear(tmp_path):
    r = runner.invoke(app, ["index", "build", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "i")])
    assert r.exit_code == 1 and "not a corpus directory" in r.output
    _corpus(tmp_path / "c", n=1)
    r = runner.invoke(app, ["index", "build", "--corpus", str(tmp_path / "c"), "--out", str(tmp_path / "i"),
                            "--kind", "annoy"])
    assert r.exit_code == 1 and "annoy" in r.output
    r = runner.invoke(app, ["index", "verify", str(tmp_path / "i")])
    assert r.exit_code == 1 and "CURRENT" in r.output
