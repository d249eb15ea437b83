"""The catalog: the store's database side, as a contract.

The catalog holds the chunk index (blob id -> pack, offset, length), the pack
list, the snapshot records and the garbage collector's epoch. Its SQL
implementation lives in ``lamina.db``; the store only knows this Protocol.

Invariants every implementation must keep:

- A pack is recorded as ``writing`` before its file is written, and its blob rows
  are added together with its state ``ok``, in one transaction, only after the
  file is durably written. So a blob is stored only once its pack is durable and
  its rows are committed; a crash leaves at most a ``writing`` pack, which ``gc``
  removes after a grace period.
- ``missing`` and ``locate`` ignore condemned rows: once the collector condemns a
  blob, new writers upload it again instead of referring to the doomed copy.
- ``condemn`` increments the epoch in the same transaction. ``add_snapshot``
  reads the epoch in the transaction that inserts the snapshot, and refuses when
  it is not the epoch the writer checked its blobs under.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.store.blob import BlobKind
from lamina.store.pack import PackEntry

PACK_WRITING = "writing"
PACK_OK = "ok"
#: A pack a gc took as an orphan (``claim_orphan``): its file is being deleted, then its row.
PACK_DROPPING = "dropping"


#: Ids per ``rescue`` of ``rescue_all``.
RESCUE_BATCH = 1000


def rescue_all(catalog: Catalog, ids: Iterable[bytes]) -> set[bytes]:
    """``catalog.rescue`` of ``ids`` as they come (a walk of a snapshot's or a layer's
    trees), ``RESCUE_BATCH`` at a time; returns those already swept."""
    gone: set[bytes] = set()
    batch: list[bytes] = []
    for bid in ids:
        batch.append(bid)
        if len(batch) >= RESCUE_BATCH:
            gone |= catalog.rescue(batch)
            batch = []
    return gone | catalog.rescue(batch)


def pack_taken(name: str) -> str:
    """``commit_pack``'s refusal of a pack a gc took as an orphan."""
    return (
        f"pack {name[:16]} was removed by a garbage collection while it was written (its "
        "orphan grace was shorter than the write); nothing of it was stored: send it again"
    )


class RootsMoved(Exception):
    """``Catalog.condemn``: a root appeared that the gc has not marked; nothing was
    condemned (the gc marks it and tries again)."""


@dataclass(frozen=True)
class BlobLocation:
    pack: str
    offset: int
    length: int
    raw_length: int
    kind: BlobKind


@dataclass(frozen=True)
class PackInfo:
    name: str
    seq: int
    size: int
    state: str
    created: dt.datetime


@dataclass(frozen=True)
class BlobRow:
    id: bytes
    kind: BlobKind
    pack: str
    pack_seq: int
    offset: int
    length: int
    raw_length: int
    condemned: bool


@dataclass(frozen=True)
class SnapshotRecord:
    """A snapshot: its root tree, when and where it was taken, what it holds."""

    id: str
    time: dt.datetime
    source: str
    root: bytes
    files: int
    bytes: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time.isoformat(),
            "source": self.source,
            "root": self.root.hex(),
            "files": self.files,
            "bytes": self.bytes,
            **{k: v for k, v in self.meta.items() if k not in ("id", "time", "root")},
        }


def one_entry_per_id(entries: Iterable[PackEntry]) -> list[PackEntry]:
    """A pack's entries as the catalog records them: one row per id, the first entry's.
    The writer never puts one id in a pack twice, not even under two kinds; a second
    entry is a writer's bug, and keeping one row keeps (id, pack) a key."""
    seen: set[bytes] = set()
    out: list[PackEntry] = []
    for e in entries:
        if e.id not in seen:
            seen.add(e.id)
            out.append(e)
    return out


