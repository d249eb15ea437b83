"""Blobs by id (``POST /blobs/read``), for users who restore and for agents: who may
read which, how much one answer carries, and the users' read audit."""

from __future__ import annotations

from sqlalchemy import Engine

from lamina.server.security import Principal, RateLimiter, require_active
from lamina.server.services import access, cvd_ops, fleet
from lamina.server.services.read_audit import ReadAudit
from lamina.server.services.sync import parse_ids
from lamina.store.repository import Store, StoredBlob

#: Bytes of plaintext one /blobs/read answer carries at most (at least one blob).
READ_LIMIT = 32 * 1024 * 1024


def read_blobs(
    engine: Engine,
    store: Store,
    caller: Principal,
    hex_ids: list[str],
    *,
    stored: bool,
    rate: RateLimiter,
    trees: access.TreeCache,
    audit: ReadAudit,
) -> list[bytes] | list[StoredBlob]:
    """A prefix of the blobs ``hex_ids`` names, of at most ``READ_LIMIT`` bytes (the caller asks for the
    rest again): plaintexts the store verified, or with ``stored`` each as stored, only
    decrypted, for a reader that inflates and hashes it itself.

    Users need "data.read", and each read is audited. A device (active, within its
    ``rate``) reads only blobs of its own CVD or of a tree delivered to it
    (``access.check_read``): every agent holds the id key, so an id alone proves nothing."""
    if caller.kind == "user":
        caller.require(cvd_ops.DATA_READ)
    ids = parse_ids(hex_ids)  # after the permission check: a refused user is refused as such
    if caller.kind == "device":
        device = require_active(caller)
        cvd = fleet.active_cvd_of_device(engine, device)
        rate.take(device.id, len(ids))
        access.check_read(engine, store, trees, device.id, cvd, ids)
    data: list[bytes] | list[StoredBlob]
    if stored:
        data = store.unseal_many(ids, READ_LIMIT)
        size = sum(raw for raw, _, _ in data)
    else:
        data = store.open_many(ids, READ_LIMIT)
        size = sum(map(len, data))
    audit.read(caller, len(data), size)
    return data
