"""An instance's disk, fetched piece by piece: each piece checked against the signed
manifest, written through the encrypted disk's NBD export in order, and journaled after
each flush, so that a download cut at any moment continues where the journal ends.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3

from lamina.errors import IntegrityError
from lamina.flex import disk
from lamina.flex.folder import Instance
from lamina.flex.nbd import NbdClient
from lamina.protocol.flex import FlexManifest

#: Piece requests in flight at once, and the bytes fetched ahead of the piece being written
#: (at least one piece): while qemu-img makes a new disk, the first pieces arrive meanwhile.
FETCH_PARALLEL = 4
FETCH_AHEAD_BYTES = 64 << 20
#: Written bytes between two flushes of the disk (each followed by one journal fsync).
FLUSH_BYTES = 32 << 20


def fetch_pieces(
    get: Callable[[str], Any],
    inst: Instance,
    key: bytes,
    progress: Callable[[int, int], None] | None,
    finish: Callable[[], Instance] | None = None,
) -> Instance:
    """Fetch the pieces not yet journaled, :data:`FETCH_PARALLEL` requests at a time, and
    write them in order; every :data:`FLUSH_BYTES` (and at the end) flush the disk, then
    journal the pieces written since, in one fsync. A crash loses at most the unflushed
    pieces, which are not journaled and so fetched again. With ``finish`` (a new
    instance whose disk is still being made), the first requests go out meanwhile."""
    instance_id = inst.info().instance
    manifest = inst.manifest()
    done = inst.done_pieces()
    zero_hash: dict[int, str] = {}

    def is_zero(length: int, digest: str) -> bool:  # a new disk reads zeros already
        zh = zero_hash.get(length)
        if zh is None:
            zh = zero_hash[length] = blake3.blake3(bytes(length)).hexdigest()
        return digest == zh

    todo = [
        n
        for n, p in enumerate(manifest.pieces)
        if n not in done and not is_zero(p.length, p.blake3)
    ]

    def fetch(n: int) -> bytes:
        piece = manifest.pieces[n]
        data = get(f"/flex/my/instances/{instance_id}/pieces/{n}")
        _check_piece(instance_id, n, piece.length, piece.blake3, data)
        result: bytes = data
        return result

    fetched = iter(todo)
    inflight: deque[tuple[int, Future[bytes]]] = deque()
    ahead = 0  # bytes requested and not yet written

    def refill(written: int = 0) -> None:
        nonlocal ahead
        ahead -= written
        while not inflight or ahead < FETCH_AHEAD_BYTES:
            n = next(fetched, None)
            if n is None:
                return
            inflight.append((n, pool.submit(fetch, n)))
            ahead += manifest.pieces[n].length

    with (
        tempfile.TemporaryDirectory(prefix="lamina-flex-") as run,
        ThreadPoolExecutor(FETCH_PARALLEL, thread_name_prefix="lamina-flex-fetch") as pool,
    ):
        try:
            refill()
            if finish is not None:
                inst = finish()
        except BaseException:
            for _, f in inflight:
                f.cancel()
            raise
        with disk.export(inst.disk, key, Path(run) / "nbd.sock") as nbd:
            if nbd.size != manifest.size:
                raise IntegrityError(
                    f"the encrypted disk holds {nbd.size} bytes, the manifest says {manifest.size}"
                )
            _write_pieces(inst, nbd, manifest, done, inflight, refill, progress)
            for _, f in inflight:
                f.cancel()
    st = inst.state()
    st.downloaded = True
    inst.save_state(st)
    return inst


def _write_pieces(
    inst: Instance,
    nbd: NbdClient,
    manifest: FlexManifest,
    done: set[int],
    inflight: deque[tuple[int, Future[bytes]]],
    refill: Callable[[int], None],
    progress: Callable[[int, int], None] | None,
) -> None:
    unflushed: list[int] = []
    unflushed_bytes = 0
    got = 0

    def commit() -> None:
        nonlocal unflushed_bytes
        if unflushed:
            nbd.flush()
            inst.mark_done_many(unflushed)
            unflushed.clear()
            unflushed_bytes = 0

    try:
        for n, piece in enumerate(manifest.pieces):
            if n not in done:
                if inflight and inflight[0][0] == n:
                    data = inflight.popleft()[1].result()
                    nbd.write(piece.offset, data)
                    unflushed_bytes += piece.length
                    refill(piece.length)
                unflushed.append(n)
                if unflushed_bytes >= FLUSH_BYTES:
                    commit()
            got += piece.length
            if progress is not None:
                progress(got, manifest.size)
        commit()
    except BaseException:
        for _, f in inflight:
            f.cancel()
        # What was written and verified is kept for the next run, if the disk still
        # answers; else it is fetched again.
        with contextlib.suppress(Exception):
            commit()
        raise


def _check_piece(instance_id: str, n: int, length: int, expected: str, data: Any) -> None:
    if not isinstance(data, bytes):
        raise IntegrityError(f"piece {n} of instance {instance_id}: the server sent no bytes")
    found = blake3.blake3(data).hexdigest()
    if len(data) != length or found != expected:
        raise IntegrityError(
            f"piece {n} of instance {instance_id} does not match the signed manifest "
            f"(expected {length} bytes with BLAKE3 {expected[:16]}, got {len(data)} bytes with "
            f"{found[:16]}); nothing of it was written — run the download again"
        )
