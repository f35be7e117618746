"""Do the modifications block other kinds of CBIR? PIRE paper Tables 6-8 on roxford5k-mini.

Four retrieval systems: GeM (Lite0, working size 512, what the protections were computed against),
SIFT bag of words with Hamming Embedding (20k-word vocabulary trained on the database), CEDD and
GIST, the hand-crafted ones reading the photos at their full 1024 px. Query modifications, on the
standard queries that have a published CV-PIRE output (first ``--limit``), all saved as JPEG:

- PIRE with the paper's budget (2.3 grey levels, 30 steps, refined saving; outputs of
  ``protect_pire.py --settings paper-T30``);
- CV-PIRE as published with the thesis (JPEG quality 75);
- ours: pire's ``low`` preset (outputs of ``protect_pire.py --settings low``) and the default
  ``medium`` preset, which runs pire (shared with ``robustness.py``, the missing ones protected here);
- keypoint removal and injection (Do et al. 2010): RMD, LS, FMD, RMD+LS, LS+FMD, at photo resolution;
- Gaussian noise with the SSIM of the PIRE output of the same photo (paper Table 8).

Reports mAP (Medium and Hard, BB and WI queries) per system and modification, the random-ranking
mAP of each system, mean image quality and keypoint counts per modification, and the vocabulary
training and database indexing times (measured when not cached).

Run: ``python bench/other_systems.py [--limit 55]`` after ``python bench/protect_pire.py --size 512``.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from common import (CACHE, CVPIRE_PUBLISHED, DATA_ROOT, WORK, markdown_table, mean_quality, protect_resumable,
                    write_results)
from robustness import protect_set

from advquery.attacks import GaussianNoise, KeypointAttack
from advquery.attacks.keypoints import METHODS as KEYPOINT_METHODS
from advquery.evaluation.datasets import load_dataset
from advquery.evaluation.runner import evaluate
from advquery.io import read_photo
from advquery.models import load_model
from advquery.protection import make_attack
from advquery.quality import quality_report
from advquery.systems import GlobalSystem, NeuralSystem, SiftHESystem

NEURAL_SIZE = 512
PHOTO_SIZE = 1024
PIRE_PAPER = WORK / str(NEURAL_SIZE) / "paper-T30" / "refined" / "jpg95" / "std"
LOW = WORK / str(NEURAL_SIZE) / "low" / "quantised" / "jpg95" / "std"
MODIFIED = WORK / "systems"  # keypoint and noise outputs


def modify_all(attack_for, name: str, photos: list[Path], originals: dict) -> tuple[Path, dict]:
    """JPEG q95 outputs of the image attack ``attack_for(photo)`` (keypoints, noise) in MODIFIED/<name>,
    resumable; the folder and the mean of each per-photo stat."""
    folder = MODIFIED / name / "files"
    stats = [protect_resumable(attack_for(p), [p], originals, name, MODIFIED / name / "stats",
                               lambda q: {"out": folder / (q.stem + ".jpg")})[0] for p in photos]
    return folder, {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=55, help="standard queries with a CV-PIRE output (the first N)")
    parser.add_argument("--vocab-size", type=int, default=20_000)
    parser.add_argument("--systems", nargs="+", default=["gem", "sift-he", "cedd", "gist"])
    args = parser.parse_args()
    out_json = Path(__file__).parent / "results" / "other_systems.json"
    previous = json.loads(out_json.read_text()) if out_json.is_file() else {}
    std = load_dataset("roxford5k-mini", DATA_ROOT)
    published = {p.stem for p in CVPIRE_PUBLISHED.glob("*.jpg")}
    indices = [i for i, q in enumerate(std.queries) if q.stem in published][:args.limit]
    photos = [std.queries[i] for i in indices]
    missing = [p.name for p in photos for d in (PIRE_PAPER, LOW) if not (d / p.name).is_file()]
    if missing:
        raise SystemExit(f"other_systems: {len(missing)} PIRE outputs missing (e.g. {missing[0]}): "
                         "run python protect_pire.py --size 512 --settings low paper-T30 first")
    originals = {p: read_photo(p).rgb for p in photos}
    model = load_model()

    sets = {"original": None, "PIRE (paper budget)": PIRE_PAPER, "CV-PIRE (published)": CVPIRE_PUBLISHED,
            "ours: low": LOW}
    medium = make_attack(model, method="pire", size=NEURAL_SIZE, seed=0)
    sets["ours: medium (default)"], _ = protect_set("medium", medium, photos, originals, NEURAL_SIZE)
    extra = {}
    for method in KEYPOINT_METHODS:
        attack = KeypointAttack(method)
        sets[method.upper()], extra[method.upper()] = modify_all(lambda _, a=attack: a, method, photos, originals)
    noise_name = "noise (SSIM of PIRE)"
    sets[noise_name], extra[noise_name] = modify_all(
        lambda p: GaussianNoise(target_ssim=quality_report(originals[p], read_photo(PIRE_PAPER / p.name).rgb)["ssim"],
                                seed=0), "noise", photos, originals)

    quality = {name: mean_quality(quality_report(originals[p], read_photo(folder / p.name).rgb) for p in photos)
               for name, folder in sets.items() if folder is not None}

    systems = {"gem": NeuralSystem(model, NEURAL_SIZE), "sift-he": SiftHESystem(PHOTO_SIZE, words=args.vocab_size),
               "cedd": GlobalSystem("cedd", PHOTO_SIZE), "gist": GlobalSystem("gist", PHOTO_SIZE)}
    maps, timings, random_map = previous.get("map", {}), previous.get("seconds", {}), previous.get("random", {})
    for key in args.systems:
        system = systems[key]
        for name, folder in sets.items():
            row = {}
            for q in ("bb", "wi"):
                r = evaluate(std, system, system.size, queries=q, protocols=("medium", "hard"), query_dir=folder,
                             cache_dir=CACHE, progress=False, random_trials=10)
                row.update({f"{q}_{p}": float(np.nanmean(r.results[p].aps[indices])) for p in ("medium", "hard")})
                if name == "original":
                    random_map[key] = {p: r.random[p] for p in ("medium", "hard")}
                    fresh = {k: v for k, v in r.seconds.items() if k != "queries"}
                    if fresh:  # only an uncached run measures training and indexing
                        timings[key] = fresh
            maps.setdefault(key, {})[name] = row
            print(key, name, row, flush=True)
    write_results("other_systems", {"queries": [p.stem for p in photos], "quality": quality, "stats": extra,
                                    "map": maps, "random": random_map, "seconds": timings,
                                    "vocabulary_words": args.vocab_size},
                  render(maps, random_map, quality, extra, timings, len(photos)))


def render(maps, random_map, quality, extra, timings, n) -> str:
    """Tables: mAP per system and modification, quality and keypoints, timings."""
    names = list(next(iter(maps.values())))
    labels = {"gem": "GeM (Lite0)", "sift-he": "SIFT-HE", "cedd": "CEDD", "gist": "GIST"}
    lines = [f"roxford5k-mini, {n} standard queries with a published CV-PIRE output; mAP Medium (BB / WI), "
             "in brackets relative to the original queries; random ranking in the last row.", ""]
    rows = []
    for name in names:
        row = [name]
        for key in maps:
            m, o = maps[key][name], maps[key]["original"]
            row.append(" / ".join(f"{100 * m[f'{q}_medium']:.1f} ({100 * m[f'{q}_medium'] / o[f'{q}_medium']:.0f} %)"
                                  for q in ("bb", "wi")))
        rows.append(row)
    rows.append(["random ranking", *[f"{100 * random_map[k]['medium']:.1f}" for k in maps]])
    lines += [markdown_table(["queries", *[labels[k] for k in maps]], rows), ""]
    lines += ["**Hard protocol** (BB / WI mAP)", "",
              markdown_table(["queries", *[labels[k] for k in maps]],
                             [[name, *[f"{100 * maps[k][name]['bb_hard']:.1f} / {100 * maps[k][name]['wi_hard']:.1f}"
                                       for k in maps]] for name in names]), ""]
    lines += ["**Image quality of each modification** (mean over the photos; keypoints: SIFT at photo resolution, "
              "mean per photo)", "",
              markdown_table(["modification", "SSIM", "PSNR", "L-inf", "mean abs", "keypoints before", "removed",
                              "injected"],
                             [[name, round(q["ssim"], 4), round(q["psnr"], 2), round(q["linf"], 1),
                               round(q["mean_abs_change"], 2),
                               *[round(extra.get(name, {}).get(k, float("nan"))) if k in extra.get(name, {}) else ""
                                 for k in ("before", "removed", "injected")]]
                              for name, q in quality.items()]), ""]
    if timings:
        lines += ["**Training and indexing** (seconds, measured on the uncached run)", "",
                  markdown_table(["system", "step", "seconds"],
                                 [[labels[k], step, round(s, 1)] for k, t in timings.items() for step, s in t.items()]),
                  ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
