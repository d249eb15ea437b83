"""Naming, compressing and sealing one blob (a data chunk, a tree, a snapshot record).

Sealed blob, format version 1::

    offset  size  field
    0       12    nonce (random per blob)
    12      n     AES-256-GCM ciphertext of  flag(1) || payload  (n includes the 16-byte tag)

    flag 0: payload is the plaintext itself
    flag 1: payload is a zstd frame of the plaintext (used only when it is smaller)
    associated data: kind(1) || blob id(32)

The blob id is keyed BLAKE3-256 of the plaintext (key: the store's id key). A
reader must check, in this order: the GCM tag (wrong key or damaged bytes), the
flag, the decompressed size against the index's raw length, and finally that the
plaintext hashes to the id. Any failure is an ``IntegrityError``; wrong bytes are
never handed on.
"""

from __future__ import annotations

import enum
import functools
import os
import struct
import threading
from typing import TYPE_CHECKING

import blake3
import zstandard

from lamina.errors import IntegrityError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE = struct.Struct("<12s")
TAG_SIZE = 16
OVERHEAD = NONCE.size + 1 + TAG_SIZE
ID_SIZE = 32
#: The level blobs are compressed at (not part of the format: a reader inflates any
#: level). 1 since session 13: zstd was the largest cost per byte of a first backup, and
#: level 1 takes a third less CPU than 3 for about 6% more stored bytes on /usr
#: (docs/design.md, "The engine's bytes per second").
ZSTD_LEVEL = 1
#: Upper bound on any blob's plaintext (a tree of a very large directory).
MAX_BLOB_SIZE = 256 * 1024 * 1024

FLAG_RAW = 0
FLAG_ZSTD = 1


class BlobKind(enum.IntEnum):
    DATA = 0
    TREE = 1
    SNAPSHOT = 2


#: A kind's number (a catalog row's, a bundle's) as the enum: a dict probe per blob,
#: where calling ``BlobKind`` cost more.
KINDS = {int(k): k for k in BlobKind}


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


@functools.lru_cache(maxsize=4)
def _aead(data_key: bytes) -> AESGCM:
    """One cipher object per key, not per blob (half the cost of sealing a small blob;
    it keeps no state between calls, so threads share it). ``cryptography`` loads with
    the first one: an agent, which compresses and hashes but never seals, does not
    load it (~6 ms of every ``agent run``)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(data_key)


def _invalid_tag() -> type[Exception]:
    """AES-GCM's authentication failure (evaluated only when ``decrypt`` raised)."""
    from cryptography.exceptions import InvalidTag

    return InvalidTag


def blob_id(id_key: bytes, data: bytes | memoryview) -> bytes:
    """Keyed BLAKE3-256 of the plaintext."""
    return blake3.blake3(data, key=id_key).digest()


def compress(data: bytes | memoryview) -> tuple[int, bytes]:
    """``(flag, payload)``: zstd when that shrinks the data, else the data as it is."""
    packed = _compressor().compress(data)
    if len(packed) < len(data):
        return FLAG_ZSTD, packed
    return FLAG_RAW, bytes(data)


def frame_content_size(frame: bytes, what: str) -> int:
    """The content size the header of the zstd frame ``frame`` states (-1: none), read
    before anything is inflated; ``IntegrityError`` naming ``what`` if it is no zstd frame."""
    try:
        return zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{what} is not a zstd frame: {e}") from e


def decompress(flag: int, payload: bytes, raw_length: int) -> bytes:
    if raw_length < 0:
        raise IntegrityError(f"blob claims a negative size ({raw_length})")
    if flag == FLAG_RAW:
        data = payload
    elif flag == FLAG_ZSTD:
        if raw_length > MAX_BLOB_SIZE:
            raise IntegrityError(f"blob claims {raw_length} bytes, above the {MAX_BLOB_SIZE} limit")
        # python-zstandard sizes its output from the frame header when the header
        # states a size, whatever max_output_size says: refuse a frame that states
        # another size than the index before inflating anything (a decompression bomb).
        declared = frame_content_size(payload, "blob")
        if declared not in (-1, raw_length):
            raise IntegrityError(
                f"blob's zstd frame declares {declared} bytes, the index says {raw_length}"
            )
        try:
            data = _decompressor().decompress(payload, max_output_size=raw_length)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"blob does not decompress: {e}") from e
    else:
        raise IntegrityError(f"unknown compression flag {flag} (expected 0 or 1)")
    if len(data) != raw_length:
        raise IntegrityError(f"blob is {len(data)} bytes, the index says {raw_length}")
    return data


