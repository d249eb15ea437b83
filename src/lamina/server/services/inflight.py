"""Cross-endpoint deduplication: common blobs, and blobs another endpoint is uploading.

Fifty endpoints centralizing at once each ask ``/agent/missing`` about the same
operating system before any of them has uploaded it; answered "not yours, send it",
each sends the whole shared base. Here the server remembers who was told to send
what (a *claim* on the blob, with a lease) and tells the others it is coming.

The content oracle (``access``) forbids telling a device about another endpoint's
private content, so sharing is limited to *common* content: a blob counts as present
for a CVD that does not hold it only while at least ``threshold`` other CVDs hold it
or hold a live claim on it. Below that, the answer is the one a device got before:
"send it". A device therefore learns nothing about content fewer than ``threshold``
other endpoints hold; ``threshold`` 0 turns sharing off.

The protocol (docs/design.md, "Blobs in flight"):

- ``need``: what this CVD must send. A blob it does not own is present when stored and
  *shared* (``shared_blobs``: held by ``threshold`` CVDs once), or when
  ``threshold`` other CVDs own it or claim it (in flight: *promised*). Everything the
  answer says to send is claimed for this CVD, and its claims' lease (one per CVD,
  ``blob_claimants``, revision 0013) runs until ``now + lease``; an ask that claims
  nothing new renews the lease too (the CVD is alive and still uploading).
- ``received``: a bundle was stored and its blobs recorded as the CVD's (``access.record``):
  its claims on them end, its lease is renewed (it is alive and uploading), and blobs
  now held by ``threshold`` CVDs become shared.
- ``settle``: a commit names blobs this CVD does not own. Stored shared ones become
  its own; ones still claimed by enough others make the commit answer
  ``UploadsPendingError`` (the agent asks again a moment later); any other is missing
  data, with the message a device gets for a blob nobody holds. So a commit never lands
  on a promise: a claimant that dies lets its lease run out, the waiting commit is
  answered "missing", and its agent scans again and uploads what ``need`` now asks for.

Managed flex guests take no part (session 23): any flex user mints one active device per
instance, so a threshold counted over their CVDs would be one person's to pass alone.
A guest's CVD asks and commits with sharing off (``for_cvd``), and its blobs and claims
count for no other CVD (``_guest_cvds`` left out of every count).

Every step is one short transaction on the server's database, so servers sharing one
PostgreSQL database see each other's claims. Two devices asking at the same moment
may both be told to send a blob: the only cost is bytes, the store keeps one copy.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Executable, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql

from lamina.db.engine import driver_rows
from lamina.db.models import (
    blob_claimants,
    blob_claims,
    cvd_blobs,
    cvds,
    flex_instances,
    shared_blobs,
)
from lamina.errors import MissingDataError, UploadsPendingError
from lamina.server.services.common import now

#: Ids per SQL statement (well below SQLite's bound-parameter limit).
BATCH = 5000


@dataclass(frozen=True)
class Sharing:
    """The server's sharing settings (``share_threshold``, ``claim_lease``)."""

    #: Other CVDs that must hold (or be uploading) a blob before it counts as present
    #: for a CVD that does not hold it; 0: never (every CVD uploads what it lacks).
    threshold: int = 2
    #: Seconds a claim lasts without news from its uploader.
    lease: float = 120.0

    @property
    def on(self) -> bool:
        return self.threshold > 0


OFF = Sharing(threshold=0)


def id_batches(ids: list[bytes]) -> Iterable[list[bytes]]:
    """``ids`` in lists of at most ``BATCH`` (one statement each)."""
    for k in range(0, len(ids), BATCH):
        yield ids[k : k + BATCH]


def rows_in(
    c: Connection,
    sql: str,
    core: Callable[[list[bytes]], Executable],
    ids: list[bytes],
    *args: object,
) -> Iterator[Any]:
    """Rows of a lookup by blob id, one statement per ``BATCH`` ids.

    On SQLite ``sql`` (``%s`` where the ids' marks go, then ``?`` for ``args``) as the
    driver takes it, its rows as the driver gives them (``driver_rows``): building,
    caching and binding an expanding SQLAlchemy ``IN`` per id cost more than the query.
    Elsewhere ``core(ids)``, the same statement in Core."""
    sqlite_ = c.dialect.name == "sqlite"
    for part in id_batches(ids):
        if sqlite_:
            yield from driver_rows(c, sql % ",".join("?" * len(part)), (*part, *args))
        else:
            yield from c.execute(core(part))


