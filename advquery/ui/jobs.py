"""Protection jobs of the web page and its API: one worker protects one job at a time, the others queue.

A job is the photos of one upload with one strength. Each photo has its own state, progress and
result, so the page shows and serves finished photos while the rest still run. Every file of a job
lives in its folder below the server's private folder; a photo that cannot be used gets its own
line with the reason, and the others go on.

Protection runs through :func:`advquery.protection.protect_photo`, as ``advquery protect`` does:
one model, all CPU threads (or the GPU) for one photo at a time, which is why jobs queue.
"""
from __future__ import annotations

import queue
import shutil
import sys
import threading
import time
import uuid
import zipfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..io import ImageError, read_photo, write_photo_atomic
from ..models import DescriptorModel
from ..protection import STRENGTHS, ProtectionRecord, output_format, output_path, protect_photo
from ..quality import amplified_difference
from ..trackers import SUITES, SuiteDescriber, TrackerCheck, check_protection

DIFFERENCE_GAINS = (10, 30)  # the amplified-difference views: small changes at x10, the faintest at x30
_CHUNK = 1 << 20


class NoPhotoError(ValueError):
    """An upload without a single usable photo; ``lines`` says why for each file."""

    def __init__(self, lines: list[str], too_large: bool):
        super().__init__("no photo to protect: " + "; ".join(lines))
        self.lines, self.too_large = lines, too_large


class JobCancelled(Exception):
    """The server is stopping: the photo being protected is abandoned."""


@dataclass
class PhotoTask:
    """One uploaded photo of a job; ``state``: waiting, running, checking, done or failed."""

    index: int
    name: str  # the file name as uploaded
    source: Path | None  # the stored upload (None when it was refused)
    state: str = "waiting"
    error: str | None = None  # "NAME: reason" of a failed photo
    steps_done: int = 0
    step_limit: int | None = None
    started: float | None = None
    seconds: float | None = None
    record: ProtectionRecord | None = None
    output: Path | None = None
    before: Path | None = None  # the decoded original as PNG, for the before/after view
    differences: dict[int, Path] = field(default_factory=dict)  # gain -> amplified-difference PNG
    checks: list[TrackerCheck] = field(default_factory=list)


@dataclass
class Job:
    """The photos of one upload; ``state``: queued, running or done."""

    id: str
    folder: Path
    strength: str
    keep_metadata: bool
    photos: list[PhotoTask]
    state: str = "queued"

    def photo(self, index: int) -> PhotoTask | None:
        return self.photos[index] if 0 <= index < len(self.photos) else None


def photo_entry(job: Job, task: PhotoTask, now: float, typical: float | None,
                eta: float | None) -> tuple[dict, float | None]:
    """One photo's JSON and the ETA, in seconds from ``now``, of the job's work up to and including it
    (None: unknown), given ``eta`` for the photos before it and ``typical``, the seconds a photo takes."""
    entry = {"index": task.index, "name": task.name, "state": task.state, "error": task.error,
             "progress": 0.0, "eta_seconds": None, "output_name": None, "download": None,
             "report": None, "checks": []}
    if task.state == "running" and task.steps_done:
        entry["progress"] = task.steps_done / task.step_limit
        per_step = (now - task.started) / task.steps_done
        eta = per_step * (task.step_limit - task.steps_done)
        entry["eta_seconds"] = eta
    elif task.state == "running":  # before its first step: no rate to go by yet
        eta = None
    elif task.state == "checking":  # measuring the written file: about done
        entry["progress"], eta = 1.0, 0.0
    elif task.state == "waiting" and job.state == "running":
        eta = None if eta is None or typical is None else eta + typical
        entry["eta_seconds"] = eta
    elif task.state == "done":
        r = task.record
        entry.update(progress=1.0, output_name=task.output.name,
                     download=f"/api/jobs/{job.id}/photos/{task.index}",
                     report={"ssim": r.ssim, "psnr": r.to_json()["psnr"], "largest_change": r.linf,
                             "mean_change": r.mean_abs_change, "similarity": r.similarity,
                             "steps": r.steps, "seconds": r.seconds},
                     checks=[asdict(c) for c in task.checks])
    return entry, eta


def _refused(task: PhotoTask, reason: str) -> PhotoTask:
    task.state, task.error = "failed", f"{task.name}: {reason}"
    return task


