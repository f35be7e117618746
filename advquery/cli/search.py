"""``advquery search``: the indexed photos most similar to a query photo."""
import argparse
import json
from pathlib import Path

from ..io import printable
from ..retrieval import DEFAULT_NPROBE, DEFAULT_RERANK, ImageIndex
from .common import (CommandError, add_features_options, add_model_options, number, positive_int, system_for_index,
                     user_errors)


def register(commands: argparse._SubParsersAction) -> None:
    search = commands.add_parser("search", help="find the indexed images most similar to a query image")
    search.add_argument("query", type=Path, metavar="QUERY", help="query image file")
    search.add_argument("--index", required=True, type=Path, metavar="INDEX_DIR", help="index built by 'index build'")
    search.add_argument("-k", type=positive_int, default=10, help="number of results (default: 10)")
    search.add_argument("--nprobe", type=positive_int, metavar="N",
                        help=f"IVF-PQ index: inverted lists probed, more is slower and finds more of the exact "
                             f"neighbours (default: {DEFAULT_NPROBE}, or all lists if fewer)")
    search.add_argument("--rerank", type=number(int, 0), metavar="N",
                        help=f"IVF-PQ index: re-rank the best max(N, k) candidates by their exact scores with the "
                             f"stored descriptors; 0: keep the product quantizer's estimates (default: {DEFAULT_RERANK})")
    search.add_argument("--json", action="store_true", help="print JSON: {query, results: [{path, score}]}")
    add_model_options(search, size_default=None)
    add_features_options(search, database=False)
    search.set_defaults(run=run_search)


@user_errors
def run_search(args: argparse.Namespace) -> int:
    index = ImageIndex.load(args.index)
    entry = index.manifest.index
    if entry is None and (args.nprobe is not None or args.rerank is not None):
        raise CommandError(f"--nprobe and --rerank apply to an IVF-PQ index; {args.index} is flat (exact search)")
    if entry is not None and args.nprobe is not None and args.nprobe > entry["nlist"]:
        raise CommandError(f"--nprobe {args.nprobe}: {args.index} has {entry['nlist']} inverted lists")
    system = system_for_index(args, index)
    result = system.describe([args.query], progress=False)
    if result.failures:
        raise CommandError(result.failures[0])
    hits = index.search(result.descriptors, args.k, system.rank, args.nprobe, args.rerank)[0]
    if args.json:
        print(json.dumps({"query": str(args.query), "results": [{"path": str(p), "score": s} for p, s in hits]}))
    else:
        for rank, (path, score) in enumerate(hits, 1):
            print(f"{rank:3d}  {score:.4f}  {printable(path)}")  # one line per result, whatever the file name
    return 0
