"""Keep freed memory in the process, so that large CPU tensors do not page-fault anew.

glibc's ``malloc`` serves every block above 32 MB (a 64-channel 360x480 map is 47 MB) with
a fresh ``mmap`` and gives it back on ``free``, and it trims the heap's free top back to
the OS. Each reuse then touches new pages: the kernel zeroes every 4 KB page on first
touch, which here costs about a sixth of a full SegNet forward pass at 360x480 (184 000
page faults, 0.4-0.5 s of system time out of 2.7 s). :func:`keep_freed_memory` turns both
off (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, -1)``): freed blocks stay in
the heap and the next pass reuses them. It is what PyTorch's performance guide gets by
preloading jemalloc or tcmalloc, without a dependency. ``benchmarks/bench_allocator.py``
measures it.

The process keeps its peak memory until it exits, which is what a command that runs
pass after pass of the same sizes wants. The command line calls it once at start-up;
a library user may call it, or set ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1``
(the same, through glibc's environment). ``SEGSCOPE_ALLOCATOR=system`` leaves glibc's
defaults alone. Elsewhere than on glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

#: ``SEGSCOPE_ALLOCATOR`` value that leaves the C library's defaults alone.
SYSTEM = "system"


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no ``mmap`` per large block, no trimming).

    Returns
    -------
    bool
        Whether the setting was applied: False off glibc, when ``SEGSCOPE_ALLOCATOR`` is
        ``system``, or if ``mallopt`` refused it.
    """
    if os.environ.get("SEGSCOPE_ALLOCATOR", "").strip().lower() == SYSTEM:
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; -1 as the trim threshold means "never trim"
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
