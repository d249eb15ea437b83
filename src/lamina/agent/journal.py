"""The staged transaction's journal (``STAGING/<id>/journal.json``, version 2): its type.

``agent.staging`` writes it and validates it where it reads it (``parse_journal``:
anything unexpected is an ``IntegrityError`` saying what); this is the shape that
validation guarantees, so that the code reading it is checked by mypy.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

#: One operation: swap a path with its staged copy, remove it, or set a folder's metadata.
Op = list[str]


class Journal(TypedDict):
    v: int
    id: str
    #: staged, applying, committed or failed.
    state: str
    #: ``[op, path]`` pairs, ``op`` one of ``swap``, ``remove``, ``meta``.
    ops: list[Op]
    #: Operations applied so far (0 ≤ done ≤ len(ops)).
    done: int
    #: What was staged (kind, snapshot or layer versions...), shown by ``agent boot``.
    summary: dict[str, Any]
    #: path → {"old": [mode, uid, gid, xattrs], "new": [...]} for ``meta`` ops.
    meta: NotRequired[dict[str, dict[str, Any]]]
    #: Set when an apply failed: why, and whether every op was undone.
    error: NotRequired[str]
    rolled_back: NotRequired[bool]
