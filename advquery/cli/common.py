"""What every command shares: error reporting without tracebacks, model and size options."""
import argparse
import sys
from collections.abc import Callable
from functools import wraps

from ..evaluation.datasets import DatasetError
from ..evaluation.runner import EvaluationError
from ..extraction import DEFAULT_SIZE
from ..io import ImageError
from ..models import DEFAULT_MODEL, ModelError
from ..retrieval import IndexFileError

# Errors whose message already says what is wrong and where: shown as one line, no traceback.
USER_ERRORS = (ModelError, DatasetError, EvaluationError, ImageError, IndexFileError, FileNotFoundError,
               NotADirectoryError, PermissionError)


class CommandError(Exception):
    """A command cannot run as asked; the message is shown to the user as it is."""


def error(message: str) -> None:
    """Print one error line on stderr."""
    print(f"advquery: error: {message}", file=sys.stderr)


def user_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the expected failures of a command into one line and exit code 2."""

    @wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (CommandError, *USER_ERRORS) as exc:
            error(str(exc))
            return 2
        except KeyboardInterrupt:
            error("interrupted")
            return 130

    return run


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_model_options(parser: argparse.ArgumentParser, size_default: int | None = DEFAULT_SIZE) -> None:
    """--model, --size, --multiscale and --device, shared by every command that describes images."""
    parser.add_argument("--model", default=None if size_default is None else DEFAULT_MODEL,
                        help=f"built-in model name or cirtorch checkpoint path (default: {DEFAULT_MODEL})")
    parser.add_argument("--size", type=positive_int, default=size_default,
                        help=f"working size: long side in pixels (default: {size_default or 'the index'})")
    parser.add_argument("--multiscale", action="store_true", help="GeM-average descriptors at scales 1, 1/sqrt2, 1/2")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
