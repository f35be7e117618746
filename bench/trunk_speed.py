"""Speed of the trunk's passes (forward, and backward to the input where an attack makes one), today's code against
the two references it replaced, in one run: PyTorch's own backward of the strided depthwise convolutions
(``advquery.models.efficientnet_lite._StridedDepthwise``, used in bfloat16) and glibc's allocator at its defaults
(``advquery.models.allocator.keep_freed_memory``, set when a model loads).

Two workloads: one pass of Lite0, Lite1 and Lite2 at a whole 1024 x 768 photo and at a 560 x 420 view, float32 and
bfloat16 (bfloat16 where the CPU has it); and each preset's own mix, the passes (model, shape, backward or not) of
``--steps`` steps of a protection of the validation split's first photo at 1024 px (recorded once, then replayed
bare on random inputs of those shapes, as ``bench/speed.py`` replays them), in the precision ``--precision auto``
runs. The allocator is set per process, so each setting runs in worker processes of its own, taking turns
(``--rounds``); within a worker both backwards are timed in turn, pass by pass (one pass) or mix by mix (a preset).
Each figure: the median over the rounds and passes. Run alone:
``python bench/trunk_speed.py [--rounds 3] [--passes 6] [--steps 8] [--threads 2] [--name trunk_speed]``.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import WORK, markdown_table, split_dataset, write_results
from speed import PassRecorder, all_models, bare_seconds

import advquery.models as models_module
from advquery.io import read_photo
from advquery.models import efficientnet_lite, load_model
from advquery.models.precision import autocast_dtype, native_bfloat16, precision_name
from advquery.protection import OTHER_MODELS, STRENGTHS, attack_model, protect_photo

MODELS = ("efficientnet-lite0-gem", "efficientnet-lite1-gem", "efficientnet-lite2-gem")
SHAPES = ((768, 1024), (420, 560))
PHASES = efficientnet_lite._StridedDepthwise.apply


def torch_backward(x, weight, bias, stride):
    """The strided depthwise convolution as it was: PyTorch's convolution, forward and backward."""
    return F.conv2d(x, weight, bias, stride, 0, 1, x.shape[1])


def backwards(dtype: torch.dtype | None) -> dict:
    """The backwards compared at ``dtype``: in float32 the phases are not used, torch's alone is timed."""
    return {"phases": PHASES, "torch": torch_backward} if dtype == torch.bfloat16 else {"torch": torch_backward}


def pass_seconds(model, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    leaf = x.clone().requires_grad_()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model.features(leaf)
    out.float().sum().backward()
    return time.perf_counter() - start


def record_mixes(steps: int) -> dict:
    """{preset: (precision, [(model, shape, backward) of each pass])} of ``steps`` steps of each preset."""
    models = all_models()
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
                          steps=steps)
            mixes[preset] = (precision_name(autocast_dtype("auto", lite0)), list(recorder.passes))
    recorder.close()
    return mixes


def worker(allocator: str, passes: int, mixes_file: str) -> dict:
    """{workload|precision|backward: [seconds of each pass or mix]} in this process, with the allocator as named."""
    if allocator == "default":
        models_module.keep_freed_memory = lambda: False  # load_model leaves glibc's allocator as it is
    dtypes = {"float32": None, **({"bfloat16": torch.bfloat16} if native_bfloat16(torch.device("cpu")) else {})}
    times = {}
    for name in MODELS:
        model = load_model(name, device="cpu")
        for precision, dtype in dtypes.items():
            for h, w in SHAPES:
                x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
                x = x.contiguous(memory_format=torch.channels_last)
                for timed in [False] * 2 + [True] * passes:  # warm-up: kernels set up, memory at its peak
                    for backward, fn in backwards(dtype).items():
                        efficientnet_lite._StridedDepthwise.apply = fn
                        seconds = pass_seconds(model, x, dtype)
                        if timed:
                            times.setdefault(f"{name} {h}x{w}|{precision}|{backward}", []).append(seconds)
    models = all_models()
    for preset, (precision, mix) in json.loads(Path(mixes_file).read_text()).items():
        dtype = autocast_dtype(precision, models["efficientnet-lite0-gem"])
        mix = [(name, tuple(shape), backward) for name, shape, backward in mix]
        for timed in (False, True, True):
            for backward, fn in backwards(dtype).items():
                efficientnet_lite._StridedDepthwise.apply = fn
                seconds = bare_seconds(models, mix, dtype)
                if timed:
                    times.setdefault(f"{preset} ({len(mix)} passes)|{precision}|{backward}", []).append(seconds)
    efficientnet_lite._StridedDepthwise.apply = PHASES
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=6, help="timed passes of each setting per worker")
    parser.add_argument("--steps", type=int, default=8, help="steps of each preset's recorded protection")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="trunk_speed")
    parser.add_argument("--worker", choices=["default", "kept"], help=argparse.SUPPRESS)
    parser.add_argument("--mixes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.passes, args.mixes)))
        return
    mixes_file = WORK / "trunk_speed" / f"mixes-{args.steps}.json"
    mixes_file.parent.mkdir(parents=True, exist_ok=True)
    mixes_file.write_text(json.dumps(record_mixes(args.steps)))
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for allocator in ("default", "kept"):
            out = subprocess.run([sys.executable, __file__, "--worker", allocator, "--passes", str(args.passes),
                                  "--threads", str(args.threads), "--mixes", str(mixes_file)],
                                 capture_output=True, text=True, check=True)
            for key, values in json.loads(out.stdout.splitlines()[-1]).items():
                times.setdefault(f"{key}|{allocator}", []).extend(values)
    ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
    rows = []
    for key in dict.fromkeys(k.rsplit("|", 2)[0] for k in ms):
        reference = ms[f"{key}|torch|default"]
        today = ms.get(f"{key}|phases|kept", ms[f"{key}|torch|kept"])
        phases = ms.get(f"{key}|phases|default")
        rows.append([*key.split("|"), round(reference, 1), "" if phases is None else round(phases, 1),
                     round(ms[f"{key}|torch|kept"], 1), round(today, 1), round(reference / today, 2)])
    header = ["passes", "precision", "torch backward, default allocator ms", "phases, default allocator ms",
              "torch backward, memory kept ms", "today (phases, memory kept) ms", "x faster than before"]
    markdown = (f"Trunk passes, forward and backward to the input, {args.threads} threads, nothing else running: one "
                f"pass of each model at each input size (height x width), and each preset's passes of {args.steps} "
                "steps of a protection of the validation split's first photo at 1024 px (replayed bare on random "
                "inputs of their shapes, in the precision `--precision auto` runs; the forward-only passes too). "
                f"Median of {args.rounds} rounds x {args.passes} passes (a preset's mix: x 2), each allocator setting "
                "in worker processes of its own taking turns, the backwards timed in turn. Phases: the strided "
                "depthwise convolutions' input gradient computed by phases (bfloat16 only; float32 keeps torch's). "
                "Memory kept: glibc's allocator set by `advquery.models.allocator.keep_freed_memory`.\n\n"
                + markdown_table(header, rows))
    write_results(args.name, {"rounds": args.rounds, "passes": args.passes, "steps": args.steps,
                              "threads": args.threads, "median_ms": ms, "header": header, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
