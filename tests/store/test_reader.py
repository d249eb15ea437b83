"""Reading many blobs at once (``store/reader.py``, ``Store.open_many``/``unseal_many``):
each pack's needed ranges coalesced into few range reads, every blob still verified."""

from __future__ import annotations

import os

import pytest

from lamina.errors import IntegrityError
from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.catalog import BlobLocation
from lamina.store.pack import pack_object_name
from lamina.store.reader import GAP, SPAN, plan_runs
from lamina.store.repository import Store


def loc(pack: str, offset: int, length: int) -> BlobLocation:
    return BlobLocation(pack, offset, length, length, BlobKind.DATA)


def test_runs_merge_neighbours_in_pack_order_and_split_on_gaps_and_span() -> None:
    located = [
        (b"c", loc("p1", 1100, 100)),  # a gap of 100 after a
        (b"a", loc("p1", 0, 1000)),
        (b"x", loc("p2", 0, 10)),
        (b"b", loc("p1", 1200 + GAP, 500)),  # a gap of exactly GAP: same run
        (b"d", loc("p1", 1700 + 2 * GAP + 1, 10)),  # one byte more: a new run
        (b"e", loc("p1", 10**8, SPAN)),
        (b"f", loc("p1", 10**8 + SPAN, 1)),  # adjacent, but one byte past SPAN: a new run
    ]
    runs = plan_runs(located)
    assert [(r.pack, r.start, r.end, [b for b, _ in r.blobs]) for r in runs] == [
        ("p1", 0, 1700 + GAP, [b"a", b"c", b"b"]),
        ("p1", 1700 + 2 * GAP + 1, 1710 + 2 * GAP + 1, [b"d"]),
        ("p1", 10**8, 10**8 + SPAN, [b"e"]),
        ("p1", 10**8 + SPAN, 10**8 + SPAN + 1, [b"f"]),
        ("p2", 0, 10, [b"x"]),
    ]


class CountingReads:
    """The store's backend with its range reads counted (a real local backend)."""

    def __init__(self, store: Store) -> None:
        self.reads: list[tuple[str, int, int | None]] = []
        real = store.backend.read

        def read(name: str, offset: int = 0, length: int | None = None) -> bytes:
            self.reads.append((name, offset, length))
            return real(name, offset, length)

        store.backend.read = read  # type: ignore[method-assign]
        store._runs._read = read  # the reader holds the bound method it was given


def put_many(store: Store, blobs: list[bytes]) -> list[bytes]:
    with store.writer() as w:
        ids = [w.put(BlobKind.DATA, b) for b in blobs]
    return ids


def test_open_many_reads_a_pack_in_one_range_and_answers_in_the_order_asked(
    store: Store,
) -> None:
    plain = [os.urandom(2000) for _ in range(40)]  # 80 KB: one pack of the fixture's 256 KiB
    ids = put_many(store, plain)
    assert len({loc.pack for loc in store.catalog.locate(ids).values()}) == 1
    counted = CountingReads(store)
    asked = [*reversed(ids), ids[3]]  # any order, an id twice
    assert store.open_many(asked) == [*reversed(plain), plain[3]]
    assert len(counted.reads) == 1
    # Without coalescing, forty reads (one per blob).


def test_open_many_answers_a_prefix_under_its_limit(store: Store) -> None:
    plain = [os.urandom(1000) for _ in range(10)]
    ids = put_many(store, plain)
    assert store.open_many(ids, limit=3500) == plain[:3]
    assert store.open_many(ids, limit=10) == plain[:1]  # at least one


def test_unseal_many_hands_out_the_stored_form_that_inflates_to_the_plaintext(
    store: Store,
) -> None:
    plain = [b"compressible " * 500, os.urandom(3000)]
    ids = put_many(store, plain)
    out = store.unseal_many(ids)
    assert [raw for raw, _, _ in out] == [len(p) for p in plain]
    assert out[0][1] == blob.FLAG_ZSTD and len(out[0][2]) < len(plain[0])  # not inflated
    assert [blob.decompress(flag, payload, raw) for raw, flag, payload in out] == plain


def test_a_damaged_blob_in_a_coalesced_range_fails_with_integrity_error(store: Store) -> None:
    plain = [os.urandom(2000) for _ in range(8)]
    ids = put_many(store, plain)
    where = store.catalog.locate([ids[5]])[ids[5]]
    path = store.backend.root / pack_object_name(where.pack)  # type: ignore[attr-defined]
    raw = bytearray(path.read_bytes())
    raw[where.offset + 20] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=ids[5].hex()[:16]):
        store.open_many(ids)
    with pytest.raises(IntegrityError, match=ids[5].hex()[:16]):
        store.unseal_many(ids)
    assert store.open_many(ids[:5]) == plain[:5]  # the others still read
