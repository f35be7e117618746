"""Batch work on a Ray cluster, on several processes of this machine, or on one shard of a scheduler's job.

A batch command plans its work in the driver (which output each input makes, which inputs collide),
then runs one function per item: serially in its own process, or as one Ray task per item
(:func:`map_on_ray`). Tasks rather than Ray Data: each photo already has its own claim and output
record, so a task per photo keeps the serial path's per-photo function, resume rule and report
unchanged; a killed worker costs Ray one retry of one photo; results come back in input order; and
no dataset is materialised. A worker process runs many tasks and loads its model once
(:func:`worker_model`).

Workers read the inputs and write the outputs themselves, so both must lie on storage every node
sees at the same path (the driver's working directory too, for relative paths); claims are ``flock``
locks, which NFS and other shared file systems honour.

Torch's CPU kernels split their sums by the thread count, so the bytes of an output depend on it:
``--threads`` sets it for the serial path and for each Ray task alike, and the same seed and thread
count give byte-identical outputs on both.

``--shard I/N`` selects shard I of N of the sorted inputs for schedulers without Ray (Slurm arrays,
Kubernetes indexed jobs); the shards together are the whole job.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TypeVar

import torch

from .models import DescriptorModel, load_model

T = TypeVar("T")
R = TypeVar("R")

INSTALL_HINT = "pip install 'advquery[cluster]'"
RETRIES = 3  # a task whose worker dies (killed, out of memory, node lost) runs again up to this often
CANCEL_GRACE_S = 10.0  # how long interrupted tasks get to remove their temporary files
# The driver waits for a task in steps of this many seconds, back in Python between them, so that an interrupt
# (Ctrl-C, SIGTERM) stops the batch at once: inside one ray.get, Ray looks at signals only about once a second.
INTERRUPT_POLL_S = 0.05
CONNECT_TIMEOUT_S = 10.0  # how long a cluster's address may take to answer
CLIENT_TRIES = 3  # connections to a Ray Client head before giving up (see ray_session)
CLIENT_RETRY_WAIT_S = 2.0
_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.-]+:\d{1,5}|\[[0-9a-fA-F:.]+\]:\d{1,5})$")


class ClusterError(Exception):
    """Ray cannot be started or reached, or a task could not run; ``str()`` is one line."""


# ----------------------------------------------------------------------------- options


def ray_address(text: str) -> str:
    """An argparse type: where ``--ray`` runs (``local``: a new Ray instance on this machine; ``auto``: the
    cluster this machine belongs to; ``ray://HOST:PORT``: Ray Client; ``HOST:PORT``: a cluster's head)."""
    if not _ADDRESS.match(text):
        raise argparse.ArgumentTypeError(f"expected auto, ray://HOST:PORT or HOST:PORT, got {text!r} "
                                         "(put --ray without an address after the inputs)")
    return text


def ray_target(args: argparse.Namespace) -> tuple[str, int | None] | None:
    """Where the batch runs: ``(address, CPUs of a local instance or None for all)`` on Ray, None serially in
    this process. Refuses, before any work, ``--workers`` with a cluster's address and Ray options where Ray
    is not installed (saying how to get it)."""
    workers = getattr(args, "workers", None)
    if workers and args.ray not in (None, "local"):
        raise ClusterError(f"--workers runs processes on this machine; on the cluster at {args.ray} Ray runs "
                           "a task on every --threads CPUs it has")
    address = args.ray or ("local" if workers else None)
    if address is not None and importlib.util.find_spec("ray") is None:
        raise ClusterError(f"{'--ray' if args.ray else '--workers'} needs Ray, which is not installed: {INSTALL_HINT}")
    return None if address is None else (address, workers * (args.threads or 1) if workers else None)


def shard_spec(text: str) -> tuple[int, int]:
    """An argparse type: ``I/N`` with 1 <= I <= N, as ``(I, N)``."""
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not found or not 1 <= int(found.group(1)) <= int(found.group(2)):
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N, got {text!r}")
    return int(found.group(1)), int(found.group(2))


def add_cluster_options(parser: argparse.ArgumentParser, count: Callable[[str], int], what: str,
                        workers: bool = True, shard: bool = True) -> None:
    """--ray [ADDRESS], --threads, and where asked for --workers and --shard, for a batch command that does ``what``
    (``count``: the argparse type of a number of threads or processes, the command line's one rule).
    --workers is offered where bench/results/cluster_throughput.md finds several processes faster than one."""
    parser.add_argument("--ray", nargs="?", const="local", type=ray_address, metavar="ADDRESS",
                        help=f"{what} in Ray tasks ({INSTALL_HINT}): without ADDRESS on a new "
                             "local Ray instance using every CPU here; auto: the cluster this machine belongs to; "
                             "ray://HOST:PORT or HOST:PORT: that cluster. Inputs and outputs must lie on storage every "
                             "node sees at the same path; on a cluster with GPUs each task reserves one and runs on it")
    if workers:
        parser.add_argument("--workers", type=count, metavar="N",
                            help=f"{what} in N processes on this machine, each with --threads threads (a local Ray "
                                 "instance): on a CPU, several processes of few threads get through a batch sooner "
                                 "than one process with every thread (bench/results/cluster_throughput.md)")
    parser.add_argument("--threads", type=count, metavar="N",
                        help="torch threads per process: serially (default: torch's choice for this machine) or per "
                             "Ray task, which reserves N CPUs (default 1). Outputs depend on it in their last bits: the "
                             "same seed and N give byte-identical files on both paths")
    if not shard:
        return
    parser.add_argument("--shard", type=shard_spec, metavar="I/N",
                        help="only shard I of N of the sorted inputs (for Slurm arrays or Kubernetes indexed jobs "
                             "sharing one output folder); the N shards together are the whole job")


def in_shard(items: list[T], shard: tuple[int, int] | None, key: Callable[[T], str]) -> list[T]:
    """The items of shard ``(I, N)`` (all of them for None): every N-th of the items sorted by ``key``,
    starting with the I-th, kept in their given order. Round-robin rather than blocks, so that shards of
    folders sorted by size or date get alike work.

    >>> in_shard(['d', 'a', 'c', 'b', 'e'], (1, 2), str), in_shard(['d', 'a', 'c', 'b', 'e'], (2, 2), str)
    (['a', 'c', 'e'], ['d', 'b'])
    """
    if shard is None:
        return list(items)
    i, n = shard
    ranks = {k: rank for rank, k in enumerate(sorted(range(len(items)), key=lambda k: key(items[k])))}
    return [item for k, item in enumerate(items) if ranks[k] % n == i - 1]


# ----------------------------------------------------------------------------- threads and devices


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Torch's intra-op thread count set to ``n`` (unchanged for None) for the block, then restored."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@lru_cache(maxsize=2)
def worker_model(name: str | None, device: str | None) -> DescriptorModel:
    """The model, loaded once per worker process: Ray runs many tasks in one worker."""
    return load_model(name, device=device)


def task_gpus(requested: str | None) -> int:
    """GPUs each Ray task reserves: one where the device asked for is CUDA or, with none asked for, where the
    cluster has GPUs."""
    import ray

    return int(requested.startswith("cuda") if requested else ray.cluster_resources().get("GPU", 0) > 0)


def worker_slots(threads: int) -> int:
    """Ray tasks of ``threads`` CPUs each that the cluster runs at once (at least one)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1) // threads))


def worker_device(requested: str | None) -> str:
    """The torch device of a Ray task: the one asked for, else the GPU Ray assigned it, else the CPU. Ray
    leaves every GPU of a node visible to a task that reserved none, so the default cannot be torch's."""
    import ray

    return requested or ("cuda" if ray.get_gpu_ids() else "cpu")


# ----------------------------------------------------------------------------- Ray


@contextmanager
def ray_session(address: str, cpus: int | None = None) -> Iterator[None]:
    """Ray started (``local``, with ``cpus`` CPUs or all of this machine's) or reached for the block, and shut
    down after it; a Ray runtime this process already holds (a notebook, a test session) is used as it is and
    left running.

    Ray replaces the SIGTERM handler when it starts; the command's own (SIGTERM as an interrupt, which keeps
    the summary) is put back. A waiting Ray turns the interrupt that handler raises into a plain
    KeyboardInterrupt, so the handler raises it again when the block ends with one after a SIGTERM (the exit
    code then tells SIGTERM from SIGINT). Ray's logs and the workers' output stay out of the command's output."""
    import ray

    if ray.is_initialized():
        yield
        return
    _check_reachable(address)
    handler = signal.getsignal(signal.SIGTERM)
    ours = callable(handler) and threading.current_thread() is threading.main_thread()
    local = dict(include_dashboard=False, num_cpus=cpus) if address == "local" else {}
    # A Ray Client head starts a server process for each client, which can fail on a busy head; a second
    # connection gets a new one. Any other address fails for good at the first try.
    tries = CLIENT_TRIES if address.startswith("ray://") else 1
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, **local)
            break
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, ... for an unusable address
            ray.shutdown()
            if attempt < tries:
                time.sleep(CLIENT_RETRY_WAIT_S)
                continue
            if ours:
                signal.signal(signal.SIGTERM, handler)
            raise ClusterError(f"--ray {address}: cannot {'start' if address == 'local' else 'reach'} Ray "
                               f"({_line(exc) or type(exc).__name__})") from None
    received: list[int] = []
    if ours:
        signal.signal(signal.SIGTERM, lambda signum, frame: (received.append(signum), handler(signum, frame)))
    try:
        yield
    except KeyboardInterrupt:
        if received:
            handler(received[-1], None)
        raise
    finally:
        if ours:
            signal.signal(signal.SIGTERM, handler)
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Refuse a cluster address nothing answers at: Ray would keep trying to reach it for minutes."""
    found = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)", address)
    if not found:  # local, auto: Ray finds (or starts) the cluster itself and says at once when it cannot
        return
    try:
        socket.create_connection((found.group(1), int(found.group(2))), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"--ray {address}: cannot reach Ray ({exc.strerror or exc or 'timed out'})") from None


def _line(exc: BaseException, words: int = 40) -> str:
    """The start of an error's message, on one line; of a message that carries a remote traceback (a Ray
    server's), its last line, which names the error."""
    message = str(exc)
    if "Traceback (most recent call last)" in message:
        message = message.split("Traceback (most recent call last)")[-1].strip().splitlines()[-1]
    return " ".join(message.split()[:words])


