"""Speed of the poolings an attack differentiates (GeM, MAC, SPoC, R-MAC), and of R-MAC's region search by max
pooling (``advquery.models.pooling.rmac``) against the search of a flattened copy of each region it replaced, in
one run.

Each pooling pools a float32 channels-last Lite feature map (1280 channels, as ``DescriptorModel.pool_map`` gets
it) forward and backward; the maps are those of a 1024 x 768 photo (24 x 32) and of a 560 x 420 view (14 x 18).
Each figure is the median of ``--repeats`` timings of ``--calls`` calls. Run alone:
``python bench/pooling_speed.py [--repeats 7] [--calls 50] [--threads 2] [--name pooling_speed]``.
"""
import argparse
import statistics
import time

import torch
from common import markdown_table, write_results

from advquery.models.efficientnet_lite import OUT_CHANNELS
from advquery.models.pooling import gem, l2n, mac, rmac, rmac_regions, spoc

MAPS = {"1024 x 768 photo": (24, 32), "560 x 420 view": (14, 18)}


def rmac_flattened_search(x: torch.Tensor, levels: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """The reference: R-MAC as before (commit 6fbe573), each region's maximum searched in a flattened row-major
    copy of the region, then gathered as ``rmac`` gathers."""
    h, w = x.shape[-2:]
    with torch.no_grad():
        rows = x.contiguous()
        places = []
        for top, left, hh, ww in [(0, 0, h, w), *rmac_regions(h, w, levels)]:
            i = rows[..., top:top + hh, left:left + ww].flatten(-2).argmax(-1)
            places.append((i // ww + top) * w + i % ww + left)
    return l2n(x.flatten(-2).gather(-1, torch.stack(places, -1)), eps).sum(-1)


POOLINGS = {"gem": lambda x: gem(x, 3.0), "mac": mac, "spoc": spoc, "rmac": rmac,
            "rmac, flattened search (before)": rmac_flattened_search}


def milliseconds(pool, fmap: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        leaf = fmap.detach().requires_grad_()
        l2n(pool(leaf)).sum().backward()
    return (time.perf_counter() - start) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="pooling_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, results = [], {}
    for label, (h, w) in MAPS.items():
        fmap = torch.rand(1, OUT_CHANNELS, h, w, generator=torch.Generator().manual_seed(0))
        fmap = fmap.contiguous(memory_format=torch.channels_last)
        timings = {name: [] for name in POOLINGS}
        for _ in range(args.repeats):  # the poolings in turn, so that a slower minute slows them all
            for name, pool in POOLINGS.items():
                timings[name].append(milliseconds(pool, fmap, args.calls))
        medians = {name: statistics.median(t) for name, t in timings.items()}
        results[label] = {"map": [h, w], "ms": medians}
        before = medians["rmac, flattened search (before)"]
        rows += [[label, name, round(ms, 3), round(before / ms, 2) if name.startswith("rmac") else ""]
                 for name, ms in medians.items()]
    markdown = markdown_table(["feature map of", "pooling", "ms (forward + backward)", "R-MAC before / this"],
                              rows)
    write_results(args.name, {"threads": args.threads, "repeats": args.repeats, "calls": args.calls,
                              "maps": results}, markdown)


if __name__ == "__main__":
    main()
