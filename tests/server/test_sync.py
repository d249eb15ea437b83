"""The server's bundle intake and commit verification, on a real store.

Bundles cost work only once per blob they hold (finding 13d), and prove each blob's
content, also one the store holds; a commit's trees must be
stored as trees and its chunks as data (finding 1); a file's chunks and holes
must add up to its size (finding 13b).
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from lamina.db.stores import StoreLocation, init_store, open_store
from lamina.errors import IntegrityError, MissingDataError, TooLargeError
from lamina.protocol.bundle import BundleBlob, encode_bundle
from lamina.server.services import intake, sync
from lamina.store import blob
from lamina.store.blob import BlobKind, blob_id, compress
from lamina.store.pack import pack_object_name
from lamina.store.repository import Store
from lamina.tree.model import Entry, encode_tree


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = init_store(StoreLocation(data=tmp_path / "data"))
    yield s
    s.close()


def _row(store: Store, data: bytes, kind: BlobKind = BlobKind.DATA) -> BundleBlob:
    flag, payload = compress(data)
    return BundleBlob(
        int(kind), blob_id(store.keys.chunking.id_key, data), flag, payload, len(data)
    )


def _bid(store: Store, data: bytes) -> bytes:
    return blob_id(store.keys.chunking.id_key, data)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the intake inflates and hashes a blob (counted, not timed)."""
    counts = {"decompress": 0, "blob_id": 0}

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            counts[name] += 1
            return real(*a, **kw)

        return wrapper

    monkeypatch.setattr(blob, "decompress", counting("decompress", blob.decompress))
    monkeypatch.setattr(blob, "blob_id", counting("blob_id", blob.blob_id))
    return counts


def test_copies_in_a_bundle_are_inflated_and_hashed_once(
    store: Store, calls: dict[str, int]
) -> None:
    data = b"\0" * 1_000_000 + os.urandom(16)
    body = encode_bundle([_row(store, data)] * 500)
    calls.update(decompress=0, blob_id=0)
    assert intake.upload_bundle(store, body) == 1
    assert calls == {"decompress": 1, "blob_id": 1}
    assert store.get(_bid(store, data)) == data


def test_a_blob_the_store_holds_is_proven_again_and_not_stored_twice(
    store: Store, calls: dict[str, int]
) -> None:
    """The upload is the device's proof that it holds the content (it then owns the blob):
    a held blob is inflated and hashed like a new one, and a payload that is not its
    content is refused, also when the id is one the store holds."""
    data = os.urandom(5000)
    body = encode_bundle([_row(store, data)])
    assert intake.upload_bundle(store, body) == 1
    packs = [p.name for p in store.catalog.packs()]
    calls.update(decompress=0, blob_id=0)
    assert intake.upload_bundle(store, body) == 0
    assert calls == {"decompress": 1, "blob_id": 1}
    assert [p.name for p in store.catalog.packs()] == packs  # nothing stored again
    flag, payload = compress(b"a guess at the content")
    forged = BundleBlob(int(BlobKind.DATA), _bid(store, data), flag, payload, 22)
    with pytest.raises(IntegrityError, match="does not match its id"):
        intake.upload_bundle(store, encode_bundle([forged]))
    assert store.get(_bid(store, data)) == data


