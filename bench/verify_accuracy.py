"""How often ``advquery verify --trackers`` is right, on queries its calibration never saw.

The shipped verdict thresholds are fitted on the validation split (``bench/trackers.py --calibrate``). For each
(query, tracker, preset) pair of test-split tracker runs, the verdict the shipped calibration gives the pair's
similarity is set beside the share of the original AP that the protected query really keeps under that tracker:
"blocked" claims at most the calibrated blocked share (25 %), "still found" at least the found share (75 %),
"weakened" in between. Counted per preset and over all, apart for firm verdicts and for those near a threshold.
Beside it, on the calibration's own (validation) pairs: how many verdicts are near a threshold, and the choice of
the pairs the fit uses (every pair, or those whose tracker finds the unprotected query), judged by two-fold
cross-validation over the validation queries.

Run: ``python bench/verify_accuracy.py trackers_test_quick_ownsize`` (runs in
bench/results; their descriptors come from the runs' caches, or are computed again).
"""
import argparse
import json
from pathlib import Path

import numpy as np
from candidates import defined_as_today
from common import RESULTS, WORK, markdown_table, tracker_run, write_results
from trackers import database, pair_points, score_sets

from advquery.protection import STRENGTHS
from advquery.trackers import (CALIBRATION_MIN_AP, EDITS, VERDICTS, Calibration, SuiteDescriber, system,
                               verdict_between)

NAME = "verify_accuracy"


def band(share: float, shares: dict[str, float]) -> str:
    """The verdict a pair's real share of the original AP stands for."""
    return verdict_between(share, shares["blocked"], shares["found"])


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
    return pair_points(ds.queries, labels, systems, edits, descriptors, aps)


def cross_validation(points: list[dict], halvings: int = 10, seed: int = 0) -> dict[str, dict[str, float]]:
    """The fit's choice of pairs judged within the calibration's split: its queries halved at random ``halvings``
    times, thresholds fitted on one half (on every pair, or on those with an original AP of at least
    :data:`CALIBRATION_MIN_AP`) and their verdicts scored on the other; per choice, the mean share of held-out
    verdicts right over all held-out pairs (``all``) and over those with that original AP (``found``)."""
    systems = sorted({p["system"] for p in points})
    queries = sorted({p["query"] for p in points})
    choices = {"every pair": 0.0, f"original AP >= {100 * CALIBRATION_MIN_AP:.0f} %": CALIBRATION_MIN_AP}
    scores = {choice: {"all": [], "found": []} for choice in choices}
    generator = np.random.default_rng(seed)
    for _ in range(halvings):
        half = set(generator.permutation(queries)[:len(queries) // 2])
        for fitted_on_half in (True, False):
            fitted = [p for p in points if (p["query"] in half) == fitted_on_half]
            held = [p for p in points if (p["query"] in half) != fitted_on_half]
            for choice, min_ap in choices.items():
                c = Calibration.fit(fitted, systems, "cross-validation", rounds=1, min_original_ap=min_ap)
                right = [c.verdict(system(p["system"]), p["similarity"]) == band(p["share"], c.shares) for p in held]
                scores[choice]["all"].append(np.mean(right))
                scores[choice]["found"].append(np.mean([r for r, p in zip(right, held)
                                                        if p["original_ap"] >= CALIBRATION_MIN_AP]))
    return {choice: {k: float(np.mean(v)) for k, v in per.items()} for choice, per in scores.items()}


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
        markdown_table(header, results["rows"]), "",
        f"Two bands off: the original AP of those pairs {100 * results['off_original_ap']:.1f} % in the median, "
        f"against {100 * results['original_ap']:.1f} % over all pairs.", "",
        f"**On the calibration's own pairs** (`{results['calibration_points']}`, validation split): verdicts near a "
        "threshold per preset, of all its pairs: "
        + ", ".join(f"{label} {n} of {total}" for label, (n, total) in results["near_on_calibration"].items()) + ".",
        "", "Which pairs the fit uses, chosen by two-fold cross-validation over the validation queries (10 random "
        "halvings; % of held-out verdicts right):", "",
        markdown_table(["fitted on", "all held-out pairs", f"held-out pairs with original AP >= "
                                                         f"{100 * CALIBRATION_MIN_AP:.0f} %"],
                       [[choice, f"{100 * v['all']:.1f}", f"{100 * v['found']:.1f}"]
                        for choice, v in results["cross_validation"].items()]), ""])


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
    off = [p["original_ap"] for p in points if {p["verdict"], p["band"]} == {VERDICTS[0], VERDICTS[2]}]
    calibration_points = Path(calibration.points).name
    validation = json.loads((RESULTS / calibration_points).read_text())
    near = {}
    for p in validation:
        n, total = near.get(p["set"], (0, 0))
        near[p["set"]] = (n + (not calibration.firm(system(p["system"]), p["similarity"])), total + 1)
    results = {"command": " ".join(["python bench/verify_accuracy.py", *args.runs]), "runs": args.runs,
               "source": calibration.source, "shares": calibration.shares,
               "queries": sorted({p["query"] for p in points}), "rows": tallies(points),
               "off_original_ap": float(np.median(off)),
               "original_ap": float(np.median([p["original_ap"] for p in points])),
               "calibration_points": calibration_points, "near_on_calibration": near,
               "cross_validation": cross_validation(validation)}
    write_results(NAME, results, render(results))


if __name__ == "__main__":
    main()
