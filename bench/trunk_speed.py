"""Speed of the trunk's passes (forward, and backward to the input where an attack makes one) with the strided
depthwise convolutions' input gradient computed by phases (``advquery.models.efficientnet_lite._StridedDepthwise``,
used in bfloat16) against PyTorch's own backward of those layers, in one run.

Two workloads in bfloat16 (on a CPU that has it; float32 keeps torch's backward): one pass of Lite0, Lite1 and Lite2
at a whole 1024 x 768 photo and at a 560 x 420 view; and each preset's own mix, the passes (model, shape, backward or
not) of ``--steps`` steps of a protection of the validation split's first photo at 1024 px (recorded once, then
replayed bare on random inputs of those shapes, as ``bench/speed.py`` replays them). Both backwards are timed in
turn, pass by pass (one pass) or mix by mix (a preset); each figure is the median. Run alone:
``python bench/trunk_speed.py [--passes 8] [--mixes 3] [--steps 8] [--threads 2] [--name trunk_speed]``.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import markdown_table, split_dataset, write_results
from speed import PassRecorder, all_models, bare_seconds

from advquery.io import read_photo
from advquery.models import efficientnet_lite
from advquery.models.precision import native_bfloat16
from advquery.protection import OTHER_MODELS, STRENGTHS, attack_model, protect_photo

SHAPES = ((768, 1024), (420, 560))
BACKWARDS = {"phases": efficientnet_lite._StridedDepthwise.apply,
             "torch": lambda x, weight, bias, stride: F.conv2d(x, weight, bias, stride, 0, 1, x.shape[1])}


def pass_seconds(model, x: torch.Tensor) -> float:
    leaf = x.clone().requires_grad_()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.features(leaf)
    out.float().sum().backward()
    return time.perf_counter() - start


def record_mixes(models: dict, steps: int) -> dict:
    """{preset: [(model, shape, backward) of each pass]} of ``steps`` steps of each preset, in bfloat16."""
    lite0 = models["efficientnet-lite0-gem"]
    photo = read_photo(split_dataset("validation").queries[0])
    recorder = PassRecorder()
    for m in {*models.values(), *attack_model(lite0, OTHER_MODELS).members}:
        recorder.watch(m)
    mixes = {}
    with tempfile.TemporaryDirectory() as folder:
        for preset in STRENGTHS:
            recorder.passes.clear()
            protect_photo(photo, Path(folder) / "out.jpg", lite0, "JPEG", 95, strength=preset, size=1024, seed=0,
                          steps=steps, precision="bfloat16")
            mixes[preset] = list(recorder.passes)
    recorder.close()
    return mixes


def timed(run, repeats: int, warm_up: int = 1) -> dict[str, float]:
    """{backward: median seconds of ``run()``}, the backwards taking turns."""
    times = {name: [] for name in BACKWARDS}
    for i in range(warm_up + repeats):
        for name, fn in BACKWARDS.items():
            efficientnet_lite._StridedDepthwise.apply = fn
            seconds = run()
            if i >= warm_up:
                times[name].append(seconds)
    efficientnet_lite._StridedDepthwise.apply = BACKWARDS["phases"]
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=8, help="timed passes of each model and size per backward")
    parser.add_argument("--mixes", type=int, default=3, help="timed replays of each preset's mix per backward")
    parser.add_argument("--steps", type=int, default=8, help="steps of each preset's recorded protection")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="trunk_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not native_bfloat16(torch.device("cpu")):
        raise SystemExit("this CPU has no native bfloat16: the phases are not used here")
    models = all_models()
    rows = []
    for name, model in models.items():
        for h, w in SHAPES:
            x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
            x = x.contiguous(memory_format=torch.channels_last)
            ms = {k: 1000 * v for k, v in timed(lambda: pass_seconds(model, x), args.passes, warm_up=2).items()}
            rows.append([f"{name} {h}x{w}", round(ms["torch"], 1), round(ms["phases"], 1),
                         round(ms["torch"] / ms["phases"], 2)])
    for preset, mix in record_mixes(models, args.steps).items():
        ms = {k: 1000 * v for k, v in timed(lambda: bare_seconds(models, mix, torch.bfloat16), args.mixes).items()}
        rows.append([f"{preset} ({len(mix)} passes)", round(ms["torch"], 1), round(ms["phases"], 1),
                     round(ms["torch"] / ms["phases"], 2)])
    header = ["passes (bfloat16)", "torch's backward ms", "phases ms", "x faster"]
    markdown = (f"Trunk passes in bfloat16, forward and backward to the input, {args.threads} threads, nothing else "
                "running: one pass of each model at each input size (height x width), median of "
                f"{args.passes}; and each preset's passes of {args.steps} steps of a protection of the validation "
                "split's first photo at 1024 px, replayed bare on random inputs of their shapes (the forward-only "
                f"passes too), median of {args.mixes}. The two backwards of the strided depthwise convolutions timed "
                "in turn in one process: PyTorch's own, and the input gradient computed by phases.\n\n"
                + markdown_table(header, rows))
    write_results(args.name, {"passes": args.passes, "mixes": args.mixes, "steps": args.steps,
                              "threads": args.threads, "header": header, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
