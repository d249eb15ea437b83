"""What layers need of trees beyond ``lamina.tree.paths``: what a delivery expects at a
path, and "same entry" as a layer sees it (content and the metadata a layer owns)."""

from __future__ import annotations

import hashlib
from typing import Any

from lamina.tree.model import Entry


def content_digest(content: list[bytes | int] | None) -> str:
    """One short id for a file's content list (chunk ids and hole sizes)."""
    h = hashlib.sha256()
    for c in content or []:
        h.update(b"H" + c.to_bytes(8, "little") if isinstance(c, int) else b"C" + c)
    return h.hexdigest()


def expected_state(e: Entry | None) -> list[Any] | None:
    """What a delivery expects at a path on the endpoint: None when absent,
    ``["file", size, content digest]``, ``["symlink", target hex]``, or ``[type]``."""
    if e is None:
        return None
    if e.type == "file":
        return ["file", e.size, content_digest(e.content)]
    if e.type == "symlink":
        return ["symlink", (e.target or b"").hex()]
    return [e.type]


def same_entry(a: Entry | None, b: Entry | None) -> bool:
    """Same content and the metadata a layer owns (mode, owner, xattrs)."""
    if a is None or b is None:
        return a is b
    if not a.same_content(b):
        return False
    return (a.mode, a.uid, a.gid, sorted(a.xattrs)) == (b.mode, b.uid, b.gid, sorted(b.xattrs))
