"""A name inside a tree: one path component that cannot leave its folder.

Standard library only: ``agent boot`` checks its journal's paths with it at start-up.
"""

from __future__ import annotations

from lamina.errors import UnsafePathError


def check_name(name: bytes) -> bytes:
    """Refuse a name that could escape its directory."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafePathError(f"unsafe name in tree: {name!r}")
    return name
