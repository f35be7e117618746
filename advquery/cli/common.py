"""What every command shares: one-line errors without tracebacks, option types, model and size options,
output checks before any work, and interrupts (SIGINT, SIGTERM) that leave nothing half-written."""
import argparse
import errno
import json
import math
import os
import re
import signal
import stat
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

from ..cluster import ClusterError
from ..evaluation.datasets import DatasetError
from ..evaluation.runner import EvaluationError
from ..extraction import DEFAULT_SIZE, MIN_SIZE, MULTISCALE
from ..handcrafted.sift_he import DEFAULT_WORDS, Vocabulary, VocabularyError
from ..io import ImageError, InputFile, collect_inputs, printable, real_path
from ..models import BUILTIN_MODELS, DEFAULT_MODEL, DescriptorModel, DeviceError, ModelError, load_model, resolve_device
from ..retrieval import ImageIndex, IndexFileError
from ..systems import FEATURES, GlobalSystem, NeuralSystem, RetrievalSystem, SiftHESystem

# Errors whose message already says what is wrong and where: shown as one line, no traceback.
USER_ERRORS = (ModelError, DeviceError, DatasetError, EvaluationError, ImageError, IndexFileError, VocabularyError,
               ClusterError)


class CommandError(Exception):
    """A command cannot run as asked; the message is shown to the user as it is."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like SIGINT (Ctrl-C): ``signum`` gives the exit code 128 + signum."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


def error(message: object) -> None:
    """Print one error line on stderr (file names with newlines or other control characters escaped)."""
    print(f"advquery: error: {printable(message)}", file=sys.stderr)


def describe_os_error(exc: OSError) -> str:
    """``"FILE: reason"`` for an error of the operating system (disk full, no permission, ...)."""
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)


_OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "not enough memory")  # torch's CPU allocator, CUDA


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that memory ran out: numpy's MemoryError, or torch's RuntimeError from its CPU
    allocator or CUDA (torch.OutOfMemoryError)."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(s in str(exc) for s in _OUT_OF_MEMORY))


def describe_out_of_memory(exc: BaseException) -> str:
    """One line on a failed allocation: what the library said, shortened, and what needs less memory."""
    said = " ".join(str(exc).split())
    said = said[said.find("can't allocate"):] if "can't allocate" in said else said  # past torch's source location
    return f"out of memory ({said[:120] or type(exc).__name__}); a smaller --size needs less"


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    return 128 + getattr(exc, "signum", signal.SIGINT)


def user_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the expected failures of a command into one line and exit code 2; running out of memory into one line
    and exit code 1; an interrupt into 128 + its signal (130 for SIGINT, 143 for SIGTERM)."""

    @wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (CommandError, *USER_ERRORS) as exc:
            error(str(exc))
            return 2
        except OSError as exc:
            error(describe_os_error(exc))
            return 2
        except (MemoryError, RuntimeError) as exc:
            if not out_of_memory(exc):
                raise
            error(describe_out_of_memory(exc))
            return 1
        except KeyboardInterrupt as exc:
            error("interrupted")
            return interrupt_exit_code(exc)

    return run


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), raised as :class:`CommandError`."""

    def error(self, message: str):
        raise CommandError(f"{message} (see {self.prog} --help)")


@contextmanager
def command_environment() -> Iterator[None]:
    """How every command runs: SIGTERM raises :class:`Interrupted` like SIGINT raises KeyboardInterrupt
    (so temporary files and claims are cleaned up), warnings are one line ``advquery: warning: ...``,
    and file names that are not valid UTF-8 are printed escaped instead of failing."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    in_main = threading.current_thread() is threading.main_thread()

    def terminate(signum, _frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, terminate) if in_main else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *_args, **_kw: print(
                f"advquery: warning: {printable(message)}", file=sys.stderr)
            yield
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- option types


