"""``advquery index build``: describe a photo collection and save a searchable index."""
import argparse
import sys
import warnings
from contextlib import nullcontext
from functools import lru_cache, partial
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from ..cluster import (add_cluster_options, map_on_ray, ray_session, ray_target, task_gpus, torch_threads,
                       worker_device, worker_slots)
from ..extraction import MIN_SIZE, Extraction, describe
from ..io import real_path
from ..retrieval import INDEX_TYPES, IVFPQ, ImageIndex, Manifest, fill_shard, merge_shards
from ..systems import NeuralSystem, RetrievalSystem, SiftHESystem
from .common import (CommandError, add_features_options, add_model_options, check_output_folder, collect_or_fail, error,
                     positive_int, process_count, system_from_args, user_errors)

VOCABULARY_FILE = "vocabulary.npz"  # a SIFT-HE index keeps its vocabulary beside the manifest
# Images per Ray task: enough that a task's own cost is small beside describing them, few enough that every
# worker gets several tasks of a small collection.
CHUNK = 16
# Rows of an IVF-PQ shard filled by one Ray task at most: bounds what a task receives (4 x dimension bytes a row:
# 256 MB at 1280 dimensions) and holds; a collection gets one shard per worker, more where they would be larger.
SHARD_ROWS = 50_000
# The options system_from_args builds a system from: a worker builds its own from them (and its device).
SYSTEM_OPTIONS = ("features", "model", "size", "multiscale", "batch_size", "vocab", "vocab_size")


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
                            "a sample, searched approximately (search --nprobe, --rerank); with --ray, trained in this "
                            "process and filled in shards by Ray tasks, one per worker, merged into one index")
    build.add_argument("--nlist", type=positive_int, metavar="N",
                       help="ivfpq: inverted lists (default: about 4 sqrt(images), at most images / 39)")
    build.add_argument("--pq", type=positive_int, metavar="M",
                       help="ivfpq: product quantizer sub-vectors, bytes per image; must divide the descriptor "
                            "dimension (default: dimension / 16)")
    add_model_options(build)
    add_features_options(build)
    add_cluster_options(build, process_count, "describe the images", workers=False, shard=False)
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
    ray = ray_target(args)
    if ray and args.features == "sift-he" and not args.vocab:
        raise CommandError("--features sift-he on Ray needs --vocab FILE: the vocabulary is trained in one process "
                           "(an index built without --ray keeps its own as vocabulary.npz)")
    files, problems = collect_or_fail(args.images, args.recursive, "images to index")
    with torch_threads(args.threads), ray_session(*ray) if ray else nullcontext():
        return _build(args, files, problems, ray)


