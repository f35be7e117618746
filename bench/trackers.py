"""The tracker suite: how much retrieval each tracker of ``advquery.trackers`` gets back from protected photos.

The query photos of one split of roxford5k-mini (``validation``: the first 20 standard queries, used for every
choice; ``test``: the other 38, used only to report; queries without positives are not scored) are protected
with each preset as ``advquery protect`` does (working size 1024, JPEG q95 output). Each tracker edits the
query file (``advquery.trackers.EDITS``) and describes it with its system (``SYSTEMS``; database unedited),
whole-image (WI) and bounding-box (BB, the box follows the edit) queries alike. A cell's figure is the mAP
Medium of the protected queries as % of the original queries' mAP in the same cell. Per preset: SSIM, seconds
per photo, the median, 90th percentile and worst neural cell, the hand-crafted rows (SIFT-HE, CEDD, GIST on the
quick edits), a heat map (PNG). With ``--calibrate`` (validation split) the per-query pairs (similarity of
original and protected descriptors under a tracker, share of AP kept) are written and the verdict thresholds of
``advquery verify --trackers`` fitted on them (``advquery/data/tracker_calibration.json``).

Resumable: protected photos, database and query descriptors are kept in ``bench/.work`` and ``bench/.cache``.
``--quick`` runs the quick subset of systems and edits (``QUICK_SYSTEMS`` x ``QUICK_EDITS``).

Run: ``python bench/trackers.py --split test [--presets low medium high] [--quick] [--calibrate]``.
"""
import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from candidates import CANDIDATES, PROTECTING_MODEL, setting
from common import (CACHE, RESULTS, SPLITS, WORK, content_key, markdown_table, setting_digest, split_dataset,
                    write_results)

from advquery.evaluation.metrics import compute_map
from advquery.evaluation.runner import evaluate
from advquery.io import atomic_write, read_photo
from advquery.models import DEFAULT_MODEL, load_model
from advquery.protection import STRENGTHS, protect_photo
from advquery.systems import GlobalSystem, SiftHESystem
from advquery.trackers import (CALIBRATION_MIN_AP, CALIBRATION_PERCENTILES, CALIBRATION_ROUNDS, EDITS, QUICK_EDITS,
                               QUICK_SYSTEMS, SYSTEMS, Calibration, SuiteDescriber, System, share_summary)

SIZE = 1024  # protect's default working size
KINDS = ("wi", "bb")
DATABASE_CHUNK = 100  # database images between two saves of a run describing it
HANDCRAFTED_SIZE = 1024
PACKAGE_CALIBRATION = Path(__file__).parents[1] / "advquery" / "data" / "tracker_calibration.json"


def setting_folder(name: str) -> Path:
    """Where a setting's protected photos are kept: named by the setting and a digest of what it computes
    (:func:`common.setting_digest`), so a changed setting never reuses the files of the old one."""
    return WORK / "trackers" / f"{name}-{setting_digest(setting(name))}"


def attacked_models(name: str) -> list[str]:
    """The models a setting's protection is computed against: the protecting model and the setting's others."""
    first = PROTECTING_MODEL.get(name, DEFAULT_MODEL)
    return [first, *(m for m in setting(name).models if m != first)]


