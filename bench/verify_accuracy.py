"""How often ``advquery verify --trackers`` is right, on queries its calibration never saw.

The shipped verdict thresholds are fitted on the validation split (``bench/trackers.py --calibrate``). For each
(query, tracker, preset) pair of test-split tracker runs, the verdict the shipped calibration gives the pair's
similarity is set beside the share of the original AP that the protected query really keeps under that tracker:
"blocked" claims at most the calibrated blocked share (25 %), "still found" at least the found share (75 %),
"weakened" in between. Counted per preset and over all, apart for firm verdicts and for those near a threshold.

Run: ``python bench/verify_accuracy.py trackers_test_quick_thumbs trackers_test_quick_low25`` (runs in
bench/results; their descriptors come from the runs' caches, or are computed again).
"""
import argparse
from pathlib import Path

import numpy as np
from candidates import defined_as_today
from common import WORK, markdown_table, tracker_run, write_results
from trackers import database, pair_points, score_sets

from advquery.protection import STRENGTHS
from advquery.trackers import CALIBRATION_MIN_AP, EDITS, VERDICTS, Calibration, SuiteDescriber, system

NAME = "verify_accuracy"


def band(share: float, shares: dict[str, float]) -> str:
    """The verdict a pair's real share of the original AP stands for."""
    return VERDICTS[0] if share <= shares["blocked"] else VERDICTS[2] if share >= shares["found"] else VERDICTS[1]


def run_points(name: str) -> list[dict]:
    """The (query, tracker, preset) pairs of a tracker run's shipped presets (:func:`trackers.pair_points`)."""
    run, ds = tracker_run(name)
    if run["split"] != "test":
        raise SystemExit(f"{name}: a run of the {run['split']} split; the calibration is judged on the test split")
    systems = tuple(system(s) for s in run["systems"] if not system(s).whitened)
    edits = tuple(e for e in EDITS if e.spec in run["edits"])
    labels = [label for label, info in run["sets"].items() if label in STRENGTHS
              and defined_as_today(label, info["preset"])]  # the presets as shipped, not their earlier definitions
    folders = {"original": None} | {label: WORK / "trackers" / Path(run["sets"][label]["folder"]).name
                                    for label in labels}
    for label, folder in folders.items():
        if folder is not None and not folder.is_dir():
            raise SystemExit(f"{folder}: the photos {name} protected with {label} are not here (run it again)")
    describer = SuiteDescriber(systems)
    descriptors, aps = score_sets(describer, database(describer, ds.images), folders, ds, edits)
    return [dict(p, run=name) for p in pair_points(ds.queries, labels, systems, edits, descriptors, aps)]


def tally(points: list[dict]) -> list:
    """Per verdict: the pairs given it, and the share of them whose real share of the AP is in its band; then
    the pairs two bands off (called blocked while still found, or the reverse)."""
    row = []
    for v in VERDICTS:
        given = [p for p in points if p["verdict"] == v]
        right = sum(p["band"] == v for p in given)
        row += [len(given), f"{100 * right / len(given):.0f}" if given else ""]
    far = sum({p["verdict"], p["band"]} == {VERDICTS[0], VERDICTS[2]} for p in points)
    return row + [len(points), f"{100 * np.mean([p['verdict'] == p['band'] for p in points]):.1f}", far]


def tallies(points: list[dict]) -> list[list]:
    """:func:`tally` rows per preset and over all, each for every verdict, the firm ones and those near a
    threshold."""
    rows = []
    for label in sorted({p["set"] for p in points}, key=list(STRENGTHS).index) + ["all"]:
        mine = [p for p in points if label in ("all", p["set"])]
        rows += [[f"{label}, {kind}", *tally([p for p in mine if keep(p)])]
                 for kind, keep in (("every verdict", lambda p: True), ("firm", lambda p: p["firm"]),
                                    ("near a threshold", lambda p: not p["firm"]),
                                    (f"original AP >= {100 * CALIBRATION_MIN_AP:.0f} %",
                                     lambda p: p["original_ap"] >= CALIBRATION_MIN_AP))]
    return rows


def render(results: dict) -> str:
    header = ["pairs", "blocked: given", "% right", "weakened: given", "% right", "still found: given", "% right",
              "all", "% right", "two bands off"]
    runs = ", ".join(f"`{r}`" for r in results["runs"])
    return "\n".join([
        f"The shipped calibration of `advquery verify --trackers` (`{results['source']}`) against test-split pairs "
        f"it was not fitted on: the whole-image (query, tracker, preset) pairs of {runs}, "
        f"{len(results['queries'])} queries. A verdict is right when the protected query's real share of the "
        f"original AP under that tracker is in its band: blocked at most {100 * results['shares']['blocked']:.0f} %, "
        f"still found at least {100 * results['shares']['found']:.0f} %, weakened between. Firm: the similarity "
        "outside the thresholds' bootstrap intervals; near a threshold: inside one (verify says so). Original AP "
        f">= {100 * CALIBRATION_MIN_AP:.0f} %: the pairs whose tracker finds the unprotected query at all (a share "
        "of a smaller AP swings with one database photo; the calibration is fitted on such pairs alone). Two bands "
        "off: called blocked while the tracker kept at least the found share, or the reverse.", "",
        markdown_table(header, results["rows"]), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="bench/trackers.py runs of the test split in bench/results")
    args = parser.parse_args()
    calibration = Calibration.load()
    points = []
    for name in args.runs:
        for p in run_points(name):
            s = system(p["system"])
            points.append(p | {"verdict": calibration.verdict(s, p["similarity"]),
                               "firm": calibration.firm(s, p["similarity"]),
                               "band": band(p["share"], calibration.shares)})
    results = {"command": " ".join(["python bench/verify_accuracy.py", *args.runs]), "runs": args.runs,
               "source": calibration.source, "shares": calibration.shares,
               "queries": sorted({p["query"] for p in points}), "rows": tallies(points)}
    write_results(NAME, results, render(results))


if __name__ == "__main__":
    main()
