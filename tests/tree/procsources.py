"""Blob sources a restore's worker processes can open (picklable, module level): the
store's blobs in plaintext behind ``BatchedBlobs``, which hashes each one against its id
as it does for a server's answers."""

from __future__ import annotations

import functools

from lamina.store.repository import Store
from lamina.tree.restore_procs import Opener
from lamina.tree.sources import BatchedBlobs


def _fetch(blobs: dict[bytes, bytes], ids: list[bytes]) -> list[bytes]:
    return [blobs[i] for i in ids]


def dict_blobs(blobs: dict[bytes, bytes], id_key: bytes) -> BatchedBlobs:
    return BatchedBlobs(functools.partial(_fetch, blobs), id_key)


def store_blobs(store: Store) -> dict[bytes, bytes]:
    """Every blob of ``store`` in plaintext, by id."""
    return {row.id: store.get(row.id) for row in store.catalog.iter_blobs()}


def opener(blobs: dict[bytes, bytes], id_key: bytes) -> Opener:
    return Opener(functools.partial(dict_blobs, blobs, id_key), ("tests.tree.procsources",))
