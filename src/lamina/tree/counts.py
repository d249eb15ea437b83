"""What a walk over a tree met: the counters a backup's scan and a restore share."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TreeCounts:
    files: int = 0
    dirs: int = 0
    #: symlinks, device nodes, FIFOs and sockets
    others: int = 0
    bytes: int = 0
    #: ``PATH: reason`` for each entry that could not be handled
    errors: list[str] = field(default_factory=list)
