"""``advquery verify``: how well a protected photo resists retrieval, compared with its original."""
import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..extraction import DEFAULT_SIZE, MULTISCALE, extract_descriptors
from ..io import read_photo
from ..models import DEFAULT_MODEL, load_model
from ..quality import quality_report
from ..retrieval import ImageIndex
from ..trackers import SUITES, check_protection, verdict_summary
from .common import add_model_options, model_for_index, positive_int, user_errors


def register(commands: argparse._SubParsersAction) -> None:
    v = commands.add_parser("verify", help="compare a protected photo with its original for a retrieval system")
    v.add_argument("original", type=Path, metavar="ORIGINAL", help="the photo as it was")
    v.add_argument("protected", type=Path, metavar="PROTECTED", help="its protected copy (advquery protect's output)")
    v.add_argument("--index", type=Path, metavar="INDEX_DIR",
                   help="also compare what the index retrieves for each (overlap@k)")
    v.add_argument("-k", type=positive_int, default=10, help="neighbours compared with --index (default: 10)")
    v.add_argument("--trackers", choices=tuple(SUITES),
                   help="also check the photo against the tracker suite (advquery.trackers): quick, a handful of "
                        "trackers across models, sizes and edits; full, every model and pooling under every edit. "
                        "Per tracker: the descriptor similarity of the two photos given the same edit and a verdict "
                        "(blocked, weakened, still found) calibrated on the tracker benchmark")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_options(v, size_default=None)
    v.set_defaults(run=run_verify)


@user_errors
def run_verify(args: argparse.Namespace) -> int:
    index = ImageIndex.load(args.index) if args.index else None
    if index:
        model, size, scales = model_for_index(args, index)
    else:
        model = load_model(args.model or DEFAULT_MODEL, device=args.device)
        size, scales = args.size or DEFAULT_SIZE, MULTISCALE if args.multiscale else (1.0,)
    original, protected = read_photo(args.original), read_photo(args.protected)
    result = {"original": str(args.original), "protected": str(args.protected), "model": model.name, "size": size}
    if original.rgb.shape == protected.rgb.shape:
        report = quality_report(original.rgb, protected.rgb, torch.get_num_threads())
        result["quality"] = {k: (None if v == float("inf") else v) for k, v in report.items()}
    else:  # quality compares pixel by pixel
        (w0, h0), (w1, h1) = original.size, protected.size
        result["quality"] = None
        result["quality_not_measured"] = f"the photos differ in size ({w0} x {h0} and {w1} x {h1} pixels)"
    descriptors = extract_descriptors(model, [args.original, args.protected], size, scales, progress=False).descriptors
    result["similarity"] = float(descriptors[0] @ descriptors[1])
    if index:
        hits_o, hits_p = index.search(descriptors, args.k)
        found_o, found_p = [p for p, _ in hits_o], [p for p, _ in hits_p]
        result["overlap_at_k"] = len(set(found_o) & set(found_p)) / len(found_o)
        result["k"] = args.k
        result["original_neighbours"] = [str(p) for p in found_o]
        result["protected_neighbours"] = [str(p) for p in found_p]
    if args.trackers:
        result["trackers"] = [asdict(c) for c in check_protection(original.rgb, protected.rgb, args.trackers,
                                                                   args.device)]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"descriptor similarity ({model.name}, {size} px): {result['similarity']:.4f}  (1 = identical)")
    if result["quality"] is None:
        print(f"image quality: not measured, {result['quality_not_measured']}")
    else:
        q = result["quality"]
        print(f"image quality: SSIM {q['ssim']:.4f}, PSNR {q['psnr'] or float('inf'):.2f} dB, "
              f"L-inf {q['linf']:.0f} levels, mean change {q['mean_abs_change']:.2f} levels")
    if index:
        print(f"overlap@{args.k}: {result['overlap_at_k']:.0%} of the original's neighbours are still retrieved "
              "for the protected photo")
    if args.trackers:
        print(f"trackers ({args.trackers}): similarity of the two photos under each tracker, and what it means")
        width = max(len(c["tracker"]) for c in result["trackers"])
        for c in result["trackers"]:
            print(f"  {c['tracker']:<{width}}  {c['similarity']:.4f}  {c['verdict']}"
                  + "  (near a threshold: could go either way)" * (not c["firm"]))
        print("  " + verdict_summary((c["verdict"] for c in result["trackers"]),
                                     near=sum(not c["firm"] for c in result["trackers"])))
    return 0