def write_rows(
    c: Connection,
    sql: str,
    core: Callable[[], Executable],
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
) -> int:
    """Run a write for every one of ``rows`` (values in ``columns``' order).

    On SQLite ``sql`` through the driver's executemany: binding a dict per row through
    SQLAlchemy cost more than the write; returns the rows it changed (the driver sums
    them). Elsewhere ``core()``, the same statement in Core (built only there: building
    it cost more than the write on SQLite too); returns -1 (not counted)."""
    if not rows:
        return 0
    if c.dialect.name == "sqlite":
        return int(c.exec_driver_sql(sql, rows).rowcount)
    c.execute(core(), [dict(zip(columns, r, strict=True)) for r in rows])
    return -1


def _bound(c: Connection, column: Any, value: object) -> object:
    """``value`` as ``column``'s type binds it (a raw statement's parameter)."""
    proc = column.type.dialect_impl(c.dialect).bind_processor(c.dialect)
    return proc(value) if proc else value


def _shared(c: Connection, ids: list[bytes]) -> set[bytes]:
    return {
        bytes(r[0])
        for r in rows_in(
            c,
            "SELECT blob_id FROM shared_blobs WHERE blob_id IN (%s)",
            lambda part: select(shared_blobs.c.blob_id).where(shared_blobs.c.blob_id.in_(part)),
            ids,
        )
    }


def _guest_cvds() -> Any:
    """The CVDs of managed flex guests (a flex instance's device): counted as no holder.
    The driver statements spell it ``SELECT g.id FROM cvds g JOIN flex_instances f ON
    f.device_id = g.device_id``."""
    return select(cvds.c.id).join(flex_instances, flex_instances.c.device_id == cvds.c.device_id)


def for_cvd(c: Connection, cvd_id: str, sharing: Sharing) -> Sharing:
    """The sharing a CVD's asks and commits get: none for a managed flex guest's."""
    if not sharing.on:
        return sharing
    guest = c.execute(
        select(flex_instances.c.id)
        .join(cvds, cvds.c.device_id == flex_instances.c.device_id)
        .where(cvds.c.id == cvd_id)
        .limit(1)
    ).first()
    return OFF if guest is not None else sharing


def _holders(
    c: Connection, cvd_id: str, ids: list[bytes], stored: set[bytes], when: dt.datetime
) -> tuple[dict[bytes, set[str]], dict[bytes, set[str]]]:
    """Other CVDs owning each stored id, and other CVDs with a live claim on each id.

    Only called for blobs that are not shared, which fewer than ``threshold`` CVDs own,
    so the rows read stay few whatever the size of the fleet. A claim counts while its
    CVD's lease runs (``blob_claimants``): with no other CVD's lease live (an endpoint
    syncing alone), there is no claim to look up."""
    owners: dict[bytes, set[str]] = {}
    claims: dict[bytes, set[str]] = {}
    held = [i for i in ids if i in stored]
    for bid, cid in rows_in(
        c,
        "SELECT blob_id, cvd_id FROM cvd_blobs WHERE blob_id IN (%s) AND cvd_id != ? "
        "AND cvd_id NOT IN (SELECT g.id FROM cvds g JOIN flex_instances f "
        "ON f.device_id = g.device_id)",
        lambda part: select(cvd_blobs.c.blob_id, cvd_blobs.c.cvd_id).where(
            cvd_blobs.c.blob_id.in_(part),
            cvd_blobs.c.cvd_id != cvd_id,
            cvd_blobs.c.cvd_id.not_in(_guest_cvds()),
        ),
        held,
        cvd_id,
    ):
        owners.setdefault(bytes(bid), set()).add(cid)
    if not ids or not _others_live(c, cvd_id, when):
        return owners, claims
    for bid, cid in rows_in(
        c,
        "SELECT c.blob_id, c.cvd_id FROM blob_claims c JOIN blob_claimants k "
        "ON k.cvd_id = c.cvd_id WHERE c.blob_id IN (%s) AND c.cvd_id != ? AND k.expires > ? "
        "AND c.cvd_id NOT IN (SELECT g.id FROM cvds g JOIN flex_instances f "
        "ON f.device_id = g.device_id)",
        lambda part: (
            select(blob_claims.c.blob_id, blob_claims.c.cvd_id)
            .join(blob_claimants, blob_claimants.c.cvd_id == blob_claims.c.cvd_id)
            .where(
                blob_claims.c.blob_id.in_(part),
                blob_claims.c.cvd_id != cvd_id,
                blob_claimants.c.expires > when,
                blob_claims.c.cvd_id.not_in(_guest_cvds()),
            )
        ),
        ids,
        cvd_id,
        _bound(c, blob_claimants.c.expires, when),
    ):
        claims.setdefault(bytes(bid), set()).add(cid)
    return owners, claims


