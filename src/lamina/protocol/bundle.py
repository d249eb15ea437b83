"""Sync bundles: many compressed blobs in one upload.

Bundle, version 1 (msgpack)::

    {"v": 1, "blobs": [[kind u8, id bytes(32), flag u8, payload bytes, raw_length int], ...]}

``flag``/``payload`` as in a sealed blob before encryption (0 raw, 1 zstd). The
agent compresses; the server decompresses (bounded by ``raw_length``), checks
every id against its content, then encrypts with the data key, which never
leaves the server. One bad blob refuses the whole bundle.
"""

from __future__ import annotations

from typing import NamedTuple

import struct

import msgpack

from lamina.errors import IntegrityError, TooLargeError

BUNDLE_VERSION = 1
MAX_BUNDLE_BLOBS = 100_000
MEDIA_TYPE = "application/vnd.lamina.bundle+msgpack"
#: A payload at least this large is a part of its own in ``bundle_parts``: sent as it is.
PART_BYTES = 64 * 1024


class BundleBlob(NamedTuple):
    kind: int
    id: bytes
    flag: int
    payload: bytes
    raw_length: int


def encode_bundle(blobs: list[BundleBlob]) -> bytes:
    return b"".join(bundle_parts(blobs))


def bundle_parts(blobs: list[BundleBlob]) -> list[bytes]:
    """A bundle's bytes (version 1 above) in parts whose concatenation is the bundle: a
    payload of ``PART_BYTES`` or more is a part as it is (an upload sends it without
    copying it into one body); the msgpack around them is packed per run of rows."""
    packer = msgpack.Packer(use_bin_type=True)
    parts: list[bytes] = []
    buf = bytearray(packer.pack_map_header(2))
    buf += packer.pack("v") + packer.pack(BUNDLE_VERSION)
    buf += packer.pack("blobs") + packer.pack_array_header(len(blobs))
    run: list[list[bytes | int]] = []

    def pack_run() -> None:
        # the rows of an array, packed in one call, minus the array's own header
        if run:
            buf.extend(memoryview(packer.pack(run))[len(packer.pack_array_header(len(run))) :])
            run.clear()

    for b in blobs:
        if len(b.payload) < PART_BYTES:
            run.append(list(b))
            continue
        pack_run()
        buf += packer.pack_array_header(5) + packer.pack(b.kind) + packer.pack(b.id)
        buf += packer.pack(b.flag) + _bin_header(len(b.payload))
        parts += (bytes(buf), b.payload)
        buf.clear()
        buf += packer.pack(b.raw_length)
    pack_run()
    parts.append(bytes(buf))
    return parts


def _bin_header(n: int) -> bytes:
    """msgpack's header of a bin of ``n`` bytes (bin 8, 16 or 32)."""
    if n < 1 << 8:
        return struct.pack(">BB", 0xC4, n)
    if n < 1 << 16:
        return struct.pack(">BH", 0xC5, n)
    return struct.pack(">BI", 0xC6, n)


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
