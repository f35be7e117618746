"""Keep freed memory in the process between network passes (glibc's allocator, Linux).

Every pass through a trunk allocates and frees activations and gradients of up to tens of megabytes, again at every
step of an attack. glibc maps large blocks with ``mmap`` and returns the top of its heap to the system once a little
of it is free (both thresholds start low and adapt), so a pass kept faulting in fresh zeroed pages, a sizeable share
of a pass on CPU. Here blocks up to :data:`MAPPED_FROM` come from the heap, and up to :data:`KEEP_AT_MOST` of free
memory stays at its top, so the next pass reuses them. Larger blocks (a 12-megapixel photo's tensors at full
resolution) are still mapped and returned when freed: taking those from the heap too left holes that raised a
protection's peak memory by half. Nothing changes on other systems or C libraries.
"""
import ctypes
import ctypes.util
import platform
from functools import lru_cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MAPPED_FROM = 32 * 2 ** 20  # bytes: the largest mmap threshold glibc accepts on 64-bit systems
KEEP_AT_MOST = 512 * 2 ** 20  # bytes of free memory the heap keeps at its top


@lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Set glibc's allocator to keep and reuse freed memory, once per process; whether it is set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MAPPED_FROM)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_AT_MOST))