def _others_live(c: Connection, cvd_id: str, when: dt.datetime) -> bool:
    """Whether another CVD's claims count at ``when`` (its lease runs): one probe of
    ``blob_claimants``, a row per CVD uploading."""
    return bool(
        _run(
            c,
            "SELECT 1 FROM blob_claimants WHERE cvd_id != ? AND expires > ? LIMIT 1",
            lambda: (
                select(blob_claimants.c.cvd_id)
                .where(blob_claimants.c.cvd_id != cvd_id, blob_claimants.c.expires > when)
                .limit(1)
            ),
            cvd_id,
            _bound(c, blob_claimants.c.expires, when),
        )
    )


def _run(c: Connection, sql: str, core: Callable[[], Executable], *args: object) -> list[Any]:
    """The rows of one statement run once per request: on SQLite ``sql`` as the driver
    takes it (``driver_rows``: building and compiling the Core statement cost more than
    running it), elsewhere ``core()``. A write returns no rows."""
    if c.dialect.name == "sqlite":
        return driver_rows(c, sql, args)
    result = c.execute(core())
    return list(result) if result.returns_rows else []


def _holding(bid: bytes, owners: dict[bytes, set[str]], claims: dict[bytes, set[str]]) -> int:
    """How many other CVDs own ``bid`` or hold a live claim on it (``_holders``' maps)."""
    own, claim = owners.get(bid), claims.get(bid)
    if own is None or claim is None:
        return len(own or claim or ())
    return len(own | claim)


def _sweep(c: Connection, when: dt.datetime) -> None:
    """Delete the claims of CVDs whose lease ran out by ``when``, and their leases: one
    probe of ``blob_claimants`` at each ``/agent/missing``; the claims (read by a scan:
    ``blob_claims`` has no index by CVD) only when a lease ran out, i.e. its endpoint
    stopped uploading without committing."""
    expired = _run(
        c,
        "SELECT cvd_id FROM blob_claimants WHERE expires <= ? ORDER BY cvd_id",
        lambda: (
            select(blob_claimants.c.cvd_id)
            .where(blob_claimants.c.expires <= when)
            .order_by(blob_claimants.c.cvd_id)
        ),
        _bound(c, blob_claimants.c.expires, when),
    )
    for (cid,) in expired:
        _drop_claims(c, cid, expired_by=when)


def _drop_claims(c: Connection, cvd_id: str, expired_by: dt.datetime | None = None) -> None:
    """Delete the CVD's lease and, when it had one, every claim of it (in that order,
    as ``_claim`` and ``received`` take them). With ``expired_by``, only a lease that ran
    out by then: on PostgreSQL the CVD's own ask or bundle may renew it between the
    sweep's read and this delete, and a renewed lease and its claims must stay."""
    lease = delete(blob_claimants).where(blob_claimants.c.cvd_id == cvd_id)
    if expired_by is not None:
        lease = lease.where(blob_claimants.c.expires <= expired_by)
    gone = c.execute(lease)
    if gone.rowcount:
        c.execute(delete(blob_claims).where(blob_claims.c.cvd_id == cvd_id))


