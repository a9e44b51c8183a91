"""Chunk index: FAISS vs brute force, incremental = full rebuild, killed builds, verify and refusal to load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import indexer.stages as stages
from engine.corpus.store import CorpusStore
from engine.corpus.types import Annotation, CorpusError, Motion
from indexer.build import add_to_index, build_index, rebuild_index, remove_from_index, sync_index
from indexer.chunks import chunk_window, plan_chunks
from indexer.config import IndexConfig
from indexer.faiss_index import exact_topk
from indexer.index import open_index
from indexer.manifest import read_current, sha256_file, version_dir
from indexer.model import RetrievalConfig, RetrievalModel
from indexer.verify import verify
from indexer.versions import index_info, prune_versions

TINY = RetrievalConfig(d_model=32, n_layers=1, n_heads=2, ff_dim=64, embed_dim=16, text_hidden=None)
SMALL_BLOCKS = IndexConfig(block_chunks=32)


def _random_walk(i: int, n_frames: int, fps: float = 20.0, split: str = "test") -> Motion:
    rng = np.random.default_rng(1000 + i)
    joints = np.cumsum(rng.normal(0, 0.01, (n_frames, 22, 3)), axis=0).astype(np.float32)
    feats = np.cumsum(rng.normal(0, 0.1, (n_frames - 1, 263)), axis=0).astype(np.float32)
    return Motion(name=f"rw/{i}", source="rw", fps=fps, joints=joints, features=feats, split=split,
                  annotations=[Annotation("a person wanders", 0.0, min(1.0, n_frames / fps))])


LENGTHS = [(30, 20.0), (200, 20.0), (207, 20.0), (640, 20.0), (45, 20.0), (900, 30.0), (330, 20.0),
           (812, 20.0), (21, 20.0), (451, 30.0), (260, 20.0), (700, 20.0)]


@pytest.fixture
def corpus(tmp_path):
    store = CorpusStore.open(tmp_path / "corpus")
    store.add_motions([_random_walk(i, n, fps) for i, (n, fps) in enumerate(LENGTHS)])
    yield store
    store.close()


@pytest.fixture(scope="module")
def model():
    return RetrievalModel.random(TINY, seed=0)


def _queries(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _same_index(dir_a, dir_b) -> None:
    """Two index directories hold the same chunks, embeddings and search results."""
    a, b = open_index(dir_a), open_index(dir_b)
    for col in ("chunk_id", "motion_id", "start_frame", "end_frame", "start_s", "end_s"):
        np.testing.assert_array_equal(getattr(a.table, col), getattr(b.table, col))
    assert a.motions == b.motions
    ea, eb = a.embeddings(), b.embeddings()
    np.testing.assert_array_equal(ea.chunk_ids, eb.chunk_ids)
    np.testing.assert_allclose(ea.vectors, eb.vectors, atol=1e-5)
    q = _queries(16)
    (sa, ia), (sb, ib) = a.search(q, 10), b.search(q, 10)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, atol=1e-5)


# ---------------------------------------------------------------------------------------------- search
def test_flat_search_equals_brute_force(corpus, model, tmp_path):
    rep = build_index(corpus, tmp_path / "idx", model, SMALL_BLOCKS)
    n_chunks = sum(len(plan_chunks(0, n, fps)) for n, fps in LENGTHS)
    assert rep.n_chunks == n_chunks and rep.n_motions == len(LENGTHS) and rep.n_embedded == n_chunks
    assert rep.recall.recall == 1.0 and rep.stages_run == ["plan", "chunk", "embed", "bank", "write", "publish"]
    index = open_index(tmp_path / "idx")
    import faiss

    assert faiss.cvar.distance_compute_blas_threshold <= 16  # batch searches take the BLAS path
    emb = index.embeddings()
    q = _queries(64)
    scores, ids = index.search(q, 20)
    exact_s, exact_pos = exact_topk(q, emb.vectors, 20)
    np.testing.assert_allclose(scores, exact_s, atol=1e-5)
    gaps_ok = np.abs(np.diff(exact_s, axis=1)) > 1e-5  # ids may swap only between near-equal scores
    assert np.all((ids == emb.chunk_ids[exact_pos])[:, :-1] | ~gaps_ok)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)

    # Chunk rows describe the hit; r_i from top chunks equals the brute-force per-motion maximum.
    c = index.chunks(ids[0, :3])
    assert [x.chunk_id for x in c] == ids[0, :3].tolist()
    for x in c:
        m = index.motions[x.motion_id]
        assert 0.0 <= x.start_s < x.end_s <= m.duration_s + 1e-9
    mids, r_exact = index.motion_scores_exact(q)
    best = index.motion_best(q, top_chunks=len(index))
    for qi, hits in enumerate(best):
        assert len(hits.motion_ids) == len(LENGTHS)
        order = np.argsort(-r_exact[qi], kind="stable")
        np.testing.assert_allclose(hits.r, r_exact[qi][order], atol=1e-5)
        np.testing.assert_allclose(emb.vectors[index.table.rows(hits.chunk_ids)] @ q[qi], hits.r, atol=1e-5)
    # Top-k motions: the chunk search widens from 2 chunks until k motions are found; exact for flat.
    for qi, hits in enumerate(index.motion_best(q, top_chunks=2, k_motions=8)):
        order = np.argsort(-r_exact[qi], kind="stable")[:8]
        np.testing.assert_array_equal(hits.motion_ids, mids[order])
        np.testing.assert_allclose(hits.r, r_exact[qi][order], atol=1e-5)
    with pytest.raises(ValueError, match="dim"):
        index.search(np.zeros((1, 5), np.float32), 3)


def test_index_model_encodes_queries_like_the_build(corpus, model, tmp_path):
    build_index(corpus, tmp_path / "idx", model, SMALL_BLOCKS)
    index = open_index(tmp_path / "idx")
    loaded = index.load_model()
    assert loaded.fingerprint() == model.fingerprint() == index.manifest.model_fingerprint
    mid = index.table.motion_id[5]
    row = 5
    span = plan_chunks(int(mid), index.motions[int(mid)].n_frames, index.motions[int(mid)].fps)[
        int(index.table.chunk_index[row])]
    w = chunk_window(corpus.features(int(mid)), span, index.motions[int(mid)].fps, TINY.fps)
    np.testing.assert_allclose(loaded.encode_motion([w])[0], index.embeddings().vectors[row], atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_kinds_report_recall_and_verify(corpus, model, tmp_path, kind):
    rep = build_index(corpus, tmp_path / kind, model, IndexConfig(kind=kind, recall_queries=64))
    assert rep.recall is not None and 0.0 <= rep.recall.recall <= 1.0 and rep.recall.k == 10
    assert verify(tmp_path / kind).ok
    index = open_index(tmp_path / kind)
    assert index.manifest.faiss_kind == kind
    q = _queries(8)
    emb = index.embeddings()
    if kind == "ivf":  # probing every list is exact
        _, ids = index.search(q, 5, nprobe=10_000)
        _, exact_pos = exact_topk(q, emb.vectors, 5)
        np.testing.assert_array_equal(ids, emb.chunk_ids[exact_pos])
    if kind != "ivfpq":
        assert rep.recall.recall >= 0.9
    _, ids = index.search(q, 5)
    assert np.isin(ids[ids >= 0], emb.chunk_ids).all()


# ---------------------------------------------------------------------------------------------- incremental
def test_add_and_remove_equal_a_full_rebuild(corpus, model, tmp_path):
    build_index(corpus, tmp_path / "inc", model, SMALL_BLOCKS)
    new = corpus.add_motions([_random_walk(100, 333), _random_walk(101, 15), _random_walk(102, 1200)])
    added = add_to_index(tmp_path / "inc", corpus)
    new_chunks = sum(len(plan_chunks(0, n, 20.0)) for n in (333, 15, 1200))
    assert added.op == "add" and added.version == "000002" and added.n_embedded == new_chunks
    assert added.n_reused == added.n_chunks - new_chunks
    build_index(corpus, tmp_path / "full", model, SMALL_BLOCKS)
    _same_index(tmp_path / "inc", tmp_path / "full")

    gone = [new.motion_ids[1], 4]
    removed = remove_from_index(tmp_path / "inc", gone)
    assert removed.n_embedded == 0 and removed.version == "000003"
    corpus.remove_motions(gone)
    build_index(corpus, tmp_path / "full2", model, SMALL_BLOCKS)
    _same_index(tmp_path / "inc", tmp_path / "full2")
    assert verify(tmp_path / "inc", corpus=corpus).ok

    # Nothing new: the live version is already the answer.
    again = add_to_index(tmp_path / "inc", corpus)
    assert again.up_to_date and again.version == "000003"
    info = index_info(tmp_path / "inc")
    assert info.current == "000003" and [v.op for v in info.versions] == ["full", "add", "remove"]
    assert prune_versions(tmp_path / "inc", keep=1) == ["000001", "000002"]
    assert verify(tmp_path / "inc").ok


def test_sync_adds_and_removes_in_one_version(corpus, model, tmp_path):
    build_index(corpus, tmp_path / "idx", model, SMALL_BLOCKS)
    corpus.remove_motions([2])
    corpus.add_motions([_random_walk(200, 260)])
    rep = sync_index(tmp_path / "idx", corpus)
    assert rep.op == "sync" and rep.n_embedded == len(plan_chunks(0, 260, 20.0))
    build_index(corpus, tmp_path / "full", model, SMALL_BLOCKS)
    _same_index(tmp_path / "idx", tmp_path / "full")


def test_motion_features_cached_and_reused(corpus, model, tmp_path):
    calls = []

    def summary(features: np.ndarray) -> np.ndarray:
        calls.append(len(features))
        return np.stack([features.mean(0), features.std(0)])  # (2, 263)

    build_index(corpus, tmp_path / "idx", model, SMALL_BLOCKS, motion_feature_fn=summary,
                  motion_feature_tag="summary-v1")
    assert len(calls) == len(LENGTHS)
    index = open_index(tmp_path / "idx")
    np.testing.assert_allclose(index.motion_features(3), summary(np.asarray(corpus.features(3))), rtol=1e-6)
    assert index.motion_features(9999) is None and index.manifest.motion_feature_tag == "summary-v1"
    calls.clear()
    corpus.add_motions([_random_walk(300, 99)])
    with pytest.raises(CorpusError, match="motion_feature_fn"):
        add_to_index(tmp_path / "idx", corpus)
    add_to_index(tmp_path / "idx", corpus, motion_feature_fn=summary, motion_feature_tag="summary-v1")
    assert calls == [98]  # only the new motion
    remove_from_index(tmp_path / "idx", [1])  # needs no function: every remaining motion is re-used
    assert open_index(tmp_path / "idx").motion_features(1) is None
    assert verify(tmp_path / "idx").ok


# ---------------------------------------------------------------------------------------------- crashes
class Killed(RuntimeError):
    pass


def test_killed_embed_leaves_old_version_live_and_resumes(corpus, model, tmp_path, monkeypatch):
    idx = tmp_path / "idx"
    build_index(corpus, idx, model, SMALL_BLOCKS)
    corpus.add_motions([_random_walk(400 + i, 700) for i in range(3)])
    real = stages.embed_block
    calls = []

    def dies_on_third_block(b, spans, features_of):
        calls.append(len(spans))
        if len(calls) == 3:
            raise Killed("simulated kill in the embed stage")
        return real(b, spans, features_of)

    monkeypatch.setattr(stages, "embed_block", dies_on_third_block)
    with pytest.raises(Killed):
        add_to_index(idx, corpus)
    assert read_current(idx) == "000001"
    rep = verify(idx)
    assert rep.ok and rep.version == "000001" and any("unfinished" in w for w in rep.warnings)
    assert len(open_index(idx)) == len(open_index(idx).table)  # the old version still loads

    monkeypatch.setattr(stages, "embed_block", real)
    resumed = add_to_index(idx, corpus)
    new_chunks = 3 * len(plan_chunks(0, 700, 20.0))
    assert resumed.resumed and resumed.version == "000002"
    assert resumed.stages_run[0] == "embed" and resumed.n_embedded == new_chunks - 2 * 32
    assert verify(idx).ok and not verify(idx).warnings
    build_index(corpus, tmp_path / "full", model, SMALL_BLOCKS)
    _same_index(idx, tmp_path / "full")


@pytest.mark.parametrize("where", ["make_faiss_index", "set_current"])
def test_killed_write_or_publish_resumes_without_reembedding(corpus, model, tmp_path, monkeypatch, where):
    idx = tmp_path / "idx"
    build_index(corpus, idx, model, SMALL_BLOCKS)

    def boom(*a, **k):
        raise Killed(where)

    monkeypatch.setattr(stages, where, boom)
    with pytest.raises(Killed):
        build_index(corpus, idx, model, IndexConfig(block_chunks=32, kind="ivf"))
    assert read_current(idx) == "000001" and verify(idx).ok
    monkeypatch.undo()
    rep = build_index(corpus, idx, model, IndexConfig(block_chunks=32, kind="ivf"))
    assert rep.resumed and rep.n_embedded == 0 and rep.version == "000002"
    assert rep.stages_run == (["write", "publish"] if where == "make_faiss_index" else ["publish"])
    assert verify(idx).ok and open_index(idx).manifest.faiss_kind == "ivf"


def test_same_build_twice_is_up_to_date_and_force_rebuilds(corpus, model, tmp_path):
    build_index(corpus, tmp_path / "idx", model, SMALL_BLOCKS)
    assert build_index(corpus, tmp_path / "idx", model, SMALL_BLOCKS).up_to_date
    rep = rebuild_index(tmp_path / "idx")  # corpus, model and config from the live version
    assert rep.version == "000002" and not rep.up_to_date and rep.n_embedded == rep.n_chunks
    v1, v2 = open_index(tmp_path / "idx", version="000001"), open_index(tmp_path / "idx")
    assert v2.version == "000002"
    np.testing.assert_array_equal(v1.embeddings().chunk_ids, v2.embeddings().chunk_ids)
    np.testing.assert_allclose(v1.embeddings().vectors, v2.embeddings().vectors, atol=1e-6)


# ---------------------------------------------------------------------------------------------- corruption
@pytest.mark.parametrize("victim", ["index.faiss", "chunks.sqlite", "embeddings.arrow", "model.pt"])
def test_corrupted_file_is_detected_and_refused(corpus, model, tmp_path, victim):
    idx = tmp_path / "idx"
    build_index(corpus, idx, model, SMALL_BLOCKS)
    path = version_dir(idx, read_current(idx)) / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    rep = verify(idx)
    assert not rep.ok and any(victim in p and "checksum" in p for p in rep.problems)
    with pytest.raises(CorpusError, match="refusing to load"):
        open_index(idx)


def test_verify_checks_consistency_beyond_checksums(corpus, model, tmp_path):
    """A version whose files match their manifest but disagree with each other (e.g. a FAISS file
    from another build, re-hashed) is reported by the deep checks."""
    build_index(corpus, tmp_path / "a", model, SMALL_BLOCKS)
    corpus.remove_motions([1])
    build_index(corpus, tmp_path / "b", model, SMALL_BLOCKS)
    va, vb = version_dir(tmp_path / "a", "000001"), version_dir(tmp_path / "b", "000001")
    shutil.copyfile(vb / "index.faiss", va / "index.faiss")
    man = json.loads((va / "manifest.json").read_text())
    e = sha256_file(va / "index.faiss")
    man["files"]["index.faiss"] = {"sha256": e.sha256, "bytes": e.bytes}
    (va / "manifest.json").write_text(json.dumps(man))
    rep = verify(tmp_path / "a")
    assert not rep.ok and any("FAISS" in p for p in rep.problems)
    assert verify(tmp_path / "a", deep=False).ok


def test_missing_or_bad_pointer_and_manifest(tmp_path, corpus, model):
    assert not verify(tmp_path / "none").ok
    with pytest.raises(FileNotFoundError, match="no CURRENT"):
        open_index(tmp_path / "none")
    build_index(corpus, tmp_path / "idx", model, SMALL_BLOCKS)
    vdir = version_dir(tmp_path / "idx", "000001")
    (vdir / "manifest.json").write_text("{not json")
    rep = verify(tmp_path / "idx")
    assert not rep.ok and "unreadable manifest" in rep.problems[0]
    with pytest.raises(CorpusError, match="manifest"):
        open_index(tmp_path / "idx")
    (tmp_path / "idx" / "CURRENT").write_text("../../etc\n")
    assert not verify(tmp_path / "idx").ok


def test_bad_config_and_empty_corpus(tmp_path, model):
    with pytest.raises(ValueError, match="kind"):
        IndexConfig(kind="annoy")
    empty = CorpusStore.open(tmp_path / "empty")
    with pytest.raises(CorpusError, match="no motions"):
        build_index(empty, tmp_path / "idx", model)
    empty.close()


# ---------------------------------------------------------------------------------------------- window bank
BANK = IndexConfig(block_chunks=32, window_bank=True)


def _same_bank(dir_a, dir_b) -> None:
    a, b = open_index(dir_a).bank(), open_index(dir_b).bank()
    np.testing.assert_array_equal(a.motion_ids, b.motion_ids)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.spans_s, b.spans_s)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)


def test_window_bank_holds_every_window_embedded_on_its_own(corpus, model, tmp_path):
    from indexer.bank import plan_bank_windows
    from indexer.chunks import resample_window

    rep = build_index(corpus, tmp_path / "idx", model, BANK)
    assert "bank" in rep.stages_run
    index = open_index(tmp_path / "idx")
    assert index.has_bank and index.manifest.config["window_bank"] is True and "windows.arrow" in index.manifest.files
    bank = index.bank()
    for mid in (1, 3, 5, 8):  # 200 frames, 640 frames, 900 frames at 30 fps, 21 frames (no extra windows)
        feats = np.asarray(corpus.features(mid), np.float32)
        fps = index.motions[mid].fps
        win = plan_bank_windows(len(feats), fps, (2.0, 4.0, 6.0))
        assert len(feats) == index.motions[mid].n_frames - 1
        rows = bank.motion_ids == mid
        np.testing.assert_array_equal(bank.rows[rows], win)
        np.testing.assert_allclose(bank.spans_s[rows], win / fps)
        # The slow path: each window cut, resampled and encoded alone (the transformer has no context).
        slow = model.encode_motion([resample_window(feats[a:b], fps, model.config.fps) for a, b in win]) \
            if len(win) else np.zeros((0, 16))
        np.testing.assert_allclose(bank.vectors[rows], slow, atol=1e-5)
        spans, vecs = index.motion_windows(mid)
        cs, cv = index.motion_chunks(mid)
        assert len(spans) == len(cs) + len(win)
        np.testing.assert_array_equal(vecs[:len(cs)], cv)
    # Sizes: 2 s every 1 s, 4 s every 2 s, 6 s every 3 s (half the window), the last one at the motion's end.
    np.testing.assert_array_equal(plan_bank_windows(100, 20.0, (2.0,)),
                                  [[0, 40], [20, 60], [40, 80], [60, 100]])
    np.testing.assert_array_equal(plan_bank_windows(90, 20.0, (4.0,)), [[0, 80], [10, 90]])
    assert len(plan_bank_windows(30, 20.0, (2.0,))) == 0  # not shorter than the motion: the chunk covers it
    assert verify(tmp_path / "idx").ok


def test_window_bank_on_by_default_auto_only_for_the_window_encoder(corpus, model, tmp_path):
    assert IndexConfig().window_bank is True
    assert IndexConfig.from_dict({"kind": "flat"}).window_bank is False  # a manifest from before the bank
    build_index(corpus, tmp_path / "idx", model, IndexConfig(block_chunks=32, window_bank=None))  # auto
    index = open_index(tmp_path / "idx")
    assert not index.has_bank and index.manifest.config["window_bank"] is False
    spans, _ = index.motion_windows(3)
    np.testing.assert_array_equal(spans, index.motion_chunks(3)[0])
    assert len(index.bank().motion_ids) == 0


def test_window_bank_add_remove_sync_equal_a_full_rebuild(corpus, model, tmp_path):
    build_index(corpus, tmp_path / "inc", model, BANK)
    new = corpus.add_motions([_random_walk(100, 333), _random_walk(101, 15), _random_walk(102, 1200)])
    add_to_index(tmp_path / "inc", corpus)
    build_index(corpus, tmp_path / "full", model, BANK)
    _same_index(tmp_path / "inc", tmp_path / "full")
    _same_bank(tmp_path / "inc", tmp_path / "full")
    remove_from_index(tmp_path / "inc", [new.motion_ids[0], 4])
    corpus.remove_motions([new.motion_ids[0], 4])
    build_index(corpus, tmp_path / "full2", model, BANK)
    _same_bank(tmp_path / "inc", tmp_path / "full2")
    corpus.remove_motions([2])
    corpus.add_motions([_random_walk(200, 260)])
    sync_index(tmp_path / "inc", corpus)
    build_index(corpus, tmp_path / "full3", model, BANK)
    _same_bank(tmp_path / "inc", tmp_path / "full3")
    assert verify(tmp_path / "inc", corpus=corpus).ok


def test_window_bank_is_checksummed_and_checked(corpus, model, tmp_path):
    from indexer.bank import BankRows, read_bank, write_bank

    build_index(corpus, tmp_path / "idx", model, BANK)
    vdir = version_dir(tmp_path / "idx", read_current(tmp_path / "idx"))
    path = vdir / "windows.arrow"
    bank = read_bank(path)
    # Consistent bytes but wrong content (the manifest's sha256 re-recorded): verify's deep check finds it.
    shifted = BankRows(bank.motion_ids.copy(), bank.rows.copy() + 1, bank.spans_s.copy(), bank.vectors.copy())
    write_bank(path, shifted)
    man = json.loads((vdir / "manifest.json").read_text())
    entry = sha256_file(path)
    man["files"]["windows.arrow"] = {"sha256": entry.sha256, "bytes": entry.bytes}
    (vdir / "manifest.json").write_text(json.dumps(man))
    rep = verify(tmp_path / "idx")
    assert not rep.ok and any("window bank" in p for p in rep.problems)
    # A flipped byte: refused before anything reads it.
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert any("windows.arrow: checksum mismatch" in p for p in verify(tmp_path / "idx").problems)
    with pytest.raises(CorpusError, match="windows.arrow"):
        open_index(tmp_path / "idx")
    # A manifest whose config has a bank must list its file.
    del man["files"]["windows.arrow"]
    (vdir / "manifest.json").write_text(json.dumps(man))
    assert any("windows.arrow" in p for p in verify(tmp_path / "idx").problems)


def test_window_sims_equal_the_windows_times_the_query(corpus, model, tmp_path):
    build_index(corpus, tmp_path / "idx", model, BANK)
    index = open_index(tmp_path / "idx")
    q = _queries(1)[0]
    for mid in index.motions:
        spans, vecs = index.motion_windows(mid)
        s2, sims = index.motion_window_sims(mid, q)
        np.testing.assert_array_equal(spans, s2)
        np.testing.assert_allclose(sims, vecs @ q, atol=1e-6)
