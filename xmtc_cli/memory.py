"""How a training process gets its memory on the CPU: freed memory kept for the next step
(docs/design.md §12).

A training step allocates tensors of tens to hundreds of MB afresh each time: the [B, N, V]
logits, their softmax and gradients (73 MB each at 100K labels), the output layer's gradient
(376 MB at 100K), the label table's. glibc's malloc serves every allocation above 32 MB with a
fresh mapping from the kernel and unmaps it when it is freed, so each step's big tensors arrive
as zeroed 4 KiB pages, one page fault each: a fresh 245 MB tensor of zeros took 105-131 ms, the
same tensor in memory the process already held 10 ms.

`keep_freed_memory` (called when a trainer is built on the CPU) makes malloc serve large
allocations from its heap and keep what is freed there, so from the second or third step on
the step's tensors reuse memory the process already has: a step at 100K labels went from ~4.5
to ~3.4 s (one busy run of 8 steps each), the same values. The process's resident memory then
stays at about its peak between steps, and the heap's fragmentation adds to it: at 100K labels
3.9 GiB between steps instead of 3.2, steady from the third step on; the peak itself was lower
than before these changes (BENCHMARKS.md).
MALLOC_MMAP_MAX_ or MALLOC_TRIM_THRESHOLD_ in the environment (glibc's own settings) leave
malloc as the user set it; outside Linux or glibc nothing changes.

Not set: torch's THP_MEM_ALLOC_ENABLE (transparent huge pages for large tensors). It cut the
fresh 245 MB tensor to 24 ms, but beside the kept memory a step was as fast at 13K and 100K
labels and 6-12% slower at TIBKAT-core's shape.
"""

from __future__ import annotations

import ctypes
import os
import sys

MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every allocation from its heap (no fresh mappings) and never
    hand freed memory back to the kernel, for the rest of the process. True if it now does."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux") or any(name in os.environ for name in MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Trim threshold first: once mappings stop, nothing is unmapped above it either.
    _kept = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
    return _kept