def _lease(c: Connection, cvd_id: str, until: dt.datetime) -> None:
    """The CVD's claims count until ``until`` (its ``blob_claimants`` row made or renewed)."""
    _run(
        c,
        "INSERT INTO blob_claimants (cvd_id, expires) VALUES (?, ?) "
        "ON CONFLICT (cvd_id) DO UPDATE SET expires = excluded.expires",
        lambda: (
            postgresql.insert(blob_claimants)
            .values(cvd_id=cvd_id, expires=until)
            .on_conflict_do_update(
                index_elements=[blob_claimants.c.cvd_id], set_={"expires": until}
            )
        ),
        cvd_id,
        _bound(c, blob_claimants.c.expires, until),
    )


def _renew(c: Connection, cvd_id: str, until: dt.datetime) -> None:
    """The CVD's claims, if it has any, count until ``until`` (its lease row updated; a
    CVD without one gets none)."""
    _run(
        c,
        "UPDATE blob_claimants SET expires = ? WHERE cvd_id = ?",
        lambda: (
            update(blob_claimants).where(blob_claimants.c.cvd_id == cvd_id).values(expires=until)
        ),
        _bound(c, blob_claimants.c.expires, until),
        cvd_id,
    )


def _claim(c: Connection, cvd_id: str, ids: list[bytes], until: dt.datetime) -> None:
    """Claim ``ids`` for the CVD, all of its claims counting until ``until``."""
    _lease(c, cvd_id, until)
    # One statement run for many rows (executemany), not a multi-row VALUES compiled
    # anew for each batch (that compile was most of a first sync's /agent/missing).
    for part in id_batches(sorted(ids)):  # one order for every writer: no lock cycles on PostgreSQL
        write_rows(
            c,
            "INSERT INTO blob_claims (blob_id, cvd_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            lambda: postgresql.insert(blob_claims).on_conflict_do_nothing(),
            ("blob_id", "cvd_id"),
            [(i, cvd_id) for i in part],
        )


def need(
    c: Connection,
    cvd_id: str,
    candidates: list[bytes],
    stored: set[bytes],
    sharing: Sharing,
) -> list[bytes]:
    """Which of ``candidates`` (blobs this CVD does not own, or not stored) it must send.

    ``stored`` says which candidates the store holds. Claims the answer, in ``c`` (a
    write transaction). Expired claims are swept on the way."""
    if not sharing.on or not candidates:
        return candidates
    when = now()
    _sweep(c, when)
    shared = _shared(c, [i for i in candidates if i in stored])
    rest = [i for i in candidates if not (i in stored and i in shared)]
    owners, claims = _holders(c, cvd_id, rest, stored, when)
    # Held by enough CVDs but not marked (recorded before revision 0009): mark them now,
    # so the next ask reads one row for each instead of every owner.
    _mark_shared(c, [i for i in owners if len(owners[i]) >= sharing.threshold])
    held = owners.keys() | claims.keys()  # (an id no other CVD holds or claims: send it)
    send = [i for i in rest if i not in held or _holding(i, owners, claims) < sharing.threshold]
    until = when + dt.timedelta(seconds=sharing.lease)
    if send:
        _claim(c, cvd_id, send, until)
    else:  # nothing new to claim: an ask still shows the CVD is alive and uploading
        _renew(c, cvd_id, until)
    return send


def received(
    c: Connection,
    cvd_id: str,
    ids: list[bytes],
    sharing: Sharing,
    first: frozenset[bytes] = frozenset(),
) -> None:
    """The CVD's new blobs ``ids`` are stored and recorded as its own (same transaction).

    ``first``: those its bundle stored first (``intake.Intake``). With a threshold of 2 or
    more they are not asked whether they became common: the CVD is their one owner (but
    for a race with another device's upload of the same blob). The mark is only a
    shortcut: ``need`` and ``settle`` count the owners of a blob without one (``need``
    marks it then), so a mark missed here costs a later ask a lookup, never an answer."""
    if not sharing.on or not ids:
        return
    # The lease first, then its claims: the order ``_drop_claims`` takes them in (no lock
    # cycle between a sweep and a bundle on PostgreSQL). One row, where every claim's own
    # expiry was rewritten.
    _renew(c, cvd_id, now() + dt.timedelta(seconds=sharing.lease))
    _end_claims(c, cvd_id, ids)
    ask = [i for i in ids if i not in first] if first and sharing.threshold > 1 else ids
    _mark_shared(c, _newly_common(c, ask, sharing.threshold))


