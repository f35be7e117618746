"""Shared by the benchmarks: machine description, data root, result files (JSON + markdown), and the
protection benchmarks' resumable protected-query loop, mAP over the protected queries and image quality."""
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from advquery.evaluation.datasets import load_dataset
from advquery.evaluation.runner import evaluate
from advquery.io import atomic_write, read_photo, to_tensor, to_uint8, write_photo_atomic
from advquery.models.precision import processor
from advquery.quality import quality_report
from advquery.transforms import jpeg_round_trip

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"  # database descriptors
WORK = Path(__file__).parent / ".work"  # protected queries, kept so that an interrupted run resumes
DATA_ROOT = Path(os.environ.get("ADVQUERY_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CVPIRE_PUBLISHED = DATA_ROOT / "peer-adversarial" / "cv-pire-oxford"  # 55 roxford5k-mini queries, same names
# roxford5k-mini's standard queries: every choice is tuned on the validation split, figures are reported on the test
# split (query positions; queries without positives are not scored, so never used).
SPLITS = {"validation": (0, 20), "test": (20, 58)}
QUALITY_KEYS = ("ssim", "psnr", "linf", "mean_abs_change")
# how the tables and descriptions name the poolings (the trackers' and the attack's "map")
POOLING_NAMES = {"gem": "GeM", "mac": "MAC", "spoc": "SPoC", "rmac": "R-MAC", "map": "the whole feature map"}
# PIRE paper budget: eps = 10/255 in mean/std-normalised space is ~2.3 grey levels in pixel space.
PAPER_EPS_LEVELS = 10 * 0.226


def content_key(paths: Iterable[Path], settings: dict) -> str:
    """Cache key of ``settings`` and the files' contents. The benchmarks key their caches by content, not by
    modification time (``advquery.systems.file_key``): the shared data folder is copied afresh for every session,
    which changes every time and would throw away hours of descriptors."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in paths:
        digest.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return digest.hexdigest()[:24]


def setting_digest(setting) -> str:
    """Eight hex digits of what a protection setting computes (its repr without its description): folders of
    protected photos carry it, so a changed preset or candidate never reuses the files of the old one, and a reworded
    description does not throw away the photos of an unchanged computation."""
    return hashlib.sha256(repr(replace(setting, description="")).encode()).hexdigest()[:8]


def machine() -> str:
    """One line naming the processor, core count, device and torch version."""
    cpu = processor()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def split_dataset(split: str, limit: int | None = None):
    """roxford5k-mini restricted to the split's queries that have positives, optionally the first ``limit``."""
    full = load_dataset("roxford5k-mini", DATA_ROOT)
    lo, hi = SPLITS[split]
    keep = [i for i in range(lo, hi) if full.ground_truth("medium")[i]["ok"]][:limit]
    return replace(full, queries=[full.queries[i] for i in keep], query_boxes=[full.query_boxes[i] for i in keep],
                   gnd=[full.gnd[i] for i in keep])


def tracker_run(name: str) -> tuple[dict, object]:
    """A ``bench/trackers.py`` run's results (bench/results/NAME.json) and its split's dataset restricted to the
    run's queries; exits with a one-line reason if the run is absent or its queries are not all in today's split."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no such run")
    run = json.loads(path.read_text())
    ds = split_dataset(run["split"])
    keep = [i for i, q in enumerate(ds.queries) if q.stem in run["queries"]]
    if len(keep) != len(run["queries"]):
        raise SystemExit(f"{path}: its queries are not all in today's {run['split']} split")
    return run, replace(ds, queries=[ds.queries[i] for i in keep], query_boxes=[ds.query_boxes[i] for i in keep],
                        gnd=[ds.gnd[i] for i in keep])


def densest_window(values: np.ndarray, window: int) -> tuple[float, int, int]:
    """(mean, top, left) of the ``window`` x ``window`` square of a 2-D map with the largest mean of ``values``: where a
    figure enlarges a photo."""
    density = ndimage.uniform_filter(values.astype(np.float64), window, mode="constant")
    half = window // 2
    inner = density[half:values.shape[0] - half, half:values.shape[1] - half]
    top, left = np.unravel_index(np.argmax(inner), inner.shape)
    return float(inner[top, left]), int(top), int(left)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def git(*args: str) -> str:
    """Output of a git command run in this checkout (raises OSError without git, CalledProcessError outside a
    checkout)."""
    return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                          check=True).stdout.strip()


def code_version() -> str | None:
    """The commit the measuring code is at, with ``+changes`` when the package or a benchmark script differs from it
    (None outside a git checkout): what a result can later be told apart by, e.g. measured before or after a fix."""
    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--", "../advquery", ".", ":!results")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + "+changes" * bool(changed)


def write_results(name: str, payload: dict, markdown: str) -> None:
    """Write bench/results/NAME.json (stamped with this run's machine, UTC time and code version, replacing any
    stamp a kept part of an earlier run carries) and NAME.md, and print the markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = {"machine": machine(), "measured": datetime.now(timezone.utc).isoformat(timespec="minutes"),
             "code": code_version()}
    payload = {**stamp, **{key: value for key, value in payload.items() if key not in stamp}}
    text = f"Machine: {payload['machine']}\n\n{markdown}\n"
    for suffix, content in ((".json", json.dumps(payload, indent=2)), (".md", text)):
        with atomic_write(RESULTS / f"{name}{suffix}") as f:  # an interrupted run leaves the last results whole
            f.write(content.encode())
    print(text)


def subset_map(report, protocol: str, indices: list[int]) -> float:
    """mAP of an evaluation report over the queries ``indices`` (those protected)."""
    return float(np.nanmean(report.results[protocol].aps[indices]))


def query_maps(dataset, model, size: int, indices: list[int], query_dir: Path | None = None,
               queries: tuple[str, ...] = ("bb", "wi"), protocols: tuple[str, ...] = ("medium", "hard")) -> dict:
    """``{'<queries>_<protocol>': mAP}`` over the queries ``indices``, each read from ``query_dir`` where it
    has a file there (a protected query), database descriptors from the cache."""
    out = {}
    for q in queries:
        r = evaluate(dataset, model, size, queries=q, protocols=protocols, query_dir=query_dir, cache_dir=CACHE,
                     progress=False)
        out.update({f"{q}_{p}": subset_map(r, p, indices) for p in protocols})
    return out


def mean_quality(reports: Iterable[dict]) -> dict:
    """Mean SSIM, PSNR, L-infinity and mean absolute change over :func:`quality_report` results."""
    reports = list(reports)
    return {k: float(np.mean([r[k] for r in reports])) for k in QUALITY_KEYS}


def jpeg_resave_quality(originals: Iterable[np.ndarray]) -> dict:
    """Mean quality of re-saving each photo as JPEG quality 95, unprotected: what the format alone costs."""
    return mean_quality(quality_report(rgb, to_uint8(jpeg_round_trip(to_tensor(rgb), 95))) for rgb in originals)


def published_cvpire_quality() -> dict:
    """Mean quality of the published CV-PIRE outputs (JPEG q75) against the same-name original photos."""
    return mean_quality(quality_report(read_photo(DATA_ROOT / "roxford5k-mini" / "jpg" / p.name).rgb,
                                       read_photo(p).rgb) for p in sorted(CVPIRE_PUBLISHED.glob("*.jpg")))


def protect_resumable(attack, photos: list[Path], originals: dict[Path, np.ndarray], label: str, stats_dir: Path,
                      targets: Callable[[Path], dict], renders: Callable[[torch.Tensor], dict] | None = None
                      ) -> list[dict]:
    """Protect (or modify) each photo once with ``attack`` and write the images ``renders(x)`` makes after
    it, or without ``renders`` its output, to the files ``targets(photo)`` (same keys; JPEG quality 95 or
    PNG, by suffix). A photo whose stats file and targets exist is not done again, so an interrupted run
    resumes. Returns per photo the seconds of the attack and its ``stats`` for that photo (e.g. steps)."""
    out = []
    for photo in photos:
        files = targets(photo)
        stats_file = stats_dir / f"{photo.stem}.json"
        if stats_file.is_file() and all(f.is_file() for f in files.values()):
            stats = json.loads(stats_file.read_text())
        else:
            x = to_tensor(originals[photo])
            start = time.perf_counter()
            output = attack(x)
            stats = {"seconds": time.perf_counter() - start, **{k: v[0] for k, v in vars(attack.stats).items()}}
            images = renders(x) if renders else dict.fromkeys(files, output)
            for key, path in files.items():
                write_photo_atomic(path, to_uint8(images[key]), quality=95)
            stats_dir.mkdir(parents=True, exist_ok=True)
            stats_file.write_text(json.dumps(stats))
        out.append(stats)
        print(f"{label} {photo.stem}: " + ", ".join(f"{k} {v:.4g}" for k, v in stats.items()), flush=True)
    return out