# Ceilings of the numeric options, so that an absurd value is refused up front rather than failing deep inside
# (an allocation of petabytes, an overflow in a C library): every integer, the working size, the steps of an
# optimisation, threads and processes, an upload.
MAX_INT = 2**31 - 1
MAX_WORKING_SIZE = 8192
MAX_STEPS = 100_000
MAX_PROCESSES = 4096  # --threads, --workers
MAX_UPLOAD_MB = 1_000_000
SIZE_RANGE = f"{MIN_SIZE} to {MAX_WORKING_SIZE}"  # what the help of every working size says


def _shown(bound: float) -> str:
    """A bound as a message shows it: whole numbers in full (1000000, not 1e+06)."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def number(kind: type = int, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], int | float]:
    """An argparse type: a finite ``kind`` (int or float) within the bounds (inclusive unless open; an integer
    is at most :data:`MAX_INT` when no other ceiling is given); the one rule for every numeric option of every
    command, checked before any work."""
    if kind is int and high is None:
        high = MAX_INT
    noun = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        what = (f"{noun} in {'(' if low_open else '['}{_shown(low)}, {_shown(high)}{')' if high_open else ']'}"
                if kind is float else f"{noun} in {low}..{high}")
    elif low is not None:
        what = f"{noun} {'>' if low_open else '>='} {_shown(low)}"
    elif high is not None:
        what = f"{noun} {'<' if high_open else '<='} {_shown(high)}"
    else:
        what = "a finite number" if kind is float else noun

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (not math.isfinite(value) or (low is not None and (value < low or (low_open and value == low)))
                or (high is not None and (value > high or (high_open and value == high)))):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type by it in some messages
    return parse


positive_int = number(int, 1)
working_size = number(int, MIN_SIZE, MAX_WORKING_SIZE)
step_count = number(int, 1, MAX_STEPS)
process_count = number(int, 1, MAX_PROCESSES)
seed_number = number(int, 0, 2**32 - 1)  # numpy's seeds go to 2**32 - 1
upload_mb = number(float, 0, MAX_UPLOAD_MB, low_open=True)


def device_name(text: str) -> str:
    """An argparse type: a torch device present on this machine (the message lists those that are)."""
    try:
        resolve_device(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# ----------------------------------------------------------------------------- outputs


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (or in the folders it would be created in), or None."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{'this' if existing == Path(folder) else existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing} (no permission, or a read-only file system)"
    return None


def check_output_folder(path: Path, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot be created or written: a file in its place
    (or in place of a folder above it), or a folder without permission to write."""
    problem = _unwritable(path)
    if problem:
        raise CommandError(f"{flag} {path}: {problem}")


def check_output_file(path: Path, flag: str, whole: bool = False) -> None:
    """Refuse, before any work, an output file that cannot be written (its folder is created when it is written).

    ``whole``: the file is written whole, as a new file that replaces the old one in one step
    (:func:`~advquery.io.atomic_write`), to :func:`~advquery.io.real_path` of ``path`` (through symbolic links, as
    the shell's ``>`` writes). Then an existing target that is not a regular file (a device, a pipe, a socket) is
    refused too, and so is a path through an open file descriptor (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/PID/fd/N``, whatever it is open on): the new file would replace it (a redirected ``> out.txt``)."""
    path = Path(path)
    if whole and (problem := _not_replaceable(path)):
        pass
    elif path.is_dir():
        problem = "is a folder, not a file"
    elif path.exists() and not os.access(path, os.W_OK):
        problem = "cannot write it (no permission, or a read-only file system)"
    else:
        problem = _unwritable((real_path(path) if whole else path).parent)
    if problem:
        raise CommandError(f"{flag} {path}: {problem}")


_DESCRIPTOR_FOLDER = re.compile(r"^/(dev/fd|proc/[^/]+/fd)$")
_STANDARD_STREAMS = ("stdin", "stdout", "stderr")


