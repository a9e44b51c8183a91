"""Training data for real motion: augmentation (engine data augment), corpus mixes with weights, sentence
variants, labelled hard negatives, and the two trainers on a mix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from engine.cli import app
from engine.corpus import augment, synth
from engine.corpus.mix import (
    CorpusSpec,
    group_weights,
    label_group,
    open_mix,
    sampling_order,
    sampling_weights,
)
from engine.corpus.sentences import label_key, training_texts
from engine.corpus.skeleton import PARENTS
from engine.corpus.store import CorpusStore
from engine.corpus.types import Annotation, CorpusError, Motion
from indexer.model import RetrievalConfig, drop_triple_loss
from indexer.train import Pair, TrainConfig, collect_pairs, hard_partners, label_masks, train_retrieval

REPO = Path(__file__).resolve().parents[1]
TINY = RetrievalConfig(d_model=16, n_layers=1, n_heads=2, ff_dim=32, embed_dim=16, text_hidden=None, dropout=0.0)


def _bandai_like(m: Motion) -> Motion:
    """A synthetic motion relabelled with Bandai-style content/style labels (left/right in the content)."""
    contents = ["wave-left-hand", "wave-right-hand", "walk"]
    styles = ["happy", "tired"]
    for i, a in enumerate(m.annotations):
        c, s = contents[i % 3], styles[(i // 3) % 2]
        a.extra = {"content": c, "style": s, "take": f"t{i}"}
        a.text = training_texts(Annotation("", 0, 1, extra=a.extra))[1]
    return m


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    a, b = root / "a", root / "b"
    with CorpusStore.open(a) as s:
        s.add_motions(synth.generate("tiny", seed=1))
    with CorpusStore.open(b) as s:
        s.add_motions([_bandai_like(m) for m in synth.generate("tiny", seed=2)])
    return a, b


# ---------------------------------------------------------------------------------------------- augment
def _bones(j: np.ndarray) -> np.ndarray:
    return np.linalg.norm(j[:, 1:] - j[:, list(PARENTS[1:])], axis=-1)


def test_mirror_swaps_sides_in_joints_text_and_labels():
    m = next(iter(synth.generate("tiny", seed=4)))
    m.annotations = [Annotation("a person waves the left hand", 1.0, 2.0, "s0",
                                {"content": "wave-left-hand", "style": "happy", "take": "left-take"})]
    out = augment.augment_motion(m, augment.AugmentSpec(mirror=True))
    assert out.annotations[0].text == "a person waves the right hand"
    assert out.annotations[0].extra["content"] == "wave-right-hand"
    assert out.annotations[0].extra["take"] == "left-take"  # names are not relabelled
    assert not np.allclose(out.joints, m.joints)
    back = augment.augment_motion(out, augment.AugmentSpec(mirror=True))
    np.testing.assert_allclose(back.joints, m.joints, atol=1e-6)
    assert back.annotations[0].text == m.annotations[0].text and out.name.endswith("~mirror")


def test_speed_resamples_time_and_scales_annotations():
    m = next(iter(synth.generate("tiny", seed=5)))
    n = m.joints.shape[0]
    fast = augment.augment_motion(m, augment.AugmentSpec(speed=1.25))
    assert fast.joints.shape[0] == round((n - 1) / 1.25) + 1
    for a, b in zip(m.annotations, fast.annotations):
        assert b.start_s == pytest.approx(a.start_s / 1.25) and b.end_s <= a.end_s / 1.25 + 1e-9
    # frame i of the fast copy is the source at time 1.25 i (exact at integer source frames)
    np.testing.assert_allclose(fast.joints[4], m.joints[5], atol=1e-6)
    slow = augment.resample_time(m.joints, 0.5)
    np.testing.assert_allclose(slow[1], (m.joints[0] + m.joints[1]) / 2, atol=1e-6)


def test_proportions_scale_each_limb_group_within_the_amplitude():
    m = next(iter(synth.generate("tiny", seed=6)))
    out = augment.augment_motion(m, augment.AugmentSpec(proportions=0.1))
    ratio = _bones(out.joints)[0] / _bones(m.joints)[0]  # (21,) bone j+1 vs its parent
    for group in (augment.LEG_JOINTS, augment.ARM_JOINTS):
        r = ratio[[j - 1 for j in group]]
        assert np.all((r > 0.9 - 1e-4) & (r < 1.1 + 1e-4)) and np.ptp(r) < 1e-3  # one factor per group
    assert not np.allclose(ratio, 1.0, atol=1e-3)
    # bone lengths stay constant over time (a rigid skeleton)
    np.testing.assert_allclose(_bones(out.joints), np.broadcast_to(_bones(out.joints)[0], _bones(out.joints).shape),
                               atol=1e-4)


def test_specs_and_refusals():
    tags = [s.tag for s in augment.specs(True, [0.8, 1.2], 0.0)]
    assert tags == ["speed0.8", "speed1.2", "mirror+speed0.8", "mirror", "mirror+speed1.2"]
    assert augment.specs(False, [1.0], 0.0) == []
    with pytest.raises(CorpusError, match="speed"):
        augment.specs(False, [9.0], 0.0)
    with pytest.raises(CorpusError, match="training split"):
        next(augment.augmented_motions(None, augment.specs(True, [1], 0), split="test"))


def test_cli_augment_writes_train_copies_only_and_is_idempotent(corpora, tmp_path):
    src, _ = corpora
    runner = CliRunner()
    args = ["data", "augment", "--corpus", str(src), "--out", str(tmp_path / "aug"), "--mirror", "--speeds",
            "1,1.2", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    with CorpusStore.open(src, create=False) as s:
        n_train = len(s.motion_ids(split="train"))
        n_ann = sum(len(s.annotations(i)) for i in s.motion_ids(split="train"))
    out = json.loads(r.stdout)
    assert out["added"] == 3 * n_train and out["corpus_stats"]["by_split"] == {"train": 3 * n_train}
    with CorpusStore.open(tmp_path / "aug", create=False) as s:
        anns = sum(len(s.annotations(i)) for i in s.motion_ids())
        f = s.features(s.motion_ids()[0])
    assert anns <= 3 * n_ann and anns >= 3 * n_ann - n_train and np.isfinite(f).all()
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["added"] == 0 and again["skipped_existing"] == 3 * n_train
    r = runner.invoke(app, ["data", "augment", "--corpus", str(src), "--out", str(tmp_path / "none")])
    assert r.exit_code != 0 and "nothing to do" in r.output


# ---------------------------------------------------------------------------------------------- mix
def test_corpus_spec_parsing():
    assert CorpusSpec.parse("corpora/demo") == CorpusSpec(Path("corpora/demo"), 1.0)
    assert CorpusSpec.parse("corpora/bandai:2.5") == CorpusSpec(Path("corpora/bandai"), 2.5)
    assert CorpusSpec.parse("odd:name").path == Path("odd:name")
    with pytest.raises(CorpusError, match="positive"):
        CorpusSpec.parse("corpora/x:0")


def test_mix_global_ids_read_through_and_weights(corpora):
    a, b = corpora
    with open_mix([CorpusSpec(a, 1.0), CorpusSpec(b, 3.0)]) as mix, \
            CorpusStore.open(a, create=False) as sa, CorpusStore.open(b, create=False) as sb:
        ids = mix.motion_ids()
        assert ids == list(range(len(sa.motion_ids()) + len(sb.motion_ids())))
        assert mix.motion_ids(split="train") == [i for i in ids if mix.get_motion(i, arrays=False).split == "train"]
        last = ids[-1]
        si, mid = mix.source_of(last)
        assert si == 1 and mid == sb.motion_ids()[-1]
        np.testing.assert_array_equal(mix.features(last), sb.features(mid))
        assert mix.get_motion(last, arrays=False).motion_id == last
        assert [x.text for x in mix.annotations(last)] == [x.text for x in sb.annotations(mid)]
        items = [i for i in ids for _ in range(1 + i % 3)]  # uneven items per motion and per corpus
        p = mix.pair_weights(items)
        src = np.array([mix.source_of(i)[0] for i in items])
        assert p.sum() == pytest.approx(1.0)
        assert p[src == 0].sum() == pytest.approx(0.25) and p[src == 1].sum() == pytest.approx(0.75)
        with pytest.raises(KeyError):
            mix.source_of(10_000)
    with pytest.raises(CorpusError, match="no such corpus"):
        open_mix([CorpusSpec(a), CorpusSpec(a.parent / "missing")])


def test_sampling_order():
    rng = np.random.default_rng(0)
    assert sorted(sampling_order(rng, 10, None)) == list(range(10))
    probs = np.array([0.7] + [0.3 / 9] * 9)
    draws = sampling_order(np.random.default_rng(1), 20_000, np.repeat(probs / 2000, 2000))
    assert abs(np.mean(draws < 2000) - 0.7) < 0.02


def _naive_group_weights(sources, weights, groups, balance):
    """The definition, item by item: a corpus's share, then n_g ** -balance over its items' total."""
    present = sorted(set(sources))
    total_w = sum(weights[s] for s in present)
    out = []
    for i, s in enumerate(sources):
        mine = [j for j in range(len(sources)) if sources[j] == s]
        def w(j):
            return sum(1 for k in mine if groups[k] == groups[j]) ** -balance
        out.append(weights[s] / total_w * w(i) / sum(w(j) for j in mine))
    return np.array(out)


def test_label_balance_weights_against_the_definition():
    rng = np.random.default_rng(3)
    sources = rng.integers(0, 3, 60)
    sources[sources == 2] = 1  # corpus 2 absent: its weight is not handed out
    groups = [str(g) if g < 4 else None for g in rng.choice(5, 60, p=[0.6, 0.2, 0.1, 0.05, 0.05])]
    for balance in (0.0, 0.5, 1.0):
        p = group_weights(sources, [1.0, 3.0, 5.0], groups, balance)
        np.testing.assert_allclose(p, _naive_group_weights(sources, [1.0, 3.0, 5.0], groups, balance), rtol=1e-12)
        assert p.sum() == pytest.approx(1.0)
        assert p[sources == 0].sum() == pytest.approx(0.25) and p[sources == 1].sum() == pytest.approx(0.75)
    # balance 1: every group of a corpus gets the same share of its draws; 0: every item the same
    p = group_weights(sources, [1.0, 3.0], groups, 1.0)
    for s in (0, 1):
        mass = {g: p[(sources == s) & (np.array(groups, dtype=object) == g)].sum() for g in set(groups)}
        present = [m for g, m in mass.items() if any(sources[i] == s and groups[i] == g for i in range(60))]
        np.testing.assert_allclose(present, present[0])
    p0 = group_weights(sources, [1.0, 3.0], groups, 0.0)
    np.testing.assert_allclose(p0[sources == 0], p0[sources == 0][0])
    # a rare group is drawn about as often as a common one
    rare = group_weights(np.zeros(11, int), [1.0], ["a"] * 10 + ["b"], 1.0)
    draws = np.concatenate([sampling_order(np.random.default_rng(i), 11, rare) for i in range(4000)])
    assert abs(np.mean(draws == 10) - 0.5) < 0.02
    with pytest.raises(ValueError, match=">= 0"):
        group_weights(sources, [1.0, 1.0], groups, -1.0)
    with pytest.raises(ValueError, match="group labels"):
        group_weights(sources, [1.0, 1.0], groups[:3], 1.0)
    assert label_group("wave-left-hand|happy") == "wave-left-hand" and label_group(None) is None


def test_trainers_balance_over_contents_not_styles(corpora):
    """The label balance groups a Bandai corpus's moments by content (style ignored, side kept), inside
    each corpus's share of the mix, for both trainers."""
    from localizer.data import load_data

    a, b = corpora
    with open_mix([CorpusSpec(a, 1.0), CorpusSpec(b, 1.0)]) as mix, CorpusStore.open(b, create=False) as sb:
        pairs = collect_pairs(mix, "train")
        mids, labels = [p.motion_id for p in pairs], [p.label for p in pairs]
        p = sampling_weights(mix, mids, labels, 1.0)
        in_b = np.array([mix.source_of(m)[0] == 1 for m in mids])
        contents = np.array([label_group(lb) or "" for lb in labels], dtype=object)
        share = {c: p[in_b & (contents == c)].sum() for c in set(contents[in_b])}
        assert set(share) == {"wave-left-hand", "wave-right-hand", "walk"}
        np.testing.assert_allclose(list(share.values()), 0.5 / 3)
        np.testing.assert_allclose(p, mix.pair_weights(mids, [label_group(lb) for lb in labels], 1.0))
        assert sampling_weights(sb, [p.motion_id for p in collect_pairs(sb, "train")],
                                [p.label for p in collect_pairs(sb, "train")], 0.0) is None
        data = load_data(mix, 16, balance=1.0)
        lp = data.train.probs
        lb_in_b = np.array([mix.source_of(data.train.motions[q.motion_index].motion_id)[0] == 1
                            for q in data.train.pairs])
        lcontent = np.array([label_group(q.label) or "" for q in data.train.pairs], dtype=object)
        np.testing.assert_allclose([lp[lb_in_b & (lcontent == c)].sum() for c in share], 0.5 / 3)
        single = load_data(sb, 16, balance=1.0).train
        assert single.probs is not None and single.probs.sum() == pytest.approx(1.0)
        assert load_data(sb, 16).train.probs is None


