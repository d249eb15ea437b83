"""Blob routes: the plaintext of blobs by id, and deltas between versions of files, for
users who restore (``lamina cvd restore --output``) and for agents."""

from __future__ import annotations

import msgpack
from fastapi import APIRouter
from fastapi.responses import Response

from lamina.protocol.schemas import BlobsRequest, DeltasRequest
from lamina.server.deps import ActiveDevice, Caller, Ctx, Limits, require_active
from lamina.server.services import access, cvd_ops, deltas, fleet
from lamina.server.services.sync import parse_ids
from lamina.store.repository import StoredBlob

router = APIRouter()
#: Bytes of plaintext one /blobs/read answer carries at most (at least one blob).
READ_LIMIT = 32 * 1024 * 1024


@router.post(
    "/blobs/read",
    summary="Blobs by id (msgpack list, possibly a prefix): plaintext verified by the server, or as stored",
    response_class=Response,
)
def read_blobs(req: BlobsRequest, ctx: Ctx, caller: Caller, limits: Limits) -> Response:
    # Users need "data.read" (and each read is audited). A device reads only blobs of
    # its own CVD or of a tree delivered to it (services/access.py): every agent holds
    # the id key, so an id alone proves nothing.
    if caller.kind == "user":
        caller.require(cvd_ops.DATA_READ)
    ids = parse_ids(req.ids)
    if caller.kind == "device":
        device = require_active(caller)
        cvd = fleet.active_cvd_of_device(ctx.engine, device)
        limits.reads.take(device.id, len(ids))
        access.check_read(ctx.engine, ctx.store, limits.trees, device.id, cvd, ids)
    # A prefix of at most READ_LIMIT bytes: the client asks for the rest again.
    data: list[bytes] | list[StoredBlob]
    if req.stored:  # only decrypted: the reader inflates each blob and hashes it itself
        data = ctx.store.unseal_many(ids, READ_LIMIT)
        size = sum(raw for raw, _, _ in data)
    else:
        data = ctx.store.open_many(ids, READ_LIMIT)
        size = sum(map(len, data))
    ctx.reads.read(caller, len(data), size)  # a user's: audited (services/read_audit.py)
    return Response(msgpack.packb(data, use_bin_type=True), media_type="application/msgpack")


@router.post(
    "/blobs/delta",
    summary="New versions of files as zstd deltas against the versions the device holds",
    response_class=Response,
)
def read_deltas(req: DeltasRequest, ctx: Ctx, device: ActiveDevice, limits: Limits) -> Response:
    # Devices only: the same access as /blobs/read, for the old and the new versions.
    cvd = fleet.active_cvd_of_device(ctx.engine, device)
    limits.reads.take(device.id, sum(len(i.base) + len(i.target) for i in req.items))
    cache = deltas.cache_for(ctx.settings.data, ctx.settings.delta_cache)
    out = deltas.deltas_for_device(
        ctx.engine, ctx.store, cache, limits.trees, device.id, cvd, req.items
    )
    body = {"v": deltas.ANSWER_VERSION, "deltas": out}
    return Response(msgpack.packb(body, use_bin_type=True), media_type="application/msgpack")
