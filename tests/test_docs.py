"""The documentation holds together: every relative link in README.md, docs/ and bench/ reaches a file (and a
heading, when it names one), and the README stays a front door whose two commands are the ones CI runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 150
# .ci/run runs the second verbatim; both must keep working on a fresh machine.
TWO_COMMANDS = (
    "scripts/setup.sh && .venv/bin/softprompt study configs/demo.toml --out runs/demo",
    "scripts/setup.sh --dev && HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q",
)

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target may carry a "title" after a space
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def markdown_files() -> list[Path]:
    """README.md, docs/**/*.md and bench/**/*.md (bench/carry is a git-ignored download area)."""
    files = [README, *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "bench").rglob("*.md"))]
    return [f for f in files if "carry" not in f.relative_to(ROOT).parts]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks: links and headings inside code are not markdown."""
    out, fence = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fence = not fence
            continue
        if not fence:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (code spans, links and emphasis unwrapped), lowercased,
    every character but letters, digits, spaces, '-' and '_' dropped, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = INLINE_CODE.sub(lambda m: m.group(2), text)
    text = re.sub(r"(\*{1,3}|(?<!\w)_{1,3}|_{1,3}(?!\w))", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of each link that is not a URL, outside code blocks and inline code."""
    out = []
    for n, line in prose_lines(path.read_text(encoding="utf-8")):
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            target = m.group(1)
            if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            out.append((n, target))
    return out


def broken_link(source: Path, target: str) -> str | None:
    """Why `target`, linked from `source`, does not resolve (None when it does)."""
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / unquote(file_part)).resolve() if file_part else source
    if not dest.exists():
        return "no such file"
    if file_part and not dest.resolve().is_relative_to(ROOT):
        return "outside the repository"
    if anchor:
        if dest.suffix != ".md" or dest.is_dir():
            return "an anchor into a file that is not markdown"
        if unquote(anchor) not in anchors(dest):
            return f"no heading with anchor #{anchor} in {dest.relative_to(ROOT)}"
    return None


def test_slug_follows_githubs_rules():
    assert slug("Training: softprompt vs PEFT's recipe (RTE)") == "training-softprompt-vs-pefts-recipe-rte"
    assert slug("Scoring strategies by device (`auto`)") == "scoring-strategies-by-device-auto"
    assert slug("What the scorer does now (src/softprompt/scoring/, `ScoringOptions`)") == (
        "what-the-scorer-does-now-srcsoftpromptscoring-scoringoptions"
    )
    assert slug("SST-2: 512 x 2 epochs, dev 200 (n=872)") == "sst-2-512-x-2-epochs-dev-200-n872"
    assert slug("run_state and `TrainConfig`") == "run_state-and-trainconfig"


def test_link_checker_catches_a_missing_file_and_a_missing_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## A section (v2)\n\n```\n# not a heading\n```\n")
    page.write_text(
        "[ok](other.md#a-section-v2) [gone](missing.md) [bad anchor](other.md#not-a-heading)\n"
        "`[in code](nowhere.md)` [web](https://example.com/x.md)\n```\n[fenced](nowhere.md)\n```\n"
    )
    links = relative_links(page)
    assert [t for _, t in links] == ["other.md#a-section-v2", "missing.md", "other.md#not-a-heading"]
    assert broken_link(page, "other.md#a-section-v2") is None
    assert broken_link(page, "missing.md") == "no such file"
    assert "no heading with anchor #not-a-heading" in broken_link(page, "other.md#not-a-heading")


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    broken = [f"{path.relative_to(ROOT)}:{n}: ({t}) {why}" for n, t in relative_links(path) if (why := broken_link(path, t))]
    assert not broken, "\n".join(broken)


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES}"
    for command in TWO_COMMANDS:
        assert command in lines, f"README.md lost its command, verbatim on its own line: {command}"
    # the two commands come first: no other code block before them
    first_blocks = [i for i, line in enumerate(lines) if FENCE.match(line)][:4]
    assert [lines[i + 1] for i in first_blocks[::2]] == list(TWO_COMMANDS)


def test_ci_runs_the_readmes_test_command():
    assert TWO_COMMANDS[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
