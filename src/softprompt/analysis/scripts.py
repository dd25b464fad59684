"""Which writing system a token belongs to, so reports can say "the prompt drifted toward Han tokens".

The study found Chinese tokens among the nearest neighbours of prompts trained on English tasks
(bloomz is multilingual). Tagging each neighbour by Unicode script, and comparing with the script
mix of the whole vocabulary, turns that anecdote into counts per prompt and per task.

Scripts come from `unicodedata` character names ("CJK UNIFIED IDEOGRAPH-4F60" -> Han,
"CYRILLIC SMALL LETTER PE" -> Cyrillic); tokens without letters are digits, punctuation or
whitespace; tokens whose bytes are not valid UTF-8 on their own are byte fragments.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping

SPECIAL = "special"
BYTES = "byte fragment"
WHITESPACE = "whitespace"
DIGITS = "digits"
PUNCT = "punctuation"
CONTROL = "control"
OTHER = "other"

# first word(s) of a Unicode character name -> script label
_NAME_PREFIXES: tuple[tuple[str, str], ...] = (
    ("CJK", "Han"),
    ("KANGXI", "Han"),
    ("IDEOGRAPHIC", "Han"),
    ("HIRAGANA", "Hiragana/Katakana"),
    ("KATAKANA", "Hiragana/Katakana"),
    ("HALFWIDTH KATAKANA", "Hiragana/Katakana"),
    ("HANGUL", "Hangul"),
    ("HALFWIDTH HANGUL", "Hangul"),
    ("FULLWIDTH LATIN", "Latin"),
    ("LATIN", "Latin"),
    ("CYRILLIC", "Cyrillic"),
    ("GREEK", "Greek"),
    ("COPTIC", "Greek"),
    ("ARABIC", "Arabic"),
    ("HEBREW", "Hebrew"),
    ("DEVANAGARI", "Devanagari"),
    ("BENGALI", "Bengali"),
    ("GURMUKHI", "Gurmukhi"),
    ("GUJARATI", "Gujarati"),
    ("ORIYA", "Oriya"),
    ("TAMIL", "Tamil"),
    ("TELUGU", "Telugu"),
    ("KANNADA", "Kannada"),
    ("MALAYALAM", "Malayalam"),
    ("SINHALA", "Sinhala"),
    ("THAI", "Thai"),
    ("LAO", "Lao"),
    ("TIBETAN", "Tibetan"),
    ("MYANMAR", "Myanmar"),
    ("GEORGIAN", "Georgian"),
    ("ARMENIAN", "Armenian"),
    ("ETHIOPIC", "Ethiopic"),
    ("KHMER", "Khmer"),
    ("MONGOLIAN", "Mongolian"),
    ("BOPOMOFO", "Bopomofo"),
    ("YI", "Yi"),
)
_SPECIAL_NAMES = {
    "MICRO SIGN": "Greek",
    "MASCULINE ORDINAL INDICATOR": "Latin",
    "FEMININE ORDINAL INDICATOR": "Latin",
}
_HEX_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def char_script(ch: str) -> str | None:
    """The script of one letter or combining mark (None for anything else), from its Unicode name."""
    cat = unicodedata.category(ch)
    if cat[0] not in "LM":
        return None
    name = unicodedata.name(ch, "")
    for prefix, script in _NAME_PREFIXES:
        if name.startswith(prefix):
            return script
    if name in _SPECIAL_NAMES:
        return _SPECIAL_NAMES[name]
    if name.startswith("MODIFIER LETTER"):  # IPA and other marks used with Latin text (ˈ ː ʻ)
        return "Latin"
    if cat[0] == "M" or not name:  # combining marks without a script of their own (accents, selectors)
        return None
    return name.split()[0].title()  # a script not in the table still gets its own name


def token_script(token: str | bytes, *, special: bool = False) -> str:
    """Tag a decoded token by script: a script name (Latin, Han, ...), or digits, punctuation, whitespace,
    byte fragment, control, special.

    `token` is the decoded text (leading spaces as real spaces), or raw bytes (then bytes that are not
    valid UTF-8 on their own make a byte fragment). Text with U+FFFD or `<0xNN>` markers also counts
    as a byte fragment. A token mixing scripts gets the script of most of its letters.
    """
    if special:
        return SPECIAL
    if isinstance(token, bytes):
        try:
            token = token.decode("utf-8")
        except UnicodeDecodeError:
            return BYTES
    if "\ufffd" in token or _HEX_BYTE.search(token):
        return BYTES
    text = token.strip()
    if not text:
        return WHITESPACE
    scripts = Counter(s for s in map(char_script, text) if s is not None)
    if scripts:
        best = max(scripts.values())
        return min(s for s, c in scripts.items() if c == best)  # ties: alphabetical, so deterministic
    cats = [unicodedata.category(ch) for ch in text]
    if any(c.startswith("N") for c in cats):
        return DIGITS
    if all(c[0] in "PSZ" for c in cats):
        return PUNCT
    if all(c == "Cc" for c in cats):
        return CONTROL
    return OTHER


def script_counts(labels: Iterable[str]) -> dict[str, int]:
    """Count script labels, most frequent first (ties alphabetical): stable JSON for reports."""
    counts = Counter(labels)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def script_shares(counts: Mapping[str, int]) -> dict[str, float]:
    """Counts as fractions of their total (empty in, empty out)."""
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def summarize_scripts(per_run: Mapping[str, Mapping], vocabulary: Mapping[str, int] | None = None) -> dict:
    """Script counts per prompt and per task, from neighbour analyses ({run id: analysis dict}).

    Each analysis is what `neighbors.analyze_neighbors` returns with a `task` key added. Counts cover
    all top-k neighbours and, separately, the top-1 neighbour of each position. With `vocabulary`
    (counts over the whole vocabulary) each task also gets the ratio of its share to the vocabulary
    share, so "more Han than the vocabulary has" is visible at a glance.
    """
    prompts: dict[str, dict] = {}
    by_task: dict[str, dict[str, Counter]] = {}
    for run_id, analysis in per_run.items():
        all_k = Counter(t["script"] for pos in analysis["positions"] for t in pos["tokens"])
        top1 = Counter(pos["tokens"][0]["script"] for pos in analysis["positions"] if pos["tokens"])
        task = analysis.get("task", "unknown")
        prompts[run_id] = {"task": task, "top_k": script_counts(all_k.elements()), "top_1": script_counts(top1.elements())}
        agg = by_task.setdefault(task, {"top_k": Counter(), "top_1": Counter()})
        agg["top_k"].update(all_k)
        agg["top_1"].update(top1)
    tasks = {}
    vocab_share = script_shares(vocabulary) if vocabulary else {}
    for task, agg in sorted(by_task.items()):
        entry = {"top_k": script_counts(agg["top_k"].elements()), "top_1": script_counts(agg["top_1"].elements())}
        if vocab_share:
            share = script_shares(agg["top_k"])
            entry["top_k_over_vocabulary"] = {s: share[s] / vocab_share[s] for s in share if vocab_share.get(s)}
        tasks[task] = entry
    out: dict = {"prompts": prompts, "tasks": tasks}
    if vocabulary is not None:
        out["vocabulary"] = dict(vocabulary)
    return out
