"""Rows that name trees the server just wrote go in as a snapshot's commit does.

A layer version, a layer delivery's task, a migration's task: each writes its trees
(reusing blobs the store holds, deduplicated) and then the row that names them, which
from then on keeps them alive (a gc root). A gc that condemned between the two (the
trees, or blobs they reuse, unreachable then) and swept after the row went in deleted
what the row names. So the row goes in with the store's gc epoch locked, and when the
epoch moved since the trees' writing began, everything they name is rescued first
(un-condemned; one already swept fails the operation cleanly, nothing recorded), as
``Writer.commit_snapshot`` does for a snapshot. A gc that condemns later asks with the
epoch locked whether every root is marked, and sees the row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import Connection, Engine

from lamina.db.catalog import lock_epoch
from lamina.db.engine import write_tx
from lamina.errors import LaminaError, MissingDataError
from lamina.store.catalog import rescue_all
from lamina.store.repository import Store
from lamina.tree.backup import walk_blobs

#: Tries while collections keep condemning (as a commit's).
ATTEMPTS = 5
T = TypeVar("T")


def insert_held(
    engine: Engine,
    store: Store,
    epoch: int,
    roots: Sequence[bytes],
    body: Callable[[Connection], T],
    what: str = "it",
) -> T:
    """Run ``body`` (the transaction whose rows name ``roots``) with the store's gc
    epoch locked. ``epoch`` is the one the trees' writing began under (their writer's,
    or read before it): when it moved, every blob under ``roots`` is rescued and the
    transaction tried again under the new epoch. ``what`` names the thing in the error."""
    for _ in range(ATTEMPTS):
        with write_tx(engine) as c:
            now = lock_epoch(c)
            if now == epoch:
                return body(c)
        epoch = now
        gone = rescue_all(store.catalog, walk_blobs(store, *roots))
        if gone:
            raise MissingDataError(
                f"a garbage collection removed {len(gone)} blobs {what} refers to while it was "
                "made; try again (nothing was recorded)"
            )
    raise LaminaError(f"could not record {what}: the store's gc epoch keeps moving")
