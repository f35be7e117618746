"""The JSON HTTP API beside the page, for scripts and other apps: the same jobs, the same queue.

- ``POST /api/protect``: multipart form, ``files`` (one or more photos), ``strength`` (low, medium,
  high; default the presets' default) and ``keep_metadata`` (true/false: keep EXIF; GPS is always removed, the
  colour profile always kept).
  202 with the job (as ``GET /api/jobs/{id}``); 413 when every file is too large, 422 when no file
  is a usable photo, each with ``{"error": ..., "photos": [one line per file]}``.
- ``GET /api/jobs/{id}``: state, per photo its state, progress, ETA, error, report and checks.
- ``GET /api/jobs/{id}/photos/{index}``: one protected photo, under its own file name, once done.
- ``GET /api/jobs/{id}/zip``: the finished photos of the job in one zip, under their file names.
"""
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse, JSONResponse

from ..protection import DEFAULT_STRENGTH
from .jobs import Job, JobQueue, NoPhotoError


def _problem(status: int, error: str, photos: list[str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "photos": photos or []}, status_code=status)


def api_router(jobs: JobQueue) -> APIRouter:
    """The routes under /api, served from ``jobs``."""
    router = APIRouter(prefix="/api")

    def find(job_id: str) -> Job | JSONResponse:
        return jobs.get(job_id) or _problem(404, f"no job {job_id} on this server")

    @router.post("/protect", status_code=202)
    def protect(files: list[UploadFile] = File(...), strength: str = Form(DEFAULT_STRENGTH),
                keep_metadata: bool = Form(False)):
        try:
            job = jobs.submit([(f.filename, f.file) for f in files], strength, keep_metadata)
        except NoPhotoError as exc:
            return _problem(413 if exc.too_large else 422, "no photo to protect", exc.lines)
        except ValueError as exc:
            return _problem(422, str(exc))
        return jobs.snapshot(job)

    @router.get("/jobs/{job_id}")
    def job_state(job_id: str):
        job = find(job_id)
        return job if isinstance(job, JSONResponse) else jobs.snapshot(job)

    @router.get("/jobs/{job_id}/photos/{index}")
    def photo(job_id: str, index: int):
        job = find(job_id)
        if isinstance(job, JSONResponse):
            return job
        task = job.photo(index)
        if task is None:
            return _problem(404, f"job {job_id} has no photo {index}")
        if task.state != "done":
            return _problem(409, f"{task.name} is not protected ({task.error or task.state})")
        return FileResponse(task.output, filename=task.output.name)

    @router.get("/jobs/{job_id}/zip")
    def zip_all(job_id: str):
        job = find(job_id)
        if isinstance(job, JSONResponse):
            return job
        if not any(p.state == "done" for p in job.photos):
            return _problem(409, "no photo of this job is protected yet")
        return FileResponse(jobs.zip_file(job), filename="protected-photos.zip", media_type="application/zip")

    return router
