"""How the process gets its memory on the CPU: huge pages, and freed memory kept for the next
training step (docs/design.md §12).

A training step allocates tensors of tens to hundreds of MB afresh each time: the gradient of
the token table (245 MB at AmazonCat-13K's vocabulary), the [B, N, V] logits, their softmax and
gradients (73 MB each at 100K labels), the output layer's gradient (376 MB at 100K). glibc's
malloc serves every allocation above 32 MB with a fresh mapping from the kernel and unmaps it
when it is freed, so each step's big tensors arrive as zeroed 4 KiB pages, one page fault each:
a fresh 245 MB tensor of zeros took 105-131 ms, the same tensor in memory the process already
held 10 ms. Two settings remove most of that cost without changing a value:

- `huge_pages` (at import, before torch's first allocation): torch advises the kernel to back
  tensors of 2 MiB and up with transparent huge pages, one fault per 512 pages (24 ms);
- `keep_freed_memory` (when a trainer is built on the CPU): malloc serves large allocations
  from its heap and keeps what is freed there, so from the second or third step on the step's
  tensors reuse memory the process already has: a step at 100K labels went from ~4.2 to ~3.0 s.
  The process's resident memory then stays at about its peak between steps, and the heap's
  fragmentation adds to it: at 100K labels 3.9 GiB between steps instead of 3.2, steady from
  the fourth step on (BENCHMARKS.md gives the peaks).

Both defer to the user: THP_MEM_ALLOC_ENABLE, MALLOC_MMAP_MAX_ or MALLOC_TRIM_THRESHOLD_ set in
the environment win, and neither applies outside Linux (or without glibc).
"""

from __future__ import annotations

import ctypes
import os
import sys

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
_kept = False


def huge_pages() -> None:
    """Let torch back its large CPU tensors with transparent huge pages, unless the user chose.
    Has an effect only before torch allocates its first tensor (it reads the variable once)."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")


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
