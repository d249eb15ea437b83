"""Fewer passes of Python's cyclic garbage collector while a long run of small allocations
(a restore) goes on."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Allocations between two passes over the youngest objects while the block runs (the
#: interpreter's default is 700): a restore allocates a few objects per entry and frees
#: nearly all of them by reference counting, so the passes found next to nothing.
YOUNG_THRESHOLD = 10_000


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """While the block runs, the objects that exist now are left out of the collector's
    passes (``gc.freeze``) and the youngest generation is collected every
    ``YOUNG_THRESHOLD`` allocations; afterwards both are as they were.

    Why: in a restore of 100,000 small files the collector ran about 600 times, and each
    of its full passes walked every object the process held, most of them the modules
    imported before the restore began: 0.46 s, now under 0.1 s ("Restores (session 11)"
    in docs/design.md). Objects made during the block are still collected. Nothing is
    changed when the collector is off or something else froze objects already (a
    caller's own freeze, or another restore running: the first one owns the settings)."""
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], YOUNG_THRESHOLD), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
