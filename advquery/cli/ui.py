"""``advquery ui``: the local web page (and its JSON API) for people who do not use a terminal."""
import argparse
import sys

from ..extraction import DEFAULT_SIZE
from ..io import DEFAULT_MAX_PIXELS
from ..models import DEFAULT_MODEL, load_model
from .common import (SIZE_RANGE, CommandError, add_steps_option, device_name, error, number, positive_int,
                     upload_mb, user_errors, working_size)

DEFAULT_PORT = 7860  # Gradio's
DEFAULT_MAX_UPLOAD_MB = 100.0


def register(commands: argparse._SubParsersAction) -> None:
    u = commands.add_parser("ui", help="start the local web page that protects photos",
                            description="Start a web page on this computer: drop photos, choose a strength, "
                            "compare and download the protected copies. Also serves a JSON API (POST /api/protect, "
                            "GET /api/jobs/ID). Uploads stay in a private folder that is deleted when it stops.")
    u.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this computer only; others are warned about)")
    u.add_argument("--port", type=number(int, 0, 65535), default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: a free one)")
    u.add_argument("--open", action="store_true", help="open the page in the default browser")
    u.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in model name or cirtorch checkpoint path "
                   f"(default: {DEFAULT_MODEL})")
    u.add_argument("--size", type=working_size, default=DEFAULT_SIZE,
                   help=f"working size of the protection: long side in pixels, {SIZE_RANGE} "
                        f"(default: {DEFAULT_SIZE})")
    add_steps_option(u, "presets'")
    u.add_argument("--device", type=device_name, default=None, help="torch device (default: cuda if available, else cpu)")
    u.add_argument("--max-upload-mb", type=upload_mb, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"refuse larger uploads (default: {DEFAULT_MAX_UPLOAD_MB:g} MB per file)")
    u.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images (decompression bombs; default: {DEFAULT_MAX_PIXELS})")
    u.set_defaults(run=run_ui)


@user_errors
def run_ui(args: argparse.Namespace) -> int:
    try:
        from ..ui.server import host_warning, serve
    except ImportError as exc:
        raise CommandError(f"the web page needs the ui extra ({exc.name} is missing): "
                           "pip install 'advquery[ui]'") from None
    warning = host_warning(args.host)
    if warning:
        print(f"advquery: warning: {warning}", file=sys.stderr)
    model = load_model(args.model, device=args.device)
    try:
        serve(model, args.host, args.port, args.open, args.size, args.steps,
              round(args.max_upload_mb * 1e6), args.max_pixels)
    except OSError as exc:
        error(f"cannot serve on {args.host}:{args.port} ({exc.strerror or exc})")
        return 2
    return 0
