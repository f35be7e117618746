"""PIRE protection benchmark on roxford5k-mini (issue: protect, benchmark section).

For each setting, every one of the 58 standard query photos and a fixed random subset of the
extended queries is protected (whole photo, as a user would), saved in each saving mode as
PNG and as JPEG quality 95, decoded again, and then:
- retrieval: mAP (Medium, Hard) with BB and WI standard queries and WI extended queries,
  queries taken from the decoded files;
- quality against the original photo: SSIM, PSNR, L-infinity, mean absolute change;
- cost: seconds and steps per photo.
The published CV-PIRE outputs (55 of the same photos) are measured the same way.

Settings name a preset of pire (``low``), of another method (``ssim-pire:low``) or the paper's setting
(``paper-T30``); see ``setting_attack``.

Run: ``python bench/protect_pire.py [--size 512] [--settings low medium high paper-T30] [--ext 60]``.
"""
import argparse
import json
import math
import random

import numpy as np
from common import (CVPIRE_PUBLISHED, DATA_ROOT, PAPER_EPS_LEVELS, RESULTS, WORK, jpeg_resave_quality,
                    markdown_table, mean_quality, protect_resumable, published_cvpire_quality, query_maps,
                    write_results)

from advquery.attacks import PIRE
from advquery.evaluation.datasets import load_dataset
from advquery.io import read_photo
from advquery.models import load_model
from advquery.protection import PRESET_METHODS, STRENGTHS, make_attack
from advquery.quality import quality_report

FORMATS = {"png": ".png", "jpg95": ".jpg"}  # written as PNG and as JPEG quality 95
MODES = ("quantised", "refined", "x10")  # a preset's one optimisation is saved in each mode


