"""Robustness of protection on roxford5k-mini (issue: protection that survives the real world).

Protects the first ``--limit`` standard query photos with each strength preset (JPEG quality 95
output, what ``advquery protect`` writes for JPEG inputs), then measures retrieval (Lite0 GeM
unless stated, mAP Medium over the protected queries that have positives) when the queries meet:
- resizing (25-200 %) and central cropping (90-40 %): PIRE paper Table 4;
- JPEG re-compression (quality 95-50) and JPEG 75 followed by downscaling;
- leaking: the positives of a few queries replaced in the database by protected versions
  (preset ``low``, another seed), queries protected with the same and with another preset
  (PIRE paper Table 5);
- transfer: queries protected against one model, retrieval with another.

Working size ``--size`` for protection and retrieval alike (default 512). The photos are 1024 px,
so at 512 px a 50 % downscale leaves the retrieval input nearly unchanged; ``resize:0.25`` is then
what a 50 % downscale is at the papers' 1024 px.

Run: ``python bench/robustness.py [--size 512] [--limit 24] [--parts protect,edits,leak,transfer]``.
"""
import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from common import CACHE, DATA_ROOT, RESULTS, WORK, markdown_table, mean_quality, protect_resumable, write_results

from advquery.evaluation.datasets import load_dataset
from advquery.evaluation.runner import evaluate
from advquery.io import read_photo
from advquery.models import load_model
from advquery.protection import PRESET_METHODS, STRENGTHS, make_attack
from advquery.quality import quality_report
from advquery.transforms import parse_transform

EDITS = ["none", "resize:0.25", "resize:0.5", "resize:0.8", "resize:1.5", "resize:2", "crop:0.9", "crop:0.8",
         "crop:0.6", "crop:0.4", "jpeg:95", "jpeg:85", "jpeg:75", "jpeg:50", "jpeg:75,resize:0.5",
         "jpeg:75,resize:0.25"]
MODELS = ("efficientnet-lite0-gem", "efficientnet-lite1-gem", "efficientnet-lite2-gem")
LEAK_QUERIES = 4


def protect_set(name: str, attack, photos: list[Path], originals: dict, size: int) -> tuple[Path, dict]:
    """Protected JPEG q95 copies of ``photos`` in WORK/robust/<size>/<name>; mean quality and seconds."""
    folder = WORK / "robust" / str(size) / name
    stats = protect_resumable(attack, photos, originals, name, folder / "stats",
                              lambda p: {"out": folder / "files" / (p.stem + ".jpg")},
                              lambda x: {"out": attack.render(x, attack.perturbation)})
    quality = mean_quality(quality_report(originals[p], read_photo(folder / "files" / (p.stem + ".jpg")).rgb)
                           for p in photos)
    return folder / "files", {**quality, "seconds_per_photo": float(np.mean([s["seconds"] for s in stats]))}