def _build(args: argparse.Namespace, files, problems: list[str], ray: tuple[str, int | None] | None) -> int:
    """Describe the images (in this process, or in Ray tasks of :data:`CHUNK` images each) and save the index
    (an IVF-PQ one on Ray filled in shards by Ray tasks too, :func:`_fill_on_ray`)."""
    system = system_from_args(args)
    paths = [real_path(f.path) for f in files]
    if args.index_type == "ivfpq":
        _ivfpq(args, _descriptor_dim(system), len(paths))  # before describing every image
    system.fit(paths)  # SIFT-HE without --vocab: a vocabulary trained on the images indexed
    result = _describe_on_ray(paths, args) if ray else system.describe(paths, desc="indexing")
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
    shards = 1  # IVF-PQ shards filled in Ray tasks; a single one is filled here
    if args.index_type == "ivfpq":  # over the images described (some may have been skipped)
        ivf = _ivfpq(args, result.descriptors.shape[1], len(result.paths))
        threads = args.threads or 1
        if ray:  # one shard per worker, more where they would pass SHARD_ROWS
            shards = min(len(result.paths), max(worker_slots(threads), -(-len(result.paths) // SHARD_ROWS)))
        ann = ivf.build(result.descriptors,
                        partial(_fill_on_ray, shards=shards, threads=threads) if shards > 1 else None)
    manifest = Manifest(model=system.name, size=system.size, scales=tuple(system.scales),
                        dim=result.descriptors.shape[1], count=len(result.paths), features=system.features,
                        settings=settings, index=ivf.settings() if ivf else None)
    ImageIndex(result.descriptors, result.paths, manifest, ann).save(args.output)
    skipped = len(result.failures) + len(problems)
    filled = f", filled in {shards} shards on Ray" if shards > 1 else ""
    print(f"indexed {len(result.paths)} image(s) with {system.name} at {args.size} px into {args.output}"
          + (f" (IVF-PQ: {ivf.nlist} lists, {ivf.pq} bytes per image, trained on {ivf.train_size}{filled})"
             if ivf else "")
          + (f"; skipped {skipped}" if skipped else ""), file=sys.stderr)
    return 1 if skipped else 0


def _describe_on_ray(paths: list[Path], args: argparse.Namespace) -> Extraction:
    """What ``system.describe(paths)`` gives, from Ray tasks of :data:`CHUNK` images each; a chunk whose task
    cannot finish is one failure line per image."""
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    parts = map_on_ray(_describe_task, chunks, args, threads=args.threads or 1, gpus=task_gpus(args.device),
                       failed=lambda chunk, why: Extraction(np.zeros((0, 0), np.float32), [],
                                                            [f"{path}: {why}" for path in chunk]))
    parts = list(tqdm(parts, total=len(chunks), desc="indexing", unit="chunk", disable=None))
    rows = [part.descriptors for part in parts if part.paths]
    return Extraction(np.concatenate(rows) if rows else np.zeros((0, 0), np.float32),
                      [path for part in parts for path in part.paths], [line for part in parts for line in part.failures])


def _describe_task(paths: list[Path], args: argparse.Namespace) -> Extraction:
    """A Ray task: the descriptors of some images, by the system of the worker, built once per worker."""
    options = tuple((name, getattr(args, name)) for name in SYSTEM_OPTIONS)
    return _worker_system(options + (("device", worker_device(args.device)),)).describe(paths, progress=False)


@lru_cache(maxsize=1)
def _worker_system(options: tuple) -> RetrievalSystem:
    return system_from_args(argparse.Namespace(**dict(options)))


def _fill_on_ray(trained: faiss.Index, rows: np.ndarray, shards: int, threads: int) -> faiss.Index:
    """What ``fill_shard(trained, rows)`` gives, from ``shards`` blocks of consecutive rows, each added to a copy of
    the trained, empty index in a Ray task of ``threads`` CPUs (:func:`~advquery.retrieval.fill_shard`) and
    merged here in order (:func:`~advquery.retrieval.merge_shards`), so that ids are row numbers, positions in
    the image list. A shard whose task cannot finish is filled in this process, with a warning.

    Tasks of their own rather than the describe tasks returning shards: the index is trained on a seeded sample
    of the rows of every image described (the images that failed left out), so the trained index to fill exists
    only once every describe task is done; training it on images described beforehand would draw another sample
    than the serial path, and give another index. The rows come back to this process anyway (for the training
    sample and descriptors.npy), so the shards cost one more trip of the rows to the workers; and a describe
    task's :data:`CHUNK` images would make shards of as many rows, each carrying its own copy of the coarse
    centroids (nlist x dimension floats, 20 MB at 4,000 x 1,280) back, where one shard per worker carries one."""
    parts = np.array_split(rows, shards)
    filled = map_on_ray(_fill_task, parts, trained, threads=threads, gpus=0,
                        failed=lambda part, why: _fill_here(trained, part, why))
    return merge_shards(list(tqdm(filled, total=shards, desc="IVF-PQ shards", unit="shard", disable=None)))


def _fill_task(rows: np.ndarray, trained: faiss.Index) -> faiss.Index:
    """A Ray task: one shard of the IVF-PQ index, faiss using the CPUs Ray reserved for the task (map_on_ray set
    torch to them; faiss has its own OpenMP threads)."""
    faiss.omp_set_num_threads(torch.get_num_threads())
    return fill_shard(trained, rows)


def _fill_here(trained: faiss.Index, rows: np.ndarray, why: str) -> faiss.Index:
    warnings.warn(f"an IVF-PQ shard of {len(rows)} images is filled in this process: its Ray task failed ({why})")
    return fill_shard(trained, rows)