# ---------------------------------------------------------------------------------------------- sentences
def test_training_texts_vary_but_never_use_the_evaluation_paraphrases():
    ann = Annotation("a person waves the left hand, looking happy", 0, 1,
                     extra={"content": "wave-left-hand", "style": "happy"})
    texts = training_texts(ann)
    assert texts[0] == ann.text and len(texts) == len(set(texts)) >= 8
    assert all("left" in t for t in texts) and any(t.startswith("someone") for t in texts)
    assert training_texts(Annotation("someone bows", 0, 1, extra={"action": "bow"})) == ["someone bows"]
    # the held-out query sets are never trained on
    held_out = set()
    for f in (REPO / "eval" / "queries").glob("*.tsv"):
        for line in f.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 2 and not line.startswith("#"):
                held_out.add(parts[1].strip().lower())
    from engine.corpus.bvh import BANDAI_CONTENT_PHRASES, BANDAI_STYLE_PHRASES

    for c in BANDAI_CONTENT_PHRASES:
        for s in BANDAI_STYLE_PHRASES:
            for t in training_texts(Annotation("x", 0, 1, extra={"content": c, "style": s}))[1:]:
                assert t.lower() not in held_out, t


def test_label_keys_partners_and_masks():
    pairs = [Pair(0, 0, 1, "l", label="wave-left-hand|happy"), Pair(1, 0, 1, "r", label="wave-right-hand|happy"),
             Pair(2, 0, 1, "l2", label="wave-left-hand|tired"), Pair(3, 0, 1, "w", label="walk|happy"),
             Pair(4, 0, 1, "free")]
    assert label_key(Annotation("x", 0, 1, extra={"content": "walk", "style": "sad"})) == "walk|sad"
    assert label_key(Annotation("x", 0, 1)) is None
    assert pairs[0].family == pairs[1].family == "wave-hand" and pairs[3].family == "walk" and pairs[4].family is None
    partners = hard_partners(pairs, np.arange(5), 5, np.random.default_rng(0))
    assert len(partners) == 3 and all(pairs[p].family == "wave-hand" for p in partners)
    for anchor, p in zip([0, 1, 2], partners):
        assert pairs[p].label != pairs[anchor].label
    known, same = label_masks(pairs, [0, 1, 0, 4], "cpu")
    assert known[0, 1] and not known[0, 3] and same[0, 2] and not same[0, 1] and same[0, 0]


