"""Throughput of ``advquery protect`` and ``advquery index build`` on this machine: one process against
several, serially and on Ray.

The same real photos (roxford5k-mini validation queries, 1024 px on their long side, ``--strength low``,
seed 0, JPEG outputs as ``advquery protect`` writes them) are protected by the command itself, each run a
fresh process into an empty folder, one after the other in the same run:

- ``1 x 2 threads``: the serial path, one process using both threads (``--threads 2``);
- ``2 x 1 thread, shards``: two serial processes at once, ``--shard 1/2`` and ``--shard 2/2``, one thread
  each: what two processes gain over one with every thread, without Ray;
- ``2 x 1 thread, Ray``: ``--workers 2 --threads 1``, a local Ray instance with two workers.

``index build`` (describing, default model and working size) of ``--images`` roxford5k-mini database images
(768 px) runs serially with both threads and on Ray with ``--workers 2 --threads 1``.

Ray's cost is measured twice: end to end (the Ray run against the shards, per photo: start-up, workers'
model loading, scheduling) and per task alone (no-op tasks through :func:`advquery.cluster.map_on_ray`, the
path every photo takes, on warm workers), with the start-up of a local instance beside it. The two runs with
one thread per process must write byte-identical files; the bench checks it.

Run alone on the machine (two heavy jobs at once make every figure wrong):
``python bench/cluster_throughput.py [--photos 4] [--images 80]``. Results: ``bench/results/cluster_throughput.{json,md}``.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import WORK, markdown_table, split_dataset, write_results

from advquery.cluster import map_on_ray, ray_session

NO_OP_TASKS = 200


def _run(photos: list[Path], out: Path, *options: str) -> subprocess.Popen:
    return _command("protect", *map(str, photos), "-o", str(out), "--strength", "low", "--seed", "0", *options)


def _index(images: list[Path], out: Path, *options: str) -> subprocess.Popen:
    return _command("index", "build", *map(str, images), "-o", str(out), *options)


def _command(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "advquery.cli.main", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def timed(runs: list[subprocess.Popen]) -> float:
    """Seconds until every process of ``runs`` (started together) has ended; each must have succeeded."""
    start = time.perf_counter()
    for process in runs:
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"advquery {process.args[3]} failed ({process.returncode}): {stderr.strip()}")
    return time.perf_counter() - start


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.jpg"))}


def _no_op(item: int) -> int:
    return item


def ray_costs() -> dict:
    """Start-up and shut-down of a local two-CPU Ray instance, and the cost of one task on warm workers."""
    start = time.perf_counter()
    with ray_session("local", 2):
        started = time.perf_counter()
        list(map_on_ray(_no_op, range(4), threads=1, gpus=0, failed=None))  # the workers start
        warm = time.perf_counter()
        list(map_on_ray(_no_op, range(NO_OP_TASKS), threads=1, gpus=0, failed=None))
        done = time.perf_counter()
    return {"startup_s": started - start, "first_tasks_s": warm - started, "shutdown_s": time.perf_counter() - done,
            "task_overhead_ms": (done - warm) / NO_OP_TASKS * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=4, help="how many photos to protect (default 4)")
    parser.add_argument("--images", type=int, default=80, help="how many images to describe (default 80)")
    args = parser.parse_args()
    dataset = split_dataset("validation")
    photos = [Path(p) for p in dataset.queries[:args.photos]]
    images = [Path(p) for p in dataset.images[:args.images]]
    work = WORK / "cluster_throughput"
    shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]

    seconds = {"1 x 2 threads": timed([_run(photos, work / "serial", "--threads", "2")]),
               "2 x 1 thread, shards": timed([_run(photos, work / "shards", "--threads", "1", "--shard", f"{i}/2")
                                              for i in (1, 2)]),
               "2 x 1 thread, Ray": timed([_run(photos, work / "ray", "--workers", "2", "--threads", "1")])}
    describe = {"1 x 2 threads": timed([_index(images, work / "index_serial", "--threads", "2")]),
                "2 x 1 thread, Ray": timed([_index(images, work / "index_ray", "--workers", "2", "--threads", "1")])}
    costs = ray_costs()
    n = len(photos)
    identical = digests(work / "shards") == digests(work / "ray") and len(digests(work / "ray")) == n
    payload = {
        "photos": [p.name for p in photos], "strength": "low", "size": 1024, "load_average_at_start": load,
        "load_average_at_end": os.getloadavg()[0],
        "seconds": seconds, "seconds_per_photo": {k: v / n for k, v in seconds.items()},
        "ratio_1x2_over_2x1": seconds["1 x 2 threads"] / seconds["2 x 1 thread, shards"],
        "ratio_serial_over_ray_2_workers": seconds["1 x 2 threads"] / seconds["2 x 1 thread, Ray"],
        "ray_overhead_per_photo_s": (seconds["2 x 1 thread, Ray"] - seconds["2 x 1 thread, shards"]) / n,
        "ray": costs, "identical_bytes_shards_and_ray": identical,
        "describe": {"images": len(images), "seconds": describe,
                     "images_per_second": {k: len(images) / v for k, v in describe.items()},
                     "ratio_serial_over_ray_2_workers": describe["1 x 2 threads"] / describe["2 x 1 thread, Ray"]},
    }
    rows = [[name, s, s / n] for name, s in seconds.items()]
    markdown = "\n".join([
        f"# advquery protect: one process against two, serially and on Ray ({n} photos)",
        "",
        f"roxford5k-mini validation queries {', '.join(payload['photos'])} (1024 px), `--strength low --seed 0`, "
        f"each run a fresh `advquery protect` process; 1-minute load average {load:.2f} at the start, "
        f"{payload['load_average_at_end']:.2f} at the end.",
        "",
        markdown_table(["run", "seconds", "seconds per photo"], rows),
        "",
        f"- 1 x 2 threads against 2 x 1 thread (shards): **{payload['ratio_1x2_over_2x1']:.2f}x** the time "
        f"({'so --workers is worth having' if payload['ratio_1x2_over_2x1'] > 1 else 'one process is as fast'}).",
        f"- serial (1 x 2 threads) against Ray with 2 workers: **{payload['ratio_serial_over_ray_2_workers']:.2f}x** "
        "the time.",
        f"- Ray's overhead end to end: {payload['ray_overhead_per_photo_s']:.2f} s per photo over the shards "
        f"(over {n} photos: start-up of the instance and of its workers, their model loading, scheduling).",
        f"- Ray alone: a local instance starts in {costs['startup_s']:.1f} s, its first tasks take "
        f"{costs['first_tasks_s']:.1f} s (worker start-up), then a task costs {costs['task_overhead_ms']:.1f} ms "
        f"({NO_OP_TASKS} no-op tasks through `map_on_ray`); shut-down {costs['shutdown_s']:.1f} s.",
        f"- The Ray run wrote {'the same bytes as' if identical else 'OTHER FILES THAN'} the shards (same seed, one "
        "thread per process).",
        "",
        f"## advquery index build: describing {len(images)} database images (768 px, default model and size)",
        "",
        markdown_table(["run", "seconds", "images per second"],
                       [[name, s, len(images) / s] for name, s in describe.items()]),
        "",
        f"- serial (1 x 2 threads) against Ray with 2 workers: "
        f"**{payload['describe']['ratio_serial_over_ray_2_workers']:.2f}x** the time (start-up included).",
    ])
    write_results("cluster_throughput", payload, markdown)


if __name__ == "__main__":
    main()
