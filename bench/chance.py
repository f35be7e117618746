"""The chance level of each cell of a tracker run: the share of the original mAP a photo of another place keeps.

A protection promises that a query no longer looks like its place: that it retrieves no better than a photo of
somewhere else. Under a system whose ranking favours some database images whatever the query, such a photo still
keeps part of the original mAP; an attack that pushes the photo away from its place can go lower, but a cell at
that level is already as blocked as an unrelated photo. For each (system, edit) cell of a ``bench/trackers.py`` run
and each of its queries, the query is replaced by each other query of the run that shares none of its positives
(its descriptor under the same edit, whole image or bounding box) and the AP, on the first query's ground truth,
averaged: the cell's chance level is the mean of those APs as % of the original mAP in the same cell. Set beside
each preset's shares from the run: the worst cells with their chance levels, and each cell's share above chance.

Run: ``python bench/chance.py trackers_test_thumbs`` (a run's name in bench/results; its queries' descriptors
and the database's come from the run's caches, or are computed again).
"""
import argparse

import numpy as np
from common import POOLING_NAMES, markdown_table, tracker_run, write_results
from trackers import KINDS, database, score_sets, shares

from advquery.evaluation.metrics import compute_map
from advquery.trackers import EDITS, SuiteDescriber, share_summary, system

WORST = 5  # the worst cells listed per preset and kind


def unrelated(gnd: list[dict]) -> list[list[int]]:
    """Per query, the other queries sharing none of its positives (photos of another place)."""
    ok = [set(g["ok"]) for g in gnd]
    return [[j for j in range(len(gnd)) if j != i and not ok[i] & ok[j]] for i in range(len(gnd))]


def chance_map(db: np.ndarray, queries: np.ndarray, gnd: list[dict], others: list[list[int]]) -> float:
    """Mean over the queries of the mean AP (Medium) that the unrelated queries' descriptors reach on each
    query's ground truth."""
    ranks = np.argsort(-(db @ queries.T), axis=0, kind="stable")
    return float(np.mean([compute_map(ranks[:, js], [gnd[i]] * len(js)).aps.mean()
                          for i, js in enumerate(others)]))


def render(results: dict) -> str:
    lines = [f"Run `{results['run']}` (split **{results['split']}**, {len(results['queries'])} queries, "
             f"{len(results['systems'])} systems x {len(results['edits'])} edits). Chance level of a cell: the mAP "
             "Medium that photos of another place reach as queries (each query replaced by the run's other queries "
             "that share none of its positives, under the same edit), as % of the original mAP in the cell: what "
             "a query that no longer looks like its place keeps. Above chance: a preset's share minus the cell's "
             "chance level, in points.", ""]
    rows = []
    poolings = list(dict.fromkeys(system(s).pooling for s in results["systems"]))
    for kind in KINDS:
        chance = results["chance"][kind]
        cells = [chance[s][e] for s in results["systems"] for e in results["edits"]]
        by_pooling = {p: [] for p in poolings}
        for s in results["systems"]:
            by_pooling[system(s).pooling].extend(chance[s].values())
        rows.append([kind.upper(), *(round(100 * share_summary(cells)[k], 1) for k in ("median", "p90", "worst")),
                     *(round(100 * float(np.median(by_pooling[p])), 1) for p in poolings)])
    lines += ["**Chance level, % of the original mAP, over the cells**", "",
              markdown_table(["kind", "median", "p90", "worst", *(f"{POOLING_NAMES[p]} median" for p in poolings)],
                             rows), ""]
    for label, per_kind in results["sets"].items():
        rows = []
        for kind in KINDS:
            share, chance = per_kind[kind], results["chance"][kind]
            cells = sorted(((share[s][e], chance[s][e], s, e) for s in results["systems"] for e in results["edits"]),
                           reverse=True)
            above = [100 * (v - c) for v, c, _, _ in cells]
            rows.append([kind.upper(), round(100 * cells[0][0], 1), round(float(np.median(above)), 1),
                         round(float(np.percentile(above, 90)), 1), round(max(above), 1),
                         "; ".join(f"{s} / {e}: {100 * v:.1f} (chance {100 * c:.1f})" for v, c, s, e in cells[:WORST])])
        lines += [f"**{label}**", "",
                  markdown_table(["kind", "worst %", "above chance: median", "p90", "worst",
                                  f"the {WORST} worst cells: share % (chance %)"], rows), ""]
    for kind in KINDS:
        chance = results["chance"][kind]
        lines += [f"**Chance level per cell, {kind.upper()} queries, % of the original mAP**", "",
                  markdown_table(["system", *results["edits"]],
                                 [[s, *(f"{100 * chance[s][e]:.0f}" for e in results["edits"])]
                                  for s in results["systems"]]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a bench/trackers.py run's name in bench/results (e.g. trackers_test_thumbs)")
    args = parser.parse_args()
    run, ds = tracker_run(args.run)
    gnd = ds.ground_truth("medium")
    systems = tuple(system(s) for s in run["systems"])
    edits = tuple(e for e in EDITS if e.spec in run["edits"])
    describer = SuiteDescriber(systems)
    db = database(describer, ds.images)
    descriptors, aps = score_sets(describer, db, {"original": None}, ds, edits)
    others = unrelated(gnd)
    alone = [q.stem for q, js in zip(ds.queries, others) if not js]
    if alone:
        raise SystemExit(f"{args.run}: no query of another place in the run for {', '.join(alone)}")
    chance = {kind: {s.name: {} for s in systems} for kind in KINDS}
    for (spec, kind), by_system in descriptors["original"].items():
        for s, q in by_system.items():
            original = float(np.mean(aps["original", kind, s.name, spec]))
            if not np.isclose(original, run["map"]["original"][kind][s.name][spec], atol=1e-6):
                raise SystemExit(f"{args.run}: original mAP of {s.name} / {spec} ({kind}) differs from today's "
                                 f"({run['map']['original'][kind][s.name][spec]:.4f} against {original:.4f})")
            chance[kind][s.name][spec] = chance_map(db[s], q, gnd, others) / original
    results = {"run": args.run, "split": run["split"], "queries": run["queries"], "systems": run["systems"],
               "edits": run["edits"], "unrelated_per_query": [len(js) for js in others], "chance": chance,
               "sets": {label: {kind: {s: {e: v / 100 for e, v in per.items()}
                                       for s, per in shares(run, label, kind).items() if s in run["systems"]}
                                for kind in KINDS} for label in run["sets"]}}
    write_results(f"chance_{args.run}", results, render(results))


if __name__ == "__main__":
    main()
