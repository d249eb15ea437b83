"""The snapshot record (format version 1): a SNAPSHOT blob, msgpack
``{v, time (ISO 8601), source, root (32 bytes), files, bytes, meta}``; its id (hex)
is the snapshot's id. The decoder validates and raises ``IntegrityError``."""

from __future__ import annotations

import datetime as dt

import msgpack

from lamina.errors import IntegrityError
from lamina.store import blob
from lamina.store.catalog import SnapshotRecord

SNAPSHOT_VERSION = 1


def encode_snapshot(record: SnapshotRecord) -> bytes:
    return msgpack.packb(
        {
            "v": SNAPSHOT_VERSION,
            "time": record.time.isoformat(),
            "source": record.source,
            "root": record.root,
            "files": record.files,
            "bytes": record.bytes,
            "meta": record.meta,
        },
        use_bin_type=True,
    )


def decode_snapshot(bid: bytes, data: bytes) -> SnapshotRecord:
    what = f"snapshot object {bid.hex()[:16]}"
    try:
        doc = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise IntegrityError(f"{what} is not valid msgpack: {e}") from e
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != SNAPSHOT_VERSION:
        found = doc.get("v") if isinstance(doc, dict) else None
        raise IntegrityError(f"unsupported snapshot version {found!r:.20}")
    root, source, when = doc.get("root"), doc.get("source"), doc.get("time")
    counts = [doc.get("files"), doc.get("bytes")]
    meta = doc.get("meta") or {}
    if not isinstance(root, bytes) or len(root) != blob.ID_SIZE:
        raise IntegrityError(f"{what} is malformed: its root must be a {blob.ID_SIZE}-byte id")
    if not isinstance(source, str) or not isinstance(when, str) or not isinstance(meta, dict):
        raise IntegrityError(f"{what} is malformed: source, time or meta of the wrong type")
    if not all(type(n) is int and n >= 0 for n in counts):
        raise IntegrityError(f"{what} is malformed: files and bytes must be counts")
    try:
        time = dt.datetime.fromisoformat(when)
    except ValueError as e:
        raise IntegrityError(f"{what} is malformed: {e}") from e
    return SnapshotRecord(
        id=bid.hex(),
        time=time,
        source=source,
        root=root,
        files=int(doc["files"]),
        bytes=int(doc["bytes"]),
        meta=dict(meta),
    )