def _newly_common(c: Connection, ids: list[bytes], threshold: int) -> list[bytes]:
    """Of ``ids`` (each owned by the recording CVD now), those not marked shared that at
    least ``threshold`` CVDs own.

    On SQLite one statement per ``BATCH`` ids (``_SQLITE_COMMON``; before, one to read
    the shared marks and one to count the owners of the rest): the ids as a ``VALUES``
    list (looked up by nothing), each one's shared mark probed, and its owners counted
    only when it has none, and only up to ``threshold`` (a blob a fleet shares is never
    counted owner by owner). Elsewhere the shared marks first, then the owners of the
    rest grouped."""
    if c.dialect.name == "sqlite":
        return [
            bytes(r[0])
            for part in id_batches(ids)
            for r in driver_rows(
                c, _SQLITE_COMMON % ",".join(["(?)"] * len(part)), (*part, threshold, threshold)
            )
        ]
    already = _shared(c, ids)
    fresh = [i for i in ids if i not in already]
    return [
        bytes(r[0])
        for part in id_batches(fresh)
        for r in c.execute(
            select(cvd_blobs.c.blob_id)
            .where(cvd_blobs.c.blob_id.in_(part), cvd_blobs.c.cvd_id.not_in(_guest_cvds()))
            .group_by(cvd_blobs.c.blob_id)
            .having(func.count() >= threshold)
        )
    ]


#: ``_newly_common`` on SQLite; binds the ids, then the limit and the threshold.
_SQLITE_COMMON = (
    "WITH v(id) AS (VALUES %s) SELECT v.id FROM v "
    "WHERE NOT EXISTS (SELECT 1 FROM shared_blobs s WHERE s.blob_id = v.id) "
    "AND (SELECT count(*) FROM (SELECT 1 FROM cvd_blobs o WHERE o.blob_id = v.id "
    "AND o.cvd_id NOT IN (SELECT g.id FROM cvds g JOIN flex_instances f "
    "ON f.device_id = g.device_id) LIMIT ?)) >= ?"
)


def _end_claims(c: Connection, cvd_id: str, ids: list[bytes]) -> None:
    """Delete the CVD's claims on ``ids``. On SQLite one ``IN`` per ``BATCH`` ids as the
    driver's statement (a quarter less CPU than deleting by primary key row by row, which
    the ``executemany`` did: 28 against 38 ms for 15,000 claims); elsewhere by primary
    key, row by row (building a Core ``IN`` of thousands cost more than the delete)."""
    if c.dialect.name == "sqlite":
        for part in id_batches(ids):
            sql = "DELETE FROM blob_claims WHERE blob_id IN (%s) AND cvd_id = ?"
            c.exec_driver_sql(sql % ",".join("?" * len(part)), (*part, cvd_id))
        return
    c.execute(
        delete(blob_claims).where(
            blob_claims.c.blob_id == bindparam("blob_id"),
            blob_claims.c.cvd_id == bindparam("cvd_id"),
        ),
        [{"blob_id": i, "cvd_id": cvd_id} for i in ids],
    )


def _mark_shared(c: Connection, ids: list[bytes]) -> None:
    for part in id_batches(sorted(ids)):
        write_rows(
            c,
            "INSERT INTO shared_blobs (blob_id) VALUES (?) ON CONFLICT DO NOTHING",
            lambda: postgresql.insert(shared_blobs).on_conflict_do_nothing(),
            ("blob_id",),
            [(i,) for i in part],
        )


