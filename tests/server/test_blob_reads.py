"""``blob_reads.read_blobs``, the service behind ``/blobs/read`` (the route only parses and
renders): who may read, in what form, audited. Devices' access is in test_access.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine

from lamina.errors import ForbiddenError, UsageError
from lamina.server.security import Principal, RateLimiter
from lamina.server.services import blob_reads
from lamina.server.services.access import TreeCache
from lamina.server.services.cvd_ops import DATA_READ
from lamina.server.services.read_audit import ReadAudit
from lamina.store import blob
from lamina.store.repository import Store
from tests.server.test_read_audit import _rows

READER = Principal(
    kind="user", id="u-r", name="r", role="helpdesk", permissions=frozenset({DATA_READ})
)
NOBODY = Principal(kind="user", id="u-n", name="n", role="viewer")
PENDING = Principal(kind="device", id="d-p", name="desk", role="pending")


def _reader(engine: Engine, store: Store) -> Callable[..., list[Any]]:
    """``read(caller, hex_ids, stored)`` through one server's limits and read audit."""
    rate, trees = RateLimiter(100, 100, "blob reads"), TreeCache()
    audit = ReadAudit(engine, schedule=lambda delay, fn: None)

    def read(caller: Principal, ids: list[str], stored: bool = False) -> list[Any]:
        return blob_reads.read_blobs(
            engine, store, caller, ids, stored=stored, rate=rate, trees=trees, audit=audit
        )

    return read


def test_a_reader_gets_plaintext_or_as_stored_and_is_audited_others_are_refused_first(
    sqlite_engine: Engine, store: Store
) -> None:
    data = b"a file's content " * 1000
    with store.writer() as w:
        bid = w.put(blob.BlobKind.DATA, data)
    read = _reader(sqlite_engine, store)
    assert read(READER, [bid.hex()]) == [data]
    [(raw, flag, payload)] = read(READER, [bid.hex()], stored=True)
    assert raw == len(data) and blob.decompress(flag, payload, raw) == data
    assert len(_rows(sqlite_engine)) == 1  # one row for the window, written at the first read
    # A user without data.read is refused before the ids are even parsed; a device
    # without an active CVD before anything is looked up.
    with pytest.raises(ForbiddenError):
        read(NOBODY, ["not hex"])
    with pytest.raises(UsageError):
        read(READER, ["not hex"])
    with pytest.raises(ForbiddenError, match="no active CVD"):
        read(PENDING, [bid.hex()])
