"""Search at scale (issue: indexes that scale, benchmark section): exact search (faiss IndexFlatIP) against
IVF-PQ (advquery.retrieval.IVFPQ, as ``index build --index-type ivfpq`` builds it) over roxford5k-mini's
database plus N distractor descriptors of the default model's dimension.

The distractors are synthetic, not photos: descriptors drawn from a Gaussian with the mean and covariance of
the real roxford5k-mini database descriptors (efficientnet-lite0-gem at --size px), then L2-normalised as the
model's are. Every table row, the JSON records and the plot say so. The 996 real database images come first
(ids 0..995, where the ground truth points), the distractors after them.

Per method: memory of the index (the float32 rows for exact search; the serialised faiss index for IVF-PQ,
plus the float32 rows when it re-ranks exactly, as an index directory keeps them), build time (IVF-PQ:
training on its sample, then adding every row), milliseconds per query (the roxford5k-mini standard BB queries
searched as one batch for their k best), recall@10 and @100 against exact search, and mAP Medium of those
queries over the whole collection (exact: the full ranking; IVF-PQ: its k best, a positive further down counts
as not found, as compute_map scores a truncated ranking).

Run: ``python bench/scale.py [--n 1000000] [--nlist N] [--pq M] [--nprobe 8 32] [--rerank 1000]``; results in
bench/results/scale_N.{json,md,png}. Database descriptors are cached in bench/.cache.
"""
import argparse
import sys
import time

import faiss
import matplotlib
import numpy as np
from common import CACHE, DATA_ROOT, RESULTS, markdown_table, write_results

from advquery.evaluation.datasets import load_dataset
from advquery.evaluation.metrics import compute_map
from advquery.evaluation.runner import database_descriptors
from advquery.io import atomic_write
from advquery.models import DEFAULT_MODEL, load_model
from advquery.retrieval import IVFPQ, fill_shard, search_ivfpq
from advquery.systems import NeuralSystem

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

DISTRACTORS = "synthetic Gaussian"  # what the distractor descriptors are, stated beside every figure
CHUNK = 50_000  # distractor rows drawn at a time


