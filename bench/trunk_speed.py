"""Speed of one trunk pass (forward and backward to the input, as an attack's step makes it), today's code against
the two references it replaced, in one run: PyTorch's own backward of the strided depthwise convolutions
(``advquery.models.efficientnet_lite._StridedDepthwise``, used in bfloat16) and glibc's allocator at its defaults
(``advquery.models.allocator.keep_freed_memory``, set when a model loads).

The allocator is set per process, so each setting runs in worker processes of its own, taking turns (``--rounds``);
within a worker both backwards are timed pass by pass in turn. Each figure: the median of the passes of every round.
Lite0, Lite1 and Lite2 at a whole 1024 x 768 photo and at a 560 x 420 view, float32 and bfloat16 (bfloat16 where the
CPU has it). Run alone: ``python bench/trunk_speed.py [--rounds 3] [--passes 6] [--threads 2] [--name trunk_speed]``.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from common import markdown_table, write_results

import advquery.models as models_module
from advquery.models import efficientnet_lite, load_model
from advquery.models.precision import native_bfloat16

MODELS = ("efficientnet-lite0-gem", "efficientnet-lite1-gem", "efficientnet-lite2-gem")
SHAPES = ((768, 1024), (420, 560))
PHASES = efficientnet_lite._StridedDepthwise.apply


def torch_backward(x, weight, bias, stride):
    """The strided depthwise convolution as it was: PyTorch's convolution, forward and backward."""
    return F.conv2d(x, weight, bias, stride, 0, 1, x.shape[1])


def pass_seconds(model, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    leaf = x.clone().requires_grad_()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model.features(leaf)
    out.float().sum().backward()
    return time.perf_counter() - start


def worker(allocator: str, passes: int) -> dict:
    """{model|precision|shape|backward: [seconds of each pass]} in this process, with the allocator as named."""
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
                backwards = {"phases": PHASES, "torch": torch_backward} if dtype else {"torch": torch_backward}
                for _ in range(2):  # warm-up: kernels set up for the shape, memory at its peak
                    for fn in backwards.values():
                        efficientnet_lite._StridedDepthwise.apply = fn
                        pass_seconds(model, x, dtype)
                for _ in range(passes):
                    for backward, fn in backwards.items():
                        efficientnet_lite._StridedDepthwise.apply = fn
                        times.setdefault(f"{name}|{precision}|{h}x{w}|{backward}", []).append(
                            pass_seconds(model, x, dtype))
    efficientnet_lite._StridedDepthwise.apply = PHASES
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=6, help="timed passes of each setting per worker")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="trunk_speed")
    parser.add_argument("--worker", choices=["default", "kept"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.passes)))
        return
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for allocator in ("default", "kept"):
            out = subprocess.run([sys.executable, __file__, "--worker", allocator, "--passes", str(args.passes),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            for key, values in json.loads(out.stdout.splitlines()[-1]).items():
                times.setdefault(f"{key}|{allocator}", []).extend(values)
    ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
    rows = []
    for key in sorted({k.rsplit("|", 2)[0] for k in ms}, key=lambda k: (k.split("|")[1], k)):
        reference = ms[f"{key}|torch|default"]
        today = ms.get(f"{key}|phases|kept", ms[f"{key}|torch|kept"])
        phases = ms.get(f"{key}|phases|default")
        rows.append([*key.split("|"), round(reference, 1), "" if phases is None else round(phases, 1),
                     round(ms[f"{key}|torch|kept"], 1), round(today, 1), round(reference / today, 2)])
    header = ["model", "precision", "input", "torch backward, default allocator ms",
              "phases, default allocator ms", "torch backward, memory kept ms", "today (phases, memory kept) ms",
              "x faster than before"]
    markdown = (f"One trunk pass, forward and backward to the input, {args.threads} threads, nothing else running; "
                f"median of {args.rounds} rounds x {args.passes} passes per setting, each allocator setting in worker "
                "processes of its own taking turns, both backwards timed pass by pass in turn. Phases: the strided "
                "depthwise convolutions' input gradient computed by phases (bfloat16 only; float32 keeps torch's). "
                "Memory kept: glibc's allocator set by `advquery.models.allocator.keep_freed_memory`.\n\n"
                + markdown_table(header, rows))
    write_results(args.name, {"rounds": args.rounds, "passes": args.passes, "threads": args.threads,
                              "median_ms": ms, "header": header, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
