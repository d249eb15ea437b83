"""Whether a process is alive, by its id: a leaf, for the engine's restore workers (their
parent gone) and the server's store tasks (the process that claimed one gone)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while a process of this id exists, another user's included (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and another user's
        return True
    return True
