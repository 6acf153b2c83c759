"""The documentation holds together: every relative link in README.md and docs/*.md points at
a file or folder of the repository (and at a heading there, when it names one), and README.md
stays short enough to read (the measurements live in docs/results.md)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 13_000
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# [text](target) and ![alt](target); code spans and indented code blocks are left out first.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(CODE_SPAN.sub("", line))
    return "\n".join(lines)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto:, ...


def test_the_files_exist():
    assert (REPO / "README.md").is_file()
    for name in ("design.md", "results.md", "studies.md", "config.md", "layout.md",
                 "weights.md", "cluster.md"):
        assert (REPO / "docs" / name).is_file(), f"docs/{name} is missing"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path):
    bad = []
    for target in _links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            bad.append(f"{target}: {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest} "
                       "does not exist")
        elif REPO not in dest.parents and dest != REPO:
            bad.append(f"{target}: points outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not bad, f"{doc.relative_to(REPO)}:\n  " + "\n  ".join(bad)


def test_no_document_points_outside_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text and "shared/DESIGN.md" not in text, \
            f"{doc.relative_to(REPO)} refers outside the repository (the design is docs/design.md)"


def test_the_readme_is_short():
    size = (REPO / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, \
        f"README.md is {size} bytes (at most {README_MAX_BYTES}): move detail into docs/"


def test_the_readme_keeps_the_ci_test_command():
    """.ci/run runs the README's test command; the two stay the same."""
    command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert command.startswith("pip install") and command.endswith("python -m pytest -q")
    assert f"    {command}\n" in (REPO / "README.md").read_text()


def test_the_link_checker_finds_a_broken_link(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("# Title\n\nSee [a](missing.md), [b](#title), `[c](nowhere.md)`,\n"
                   "[e](https://example.org) and\n\n```\n[d](code-block.md)\n```\n")
    assert _links(doc) == ["missing.md", "#title"]
    assert _anchors(doc) == {"title"}
