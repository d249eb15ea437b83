"""A bundle's intake: what an agent uploads is verified, proven and stored.

Nothing an agent sends is trusted: every blob of a bundle is decompressed within its
declared size and re-hashed against its id, a blob the store holds already too (the
upload is the device's proof of possession), and trees must decode (no unsafe names).
Each bundle is durable and indexed before its request returns, so an interrupted sync
resumes without sending it again; the small packs this writes are rolled into full
ones once they add up to a pack size (``store.repack``). The commit is ``sync``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from lamina.errors import IntegrityError, TooLargeError
from lamina.protocol.bundle import BundleBlob, decode_bundle
from lamina.server.services.sync import DecodedTrees
from lamina.store import blob, repack
from lamina.store.blob import BlobKind
from lamina.store.repository import Store
from lamina.tree.model import Entry, decode_tree

#: A directory listing an agent may upload (about 300,000 entries); bounds the memory
#: a request can make the server spend inflating it.
MAX_UPLOADED_TREE = 32 * 1024 * 1024
#: Content a bundle may declare in all, after duplicates are dropped: 4x the default
#: body limit, so a small bundle cannot make the server inflate without bound.
MAX_BUNDLE_RAW = 256 * 1024 * 1024


class Intake(NamedTuple):
    """What a bundle's intake stored (``upload_blobs``)."""

    #: Blobs new to the store.
    new: int
    #: The gc epoch the bundle's writer began under (``RecentUploads``).
    epoch: int = 0
    #: What it stored, (kind, id, raw length) each: blobs the store did not hold as
    #: their kind before this bundle.
    stored: tuple[tuple[BlobKind, bytes, int], ...] = ()

    @property
    def first(self) -> frozenset[bytes]:
        """The ids of ``stored`` (so, but for a race with another device's upload, no
        other CVD owns them yet)."""
        return frozenset(bid for _, bid, _ in self.stored)


def upload_bundle(store: Store, body: bytes, max_raw: int = MAX_BUNDLE_RAW) -> int:
    """Verify and store a bundle; return how many blobs were new (``upload_blobs``)."""
    return upload_blobs(store, decode_bundle(body), max_raw).new


def upload_blobs(
    store: Store,
    items: list[BundleBlob],
    max_raw: int = MAX_BUNDLE_RAW,
    trees: DecodedTrees | None = None,
    owns: Callable[[list[bytes]], set[bytes]] | None = None,
) -> Intake:
    """Verify and store a decoded bundle (``decode_bundle``: decoded once, by the
    caller that also needs its ids); return what was new (``Intake``). The new trees,
    decoded here to be checked, are kept in ``trees`` for the commit (stored first).

    Cheap checks come first: each (id, kind) is taken once however often the bundle
    repeats it, and the declared sizes must add up to at most ``max_raw``. Then every
    blob is inflated and hashed, all of them before anything is written (one bad blob
    refuses the whole bundle), and only those the store does not hold *as that kind*
    are stored. A blob the store holds already is checked too: the upload is the
    device's proof that it holds the content (``access.record`` makes the blob its
    CVD's, readable by its device), and an id alone proves nothing, as every agent can
    compute the id of content it guesses (the content oracle: ``docs/design.md``).
    With ``owns`` (which of these ids the uploading CVD owns), a held blob the CVD does
    not own is written again, a surplus copy the gc frees: the bundle then costs the
    same work (a pack written and synced) whether another endpoint held the content or
    not, so its answer's time does not tell.
    """
    keys = store.keys
    unique: dict[tuple[bytes, BlobKind], BundleBlob] = {}
    declared = 0
    for it in items:
        kind = blob.KINDS.get(it.kind)
        if kind is None:
            raise IntegrityError(f"bundle blob {it.id.hex()[:16]} has unknown kind {it.kind}")
        if kind == BlobKind.SNAPSHOT:
            raise IntegrityError("agents do not upload snapshot records; commit instead")
        limit = keys.chunking.max_size if kind == BlobKind.DATA else MAX_UPLOADED_TREE
        if it.raw_length > limit:
            raise IntegrityError(
                f"bundle blob {it.id.hex()[:16]} claims {it.raw_length} bytes, above the {limit} limit"
            )
        if (it.id, kind) in unique:
            continue
        unique[(it.id, kind)] = it
        declared += it.raw_length
        if declared > max_raw:
            raise TooLargeError(
                f"bundle declares more than {max_raw} bytes of content; send smaller bundles"
            )
    with store.writer() as w:
        # Asked of the catalog, one lookup of the bundle's ids per kind: not through
        # ``Writer.need``, whose shortcut for a long backup (loading every data id of the
        # store once a session has asked about 4,096) cost each bundle a count of the
        # whole ``blobs`` table and, on a small store, a read of all its ids.
        fresh = {
            kind: store.catalog.missing({bid for bid, k in unique if k == kind}, kind=kind)
            for kind in (BlobKind.DATA, BlobKind.TREE)
        }
        held = [bid for bid, kind in unique if bid not in fresh[kind]]
        theirs = set(held) - owns(held) if owns is not None and held else set()
        verified: list[tuple[BlobKind, bytes, BundleBlob]] = []
        surplus: list[tuple[BlobKind, bytes, BundleBlob]] = []
        decoded: list[tuple[bytes, list[Entry]]] = []
        for (bid, kind), it in unique.items():
            try:
                data = blob.decompress(it.flag, it.payload, it.raw_length)
            except IntegrityError as e:
                raise IntegrityError(f"bundle blob {bid.hex()[:16]}: {e.message}") from e
            if blob.blob_id(keys.chunking.id_key, data) != bid:
                raise IntegrityError(f"bundle blob {bid.hex()[:16]}: content does not match its id")
            if bid not in fresh[kind]:
                if bid in theirs:  # proven; held for another CVD: written all the same
                    surplus.append((kind, bid, it))
                continue
            if kind == BlobKind.TREE:
                # refuses unsafe names and malformed trees now, not at restore
                decoded.append((bid, decode_tree(data)))
            verified.append((kind, bid, it))
        # every blob checked: now sealed, into the pack
        w.put_payloads(
            [(k, bid, it.flag, it.payload, it.raw_length) for k, bid, it in verified + surplus]
        )
        w.flush()
        new, epoch = len(verified), w.epoch
    if trees is not None:
        for bid, entries in decoded:
            trees.put(bid, entries)
    repack.roll_if_due(store)  # after the bundle is durable: small packs into full ones
    return Intake(new, epoch, tuple((kind, bid, it.raw_length) for kind, bid, it in verified))
