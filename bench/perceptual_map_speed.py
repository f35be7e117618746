"""Speed of the CV-PIRE colour-variance map (thesis Algorithm 1) on one 1024 x 768 photo.

Ours (advquery.perceptual.color_variance_map, CIEDE2000 and CIE94, float32; best of 3, at the
default torch thread count and at 1 thread) against a per-shift skimage version of the same map
(for each of the 24 neighbour shifts, ``skimage.color.deltaE_ciede2000`` of the whole shifted
Lab image against the image, float64, no symmetry trick; 1 run), and against the thesis's
4.5 minutes per Oxford image (8 cores / 16 threads, pure Python). Both maps must agree to 1e-4
after normalisation. The photo is resized to cover 1024 x 768 and centre-cropped (the default one
already is 1024 x 768). Run: ``python bench/perceptual_map_speed.py [--image PATH]``.
"""
import argparse
import math
import os
import time

import numpy as np
import torch
from common import DATA_ROOT, markdown_table, write_results
from PIL import Image
from skimage.color import deltaE_ciede94, deltaE_ciede2000, rgb2lab

from advquery.perceptual import color_variance_map

THESIS_SECONDS = 270.0  # thesis 5.2.5: "around 4.5 minutes per Oxford-5k image query", 8 cores / 16 threads
SIZE = (1024, 768)  # width, height
N, SIGMA = 5, 1.0


def load_photo(path) -> np.ndarray:
    """(768, 1024, 3) float64 in [0, 1]: resized to cover 1024 x 768, then centre-cropped."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = max(SIZE[0] / img.width, SIZE[1] / img.height)
        if scale != 1:
            img = img.resize((math.ceil(img.width * scale), math.ceil(img.height * scale)), Image.BICUBIC)
        left, top = (img.width - SIZE[0]) // 2, (img.height - SIZE[1]) // 2
        img = img.crop((left, top, left + SIZE[0], top + SIZE[1]))
        return np.asarray(img, dtype=np.float64) / 255


def skimage_map(rgb: np.ndarray, metric: str = "ciede2000") -> np.ndarray:
    """The same map the straightforward numpy way: one skimage call per shift, each pair twice."""
    lab = rgb2lab(rgb)
    h, w = lab.shape[:2]
    d = N // 2
    acc, count = np.zeros((h, w)), np.ones((h, w))  # the centre counts, adds 0
    for dy in range(-d, d + 1):
        for dx in range(-d, d + 1):
            if dy == 0 and dx == 0:
                continue
            g = math.exp(-(dx * dx + dy * dy) / (2 * SIGMA ** 2)) / (2 * math.pi * SIGMA ** 2)
            centre = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
            neighbour = (slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
            if metric == "ciede2000":
                de = deltaE_ciede2000(lab[neighbour], lab[centre])
            else:
                de = deltaE_ciede94(lab[neighbour], lab[centre])  # neighbour as reference, as ours
            acc[centre] += (g * de) ** 2
            count[centre] += 1
    pv = np.sqrt(acc / count)
    return pv / pv.max()


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", default=str(DATA_ROOT / "roxford5k-mini" / "jpg" / "all_souls_000031.jpg"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rgb = load_photo(args.image)
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
    default_threads = torch.get_num_threads()
    color_variance_map(x[..., :64, :64])  # warm-up

    rows, records, maps = [], [], {}
    thread_counts = [default_threads] + ([1] if default_threads > 1 else [])
    for metric in ("ciede2000", "cie94"):
        for threads in thread_counts:
            torch.set_num_threads(threads)
            seconds, out = best_of(lambda: color_variance_map(x, n=N, sigma=SIGMA, metric=metric), args.repeats)
            maps.setdefault(metric, out[0, 0].double().numpy())
            records.append({"implementation": "advquery", "metric": metric, "dtype": "float32",
                            "torch_threads": threads, "seconds": seconds, "runs": args.repeats})
            print(records[-1], flush=True)
    torch.set_num_threads(default_threads)
    for metric in ("ciede2000", "cie94"):
        start = time.perf_counter()
        ref = skimage_map(rgb, metric)
        seconds = time.perf_counter() - start
        diff = float(np.abs(maps[metric] - ref).max())
        records.append({"implementation": "skimage per shift", "metric": metric, "dtype": "float64",
                        "torch_threads": None, "seconds": seconds, "runs": 1, "max_abs_diff_vs_ours": diff})
        print(records[-1], flush=True)
        assert diff < 1e-4, f"maps disagree: max abs diff {diff:.3g} ({metric})"

    skimage_seconds = {r["metric"]: r["seconds"] for r in records if r["implementation"] != "advquery"}
    for r in records:
        ours = r["implementation"] == "advquery"
        rows.append([r["implementation"], r["metric"], r["dtype"], r["torch_threads"] or "numpy (1)",
                     round(r["seconds"], 3), round(skimage_seconds[r["metric"]] / r["seconds"], 1) if ours else "",
                     round(THESIS_SECONDS / r["seconds"], 0), "" if ours else f"{r['max_abs_diff_vs_ours']:.1e}"])
    load_after = os.getloadavg()
    table = markdown_table(["implementation", "metric", "dtype", "torch threads", "seconds",
                            "x faster than skimage (same metric)", "x faster than thesis (270 s)",
                            "max abs diff vs ours"], rows)
    note = (f"Photo: {os.path.basename(args.image)} at {SIZE[0]} x {SIZE[1]}; n = {N}, sigma = {SIGMA}. "
            f"Ours: best of {args.repeats}; skimage: 1 run. Default torch threads: {default_threads}. "
            f"Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
            f"on {os.cpu_count()} cores.")
    write_results("perceptual_map_speed", {"image": os.path.basename(args.image), "size": SIZE, "n": N,
                                           "sigma": SIGMA, "default_torch_threads": default_threads,
                                           "loadavg_before": load_before, "loadavg_after": load_after,
                                           "thesis_seconds": THESIS_SECONDS, "records": records},
                  f"{table}\n\n{note}")


if __name__ == "__main__":
    main()
