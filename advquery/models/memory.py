"""Freed memory kept for reuse while network passes run, where the C library is glibc.

A pass through a trunk allocates its activations afresh, tens of megabytes each at 1024 px. glibc's ``malloc`` takes
a block that large straight from the kernel (``mmap``) and gives it back when it is freed, so every pass meets its
largest activations as new pages: each page a fault, zeroed by the kernel before the pass writes it. On CPU that
is a sizeable share of the elementwise layers' time (a bfloat16 ReLU6 of a 96 x 384 x 512 map took several times as
long as on memory it had used before; ``bench/results/allocator.md``). :func:`reused_memory` switches glibc to
keeping freed blocks in its heap for the block's duration (no ``mmap`` for large blocks, no trimming of the heap's
top), then returns the free memory to the kernel and sets the limits glibc's own adjustment reaches in a process that
has freed a large block, as every pass at the working size does (blocks above 32 MiB mapped, the heap's top trimmed
beyond 64 MiB): setting a limit ends that adjustment for the process, and its starting limits (128 KiB) would map
every activation afresh for the rest of the process. The passes' peak memory stays the same; blocks many times larger
than their activations, freed and allocated again (a 12-megapixel photo's), leave holes in the heap that raise it, so
an attack reuses memory only for photos up to twice its working size
(:meth:`~advquery.attacks.base.PerturbationAttack.forward`).

Importing advquery also asks PyTorch's CPU allocator for transparent huge pages (``THP_MEM_ALLOC_ENABLE=1`` unless the
environment sets it: blocks of 2 MiB and more aligned to 2 MiB and advised with ``madvise(MADV_HUGEPAGE)``), which
the kernel grants where transparent huge pages are ``always`` or ``madvise``: a new block then costs one fault per
2 MiB instead of one per 4 KiB page. That is what a photo too large to reuse memory needs, whose full-resolution
tensors are mapped afresh in every step (a 12-megapixel photo's protection 1.25-1.29 times quicker at about the same
peak memory in two runs, ``bench/results/allocator.md``, ``allocator_large_repeat.md``); at the working size, reused
memory is as quick with or without them.
PyTorch reads the variable once, at its first allocation, so a process that made a tensor before importing advquery
keeps what it had.

The settings are process-wide, for every thread's allocations: nested blocks and blocks in several threads share one
count, and the last to end sets the limits above. Elsewhere (musl, macOS, Windows) it changes nothing.
"""
import ctypes
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

# mallopt's parameters (malloc/malloc.h); glibc's default count of mapped blocks, and the thresholds its dynamic
# adjustment moves to when a mapped block of up to 32 MiB (its largest mmap threshold) is freed: that block's size,
# and twice that for the trim threshold (malloc/malloc.c)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
DEFAULT_MMAP_MAX = 65536
ADJUSTED_MMAP_THRESHOLD = 32 * 2**20
ADJUSTED_TRIM_THRESHOLD = 2 * ADJUSTED_MMAP_THRESHOLD
KEEP_ALL = 2**31 - 1  # the largest trim threshold mallopt takes (an int): the heap's top is never given back

_lock = threading.Lock()
_holders = 0


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """This process's C library where it is glibc (whose ``mallopt`` this module sets), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


@contextmanager
def reused_memory() -> Iterator[None]:
    """Freed memory kept by glibc for the block's allocations to reuse (see the module docstring)."""
    global _holders
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        if _holders == 0:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_MMAP_THRESHOLD, ADJUSTED_MMAP_THRESHOLD)
                libc.mallopt(M_TRIM_THRESHOLD, ADJUSTED_TRIM_THRESHOLD)
                libc.malloc_trim(0)
