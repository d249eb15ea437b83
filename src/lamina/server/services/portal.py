"""The file portal: the files under a folder of a snapshot, and the bytes of a file, streamed.

Reading file contents needs the permission the API asks for it: ``data.read``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from sqlalchemy import Engine

from lamina.errors import NotFoundError
from lamina.server.security import Principal
from lamina.server.services import cvd_ops, fleet
from lamina.store.repository import Store
from lamina.tree.model import Entry, decode_tree
from lamina.tree.names import split_path

#: The permission that lets a user read what is inside files.
CONTENT_PERMISSION = cvd_ops.DATA_READ


def folder(
    engine: Engine, store: Store, actor: Principal, ref: str, snapshot: str, path: str
) -> Iterator[tuple[str, Entry]]:
    """Every entry under the folder ``path`` of a snapshot, depth first, parents first.

    Paths are relative to the folder's parent, so an archive of ``home/alice``
    unpacks into ``alice/...``. Checked before the first entry is produced.
    """
    cvd = fleet.cvd_for_access(engine, actor, ref, CONTENT_PERMISSION)
    snap = cvd_ops.snapshot_of(store, cvd.id, snapshot)
    parts = split_path(path) if path.strip("/") else []
    entries = decode_tree(store.get(snap.root))
    top: Entry | None = None
    for part in parts:
        top = next((e for e in entries if e.name == part), None)
        if top is None or top.subtree is None:
            raise NotFoundError(f"{path!r} is not a folder of the snapshot")
        entries = decode_tree(store.get(top.subtree))
    return _walk(store, os.fsdecode(top.name) if top else "snapshot", top, entries)


def _walk(
    store: Store, prefix: str, top: Entry | None, entries: list[Entry]
) -> Iterator[tuple[str, Entry]]:
    if top is not None:
        yield prefix, top
    for e in entries:
        rel = f"{prefix}/{os.fsdecode(e.name)}"
        if e.subtree is not None:
            yield from _walk(store, rel, e, decode_tree(store.get(e.subtree)))
        else:
            yield rel, e


def content(store: Store, entry: Entry) -> Iterator[bytes]:
    """The bytes of a file entry, chunk by chunk (holes as zeros)."""
    ids = [c for c in entry.content or [] if isinstance(c, bytes)]
    data = store.get_many(ids)
    for c in entry.content or []:
        yield b"\0" * c if isinstance(c, int) else next(data)
