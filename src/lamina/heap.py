"""Freed memory goes back to the system: glibc's ``malloc`` tuned for the agent and the
server, once, when each starts. Elsewhere than glibc, nothing is done.

glibc's ``malloc`` raises its mmap threshold each time a block it had mapped is freed
(up to 32 MiB). After the first few, a sync's blocks of a read step, a chunk or a
bundle (1 to 8 MiB, many threads) come from the threads' heaps instead, which keep
their pages once the blocks are freed: the agent's peak RSS of a first sync grew by
tens of MiB that way. A fixed threshold keeps every block above it mapped, so it is
unmapped as soon as it is freed (``map_large_blocks``; the agent, ``runner.Agent``, and
the server).

The server has more threads than that (the event loop's worker pool, the heavy
requests', the pack uploads'), and glibc gives threads up to 8 heaps ("arenas") a
core, each keeping what its threads freed: under 200 devices syncing at once, 16 arenas
held 685 MB free of the server's 1 GB resident (``malloc_info``, docs/design.md,
"The server's memory under load (session 17)"). The server caps them
(``limit_arenas``) before its threads start, and hands the free pages inside its heaps
back every ``TRIM_SECONDS`` (``trim_periodically``: ``malloc_trim``, which returns what
lies between blocks still in use, where freeing never shrinks a heap).

A fixed mmap threshold also fixes glibc's trim threshold at its default, 128 KiB
(glibc raises both together, or neither): every free that leaves more than that at a
heap's top gives it back, and the next blocks fault it in again. In the server, which
trims every ``TRIM_SECONDS`` anyway, that churn cost a replayed 1 GiB first sync
~190,000 more page faults (420,000 against glibc's default 226,000; 0.6 s more system
CPU): the server lets ``SERVER_TRIM_THRESHOLD`` lie free at a heap's top
(``keep_free_tops``; 261,000 faults), at most that much more per arena between trims.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

#: ``mallopt``'s parameter numbers (glibc's ``M_TRIM_THRESHOLD``, ``M_MMAP_THRESHOLD``,
#: ``M_ARENA_MAX``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Blocks from this size up are mapped on their own (a chunk is at least 256 KiB).
MMAP_THRESHOLD = 1024 * 1024
#: The server's arenas: its work is under one interpreter lock, so threads rarely
#: contend for malloc's own.
SERVER_ARENAS = 2
#: Seconds between two trims of the server's heaps.
TRIM_SECONDS = 15.0
#: Free bytes a server's heap keeps at its top between trims (glibc's default: 128 KiB).
SERVER_TRIM_THRESHOLD = 16 * 1024 * 1024


@functools.cache
def _glibc(name: str, *argtypes: type[ctypes.c_int | ctypes.c_size_t]) -> Any:
    """glibc's function ``name`` (an ``int`` answer), looked up once; None elsewhere
    (musl has neither ``mallopt`` nor ``malloc_trim``)."""
    try:
        func = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    return func


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``: whether it took it; False where there is none."""
    mallopt = _glibc("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and bool(mallopt(param, value))


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no ``mallopt``."""
    return _mallopt(M_MMAP_THRESHOLD, threshold)


def keep_free_tops(threshold: int = SERVER_TRIM_THRESHOLD) -> bool:
    """Let up to ``threshold`` free bytes lie at a heap's top before a free gives them
    back (glibc's trim threshold); False where there is no ``mallopt``."""
    return _mallopt(M_TRIM_THRESHOLD, threshold)


def limit_arenas(arenas: int = SERVER_ARENAS) -> bool:
    """Let glibc make at most ``arenas`` heaps for this process's threads (before they
    start: an arena made already stays); False where there is no ``mallopt``."""
    return _mallopt(M_ARENA_MAX, arenas)


def trim() -> bool:
    """Give the free pages of every heap back to the system (``malloc_trim(0)``); False
    where there is none."""
    malloc_trim = _glibc("malloc_trim", ctypes.c_size_t)
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


def trim_periodically(seconds: float = TRIM_SECONDS) -> threading.Event | None:
    """Trim every ``seconds`` from a daemon thread until the returned event is set; None
    (no thread) where there is no ``malloc_trim``."""
    if not trim():
        return None
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(seconds):
            trim()

    threading.Thread(target=run, name="lamina-heap-trim", daemon=True).start()
    return stop
