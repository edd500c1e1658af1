"""glibc's heap, set for a process that streams objects: memory a buffer frees is kept for
the next one instead of going back to the kernel (and being faulted in, page by page,
again).

Why: the receiver reads 1 MB at a time and inflates every object into a fresh buffer, on two
threads. glibc serves a block of 128 kB or more with its own ``mmap`` until it has freed
one, and hands the top of a heap back to the kernel once more than twice the largest
freed block sits free there; a thread's heap is trimmed by the same rule. With sizes from
64 kB to several MB, freed and allocated again thousands of times, a first push of 53 MB
took 29,000 page faults and 0.74 CPU-s in the receiver; with blocks up to 32 MB kept in
the heap and no trimming below 64 MB free, 10,800 faults and 0.62 CPU-s. The peak memory
is that of the largest moment, as before (docs/performance.md).
"""

from __future__ import annotations

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the ceiling of glibc's own dynamic threshold on 64-bit systems
TRIM_THRESHOLD = 64 << 20

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (once per process); False where there is no glibc ``mallopt``
    to take them (musl has one that ignores them): memory is then managed as before."""
    global _done
    if _done:
        return True
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
