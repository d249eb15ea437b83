"""Formats frozen by bytes: blob v1, pack v1 and tree v1 written with a fixed key and
fixed nonces must give exactly these bytes, and these bytes must read back.

A format change made on both the writer and the reader passes every round-trip test;
it fails here. Such a change needs a new format version (and these tests kept for v1).
"""

from __future__ import annotations

import blake3

from lamina.store.blob import BlobKind, blob_id, open_sealed, seal_plain
from lamina.store.pack import PackEntry, PackWriter, read_entries
from lamina.tree.model import Entry, decode_tree, encode_tree

DATA_KEY = bytes(range(32))
ID_KEY = bytes(range(32, 64))
BLOB_NONCE = bytes(range(100, 112))
HEADER_NONCE = bytes(range(50, 62))
DATA = b"lamina format v1, frozen"

BLOB_ID = "6d64ac07fc6ee7020e2c3a40052957aaa5417d19f844bd13e99af90ed0905b4b"
#: nonce(12) || AES-256-GCM(flag 0 (raw) || data, aad = kind || id)
SEALED_RAW = (
    "6465666768696a6b6c6d6e6f4877bf0b108737be580d2d85bb114a8b73ee266cf9038917c961"
    "59670b49eb9a6ab9fc9253c175871e"
)
#: b"abc" * 100, zstd-compressed (flag 1) by the writer of today; only read back here,
#: since another zstd release may compress the same bytes differently.
SEALED_ZSTD = (
    "c8c9cacbcccdcecfd0d1d2d31050d4f47bacd720213c1fa67f648815e0a146c60cc781ba23e5"
    "55f0ddcb4d658d99adc07a"
)
PACK_NAME = "3a2a137e99d6231599671d5565fdb99c9ef4e86f4c4a906f2d58d9581e3af961"
PACK = (
    SEALED_RAW + "32333435363738393a3b3c3d57ceef04e551e54f6afb846159e3d3c226b632d623e8e696c8"
    "e24f25a4da018b2dd05a105ce332b62f460dac4f82194b38371f1b107337934c4d504b0100000044000000"
)
TREE = (
    "82a17601a7656e7472696573938aa46e616d65c40968656c6c6f2e747874a474797065a466696c65a4"
    "6d6f6465cd01a0a3756964cd03e8a3676964cd03e8a475736572a5616c696365a567726f7570a561"
    "6c696365a56d74696d65cf17979cfe3d85cd15a473697a6518a7636f6e74656e7492c4206d64ac07"
    "fc6ee7020e2c3a40052957aaa5417d19f844bd13e99af90ed0905b4bcd10008aa46e616d65c4046c"
    "696e6ba474797065a773796d6c696e6ba46d6f6465cd01ffa375696400a367696400a475736572a0"
    "a567726f7570a0a56d74696d6500a473697a6500a6746172676574c40968656c6c6f2e7478748ba4"
    "6e616d65c403737562a474797065a3646972a46d6f6465cd01eda375696400a367696400a4757365"
    "72a0a567726f7570a0a56d74696d6500a473697a6500a67861747472739192c406757365722e6bc4"
    "0176a773756274726565c4200000000000000000000000000000000000000000000000000000000000000000"
)


def _entries() -> list[Entry]:
    bid = bytes.fromhex(BLOB_ID)
    return [
        Entry(
            name=b"hello.txt",
            type="file",
            mode=0o640,
            uid=1000,
            gid=1000,
            user="alice",
            group="alice",
            mtime=1_700_000_000_123_456_789,
            size=len(DATA),
            content=[bid, 4096],
        ),
        Entry(name=b"link", type="symlink", mode=0o777, target=b"hello.txt"),
        Entry(name=b"sub", type="dir", mode=0o755, subtree=bytes(32), xattrs=[(b"user.k", b"v")]),
    ]


def test_blob_v1_bytes() -> None:
    bid, sealed = seal_plain(DATA_KEY, ID_KEY, BlobKind.DATA, DATA, BLOB_NONCE)
    assert bid.hex() == BLOB_ID == blob_id(ID_KEY, DATA).hex()
    assert sealed.hex() == SEALED_RAW
    assert open_sealed(DATA_KEY, ID_KEY, BlobKind.DATA, bid, sealed, len(DATA)) == DATA


def test_compressed_blob_v1_still_opens() -> None:
    data = b"abc" * 100
    bid = blob_id(ID_KEY, data)
    assert (
        open_sealed(DATA_KEY, ID_KEY, BlobKind.DATA, bid, bytes.fromhex(SEALED_ZSTD), 300) == data
    )


def test_pack_v1_bytes() -> None:
    w = PackWriter(DATA_KEY)
    w.add(BlobKind.DATA, bytes.fromhex(BLOB_ID), bytes.fromhex(SEALED_RAW), len(DATA))
    pack = w.finish(HEADER_NONCE)
    assert pack.data.hex() == PACK
    assert pack.name == PACK_NAME == blake3.blake3(bytes.fromhex(PACK)).hexdigest()
    entries = read_entries(DATA_KEY, bytes.fromhex(PACK))
    assert entries == [PackEntry(BlobKind.DATA, bytes.fromhex(BLOB_ID), 0, 53, len(DATA))]


def test_tree_v1_bytes() -> None:
    assert encode_tree(_entries()).hex() == TREE
    assert decode_tree(bytes.fromhex(TREE)) == _entries()