def test_label_negatives_keep_text_similar_pairs_of_other_labels():
    """'waves the left hand' vs '... right hand' is text-similar: plain DropTriple drops it as a false
    negative; with the label masks it stays, and the loss sees the violation."""
    sim = torch.tensor([[0.5, 0.6], [0.6, 0.5]])
    tsim = torch.tensor([[1.0, 0.95], [0.95, 1.0]])
    assert drop_triple_loss(sim, None, tsim, hardest=True) == 0
    known, same = label_masks([Pair(0, 0, 1, "l", label="L"), Pair(1, 0, 1, "r", label="R")], [0, 1], "cpu")
    assert drop_triple_loss(sim, None, torch.where(known, same.float() * 2.0, tsim), hardest=True) > 0


# ---------------------------------------------------------------------------------------------- trainers
def test_retrieval_trains_on_a_weighted_mix_with_every_option(corpora, tmp_path):
    a, b = corpora
    cfg = TrainConfig(model=TINY, epochs=2, batch_size=8, lr=1e-3, warmup_epochs=1, text_variants=True,
                      label_negatives=True, hard_negative_frac=0.25, feature_noise=0.05, text_noise=0.3,
                      label_balance=1.0, corpora=[{"path": str(a), "weight": 1.0}, {"path": str(b), "weight": 2.0}])
    with open_mix([CorpusSpec(a, 1.0), CorpusSpec(b, 2.0)]) as mix:
        pairs = collect_pairs(mix, "train", variants=True)
        assert any(len(p.texts) > 1 for p in pairs) and any(p.label and "|" in p.label for p in pairs)
        rep = train_retrieval(mix, tmp_path / "run", cfg, device="cpu")
        assert rep.epochs_done == 2 and rep.best_val is not None
        assert rep.best_val.n_pairs == len(collect_pairs(mix, "val"))
        with pytest.raises(ValueError, match="another config"):
            train_retrieval(mix, tmp_path / "run", TrainConfig(**{**cfg.__dict__, "feature_noise": 0.0}))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["corpora"][1]["weight"] == 2.0 and saved["text_variants"] is True