def test_the_intake_seals_each_blob_into_its_pack_without_joining_it_first(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verified blob goes into the pack as its nonce and ciphertext (``seal_parts``):
    ``seal``, which joins them into one more copy of the blob, is not called."""

    def joined(*a: Any, **kw: Any) -> bytes:
        raise AssertionError("the intake joined a sealed blob on its own")

    monkeypatch.setattr(blob, "seal", joined)
    datas = [os.urandom(3000), b"\0" * 200_000 + os.urandom(8)]  # raw and zstd payloads
    assert intake.upload_bundle(store, encode_bundle([_row(store, d) for d in datas])) == 2
    for d in datas:
        assert store.get(_bid(store, d)) == d


def test_a_bundles_blobs_go_into_the_pack_in_one_call_not_one_each(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intake adds its verified blobs in one call (``Writer.put_payloads``): the
    writer's checks and lock are taken, random nonces read from the OS and the cipher
    looked up (``blob.seal_many``), as often for 60 blobs as for 3; every blob is sealed
    under a nonce of its own."""
    from lamina.store import writer as writer_mod

    checks, nonces = [0], [0]
    real_check, real_urandom = writer_mod.Writer._check, os.urandom

    def check(self: writer_mod.Writer) -> None:
        checks[0] += 1
        real_check(self)

    def urandom(n: int) -> bytes:
        nonces[0] += 1
        return real_urandom(n)

    ciphers, real_aead = [0], blob._aead

    def aead(data_key: bytes) -> object:
        ciphers[0] += 1
        return real_aead(data_key)

    monkeypatch.setattr(writer_mod.Writer, "_check", check)
    monkeypatch.setattr(os, "urandom", urandom)
    monkeypatch.setattr(blob, "_aead", aead)
    counts = []
    for n in (3, 60):
        datas = [real_urandom(100 + i) for i in range(n)]
        checks[0] = nonces[0] = ciphers[0] = 0
        assert intake.upload_bundle(store, encode_bundle([_row(store, d) for d in datas])) == n
        counts.append((checks[0], nonces[0], ciphers[0]))
        assert [store.get(_bid(store, d)) for d in datas] == datas
        where = store.catalog.locate([_bid(store, d) for d in datas]).values()
        sealed = [store.backend.read(pack_object_name(w.pack), w.offset, w.length) for w in where]
        assert len({s[: blob.NONCE.size] for s in sealed}) == n
    assert counts[0] == counts[1]


def test_a_bundle_asks_the_catalog_about_its_ids_and_never_loads_the_stores_ids(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intake asks the catalog once per kind about the bundle's ids; it never takes the
    long backup's shortcut (``Writer.need`` loading every data id of the store, after a
    count of the whole ``blobs`` table, once 4,096 ids were asked), as a bundle of 5,000
    chunks did at f384b63."""
    held = [os.urandom(40) for _ in range(50)]
    assert intake.upload_bundle(store, encode_bundle([_row(store, d) for d in held])) == 50

    def loaded(*a: Any, **kw: Any) -> set[bytes] | None:
        raise AssertionError("the intake loaded the store's ids")

    monkeypatch.setattr(store.catalog, "known_ids", loaded)
    asked: list[int] = []
    real = store.catalog.missing

    def missing(ids: Any, kind: BlobKind | None = None) -> set[bytes]:
        asked.append(len(ids))
        return real(ids, kind=kind)

    monkeypatch.setattr(store.catalog, "missing", missing)
    datas = [os.urandom(40) for _ in range(5000)] + held[:10]
    assert intake.upload_bundle(store, encode_bundle([_row(store, d) for d in datas])) == 5000
    assert sorted(asked) == [0, 5010]  # the trees' (none), the chunks'
    assert store.get(_bid(store, datas[0])) == datas[0]


def test_a_bundle_declaring_too_much_content_is_refused_before_inflating(
    store: Store, calls: dict[str, int]
) -> None:
    big = store.keys.chunking.max_size
    n = 256 * 1024 * 1024 // big + 1  # intake.MAX_BUNDLE_RAW
    rows = [BundleBlob(int(BlobKind.DATA), os.urandom(32), 1, b"tiny", big) for _ in range(n)]
    before = store.stats()
    calls.update(decompress=0, blob_id=0)
    with pytest.raises(TooLargeError, match="declares more than"):
        intake.upload_bundle(store, encode_bundle(rows))
    assert calls == {"decompress": 0, "blob_id": 0}
    assert store.stats() == before


def test_a_tree_uploaded_after_its_data_copy_is_stored_as_a_tree(store: Store) -> None:
    t = encode_tree([Entry(name=b"a", type="file")])
    tid = _bid(store, t)
    assert intake.upload_bundle(store, encode_bundle([_row(store, t, BlobKind.DATA)])) == 1
    assert intake.upload_bundle(store, encode_bundle([_row(store, t, BlobKind.TREE)])) == 1
    assert tid in store.catalog.locate([tid], kind=BlobKind.TREE)


# --- verify_tree ------------------------------------------------------------------------------


def _store_tree(store: Store, entries: list[Entry], chunks: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    with store.writer() as w:
        for c in chunks:
            w.put(BlobKind.DATA, c)
        return w.put(BlobKind.TREE, encode_tree(entries))


def _verify(store: Store, root: bytes) -> list[bytes]:
    return list(sync.verify_tree(store, root, None))


def _verify_and_heal(store: Store, root: bytes) -> list[bytes]:
    with store.writer() as w:
        return list(sync.verify_tree(store, root, None, heal=w))


def test_verify_stores_a_subtree_held_only_as_data_again_as_a_tree(store: Store) -> None:
    chunk = os.urandom(3000)
    sub = encode_tree(
        [Entry(name=b"f", type="file", size=len(chunk), content=[_bid(store, chunk)])]
    )
    sid = _bid(store, sub)
    with store.writer() as w:
        w.put_chunk(BlobKind.DATA, sid, sub)  # a device uploaded the tree as data
        w.put(BlobKind.DATA, chunk)
    root = _store_tree(store, [Entry(name=b"d", type="dir", mode=0o755, subtree=sid)])
    assert store.catalog.missing([sid], kind=BlobKind.TREE) == {sid}
    ids = _verify_and_heal(store, root)
    assert set(ids) == {root, sid, _bid(store, chunk)}
    assert store.catalog.missing([sid], kind=BlobKind.TREE) == set()


def test_verify_refuses_a_data_blob_named_as_a_subtree(store: Store) -> None:
    junk = os.urandom(100)
    with store.writer() as w:
        w.put(BlobKind.DATA, junk)
    root = _store_tree(store, [Entry(name=b"d", type="dir", subtree=_bid(store, junk))])
    with pytest.raises(IntegrityError):
        _verify(store, root)
    assert store.catalog.missing([_bid(store, junk)], kind=BlobKind.TREE)


def test_verify_still_refuses_a_chunk_never_uploaded(store: Store) -> None:
    root = _store_tree(store, [Entry(name=b"f", type="file", size=10, content=[os.urandom(32)])])
    with pytest.raises(MissingDataError, match="upload"):
        _verify(store, root)


@pytest.mark.parametrize(
    ("size", "holes", "ok"),
    [
        (3000, [], True),
        (3000 + 4096, [4096], True),
        (3001, [], False),  # one byte more than the chunk holds
        (2999, [], False),
        (3000, [1], False),  # a hole the size does not count
        (2**40, [2**40 - 3000], True),  # a real sparse file
        (2**62, [2**62 - 3000], False),  # the OOM of finding 13(b): absurd size
        (3000, [2**62], False),  # a huge hole in a small file
    ],
)
def test_file_content_must_add_up_to_its_size(
    store: Store, size: int, holes: list[int], ok: bool
) -> None:
    chunk = os.urandom(3000)
    content: list[bytes | int] = [_bid(store, chunk), *holes]
    root = _store_tree(store, [Entry(name=b"f", type="file", size=size, content=content)], [chunk])
    if ok:
        _verify(store, root)
    else:
        with pytest.raises(IntegrityError, match=r"size|limit"):
            _verify(store, root)


# --- full-size packs under a stream of small bundles ------------------------------------------


@pytest.fixture(params=["local", "s3"])
def small_pack_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A server's store (SQLite catalog) on the local backend or on S3, with 256 KiB packs."""
    url = request.getfixturevalue("s3_url") if request.param == "s3" else None
    s = init_store(StoreLocation(data=tmp_path / "data", store_url=url))
    s.pack_size = 256 * 1024
    yield s
    s.close()


def test_small_bundles_accumulate_into_full_packs(small_pack_store: Store) -> None:
    store = small_pack_store
    sent: dict[bytes, bytes] = {}
    for _ in range(40):  # 40 bundles of 3 x 4 KB: 480 KB in all
        rows = []
        for _ in range(3):
            data = os.urandom(4000)
            sent[_bid(store, data)] = data
            rows.append(_row(store, data))
        intake.upload_bundle(store, encode_bundle(rows))
        # acknowledged: every blob of every bundle so far is stored and readable
        assert store.catalog.missing(list(sent)) == set()
    sizes = sorted(p.size for p in store.catalog.packs())
    # a pack size of small packs (about 21 bundles) became one pack of about that size;
    # the bundles since are small packs waiting for the next roll
    assert sizes[-1] >= 0.9 * store.pack_size, sizes
    assert all(s < store.pack_size / 2 for s in sizes[:-1]), sizes
    assert len(sizes) < 40 - 15, sizes
    for bid, data in sent.items():
        assert store.get(bid) == data
    listed = {n for n, _ in store.backend.list("packs/")}
    assert len(listed) == len(sizes)  # the rolled packs' files are gone


def test_two_servers_on_one_s3_store_roll_each_others_small_packs(
    tmp_path: Path, s3_url: str
) -> None:
    """Two servers (two Store objects: one bucket, one catalog) take bundles in turn: the
    small packs either wrote are rolled by whichever crosses the threshold; nothing is lost."""
    loc = StoreLocation(data=tmp_path / "data", store_url=s3_url)
    first = init_store(loc)
    second = open_store(loc, pack_size=256 * 1024)
    first.pack_size = 256 * 1024
    sent: dict[bytes, bytes] = {}
    try:
        for i in range(50):  # each server writes about 25 small packs, more than a pack size
            server = (first, second)[i % 2]
            data = os.urandom(12_000)
            sent[_bid(server, data)] = data
            intake.upload_bundle(server, encode_bundle([_row(server, data)]))
        sizes = sorted(p.size for p in first.catalog.packs())
        assert sizes[-1] >= 0.9 * first.pack_size and len(sizes) < 50 - 20, sizes
        for server in (first, second):
            assert server.catalog.missing(list(sent)) == set()
            for bid, data in sent.items():
                assert server.get(bid) == data
    finally:
        second.close()
        first.close()


def test_a_commit_walk_decodes_each_new_tree_once_and_no_tree_of_the_previous_snapshot(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def folder(content: bytes) -> tuple[bytes, bytes]:
        f = Entry(name=b"f", type="file", size=len(content), content=[_bid(store, content)])
        return _store_tree(store, [f], [content]), _bid(store, content)

    def root(subs: list[bytes]) -> bytes:
        dirs = [
            Entry(name=b"d%d" % i, type="dir", mode=0o755, subtree=s) for i, s in enumerate(subs)
        ]
        return _store_tree(store, dirs)

    d0, _ = folder(b"unchanged folder")
    d1_old, _ = folder(b"before")
    d1_new, chunk = folder(b"after")
    old, new = root([d0, d1_old]), root([d0, d1_new])
    decoded: list[bytes] = []
    real = sync.decode_tree
    monkeypatch.setattr(sync, "decode_tree", lambda data: decoded.append(data) or real(data))
    ids = list(sync.verify_tree(store, new, old))
    # the new root and the changed folder, once each; the unchanged folder is not walked
    assert sorted(decoded) == sorted([store.get(new), store.get(d1_new)])
    assert set(ids) == {new, d1_new, chunk}


def test_trees_decoded_at_intake_are_not_decoded_again_by_the_commit_walk(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"uploaded file"
    sub = encode_tree(
        [Entry(name=b"f", type="file", size=len(content), content=[_bid(store, content)])]
    )
    root = encode_tree([Entry(name=b"d", type="dir", mode=0o755, subtree=_bid(store, sub))])
    trees = sync.DecodedTrees()
    bundle = [
        _row(store, content),
        _row(store, sub, BlobKind.TREE),
        _row(store, root, BlobKind.TREE),
    ]
    decoded: list[bytes] = []
    real = sync.decode_tree
    for module in (intake, sync):  # the intake's decoding, and the commit walk's
        monkeypatch.setattr(module, "decode_tree", lambda data: decoded.append(data) or real(data))
    took = intake.upload_blobs(store, bundle, trees=trees)
    assert took.new == 3 and took.first == {it.id for it in bundle}
    assert sorted(took.stored) == sorted((BlobKind(it.kind), it.id, it.raw_length) for it in bundle)
    again = intake.upload_blobs(store, bundle)
    assert (again.new, again.first, again.stored) == (0, frozenset(), ())  # stored: none first
    assert sorted(decoded) == sorted([sub, root]) and len(trees) == 2  # once, at intake
    ids = list(sync.verify_tree(store, _bid(store, root), None, trees=trees))
    assert sorted(decoded) == sorted([sub, root])  # the walk took them, decoded nothing
    assert set(ids) == {_bid(store, root), _bid(store, sub), _bid(store, content)}
    assert len(trees) == 0  # taken: a second commit reads them from the store
    list(sync.verify_tree(store, _bid(store, root), None, trees=trees))
    assert sorted(decoded) == sorted([sub, root, sub, root])


def test_decoded_trees_keep_at_most_their_limit_of_entries() -> None:
    trees = sync.DecodedTrees(limit=3)
    two = [Entry(name=b"a", type="file"), Entry(name=b"b", type="file")]
    trees.put(b"1" * 32, two)
    trees.put(b"2" * 32, two)  # 4 entries: the oldest tree goes
    assert trees.take(b"1" * 32) is None and trees.take(b"2" * 32) == two
    trees.put(b"3" * 32, two * 2)  # larger than the whole limit: not kept
    assert len(trees) == 0


# --- the commit walk: bounded memory, incremental ---------------------------------------------


class _Owner:
    """A commit's ownership check that owns everything and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[list[bytes]] = []

    def require(self, ids: list[bytes]) -> None:
        self.asked.append(list(ids))

    def stored_as(self, ids: list[bytes], kind: BlobKind) -> dict[bytes, int]:
        return {}  # (no shortcut: every id is asked of ``require``)


def _wide(store: Store, folders: int, per_folder: int) -> bytes:
    """A root of ``folders`` folders of ``per_folder`` files each (all in one level), half
    empty and half naming one of 1,000 stored chunks; built with the tree codec."""
    chunks = [b"chunk %d" % i for i in range(1000)]
    ids = [_bid(store, c) for c in chunks]
    with store.writer() as w:
        for c in chunks:
            w.put(BlobKind.DATA, c)
        subs = []
        for d in range(folders):
            entries = []
            for f in range(per_folder):
                i = d * per_folder + f
                k = i % 1000
                full = i % 2 == 1
                entries.append(
                    Entry(
                        name=b"f%07d" % i,
                        type="file",
                        size=len(chunks[k]) if full else 0,
                        content=[ids[k]] if full else [],
                    )
                )
            subs.append(
                Entry(
                    name=b"d%05d" % d,
                    type="dir",
                    subtree=w.put(BlobKind.TREE, encode_tree(entries)),
                )
            )
        return w.put(BlobKind.TREE, encode_tree(subs))


def test_the_commit_walk_holds_a_bounded_batch_of_a_wide_level(store: Store) -> None:
    """32,000 files in one level (32 folders of 1,000): the walk holds one folder's
    entries and at most ``WALK_CHUNKS`` chunk ids at a time, not the level (the old walk
    held all of it: a peak of 17.6 MB here, 103 MB at 200,000 files; this one 3.5 MB)."""
    root = _wide(store, 32, 1000)
    owner = _Owner()
    tracemalloc.start()
    try:
        checked = sum(1 for _ in sync.verify_tree(store, root, None, owner=owner))  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    assert checked == 1 + 32 + 16_000  # every tree and every file's chunk
    assert max(len(a) for a in owner.asked) <= sync.WALK_CHUNKS  # (1,000 distinct chunks)
    assert sum(len(a) for a in owner.asked) >= 32 + 1000


def _files(store: Store, names: dict[bytes, bytes]) -> list[Entry]:
    return [
        Entry(name=n, type="file", size=len(c), content=[_bid(store, c)]) for n, c in names.items()
    ]


def test_an_incremental_commit_checks_only_the_entries_that_changed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of 500 files where one changed and one is new: only those two files'
    chunks are looked up, and a folder renamed is not walked again."""
    before = {b"f%03d" % i: b"content %d" % i for i in range(500)}
    after = {**before, b"f007": b"changed", b"new": b"added"}
    with store.writer() as w:
        for c in [*before.values(), b"changed", b"added"]:
            w.put(BlobKind.DATA, c)
    kept = _store_tree(store, _files(store, {b"x": b"content 1"}))
    old_d, new_d = (_store_tree(store, _files(store, f)) for f in (before, after))

    def root(d: bytes, kept_as: bytes) -> bytes:
        return _store_tree(
            store,
            [
                Entry(name=b"d", type="dir", subtree=d),
                Entry(name=kept_as, type="dir", subtree=kept),
            ],
        )

    old, new = root(old_d, b"k"), root(new_d, b"renamed")
    decoded: list[bytes] = []
    real = sync.decode_tree
    monkeypatch.setattr(sync, "decode_tree", lambda data: decoded.append(data) or real(data))
    owner = _Owner()
    ids = list(sync.verify_tree(store, new, old, owner=owner))  # type: ignore[arg-type]
    assert sorted(decoded) == sorted([store.get(new), store.get(new_d)])
    assert [set(a) for a in owner.asked] == [
        {new_d},
        {_bid(store, b"changed"), _bid(store, b"added")},
    ]
    assert set(ids) == {new, new_d, _bid(store, b"changed"), _bid(store, b"added")}
    # the full walk checks every file
    owner = _Owner()
    list(sync.verify_tree(store, new, None, owner=owner))  # type: ignore[arg-type]
    assert len({i for a in owner.asked for i in a}) == 2 + 501  # (x's chunk is f001's)


@pytest.mark.parametrize("incremental", [False, True])
@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("size", IntegrityError),  # same chunks, another size: not the entry verified before
        ("chunk never uploaded", MissingDataError),
        ("huge", IntegrityError),
    ],
)
def test_an_incremental_commit_refuses_what_a_full_walk_refuses(
    store: Store, change: str, error: type[Exception], incremental: bool
) -> None:
    """The fast path skips only an entry equal to the previous snapshot's: any other
    change of a file is checked as in a full walk."""
    with store.writer() as w:
        w.put(BlobKind.DATA, b"kept")
    good = Entry(name=b"f", type="file", size=4, content=[_bid(store, b"kept")])
    bad = {
        "size": Entry(name=b"f", type="file", size=5, content=[_bid(store, b"kept")]),
        "chunk never uploaded": Entry(name=b"f", type="file", size=4, content=[os.urandom(32)]),
        "huge": Entry(
            name=b"f", type="file", size=2**60, content=[_bid(store, b"kept"), 2**60 - 4]
        ),
    }[change]
    sub_old = _store_tree(store, [good, Entry(name=b"g", type="file")])
    sub_new = _store_tree(store, [bad, Entry(name=b"g", type="file")])
    old = _store_tree(store, [Entry(name=b"d", type="dir", subtree=sub_old)])
    new = _store_tree(store, [Entry(name=b"d", type="dir", subtree=sub_new)])
    list(sync.verify_tree(store, old, None))
    with pytest.raises(error):
        list(sync.verify_tree(store, new, old if incremental else None))


def test_a_subtree_key_on_a_previous_file_entry_does_not_pass_for_a_verified_folder(
    store: Store,
) -> None:
    """A file entry may carry a ``subtree`` key (decoding a file ignores it, so it was never
    walked): a folder naming that tree later, by the same name or another, is walked and
    its chunk never uploaded refused, as by the full walk."""
    bogus = _store_tree(store, [Entry(name=b"f", type="file", size=10, content=[os.urandom(32)])])
    with store.writer() as w:
        raw = {"v": 1, "entries": [{**Entry(name=b"x", type="file").encode(), "subtree": bogus}]}
        old = w.put(BlobKind.TREE, msgpack.packb(raw, use_bin_type=True))
    assert sync.decode_tree(store.get(old))[0].subtree is None  # it passed as a plain file
    list(sync.verify_tree(store, old, None))
    for name in (b"x", b"y"):
        new = _store_tree(store, [Entry(name=name, type="dir", subtree=bogus)])
        with pytest.raises(MissingDataError):
            list(sync.verify_tree(store, new, old))
