"""``advquery index build``: describe a photo collection and save a searchable index."""
import argparse
import sys
from pathlib import Path

from ..io import real_path
from ..retrieval import ImageIndex, Manifest
from ..systems import SiftHESystem
from .common import (CommandError, add_features_options, add_model_options, check_output_folder, collect_or_fail, error,
                     positive_int, system_from_args, user_errors)

VOCABULARY_FILE = "vocabulary.npz"  # a SIFT-HE index keeps its vocabulary beside the manifest


def register(commands: argparse._SubParsersAction) -> None:
    index = commands.add_parser("index", help="build a searchable index of photos")
    actions = index.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="describe images and save an index directory")
    build.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    build.add_argument("-o", "--output", required=True, type=Path, metavar="INDEX_DIR", help="index directory to write")
    build.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    build.add_argument("--batch-size", type=positive_int, default=None,
                       help="images per forward pass (default: 1 on CPU, 16 on CUDA)")
    add_model_options(build)
    add_features_options(build)
    build.set_defaults(run=build_index)


@user_errors
def build_index(args: argparse.Namespace) -> int:
    check_output_folder(args.output, "-o")  # before describing every image
    files, problems = collect_or_fail(args.images, args.recursive, "images to index")
    system = system_from_args(args)
    paths = [real_path(f.path) for f in files]
    system.fit(paths)  # SIFT-HE without --vocab: a vocabulary trained on the images indexed
    result = system.describe(paths, desc="indexing")
    for line in result.failures:
        error(f"skipped {line}")
    if not result.paths:
        raise CommandError("none of the images could be read; no index written")
    settings = {}
    if isinstance(system, SiftHESystem):  # record the vocabulary: its file in the index, origin, settings, digest
        system.vocabulary.save(args.output / VOCABULARY_FILE)
        source = str(args.vocab.resolve()) if args.vocab else "trained on the indexed images"
        settings = {"max_features": system.max_features,
                    "vocabulary": {"file": VOCABULARY_FILE, "source": source, **system.vocabulary.settings()}}
    manifest = Manifest(model=system.name, size=system.size, scales=tuple(system.scales),
                        dim=result.descriptors.shape[1], count=len(result.paths), features=system.features,
                        settings=settings)
    ImageIndex(result.descriptors, result.paths, manifest).save(args.output)
    skipped = len(result.failures) + len(problems)
    print(f"indexed {len(result.paths)} image(s) with {system.name} at {args.size} px into {args.output}"
          + (f"; skipped {skipped}" if skipped else ""), file=sys.stderr)
    return 1 if skipped else 0
