"""Protection with freed memory kept for reuse (``advquery.models.memory.reused_memory``, which an attack runs under
for photos up to twice its working size) and with transparent huge pages (``THP_MEM_ALLOC_ENABLE``, which importing
advquery sets) against glibc's default allocator, in one run.

Three arms: ``glibc defaults`` (neither), ``reused memory`` (the whole protection inside a ``reused_memory`` block of
its own, whatever the photo's size; no huge pages) and ``default`` (advquery's: huge pages, and memory reused by the
attack for photos up to twice its working size). Three parts:

- ``elementwise``: a bfloat16 ReLU6 of a channels-last 96 x 384 x 512 map (Lite0's largest activation at 1024 px)
  into a new tensor, as a trunk's pass makes it: the median of ``--calls`` calls, with glibc's defaults and with
  memory reused, in this process (huge pages as its environment says, stated in the results).
- ``protect``: each preset protects the same ``--photos`` validation query photos (1024 px, JPEG q95 output,
  ``--precision auto``, ``protect_photo`` as ``advquery protect`` calls it) in every arm, each in a new process
  as a command runs it (after a 2-step protection that sets the kernels up), the order reversed from one photo to
  the next; seconds, the process's minor page faults during the protection and its peak resident memory (reset
  before the protection). Every arm writes the same bytes (checked).
- ``large``: the first validation photo enlarged to 4000 x 3000 (12 megapixels, a phone's photo), ``medium`` at
  1024 px (its 40 steps), the same arms: why the attack reuses memory only for photos up to twice its working size,
  and what huge pages do for the others.

"Without reuse" is the same code with :func:`advquery.models.memory.reused_memory` seeing no glibc, so glibc keeps
its defaults. Run alone: ``python bench/allocator.py [--parts elementwise,protect,large] [--presets low medium]
[--photos 2]``.
"""
import argparse
import contextlib
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from common import WORK, markdown_table, split_dataset, write_results

from advquery.io import Photo, read_photo
from advquery.models import load_model, memory
from advquery.protection import STRENGTHS, protect_photo

SIZE = 1024
HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"
ARMS = ("glibc defaults", "reused memory", "default")


@contextlib.contextmanager
def arm(name: str):
    """The block run as arm ``name`` says (huge pages are the process's environment's): ``reused memory`` inside a
    ``reused_memory`` block, ``default`` as the attack decides, ``glibc defaults`` with ``reused_memory`` finding no
    glibc to set."""
    if name == "reused memory":
        with memory.reused_memory():
            yield
    elif name == "default":
        yield
    else:
        glibc = memory._glibc
        memory._glibc = lambda: None
        try:
            yield
        finally:
            memory._glibc = glibc


