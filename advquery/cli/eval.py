"""``advquery eval``: mAP of a retrieval system on a benchmark, optionally with modified queries."""
import argparse
import json
import os
from pathlib import Path

import numpy as np

from ..evaluation.datasets import DATASET_NAMES, load_dataset, load_distractors
from ..evaluation.runner import evaluate
from ..io import atomic_write, real_path
from ..transforms import KINDS, parse_transform
from .common import (CommandError, add_features_options, add_model_options, check_output_file, system_from_args,
                     user_errors)


def register(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser("eval", help="evaluate retrieval (mAP, mP@k) on a benchmark")
    ev.add_argument("--dataset", required=True,
                    help=f"{'|'.join(DATASET_NAMES)} or a folder with one sub-folder of photos per group")
    ev.add_argument("--data-root", type=Path, default=os.environ.get("ADVQUERY_DATA"),
                    help="folder holding the datasets (default: $ADVQUERY_DATA)")
    ev.add_argument("--protocol", choices=("easy", "medium", "hard", "classic"), action="append",
                    help="protocol(s) to report (default: all the dataset supports)")
    ev.add_argument("--queries", choices=("bb", "wi"), default="bb",
                    help="bb: crop queries to their bounding box (standard); wi: whole images")
    ev.add_argument("--query-dir", type=Path, help="take each query from this folder by file name stem")
    ev.add_argument("--db-dir", type=Path,
                    help="take database images from this folder by file name stem (e.g. leaked protected photos)")
    ev.add_argument("--distractors", type=Path, metavar="FILE",
                    help="add the images of this list to the database (revisitop1m.txt format: one path per line, "
                         "relative to --data-root or absolute), described and cached like the database: "
                         "e.g. ROxford+1M and RParis+1M")
    ev.add_argument("--transform", metavar="SPEC",
                    help="edit each query before retrieval, steps in order, each KIND or KIND:VALUE with KIND one of "
                         f"{', '.join(KINDS)} (e.g. jpeg:Q, resize:F, crop:F keeps the central fraction F of each side, "
                         "blur:SIGMA); e.g. jpeg:75,resize:0.5")
    ev.add_argument("--json", type=Path, metavar="FILE", help="write the summary with per-query AP")
    ev.add_argument("--ranks", type=Path, metavar="FILE.npy",
                    help="save the (database x queries) ranking, database indices best first")
    ev.add_argument("--cache", type=Path, metavar="DIR", help="descriptor cache (default: $ADVQUERY_CACHE or ~/.cache/advquery)")
    ev.add_argument("--no-cache", action="store_true", help="do not read or write cached database descriptors")
    add_model_options(ev)
    add_features_options(ev)
    ev.set_defaults(run=run_eval)


def format_report(report) -> str:
    """The evaluation as a plain-text table, one row per protocol."""
    lines = [f"{report.dataset}: {report.model}, {report.size} px, scales {list(report.scales)}, "
             f"{report.queries.upper()} queries"
             + (f", transform {report.transform}" if report.transform != "none" else "")
             + (f", {report.replaced_database_images} database images replaced"
                if report.replaced_database_images else "")
             + (f", {report.distractors} distractors added" if report.distractors else ""),
             f"{'protocol':<9} {'mAP':>6} {'mP@1':>6} {'mP@5':>6} {'mP@10':>6} {'random':>7} {'queries':>8}"]
    for name, r in report.results.items():
        mp = r.mp_at_k
        lines.append(f"{name:<9} {100 * r.map:6.2f} {100 * mp[1]:6.2f} {100 * mp[5]:6.2f} {100 * mp[10]:6.2f} "
                     f"{100 * report.random[name]:7.2f} {r.n_evaluated:>4}"
                     + (f" ({r.n_skipped} without positives skipped)" if r.n_skipped else ""))
    return "\n".join(lines)


@user_errors
def run_eval(args: argparse.Namespace) -> int:
    try:
        transform = parse_transform(args.transform) if args.transform else None
    except ValueError as exc:
        raise CommandError(f"--transform: {exc}") from None
    for path, flag in ((args.json, "--json"), (args.ranks, "--ranks")):
        if path:
            check_output_file(path, flag, whole=True)  # before the evaluation, not after it
    dataset = load_dataset(args.dataset, args.data_root)
    distractors = load_distractors(args.distractors, args.data_root) if args.distractors else ()
    report = evaluate(dataset, system_from_args(args), queries=args.queries, protocols=args.protocol,
                      query_dir=args.query_dir, cache_dir=False if args.no_cache else args.cache, transform=transform,
                      db_dir=args.db_dir, distractors=distractors)
    print(format_report(report))
    if args.json:  # through a symbolic link to the file it names, whole or not at all
        with atomic_write(real_path(args.json)) as f:
            f.write(json.dumps(report.summary(), indent=2).encode())
    if args.ranks:
        with atomic_write(real_path(args.ranks)) as f:
            np.save(f, report.ranks)
    return 0