def draw_distractors(real: np.ndarray, n: int, seed: int, add) -> None:
    """Pass ``add`` chunks of ``n`` rows drawn from the Gaussian with the mean and covariance of ``real``
    (mean + z @ centred / sqrt(rows - 1), z standard normal: exactly that covariance), L2-normalised."""
    rng = np.random.default_rng(seed)
    mean = real.mean(axis=0)
    basis = ((real - mean) / np.sqrt(len(real) - 1)).astype(np.float32)
    for start in range(0, n, CHUNK):
        rows = mean + rng.standard_normal((min(CHUNK, n - start), len(real)), dtype=np.float32) @ basis
        add(rows / np.linalg.norm(rows, axis=1, keepdims=True))


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of the exact k nearest rows among the k found."""
    return float(np.mean([np.intersect1d(f[:k], e[:k]).size / k for f, e in zip(found, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="distractor descriptors (default: 1,000,000)")
    parser.add_argument("--size", type=int, default=512, help="working size of the real descriptors (default: 512)")
    parser.add_argument("--nlist", type=int, help="IVF-PQ lists (default: the IVFPQ default for the collection)")
    parser.add_argument("--pq", type=int, help="IVF-PQ sub-vectors (default: the IVFPQ default)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32], help="lists probed (default: 8 32)")
    parser.add_argument("--rerank", type=int, default=1000, help="IVF-PQ shortlist re-ranked exactly (default: 1000)")
    parser.add_argument("--k", type=int, default=1000, help="results per query, the depth mAP is scored at (default: 1000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    if args.n < 1 or args.k < 100 or args.rerank < 0 or min(args.nprobe) < 1:
        parser.error("need --n >= 1, --k >= 100, --rerank >= 0 and every --nprobe >= 1")

    dataset = load_dataset("roxford5k-mini", DATA_ROOT)
    system = NeuralSystem(load_model(DEFAULT_MODEL), args.size)
    real = database_descriptors(dataset, system, CACHE)
    queries = system.describe(dataset.queries, dataset.query_boxes, desc="queries").descriptors
    gnd = dataset.ground_truth("medium")
    dim, total = real.shape[1], len(real) + args.n
    print(f"{len(real)} real database rows + {args.n} {DISTRACTORS} distractors of {dim} dimensions, "
          f"{len(queries)} queries, faiss {faiss.__version__} on {faiss.omp_get_max_threads()} threads", flush=True)

    # Exact: the rows live in the flat index only; a view of them serves IVF-PQ (training, re-ranking) and mAP.
    flat = faiss.IndexFlatIP(dim)
    flat.add(real)
    start = time.perf_counter()
    draw_distractors(real, args.n, args.seed, flat.add)
    print(f"drew the distractors in {time.perf_counter() - start:.0f} s", flush=True)
    rows = faiss.rev_swig_ptr(flat.get_xb(), total * dim).reshape(total, dim)
    start = time.perf_counter()
    _, exact_ids = flat.search(queries, args.k)
    exact_ms = 1000 * (time.perf_counter() - start) / len(queries)
    full_ranking = np.argsort(-(rows @ queries.T), axis=0, kind="stable")  # (total, n_queries), best first
    plain = compute_map(np.argsort(-(real @ queries.T), axis=0, kind="stable"), gnd).map
    records = [{"method": "exact (IndexFlatIP)", "memory_bytes": rows.nbytes, "build_s": 0.0, "ms_per_query": exact_ms,
                "recall@10": 1.0, "recall@100": 1.0, "map_medium": compute_map(full_ranking, gnd).map,
                "ranking": "full"}]
    del full_ranking
    print(records[0], flush=True)

    ivf = IVFPQ(dim, total, args.nlist, args.pq, args.seed)
    start = time.perf_counter()
    trained = ivf.train(rows)
    train_s = time.perf_counter() - start
    ann = fill_shard(trained, rows)
    build_s = time.perf_counter() - start
    code_bytes = faiss.serialize_index(ann).nbytes
    print(f"IVF-PQ {ivf.settings()}: trained in {train_s:.0f} s, built in {build_s:.0f} s, {code_bytes} bytes",
          flush=True)
    for nprobe in args.nprobe:
        for rerank in sorted({0, args.rerank}):
            start = time.perf_counter()
            _, ids = search_ivfpq(ann, rows, queries, args.k, nprobe, rerank)
            ms = 1000 * (time.perf_counter() - start) / len(queries)
            records.append({"method": f"IVF-PQ nprobe {nprobe}" + (f", exact re-ranking of {rerank}" if rerank else ""),
                            "memory_bytes": code_bytes + (rows.nbytes if rerank else 0), "build_s": build_s,
                            "ms_per_query": ms, "recall@10": recall(ids, exact_ids, 10),
                            "recall@100": recall(ids, exact_ids, 100), "map_medium": compute_map(ids.T, gnd).map,
                            "ranking": f"top {args.k}", "nprobe": nprobe, "rerank": rerank})
            print(records[-1], flush=True)
    for r in records:
        r["distractors"] = DISTRACTORS

    name = f"scale_{args.n}"
    settings = {"n_distractors": args.n, "n_real": len(real), "dim": dim, "model": DEFAULT_MODEL, "size": args.size,
                "queries": len(queries), "scored_queries": sum(bool(g["ok"]) for g in gnd), "k": args.k,
                "ivfpq": ivf.settings(), "train_s": train_s, "faiss": faiss.__version__,
                "faiss_threads": faiss.omp_get_max_threads(), "map_medium_without_distractors": plain,
                "distractor_model": "Gaussian with the mean and covariance of the real database descriptors, "
                                    "L2-normalised (synthetic, not photos)",
                "command": " ".join(["python bench/scale.py", *sys.argv[1:]]), "wall_s": time.perf_counter() - began}
    plot(records, settings, name)
    header = ["method", "distractors", "memory (MB)", "build (s)", "ms/query", "recall@10", "recall@100",
              "mAP Medium (%)", "ranking scored"]
    table = markdown_table(header, [[r["method"], f"{args.n:,} {DISTRACTORS}", round(r["memory_bytes"] / 1e6, 1),
                                     round(r["build_s"], 1), round(r["ms_per_query"], 2), round(r["recall@10"], 3),
                                     round(r["recall@100"], 3), round(100 * r["map_medium"], 2), r["ranking"]]
                                    for r in records])
    text = (f"roxford5k-mini standard BB queries ({settings['scored_queries']} scored) against its {len(real)} real "
            f"database images plus {args.n:,} **synthetic distractor descriptors** ({settings['distractor_model']}), "
            f"{DEFAULT_MODEL} at {args.size} px, {dim} dimensions. IVF-PQ: {ivf.nlist} lists, {ivf.pq} bytes per row, "
            f"trained on {ivf.train_size:,} rows in {train_s:.0f} s. mAP Medium without distractors: "
            f"{100 * plain:.2f} %. faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads. "
            f"The whole run took {settings['wall_s'] / 60:.1f} minutes: `{settings['command']}`. "
            f"Plot: bench/results/{name}.png.\n\n{table}")
    write_results(name, {"settings": settings, "records": records}, text)


def plot(records: list[dict], settings: dict, name: str) -> None:
    """recall@100 and mAP Medium against milliseconds per query, each point labelled with its method."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    for ax, key, label in ((axes[0], "recall@100", "recall@100 against exact"),
                           (axes[1], "map_medium", "mAP Medium")):
        for r in records:
            ax.scatter(r["ms_per_query"], r[key], s=30)
            ax.annotate(f"{r['method']}\n{r['memory_bytes'] / 1e6:.0f} MB", (r["ms_per_query"], r[key]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.margins(x=0.35, y=0.1)  # room for the labels
        ax.set_xlabel("ms per query (log)")
        ax.set_ylabel(label)
    fig.suptitle(f"{settings['n_real']} real roxford5k-mini images + {settings['n_distractors']:,} SYNTHETIC Gaussian "
                 f"distractor descriptors ({settings['model']}, {settings['dim']} dims)", fontsize=10)
    with atomic_write(RESULTS / f"{name}.png") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
