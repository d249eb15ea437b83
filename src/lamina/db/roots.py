"""Garbage-collection roots kept in the server's tables: layer versions, pending deliveries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from sqlalchemy import Engine, select

from lamina.db.catalog import SqlCatalog
from lamina.db.engine import read_tx
from lamina.db.models import flex_image_versions, layer_versions, layers, tasks
from lamina.db.ownership import DELIVERY_PARAMS, Ownership, is_id
from lamina.errors import LaminaError
from lamina.protocol.tasks import OPEN_STATES
from lamina.store.repository import Store
from lamina.store.roots import Root, RootSource, snapshot_roots


def layer_roots(engine: Engine) -> RootSource:
    """Every layer version's tree, and the trees of deliveries not yet done: what a
    queued, running or waiting task will still read. A migration's tree is made for it
    (the snapshot's with the new machine's own files, its network and driver packs laid
    over it): no snapshot names it, and a gc before the new machine came for it failed
    the migration (session 24)."""

    def source() -> Iterator[Root]:
        with read_tx(engine) as c:
            rows = c.execute(
                select(layers.c.name, layer_versions.c.version, layer_versions.c.root).join(
                    layers, layers.c.id == layer_versions.c.layer_id
                )
            ).all()
            pending = c.execute(
                select(tasks.c.id, tasks.c.kind, tasks.c.params).where(
                    tasks.c.state.in_(OPEN_STATES)
                )
            ).all()
        for r in rows:
            yield Root(f"layer {r.name}:{r.version}", (), trees=(bytes(r.root),))
        for t in pending:
            params = t.params if isinstance(t.params, dict) else {}
            trees = tuple(
                bytes.fromhex(tree) for name in DELIVERY_PARAMS if is_id(tree := params.get(name))
            )
            if trees:
                yield Root(f"{t.kind} delivery {t.id}", (), trees=trees)

    return source


#: A flex image's snapshot no version names is forgotten once this old (a registration
#: stores its snapshot, then its version row, within a request).
STRAY_FLEX_AGE = dt.timedelta(days=1)
#: How the gc's notes name them.
STRAYS = "flex image snapshots no image version names"


def forget_stray_flex(store: Store, dry_run: bool = False) -> int:
    """Forget the flex images' snapshots (source ``flex:ID`` and ``meta["flex_image"]``
    ``ID``, as ``flex_images.store_raw`` writes them) that no image version names:
    what a registration stopped between its snapshot and its version row, or a deletion
    between its rows and its ``forget``, left behind. Roots nobody lists, they kept their
    disk's data for ever. Those younger than ``STRAY_FLEX_AGE`` stay (a registration may
    be writing its row). Returns how many (would) go."""
    engine = _sql(store).engine
    with read_tx(engine) as c:
        named = {r[0] for r in c.execute(select(flex_image_versions.c.snapshot_id))}
    before = dt.datetime.now(dt.UTC) - STRAY_FLEX_AGE
    stray = [
        s.id
        for s in store.catalog.snapshots()
        if s.source.startswith("flex:")
        # a flex image's own (``flex_images.store_raw``), not a backup someone named so
        and isinstance(s.meta, dict)
        and s.meta.get("flex_image") == s.source.removeprefix("flex:")
        and s.id not in named
        and s.time < before
    ]
    if stray and not dry_run:
        store.forget(stray)
    return len(stray)


def all_roots(store: Store) -> list[RootSource]:
    """Everything that keeps data alive in a store indexed by a Lamina database."""
    return [snapshot_roots(_sql(store)), layer_roots(_sql(store).engine)]


def owners(store: Store) -> Ownership:
    """The CVDs' ownership rows of a store indexed by a Lamina database, for its gc to
    take back what their own roots no longer reach (``gc.collect``'s ``owners``)."""
    return Ownership(_sql(store).engine)


def _sql(store: Store) -> SqlCatalog:
    if not isinstance(store.catalog, SqlCatalog):
        raise LaminaError("the store's catalog is not a Lamina database")
    return store.catalog
