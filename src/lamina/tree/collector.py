"""Fewer passes of Python's cyclic garbage collector while a long run of small allocations
(a restore) goes on."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

#: Allocations between two passes over the youngest objects while the block runs (the
#: interpreter's default is 700): a restore allocates a few objects per entry and frees
#: nearly all of them by reference counting, so the passes found next to nothing.
YOUNG_THRESHOLD = 10_000


_lock = threading.Lock()
_inside = 0  # blocks running now (restores in threads of one process)
_saved: tuple[int, ...] | None = None  # the thresholds to put back; None: nothing changed


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """While the block runs, the objects that exist now are left out of the collector's
    passes (``gc.freeze``) and the youngest generation is collected every
    ``YOUNG_THRESHOLD`` allocations; afterwards both are as they were.

    Why: in a restore of 100,000 small files the collector ran about 600 times, and each
    of its full passes walked every object the process held, most of them the modules
    imported before the restore began: 0.46 s, now under 0.1 s ("Restores (session 11)"
    in docs/design.md). Objects made during the block are still collected. Blocks in
    several threads at once share one setting: the first in sets it, the last out puts
    it back. Nothing is changed when the collector is off or something else froze
    objects already (a caller's own freeze)."""
    global _inside, _saved
    with _lock:
        if _inside == 0 and gc.isenabled() and not gc.get_freeze_count():
            _saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_saved[0], YOUNG_THRESHOLD), *_saved[1:])
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                gc.unfreeze()
                _saved = None
