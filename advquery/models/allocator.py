"""Keep freed memory in the process between network passes (glibc's allocator, Linux).

Every pass through a trunk allocates and frees activations and gradients of tens of megabytes, again at every step
of an attack. glibc serves blocks that large with ``mmap`` and unmaps them when they are freed, so each pass faults
in fresh zeroed pages for all its large tensors, a sizeable share of a pass on CPU. With its ``mmap`` service off
and the heap's free top kept (up to :data:`KEEP_AT_MOST`), freed blocks are reused by the next pass; the process
keeps the memory of its largest pass. Nothing changes on other systems or C libraries.
"""
import ctypes
import ctypes.util
import platform
from functools import lru_cache

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
KEEP_AT_MOST = 2 ** 31 - 1  # bytes of free memory the heap may keep at its top (mallopt takes a C int)


@lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Set glibc's allocator to keep and reuse freed memory, once per process; whether it is set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_AT_MOST))
