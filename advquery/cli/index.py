"""``advquery index build``: describe a photo collection and save a searchable index."""
import argparse
import sys
from pathlib import Path

from ..extraction import MULTISCALE, extract_descriptors
from ..models import load_model
from ..retrieval import ImageIndex, Manifest
from .common import CommandError, add_model_options, collect_or_fail, error, user_errors


def register(commands: argparse._SubParsersAction) -> None:
    index = commands.add_parser("index", help="build a searchable index of photos")
    actions = index.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="describe images and save an index directory")
    build.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    build.add_argument("-o", "--output", required=True, type=Path, metavar="INDEX_DIR", help="index directory to write")
    build.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    build.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 1 on CPU, 16 on CUDA)")
    add_model_options(build)
    build.set_defaults(run=build_index)


@user_errors
def build_index(args: argparse.Namespace) -> int:
    files, problems = collect_or_fail(args.images, args.recursive, "images to index")
    model = load_model(args.model, device=args.device)
    scales = MULTISCALE if args.multiscale else (1.0,)
    result = extract_descriptors(model, [f.path.resolve() for f in files], args.size, scales,
                                 batch_size=args.batch_size, desc="indexing")
    for line in result.failures:
        error(f"skipped {line}")
    if not result.paths:
        raise CommandError("none of the images could be read; no index written")
    manifest = Manifest(model=model.name, size=args.size, scales=tuple(scales), dim=result.descriptors.shape[1],
                        count=len(result.paths))
    ImageIndex(result.descriptors, result.paths, manifest).save(args.output)
    skipped = len(result.failures) + len(problems)
    print(f"indexed {len(result.paths)} image(s) with {model.name} at {args.size} px into {args.output}"
          + (f"; skipped {skipped}" if skipped else ""), file=sys.stderr)
    return 1 if skipped else 0