def seal(
    data_key: bytes, kind: BlobKind, bid: bytes, flag: int, payload: bytes, nonce: bytes = b""
) -> bytes:
    """``nonce``: random when empty (always, but in tests that freeze the format)."""
    return b"".join(seal_parts(data_key, kind, bid, flag, payload, nonce))


def seal_parts(
    data_key: bytes, kind: BlobKind, bid: bytes, flag: int, payload: bytes, nonce: bytes = b""
) -> tuple[bytes, bytes]:
    """The sealed blob as its two parts, ``(nonce, ciphertext)``, that ``seal`` joins: for
    a pack that joins all its blobs once (``PackWriter.add_parts``), not each on its own."""
    nonce = nonce or os.urandom(NONCE.size)
    if len(nonce) != NONCE.size:
        raise ValueError(f"a blob nonce is {NONCE.size} bytes, not {len(nonce)}")
    return nonce, _aead(data_key).encrypt(nonce, bytes((flag,)) + payload, bytes((kind,)) + bid)


def seal_many(
    data_key: bytes, blobs: Sequence[tuple[BlobKind, bytes, int, bytes, int]], nonces: bytes
) -> list[bytes]:
    """The ciphertext ``seal_parts`` makes of each ``(kind, id, flag, payload, _)`` of
    ``blobs``, the i-th under the i-th ``NONCE.size`` bytes of ``nonces``: a bundle's
    intake seals its blobs in one call, without a call, a cipher lookup and a nonce
    check a blob (``tests/store/test_blob.py``: the same bytes as ``seal_parts``)."""
    size = NONCE.size
    if len(nonces) != size * len(blobs):
        raise ValueError(f"{len(blobs)} blobs need {size * len(blobs)} bytes of nonces")
    encrypt = _aead(data_key).encrypt
    at = 0
    out = []
    for kind, bid, flag, payload, _ in blobs:
        out.append(encrypt(nonces[at : at + size], bytes((flag,)) + payload, bytes((kind,)) + bid))
        at += size
    return out


def unseal(data_key: bytes, kind: BlobKind, bid: bytes, sealed: bytes) -> tuple[int, bytes]:
    """Decrypt a sealed blob to ``(flag, payload)``; a wrong key or damage is an IntegrityError."""
    if len(sealed) < OVERHEAD:
        raise IntegrityError(f"blob {bid.hex()[:16]} is truncated ({len(sealed)} bytes)")
    (nonce,) = NONCE.unpack_from(sealed)
    try:
        plain = _aead(data_key).decrypt(
            nonce, memoryview(sealed)[NONCE.size :], bytes([kind]) + bid
        )
    except _invalid_tag() as e:
        raise IntegrityError(
            f"blob {bid.hex()[:16]} fails authentication (damaged, or a different store's key)"
        ) from e
    return plain[0], plain[1:]


def seal_plain(
    data_key: bytes, id_key: bytes, kind: BlobKind, data: bytes, nonce: bytes = b""
) -> tuple[bytes, bytes]:
    """Name, compress and seal plaintext: ``(blob id, sealed bytes)``."""
    bid = blob_id(id_key, data)
    flag, payload = compress(data)
    return bid, seal(data_key, kind, bid, flag, payload, nonce)


def open_sealed(
    data_key: bytes, id_key: bytes, kind: BlobKind, bid: bytes, sealed: bytes, raw_length: int
) -> bytes:
    """Decrypt, decompress and verify a blob; return its plaintext."""
    flag, payload = unseal(data_key, kind, bid, sealed)
    data = decompress(flag, payload, raw_length)
    if blob_id(id_key, data) != bid:
        raise IntegrityError(f"blob {bid.hex()[:16]} content does not match its id")
    return data
