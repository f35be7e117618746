"""What every command shares: error reporting without tracebacks, model and size options."""
import argparse
import sys
from collections.abc import Callable
from functools import wraps

from ..evaluation.datasets import DatasetError
from ..evaluation.runner import EvaluationError
from ..extraction import DEFAULT_SIZE, MULTISCALE
from ..io import ImageError, InputFile, collect_inputs
from ..models import BUILTIN_MODELS, DEFAULT_MODEL, DescriptorModel, ModelError, load_model
from ..retrieval import ImageIndex, IndexFileError

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


def collect_or_fail(inputs: list[str], recursive: bool, what: str) -> tuple[list[InputFile], list[str]]:
    """Input files of a batch command; problems are printed as they are found, none at all is an error."""
    files, problems = collect_inputs(inputs, recursive=recursive)
    for line in problems:
        error(line)
    if not files:
        raise CommandError(f"no {what}")
    return files, problems


def model_for_index(args: argparse.Namespace, index: ImageIndex) -> tuple[DescriptorModel, int, tuple[float, ...]]:
    """(model, size, scales) that describe queries comparably with ``index``: its own, or those asked
    for (--model, --size, --multiscale) if they agree with it."""
    name = args.model or index.manifest.model
    if args.model is None and name not in BUILTIN_MODELS:
        raise CommandError(f"the index was built with checkpoint {name}: pass it with --model PATH")
    model = load_model(name, device=args.device)
    size = args.size or index.manifest.size
    scales = MULTISCALE if args.multiscale or len(index.manifest.scales) > 1 else (1.0,)
    mismatch = index.manifest.compatible_with(model.name, size, scales)
    if mismatch:
        raise CommandError(f"cannot use {args.index}: {mismatch}")
    return model, size, scales