def setting_attack(name: str, model, size: int, seed: int):
    """(attack, {row label: steps of its snapshot, or None for the final result}, saving modes) of a setting.

    A preset of pire, or of another preset method as 'METHOD:PRESET' (e.g. 'ssim-pire:low'), saved in every
    mode, with options: '+jpeg' (optimised through the JPEG q95 it is saved as), '+coarseN' (the perturbation
    on a grid N times coarser than the working resolution instead of the preset's grid), '+stepsN' (at most N
    steps). Or a paper-like setting 'paper-T<steps>[,<steps>...]': one continuous optimisation of the largest
    T at the paper's budget, the smaller T its snapshots, saved in the paper's two modes."""
    method, _, setting = name.rpartition(":")
    preset, *options = setting.split("+")
    if preset in STRENGTHS and method in ("", *PRESET_METHODS):
        def number(prefix):  # N of an option '<prefix>N', None when not given (the preset's value)
            return next((int(o[len(prefix):]) for o in options if o.startswith(prefix)), None)

        return make_attack(model, method=method or "pire", strength=preset, size=size, seed=seed,
                           coarseness=number("coarse"),
                           steps=number("steps"), jpeg_quality=95 if "jpeg" in options else None), {name: None}, MODES
    ts = sorted(int(t) for t in name.split("-T")[1].split(","))
    attack = PIRE(model, eps=PAPER_EPS_LEVELS / 255, steps=ts[-1], size=size, seed=seed, saving="refined",
                  snapshot_every=math.gcd(*ts[:-1]) if len(ts) > 1 else None)
    return attack, {f"paper-T{t}": None if t == ts[-1] else t for t in ts}, ("refined", "x10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--settings", nargs="+", default=["low", "medium", "high", "paper-T30"])
    parser.add_argument("--ext", type=int, default=60, help="extended queries (fixed random subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="protect only the first N standard and N extended photos (smoke test)")
    parser.add_argument("--table-only", action="store_true", help="re-render the markdown table from the JSON")
    parser.add_argument("--name", help="results name (default protect_pire_<size>[_limit<N>])")
    args = parser.parse_args()
    args.name = args.name or f"protect_pire_{args.size}" + (f"_limit{args.limit}" if args.limit else "")
    if args.table_only:
        args.n_standard = 58
        stored = json.loads((RESULTS / f"{args.name}.json").read_text())
        return report(stored["records"], args, stored["machine"])  # the machine that measured them
    model = load_model()
    std = load_dataset("roxford5k-mini", DATA_ROOT)
    ext = load_dataset("roxford5k-mini-ext", DATA_ROOT)
    ext_idx = sorted(random.Random(0).sample(range(len(ext.queries)), args.ext))
    args.n_standard = len(std.queries)
    photos = list(std.queries[:args.limit]) + [ext.queries[i] for i in ext_idx[:args.limit]]
    cv_names = {p.stem for p in CVPIRE_PUBLISHED.glob("*.jpg")}

    std_idx = list(range(len(std.queries)))[:args.limit]
    ext_idx = ext_idx[:args.limit]

    def scores(query_dir=None, ext_dir=None):
        """mAP over the protected queries (all of them unless --limit)."""
        ext_maps = query_maps(ext, model, args.size, ext_idx, ext_dir, queries=("wi",))
        return {**query_maps(std, model, args.size, std_idx, query_dir),
                **{k.replace("wi_", "ext_"): v for k, v in ext_maps.items()}}

    records = [{"setting": "original", "mode": "-", "format": "-", **scores()}]
    originals = {p: read_photo(p).rgb for p in photos}
    # Re-saving as JPEG q95 without any protection: what the format alone costs in quality.
    records.append({"setting": "JPEG q95 re-save only", "mode": "-", "format": "jpg95",
                    **jpeg_resave_quality(originals[p] for p in std.queries[:args.limit])})
    records.append({"setting": "CV-PIRE published (55 photos, JPEG q75)", "mode": "-", "format": "jpg75",
                    **published_cvpire_quality()})
    for setting in args.settings:
        attack, rows, modes = setting_attack(setting, model, args.size, args.seed)
        keys = [(row, mode, fmt) for row in rows for mode in modes for fmt in FORMATS]

        def targets(photo):
            sub = "std" if photo in std.queries else "ext"
            return {(row, mode, fmt): WORK / f"{args.size}" / row / mode / fmt / sub / (photo.stem + FORMATS[fmt])
                    for row, mode, fmt in keys}

        def renders(x):
            """Every row's perturbation (the final one or a snapshot) in every saving mode."""
            v = {row: attack.perturbation if k is None else dict(attack.snapshots)[k] for row, k in rows.items()}
            return {(row, mode, fmt): attack.render(x, v[row], mode) for row, mode, fmt in keys}

        stats = protect_resumable(attack, photos, originals, setting, WORK / f"{args.size}" / setting / "stats",
                                  targets, renders)
        for row, mode, fmt in keys:
            # A snapshot row's time: its share of the steps of the run it was taken from.
            share = 1.0 if rows[row] is None else rows[row] / attack.steps
            folder = WORK / f"{args.size}" / row / mode / fmt
            qual = {p: quality_report(originals[p], read_photo(targets(p)[row, mode, fmt]).rgb)
                    for p in photos if p in std.queries}
            rec = {"setting": row, "mode": mode, "format": fmt, **scores(folder / "std", folder / "ext"),
                   **mean_quality(qual.values()),
                   "ssim_cvpire_photos": mean_quality(q for p, q in qual.items() if p.stem in cv_names)["ssim"],
                   "seconds_per_photo": share * float(np.mean([s["seconds"] for s in stats])),
                   "steps_per_photo": rows[row] or float(np.mean([s["steps"] for s in stats]))}
            records.append(rec)
            print(rec, flush=True)
        report(records, args)


def report(records: list[dict], args, machine: str | None = None) -> None:
    """Write the table of everything measured so far (``machine``: of a stored run, else this one)."""
    base = records[0]
    header = ["setting", "mode", "format", "BB Medium", "BB Hard", "WI Medium", "WI Hard", "ext WI Medium",
              "ext WI Hard", "BB Medium / original", "WI Medium / original", "ext WI Medium / original", "SSIM",
              "PSNR", "L-inf", "mean abs", "s/photo", "steps"]

    def fmt(r, key, scale=1.0, digits=2):
        return round(scale * r[key], digits) if key in r else ""

    def ratio(r, key):
        return f"{100 * r[key] / base[key]:.1f} %" if key in r else ""

    rows = [[r["setting"], r["mode"], r["format"], fmt(r, "bb_medium", 100), fmt(r, "bb_hard", 100),
             fmt(r, "wi_medium", 100), fmt(r, "wi_hard", 100), fmt(r, "ext_medium", 100), fmt(r, "ext_hard", 100),
             ratio(r, "bb_medium"), ratio(r, "wi_medium"), ratio(r, "ext_medium"), fmt(r, "ssim", digits=4),
             fmt(r, "psnr"), fmt(r, "linf", digits=1), fmt(r, "mean_abs_change"), fmt(r, "seconds_per_photo", digits=1),
             fmt(r, "steps_per_photo", digits=1)] for r in records]
    n_std, n_ext = min(args.limit or args.n_standard, args.n_standard), min(args.limit or args.ext, args.ext)
    note = (f"Lite0 GeM, working size {args.size} px; the first {n_std} standard queries (those with positives "
            f"scored) and {n_ext} extended queries (fixed random subset); quality over the {n_std} standard query "
            "photos, against the original decoded photo.")
    write_results(args.name, {"size": args.size, "records": records, "note": note,
                              **({"machine": machine} if machine else {})},
                  note + "\n\n" + markdown_table(header, rows))


if __name__ == "__main__":
    main()
