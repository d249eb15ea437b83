"""A ``Catalog`` in memory: store tests and tools that need no database use it, as
restic's tests use an in-memory repository. One lock makes every call a transaction;
it keeps nothing after the process ends. The SQL catalog (``lamina.db.catalog``) is
the one for real stores; the two are held to the same behaviour by the store tests,
which run on both (``tests/store/conftest.py``)."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lamina.errors import StoreBusyError
from lamina.processes import holder_alive, holder_gone
from lamina.store import catalog
from lamina.store.blob import BlobKind
from lamina.store.pack import PackEntry


@dataclass
class _Pack:
    info: catalog.PackInfo
    rows: dict[bytes, catalog.BlobRow]


class MemoryCatalog:
    """The chunk index, packs, snapshots and gc state of one store, in dicts."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._packs: dict[str, _Pack] = {}
        self._seq = itertools.count(1)
        self._epoch = 0
        self._locks: dict[str, tuple[str, dt.datetime]] = {}
        self._snapshots: dict[str, tuple[int, catalog.SnapshotRecord]] = {}
        self._snap_seq = itertools.count(1)

    # --- blobs ---------------------------------------------------------------
    def _live_rows(self, kind: BlobKind | None, condemned: bool) -> Iterator[catalog.BlobRow]:
        for p in sorted(self._packs.values(), key=lambda p: p.info.seq):
            for r in p.rows.values():
                if (condemned or not r.condemned) and (kind is None or r.kind == kind):
                    yield r

    def missing(self, ids: Collection[bytes], kind: BlobKind | None = None) -> set[bytes]:
        with self._lock:
            wanted = set(ids)
            return wanted - {r.id for r in self._live_rows(kind, False) if r.id in wanted}

    def known_ids(self, kind: BlobKind, limit: int) -> set[bytes] | None:
        with self._lock:
            found = {r.id for r in self._live_rows(kind, False)}
        return found if len(found) <= limit else None

    def locate(
        self, ids: Collection[bytes], include_condemned: bool = False, kind: BlobKind | None = None
    ) -> dict[bytes, catalog.BlobLocation]:
        with self._lock:
            wanted = set(ids)
            return {
                r.id: catalog.BlobLocation(r.pack, r.offset, r.length, r.raw_length, r.kind)
                for r in self._live_rows(kind, include_condemned)
                if r.id in wanted
            }

    def iter_blobs(self) -> Iterator[catalog.BlobRow]:
        with self._lock:
            rows = list(self._live_rows(None, True))
        yield from sorted(rows, key=lambda r: (r.pack_seq, r.offset))

    def pack_blobs(self, pack: str) -> list[catalog.BlobRow]:
        with self._lock:
            p = self._packs.get(pack)
            return sorted(p.rows.values(), key=lambda r: r.offset) if p else []

    # --- packs ---------------------------------------------------------------
    def begin_pack(self, name: str) -> None:
        with self._lock:
            if name not in self._packs:
                info = catalog.PackInfo(
                    name, next(self._seq), 0, catalog.PACK_WRITING, dt.datetime.now(dt.UTC)
                )
                self._packs[name] = _Pack(info, {})

    def _rows_of(
        self, info: catalog.PackInfo, entries: Sequence[PackEntry]
    ) -> dict[bytes, catalog.BlobRow]:
        rows: dict[bytes, catalog.BlobRow] = {}
        for e in catalog.one_entry_per_id(entries):
            rows[e.id] = catalog.BlobRow(
                e.id, BlobKind(e.kind), info.name, info.seq, e.offset, e.length,
                e.raw_length, False,
            )  # fmt: skip
        return rows

    def commit_pack(self, name: str, size: int, entries: Sequence[PackEntry]) -> None:
        with self._lock:
            p = self._packs.get(name)
            if p is None or p.info.state not in (catalog.PACK_WRITING, catalog.PACK_OK):
                raise StoreBusyError(catalog.pack_taken(name))  # (a gc took it as an orphan)
            info = catalog.PackInfo(name, p.info.seq, size, catalog.PACK_OK, p.info.created)
            self._packs[name] = _Pack(info, self._rows_of(info, entries))

    def claim_orphan(self, name: str) -> bool:
        with self._lock:
            p = self._packs.get(name)
            if p is None or p.info.state not in (catalog.PACK_WRITING, catalog.PACK_DROPPING):
                return False
            p.info = replace(p.info, state=catalog.PACK_DROPPING)
            return True

    def packs(self) -> list[catalog.PackInfo]:
        with self._lock:
            return sorted((p.info for p in self._packs.values()), key=lambda i: i.seq)

    def max_pack_seq(self) -> int:
        with self._lock:
            return max((p.info.seq for p in self._packs.values()), default=0)

    def drop_pack(self, name: str) -> None:
        with self._lock:
            self._packs.pop(name, None)

    def finish_repack(self, old: str, moved: Collection[bytes]) -> bool:
        with self._lock:
            p = self._packs.get(old)
            if p is None:
                return True
            gone = set(moved)
            p.rows = {i: r for i, r in p.rows.items() if not r.condemned and i not in gone}
            if p.rows:
                return False
            p.info = replace(p.info, state=catalog.PACK_WRITING, created=dt.datetime.now(dt.UTC))
            return True

    def replace_index(self, packs: Iterable[tuple[str, int, Sequence[PackEntry]]]) -> None:
        with self._lock:
            self._packs = {}
            self._epoch += 1  # blobs may have left the index (as SqlCatalog.replace_index)
            for name, size, entries in packs:
                info = catalog.PackInfo(
                    name, next(self._seq), size, catalog.PACK_OK, dt.datetime.now(dt.UTC)
                )
                self._packs[name] = _Pack(info, self._rows_of(info, entries))

    # --- garbage collection --------------------------------------------------
    def gc_epoch(self) -> int:
        with self._lock:
            return self._epoch

    def _set(self, ids: Collection[bytes], condemned: bool, max_seq: int | None = None) -> None:
        wanted = set(ids)
        for p in self._packs.values():
            for i, r in p.rows.items():
                if i in wanted and (max_seq is None or r.pack_seq <= max_seq):
                    p.rows[i] = replace(r, condemned=condemned)

    def condemn(
        self,
        ids: Collection[bytes],
        max_pack_seq: int,
        copies: Collection[tuple[bytes, int]] = (),
        settled: Callable[[], bool] | None = None,
        also: Callable[[Any], None] | None = None,
    ) -> int:
        with self._lock:
            if settled is not None and not settled():
                raise catalog.RootsMoved("a root appeared since the mark")
            if also is not None:
                also(None)
            self._epoch += 1
            self._set(ids, True, max_pack_seq)
            for bid, seq in copies:
                for p in self._packs.values():
                    r = p.rows.get(bid)
                    if r is not None and r.pack_seq == seq and seq <= max_pack_seq:
                        p.rows[bid] = replace(r, condemned=True)
            return self._epoch

    def rescue(self, ids: Collection[bytes]) -> set[bytes]:
        with self._lock:
            wanted = set(ids)
            self._set(wanted, False)
            return wanted - {i for p in self._packs.values() for i in p.rows if i in wanted}

    def try_lock(self, name: str, holder: str, ttl: dt.timedelta) -> bool:
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            held = self._locks.get(name)
            if (
                held is not None
                and held[0] != holder
                and (holder_alive(held[0]) or (held[1] > now and not holder_gone(held[0])))
            ):
                return False
            self._locks[name] = (holder, now + ttl)
            return True

    def renew_lock(self, name: str, holder: str, ttl: dt.timedelta) -> bool:
        with self._lock:
            if self._locks.get(name, ("",))[0] != holder:
                return False
            self._locks[name] = (holder, dt.datetime.now(dt.UTC) + ttl)
            return True

    def lock_info(self, name: str) -> tuple[str, dt.datetime] | None:
        with self._lock:
            return self._locks.get(name)

    def unlock(self, name: str, holder: str) -> None:
        with self._lock:
            if self._locks.get(name, ("",))[0] == holder:
                del self._locks[name]

    # --- snapshots -----------------------------------------------------------
    def add_snapshot(self, record: catalog.SnapshotRecord, expected_epoch: int) -> bool:
        with self._lock:
            if self._epoch != expected_epoch:
                return False
            if record.id not in self._snapshots:
                self._snapshots[record.id] = (next(self._snap_seq), record)
            return True

    def snapshots(self, source: str | None = None) -> list[catalog.SnapshotRecord]:
        with self._lock:
            found = sorted(self._snapshots.values(), key=lambda s: (s[1].time, s[0]))
        return [r for _, r in found if source is None or r.source == source]

    def snapshots_since(self, seq: int) -> list[tuple[int, catalog.SnapshotRecord]]:
        with self._lock:
            return sorted(s for s in self._snapshots.values() if s[0] > seq)

    def last_snapshot_seq(self) -> int:
        with self._lock:
            return max((s[0] for s in self._snapshots.values()), default=0)

    def find_snapshot(self, ref: str) -> catalog.SnapshotRecord:
        return catalog.find_in(self.snapshots(), ref)

    def forget_snapshots(self, ids: Collection[str]) -> int:
        with self._lock:
            return sum(self._snapshots.pop(i, None) is not None for i in set(ids))

    def close(self) -> None:
        pass
