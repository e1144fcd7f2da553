"""CPU memory allocator tuning for training loops.

Training frees and re-allocates the same large activation buffers every step. glibc's malloc hands
blocks above its mmap threshold back to the kernel when they are freed, and trims the heap top when
enough of it is free, so the next step pays page faults to get the memory back: up to half the step time
of the CNN on CPU when backward frees activations early (`lean()`). `keep_freed_memory()` raises both
thresholds for this process so freed blocks stay in the heap for reuse (the effect of running under a
caching allocator such as jemalloc or tcmalloc). `handgrad train` and `handgrad bench` call it; library
users may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Keep freed blocks up to 32 MiB in the heap, and up to `trim_threshold` bytes of free heap top.

    Returns True when applied (Linux with glibc), False elsewhere (nothing changes there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
