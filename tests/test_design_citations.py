"""Every citation of the design document resolves: each ``docs/design.md#<anchor>`` in a tracked
``*.py``, ``*.md``, ``*.sh`` or ``*.toml`` file names a heading of docs/design.md (GitHub's anchor
rule); no tracked file still cites the old numbered sections of the external contract; and every
relative link or image in the repository's markdown files points at a file that exists."""
from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = "docs/design.md"
CITED_SUFFIXES = (".py", ".md", ".sh", ".toml")
# The phrases of the old citations, split so that this file does not contain them itself.
STALE_PHRASES = ("DESIGN" + " section", "DESIGN" + ".md")

CITATION = re.compile(re.escape(DESIGN) + r"#([\w-]+)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title") and ![alt](target)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def tracked_files(root: Path = ROOT) -> list[str]:
    """The repository's tracked files (``git ls-files``), as paths relative to ``root``; the test
    is skipped outside a git checkout."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    result = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    return sorted(name for name in result.stdout.split("\0") if name)


def read_text(path: Path) -> str | None:
    """The text of ``path``, or None for a missing or binary (NUL bytes, not UTF-8) file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def prose_lines(markdown: str) -> Iterable[tuple[int, str]]:
    """(line number, line) of the markdown outside fenced code blocks, inline code removed."""
    fenced = False
    for number, line in enumerate(markdown.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, INLINE_CODE.sub("", line)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading's text: lowercased, every character that is not a letter, digit,
    space, hyphen or underscore dropped, spaces turned into hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def heading_anchors(markdown: str) -> set[str]:
    """The anchors of every heading of ``markdown`` (a repeated one also as ``anchor-1``, ``anchor-2``, ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            anchor = github_anchor(match.group(2).replace("`", ""))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def unresolved_citations(root: Path, files: Iterable[str]) -> list[str]:
    """``file:line: docs/design.md#<anchor>`` for each citation in ``files`` whose anchor is not a
    heading of ``root/docs/design.md`` (all of them when that file is missing)."""
    design = read_text(root / DESIGN)
    anchors = heading_anchors(design) if design is not None else set()
    problems = []
    for name in files:
        text = read_text(root / name) if name.endswith(CITED_SUFFIXES) else None
        for number, line in enumerate((text or "").splitlines(), 1):
            problems += [f"{name}:{number}: {DESIGN}#{anchor}" for anchor in CITATION.findall(line)
                         if anchor not in anchors]
    return problems


def stale_citations(root: Path, files: Iterable[str]) -> list[str]:
    """``file:line: phrase`` for each old-style citation in the text files among ``files`` (docs/design.md excepted)."""
    problems = []
    for name in files:
        text = read_text(root / name) if name != DESIGN else None
        for number, line in enumerate((text or "").splitlines(), 1):
            problems += [f"{name}:{number}: {phrase!r}" for phrase in STALE_PHRASES if phrase in line]
    return problems


def broken_links(root: Path, files: Iterable[str]) -> list[str]:
    """``file:line: target`` for each relative link or image of the markdown files among ``files``
    whose file does not exist (links with a scheme, and ``#anchor`` links, are not checked; a
    target starting with ``/`` is relative to ``root``)."""
    problems = []
    for name in files:
        text = read_text(root / name) if name.endswith(".md") else None
        for number, line in prose_lines(text or ""):
            for target in LINK.findall(line):
                if target.startswith("#") or SCHEME.match(target):
                    continue
                path = re.split(r"[#?]", target, maxsplit=1)[0]
                resolved = root / path.lstrip("/") if path.startswith("/") else (root / name).parent / path
                if not resolved.exists():
                    problems.append(f"{name}:{number}: {target}")
    return problems


def test_github_anchor_rule():
    assert github_anchor("Built-in data: shapes") == "built-in-data-shapes"
    assert github_anchor("Kernel API") == "kernel-api"
    assert github_anchor("The run_dir (v2.0)") == "the-run_dir-v20"
    assert heading_anchors("# A\n```\n## Not a heading\n```\n## A\n### `B` c") == {"a", "a-1", "b-c"}


def test_the_checks_find_planted_problems(tmp_path):
    """Each check reports a planted problem (and only that one), so the repository tests below can fail."""
    (tmp_path / "docs").mkdir()
    (tmp_path / DESIGN).write_text("# Design\n\n## Kernel API\n\n![row](masks/row.png)\n")
    (tmp_path / "a.py").write_text(f'"""See {DESIGN}#kernel-api and {DESIGN}#no-such-heading."""\n')
    (tmp_path / "b.md").write_text(f"Old: {STALE_PHRASES[0]} 2. [ok](a.py) [web](https://x.org/y) [here](#top)\n")
    files = [DESIGN, "a.py", "b.md"]
    assert unresolved_citations(tmp_path, files) == [f"a.py:1: {DESIGN}#no-such-heading"]
    assert stale_citations(tmp_path, files) == [f"b.md:1: {STALE_PHRASES[0]!r}"]
    assert broken_links(tmp_path, files) == [f"{DESIGN}:5: masks/row.png"]


def test_every_design_citation_resolves():
    problems = unresolved_citations(ROOT, tracked_files())
    assert not problems, f"citations of headings that {DESIGN} does not have:\n" + "\n".join(problems)


def test_no_file_cites_the_old_contract_sections():
    problems = stale_citations(ROOT, tracked_files())
    assert not problems, f"old-style citations; cite {DESIGN}#<anchor> instead:\n" + "\n".join(problems)


def test_markdown_relative_links_point_at_existing_files():
    problems = broken_links(ROOT, tracked_files())
    assert not problems, "relative links to files that do not exist:\n" + "\n".join(problems)
