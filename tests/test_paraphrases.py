"""Hand-written paraphrase query sets (eval/queries/*-paraphrases.tsv): labels, coverage, no training sentences.

The sets measure generalisation by phrasing, so no query may be a corpus annotation sentence: the synthetic
corpus's action texts (training and held-out, both used for annotations) and, for Bandai Namco, every
`bandai_sentences(content, style)`. Nor may a query copy such a sentence with one word swapped.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from engine.corpus.bvh import BANDAI_CONTENT_PHRASES, BANDAI_STYLE_PHRASES, bandai_sentences
from engine.corpus.synth_actions import ACTIONS

QUERIES = Path(__file__).resolve().parents[1] / "eval" / "queries"
SYNTH_TSV = QUERIES / "synth-paraphrases.tsv"
BANDAI_TSV = QUERIES / "bandai-paraphrases.tsv"
BANDAI_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bandai-namco"
MIN_ROWS = 3
# The content labels of cfg/content_label.txt in Bandai Namco set 1 and set 2 (prefix `dataset-N_` removed).
BANDAI_CFG_CONTENTS = (
    "walk", "run", "dash", "walk-back", "walk-left", "walk-right", "bow", "bye", "guide", "byebye", "respond",
    "call", "punch", "kick", "slash", "dance-long", "dance-short",  # set 1
    "walk-turn-left", "walk-turn-right", "wave-both-hands", "wave-left-hand", "wave-right-hand",
    "raise-up-both-hands", "raise-up-left-hand", "raise-up-right-hand",  # set 2 (walk, run: also set 1)
)
# Leading subjects dropped before the near-copy comparison ("guy doing star jumps" copies "doing star jumps").
_SUBJECTS = ("a person", "the person", "someone", "somebody", "a man", "the man", "a woman", "woman", "man",
             "a guy", "the guy", "guy", "the character", "character")


def load(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows and rows[0] == ["label", "text"], f"{path.name}: header must be 'label<TAB>text', got {rows[:1]}"
    body = rows[1:]
    bad = [r for r in body if len(r) != 2 or not r[0].strip() or not r[1].strip()]
    assert not bad, f"{path.name}: rows must be 'label<TAB>text': {bad[:5]}"
    return [(label, text) for label, text in body]


def normalise(s: str) -> str:
    """Lowercase, punctuation removed, spaces collapsed."""
    return " ".join(re.sub(r"[^\w\s]", "", s.lower()).split())


def variants(s: str) -> set[str]:
    """The normalised forms of a sentence: punctuation removed or turned into spaces ('bye-bye')."""
    low = s.lower()
    return {normalise(low), " ".join(re.sub(r"[^\w\s]", " ", low).split())}


def without_subject(s: str) -> str:
    for subj in _SUBJECTS:
        if s.startswith(subj + " "):
            return s[len(subj) + 1:]
    return s


def near_copy(query: str, sentence: str) -> bool:
    """The sentence again (subject aside), or with one word swapped when it has 3+ words."""
    for q in {query, without_subject(query)}:
        for t in {sentence, without_subject(sentence)}:
            qw, tw = q.split(), t.split()
            if qw == tw or (len(qw) == len(tw) >= 3 and sum(a != b for a, b in zip(qw, tw)) == 1):
                return True
    return False


def synth_sentences() -> set[str]:
    return {t for spec in ACTIONS.values() for t in spec.all_texts}


def bandai_training_sentences() -> set[str]:
    return {s for content in BANDAI_CONTENT_PHRASES for style in BANDAI_STYLE_PHRASES
            for s in bandai_sentences(content, style)}


CASES = {
    "synth": (SYNTH_TSV, lambda: set(ACTIONS), synth_sentences),
    "bandai": (BANDAI_TSV, lambda: set(BANDAI_CONTENT_PHRASES), bandai_training_sentences),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    path, labels, sentences = CASES[request.param]
    return path, load(path), labels(), sentences()


def test_header_comment_says_evaluation_only(case):
    path = case[0]
    comments = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert len(comments) >= 2 and "never used for training" in " ".join(comments).lower()


def test_labels_are_known(case):
    path, rows, labels, _ = case
    unknown = sorted({label for label, _ in rows} - labels)
    assert not unknown, f"{path.name}: unknown labels {unknown}"


def test_every_label_has_rows(case):
    path, rows, labels, _ = case
    counts = {label: 0 for label in labels}
    for label, _ in rows:
        counts[label] = counts.get(label, 0) + 1
    few = {label: n for label, n in counts.items() if n < MIN_ROWS}
    assert not few, f"{path.name}: labels with fewer than {MIN_ROWS} queries: {few}"


def test_no_duplicate_texts(case):
    path, rows, _, _ = case
    seen: dict[str, str] = {}
    dups = []
    for _, text in rows:
        n = normalise(text)
        if n in seen:
            dups.append((seen[n], text))
        seen[n] = text
    assert not dups, f"{path.name}: duplicate queries {dups}"


def test_no_query_is_a_training_sentence(case):
    path, rows, _, sentences = case
    train = {v for s in sentences for v in variants(s)}
    hits = [text for _, text in rows if variants(text) & train]
    assert not hits, f"{path.name}: queries equal to corpus sentences: {hits}"


def test_no_query_copies_a_training_sentence_with_one_word_changed(case):
    path, rows, _, sentences = case
    train = {v for s in sentences for v in variants(s)}
    hits = [(text, t) for _, text in rows for q in variants(text) for t in train if near_copy(q, t)]
    assert not hits, f"{path.name}: queries one word away from corpus sentences: {hits[:10]}"


def test_near_copy_rule():
    assert near_copy("guy doing star jumps", "doing star jumps")
    assert near_copy("a person waves with the left arm", "a person waves with the right arm")
    assert not near_copy("jumping jacks", "a person does jumping jacks")
    assert not near_copy("guy waves hi with his left hand", "a person waves with the left hand")


def test_bandai_content_labels_of_both_sets_have_rows():
    labels = {label for label, _ in load(BANDAI_TSV)}
    missing = sorted(set(BANDAI_CFG_CONTENTS) - labels)
    assert not missing, f"Bandai content labels without queries: {missing}"
    assert set(BANDAI_CFG_CONTENTS) <= set(BANDAI_CONTENT_PHRASES)


@pytest.mark.skipif(not BANDAI_DATA.is_dir(), reason=f"Bandai Namco data not found at {BANDAI_DATA} (optional)")
def test_bandai_cfg_content_labels_match_the_data():
    found = set()
    for cfg in sorted(BANDAI_DATA.glob("set*/cfg/content_label.txt")):
        for line in cfg.read_text(encoding="utf-8").splitlines():
            if line.strip():
                found.add(line.strip().split("_", 1)[1])
    if not found:
        pytest.skip(f"no cfg/content_label.txt under {BANDAI_DATA}")
    assert found == set(BANDAI_CFG_CONTENTS)
