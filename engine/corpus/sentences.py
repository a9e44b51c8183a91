"""Training sentences: several wordings of each labelled moment, so that a model learns the label, not one
phrasing (`training_texts`).

An annotation with Bandai content/style labels (`extra["content"]`, `extra["style"]`) gets
- every sentence `bandai_sentences` makes for its labels, in several frames ("a person walks forward,
  sadly", "someone walks forward, sadly", "walks forward, sadly"), and
- the training-only wordings of engine/corpus/data/bandai_wordings.json: verb phrases after other subjects
  or alone ("a woman strolls forward sadly", "strolls forward sadly") and stand-alone phrases ("a forward
  walk, looking sad"), each with the style's phrases.

Other annotations keep their own text (the synthetic corpus already draws its training sentences from a
paraphrase table and keeps its test paraphrases apart). The evaluation paraphrase sets in eval/queries/ are
written differently and are never read here.
"""

from __future__ import annotations

from functools import lru_cache

from engine.corpus.bvh import BANDAI_CONTENT_PHRASES, BANDAI_STYLE_PHRASES
from engine.corpus.tables import load_table
from engine.corpus.types import Annotation

FRAMES = ("a person {c}{s}", "someone {c}{s}", "{c}{s}", "the performer {c}{s}")
WORDINGS_TABLE = "bandai_wordings.json"


@lru_cache(maxsize=1)
def _wordings() -> tuple[tuple[str, ...], dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]:
    """(subjects, {content: (verb phrases, stand-alone phrases)}) of the training-only table."""
    subjects = tuple(load_table(WORDINGS_TABLE, "subjects"))
    content = {k: (tuple(v.get("verbs", ())), tuple(v.get("phrases", ())))
               for k, v in load_table(WORDINGS_TABLE, "content").items()}
    return subjects, content


def content_wordings(content: str) -> list[str]:
    """Every style-free wording of a Bandai content: the annotation phrases in their frames, the
    training-only verb phrases after each subject and alone, and the stand-alone phrases."""
    subjects, table = _wordings()
    verbs, phrases = table.get(content, ((), ()))
    out = [f.format(c=c, s="{s}") for f in FRAMES for c in BANDAI_CONTENT_PHRASES.get(content, ())]
    out += [f"{subj} {v}{{s}}" for v in verbs for subj in subjects] + [f"{v}{{s}}" for v in verbs]
    out += [f"{p}{{s}}" for p in phrases]
    return out


def training_texts(ann: Annotation) -> list[str]:
    """The annotation's own text first, then the other wordings of its labels (no duplicates)."""
    own = ann.text.strip()
    content, style = ann.extra.get("content"), ann.extra.get("style")
    if not isinstance(content, str) or content not in BANDAI_CONTENT_PHRASES:
        return [own]
    styles = BANDAI_STYLE_PHRASES.get(style, ("",)) if isinstance(style, str) else ("",)
    out = [own]
    seen = {own}
    for w in content_wordings(content):
        for s in styles:
            t = w.replace("{s}", s).strip()
            if t not in seen:
                seen.add(t)
                out.append(t)
    return out


def label_key(ann: Annotation) -> str | None:
    """What the moment shows, as a key two annotations share when they show the same thing
    (Bandai content + style, a synthetic action); None when the annotation has no labels."""
    e = ann.extra
    if isinstance(e.get("content"), str):
        return f"{e['content']}|{e.get('style', '')}"
    if isinstance(e.get("action"), str):
        return f"action:{e['action']}"
    return None
