"""The documentation cannot drift from the code: docs/cli.md is what the parsers write, docs/api.md runs, links
resolve, the README stays short and its table and docs/benchmarks.md are what bench/results/ gives."""
import doctest
import importlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from helpers import bench_module

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


def test_readme_table_is_what_the_results_give():
    assert bench_module("readme_tables").readme_text() == (ROOT / "README.md").read_text(), \
        "the README's table is out of date: run `python bench/readme_tables.py`"


def test_benchmarks_page_is_what_the_results_give():
    # A result's day comes from the git history (the last commit that changed it): a shallow clone has none.
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True)
    if shallow.returncode or shallow.stdout.strip() != "false":
        reason = "docs/benchmarks.md dates its results from the git history, which this checkout does not have"
        print(reason)
        pytest.skip(reason)
    assert bench_module("readme_tables").benchmarks_page() == (DOCS / "benchmarks.md").read_text(), \
        "docs/benchmarks.md is out of date: run `python bench/readme_tables.py`"


def test_readme_rows_come_from_the_latest_run_of_the_same_queries(tmp_path, monkeypatch):
    tables = bench_module("readme_tables")
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    suite = {"systems": ["efficientnet-lite0-gem@1024"], "edits": ["none"]}
    runs = {"trackers_test_quick_limit8": {"measured": "2026-12-01", "queries": ["a", "b"], **suite,
                                           "sets": {"low": {}, "medium": {}, "medium-without-lite2": {}}},
            "trackers_test_quick_limit8_medium": {"measured": "2026-12-03", "queries": ["a", "b"], **suite,
                                                  "sets": {"medium": {}}},
            "trackers_test_quick_limit1": {"measured": "2026-12-04", "queries": ["a"], **suite, "sets": {"high": {}}}}
    for name, run in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    assert tables.preset_sources(runs) == {"low": "trackers_test_quick_limit8",
                                           "medium": "trackers_test_quick_limit8_medium"}


def test_readme_rows_of_one_day_come_from_the_later_time_stamp(tmp_path, monkeypatch):
    """A preset re-measured the same day (after a change of the code) replaces its row whatever the runs' names."""
    tables = bench_module("readme_tables")
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    suite = {"queries": ["a", "b"], "systems": ["efficientnet-lite0-gem@1024"], "edits": ["none"]}
    runs = {"trackers_test_quick_a": {"measured": "2026-12-06T20:00+00:00", **suite, "sets": {"medium": {}}},
            "trackers_test_quick_b": {"measured": "2026-12-06T11:00+00:00", **suite, "sets": {"medium": {}}}}
    for name, run in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    assert tables.preset_sources(runs) == {"medium": "trackers_test_quick_a"}


def test_readme_rows_prefer_the_run_of_todays_definition(tmp_path, monkeypatch):
    """A later run of a preset's earlier definition (e.g. a candidate run that measured the preset beside a
    candidate) does not replace the row of today's definition."""
    tables = bench_module("readme_tables")
    candidates = importlib.import_module("candidates")
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    suite = {"queries": ["a", "b"], "systems": ["efficientnet-lite0-gem@1024"], "edits": ["none"]}
    today = {"preset": repr(candidates.setting("medium"))}
    earlier = {"preset": today["preset"].replace("ssim_eps_levels=16", "ssim_eps_levels=14")}
    runs = {"trackers_test_quick_a": {"measured": "2026-12-01", **suite, "sets": {"medium": today}},
            "trackers_test_quick_b": {"measured": "2026-12-03", **suite, "sets": {"medium": earlier}}}
    for name, run in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    assert tables.preset_sources(runs) == {"medium": "trackers_test_quick_a"}
    runs["trackers_test_quick_a"]["sets"]["medium"] = earlier
    assert tables.preset_sources(runs) == {"medium": "trackers_test_quick_b"}  # neither is today's: the latest


def test_held_out_cells_come_only_from_leave_one_out_sets_of_todays_definition():
    tables = bench_module("readme_tables")
    candidates = importlib.import_module("candidates")
    systems = ["lite0 gem 1024", "lite1 gem 1024"]
    maps = {label: {"wi": {s: {"none": share} for s in systems}}
            for label, share in (("original", 0.5), ("high-without-lite1", 0.2))}
    today = {"preset": repr(candidates.setting("high-without-lite1")),
             "models": ["efficientnet-lite0-gem", "efficientnet-lite2-gem"]}
    run = {"systems": systems, "edits": ["none"], "map": maps, "sets": {"high-without-lite1": today}}
    assert tables.held_out(run, "high") == ([0.4], ["high-without-lite1"])  # lite1's cell alone
    run["sets"]["high-without-lite1"] = {**today, "preset": today["preset"].replace("whole=0.5", "whole=0.0")}
    assert tables.held_out(run, "high") == ([], [])


def test_seconds_timed_alone_are_quoted_only_for_presets_timed_as_defined_today():
    tables = bench_module("readme_tables")
    note = tables.seconds_note(["low", "medium"], {"low": 11.0}, "bfloat16", "the CPU", "the CPU")
    assert note.startswith("Seconds per photo of low on the CPU, timed alone in bfloat16")
    assert "seconds per photo of medium from the tracker run" in note
    assert tables.seconds_note(["low"], {}, "", "", "the CPU").startswith(
        "Seconds per photo of low from the tracker run on the CPU")


def test_seconds_come_from_the_latest_speed_run_of_todays_definitions(tmp_path, monkeypatch):
    tables = bench_module("readme_tables")
    candidates = importlib.import_module("candidates")
    today = {p: repr(candidates.setting(p)) for p in ("low", "medium")}
    rows = [{"photo": "a", "seconds": 10.0}, {"photo": "b", "seconds": 20.0}]

    def run(name, measured, time, presets):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"machine": name, "measured": measured, "auto": "float32", "time": time, "time_presets": presets}))
    run("speed", "2026-12-03T15:10+00:00", {"low float32": rows, "medium float32": rows}, today)
    run("speed_later", "2026-12-05T04:53+00:00", {"low float32": rows, "medium bfloat16": rows}, today)
    run("speed_candidate_only", "2026-12-06T00:00+00:00", {"low-1view float32": rows},
        {"low-1view": repr(candidates.setting("low-1view"))})
    run("speed_unrecorded", "2026-12-07T00:00+00:00", {"low float32": rows}, None)
    (tmp_path / "speed_other.json").write_text(json.dumps({"time": "not a speed run"}))
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    seconds, precision, machine = tables.timed_seconds()  # the latest run that timed a preset as defined today
    assert seconds == {"low": 15.0} and precision == "float32"  # medium was timed there in another precision
    assert machine == "speed_later (2 validation photos at 1024 px, `bench/results/speed_later.md`)"
    run("speed_later", "2026-12-05T04:53+00:00", {"low float32": rows}, {"low": "an older definition"})
    assert tables.timed_seconds()[0] == {"low": 15.0, "medium": 15.0}  # back to the earlier run


def test_presets_timed_under_another_definition_are_named_changed():
    bench_module("readme_tables")  # imports bench/speed.py and bench/candidates.py with it
    speed, candidates = importlib.import_module("speed"), importlib.import_module("candidates")
    results = {"time_presets": {"low": repr(candidates.setting("low")), "high": "an older definition"}}
    assert speed.changed_presets(results, "time") == ["high"]
    assert speed.changed_presets({}, "time") is None
