from __future__ import annotations

import os

import pytest

from lamina.errors import IntegrityError
from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.pack import FOOTER, PackWriter, read_entries

DK = os.urandom(32)
IK = os.urandom(32)


def _pack(n: int = 5) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    w = PackWriter(DK)
    items = []
    for i in range(n):
        data = os.urandom(1000 + i)
        bid, sealed = blob.seal_plain(DK, IK, BlobKind.DATA, data)
        w.add(BlobKind.DATA, bid, sealed, len(data))
        items.append((bid, data))
    p = w.finish()
    return p.data, items


def test_pack_lists_its_blobs_and_each_opens() -> None:
    data, items = _pack()
    entries = read_entries(DK, data)
    assert [e.id for e in entries] == [bid for bid, _ in items]
    for e, (_, plain) in zip(entries, items, strict=True):
        assert (
            blob.open_sealed(
                DK, IK, e.kind, e.id, data[e.offset : e.offset + e.length], e.raw_length
            )
            == plain
        )


def test_pack_name_is_content_hash() -> None:
    import blake3

    w = PackWriter(DK)
    bid, sealed = blob.seal_plain(DK, IK, BlobKind.TREE, b"tree")
    w.add(BlobKind.TREE, bid, sealed, 4)
    p = w.finish()
    assert p.name == blake3.blake3(p.data).hexdigest()


@pytest.mark.parametrize("cut", [1, 5, FOOTER.size, FOOTER.size + 30])
def test_truncated_pack(cut: int) -> None:
    data, _ = _pack()
    with pytest.raises(IntegrityError):
        read_entries(DK, data[:-cut])


def test_wrong_magic_and_version() -> None:
    data, _ = _pack()
    with pytest.raises(IntegrityError, match="magic"):
        read_entries(DK, data[:-12] + b"XXXX" + data[-8:])
    bad = bytearray(data)
    bad[-8] = 9
    with pytest.raises(IntegrityError, match="version"):
        read_entries(DK, bytes(bad))


def test_hostile_header_length() -> None:
    data, _ = _pack()
    bad = data[:-4] + (2**31).to_bytes(4, "little")
    with pytest.raises(IntegrityError, match="header length"):
        read_entries(DK, bad)


def test_header_under_wrong_key() -> None:
    data, _ = _pack()
    with pytest.raises(IntegrityError, match="authentication"):
        read_entries(os.urandom(32), data)


def test_a_blob_sealed_in_parts_makes_the_pack_whole_blobs_make() -> None:
    """``seal_parts`` is ``seal`` unjoined, and a pack given parts (the server's intake)
    holds the bytes one given whole sealed blobs holds: same format, one copy fewer."""
    nonce, header_nonce = bytes(range(12)), bytes(range(12, 24))
    whole, parted = PackWriter(DK), PackWriter(DK)
    for i in range(4):
        payload = os.urandom(100 + 1000 * i)
        bid = os.urandom(32)
        parts = blob.seal_parts(DK, BlobKind.TREE, bid, 0, payload, nonce)
        sealed = blob.seal(DK, BlobKind.TREE, bid, 0, payload, nonce)
        assert parts[0] == nonce and b"".join(parts) == sealed
        whole.add(BlobKind.TREE, bid, sealed, len(payload))
        parted.add_parts(BlobKind.TREE, bid, parts, len(payload))
        assert len(parted) == len(whole)
    a, b = whole.finish(header_nonce), parted.finish(header_nonce)
    assert (a.name, a.data, a.entries) == (b.name, b.data, b.entries)
    assert len(parted) == 0 and parted.count == 0  # ready for the next pack