def peak_reset() -> None:
    """Reset the process's peak resident memory (``VmHWM``) to its current size (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def elementwise(calls: int) -> dict:
    x = torch.randn(1, 96, 384, 512, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    out = {}
    for name in ARMS[:2]:
        with arm(name):
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                F.relu6(x)
                times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * 1000
    return out


def enlarged(decoded: Photo, long_side: int) -> Photo:
    """The decoded photo enlarged (bicubic) to ``long_side`` pixels on its long side; 0: as it is."""
    if not long_side:
        return decoded
    h, w = decoded.rgb.shape[:2]
    scale = long_side / max(h, w)
    return replace(decoded, rgb=np.asarray(Image.fromarray(decoded.rgb).resize(
        (round(w * scale), round(h * scale)), Image.BICUBIC)))


def timed_protection(preset: str, stem: str, steps: int, long_side: int, target: Path) -> dict:
    """One timed protection in this process of the validation photo ``stem`` (enlarged to ``long_side``; 0: as it
    is) into ``target``, after a 2-step one that sets the kernels up for its shapes: ``protect_photo``'s seconds, the
    process's CPU seconds and minor page faults during it, its peak resident memory and the file's SHA-256."""
    model = load_model("efficientnet-lite0-gem")
    photo = next(p for p in split_dataset("validation").queries if p.stem == stem)
    decoded = enlarged(read_photo(photo), long_side)
    protect_photo(decoded, target.parent / "warm-up.jpg", model, "JPEG", 95, strength=preset, size=SIZE, seed=0,
                  steps=2)
    before = resource.getrusage(resource.RUSAGE_SELF)
    peak_reset()
    record = protect_photo(decoded, target, model, "JPEG", 95, strength=preset, size=SIZE, seed=0, steps=steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"preset": preset, "photo": stem, "pixels": decoded.rgb.shape[0] * decoded.rgb.shape[1], "steps": steps,
            "seconds": record.seconds,
            "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt, "peak_mib": peak_mib(),
            "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}


def protect_child(preset: str, stem: str, name: str, steps: int, long_side: int) -> dict:
    """One timed protection in this process (a child of :func:`protect`) as arm ``name`` says
    (:func:`timed_protection`)."""
    target = WORK / "allocator" / f"{preset}-{steps}-{long_side}-{name.replace(' ', '-')}" / f"{stem}.jpg"
    with arm(name):
        return {**timed_protection(preset, stem, steps, long_side, target), "arm": name}


def protect(args, cases: list[tuple[str, str, int, int]]) -> list[dict]:
    """Each case (preset, photo, steps, long side) and arm in a process of its own, as a command protects (glibc
    starts from its defaults in each; huge pages only in the ``default`` arm), the arms' order reversed from one case
    to the next."""
    rows = []
    for k, case in enumerate(cases):
        for name in ARMS if k % 2 == 0 else ARMS[::-1]:
            env = os.environ | {HUGE_PAGES: "1" if name == "default" else "0"}
            child = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", case[0],
                                    case[1], name, str(case[2]), str(case[3])], capture_output=True, text=True,
                                   check=True, env=env)
            rows.append(json.loads(child.stdout.splitlines()[-1]))
            print(rows[-1], flush=True)
        if len({r["sha256"] for r in rows[-len(ARMS):]}) != 1:
            raise SystemExit(f"{case}: the arms wrote different files")
    return rows


def table(rows: list[dict]) -> str:
    out = []
    for preset in dict.fromkeys(r["preset"] for r in rows):
        by_arm = {name: [r for r in rows if r["preset"] == preset and r["arm"] == name] for name in ARMS}
        seconds = {name: statistics.mean(r["seconds"] for r in arm_rows) for name, arm_rows in by_arm.items()}
        for name, arm_rows in by_arm.items():
            out.append([preset, name, round(seconds[name], 1),
                        round(statistics.mean(r["minor_faults"] for r in arm_rows)),
                        round(max(r["peak_mib"] for r in arm_rows)),
                        round(seconds["glibc defaults"] / seconds[name], 3)])
    return markdown_table(["preset", "allocator", "s/photo", "minor page faults/photo", "peak MiB",
                           "speed-up vs glibc defaults"], out)


def render(results: dict) -> str:
    parts = []
    if "elementwise" in results:
        e = results["elementwise"]
        parts.append("**A bfloat16 ReLU6 into a new tensor** (1 x 96 x 384 x 512, channels last; median of "
                     f"{results['calls']} calls; {HUGE_PAGES}={results['huge_pages']}): {e['glibc defaults']:.1f} ms "
                     f"with glibc's defaults, {e['reused memory']:.1f} ms with freed memory reused.")
    if "protect" in results:
        photos = ", ".join(dict.fromkeys(r["photo"] for r in results["protect"]))
        parts.append(f"**Protection** (validation photos {photos}; 1024 px, JPEG q95 output, `--precision auto`; "
                     "each protection in a new process, the arms' order reversed from photo to photo, all wrote the "
                     "same files)\n\n"
                     + table(results["protect"]))
    if "large" in results:
        r = results["large"][0]
        parts.append(f"**A 12-megapixel photo** ({r['photo']} enlarged to {r['pixels'] / 1e6:.0f} megapixels; "
                     f"{r['steps']} steps, working size 1024 px, each arm in a new process, all wrote the same file)"
                     "\n\n" + table(results["large"]))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="elementwise,protect,large")
    parser.add_argument("--presets", nargs="+", default=["low", "medium"], choices=list(STRENGTHS))
    parser.add_argument("--photos", type=int, default=2, help="validation photos protected")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="allocator")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)  # preset, photo, arm, steps, long side
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        preset, stem, name, steps, long_side = args.child
        print(json.dumps(protect_child(preset, stem, name, int(steps), int(long_side))))
        return
    parts = set(args.parts.split(","))
    results = {"threads": args.threads, "calls": args.calls, "huge_pages": os.environ[HUGE_PAGES]}
    if "elementwise" in parts:
        results["elementwise"] = elementwise(args.calls)
    if "protect" in parts:
        cases = [(preset, photo.stem, STRENGTHS[preset].steps, 0) for preset in args.presets
                 for photo in split_dataset("validation", args.photos).queries]
        results["protect"] = protect(args, cases)
    if "large" in parts:
        results["large"] = protect(args, [("medium", split_dataset("validation", 1).queries[0].stem,
                                             STRENGTHS["medium"].steps, 4000)])
    write_results(args.name, results, render(results))


if __name__ == "__main__":
    main()