def _through_descriptor(path: Path) -> bool:
    """Whether ``path``, or a symbolic link it leads through, names an open file descriptor of a process
    (``/dev/stdout`` and the other standard streams, ``/dev/fd/N``, ``/proc/PID/fd/N``)."""
    current = os.path.abspath(path)
    for _ in range(40):  # the links the system would follow before it says 'loop'
        folder = os.path.realpath(os.path.dirname(current))
        name = os.path.basename(current)
        if _DESCRIPTOR_FOLDER.match(folder) or (folder == "/dev" and name in _STANDARD_STREAMS):
            return True
        try:
            current = os.path.join(folder, os.readlink(current))  # an absolute link replaces the folder
        except OSError:  # not a link (or not there): the end of the chain
            return False
    return False


def _not_replaceable(path: Path) -> str | None:
    """Why an output written whole must not be written to ``path`` (what it is now, symbolic links followed), or None."""
    if _through_descriptor(path):
        return ("names an open file descriptor (/dev/stdout, /dev/fd/N, /proc/PID/fd/N), whose file the output, "
                "written to a new file, would replace; give the path of a file")
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"a symbolic link loop ({exc.strerror})" if exc.errno == errno.ELOOP else None  # None: not there yet
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # a folder: said by the checks that follow
        return None
    return ("is not a regular file (a device, a pipe or a socket), which the output, written to a new file, would "
            "replace; give the path of a file")


class JsonLines:
    """A report appended one JSON line at a time (check its path with :func:`check_output_file` before any
    work). A write that fails (disk full) is said once, in one line, and the report is closed; the command
    goes on and :attr:`failed` makes it exit non-zero. A line is written whole or not at all."""

    def __init__(self, path: Path, flag: str):
        self.path, self.flag, self.failed = Path(path), flag, False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def write(self, record: dict) -> None:
        if self._fd is None:
            return
        data = (json.dumps(record) + "\n").encode()
        start = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a short write: the disk is full
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)  # no half line
            except OSError:
                pass
            error(f"{self.flag} {self.path}: cannot write ({exc.strerror or exc}); the report stops here")
            self.failed = True
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def collect_or_fail(inputs: list[str], recursive: bool, what: str, exclude: tuple[Path, ...] = (),
                    skip_output_folders: bool = False) -> tuple[list[InputFile], list[str]]:
    """Input files of a batch command (never from ``exclude``, its own output folders, where they lie inside
    an input folder, nor with ``skip_output_folders`` from any folder of protected outputs below one);
    problems are printed as they are found, none at all is an error."""
    files, problems = collect_inputs(inputs, recursive=recursive, exclude=exclude,
                                     skip_output_folders=skip_output_folders)
    if not files:  # the last problem and the verdict on one line
        for line in problems[:-1]:
            error(line)
        raise CommandError("; ".join([*problems[-1:], f"no {what}"]))
    for line in problems:
        error(line)
    return files, problems


def add_model_options(parser: argparse.ArgumentParser, size_default: int | None = DEFAULT_SIZE) -> None:
    """--model, --size, --multiscale and --device, shared by every command that describes images."""
    parser.add_argument("--model", default=None if size_default is None else DEFAULT_MODEL,
                        help=f"built-in model name or cirtorch checkpoint path (default: {DEFAULT_MODEL})")
    parser.add_argument("--size", type=working_size, default=size_default,
                        help=f"working size: long side in pixels, {SIZE_RANGE} "
                             f"(default: {size_default or 'the index'})")
    parser.add_argument("--multiscale", action="store_true", help="GeM-average descriptors at scales 1, 1/sqrt2, 1/2")
    parser.add_argument("--device", type=device_name, default=None,
                        help="torch device (default: cuda if available, else cpu)")


def add_steps_option(parser: argparse.ArgumentParser, whose: str = "preset's") -> None:
    """--steps, shared by every command that protects photos: ``whose`` step limit it overrides."""
    parser.add_argument("--steps", type=step_count,
                        help=f"override the {whose} maximum number of optimisation steps (at most {MAX_STEPS})")


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
