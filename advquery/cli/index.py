"""``advquery index build``: describe a photo collection and save a searchable index."""
import argparse
import sys
from pathlib import Path

import torch

from ..extraction import MIN_SIZE, describe
from ..io import real_path
from ..retrieval import INDEX_TYPES, IVFPQ, ImageIndex, Manifest
from ..systems import NeuralSystem, SiftHESystem
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
    build.add_argument("--index-type", choices=INDEX_TYPES, default="flat",
                       help="flat: exact search over every descriptor (default); ivfpq: faiss IVF-PQ for large "
                            "collections (neural features only): inverted lists and a product quantizer trained on "
                            "a sample, searched approximately (search --nprobe, --rerank)")
    build.add_argument("--nlist", type=positive_int, metavar="N",
                       help="ivfpq: inverted lists (default: about 4 sqrt(images), at most images / 39)")
    build.add_argument("--pq", type=positive_int, metavar="M",
                       help="ivfpq: product quantizer sub-vectors, bytes per image; must divide the descriptor "
                            "dimension (default: dimension / 16)")
    add_model_options(build)
    add_features_options(build)
    build.set_defaults(run=build_index)


def _descriptor_dim(system: NeuralSystem) -> int:
    """The dimension of the system's descriptors, from one blank image at the smallest size (cheap; for the
    checks before any image is described)."""
    with torch.no_grad():
        return int(describe(system.model, torch.zeros(1, 3, MIN_SIZE, MIN_SIZE), MIN_SIZE).shape[1])


def _ivfpq(args: argparse.Namespace, dim: int, count: int) -> IVFPQ:
    """The IVF-PQ settings asked for over ``count`` images, or one line saying why they cannot be trained."""
    try:
        return IVFPQ(dim, count, args.nlist, args.pq)
    except ValueError as exc:
        raise CommandError(f"--index-type ivfpq: {exc}") from None


@user_errors
def build_index(args: argparse.Namespace) -> int:
    check_output_folder(args.output, "-o")  # before describing every image
    if args.index_type == "flat" and (args.nlist or args.pq):
        raise CommandError("--nlist and --pq apply to --index-type ivfpq only")
    if args.index_type == "ivfpq" and args.features != "neural":
        raise CommandError(f"--index-type ivfpq applies to --features neural only (inner product of L2-normalised "
                           f"descriptors); {args.features} indexes are flat")
    files, problems = collect_or_fail(args.images, args.recursive, "images to index")
    system = system_from_args(args)
    paths = [real_path(f.path) for f in files]
    if args.index_type == "ivfpq":
        _ivfpq(args, _descriptor_dim(system), len(paths))  # before describing every image
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
    ann = ivf = None
    if args.index_type == "ivfpq":  # over the images described (some may have been skipped)
        ivf = _ivfpq(args, result.descriptors.shape[1], len(result.paths))
        ann = ivf.build(result.descriptors)
    manifest = Manifest(model=system.name, size=system.size, scales=tuple(system.scales),
                        dim=result.descriptors.shape[1], count=len(result.paths), features=system.features,
                        settings=settings, index=ivf.settings() if ivf else None)
    ImageIndex(result.descriptors, result.paths, manifest, ann).save(args.output)
    skipped = len(result.failures) + len(problems)
    print(f"indexed {len(result.paths)} image(s) with {system.name} at {args.size} px into {args.output}"
          + (f" (IVF-PQ: {ivf.nlist} lists, {ivf.pq} bytes per image, trained on {ivf.train_size})" if ivf else "")
          + (f"; skipped {skipped}" if skipped else ""), file=sys.stderr)
    return 1 if skipped else 0