def _run_task(fn: Callable[..., R], cwd: str, item, shared: tuple) -> R:
    """In a Ray worker: ``fn(item, *shared)`` in the driver's working directory, with torch using the CPUs
    Ray reserved for the task."""
    import ray

    os.chdir(cwd)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    with torch_threads(max(1, int(cpus))):
        return fn(item, *shared)


def map_on_ray(fn: Callable[..., R], items: Iterable[T], *shared, threads: int, gpus: float,
               failed: Callable[[T, str], R]) -> Iterator[R]:
    """``fn(item, *shared)`` of each item as a Ray task reserving ``threads`` CPUs and ``gpus`` GPUs, yielded
    in the items' order. ``shared`` is sent to the cluster once. A task whose worker dies runs again (up to
    :data:`RETRIES` times); one that still cannot finish, or raises, yields ``failed(item, one line)``.
    Tasks are submitted a few per CPU ahead of the result awaited, so a batch of any size keeps every
    worker busy without queueing it all at once. On an interrupt, the results already made are yielded,
    the other tasks are cancelled (given :data:`CANCEL_GRACE_S` to clean up) and the interrupt re-raised."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    task = ray.remote(_run_task).options(num_cpus=threads, num_gpus=gpus, max_retries=RETRIES,
                                         retry_exceptions=False)
    shared_ref = ray.put(shared)
    cwd = os.getcwd()
    window = 4 * worker_slots(threads)
    pending: deque[tuple[T, ray.ObjectRef]] = deque()
    todo = iter(items)

    def one(item: T, ref) -> R:
        try:
            return ray.get(ref)
        except RayTaskError as exc:  # fn raised: its error, without Ray's traceback of it
            return failed(item, f"{type(exc.cause).__name__}: {_line(exc.cause)}")
        except RayError as exc:  # the worker or its node died every time, or the task was cancelled
            return failed(item, f"{type(exc).__name__} after {RETRIES + 1} tries ({_line(exc)})")

    def first() -> R:  # the oldest task's result; it leaves ``pending`` only once it has one
        while not ray.wait([pending[0][1]], timeout=INTERRUPT_POLL_S)[0]:
            pass
        result = one(*pending[0])
        pending.popleft()
        return result

    try:
        for item in todo:
            pending.append((item, task.remote(fn, cwd, item, shared_ref)))
            if len(pending) >= window:
                yield first()
        while pending:
            yield first()
    except KeyboardInterrupt:
        refs = [ref for _, ref in pending]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
        done = set(ready)
        for _, ref in pending:
            if ref not in done:
                ray.cancel(ref)  # a KeyboardInterrupt in the task: its temporary files are removed
        if len(done) < len(refs):
            ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
        for item, ref in pending:
            if ref in done:
                yield one(item, ref)
        raise
