"""Small packs rolled into full ones; the repack step the collector shares.

A server acknowledges a bundle or a commit only once its blobs are in a pack that
is durable and indexed, so a stream of small uploads writes small packs. These are
the durable staging area: every server reads them, ``need`` counts them present, a
snapshot may name their blobs, and a crash leaves nothing to replay. Once the small
packs add up to a full pack, they are *rolled*: their live sealed blobs are copied
(no decryption) into new packs of the store's pack size, and only then are the old
ones dropped from the index and deleted.

Order of a repack (each step a crash point of ``fail_after``):

0. the new packs are durable and indexed (the writer's order: file, then rows);
   the blobs now have two rows, which reads and ``need`` both accept;
1. per old pack: its rows are dropped and its own row set ``writing`` again, in one
   transaction (``finish_repack``; before session 23 the row was dropped and made
   again in a second one, and a crash between left a file no row named, for good), so
   a crash from here on leaves an orphan that ``gc`` deletes after its grace period
   (``store check``: a warning, never damage);
2. its file is deleted;
3. its ``writing`` row is dropped.

Rolling and the collector take the same store lock, so they never move the same pack.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import blake3

from lamina.errors import IntegrityError, LaminaError
from lamina.store.catalog import PACK_OK, BlobRow, PackInfo
from lamina.store.locks import HeldLock
from lamina.store.pack import pack_object_name
from lamina.store.repository import Store

log = logging.getLogger(__name__)

#: The collector's lock: rolling and gc never run at once on one store.
LOCK = "gc"
LOCK_TTL = dt.timedelta(minutes=10)
#: Small packs rolled at most at once, in pack sizes (the rest wait for the next roll).
ROLL_BATCH = 4


class InjectedCrash(Exception):
    """Raised by the ``fail_after`` test hook to stop a repack dead, like a power cut."""


@dataclass
class RepackReport:
    packs_read: int = 0
    packs_written: int = 0
    packs_deleted: int = 0
    bytes_moved: int = 0


def move_live(
    store: Store,
    olds: Sequence[tuple[PackInfo, Sequence[BlobRow]]],
    fail_after: int = -1,
    check: Callable[[], None] = lambda: None,
) -> RepackReport:
    """Copy each old pack's ``rows`` into new full packs, then drop and delete the old packs.

    An old pack whose content no longer matches its name is left alone (``store
    check --read-data`` names it); its rows are not copied. ``check`` is asked before
    each old pack's rows are dropped (``HeldLock.check``: stop once the lock was lost).
    """
    cat = store.catalog
    rep = RepackReport()
    step = 0

    def crash_point() -> None:
        nonlocal step
        if step == fail_after:
            raise InjectedCrash(f"injected crash after {step} repack steps")
        step += 1

    moved: list[tuple[PackInfo, list[bytes]]] = []
    with store.writer() as w:
        for pack, rows in olds:
            try:
                data = store.backend.read(pack_object_name(pack.name))
                if blake3.blake3(data).hexdigest() != pack.name:
                    raise IntegrityError(f"pack {pack.name[:16]} does not match its name")
            except LaminaError as e:
                log.warning("not repacking pack %s: %s", pack.name[:16], e.message)
                continue
            for r in rows:
                w.put_sealed(r.kind, r.id, data[r.offset : r.offset + r.length], r.raw_length)
                rep.bytes_moved += r.length
            moved.append((pack, [r.id for r in rows]))
            rep.packs_read += 1
        w.flush()
        rep.packs_written = w.packs_written
    crash_point()
    for pack, ids in moved:
        check()
        if not cat.finish_repack(pack.name, ids):
            continue  # a row still points into it (a writer rescued a blob): it stays
        # ``finish_repack`` left its row ``writing`` until its file is gone, so a crash
        # before the delete leaves an orphan the collector removes, not a file no row names.
        crash_point()
        store.backend.delete(pack_object_name(pack.name))
        crash_point()
        cat.drop_pack(pack.name)
        rep.packs_deleted += 1
        crash_point()
    return rep


def roll_small(store: Store, *, force: bool = False, fail_after: int = -1) -> RepackReport | None:
    """Roll the oldest small packs into full ones once they add up to a pack size.

    ``force`` rolls whatever small packs there are (two at least). None when there
    was nothing to roll or the collector holds the store.
    """
    cat = store.catalog
    # a killed roll's lock is taken over, not waited out; a live one's renewed
    lock = HeldLock(cat, LOCK, LOCK_TTL, "the collector holds the store")
    if not lock.take():
        return None
    with lock:
        chosen: list[tuple[PackInfo, list[BlobRow]]] = []
        total = 0
        for p in sorted(cat.packs(), key=lambda p: p.seq):
            if p.state != PACK_OK or not store.is_small(p.size):
                continue
            chosen.append((p, [r for r in cat.pack_blobs(p.name) if not r.condemned]))
            total += p.size
            if total >= ROLL_BATCH * store.pack_size:
                break
        if len(chosen) < 2 or (not force and total < store.pack_size):
            return None
        return move_live(store, chosen, fail_after, lock.check)


def roll_if_due(store: Store) -> RepackReport | None:
    """After a write: roll when this process wrote a pack size of small packs since the
    last roll. A failure is logged, never raised: the caller's data is already durable."""
    if not store.take_small_due():
        return None
    try:
        return roll_small(store)
    except LaminaError as e:
        log.warning("rolling small packs failed (they stay as they are): %s", e.message)
        return None
