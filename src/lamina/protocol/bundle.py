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


def encode_bundle(blobs: list[BundleBlob]) -> bytes:
    return msgpack.packb(
        {"v": BUNDLE_VERSION, "blobs": [list(b) for b in blobs]}, use_bin_type=True
    )


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