def resolve_snapshot(
    ref: str,
    latest: Callable[[], SnapshotRecord | None],
    with_prefix: Callable[[str], list[SnapshotRecord]],
) -> SnapshotRecord:
    """What ``Catalog.find_snapshot(ref)`` means, for every catalog: ``latest`` is the
    newest snapshot; anything else is a unique prefix (at least 4 hex digits) of an id.

    ``latest()`` returns the newest snapshot or None; ``with_prefix(p)`` the snapshots
    whose id starts with ``p`` (lower case), two at the most are enough.
    """
    if ref == "latest":
        newest = latest()
        if newest is None:
            raise NotFoundError("the store has no snapshots yet")
        return newest
    if len(ref) < 4 or any(ch not in "0123456789abcdef" for ch in ref.lower()):
        raise UsageError(f"snapshot reference {ref!r}: give at least 4 hex digits of its id")
    found = with_prefix(ref.lower())
    if not found:
        raise NotFoundError(f"no snapshot {ref}")
    if len(found) > 1:
        raise ConflictError(f"snapshot prefix {ref} is ambiguous: give more digits")
    return found[0]


def find_in(snaps: Sequence[SnapshotRecord], ref: str) -> SnapshotRecord:
    """``resolve_snapshot`` among ``snaps`` (oldest first): for a catalog that reads every
    snapshot's row anyway."""
    return resolve_snapshot(
        ref,
        lambda: snaps[-1] if snaps else None,
        lambda prefix: [s for s in snaps if s.id.startswith(prefix)],
    )


