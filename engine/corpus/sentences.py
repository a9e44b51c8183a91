"""Training sentences: several wordings of each labelled moment, so that a model learns the label, not one
phrasing (`training_texts`).

An annotation with Bandai content/style labels (`extra["content"]`, `extra["style"]`) gets every
sentence `bandai_sentences` makes for its labels, in several frames ("a person walks forward, sadly",
"someone walks forward, sadly", "walks forward, sadly"); other annotations keep their own text (the
synthetic corpus already draws its training sentences from a paraphrase table and keeps its test
paraphrases apart). The evaluation paraphrase sets in eval/queries/ are written differently and are
never read here.
"""

from __future__ import annotations

from engine.corpus.bvh import BANDAI_CONTENT_PHRASES, BANDAI_STYLE_PHRASES
from engine.corpus.types import Annotation

FRAMES = ("a person {c}{s}", "someone {c}{s}", "{c}{s}", "the performer {c}{s}")


def training_texts(ann: Annotation) -> list[str]:
    """The annotation's own text first, then the other wordings of its labels (no duplicates)."""
    own = ann.text.strip()
    content, style = ann.extra.get("content"), ann.extra.get("style")
    if not isinstance(content, str) or content not in BANDAI_CONTENT_PHRASES:
        return [own]
    styles = BANDAI_STYLE_PHRASES.get(style, ("",)) if isinstance(style, str) else ("",)
    out = [own]
    for f in FRAMES:
        for c in BANDAI_CONTENT_PHRASES[content]:
            for s in styles:
                t = f.format(c=c, s=s).strip()
                if t not in out:
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
