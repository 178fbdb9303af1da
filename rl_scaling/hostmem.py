"""Keep freed host memory for reuse instead of handing it back to the kernel (glibc only).

Why: glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and returns it with ``munmap`` on free. A PPO update on 64x64 images allocates
activations of hundreds of MiB per minibatch, so every minibatch page-faults its whole
working set again and the kernel zeroes it: on the 2-core development CPU the IMPALA
width-1 update spent a third of its time in the kernel (1.3M minor faults per minibatch of
2,048). With mmap off and trimming off, freed blocks stay in the heap and are reused:
faults drop to ~4k per minibatch and the update runs ~1.4x faster, for ~15% more peak RSS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# From glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the heap for reuse; return whether it took effect.

    A no-op returning False where the C library is not glibc (macOS, musl, Windows).
    Process-wide and permanent for the process, which is what a training run wants.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, _INT_MAX) == 1
