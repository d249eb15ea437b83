"""The store catalog (``lamina.store.catalog.Catalog``) on SQLite or PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from lamina.db.engine import driver_rows, is_sqlite, read_tx, write_tx
from lamina.db.models import blobs, packs, snapshots, store_state
from lamina.db.sqlite_read import (
    EPOCH_KEY,
    SQLITE_INSERT,
    SQLITE_KNOWN,
    SQLITE_MISSING,
    locate_query,
    snapshot_record,
)
from lamina.db.sqlite_read import batches as _batches
from lamina.db.sqlite_read import marks as _marks
from lamina.errors import NotFoundError, StoreBusyError, StoreKeyError
from lamina.processes import holder_alive, holder_gone
from lamina.store.blob import KINDS, BlobKind
from lamina.store.catalog import (
    PACK_DROPPING,
    PACK_OK,
    PACK_WRITING,
    BlobLocation,
    BlobRow,
    PackInfo,
    RootsMoved,
    SnapshotRecord,
    one_entry_per_id,
    pack_taken,
    resolve_snapshot,
)
from lamina.store.pack import PackEntry

_EPOCH = EPOCH_KEY
_STORE_ID = "store_id"
#: The store's gc epoch (its ``store_state`` row), as a statement to run or nest.
EPOCH_VALUE = select(store_state.c.value).where(store_state.c.key == _EPOCH)


def lock_epoch(c: Connection) -> int:
    """The store's gc epoch, locked until ``c``'s write transaction ends: a condemn
    (which bumps it) waits for the transaction, or the transaction for the condemn."""
    q = EPOCH_VALUE
    if c.dialect.name != "sqlite":  # SQLite's BEGIN IMMEDIATE already serialises writers
        q = q.with_for_update()
    value = c.execute(q).scalar()
    if value is None:
        raise NotFoundError("the store's database is not initialised (run `lamina store init`)")
    return int(value)


def _entry_id(e: PackEntry) -> bytes:
    return e.id


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


class SqlCatalog:
    """Catalog over a SQLAlchemy engine. The engine must be migrated to head."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sqlite = is_sqlite(engine)

    # --- set-up --------------------------------------------------------------
    def bind_store(self, store_id: str) -> None:
        """Record which store this database indexes; refuse a database of another store."""
        with write_tx(self.engine) as c:
            found = c.execute(
                select(store_state.c.value).where(store_state.c.key == _STORE_ID)
            ).scalar()
            if found is None:
                c.execute(insert(store_state).values(key=_STORE_ID, value=store_id))
                c.execute(insert(store_state).values(key=_EPOCH, value="0"))
            elif found != store_id:
                raise StoreKeyError(
                    f"the database indexes store {found}, but the key file is for store {store_id}"
                )

    # --- blobs ---------------------------------------------------------------
    def missing(self, ids: Collection[bytes], kind: BlobKind | None = None) -> set[bytes]:
        wanted = set(ids)
        if not wanted:
            return set()
        found: set[bytes] = set()
        rows: Iterable[Sequence[Any]]
        with read_tx(self.engine) as c:
            for batch in _batches(wanted):
                if self._sqlite:
                    sql = SQLITE_MISSING % _marks(len(batch))
                    args: tuple[object, ...] = tuple(batch)
                    if kind is not None:
                        sql += " AND kind = ?"
                        args += (int(kind),)
                    rows = driver_rows(c, sql, args)
                else:
                    q = select(blobs.c.id).where(
                        blobs.c.id.in_(batch), blobs.c.condemned.is_(False)
                    )
                    if kind is not None:
                        q = q.where(blobs.c.kind == int(kind))
                    rows = c.execute(q)
                found.update(bytes(r[0]) for r in rows)
        return wanted - found

    def known_ids(self, kind: BlobKind, limit: int) -> set[bytes] | None:
        live = (blobs.c.kind == int(kind), blobs.c.condemned.is_(False))
        q = select(blobs.c.id).where(*live).limit(limit + 1)
        with read_tx(self.engine) as c:
            # Counting first keeps a refusal cheap (an index scan, no rows to Python).
            if c.execute(select(func.count()).select_from(blobs).where(*live)).scalar_one() > limit:
                return None
            if self._sqlite:  # the driver's rows, without the ORM's per-row cost
                rows = c.exec_driver_sql(SQLITE_KNOWN, (int(kind), limit + 1)).fetchall()
            else:
                rows = c.execute(q).fetchall()
        if len(rows) > limit:
            return None
        return {bytes(r[0]) for r in rows}

    def locate(
        self, ids: Collection[bytes], include_condemned: bool = False, kind: BlobKind | None = None
    ) -> dict[bytes, BlobLocation]:
        out: dict[bytes, BlobLocation] = {}
        with read_tx(self.engine) as c:
            for batch in _batches(set(ids)):
                if self._sqlite:
                    sql, args = locate_query(
                        batch, include_condemned, None if kind is None else int(kind)
                    )
                    for r in driver_rows(c, sql, args):
                        out[r[0]] = BlobLocation(r[1], r[2], r[3], r[4], KINDS[r[5]])
                    continue
                q = (
                    select(
                        blobs.c.id,
                        packs.c.name,
                        blobs.c.offset,
                        blobs.c.length,
                        blobs.c.raw_length,
                        blobs.c.kind,
                    )
                    .join(packs, packs.c.seq == blobs.c.pack_seq)
                    .where(blobs.c.id.in_(batch))
                )
                if not include_condemned:
                    q = q.where(blobs.c.condemned.is_(False))
                if kind is not None:
                    q = q.where(blobs.c.kind == int(kind))
                for r in c.execute(q):
                    out[bytes(r[0])] = BlobLocation(r[1], r[2], r[3], r[4], KINDS[r[5]])
        return out

    def _rows(self, c: Connection, where: Any = None) -> Iterator[BlobRow]:
        q = select(
            blobs.c.id,
            blobs.c.kind,
            packs.c.name,
            packs.c.seq,
            blobs.c.offset,
            blobs.c.length,
            blobs.c.raw_length,
            blobs.c.condemned,
        ).join(packs, packs.c.seq == blobs.c.pack_seq)
        if where is not None:
            q = q.where(where)
        q = q.order_by(packs.c.seq, blobs.c.offset)
        for r in c.execute(q):
            yield BlobRow(bytes(r[0]), BlobKind(r[1]), r[2], r[3], r[4], r[5], r[6], bool(r[7]))

    def iter_blobs(self) -> Iterator[BlobRow]:
        # Page by pack so a huge index never sits in memory at once.
        last = 0
        while True:
            with read_tx(self.engine) as c:
                seqs = list(
                    c.execute(
                        select(packs.c.seq)
                        .where(packs.c.seq > last)
                        .order_by(packs.c.seq)
                        .limit(200)
                    ).scalars()
                )
                if not seqs:
                    return
                rows = list(self._rows(c, packs.c.seq.in_(seqs)))
            yield from rows
            last = seqs[-1]

    def pack_blobs(self, pack: str) -> list[BlobRow]:
        with read_tx(self.engine) as c:
            return list(self._rows(c, packs.c.name == pack))

    # --- packs ---------------------------------------------------------------
    def begin_pack(self, name: str) -> None:
        with write_tx(self.engine) as c:
            exists = c.execute(select(packs.c.seq).where(packs.c.name == name)).scalar()
            if exists is None:
                c.execute(
                    insert(packs).values(name=name, size=0, state=PACK_WRITING, created=_now())
                )

    def commit_pack(self, name: str, size: int, entries: Sequence[PackEntry]) -> None:
        with write_tx(self.engine) as c:
            seq = c.execute(
                select(packs.c.seq).where(
                    packs.c.name == name, packs.c.state.in_([PACK_WRITING, PACK_OK])
                )
            ).scalar()
            # The update, not the read, decides (PostgreSQL reads committed rows: a gc's
            # ``claim_orphan`` may commit between the two; the row's lock orders them).
            done = c.execute(
                update(packs)
                .where(packs.c.seq == seq, packs.c.state.in_([PACK_WRITING, PACK_OK]))
                .values(size=size, state=PACK_OK)
            ).rowcount
            if seq is None or not done:
                raise StoreBusyError(pack_taken(name))
            c.execute(delete(blobs).where(blobs.c.pack_seq == seq))
            self._insert_entries(c, seq, entries)

    def claim_orphan(self, name: str) -> bool:
        with write_tx(self.engine) as c:
            r = c.execute(
                update(packs)
                .where(packs.c.name == name, packs.c.state.in_([PACK_WRITING, PACK_DROPPING]))
                .values(state=PACK_DROPPING)
            )
            return bool(r.rowcount)

    def _insert_entries(self, c: Connection, seq: int, entries: Sequence[PackEntry]) -> None:
        # in id order: each page of the primary key's index is touched once, not once per
        # row at random
        unique = sorted(one_entry_per_id(entries), key=_entry_id)
        if self._sqlite:
            # One statement the driver runs for every row (binding a dict per row through
            # SQLAlchemy cost more than the insert).
            c.exec_driver_sql(
                SQLITE_INSERT,
                [(e.id, seq, int(e.kind), e.offset, e.length, e.raw_length) for e in unique],
            )
            return
        rows = [
            {
                "id": e.id,
                "pack_seq": seq,
                "kind": int(e.kind),
                "offset": e.offset,
                "length": e.length,
                "raw_length": e.raw_length,
                "condemned": False,
            }
            for e in unique
        ]
        for i in range(0, len(rows), 2000):
            c.execute(insert(blobs), rows[i : i + 2000])

    def packs(self) -> list[PackInfo]:
        with read_tx(self.engine) as c:
            return [
                PackInfo(r.name, r.seq, r.size, r.state, _aware(r.created))
                for r in c.execute(select(packs).order_by(packs.c.seq))
            ]

    def max_pack_seq(self) -> int:
        with read_tx(self.engine) as c:
            return int(c.execute(select(func.coalesce(func.max(packs.c.seq), 0))).scalar_one())

    def drop_pack(self, name: str) -> None:
        with write_tx(self.engine) as c:
            seq = c.execute(select(packs.c.seq).where(packs.c.name == name)).scalar()
            if seq is not None:
                c.execute(delete(blobs).where(blobs.c.pack_seq == seq))
                c.execute(delete(packs).where(packs.c.seq == seq))

    def finish_repack(self, old: str, moved: Collection[bytes]) -> bool:
        with write_tx(self.engine) as c:
            seq = c.execute(select(packs.c.seq).where(packs.c.name == old)).scalar()
            if seq is None:
                return True
            c.execute(delete(blobs).where(blobs.c.pack_seq == seq, blobs.c.condemned.is_(True)))
            for batch in _batches(moved):
                c.execute(delete(blobs).where(blobs.c.pack_seq == seq, blobs.c.id.in_(batch)))
            left = c.execute(
                select(func.count()).select_from(blobs).where(blobs.c.pack_seq == seq)
            ).scalar_one()
            if left:
                return False
            # The row stays, ``writing`` from now, until the caller has deleted the file
            # and drops it: a crash before the delete leaves an orphan the collector
            # removes, never a file no row names (the crash audit's finding 3).
            c.execute(
                update(packs).where(packs.c.seq == seq).values(state=PACK_WRITING, created=_now())
            )
            return True

    def replace_index(self, found: Iterable[tuple[str, int, Sequence[PackEntry]]]) -> None:
        with write_tx(self.engine) as c:
            c.execute(delete(blobs))
            c.execute(delete(packs))
            # Blobs may have left the index (damaged packs skipped): the epoch moves, so
            # writers and files caches check again what they remember (as after a gc).
            epoch = c.execute(EPOCH_VALUE)
            current = epoch.scalar()
            if current is not None:
                c.execute(
                    update(store_state)
                    .where(store_state.c.key == _EPOCH)
                    .values(value=str(int(current) + 1))
                )
            for name, size, entries in found:
                seq = c.execute(
                    insert(packs)
                    .values(name=name, size=size, state=PACK_OK, created=_now())
                    .returning(packs.c.seq)
                ).scalar_one()
                self._insert_entries(c, seq, entries)

    # --- garbage collection --------------------------------------------------
    def gc_epoch(self) -> int:
        with read_tx(self.engine) as c:
            value = c.execute(EPOCH_VALUE).scalar()
        return int(value or 0)

    def condemn(
        self,
        ids: Collection[bytes],
        max_pack_seq: int,
        copies: Collection[tuple[bytes, int]] = (),
        settled: Callable[[], bool] | None = None,
        also: Callable[[Connection], None] | None = None,
    ) -> int:
        with write_tx(self.engine) as c:
            epoch = lock_epoch(c) + 1
            # Asked with the epoch locked: a snapshot commits under the old epoch before
            # this point (and is seen now) or under the new one after (its writer rescues).
            if settled is not None and not settled():
                raise RootsMoved("a root appeared since the mark")  # rolls back
            c.execute(
                update(store_state).where(store_state.c.key == _EPOCH).values(value=str(epoch))
            )
            for batch in _batches(ids):
                c.execute(
                    update(blobs)
                    .where(blobs.c.id.in_(batch), blobs.c.pack_seq <= max_pack_seq)
                    .values(condemned=True)
                )
            for bid, seq in copies:  # surplus copies of live blobs: one row each
                c.execute(
                    update(blobs)
                    .where(
                        blobs.c.id == bid, blobs.c.pack_seq == seq, blobs.c.pack_seq <= max_pack_seq
                    )
                    .values(condemned=True)
                )
            if also is not None:
                also(c)
            return epoch

    def rescue(self, ids: Collection[bytes]) -> set[bytes]:
        wanted = set(ids)
        found: set[bytes] = set()
        with write_tx(self.engine) as c:
            for batch in _batches(wanted):
                c.execute(
                    update(blobs)
                    .where(blobs.c.id.in_(batch), blobs.c.condemned.is_(True))
                    .values(condemned=False)
                )
                found.update(
                    bytes(r[0]) for r in c.execute(select(blobs.c.id).where(blobs.c.id.in_(batch)))
                )
        return wanted - found

    def try_lock(self, name: str, holder: str, ttl: dt.timedelta) -> bool:
        key = f"lock:{name}"
        now = _now()
        with write_tx(self.engine) as c:
            q = select(store_state.c.value).where(store_state.c.key == key)
            if not is_sqlite(self.engine):
                q = q.with_for_update()
            value = c.execute(q).scalar()
            doc = {"holder": holder, "expires": (now + ttl).isoformat()}
            if value is None:
                try:
                    with c.begin_nested():
                        c.execute(insert(store_state).values(key=key, value=json.dumps(doc)))
                except SqlIntegrityError:
                    return False
                return True
            held = json.loads(value)
            other = str(held.get("holder"))
            if other != holder and (
                holder_alive(other)  # (a live holder's, expired or not: never)
                or (
                    dt.datetime.fromisoformat(held["expires"]) > now
                    and not holder_gone(other)  # (a killed holder's: taken over)
                )
            ):
                return False
            c.execute(
                update(store_state).where(store_state.c.key == key).values(value=json.dumps(doc))
            )
            return True

    def renew_lock(self, name: str, holder: str, ttl: dt.timedelta) -> bool:
        key = f"lock:{name}"
        with write_tx(self.engine) as c:
            q = select(store_state.c.value).where(store_state.c.key == key)
            if not is_sqlite(self.engine):
                q = q.with_for_update()
            value = c.execute(q).scalar()
            if value is None or json.loads(value).get("holder") != holder:
                return False
            doc = {"holder": holder, "expires": (_now() + ttl).isoformat()}
            c.execute(
                update(store_state).where(store_state.c.key == key).values(value=json.dumps(doc))
            )
            return True

    def lock_info(self, name: str) -> tuple[str, dt.datetime] | None:
        with read_tx(self.engine) as c:
            value = c.execute(
                select(store_state.c.value).where(store_state.c.key == f"lock:{name}")
            ).scalar()
        if value is None:
            return None
        held = json.loads(value)
        return str(held.get("holder")), dt.datetime.fromisoformat(held["expires"])

    def unlock(self, name: str, holder: str) -> None:
        key = f"lock:{name}"
        with write_tx(self.engine) as c:
            value = c.execute(select(store_state.c.value).where(store_state.c.key == key)).scalar()
            if value is not None and json.loads(value).get("holder") == holder:
                # the row as read, not whatever is there now (PostgreSQL reads committed
                # rows: another holder may have taken it over in between)
                c.execute(
                    delete(store_state).where(
                        store_state.c.key == key, store_state.c.value == value
                    )
                )

    # --- snapshots -----------------------------------------------------------
    @staticmethod
    def _record(r: Any) -> SnapshotRecord:
        return snapshot_record(r.id, r.time, r.source, r.root, r.files, r.bytes, r.meta)

    def add_snapshot(self, record: SnapshotRecord, expected_epoch: int) -> bool:
        with write_tx(self.engine) as c:
            if lock_epoch(c) != expected_epoch:
                return False
            exists = c.execute(select(snapshots.c.seq).where(snapshots.c.id == record.id)).scalar()
            if exists is not None:
                return True  # the same snapshot committed twice (a retried commit): idempotent
            c.execute(
                insert(snapshots).values(
                    id=record.id,
                    time=record.time.astimezone(dt.UTC),
                    source=record.source,
                    root=record.root,
                    files=record.files,
                    bytes=record.bytes,
                    meta=record.meta,
                )
            )
            return True

    def snapshots(self, source: str | None = None) -> list[SnapshotRecord]:
        q = select(snapshots).order_by(snapshots.c.time, snapshots.c.seq)
        if source is not None:
            q = q.where(snapshots.c.source == source)
        with read_tx(self.engine) as c:
            return [self._record(r) for r in c.execute(q)]

    def snapshots_since(self, seq: int) -> list[tuple[int, SnapshotRecord]]:
        with read_tx(self.engine) as c:
            q = select(snapshots).where(snapshots.c.seq > seq).order_by(snapshots.c.seq)
            return [(r.seq, self._record(r)) for r in c.execute(q)]

    def last_snapshot_seq(self) -> int:
        with read_tx(self.engine) as c:
            return int(c.execute(select(func.coalesce(func.max(snapshots.c.seq), 0))).scalar_one())

    def find_snapshot(self, ref: str) -> SnapshotRecord:
        return resolve_snapshot(ref, self._latest, self._with_prefix)

    def _latest(self) -> SnapshotRecord | None:
        newest = snapshots.c.time.desc(), snapshots.c.seq.desc()
        with read_tx(self.engine) as c:
            r = c.execute(select(snapshots).order_by(*newest).limit(1)).first()
        return None if r is None else self._record(r)

    def _with_prefix(self, prefix: str) -> list[SnapshotRecord]:
        q = select(snapshots).where(snapshots.c.id.like(prefix + "%")).limit(2)
        with read_tx(self.engine) as c:
            return [self._record(r) for r in c.execute(q)]

    def forget_snapshots(self, ids: Collection[str]) -> int:
        with write_tx(self.engine) as c:
            return c.execute(delete(snapshots).where(snapshots.c.id.in_(list(ids)))).rowcount

    def close(self) -> None:
        self.engine.dispose()
