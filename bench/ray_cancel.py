"""What a cancelled Ray task leaves behind: temporary files of ``advquery.io.atomic_write``.

Ray stops a running task (``ray.cancel``, as ``advquery protect --ray`` does on Ctrl-C or SIGTERM) by raising
KeyboardInterrupt wherever the task's Python code is. Each trial starts two tasks on a local Ray instance that
write a small file atomically in a loop (the way a photo's output and its record are written), cancels both after
1-1.6 s, waits for them, and counts the temporary files left in their folder at once and half a second later. The
workers live on after a cancel, so the cleanup of killed processes' files would not take these. Run alone:
``python bench/ray_cancel.py [--trials 40] [--name ray_cancel]``.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import ray
from common import markdown_table, write_results

from advquery.io import atomic_write


@ray.remote(num_cpus=1, max_retries=0)
def write_in_a_loop(target: str) -> None:
    for n in range(10**9):
        with atomic_write(target) as f:
            f.write(json.dumps({"n": n}).encode() * 100)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--name", default="ray_cancel")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    trials = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for trial in range(args.trials):
            refs = [write_in_a_loop.remote(str(folder / f"record{i}.json")) for i in range(2)]
            time.sleep(1.0 + 0.1 * (trial % 7))
            for ref in refs:
                ray.cancel(ref)
            ray.wait(refs, num_returns=len(refs), timeout=10)
            at_once = temporaries(folder)
            time.sleep(0.5)
            later = temporaries(folder)
            trials.append({"left_at_once": at_once, "left_after_half_a_second": later})
            for name in later:
                (folder / name).unlink()
    ray.shutdown()
    leaking = sum(bool(t["left_after_half_a_second"]) for t in trials)
    files = sum(len(t["left_after_half_a_second"]) for t in trials)
    markdown = markdown_table(["trials (2 tasks each)", "trials leaving a temporary file", "files left"],
                              [[len(trials), leaking, files]])
    write_results(args.name, {"trials": len(trials), "leaking_trials": leaking, "files_left": files,
                              "per_trial": trials}, markdown)


if __name__ == "__main__":
    main()