def scored_map(dataset, model, size, indices, queries="bb", **kwargs) -> float:
    """mAP (Medium) over the queries ``indices`` that have positives."""
    r = evaluate(dataset, model, size, queries=queries, protocols=("medium",), cache_dir=CACHE, progress=False,
                 **kwargs)
    return float(np.nanmean(r.results["medium"].aps[indices]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--limit", type=int, default=24, help="standard query photos to protect (the first N)")
    parser.add_argument("--presets", nargs="+", default=list(STRENGTHS))
    parser.add_argument("--method", choices=PRESET_METHODS, default="pire",
                        help="method the presets run (default pire, the method of the committed robustness_<size>)")
    parser.add_argument("--name", help="results name (default robustness_<size>)")
    parser.add_argument("--parts", default="protect,edits,leak,transfer")
    parser.add_argument("--transfer-limit", type=int, default=12,
                        help="photos protected with the medium preset against Lite1 and Lite2 (other directions; 0: skip)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    args.name = args.name or f"robustness_{args.size}"
    out_json = RESULTS / f"{args.name}.json"

    def folder_name(name: str) -> str:  # protected files of another method than pire never share pire's folders
        return name if args.method == "pire" else f"{args.method}-{name}"

    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results.pop("machine", None)  # this run's machine is written instead
    model = load_model()
    full = load_dataset("roxford5k-mini", DATA_ROOT)
    n = min(args.limit, len(full.queries))  # only the protected queries are described and scored
    std = replace(full, queries=full.queries[:n], query_boxes=full.query_boxes[:n], gnd=full.gnd[:n])
    indices = list(range(n))
    photos = [std.queries[i] for i in indices]
    originals = {p: read_photo(p).rgb for p in photos}
    sets, quality = {"original": None}, results.get("quality", {})
    for preset in args.presets:
        attack = make_attack(model, method=args.method, strength=preset, size=args.size, seed=0)
        sets[preset], quality[preset] = protect_set(folder_name(preset), attack, photos, originals, args.size)
    results.update(method=args.method, size=args.size, limit=len(indices), quality=quality,
                   scored=int(np.sum([len(std.ground_truth("medium")[i]["ok"]) > 0 for i in indices])))

    if "edits" in parts:
        table = results.setdefault("edits", {})
        for name, folder in sets.items():
            for spec in EDITS:
                transform = None if spec == "none" else parse_transform(spec)
                table[f"{name} {spec}"] = {q: scored_map(std, model, args.size, indices, q, query_dir=folder,
                                                         transform=transform) for q in ("bb", "wi")}
                print(name, spec, table[f"{name} {spec}"], flush=True)

    if "leak" in parts and "low" in sets:
        gnd = std.ground_truth("medium")
        chosen = sorted((i for i in indices if gnd[i]["ok"]), key=lambda i: -len(gnd[i]["ok"]))[:LEAK_QUERIES]
        positives = sorted({std.images[j] for i in chosen for j in gnd[i]["ok"]})
        leak_attack = make_attack(model, method=args.method, strength="low", size=args.size, seed=1)
        db_dir, leak_quality = protect_set(folder_name("leaked-db-low-seed1"), leak_attack, positives,
                                           {p: read_photo(p).rgb for p in positives}, args.size)
        rows = {}
        for background, db in (("original", None), ("replaced", db_dir)):
            for name in ("original", "low", "medium"):
                if name not in sets:
                    continue
                r = evaluate(std, model, args.size, queries="bb", protocols=("medium",), query_dir=sets[name],
                             db_dir=db, cache_dir=CACHE, progress=False)
                rows[f"{background} / {name}"] = {std.queries[i].stem: float(r.results["medium"].aps[i])
                                                  for i in chosen}
        results["leak"] = {"queries": [std.queries[i].stem for i in chosen], "replaced": len(positives),
                           "replaced_quality": leak_quality, "ap": rows}

    if "transfer" in parts:
        transfer = results.setdefault("transfer", {})
        models = {"efficientnet-lite0-gem": model, **{name: load_model(name) for name in MODELS[1:]}}
        for name in ["original", *args.presets]:
            for other in MODELS[1:]:
                transfer[f"{name} -> {other}"] = {q: scored_map(std, models[other], args.size, indices, q,
                                                                query_dir=sets[name])
                                                  for q in ("bb", "wi")}
                print(name, other, transfer[f"{name} -> {other}"], flush=True)
        # The other directions, on fewer photos: medium protection against Lite1 or Lite2.
        few = indices[:args.transfer_limit]
        for source in MODELS[1:] if few else ():
            folder, _ = protect_set(folder_name(f"medium-{source}"),
                                    make_attack(models[source], method=args.method, strength="medium",
                                                size=args.size, seed=0),
                                    photos[:len(few)], originals, args.size)
            for target in MODELS:
                m = models[target]
                transfer[f"medium against {source} -> {target}"] = {
                    q: scored_map(std, m, args.size, few, q, query_dir=folder) for q in ("bb", "wi")}
                transfer[f"original (first {len(few)}) -> {target}"] = {
                    q: scored_map(std, m, args.size, few, q) for q in ("bb", "wi")}
    write_results(args.name, results, render(results))


def render(results: dict) -> str:
    """Markdown tables of everything measured."""
    def pct(v, base):
        return f"{100 * v:.2f} ({100 * v / base:.0f} %)" if base else f"{100 * v:.2f}"

    names = ["original", *results["quality"]]
    lines = [f"Method {results.get('method', 'pire')}; Lite0 GeM, working size {results['size']} px, "
             f"first {results['limit']} standard queries "
             f"({results['scored']} with positives scored), protected outputs saved as JPEG quality 95; "
             "mAP Medium, in brackets relative to the original queries under the same edit.", ""]
    lines += [markdown_table(["preset", "SSIM", "PSNR", "L-inf", "mean abs", "s/photo"],
                             [[n, round(q["ssim"], 4), round(q["psnr"], 2), round(q["linf"], 1),
                               round(q["mean_abs_change"], 2), round(q["seconds_per_photo"], 1)]
                              for n, q in results["quality"].items()]), ""]
    if "edits" in results:
        e = results["edits"]
        for q, label in (("bb", "BB"), ("wi", "WI")):
            rows = [[spec] + [pct(e[f"{n} {spec}"][q], e[f"original {spec}"][q]) if f"{n} {spec}" in e else ""
                              for n in names] for spec in EDITS if f"original {spec}" in e]
            lines += [f"**{label} queries under edits**", "", markdown_table(["edit", *names], rows), ""]
    if "leak" in results:
        leak = results["leak"]
        lines += [f"**Leaking** ({leak['replaced']} positives of {len(leak['queries'])} queries replaced by "
                  f"`low` outputs with another seed, SSIM {leak['replaced_quality']['ssim']:.4f}; BB AP)", "",
                  markdown_table(["database / query", *leak["queries"]],
                                 [[k, *[round(100 * v[q], 2) for q in leak["queries"]]]
                                  for k, v in leak["ap"].items()]), ""]
    if "transfer" in results:
        t = results["transfer"]
        others = sorted({k.split(" -> ")[1] for k in t})
        sources = list(dict.fromkeys(k.split(" -> ")[0] for k in t))
        rows = [[n] + [f"{100 * t[f'{n} -> {o}']['bb']:.2f} / {100 * t[f'{n} -> {o}']['wi']:.2f}"
                       if f"{n} -> {o}" in t else "" for o in others] for n in sources]
        lines += ["**Transfer** (queries protected against one model, retrieval with another; BB / WI mAP "
                  "Medium; presets are against Lite0)", "",
                  markdown_table(["queries", *others], rows), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