def test_fine_tuning_from_an_init_model_with_the_motion_encoder_frozen(corpora, tmp_path):
    """--init starts from the trained weights; --freeze-motion changes the text projection only, so the
    motion vectors an index holds stay valid. A mismatched architecture and a frozen random encoder are
    refused."""
    from indexer.model import load_retrieval

    _, b = corpora
    with CorpusStore.open(b) as store:
        train_retrieval(store, tmp_path / "base", TrainConfig(model=TINY, epochs=1, batch_size=8, lr=1e-3,
                                                              warmup_epochs=0), device="cpu")
        base = load_retrieval(tmp_path / "base", device="cpu")
        cfg = TrainConfig(model=TINY, epochs=1, batch_size=8, lr=1e-2, warmup_epochs=0, text_variants=True,
                          init=str(tmp_path / "base"), freeze_motion=True)
        train_retrieval(store, tmp_path / "ft", cfg, device="cpu")
        ft = load_retrieval(tmp_path / "ft", device="cpu")
        before, after = base.state_dict(), ft.state_dict()
        motion = [k for k in before if not k.startswith("text.")]
        text = [k for k in before if k.startswith("text.")]
        assert motion and text
        assert all(torch.equal(before[k], after[k]) for k in motion)  # encoder + normalisation untouched
        assert any(not torch.equal(before[k], after[k]) for k in text)
        x = store.features(store.motion_ids()[0])[:60]
        assert np.array_equal(base.encode_motion([x]), ft.encode_motion([x]))
        with pytest.raises(ValueError, match="architecture differs"):
            train_retrieval(store, tmp_path / "bad", TrainConfig(
                model=RetrievalConfig(**{**TINY.__dict__, "d_model": 8}), epochs=1, batch_size=8,
                init=str(tmp_path / "base")), device="cpu")
        with pytest.raises(ValueError, match="needs an init"):
            train_retrieval(store, tmp_path / "bad2", TrainConfig(model=TINY, epochs=1, batch_size=8,
                                                                  freeze_motion=True), device="cpu")


