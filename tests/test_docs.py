"""The documentation cannot drift from the code: docs/cli.md is what the parsers write, docs/api.md runs, links
resolve and the README stays short."""
import doctest
import re
from pathlib import Path

from advquery.cli.main import build_parser
from advquery.cli.reference import markdown_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_LINES = 250
LINK = re.compile(r"\]\(([^)#\s]+)")  # markdown links and images, without in-page anchors


def test_cli_reference_is_generated_from_the_parsers():
    expected = markdown_reference(build_parser())
    assert (DOCS / "cli.md").read_text() == expected, \
        "docs/cli.md is out of date: run `python -m advquery.cli.reference > docs/cli.md`"


def test_cli_reference_names_every_command():
    text = (DOCS / "cli.md").read_text()
    for command in ("protect", "verify", "demo", "index build", "search", "eval", "ui"):
        assert f"`advquery {command}`" in text


def test_api_examples_run():
    result = doctest.testfile(str(DOCS / "api.md"), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_is_short_and_links_resolve():
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_LINES
    for page in (ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS.glob("*.md")):
        for target in LINK.findall(page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"
