"""Where the attack's steps compose the perturbed photo: on the working grid or on the photo's own pixels.

At working size 512 the 1024 px query photos are downscaled 2x, so the two differ. For each preset (as
``advquery protect`` runs it for a JPEG q95 output), the validation split (the first 20 standard
roxford5k-mini queries) is protected with ``grid="working"`` and with ``grid="photo"``; reported: WI mAP
Medium of the protected queries (Lite0 GeM at 512), SSIM and seconds per photo (one shared machine).

Run: ``python bench/working_grid.py [--presets low medium]``.
"""
import argparse
import json
import time
from dataclasses import replace

import numpy as np
from common import CACHE, DATA_ROOT, WORK, markdown_table, write_results

from advquery.evaluation.datasets import load_dataset
from advquery.evaluation.runner import evaluate
from advquery.io import read_photo, to_tensor, to_uint8, write_photo_atomic
from advquery.models import load_model
from advquery.protection import make_attack
from advquery.quality import ssim

SIZE, VALIDATION = 512, 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["low", "medium"])
    args = parser.parse_args()
    model = load_model()
    full = load_dataset("roxford5k-mini", DATA_ROOT)
    val = replace(full, queries=full.queries[:VALIDATION], query_boxes=full.query_boxes[:VALIDATION],
                  gnd=full.gnd[:VALIDATION])
    base = evaluate(val, model, SIZE, queries="wi", protocols=("medium",), cache_dir=CACHE, progress=False)
    results = {"original": float(base.results["medium"].map), "rows": {}}
    for preset in args.presets:
        for grid in ("working", "photo"):
            folder = WORK / "working_grid" / f"{preset}-{grid}"
            stats = []
            for q in val.queries:
                target, record = folder / f"{q.stem}.jpg", folder / f"{q.stem}.json"
                if not record.is_file():
                    rgb = read_photo(q).rgb
                    attack = make_attack(model, strength=preset, size=SIZE, seed=0, jpeg_quality=95)
                    attack.grid = grid
                    start = time.perf_counter()
                    out = to_uint8(attack(to_tensor(rgb)))
                    seconds = time.perf_counter() - start
                    write_photo_atomic(target, out, format="JPEG", quality=95)
                    record.write_text(json.dumps({"seconds": seconds, "ssim": ssim(rgb, read_photo(target).rgb)}))
                stats.append(json.loads(record.read_text()))
            r = evaluate(val, model, SIZE, queries="wi", protocols=("medium",), query_dir=folder, cache_dir=CACHE,
                         progress=False)
            results["rows"][f"{preset} {grid}"] = {"wi_medium": float(r.results["medium"].map),
                                                   "ssim": float(np.mean([s["ssim"] for s in stats])),
                                                   "seconds": float(np.mean([s["seconds"] for s in stats]))}
            print(preset, grid, results["rows"][f"{preset} {grid}"], flush=True)
    rows = [[k, round(100 * v["wi_medium"], 2), round(100 * v["wi_medium"] / results["original"], 1),
             round(v["ssim"], 4), round(v["seconds"], 1)] for k, v in results["rows"].items()]
    write_results("working_grid", results,
                  f"Validation split (first 20 standard queries, 19 scored), working size {SIZE} px on 1024 px photos, "
                  f"JPEG q95 outputs; original WI mAP Medium {100 * results['original']:.2f} %. `grid`: where the "
                  "steps compose the perturbed photo (`auto` uses `photo` when a codec is in the loop: `low` with "
                  "JPEG output). Seconds on a machine shared with other jobs.\n\n"
                  + markdown_table(["preset / grid", "WI mAP Medium %", "% of original", "SSIM", "s/photo"], rows))


if __name__ == "__main__":
    main()
