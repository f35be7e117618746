"""The server of ``advquery ui``: the page and the API on one local FastAPI app, run by uvicorn.

Privacy: it listens on 127.0.0.1 unless told otherwise; Gradio's analytics, share links, run
history, MCP server and API page are off and the page uses system fonts, so it fetches nothing
from the internet; every upload, result and temporary file lives in one private folder (mode
0700) that is removed when the server stops.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..models import DescriptorModel

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# Set before Gradio is imported: it reads some of them at import time.
OFFLINE_ENVIRONMENT = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def host_warning(host: str) -> str | None:
    """The warning for a ``--host`` other computers can reach, None for a local one."""
    if host in LOCAL_HOSTS:
        return None
    return (f"--host {host}: the page is reachable from other computers on the network, and whoever reaches "
            "it can upload photos and download the protected ones; use 127.0.0.1 to keep it on this computer")


@contextmanager
def private_folder() -> Iterator[Path]:
    """A new folder only this user can read, holding every file of the server (Gradio's uploads and every
    temporary file of this process among them), removed with all it holds at the end."""
    folder = Path(tempfile.mkdtemp(prefix="advquery-ui-"))
    temp = folder / "tmp"
    temp.mkdir()
    saved_environment = {k: os.environ.get(k) for k in ("GRADIO_TEMP_DIR", "TMPDIR")}
    saved_tempdir = tempfile.tempdir
    os.environ["GRADIO_TEMP_DIR"], os.environ["TMPDIR"] = str(folder / "gradio"), str(temp)
    tempfile.tempdir = str(temp)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved_tempdir
        for key, value in saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


def build_app(jobs, folder: Path, max_bytes: int):
    """The FastAPI app: the API under /api, the Gradio page mounted at /."""
    os.environ.update(OFFLINE_ENVIRONMENT)
    import gradio as gr
    from fastapi import FastAPI

    from .api import api_router
    from .page import CSS, THEME, build_page

    app = FastAPI(title="advquery", docs_url=None, redoc_url=None)  # their pages load scripts from a CDN
    app.include_router(api_router(jobs))
    return gr.mount_gradio_app(app, build_page(jobs), path="/", theme=THEME, css=CSS, footer_links=[],
                               run_history=False, ssr_mode=False, mcp_server=False, pwa=False,
                               enable_monitoring=False, max_file_size=max_bytes, allowed_paths=[str(folder)])


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (port 0: a free one); OSError when it cannot be had."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(model: DescriptorModel, host: str, port: int, open_browser: bool, size: int, steps: int | None,
          max_bytes: int, max_pixels: int) -> None:
    """Run the page and the API until interrupted, then remove every upload and result."""
    import uvicorn

    from .jobs import JobQueue

    with private_folder() as folder:
        jobs = JobQueue(folder / "jobs", model, size, steps, max_bytes, max_pixels)
        try:
            app = build_app(jobs, folder, max_bytes)
            sock = listen(host, port)
            bound = sock.getsockname()[1]
            url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/"
            print(f"advquery ui: the page is at {url} (uploads are kept in {folder} until the server stops; "
                  "Ctrl+C stops it)", flush=True)
            if open_browser:
                webbrowser.open(url)
            # uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal again: as KeyboardInterrupt
            # for both, so that this folder is removed on either (SIGTERM's default would end the process).
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            jobs.close()
    print("advquery ui: stopped; uploads and results deleted", flush=True)