def test_text_noise_moves_unit_sentence_embeddings_by_the_radius():
    from indexer.train import perturb_sentences

    torch.manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(256, 384), dim=1)
    out = perturb_sentences(s, 0.5)
    assert torch.allclose(out.norm(dim=1), torch.ones(256), atol=1e-5)
    cos = (out * s).sum(1)  # a random direction is nearly orthogonal in 384-d: cos ~ 1/sqrt(1 + r^2)
    assert abs(float(cos.mean()) - 1 / np.sqrt(1.25)) < 0.02 and float(cos.min()) > 0.75
    assert torch.allclose(perturb_sentences(s, 0.0), s, atol=1e-6)


def test_localizer_trains_on_a_mix_with_text_variants(corpora, tmp_path):
    from localizer.config import make_config
    from localizer.data import load_data
    from localizer.train import train_localizer

    a, b = corpora
    with open_mix([CorpusSpec(a, 1.0), CorpusSpec(b, 4.0)]) as mix:
        data = load_data(mix, 16, variants=True)
        assert data.train.probs is not None and data.train.probs.sum() == pytest.approx(1.0)
        view, rows = data.train.with_texts(list(range(len(data.train))), np.random.default_rng(0))
        assert all(v.text in (p.texts or (p.text,)) for v, p in zip(view.pairs, data.train.pairs))
        assert any(v.text != p.text for v, p in zip(view.pairs, data.train.pairs))
        cfg = make_config("tiny", "mlpbase", {"train.epochs": 1, "train.time_budget_min": None,
                                              "train.text_variants": True, "train.batch_size": 8,
                                              "train.label_balance": 1.0})
        res = train_localizer(mix, tmp_path / "loc", cfg)
    assert res.steps >= 1 and (tmp_path / "loc" / "best.pt").exists()


