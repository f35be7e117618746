"""Protection time of this checkout against a reference commit, in one run: for changes meant to make protection
quicker without changing what it writes.

Each case (a preset, a validation photo, its steps, and the photo's long side: as it is, 1024 px, or enlarged to
4000 px, a 12-megapixel phone photo) is protected by both checkouts, each in a new process as a command protects
(``protect_photo``, JPEG q95 output, working size 1024 px, ``--precision auto``, after a 2-step protection that
sets the kernels up), the order of the two reversed from one case to the next. Per protection: seconds
(``protect_photo``'s), the process's CPU seconds during it, and its peak resident memory; the two checkouts must
write the same file (checked: else the run stops). The reference is checked out into a git worktree under
``bench/.work/versions/``.

Run alone: ``python bench/versions.py --reference COMMIT [--presets low medium high] [--photos 2]
[--large-runs 2] [--large-steps 40] [--name versions]``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from allocator import SIZE, timed_protection
from common import WORK, git, markdown_table, split_dataset, write_results

LARGE_SIDE = 4000  # a 12-megapixel photo's long side (4000 x 3000)
CHECKOUT = Path(__file__).resolve().parents[1]


def protect_child(checkout: Path, label: str, preset: str, stem: str, steps: int, long_side: int) -> dict:
    """One timed protection in this process with the package of ``checkout`` (a child of :func:`run_case`;
    :func:`allocator.timed_protection`)."""
    import advquery

    if not Path(advquery.__file__).resolve().is_relative_to(checkout):
        raise SystemExit(f"advquery was imported from {advquery.__file__}, not from {checkout}")
    target = WORK / "versions" / label / f"{preset}-{steps}-{long_side}-{stem}.jpg"
    return timed_protection(preset, stem, steps, long_side, target)


def reference_checkout(commit: str) -> tuple[Path, str]:
    """A worktree of ``commit`` under bench/.work/versions (made once) and the commit's short hash."""
    short = git("rev-parse", "--short=12", f"{commit}^{{commit}}")
    path = WORK / "versions" / f"checkout-{short}"
    if not (path / "advquery").is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--detach", "--force", str(path), short)
    return path.resolve(), short


def run_case(checkouts: dict[str, Path], order: list[str], case: dict, threads: int) -> dict:
    """``case`` protected by each checkout in ``order``, each in a process of its own; the files must agree."""
    results = {}
    for label in order:
        env = os.environ | {"PYTHONPATH": str(checkouts[label])}
        child = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--child", str(checkouts[label]),
                                label, case["preset"], case["photo"], str(case["steps"]), str(case["long_side"])],
                               capture_output=True, text=True, env=env, cwd=checkouts[label])
        if child.returncode:
            raise SystemExit(f"{label} {case}: the protection failed:\n{child.stderr[-2000:]}")
        results[label] = json.loads(child.stdout.splitlines()[-1])
        print(label, case, results[label], flush=True)
    if len({r["sha256"] for r in results.values()}) != 1:
        raise SystemExit(f"{case}: the two checkouts wrote different files")
    return {**case, "order": order, "results": results}


def table(rows: list[dict], labels: list[str]) -> str:
    reference, this = labels
    out = []
    for kind in dict.fromkeys((r["preset"], r["long_side"]) for r in rows):
        group = [r for r in rows if (r["preset"], r["long_side"]) == kind]
        mean = {label: {key: statistics.mean(r["results"][label][key] for r in group)
                        for key in ("seconds", "cpu_seconds")} for label in labels}
        peak = {label: max(r["results"][label]["peak_mib"] for r in group) for label in labels}
        size = "1024 px" if not kind[1] else f"{kind[1]} px (12 MP)"
        out.append([kind[0], size, group[0]["steps"], len(group), round(mean[reference]["seconds"], 1),
                    round(mean[this]["seconds"], 1), round(mean[reference]["seconds"] / mean[this]["seconds"], 2),
                    round(mean[reference]["cpu_seconds"], 1), round(mean[this]["cpu_seconds"], 1),
                    round(peak[reference]), round(peak[this])])
    return markdown_table(["preset", "photo", "steps", "protections each", f"s {reference}", f"s {this}",
                           "x quicker", f"CPU s {reference}", f"CPU s {this}", f"peak MiB {reference}",
                           f"peak MiB {this}"], out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="the commit to compare this checkout with")
    parser.add_argument("--presets", nargs="+", default=["low", "medium", "high"])
    parser.add_argument("--photos", type=int, default=2, help="validation photos at their own size (1024 px)")
    parser.add_argument("--large-runs", type=int, default=2, help="protections of the 12-megapixel photo each")
    parser.add_argument("--large-steps", type=int, default=40, help="steps of medium on the 12-megapixel photo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="versions")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)  # checkout, label, preset, photo, steps, side
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        checkout, label, preset, stem, steps, long_side = args.child
        print(json.dumps(protect_child(Path(checkout), label, preset, stem, int(steps), int(long_side))))
        return
    if not args.reference:
        parser.error("--reference COMMIT is required")
    from advquery.protection import STRENGTHS

    reference, short = reference_checkout(args.reference)
    this = git("rev-parse", "--short=12", "HEAD")
    checkouts = {short: reference, this: CHECKOUT}
    labels = [short, this]
    cases = [{"preset": preset, "photo": photo.stem, "steps": STRENGTHS[preset].steps, "long_side": 0}
             for preset in args.presets for photo in split_dataset("validation", args.photos).queries]
    large = split_dataset("validation", 1).queries[0].stem
    cases += [{"preset": "medium", "photo": large, "steps": args.large_steps, "long_side": LARGE_SIDE}
              for _ in range(args.large_runs)]
    rows = [run_case(checkouts, labels if k % 2 == 0 else labels[::-1], case, args.threads)
            for k, case in enumerate(cases)]
    photos = ", ".join(dict.fromkeys(r["photo"] for r in rows))
    enlarged_too = f" and the first enlarged to {LARGE_SIDE} x 3000 (12 megapixels)" if args.large_runs else ""
    markdown = (f"Protection by this checkout ({this}) and by the reference ({short}), {args.threads} threads, "
                f"nothing else running: validation photos {photos} at their own size{enlarged_too}; working size "
                f"{SIZE} px, JPEG q95 output, `--precision auto`; "
                "each protection in a new process after a 2-step one, the two checkouts' order reversed from case "
                "to case; both wrote the same files (checked). Seconds and CPU seconds: means over the "
                "protections; peak MiB: the largest peak resident memory.\n\n" + table(rows, labels))
    write_results(args.name, {"reference": short, "this": this, "threads": args.threads, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