class Catalog(Protocol):
    """The chunk index, packs, snapshots and GC state of one store.

    Thread-safe: each call is its own transaction unless it says otherwise.
    """

    # --- blobs ---------------------------------------------------------------
    def missing(self, ids: Collection[bytes], kind: BlobKind | None = None) -> set[bytes]:
        """The subset of ``ids`` not stored (condemned copies count as not stored).

        With ``kind``, a blob is stored only if a row *of that kind* holds it: one id
        may be held under two kinds (a file whose bytes are a tree's encoding), and a
        tree stored only as data is missing as a tree (one blob, one kind).
        """
        ...

    def known_ids(self, kind: BlobKind, limit: int) -> set[bytes] | None:
        """Every stored, uncondemned id of ``kind``, or None when there are more than
        ``limit`` (a writer's in-memory dedup set: one query instead of one per batch).
        A snapshot of the moment: blobs condemned later are caught at commit (the epoch)."""
        ...

    def locate(
        self, ids: Collection[bytes], include_condemned: bool = False, kind: BlobKind | None = None
    ) -> dict[bytes, BlobLocation]:
        """Where each stored, uncondemned blob of ``ids`` is; absent ids are left out.

        The collector passes ``include_condemned`` to walk trees it condemned a
        moment ago and must now rescue. With ``kind``, only rows of that kind count;
        without it, any row may answer (reads verify the content against the id
        whatever the kind).
        """
        ...

    def iter_blobs(self) -> Iterator[BlobRow]:
        """Every blob row, condemned ones included, in pack order."""
        ...

    def pack_blobs(self, pack: str) -> list[BlobRow]: ...

    # --- packs ---------------------------------------------------------------
    def begin_pack(self, name: str) -> None:
        """Record that ``name`` is about to be written (state ``writing``). Idempotent."""
        ...

    def commit_pack(self, name: str, size: int, entries: Sequence[PackEntry]) -> None:
        """Add the pack's blob rows and mark it ``ok``, in one transaction (again: its rows
        replaced); only while its ``begin_pack`` row is there: when a gc took it as an orphan
        (``claim_orphan``: a grace shorter than the write) nothing is indexed and
        ``StoreBusyError`` is raised, so what the pack holds is never acknowledged."""
        ...

    def claim_orphan(self, name: str) -> bool:
        """Take a pack left ``writing`` for deletion (state ``dropping``), only while it
        still is ``writing`` (one conditional update): a writer that commits first keeps
        it, and a writer whose pack was taken cannot commit it. Also true for a pack
        already ``dropping`` (a gc stopped while deleting it). Returns whether it is taken."""
        ...

    def packs(self) -> list[PackInfo]: ...

    def max_pack_seq(self) -> int: ...

    def drop_pack(self, name: str) -> None:
        """Forget a pack and all its rows (its file must be deleted after this commits)."""
        ...

    def finish_repack(self, old: str, moved: Collection[bytes]) -> bool:
        """After a repack: drop ``old``'s condemned rows and the rows of ``moved``.

        Returns True when no row points into ``old`` any more (its file may go): the pack's
        own row is then left ``writing`` (created now) until the caller has deleted the
        file and calls ``drop_pack``, so a crash between leaves an orphan the collector
        removes, never a file no row names.
        """
        ...

    def replace_index(self, packs: Iterable[tuple[str, int, Sequence[PackEntry]]]) -> None:
        """Rebuild: forget every pack and blob row, then add these packs, in one transaction."""
        ...

    # --- garbage collection --------------------------------------------------
    def gc_epoch(self) -> int: ...

    def condemn(
        self,
        ids: Collection[bytes],
        max_pack_seq: int,
        copies: Collection[tuple[bytes, int]] = (),
        settled: Callable[[], bool] | None = None,
        also: Callable[[Any], None] | None = None,
    ) -> int:
        """Condemn the rows of ``ids`` in packs up to ``max_pack_seq``; bump the epoch.

        ``copies`` names single rows, ``(id, pack_seq)``: surplus copies of a live
        blob (two writers stored it at once); the blob stays readable from another row.

        ``settled``, asked once the epoch is locked (no snapshot can commit under the old
        epoch any more): whether every root is one the gc marked. When not, nothing is
        condemned and ``RootsMoved`` is raised: the gc marks the new roots and tries
        again, so no condemned row is ever one a committed root names.

        ``also`` runs in the same transaction once it is settled, given the catalog's
        database connection (None for a catalog without one): the server's ownership
        rows the gc takes back go with the condemn (``lamina.db.ownership``).

        Returns the new epoch.
        """
        ...

    def rescue(self, ids: Collection[bytes]) -> set[bytes]:
        """Un-condemn ``ids``; return those with no row at all (already swept)."""
        ...

    def try_lock(self, name: str, holder: str, ttl: dt.timedelta) -> bool:
        """Take a named advisory lock unless someone else holds it: a holder whose
        process certainly runs holds it, expired or not (``processes.holder_alive``); an
        unexpired one whose process has not certainly ended too (``holder_gone``: a
        killed holder's is taken over, not waited out)."""
        ...

    def renew_lock(self, name: str, holder: str, ttl: dt.timedelta) -> bool:
        """Extend ``holder``'s lock to ``ttl`` from now; False when it is no longer
        ``holder``'s (taken over: ``store.locks.HeldLock`` then stops its work)."""
        ...

    def unlock(self, name: str, holder: str) -> None: ...

    def lock_info(self, name: str) -> tuple[str, dt.datetime] | None:
        """Who holds the named lock and when its expiry runs out unless renewed (None:
        nobody): for the message of a refused holder (``store.locks.HeldLock``)."""
        ...

    # --- snapshots -----------------------------------------------------------
    def add_snapshot(self, record: SnapshotRecord, expected_epoch: int) -> bool:
        """Insert the snapshot unless the epoch moved since ``expected_epoch``."""
        ...

    def snapshots(self, source: str | None = None) -> list[SnapshotRecord]:
        """Snapshots oldest first, optionally of one source."""
        ...

    def snapshots_since(self, seq: int) -> list[tuple[int, SnapshotRecord]]:
        """Snapshots inserted after position ``seq`` (for the collector's second look)."""
        ...

    def last_snapshot_seq(self) -> int: ...

    def find_snapshot(self, ref: str) -> SnapshotRecord:
        """By id or unique id prefix (at least 4 characters), or ``latest``."""
        ...

    def forget_snapshots(self, ids: Collection[str]) -> int: ...

    def close(self) -> None: ...