def _store(stream: BinaryIO, target: Path, max_bytes: int) -> bool:
    """Copy ``stream`` to ``target`` (created private); False, and nothing kept, when it exceeds ``max_bytes``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(target, "xb") as out:
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                break
            out.write(chunk)
    if size > max_bytes:
        target.unlink()
        return False
    return True


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``stem (2).suffix``, ``stem (3).suffix`` ... if a file of that name is already in ``taken``."""
    stem, suffix, n = Path(name).stem, Path(name).suffix, 1
    while name.lower() in taken:
        n += 1
        name = f"{stem} ({n}){suffix}"
    taken.add(name.lower())
    return name


class JobQueue:
    """Protection jobs, run one after the other by one worker thread.

    Args:
        folder: where the jobs' files go (the server's private folder, removed at its stop).
        model: the descriptor model photos are protected against.
        size: working size (long side) of the attack; ``steps``: override of the presets' step limits
            (None: each preset's own).
        max_bytes, max_pixels: the largest upload accepted, in bytes and in pixels (decompression bombs).
    """

    def __init__(self, folder: Path, model: DescriptorModel, size: int, steps: int | None, max_bytes: int,
                 max_pixels: int):
        self.folder, self.model, self.size, self.steps = Path(folder), model, size, steps
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self._jobs: dict[str, Job] = {}
        self._order: list[Job] = []  # jobs not yet done, first submitted first
        self._pending: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stopping = False
        self._seconds: dict[str, list[float]] = defaultdict(list)  # strength -> seconds per finished photo
        self._trackers: SuiteDescriber | None = None  # the quick check's models, loaded at the first check
        self._worker = threading.Thread(target=self._work, name="advquery-protect", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------- submitting

    def submit(self, files: list[tuple[str, BinaryIO]], strength: str, keep_metadata: bool) -> Job:
        """Store the uploads ``(file name, stream)`` in a new job and queue it.

        Each file is checked as it arrives: larger than ``max_bytes``, not an image, or more than
        ``max_pixels`` and it becomes a failed photo with its reason. Raises :class:`NoPhotoError`
        (nothing kept) when no file is usable, ValueError for an unknown strength.
        """
        if strength not in STRENGTHS:
            raise ValueError(f"unknown strength {strength!r}; available: {', '.join(STRENGTHS)}")
        job = Job(uuid.uuid4().hex, self.folder / uuid.uuid4().hex, strength, keep_metadata, [])
        taken: set[str] = set()
        received = [self._receive(job.folder, index, name, stream, taken) for index, (name, stream) in enumerate(files)]
        job.photos = [task for task, _ in received]
        if all(p.state == "failed" for p in job.photos):
            shutil.rmtree(job.folder, ignore_errors=True)
            raise NoPhotoError([p.error for p in job.photos] or ["no file uploaded"],
                               too_large=bool(received) and all(large for _, large in received))
        with self._lock:
            self._jobs[job.id] = job
            self._order.append(job)
        self._pending.put(job)
        return job

    def _receive(self, folder: Path, index: int, raw_name: str | None, stream: BinaryIO,
                 taken: set[str]) -> tuple[PhotoTask, bool]:
        """One upload stored and checked: its task (failed, with the reason, if unusable) and whether it was
        too large."""
        name = Path(raw_name or "").name
        task = PhotoTask(index, _unique(name if name.strip(".") else f"photo-{index + 1}", taken), None)
        task.source = folder / "in" / str(index) / task.name
        try:
            if not _store(stream, task.source, self.max_bytes):
                limit = f"more than {self.max_bytes / 1e6:g} MB, the limit of this page"
                return _refused(task, f"file too large ({limit})"), True
            read_photo(task.source, max_pixels=self.max_pixels)
        except ImageError as exc:
            return _refused(task, exc.reason), False
        except OSError as exc:
            return _refused(task, f"cannot store the upload ({exc.strerror or exc})"), False
        return task, False

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    # ---------------------------------------------------------------- what the page and the API show

    def snapshot(self, job: Job) -> dict:
        """The job's state as JSON-safe data: per photo its state, progress, ETA, report and checks."""
        now = time.monotonic()
        with self._lock:
            ahead = self._order.index(job) if job in self._order else 0
            typical = self._typical_seconds(job)
            photos, eta = [], 0.0
            for task in job.photos:
                entry, eta = photo_entry(job, task, now, typical, eta)
                photos.append(entry)
            return {"id": job.id, "state": job.state, "jobs_ahead": ahead, "strength": job.strength,
                    "keep_metadata": job.keep_metadata, "photos": photos,
                    "done": sum(p.state == "done" for p in job.photos),
                    "zip": f"/api/jobs/{job.id}/zip" if any(p.state == "done" for p in job.photos) else None}

    def _typical_seconds(self, job: Job) -> float | None:
        """Seconds a photo of this job's strength takes: the mean of those finished, else the running one's
        projection."""
        finished = self._seconds[job.strength]
        if finished:
            return sum(finished) / len(finished)
        running = next((p for p in job.photos if p.state == "running" and p.steps_done), None)
        if running is None:
            return None
        return (time.monotonic() - running.started) / running.steps_done * running.step_limit

    def zip_file(self, job: Job) -> Path:
        """A zip of the job's finished photos under their own file names (written anew for each request)."""
        done = [p for p in job.photos if p.state == "done"]
        target = job.folder / "zip" / f"protected-{len(done)}.zip"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part")
            taken: set[str] = set()
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:  # photos are compressed already
                for task in done:
                    archive.write(task.output, _unique(task.output.name, taken))
            partial.replace(target)
        return target

    # ---------------------------------------------------------------- the worker

    def close(self) -> None:
        """Stop the worker: the photo being protected is abandoned, queued jobs are dropped."""
        self._stopping = True
        self._pending.put(None)
        self._worker.join(timeout=30)

    def _work(self) -> None:
        while (job := self._pending.get()) is not None:
            with self._lock:
                job.state = "running"
            for task in job.photos:
                if self._stopping:
                    return
                if task.state == "waiting":
                    self._protect(job, task)
            with self._lock:
                job.state = "done"
                self._order.remove(job)

    def _progress(self, task: PhotoTask):
        def on_step(done: int, limit: int) -> None:
            if self._stopping:
                raise JobCancelled
            task.steps_done, task.step_limit = done, limit
        return on_step

    def _describer(self) -> SuiteDescriber:
        if self._trackers is None:
            self._trackers = SuiteDescriber(tuple(dict.fromkeys(t.system for t in SUITES["quick"])), self.model.device)
        return self._trackers

    def _protect(self, job: Job, task: PhotoTask) -> None:
        with self._lock:
            task.state, task.started = "running", time.monotonic()
        out = job.folder / "out" / str(task.index)
        views = job.folder / "views" / str(task.index)
        try:
            photo = read_photo(task.source, max_pixels=self.max_pixels)
            fmt = output_format(photo, None)
            target = output_path(out, Path(task.name), fmt)
            record = protect_photo(photo, target, self.model, fmt, keep_metadata=job.keep_metadata,
                                   strength=job.strength, size=self.size, steps=self.steps,
                                   on_step=self._progress(task))
            task.state = "checking"
            protected = read_photo(target).rgb
            differences = {gain: write_photo_atomic(views / f"difference-x{gain}.png",
                                                    amplified_difference(photo.rgb, protected, gain))
                           for gain in DIFFERENCE_GAINS}
            before = write_photo_atomic(views / "before.png", photo.rgb)
            checks = check_protection(photo.rgb, protected, "quick", describer=self._describer())
        except JobCancelled:
            return
        except ImageError as exc:
            return self._fail(task, f"{task.name}: {exc.reason}")
        except OSError as exc:
            return self._fail(task, f"{task.name}: cannot write the output ({exc.strerror or exc})")
        except Exception as exc:  # a bug or an exhausted machine must not stop the other photos
            print(f"advquery ui: error: {task.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return self._fail(task, f"{task.name}: protection failed ({type(exc).__name__}: {exc})")
        with self._lock:
            task.record, task.output, task.before, task.differences, task.checks = \
                record, target, before, differences, checks
            task.seconds = time.monotonic() - task.started
            task.state = "done"
            self._seconds[job.strength].append(task.seconds)

    def _fail(self, task: PhotoTask, message: str) -> None:
        with self._lock:
            task.state, task.error = "failed", message

