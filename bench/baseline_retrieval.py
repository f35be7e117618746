"""Baseline retrieval of the embedded models (issue: foundation, benchmark section).

Lite0/1/2 GeM at working sizes 512 and 1024 on roxford5k-mini (BB and WI queries, Medium and
Hard), roxford5k-mini-ext (WI) and ukbench-mini: mAP, mP@10, random-ranking mAP, and extraction
throughput (images/s, timed on 40 database photos after 2 warm-up ones, no cache).
Run: ``python bench/baseline_retrieval.py [--sizes 512 1024] [--models ...]``. Database descriptors
are cached in bench/.cache (the attack benchmarks reuse them).
"""
import argparse
import time
from pathlib import Path

from common import DATA_ROOT, markdown_table, write_results

from advquery.evaluation.datasets import load_dataset
from advquery.evaluation.runner import evaluate
from advquery.extraction import extract_descriptors
from advquery.models import BUILTIN_MODELS, load_model

CACHE = Path(__file__).parent / ".cache"

CASES = (("roxford5k-mini", "bb", ("medium", "hard")), ("roxford5k-mini", "wi", ("medium", "hard")),
         ("roxford5k-mini-ext", "wi", ("medium", "hard")), ("ukbench-mini", "wi", ("medium",)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(BUILTIN_MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    args = parser.parse_args()
    rows, records = [], []
    datasets = {name: load_dataset(name, DATA_ROOT) for name in {c[0] for c in CASES}}
    for model_name in args.models:
        model = load_model(model_name)
        for size in args.sizes:
            sample = datasets["roxford5k-mini"].images[:42]
            extract_descriptors(model, sample[:2], size, progress=False)
            start = time.perf_counter()
            extract_descriptors(model, sample[2:], size, progress=False)
            throughput = 40 / (time.perf_counter() - start)
            for name, queries, protocols in CASES:
                ds = datasets[name]
                report = evaluate(ds, model, size, queries=queries, protocols=protocols, cache_dir=CACHE)
                for p in protocols:
                    r = report.results[p]
                    records.append({"model": model_name, "size": size, "dataset": name, "queries": queries,
                                    "protocol": p, "map": r.map, "mp@10": r.mp_at_k[10], "random_map": report.random[p],
                                    "n_queries": r.n_evaluated, "db_images": len(ds.images),
                                    "images_per_s": throughput})
                    rows.append([model_name, size, name, queries.upper(), p, round(100 * r.map, 2),
                                 round(100 * r.mp_at_k[10], 2), round(100 * report.random[p], 2), r.n_evaluated,
                                 round(throughput, 2)])
                    print(rows[-1], flush=True)
    table = markdown_table(["model", "size", "dataset", "queries", "protocol", "mAP", "mP@10", "random mAP",
                            "queries scored", "images/s"], rows)
    write_results("baseline_retrieval", {"records": records}, table)


if __name__ == "__main__":
    main()
