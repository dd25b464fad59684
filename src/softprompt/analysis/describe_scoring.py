"""How much a description says a task: recall of the task description's content words and of its label words.

Deliberately simple and transparent (stop words, a light stemmer, set recall), so a score can be checked
by eye against the description it grades.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_STOPWORDS_TEXT = (
    "a an the is are was were be been being am of to in on at by for with from into onto about as this that these those "
    "it its it's or and nor but if then than so such there their them they you your yours i me my we our us he she his "
    "her him do does did doing done what which who whom whose whether when where why how can could will would shall "
    "should may might must has have had having any all each some both either other another more most very just also "
    "only own same too here please given following one sentence task instruction ask asks asked answer"
)
# Function words, plus the describing instruction's own words (a description that only echoes the instruction says nothing).
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def stem(word: str) -> str:
    """A light suffix stripper (plural, -ing, -ed, -ly, -ment, final e): enough to match "reviews" with
    "review" and "classifying" with "classify"; not a linguistic stemmer."""
    w = word.lower()
    if len(w) > 4 and w.endswith(("ies", "ied")):
        w = w[:-3] + "y"
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ment", "ed", "ly"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


_STOP_STEMS = frozenset(stem(w) for w in STOPWORDS)


def content_words(text: str) -> list[str]:
    """Lowercased words minus `STOPWORDS` (which include the describing instruction's own words), stemmed, unique."""
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        w = w.split("'")[0]
        s = stem(w)
        if w in STOPWORDS or s in _STOP_STEMS:
            continue
        if s not in out:
            out.append(s)
    return out


def text_score(text: str, reference: str, label_words: Sequence[str] = ()) -> dict[str, Any]:
    """How much `text` says `reference`: content recall (share of the reference's content words in the text),
    label recall (share of label words in it; None without label words) and their mean as `score` in [0, 1]."""
    said = set(content_words(text))
    wanted = content_words(reference)
    found = [w for w in wanted if w in said]
    labels = [lw for lw in label_words if content_words(lw)]
    labels_found = [lw for lw in labels if all(w in said for w in content_words(lw))]
    content = len(found) / len(wanted) if wanted else None
    label = len(labels_found) / len(labels) if labels else None
    parts = [p for p in (content, label) if p is not None]
    return {
        "score": sum(parts) / len(parts) if parts else 0.0,
        "content_recall": content,
        "label_recall": label,
        "content_found": found,
        "content_missing": [w for w in wanted if w not in said],
        "labels_found": labels_found,
    }


def description_score(text: str, task) -> dict[str, Any]:
    """`text_score` against a task's English description and label words. `task`: a Task, a task name or
    .toml path, or a run.json's task record (`TaskFacts`, or a mapping with description and label_words)."""
    if isinstance(task, str):
        from softprompt.tasks import get_task

        task = get_task(task)
    if isinstance(task, Mapping):
        return text_score(text, task.get("description") or "", list(task.get("label_words") or []))
    return text_score(text, task.description or "", list(task.label_words or []))
