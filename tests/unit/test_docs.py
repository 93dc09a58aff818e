"""The documentation stands alone: a short README, docs/ pages whose links all resolve inside the
repository, and no file that points at material kept outside it.

Pure file checks: no process, no network. Files are found by a walk of the tree that skips git's
folder, virtualenvs, caches and state folders.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250
OUTSIDE = ".." + "/shared"  # spelled in two parts so that this file does not match itself
# Pages another branch is writing: a link to one is accepted until it exists, then checked like
# any other (remove the entry once the page has landed).
PENDING: set[str] = set()
# Names of documents that live outside the repository: the docs must not send readers to them.
FOREIGN_NAMES = ("PROTOCOL.md", "POLICY.md", "PERF-NOTES", "seed design", "the seed's")
SKIP_DIRS = {".git", ".vski", "__pycache__", "node_modules", "build", "dist"}
SKIP_PREFIXES = (".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis")

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+).+?\1")
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def skipped(folder: str) -> bool:
    return folder in SKIP_DIRS or folder.startswith(SKIP_PREFIXES) or folder.endswith(".egg-info")


@cache
def repo_files() -> tuple[Path, ...]:
    """Every file of the repository, as paths relative to ROOT."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not skipped(d)]
        found += [Path(folder, f).relative_to(ROOT) for f in files]
    return tuple(sorted(found))


def text_of(rel: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = (ROOT / rel).read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def markdown_pages() -> list[Path]:
    pages = [Path("README.md"), *sorted((ROOT / "docs").glob("*.md"))]
    return [p if not p.is_absolute() else p.relative_to(ROOT) for p in pages]


def outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) for the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def prose_lines(text: str) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks, with inline code spans blanked."""
    return [(number, INLINE_CODE.sub("", line)) for number, line in outside_fences(text)]


def links(text: str) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(text):
        found += [(number, m.group(1)) for m in INLINE_LINK.finditer(line)]
        ref = REF_LINK.match(line)
        if ref:
            found.append((number, ref.group(1)))
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a page; a repeated heading gets -1, -2 ... as on GitHub."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, line in outside_fences(text):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def test_the_docs_index_lists_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    listed = {target.split("#")[0] for _, target in links(index)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages - listed == set(), f"docs/README.md does not list {sorted(pages - listed)}"


def test_no_file_points_outside_the_repository() -> None:
    offenders = []
    for rel in repo_files():
        text = text_of(rel)
        if text is not None and OUTSIDE in text:
            offenders.append(str(rel))
    assert offenders == [], f"files mentioning {OUTSIDE!r}: {offenders}"


@pytest.mark.parametrize("page", markdown_pages(), ids=str)
def test_docs_do_not_send_readers_to_documents_outside_the_repository(page: Path) -> None:
    text = (ROOT / page).read_text()
    found = [name for name in FOREIGN_NAMES if name in text]
    assert found == [], f"{page} mentions {found}: describe it here instead"


@pytest.mark.parametrize("page", markdown_pages(), ids=str)
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    text = (ROOT / page).read_text()
    known = {rel.as_posix() for rel in repo_files()}
    problems = []
    for number, target in links(text):
        where = f"{page}:{number}: {target}"
        if SCHEME.match(target):
            continue  # a web address, not a path
        path, _, fragment = unquote(target).partition("#")
        if path.startswith("/"):
            problems.append(f"{where}: absolute path")
            continue
        resolved = ((ROOT / page).parent / path if path else ROOT / page).resolve()
        try:
            rel = resolved.relative_to(ROOT.resolve())
        except ValueError:
            problems.append(f"{where}: leaves the repository")
            continue
        if rel.as_posix() in PENDING and not resolved.exists():
            continue
        is_dir = resolved.is_dir() and any(k.startswith(rel.as_posix() + "/") for k in known)
        if rel.as_posix() not in known and not is_dir:
            problems.append(f"{where}: no such file in the repository")
            continue
        if fragment and resolved.suffix == ".md" and fragment not in anchors(resolved.read_text()):
            problems.append(f"{where}: no heading with anchor #{fragment}")
    assert problems == [], "\n".join(problems)