def settle(
    c: Connection, cvd_id: str, foreign: list[bytes], stored: set[bytes], sharing: Sharing
) -> list[bytes]:
    """Blobs a commit names that this CVD does not own: which it may take as its own.

    Returns them when every one is stored and shared. Raises ``UploadsPendingError``
    when some are still promised (claimed by ``threshold`` other CVDs), else
    ``MissingDataError`` with the message a blob nobody holds gets."""
    if sharing.on and foreign:
        shared = _shared(c, [i for i in foreign if i in stored])
        rest = [i for i in foreign if not (i in stored and i in shared)]
        owners, claims = _holders(c, cvd_id, rest, stored, now())
        # (held by enough CVDs but not marked shared: recorded before revision 0009)
        rest = [i for i in rest if len(owners.get(i, ())) < sharing.threshold]
        if not rest:
            return foreign
        promised = [i for i in rest if _holding(i, owners, claims) >= sharing.threshold]
        if len(promised) == len(rest):
            waiting = UploadsPendingError(
                f"the snapshot names {len(promised)} chunks or trees other endpoints are "
                "still uploading; commit again in a moment"
            )
            waiting.promised = tuple(promised)
            raise waiting
        foreign = [i for i in rest if i not in promised]
    raise MissingDataError(
        f"the snapshot names {len(foreign)} chunks or trees the server does not hold "
        f"for this CVD (first {foreign[0].hex()[:16]}); upload them before committing"
    )


def committed(c: Connection, cvd_id: str) -> None:
    """The CVD committed: whatever it claimed and did not send, it will not send now."""
    _drop_claims(c, cvd_id)


def others_uploading(c: Connection, cvd_id: str) -> bool:
    """Whether a CVD other than ``cvd_id`` is uploading now (its lease is live): false
    between syncs (``commit_snapshot`` then cuts SQLite's log back)."""
    return _others_live(c, cvd_id, now())


#: How long a commit answered "uploads pending" is remembered (``PendingCommits``).
PENDING_MEMO_SECONDS = 60.0
#: Ids remembered for all commits together (32 bytes each: 3.2 MB).
PENDING_MEMO_IDS = 100_000


class PendingCommits:
    """Commits answered "uploads pending", per server process (thread-safe): for each
    (CVD, root), the ids the commit's walk found still promised, the gc epoch it walked
    under and when.

    A commit walk stops at the first batch of ids other endpoints are still uploading
    (``settle``), and the agent asks again a moment later: without this, each retry
    walks again to the same batch (~70 ms of CPU with 20 endpoints syncing at once). With
    it, a retry first settles the remembered ids alone and, when they are still
    promised, is answered "uploads pending" again without a walk.

    An optimisation only: it never lets a commit land, only answers "uploads pending"
    sooner, and only while the ids it names are still promised now (their claimants'
    leases live). Anything else (ids settled, now missing, another gc epoch, the memo
    older than ``PENDING_MEMO_SECONDS``, another server process, a restart) runs the
    full walk, which decides."""

    def __init__(self, seconds: float = PENDING_MEMO_SECONDS, limit: int = PENDING_MEMO_IDS):
        self.seconds, self.limit = seconds, limit
        self._memo: OrderedDict[tuple[str, bytes], tuple[list[bytes], int, float]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def remember(self, cvd_id: str, root: bytes, ids: list[bytes], epoch: int) -> None:
        if not ids or len(ids) > self.limit:
            return
        with self._lock:
            self._drop((cvd_id, root))
            self._memo[(cvd_id, root)] = (list(ids), epoch, time.monotonic())
            self._held += len(ids)
            while self._held > self.limit:
                self._drop(next(iter(self._memo)))

    def recall(self, cvd_id: str, root: bytes, epoch: int) -> list[bytes] | None:
        """The ids a walk of this commit last stopped at, if remembered under ``epoch``
        less than ``seconds`` ago (else forgotten)."""
        with self._lock:
            hit = self._memo.get((cvd_id, root))
            if hit is None:
                return None
            ids, at_epoch, at = hit
            if at_epoch != epoch or time.monotonic() - at > self.seconds:
                self._drop((cvd_id, root))
                return None
            return ids

    def forget(self, cvd_id: str, root: bytes) -> None:
        with self._lock:
            self._drop((cvd_id, root))

    def _drop(self, key: tuple[str, bytes]) -> None:
        gone = self._memo.pop(key, None)
        if gone is not None:
            self._held -= len(gone[0])

    def __len__(self) -> int:
        return len(self._memo)
