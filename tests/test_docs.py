"""The documentation as a specification: every relative link in README.md and docs/*.md leads to a file of the
repository, and no document narrates development history (work-item or session numbers) instead of the current
state; nor does a docstring or comment in the code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
HISTORY = re.compile(r"(?<![-\w])(issue|session)\s+#?\d+", re.IGNORECASE)  # not a flag like --uploads-per-session 3


def relative_links(text: str) -> list[str]:
    """The link targets of a Markdown text that point inside the repository (no scheme, no bare anchor)."""
    targets = (match.group(1) for match in LINK.finditer(text))
    return [target for target in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]


def test_the_link_pattern_finds_relative_links_and_leaves_out_addresses_and_anchors():
    text = "[a](docs/x.md) ![b](y.png) [c](https://example.org) [d](#top) [e](z.md#part) [f](mailto:a@b)"
    assert relative_links(text) == ["docs/x.md", "y.png", "z.md#part"]


def test_the_history_pattern_catches_work_item_and_session_numbers_only():
    assert HISTORY.search("Speed where people wait (issue 13)")
    assert HISTORY.search("measured in Session 4")
    assert HISTORY.search("see issue #7")
    assert not HISTORY.search("a review session belongs to its reviewer; 4 concurrent browser sessions")
    assert not HISTORY.search("python scripts/load_test.py --sessions 4 --uploads-per-session 3")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_an_existing_file(document: Path):
    missing = [target for target in relative_links(document.read_text(encoding="utf-8"))
               if not (document.parent / target.split("#", 1)[0]).exists()]
    assert not missing, f"{document.name} links to missing files: {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_document_names_a_work_item_or_a_session_number(document: Path):
    lines = [f"{number}: {line.strip()[:80]}" for number, line in
             enumerate(document.read_text(encoding="utf-8").splitlines(), start=1) if HISTORY.search(line)]
    assert not lines, f"{document.name} narrates history instead of the current state: {lines}"


WORK_ITEM = re.compile(r"(?<![-\w])issue\s+#?\d+|\((?:point|bug)s?\s+\d+", re.IGNORECASE)  # "Issue 3", "(point 9)"
SOURCES = sorted(path for folder in ("covid_models", "pages", "scripts", "tests")
                 for path in (ROOT / folder).rglob("*.py") if path.name != "test_docs.py") + [ROOT / "streamlit_app.py"]


def test_the_work_item_pattern_catches_issue_and_point_numbers_only():
    assert WORK_ITEM.search('"""Issue 11, bug 5: page, batch table"""') and WORK_ITEM.search("# the note (point 9)")
    assert not WORK_ITEM.search('match="no review session 999"') and not WORK_ITEM.search("at 5 points of 10")


def test_no_source_file_names_a_work_item():
    lines = [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}" for path in SOURCES
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if WORK_ITEM.search(line)]
    assert not lines, f"docstrings and comments say what the code does, not which work item asked for it: {lines}"