def test_cli_mixes_corpora_for_both_trainers(corpora, tmp_path):
    a, b = corpora
    runner = CliRunner()
    r = runner.invoke(app, ["train", "retrieval", "--corpus", str(a), "--corpus", f"{b}:2", "--run",
                            str(tmp_path / "r"), "--epochs", "1", "--batch-size", "8", "--d-model", "16",
                            "--layers", "1", "--arch", "window", "--text-variants", "--label-negatives",
                            "--label-balance", "1", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    rcfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert rcfg["corpora"][1] == {"path": str(b), "weight": 2.0} and rcfg["label_balance"] == 1.0
    r = runner.invoke(app, ["train", "retrieval", "--corpus", str(a), "--corpus", str(tmp_path / "nope"),
                            "--run", str(tmp_path / "r2"), "--epochs", "1"])
    assert r.exit_code == 2 and "no such corpus" in r.output
    r = runner.invoke(app, ["train", "localizer", "--corpus", str(a), "--corpus", f"{b}:0.5", "--run",
                            str(tmp_path / "l"), "--preset", "tiny", "--variant", "mlpbase", "--epochs", "1",
                            "--text-variants", "--label-balance", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    train_cfg = json.loads((tmp_path / "l" / "config.json").read_text())["train"]
    assert train_cfg["text_variants"] is True and train_cfg["label_balance"] == 0.5
