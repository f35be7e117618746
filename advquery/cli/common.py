"""What every command shares: error reporting without tracebacks, model and size options."""
import argparse
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

from ..evaluation.datasets import DatasetError
from ..evaluation.runner import EvaluationError
from ..extraction import DEFAULT_SIZE, MULTISCALE
from ..handcrafted.sift_he import DEFAULT_WORDS, Vocabulary, VocabularyError
from ..io import ImageError, InputFile, collect_inputs
from ..models import BUILTIN_MODELS, DEFAULT_MODEL, DescriptorModel, ModelError, load_model
from ..retrieval import ImageIndex, IndexFileError
from ..systems import FEATURES, GlobalSystem, NeuralSystem, RetrievalSystem, SiftHESystem

# Errors whose message already says what is wrong and where: shown as one line, no traceback.
USER_ERRORS = (ModelError, DatasetError, EvaluationError, ImageError, IndexFileError, VocabularyError,
               FileNotFoundError, NotADirectoryError, PermissionError)


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


def add_features_options(parser: argparse.ArgumentParser, database: bool = True) -> None:
    """--features, and for commands that describe a database --vocab and --vocab-size."""
    default = "neural" if database else None
    parser.add_argument("--features", choices=FEATURES, default=default,
                        help="retrieval system: neural (--model), sift-he (SIFT bag of words with Hamming Embedding), "
                             f"cedd or gist (global descriptors) (default: {default or 'the index'})")
    if database:
        parser.add_argument("--vocab", type=Path, metavar="FILE.npz",
                            help="sift-he: visual vocabulary to use (e.g. INDEX_DIR/vocabulary.npz; default: train one "
                                 "on a sample of the database's SIFT descriptors)")
        parser.add_argument("--vocab-size", type=positive_int, metavar="K",
                            help=f"sift-he: visual words of a trained vocabulary (default {DEFAULT_WORDS})")


def system_from_args(args: argparse.Namespace) -> RetrievalSystem:
    """The retrieval system asked for by --features and the model, size and vocabulary options."""
    if args.features != "sift-he" and (args.vocab or args.vocab_size):
        raise CommandError("--vocab and --vocab-size apply to --features sift-he only")
    if args.features == "neural":
        scales = MULTISCALE if args.multiscale else (1.0,)
        return NeuralSystem(load_model(args.model, device=args.device), args.size, scales,
                            getattr(args, "batch_size", None))
    if args.multiscale:
        raise CommandError("--multiscale applies to --features neural only")
    if args.features == "cedd" or args.features == "gist":
        return GlobalSystem(args.features, args.size)
    vocabulary = Vocabulary.load(args.vocab) if args.vocab else None
    if vocabulary and args.vocab_size and args.vocab_size != vocabulary.words:
        raise CommandError(f"--vocab-size {args.vocab_size}: {args.vocab} has {vocabulary.words} words")
    return SiftHESystem(args.size, vocabulary, words=args.vocab_size or DEFAULT_WORDS)


def _refuse_other_features(args: argparse.Namespace, index: ImageIndex, features: str) -> None:
    if features != index.manifest.features:
        raise CommandError(f"cannot use {args.index}: the index was built with features "
                           f"{index.manifest.features!r}, the query with {features!r}")


def system_for_index(args: argparse.Namespace, index: ImageIndex) -> RetrievalSystem:
    """The system that describes queries comparably with ``index``: its own features and settings, or
    those asked for (--features, --model, --size, --multiscale) if they agree with it."""
    manifest = index.manifest
    features = args.features or manifest.features
    if features == "neural":
        return NeuralSystem(*model_for_index(args, index))
    _refuse_other_features(args, index, features)
    if args.model:
        raise CommandError(f"--model applies to neural features; {args.index} holds {features} features")
    size = args.size or manifest.size
    mismatch = manifest.compatible_with(manifest.model, size, MULTISCALE if args.multiscale else (1.0,))
    if mismatch:
        raise CommandError(f"cannot use {args.index}: {mismatch}")
    if features != "sift-he":
        return GlobalSystem(features, size)
    try:
        recorded, max_features = manifest.settings["vocabulary"], manifest.settings["max_features"]
        vocabulary = Vocabulary.load(Path(args.index) / recorded["file"])
    except (KeyError, TypeError):
        raise IndexFileError(f"{args.index}: damaged index (no SIFT-HE vocabulary in the manifest)") from None
    if vocabulary.digest != recorded.get("digest"):
        raise IndexFileError(f"{args.index}: damaged index (its vocabulary does not match the manifest)")
    return SiftHESystem(size, vocabulary, max_features=max_features)


def model_for_index(args: argparse.Namespace, index: ImageIndex) -> tuple[DescriptorModel, int, tuple[float, ...]]:
    """(model, size, scales) that describe queries comparably with ``index``: its own, or those asked
    for (--model, --size, --multiscale) if they agree with it."""
    _refuse_other_features(args, index, "neural")
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
