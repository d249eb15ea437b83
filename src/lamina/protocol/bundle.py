"""Sync bundles: many compressed blobs in one upload.

Bundle, version 1 (msgpack)::

    {"v": 1, "blobs": [[kind u8, id bytes(32), flag u8, payload bytes, raw_length int], ...]}

``flag``/``payload`` as in a sealed blob before encryption (0 raw, 1 zstd). The
agent compresses; the server decompresses (bounded by ``raw_length``), checks
every id against its content, then encrypts with the data key, which never
leaves the server. One bad blob refuses the whole bundle.

The agent sends a bundle as its parts (``bundle_parts``): the msgpack headers and
small payloads packed together, each large payload as views of its own bytes, so no
joined copy of the whole body is made; the bytes on the wire are those of
``encode_bundle``, exactly.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import msgpack

from lamina.errors import IntegrityError, TooLargeError

BUNDLE_VERSION = 1
MAX_BUNDLE_BLOBS = 100_000
MEDIA_TYPE = "application/vnd.lamina.bundle+msgpack"


class BundleBlob(NamedTuple):
    kind: int
    id: bytes
    flag: int
    payload: bytes
    raw_length: int


#: Payloads from this size on are sent as views of their own bytes, not packed
#: beside the headers; and no part handed to the HTTP client is larger (a socket's
#: partial send copies what is left of the part: httpcore's ``buffer[n:]``).
PART_BYTES = 256 * 1024
#: msgpack's bin 32 header: 0xc6, then the length (big-endian u32)
_BIN32 = struct.Struct(">BI")
#: The most a row's fields but its payload take packed (id, kind, flag, sizes, headers)
_ROW_FIELDS = 64


def bundle_parts(blobs: list[BundleBlob]) -> tuple[int, list[bytes | memoryview]]:
    """The body of a bundle of ``blobs`` as parts to send in order, and its length:
    ``b"".join`` of the parts is ``encode_bundle(blobs)``. The views are of the blobs'
    payloads, valid while those are."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    packer.pack_map_header(2)
    packer.pack("v")
    packer.pack(BUNDLE_VERSION)
    packer.pack("blobs")
    packer.pack_array_header(len(blobs))
    parts: list[bytes | memoryview] = []

    def flush(tail: bytes = b"") -> None:
        parts.append(packer.bytes() + tail)
        packer.reset()

    packed = 0  # about what the packer holds: a row's fields and its payload
    for b in blobs:
        n = len(b.payload)
        if packed + n + _ROW_FIELDS > PART_BYTES and packed:
            flush()
            packed = 0
        packer.pack_array_header(5)
        packer.pack(b.kind)
        packer.pack(b.id)
        packer.pack(b.flag)
        if n < PART_BYTES:
            packer.pack(b.payload)
            packed += n + _ROW_FIELDS
        else:  # msgpack's bin 32 (a payload of PART_BYTES or more needs 32 bits)
            flush(_BIN32.pack(0xC6, n))
            view = memoryview(b.payload)
            parts.extend(view[i : i + PART_BYTES] for i in range(0, n, PART_BYTES))
            packed = 0
        packer.pack(b.raw_length)
    flush()
    return sum(len(p) for p in parts), parts


def encode_bundle(blobs: list[BundleBlob]) -> bytes:
    return b"".join(bundle_parts(blobs)[1])


def decode_bundle(data: bytes) -> list[BundleBlob]:
    try:
        doc = msgpack.unpackb(
            data, raw=False, max_array_len=MAX_BUNDLE_BLOBS, max_map_len=4, max_str_len=64
        )
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        if "exceeds max" in str(e):
            raise TooLargeError(f"bundle too large: {e}") from e
        raise IntegrityError(f"bundle is not valid msgpack: {e}") from e
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != BUNDLE_VERSION:
        raise IntegrityError(f"unsupported bundle version (expected {BUNDLE_VERSION})")
    rows = doc.get("blobs")
    if not isinstance(rows, list):
        raise IntegrityError("bundle has no blob list")
    out = []
    for r in rows:
        if (
            not isinstance(r, list)
            or len(r) != 5
            or type(r[0]) is not int  # not isinstance: a bool is no kind, flag or size
            or not isinstance(r[1], bytes)
            or len(r[1]) != 32
            or type(r[2]) is not int
            or not isinstance(r[3], bytes)
            or type(r[4]) is not int
            or r[4] < 0
        ):
            raise IntegrityError("bundle holds a malformed blob entry")
        out.append(BundleBlob(r[0], r[1], r[2], r[3], r[4]))
    return out
