"""The agent's large transient buffers go back to the system when freed.

glibc's ``malloc`` raises its mmap threshold each time a block it had mapped is freed
(up to 32 MiB). After the first few, a sync's blocks of a read step, a chunk or a
bundle (1 to 8 MiB, many threads) come from the threads' heaps instead, which keep
their pages once the blocks are freed: the peak RSS of a first sync grew by tens of MiB
that way. A fixed threshold keeps every block above it mapped, so it is unmapped as
soon as it is freed. The agent fixes it once, when it starts (``runner.Agent``), for
every sync and restore of its life. Elsewhere than glibc, nothing is done.
"""

from __future__ import annotations

import ctypes

#: ``mallopt``'s parameter number for the threshold (glibc's ``M_MMAP_THRESHOLD``).
M_MMAP_THRESHOLD = -3
#: Blocks from this size up are mapped on their own (a chunk is at least 256 KiB).
MMAP_THRESHOLD = 1024 * 1024


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
