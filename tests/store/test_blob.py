from __future__ import annotations

import os

import pytest

from lamina.errors import IntegrityError
from lamina.store import blob
from lamina.store.blob import BlobKind

DK = os.urandom(32)
IK = os.urandom(32)


def test_round_trip_compressible_and_not() -> None:
    for data in (b"a" * 100_000, os.urandom(50_000), b""):
        bid, sealed = blob.seal_plain(DK, IK, BlobKind.DATA, data)
        assert blob.open_sealed(DK, IK, BlobKind.DATA, bid, sealed, len(data)) == data


def test_compressible_data_is_stored_compressed_and_random_raw() -> None:
    _, sealed = blob.seal_plain(DK, IK, BlobKind.DATA, b"x" * 100_000)
    assert len(sealed) < 1000
    rnd = os.urandom(10_000)
    _, sealed = blob.seal_plain(DK, IK, BlobKind.DATA, rnd)
    assert len(sealed) == len(rnd) + blob.OVERHEAD


def test_blobs_are_compressed_at_level_1_and_a_level_3_blob_still_reads() -> None:
    """The level is no part of the format: blobs written at level 3 (before session 13)
    open as before; new ones are level-1 frames (a third less CPU per byte)."""
    import zstandard

    data = b"".join(b"line %d of a text file, compressible\n" % i for i in range(5000))
    flag, payload = blob.compress(data)
    assert flag == blob.FLAG_ZSTD
    assert payload == zstandard.ZstdCompressor(level=1).compress(data)
    old = zstandard.ZstdCompressor(level=3).compress(data)
    assert old != payload
    bid = blob.blob_id(IK, data)
    sealed = blob.seal(DK, BlobKind.DATA, bid, blob.FLAG_ZSTD, old)
    assert blob.open_sealed(DK, IK, BlobKind.DATA, bid, sealed, len(data)) == data


def test_id_is_keyed() -> None:
    assert blob.blob_id(IK, b"hello") != blob.blob_id(os.urandom(32), b"hello")
    assert blob.blob_id(IK, b"hello") == blob.blob_id(IK, b"hello")


def test_ciphertext_hides_content() -> None:
    data = b"secret payroll data " * 100
    _, sealed = blob.seal_plain(DK, IK, BlobKind.DATA, data)
    assert b"payroll" not in sealed


def test_wrong_key_is_integrity_error() -> None:
    bid, sealed = blob.seal_plain(DK, IK, BlobKind.DATA, b"data")
    with pytest.raises(IntegrityError, match="authentication"):
        blob.open_sealed(os.urandom(32), IK, BlobKind.DATA, bid, sealed, 4)


def test_flipped_bit_is_integrity_error() -> None:
    bid, sealed = blob.seal_plain(DK, IK, BlobKind.DATA, b"data" * 100)
    bad = bytearray(sealed)
    bad[20] ^= 1
    with pytest.raises(IntegrityError):
        blob.open_sealed(DK, IK, BlobKind.DATA, bid, bytes(bad), 400)


def test_blob_under_another_id_or_kind_is_refused() -> None:
    bid, sealed = blob.seal_plain(DK, IK, BlobKind.DATA, b"data")
    with pytest.raises(IntegrityError):
        blob.open_sealed(DK, IK, BlobKind.DATA, os.urandom(32), sealed, 4)
    with pytest.raises(IntegrityError):
        blob.open_sealed(DK, IK, BlobKind.TREE, bid, sealed, 4)


def test_truncated_blob() -> None:
    bid, sealed = blob.seal_plain(DK, IK, BlobKind.DATA, b"data")
    with pytest.raises(IntegrityError, match="truncated"):
        blob.open_sealed(DK, IK, BlobKind.DATA, bid, sealed[:10], 4)


def test_content_not_matching_id_is_refused() -> None:
    # Sealed correctly under the id of other content: encryption passes, hash check must not.
    wrong_id = blob.blob_id(IK, b"other")
    sealed = blob.seal(DK, BlobKind.DATA, wrong_id, blob.FLAG_RAW, b"data")
    with pytest.raises(IntegrityError, match="does not match its id"):
        blob.open_sealed(DK, IK, BlobKind.DATA, wrong_id, sealed, 4)


def test_decompression_bomb_is_bounded() -> None:
    data = b"\0" * (8 * 1024 * 1024)
    bid, sealed = blob.seal_plain(DK, IK, BlobKind.DATA, data)
    # The index claims a small raw length: the decoder must refuse, not inflate 8 MiB.
    with pytest.raises(IntegrityError):
        blob.open_sealed(DK, IK, BlobKind.DATA, bid, sealed, 1024)


def test_unknown_flag() -> None:
    bid = blob.blob_id(IK, b"data")
    sealed = blob.seal(DK, BlobKind.DATA, bid, 7, b"data")
    with pytest.raises(IntegrityError, match="compression flag"):
        blob.open_sealed(DK, IK, BlobKind.DATA, bid, sealed, 4)


def test_seal_many_makes_the_bytes_seal_parts_makes_under_the_same_nonces() -> None:
    """``seal_many`` (a bundle's intake) seals each blob as ``seal_parts`` does, the i-th
    under the i-th nonce, and each unseals to its flag and payload."""
    key = os.urandom(32)
    blobs = [
        (kind, os.urandom(32), flag, os.urandom(n), n)
        for n, kind, flag in [
            (0, BlobKind.DATA, 0),
            (100, BlobKind.TREE, 1),
            (5000, BlobKind.DATA, 1),
        ]
    ]
    nonces = os.urandom(blob.NONCE.size * len(blobs))
    sealed = blob.seal_many(key, blobs, nonces)
    size = blob.NONCE.size
    for i, (kind, bid, flag, payload, _) in enumerate(blobs):
        nonce = nonces[i * size : (i + 1) * size]
        assert (nonce, sealed[i]) == blob.seal_parts(key, kind, bid, flag, payload, nonce)
        assert blob.unseal(key, kind, bid, nonce + sealed[i]) == (flag, payload)
    with pytest.raises(ValueError, match="nonces"):
        blob.seal_many(key, blobs, nonces[:-1])