def protect_set(name: str, photos: list[Path], model) -> tuple[Path, list[dict]]:
    """The photos protected with a setting, as ``advquery protect`` writes them, and their report records;
    ``model``: the protecting model unless the candidate names another (``PROTECTING_MODEL``)."""
    folder = setting_folder(name)
    if name in PROTECTING_MODEL:
        model = load_model(PROTECTING_MODEL[name])
    records = []
    for photo in photos:
        target, stats = folder / f"{photo.stem}.jpg", folder / f"{photo.stem}.json"
        if not (stats.is_file() and target.is_file()):
            record = protect_photo(read_photo(photo), target, model, "JPEG", 95, strength=setting(name), size=SIZE,
                                   seed=0)
            stats.write_text(json.dumps(record.to_json()))
        records.append(json.loads(stats.read_text()))
        print(f"{name} {photo.stem}: SSIM {records[-1]['ssim']:.4f}, {records[-1]['seconds']:.1f} s", flush=True)
    return folder, records


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path) as f:
        return {k: f[k] for k in f}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _whiten(describer: SuiteDescriber, s: System, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return describer.whitening[s](torch.from_numpy(rows)).numpy()


def database(describer: SuiteDescriber, images: list[Path]) -> dict[System, np.ndarray]:
    """(n_db, D) descriptors of the unedited database under each system; the whitened systems' whitening is
    learned here, on their base system's rows, as a tracker learns it on its collection. The rows of systems not yet
    described are saved every ``DATABASE_CHUNK`` images beside the cache (one file per set of such systems), so
    that a stopped run resumes there."""
    key = content_key(images, {'v': 1})
    path = CACHE / "trackers" / f"{key}.npz"
    known = _load_npz(path)
    todo = [s for s in describer.systems if not s.whitened and s.name not in known]
    if todo:
        names = hashlib.sha1(" ".join(sorted(s.name for s in todo)).encode()).hexdigest()[:8]
        partial = CACHE / "trackers" / f"{key}-{names}.partial.npz"
        done = _load_npz(partial)
        rows = {s: list(done.get(s.name, ())) for s in todo}
        first = min(len(r) for r in rows.values())
        rows = {s: r[:first] for s, r in rows.items()}
        if first:
            print(f"database: resuming at {first}/{len(images)}", flush=True)
        start = time.perf_counter()
        for i in range(first, len(images)):
            for s, v in describer.describe(read_photo(images[i]).rgb, systems=todo).items():
                rows[s].append(v)
            if (i + 1) % DATABASE_CHUNK == 0 and i + 1 < len(images):
                _save_npz(partial, {s.name: np.stack(r) for s, r in rows.items()})
                print(f"database {i + 1}/{len(images)}, {time.perf_counter() - start:.0f} s", flush=True)
        known.update({s.name: np.stack(r) for s, r in rows.items()})
        _save_npz(path, known)
        partial.unlink(missing_ok=True)
    db = {s: known[s.name] for s in describer.systems if not s.whitened}
    describer.fit_whitening(db)
    db.update({s: _whiten(describer, s, db[s.base]) for s in describer.systems if s.whitened})
    return db


def query_descriptors(describer: SuiteDescriber, label: str, files: list[Path], boxes, edits):
    """``{(edit spec, kind): {system: (n_q, D)}}`` of the query files under every edit, WI and BB; kept per
    (set ``label``, query, edit) in bench/.work so that runs resume and later runs reuse them."""
    systems = describer.systems
    out = {(e.spec, k): {s: [] for s in systems} for e in edits for k in KINDS}
    base = [s for s in systems if not s.whitened]
    for f, box in zip(files, boxes):
        photo = None
        for e in edits:
            digest = hashlib.sha1(e.spec.encode()).hexdigest()[:10]
            path = WORK / "trackers" / "descriptors" / label / f.stem / f"{digest}.npz"
            known = _load_npz(path)
            missing = [s for s in base if any(f"{k}|{s.name}" not in known for k in KINDS)]
            if missing:
                photo = read_photo(f).rgb if photo is None else photo
                rgb, moved = e.apply(photo, box)
                for kind, b in (("wi", None), ("bb", moved)):
                    known.update({f"{kind}|{s.name}": v for s, v in describer.describe(rgb, b, systems=missing).items()})
                _save_npz(path, known)
            for k in KINDS:
                for s in systems:
                    v = known[f"{k}|{s.base.name}"]
                    out[e.spec, k][s].append(_whiten(describer, s, v[None])[0] if s.whitened else v)
        print(f"{label} {f.stem}: described", flush=True)
    return {key: {s: np.stack(v) for s, v in per.items()} for key, per in out.items()}


def score_sets(describer: SuiteDescriber, db: dict, folders: dict[str, Path | None], ds, edits) -> tuple[dict, dict]:
    """The descriptors of each set's queries (``folders``: label -> folder of protected photos, None for the
    originals; :func:`query_descriptors`) and their per-query APs (Medium), keyed (label, kind, system name, edit)."""
    gnd = ds.ground_truth("medium")
    descriptors, aps = {}, {}
    for label, folder in folders.items():
        files = [folder / f"{q.stem}.jpg" if folder else q for q in ds.queries]
        descriptors[label] = query_descriptors(describer, folder.name if folder else label, files, ds.query_boxes,
                                               edits)
        for (spec, kind), by_system in descriptors[label].items():
            for s, q in by_system.items():
                aps[label, kind, s.name, spec] = cell_aps(db[s], q, gnd)
    return descriptors, aps


def cell_aps(db: np.ndarray, queries: np.ndarray, gnd) -> np.ndarray:
    """Per-query AP (Medium) of ``queries`` (n_q, D) ranked against ``db`` (n_db, D) by inner product."""
    ranks = np.argsort(-(db @ queries.T), axis=0, kind="stable")
    return compute_map(ranks, gnd).aps


def pair_points(queries: list[Path], labels: list[str], systems, edits, descriptors: dict, aps: dict) -> list[dict]:
    """One (query, tracker, set) pair per protected query with a non-zero original AP under each whole-image
    tracker: the cosine similarity of its original's and its protected version's descriptors there (what ``advquery
    verify --trackers`` reads), the share of the original's AP the protected query keeps, and that AP."""
    points = []
    for label in labels:
        for s in systems:
            for e in edits:
                o, p = descriptors["original"][e.spec, "wi"][s], descriptors[label][e.spec, "wi"][s]
                ao, ap = aps["original", "wi", s.name, e.spec], aps[label, "wi", s.name, e.spec]
                points += [{"set": label, "system": s.name, "edit": e.spec, "query": queries[i].stem,
                            "similarity": float(o[i] @ p[i]), "share": float(ap[i] / ao[i]),
                            "original_ap": float(ao[i])}
                           for i in range(len(queries)) if ao[i] > 0]
    return points


def handcrafted_rows(ds, folders: dict[str, Path | None], edits) -> dict:
    """mAP Medium over the scored queries for SIFT-HE, CEDD and GIST: ``{label: {kind: {system: {edit: map}}}}``;
    each cell is kept in bench/.work (keyed by the set's folder and the queries) so that runs resume and a full run
    reuses the quick run's cells."""
    systems = {"sift-he": SiftHESystem(HANDCRAFTED_SIZE), "cedd": GlobalSystem("cedd", HANDCRAFTED_SIZE),
               "gist": GlobalSystem("gist", HANDCRAFTED_SIZE)}
    queries = hashlib.sha1(" ".join(q.stem for q in ds.queries).encode()).hexdigest()[:10]
    out = {}
    for label, folder in folders.items():
        path = WORK / "trackers" / "handcrafted" / f"{folder.name if folder else label}-{queries}.json"
        known = json.loads(path.read_text()) if path.is_file() else {}
        for kind in KINDS:
            for name, system in systems.items():
                for e in edits:
                    key = f"{kind}|{name}|{e.spec}"
                    if key not in known:
                        r = evaluate(ds, system, HANDCRAFTED_SIZE, queries=kind, protocols=("medium",),
                                     query_dir=folder, cache_dir=CACHE, progress=False, transform=e.chain)
                        known[key] = float(r.results["medium"].map)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        with atomic_write(path) as f:
                            f.write(json.dumps(known).encode())
                    out.setdefault(label, {}).setdefault(kind, {}).setdefault(name, {})[e.spec] = known[key]
                print(f"{label} {kind} {name}: done", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", choices=tuple(SPLITS), default="validation")
    parser.add_argument("--presets", nargs="+", default=list(STRENGTHS), choices=[*STRENGTHS, *CANDIDATES],
                        help="shipped presets and candidates of bench/candidates.py")
    parser.add_argument("--quick", action="store_true", help="the quick subset of systems and edits")
    parser.add_argument("--limit", type=int, help="only the split's first N queries (smoke runs)")
    parser.add_argument("--edits", nargs="+", choices=[e.spec for e in EDITS], metavar="SPEC",
                        help="only these edits of the suite (e.g. the cells a candidate is aimed at)")
    parser.add_argument("--systems", nargs="+", choices=[s.name for s in SYSTEMS], metavar="NAME",
                        help="only these systems of the suite, each name quoted (e.g. 'lite1 spoc 1024')")
    parser.add_argument("--no-handcrafted", action="store_true")
    parser.add_argument("--calibrate", action="store_true", help="fit the verify thresholds (validation split only)")
    parser.add_argument("--name")
    args = parser.parse_args()
    if args.calibrate and args.split != "validation":
        parser.error("--calibrate tunes a choice: validation split only")
    name = args.name or f"trackers_{args.split}" + ("_quick" if args.quick else "") + (f"_limit{args.limit}" if args.limit else "")
    systems, edits = (QUICK_SYSTEMS, QUICK_EDITS) if args.quick else (SYSTEMS, EDITS)
    if args.edits:
        edits = tuple(e for e in EDITS if e.spec in args.edits)
    if args.systems:
        systems = tuple(s for s in SYSTEMS if s.name in args.systems)
    ds = split_dataset(args.split, args.limit)
    describer = SuiteDescriber(systems)
    model = describer.models.get(DEFAULT_MODEL) or load_model(DEFAULT_MODEL)
    sets = {"original": (None, [])}
    for preset in args.presets:
        sets[preset] = protect_set(preset, ds.queries, model)
    db = database(describer, ds.images)
    descriptors, aps = score_sets(describer, db, {label: folder for label, (folder, _) in sets.items()}, ds, edits)
    maps = {}
    for (label, kind, system_name, spec), a in aps.items():
        maps.setdefault(label, {}).setdefault(kind, {}).setdefault(system_name, {})[spec] = float(np.mean(a))
    results = {"split": args.split, "quick": args.quick, "size": SIZE, "queries": [q.stem for q in ds.queries],
               "systems": [s.name for s in systems], "edits": [e.spec for e in edits], "map": maps, "sets": {}}
    for label, (folder, records) in sets.items():
        if folder is None:
            continue
        results["sets"][label] = {"preset": repr(setting(label)), "description": setting(label).description,
                                  "models": attacked_models(label), "folder": str(folder),
                                  "ssim": float(np.mean([r["ssim"] for r in records])),
                                  "psnr": float(np.mean([r["psnr"] for r in records])),
                                  "seconds": float(np.mean([r["seconds"] for r in records])),
                                  "flat_changed": float(np.mean([r["flat_changed"] for r in records])),
                                  "flat_changed_resave": float(np.mean([r["flat_changed_resave"] for r in records])),
                                  "summary": {kind: share_summary(maps[label][kind][s][e] / maps["original"][kind][s][e]
                                                                  for s in results["systems"] for e in results["edits"])
                                              for kind in KINDS}}
    if not args.no_handcrafted:
        folders = {label: folder for label, (folder, _) in sets.items()}
        results["handcrafted"] = handcrafted_rows(ds, folders, [e for e in edits if e in QUICK_EDITS])
    if args.calibrate:
        points = pair_points(ds.queries, list(results["sets"]), systems, edits, descriptors, aps)
        fitted = sum(p["original_ap"] >= CALIBRATION_MIN_AP for p in points)
        points_file = f"bench/results/{name}_calibration_points.json"
        calibration = Calibration.fit(
            points, [s.name for s in systems if not s.whitened],
            source=f"bench/trackers.py --calibrate on the {args.split} split, {fitted} of {len(points)} (query, "
                   f"tracker, preset) pairs (those with an original AP of at least {CALIBRATION_MIN_AP})",
            points_file=points_file)
        (RESULTS / Path(points_file).name).write_text(json.dumps(points))
        PACKAGE_CALIBRATION.parent.mkdir(exist_ok=True)
        PACKAGE_CALIBRATION.write_text(calibration.to_json())
        results["calibration"] = {"thresholds": calibration.thresholds, "intervals": calibration.intervals,
                                  "points": len(points), "fitted": fitted}
    write_results(name, results, render(results))
    heat_maps(results, name)


def shares(results: dict, label: str, kind: str) -> dict[str, dict[str, float]]:
    """{system: {edit: % of the original mAP}} of a set, neural and hand-crafted rows."""
    maps = results["map"]
    rows = {s: {e: 100 * maps[label][kind][s][e] / maps["original"][kind][s][e] for e in results["edits"]}
            for s in results["systems"]}
    for s, per in results.get("handcrafted", {}).get(label, {}).get(kind, {}).items():
        orig = results["handcrafted"]["original"][kind][s]
        rows[s] = {e: 100 * v / orig[e] for e, v in per.items()}
    return rows


def render(results: dict) -> str:
    lines = [f"Split **{results['split']}** (its {len(results['queries'])} roxford5k-mini standard queries with "
             f"positives), protected at {results['size']} px as `advquery protect` "
             "does (JPEG q95 output). Each cell: mAP Medium of the protected queries as % of the original queries' "
             "under the same tracker (system + edit of the query file); database unedited. Seconds per photo on a "
             "machine other jobs may have shared (see `speed.md` for timed figures).", ""]
    rows = []
    for label, info in results["sets"].items():
        wi, bb = info["summary"]["wi"], info["summary"]["bb"]
        rows.append([label, round(info["ssim"], 4), round(100 * info["flat_changed"], 1),
                     round(100 * info["flat_changed_resave"], 1), round(info["seconds"], 1),
                     *(round(100 * wi[k], 1) for k in ("median", "p90", "worst")),
                     *(round(100 * bb[k], 1) for k in ("median", "p90", "worst"))])
    lines += [markdown_table(["preset", "SSIM", "flat changed %", "re-save's %", "s/photo", "WI median %", "WI p90 %",
                              "WI worst %", "BB median %", "BB p90 %", "BB worst %"], rows), "",
              "Settings: " + "; ".join(f"**{label}**: {info.get('description', '')}"
                                       for label, info in results["sets"].items()) + ".", "",
              "Flat changed: share of the flat pixels (7 x 7 luminance std below 2 grey levels) changed by more than "
              "1 level; re-save's: the same for the original saved as JPEG q95 alone.", ""]
    orig = results["map"]["original"]
    lines += ["**Original mAP Medium (%) per cell** (the denominators; WI / BB)", "",
              markdown_table(["system", *results["edits"]],
                             [[s, *(f"{100 * orig['wi'][s][e]:.1f} / {100 * orig['bb'][s][e]:.1f}"
                                    for e in results["edits"])] for s in results["systems"]]), ""]
    for label in results["sets"]:
        for kind in KINDS:
            table = shares(results, label, kind)
            lines += [f"**{label}, {kind.upper()} queries: % of the original mAP**", "",
                      markdown_table(["system", *results["edits"]],
                                     [[s, *(f"{per[e]:.0f}" if e in per else "" for e in results["edits"])]
                                      for s, per in table.items()]), ""]
    if "calibration" in results:
        calibration = results["calibration"]
        lines += [f"**Verify calibration** ({calibration['fitted']} of {calibration['points']} pairs, those with an "
                  f"original AP of at least {CALIBRATION_MIN_AP}): similarity thresholds (blocked at or "
                  f"below, still found at or above) and the range each moves over when the queries are drawn "
                  f"again ({CALIBRATION_ROUNDS} bootstrap resamplings, percentiles {CALIBRATION_PERCENTILES[0]:g}-"
                  f"{CALIBRATION_PERCENTILES[1]:g})", "",
                  markdown_table(["system", "blocked", "still found", "blocked's range", "still found's range"],
                                 [[s, round(a, 3), round(b, 3),
                                   *(f"{low:.3f}-{high:.3f}" for low, high in calibration["intervals"][s])]
                                  for s, (a, b) in calibration["thresholds"].items()]),
                  ""]
    return "\n".join(lines)


def heat_maps(results: dict, name: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for label in results["sets"]:
        fig, axes = plt.subplots(1, 2, figsize=(22, 11), constrained_layout=True)
        for ax, kind in zip(axes, KINDS):
            table = shares(results, label, kind)
            grid = np.array([[per.get(e, np.nan) for e in results["edits"]] for per in table.values()])
            im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn_r", aspect="auto")
            ax.set_xticks(range(len(results["edits"])), results["edits"], rotation=90, fontsize=7)
            ax.set_yticks(range(len(table)), list(table), fontsize=7)
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7)
            ax.set_title(f"{label}: {kind.upper()} queries, % of the original mAP ({results['split']} split)")
        fig.colorbar(im, ax=axes, shrink=0.6)
        fig.savefig(RESULTS / f"{name}_{label}.png", dpi=80)
        plt.close(fig)


if __name__ == "__main__":
    main()
