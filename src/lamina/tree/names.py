"""A name inside a tree: one path component that cannot leave its folder; a path given
by a user, split into such names.

Standard library only: ``agent boot`` checks its journal's paths with it at start-up.
"""

from __future__ import annotations

import os

from lamina.errors import UnsafePathError


def check_name(name: bytes) -> bytes:
    """Refuse a name that could escape its directory."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafePathError(f"unsafe name in tree: {name!r}")
    return name


def split_path(path: str | bytes) -> list[bytes]:
    """A user-given path inside a tree, as validated components."""
    raw = os.fsencode(path)
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    for p in parts:
        check_name(p)
    return parts
