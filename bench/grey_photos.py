"""Black-and-white photos: does a preset keep them grey, and what does it keep of its effect on them?

A photo whose channels are equal (a grey JPEG, or a colour file of a black-and-white picture) must come back grey:
a perturbation that differs between the channels draws coloured speckles into it, which the eye sees at once where
the same change in grey goes unseen. The attacks change the channels of such a photo together
(``advquery.perceptual.monochrome``) and ``advquery protect`` writes it as a grey file.

The first ``--limit`` scored queries of ``--split`` (default: validation), each as shipped (colour) and converted to
grey (PIL's "L", saved as a grey JPEG q95, as a black-and-white export is), are protected with each preset through
``advquery.protection.protect_photo`` (1024 px, JPEG q95 output, as ``advquery protect`` does). Per preset and input:
whole-image mAP Medium of the protected queries (Lite0 GeM at 1024) as % of the same queries unprotected (the grey
originals for the grey inputs), SSIM, the colour drawn into the photo (the largest difference between a decoded
pixel's channels, above the input's), the output files' mode and seconds per photo. Resumable (outputs kept in
``bench/.work/grey/NAME``).

Run: ``python bench/grey_photos.py [--split validation] [--presets low medium] [--inputs grey colour] [--limit 8]
[--name grey_photos]``.
To measure an earlier version of the package with the same script, put its source first on ``PYTHONPATH`` and
give another ``--name``; ``--figure-against`` that name then draws ``docs/grey_photos.png``: the default preset's
output of the first grey photo in both runs, enlarged where the earlier one drew the most colour.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from common import WORK, densest_window, markdown_table, query_maps, setting_digest, split_dataset, write_results
from PIL import Image

import advquery
from advquery.io import read_photo
from advquery.models import load_model
from advquery.protection import DEFAULT_STRENGTH, STRENGTHS, protect_photo
from advquery.quality import amplified_difference

SIZE = 1024
MODEL = "efficientnet-lite0-gem"
INPUTS = ("grey", "colour")
FIGURE = Path(__file__).parents[1] / "docs" / "grey_photos.png"
WINDOW, ZOOM, GAIN = 96, 4, 10


def grey_original(photo: Path, folder: Path) -> Path:
    """The photo converted to grey and saved as a grey JPEG q95 in ``folder`` (once)."""
    target = folder / photo.name
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(photo).convert("L").save(target, "JPEG", quality=95)
    return target


def spread(rgb: np.ndarray) -> np.ndarray:
    """Per pixel, the largest difference between its channels (grey levels): 0 for a grey pixel."""
    return rgb.astype(np.int16).max(axis=2) - rgb.astype(np.int16).min(axis=2)


def colour_drawn(original: np.ndarray, output: np.ndarray) -> int:
    """Grey levels of colour the output has beyond the original's: the largest spread between a pixel's channels."""
    return int(max(0, (spread(output) - spread(original)).max()))


def draw(original: Path, outputs: dict[str, Path]) -> dict:
    """``docs/grey_photos.png``: the grey ``original`` and each output (label: file), enlarged in the window where the
    first output has the most colour, each above its change x GAIN; returns the window."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = {"original": read_photo(original).rgb, **{label: read_photo(f).rgb for label, f in outputs.items()}}
    _, top, left = densest_window(spread(panels[next(iter(outputs))]), WINDOW)
    window = (slice(top, top + WINDOW), slice(left, left + WINDOW))
    fig, axes = plt.subplots(2, len(panels), figsize=(2.8 * len(panels), 5.8), constrained_layout=True)
    for column, (label, rgb) in enumerate(panels.items()):
        axes[0, column].imshow(rgb[window].repeat(ZOOM, 0).repeat(ZOOM, 1))
        axes[0, column].set_title(f"{label}\ncolour: up to {spread(rgb[window]).max()} levels", fontsize=9)
        change = amplified_difference(panels["original"][window], rgb[window], GAIN)
        axes[1, column].imshow(change.repeat(ZOOM, 0).repeat(ZOOM, 1))
        axes[1, column].set_title(f"change x{GAIN}", fontsize=9)
        for ax in axes[:, column]:
            ax.set_axis_off()
    fig.suptitle(f"{original.stem} in grey, protected with {DEFAULT_STRENGTH}: a {WINDOW} px window, enlarged x{ZOOM}",
                 fontsize=10)
    fig.savefig(FIGURE, dpi=90)
    plt.close(fig)
    return {"photo": original.stem, "top": top, "left": left, "window": WINDOW}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["low", "medium"], choices=list(STRENGTHS))
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS)
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--limit", type=int, default=8, help="the split's first N scored queries")
    parser.add_argument("--name", default="grey_photos")
    parser.add_argument("--figure-against", metavar="NAME", help="an earlier run's name: draw docs/grey_photos.png")
    args = parser.parse_args()
    dataset = split_dataset(args.split, args.limit)
    model = load_model(MODEL)
    work = WORK / "grey" / args.name
    sources = {"colour": {q: q for q in dataset.queries},
               "grey": {q: grey_original(q, WORK / "grey" / "originals") for q in dataset.queries}}
    indices = list(range(len(dataset.queries)))
    rows, payload = [], {"split": args.split, "queries": [q.stem for q in dataset.queries], "size": SIZE,
                         "model": MODEL, "package": str(Path(advquery.__file__).parent), "results": {}}
    for kind in args.inputs:
        before = query_maps(dataset, model, SIZE, indices, WORK / "grey" / "originals" if kind == "grey" else None,
                            queries=("wi",), protocols=("medium",))["wi_medium"]
        for preset in args.presets:
            folder = work / f"{preset}-{setting_digest(STRENGTHS[preset])}" / kind
            records = []
            for query, source in sources[kind].items():
                record_file = folder / f"{query.stem}.json"
                if not record_file.is_file():
                    original = read_photo(source)
                    record = protect_photo(original, folder / query.name, model, "JPEG", 95, strength=preset,
                                           size=SIZE, seed=0).to_json()
                    record.update(colour_drawn=colour_drawn(original.rgb, read_photo(folder / query.name).rgb),
                                  mode=Image.open(folder / query.name).mode)
                    record_file.write_text(json.dumps(record))
                records.append(json.loads(record_file.read_text()))
                print(preset, kind, query.stem, {k: records[-1][k] for k in ("ssim", "similarity", "colour_drawn")},
                      flush=True)
            after = query_maps(dataset, model, SIZE, indices, folder, queries=("wi",),
                               protocols=("medium",))["wi_medium"]
            result = {"wi_medium_original": before, "wi_medium_protected": after, "share": after / before,
                      "ssim": float(np.mean([r["ssim"] for r in records])),
                      "colour_drawn_max": max(r["colour_drawn"] for r in records),
                      "modes": sorted({r["mode"] for r in records}),
                      "seconds": float(np.mean([r["seconds"] for r in records]))}
            payload["results"][f"{preset} {kind}"] = result
            rows.append([preset, kind, round(100 * before, 2), round(100 * after, 2), round(100 * after / before, 1),
                         round(result["ssim"], 4), result["colour_drawn_max"], "/".join(result["modes"]),
                         round(result["seconds"], 1)])
    figure = ""
    if args.figure_against:
        default = f"{DEFAULT_STRENGTH}-{setting_digest(STRENGTHS[DEFAULT_STRENGTH])}"
        first = dataset.queries[0]
        payload["figure"] = draw(sources["grey"][first], {
            f"before ({args.figure_against})": WORK / "grey" / args.figure_against / default / "grey" / first.name,
            "now": work / default / "grey" / first.name})
        figure = (f" Figure: `docs/grey_photos.png` ({first.stem}, the {WINDOW} px window at "
                  f"({payload['figure']['left']}, {payload['figure']['top']}) where `{args.figure_against}` drew the "
                  f"most colour, enlarged x{ZOOM}).")
    table = markdown_table(["preset", "input", "WI mAP original %", "WI mAP protected %", "% of original", "SSIM",
                            "colour drawn (grey levels, max)", "output mode", "s/photo"], rows)
    header = (f"{args.split.capitalize()} split, first {len(indices)} scored queries, {SIZE} px, JPEG q95 outputs of "
              f"`protect_photo`; mAP: {MODEL} at {SIZE} px, whole-image queries, Medium protocol (grey inputs against "
              f"the grey originals). Package: `{payload['package']}`.{figure}")
    write_results(args.name, payload, f"{header}\n\n{table}")


if __name__ == "__main__":
    main()
