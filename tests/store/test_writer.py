"""The writer's dedup probe: a set of the store's data ids once a session asked enough."""

from __future__ import annotations

import os

import pytest

from lamina.store import blob
from lamina.store import writer as writer_mod
from lamina.store.blob import BlobKind
from lamina.store.repository import Store


def test_need_probes_a_set_of_the_stores_data_ids_once_enough_were_asked(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.writer() as w:
        held = w.put(BlobKind.DATA, b"held data")
        tree_only = w.put(BlobKind.TREE, b"a tree's bytes")
    queries: list[int] = []
    real = store.catalog.missing

    def missing(ids: object, kind: BlobKind | None = None) -> set[bytes]:
        queries.append(1)
        return real(ids, kind)  # type: ignore[arg-type]

    monkeypatch.setattr(store.catalog, "missing", missing)
    with store.writer() as w:
        fresh = [os.urandom(32) for _ in range(writer_mod._KNOWN_AFTER)]
        assert w.need([held, *fresh[:10]]) == set(fresh[:10])
        assert len(queries) == 1  # below the threshold: the catalog is asked
        assert w.need(fresh) == set(fresh)  # the threshold is reached: the set is loaded
        asked = len(queries)
        # Answers now come from the set: a held id is not needed, a tree is not data.
        assert w.need([held, tree_only, fresh[0]]) == {tree_only, fresh[0]}
        assert w.need([tree_only], BlobKind.TREE) == set()
        assert len(queries) == asked + 1  # only the tree question went to the catalog
        # What this session writes is known too (its own set, as before).
        new = w.put(BlobKind.DATA, b"written by this session")
        assert w.need([new]) == set()


def test_a_store_holding_most_of_what_was_asked_loads_its_ids_whatever_the_ratio(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store many times larger than what a session asked so far is loaded when it held
    most of it (a copy of data it has: a 2nd endpoint's first backup asks about it all),
    and not when it held little (new data: a re-backup of changes)."""
    with store.writer() as w:
        held = [w.put(BlobKind.DATA, f"held {i}".encode()) for i in range(100)]
    monkeypatch.setattr(writer_mod, "_KNOWN_AFTER", 8)  # the store: 12.5x that
    with store.writer() as w:
        assert w.need([os.urandom(32) for _ in range(8)]) and w.known_data is None
    with store.writer() as w:
        assert w.need(held[:4]) == set() and w.known_data is None  # below the threshold
        assert w.need(held[4:8]) == set()
        assert w.known_data == set(held)


def test_a_backups_chunks_go_into_the_pack_without_being_joined_on_their_own(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``put_chunk`` (the engine's backup) seals a chunk into its pack as nonce and
    ciphertext (``blob.seal_parts``); ``seal``, one more copy of each chunk, is not called."""
    from lamina.store import blob

    def joined(*a: object, **kw: object) -> bytes:
        raise AssertionError("a chunk was joined on its own before going into its pack")

    monkeypatch.setattr(blob, "seal", joined)
    datas = [os.urandom(3000), b"\0" * 200_000]  # stored raw and compressed
    with store.writer() as w:
        ids = [w.put(BlobKind.DATA, d) for d in datas]
    assert [store.get(i) for i in ids] == datas


def test_sealed_blobs_added_many_at_once_are_stored_once_each(store: Store) -> None:
    keys = store.keys
    plain = [f"chunk {i}".encode() for i in range(3)]
    ids = [blob.blob_id(keys.chunking.id_key, p) for p in plain]
    sealed = [
        blob.seal(keys.data_key, BlobKind.DATA, i, blob.FLAG_RAW, p)
        for i, p in zip(ids, plain, strict=True)
    ]
    with store.writer() as w:
        w.put_sealed(BlobKind.DATA, ids[0], sealed[0], len(plain[0]))
        # the session's own blob and a repeat within the batch are each added once
        w.put_sealed_many(
            BlobKind.DATA, [(i, s, len(p)) for i, s, p in zip(ids, sealed, plain, strict=True)] * 2
        )
        assert w.new_blobs == 3
    assert store.catalog.missing(set(ids), kind=BlobKind.DATA) == set()
    assert [store.get(i) for i in ids] == plain


def test_a_full_pack_is_finished_by_the_upload_thread_not_under_the_writers_lock(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Joining a full pack's blobs, hashing it and sealing its header run in the pack-upload
    thread: a reading thread that fills a pack hands it over and goes on adding."""
    import threading

    from lamina.store.pack import PackWriter

    finished_in: list[str] = []
    real = PackWriter.finish

    def finish(self: PackWriter, nonce: bytes = b"") -> object:
        finished_in.append(threading.current_thread().name)
        return real(self, nonce)

    monkeypatch.setattr(PackWriter, "finish", finish)
    datas = [os.urandom(100_000) for _ in range(8)]  # 800 kB: three 256 kB packs and more
    with store.writer() as w:
        ids = [w.put(BlobKind.DATA, d) for d in datas]
    assert len(finished_in) >= 3
    assert set(finished_in) == {"pack-upload"}
    assert [store.get(i) for i in ids] == datas
