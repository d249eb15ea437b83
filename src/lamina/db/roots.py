"""Garbage-collection roots kept in the server's tables: layer versions, pending deliveries."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Engine, select

from lamina.db.catalog import SqlCatalog
from lamina.db.engine import read_tx
from lamina.db.models import layer_versions, layers, tasks
from lamina.db.ownership import Ownership
from lamina.errors import LaminaError
from lamina.protocol.tasks import OPEN_STATES, TaskKind
from lamina.store.repository import Store
from lamina.store.roots import Root, RootSource, snapshot_roots


def layer_roots(engine: Engine) -> RootSource:
    """Every layer version's tree, and the delta trees of layer deliveries not yet done."""

    def source() -> Iterator[Root]:
        with read_tx(engine) as c:
            rows = c.execute(
                select(layers.c.name, layer_versions.c.version, layer_versions.c.root).join(
                    layers, layers.c.id == layer_versions.c.layer_id
                )
            ).all()
            pending = c.execute(
                select(tasks.c.id, tasks.c.params).where(
                    tasks.c.kind == TaskKind.LAYER_APPLY,
                    tasks.c.state.in_(OPEN_STATES),
                )
            ).all()
        for r in rows:
            yield Root(f"layer {r.name}:{r.version}", (), trees=(bytes(r.root),))
        for t in pending:
            delta = (t.params or {}).get("delta")
            if isinstance(delta, str) and len(delta) == 64:
                yield Root(f"layer delivery {t.id}", (), trees=(bytes.fromhex(delta),))

    return source


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
