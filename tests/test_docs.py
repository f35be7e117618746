"""The documentation cannot drift from the code: docs/cli.md is what the parsers write."""
from pathlib import Path

from advquery.cli.main import build_parser
from advquery.cli.reference import markdown_reference

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_reference_is_generated_from_the_parsers():
    expected = markdown_reference(build_parser())
    assert (DOCS / "cli.md").read_text() == expected, \
        "docs/cli.md is out of date: run `python -m advquery.cli.reference > docs/cli.md`"


def test_cli_reference_names_every_command():
    text = (DOCS / "cli.md").read_text()
    for command in ("protect", "verify", "demo", "index build", "search", "eval", "ui"):
        assert f"`advquery {command}`" in text

