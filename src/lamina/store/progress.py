"""Progress callbacks: one type per kind of progress a long operation reports."""

from __future__ import annotations

from collections.abc import Callable

#: A step of a long store operation (check, gc, rebuild): what it is doing, how much of
#: it is done, of how much (0 while the total is unknown).
ProgressFn = Callable[[str, int, int], None]

#: Work a backup or a restore finished since its last call: files, bytes.
AdvanceFn = Callable[[int, int], None]
