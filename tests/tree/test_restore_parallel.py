"""Restore with a pool of file writers: verified content, whole files only, one error.

A restore reads each chunk through the store, which refuses a blob whose bytes do
not authenticate or hash to its id; the file writers run on threads, and a fatal
error in one of them must stop the restore with that error and leave no file
written from bad bytes and no temporary name behind.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import msgpack
import pytest

from lamina.errors import IntegrityError, UsageError
from lamina.store import blob
from lamina.store.pack import pack_object_name
from lamina.store.repository import Store
from lamina.tree import restore as restore_mod
from lamina.tree.restore import Restorer, restore_tree
from lamina.tree.sources import BatchedBlobs, http_blobs

from .treeutil import MIB, MTIME, assert_same_tree, scan_tree, write


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for d in range(6):
        for i in range(8):
            write(root / f"d{d}" / f"f{i}", os.urandom(3000 + 700 * i), MTIME + i)
        os.utime(root / f"d{d}", ns=(MTIME + 50, MTIME + 50))
    write(root / "big", os.urandom(3 * MIB), MTIME)
    os.link(root / "d0" / "f0", root / "d5" / "same-as-d0-f0")
    return root


def test_parallel_restore_is_exact(store: Store, src: Path, tmp_path: Path) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    st = restore_tree(store, tid, out, chunking=store.keys.chunking, workers=4)
    assert st.errors == [] and st.files == 50
    # folder times are set after their files were written, so they are the tree's
    assert_same_tree(src, out)
    assert os.stat(out / "d5" / "same-as-d0-f0").st_ino == os.stat(out / "d0" / "f0").st_ino


def test_a_tampered_pack_fails_the_restore(store: Store, src: Path, tmp_path: Path) -> None:
    """One byte changed in every pack: the restore raises IntegrityError naming the
    blob, writes no file from those bytes and leaves no temporary name."""
    tid, _ = scan_tree(store, src)
    # the trees stay readable: damage the data blobs only
    data_packs = {row.pack for row in store.catalog.iter_blobs() if row.kind == blob.BlobKind.DATA}
    for pack in data_packs:
        path = Path(store.backend.url) / pack_object_name(pack)
        raw = bytearray(path.read_bytes())
        raw[20] ^= 0xFF  # inside the first sealed blob
        path.write_bytes(bytes(raw))
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match="fails authentication"):
        restore_tree(store, tid, out, chunking=store.keys.chunking, workers=4)
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".lamina-restore-")]
    assert leftovers == []
    for p in out.rglob("*"):
        if p.is_file():  # whatever was written is a whole file of the source
            assert p.read_bytes() == (src / p.relative_to(out)).read_bytes()


def test_batched_blobs_serve_concurrent_readers_once_each(store: Store, src: Path) -> None:
    """Several threads reading through a server: every blob is fetched once, verified
    against its id, and each reader gets its own blobs."""
    scan_tree(store, src)
    ids = [row.id for row in store.catalog.iter_blobs() if row.kind == blob.BlobKind.DATA]
    asked: list[bytes] = []
    lock = threading.Lock()

    def fetch(batch: list[bytes]) -> list[bytes]:
        with lock:
            asked.extend(batch)
        return [store.get(i) for i in batch]

    source = BatchedBlobs(fetch, store.keys.chunking.id_key)
    source.prefetch(ids)
    got: dict[int, list[bytes]] = {}
    parts = [ids[k::4] for k in range(4)]

    def read(k: int) -> None:
        got[k] = list(source.get_many(parts[k]))

    threads = [threading.Thread(target=read, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert got[k] == [store.get(i) for i in parts[k]]
    assert sorted(asked) == sorted(ids)  # none asked twice


def test_batched_blobs_refuse_a_blob_that_does_not_match_its_id(store: Store, src: Path) -> None:
    scan_tree(store, src)
    bid = next(row.id for row in store.catalog.iter_blobs() if row.kind == blob.BlobKind.DATA)
    source = BatchedBlobs(lambda batch: [b"not it"] * len(batch), store.keys.chunking.id_key)
    with pytest.raises(IntegrityError, match="does not match its id"):
        source.get(bid)


def test_an_agent_reads_blobs_as_stored_and_refuses_a_hostile_answer(
    store: Store, src: Path
) -> None:
    """With ``stored``, ``http_blobs`` asks for blobs as stored: it inflates each
    and hashes it to its id; a payload of another blob, a frame that lies about its size or
    an answer of another shape is an ``IntegrityError``, never a plaintext handed on."""
    scan_tree(store, src)
    ids = [row.id for row in store.catalog.iter_blobs() if row.kind == blob.BlobKind.DATA][:2]
    bodies: list[dict[str, object]] = []

    def honest(path: str, body: dict[str, object]) -> bytes:
        bodies.append(body)
        wanted = [bytes.fromhex(str(i)) for i in body["ids"]]  # type: ignore[attr-defined]
        return msgpack.packb([list(x) for x in store.unseal_many(wanted)], use_bin_type=True)

    id_key = store.keys.chunking.id_key
    assert http_blobs(honest, id_key, stored=True).get(ids[0]) == store.get(ids[0])
    assert bodies[0]["stored"] is True
    (other,) = msgpack.unpackb(honest("", {"ids": [ids[1].hex()]}))
    (raw, flag, payload) = msgpack.unpackb(honest("", {"ids": [ids[0].hex()]}))[0]
    lying = [raw - 1, flag, payload]  # its own payload, another size
    for answer in ([other], [lying], [b"plain"], [[1, 2]], [[raw, 9, payload]]):
        packed = msgpack.packb(answer, use_bin_type=True)
        with pytest.raises(IntegrityError):
            http_blobs(lambda path, body, p=packed: p, id_key, stored=True).get(ids[0])


def test_small_folders_share_requests_through_a_batching_source(
    store: Store, tmp_path: Path
) -> None:
    """Forty folders of two small files each, through ``/blobs/read``'s batching client: the
    walk reads sub-folders' trees ahead and queues their files' chunks, so a request
    carries many folders (one request per folder would be 40 or more), whether the source
    reads them ahead in the background or a reader asks."""
    root = tmp_path / "many"
    for d in range(40):
        for i in range(2):
            write(root / f"d{d:02}" / f"f{i}", os.urandom(500 + d * 10 + i), MTIME)
        os.utime(root / f"d{d:02}", ns=(MTIME, MTIME))
    tid, _ = scan_tree(store, root)
    requests: list[int] = []

    def fetch(batch: list[bytes]) -> list[bytes]:
        requests.append(len(batch))
        return [store.get(i) for i in batch]

    out = tmp_path / "out"
    st = restore_tree(BatchedBlobs(fetch, store.keys.chunking.id_key), tid, out, workers=1)
    assert st.errors == [] and st.files == 80
    assert_same_tree(root, out)
    assert sum(requests) == 1 + 40 + 80  # the root, each folder's tree, each file: once
    # The root, then per batch the walk queues (4: the root's sub-folders, and three of
    # up to 16 folders) at most one background request taking every queued id and one
    # a reader makes for ids queued while another was in flight: never one per folder.
    assert len(requests) <= 1 + 2 * 4, requests


def test_reading_ahead_fetches_each_blob_once_across_prefixes_and_copies(
    store: Store, tmp_path: Path
) -> None:
    """A restore into an empty folder through a source that reads ahead in the
    background: a server answering only a prefix of each request (here three blobs)
    gets the rest asked again, never an answered id; the same content in several files
    is fetched once and written to each."""
    root = tmp_path / "many"
    for d in range(12):
        write(root / f"d{d:02}" / "same", b"the same content in every folder", MTIME)
        for i in range(3):
            write(root / f"d{d:02}" / f"f{i}", os.urandom(300 + d * 10 + i), MTIME)
        os.utime(root / f"d{d:02}", ns=(MTIME, MTIME))
    tid, _ = scan_tree(store, root)
    answered: list[bytes] = []
    lock = threading.Lock()

    def fetch(batch: list[bytes]) -> list[bytes]:
        with lock:
            answered.extend(batch[:3])
        return [store.get(i) for i in batch[:3]]

    source = BatchedBlobs(fetch, store.keys.chunking.id_key)
    st = restore_tree(source, tid, tmp_path / "out", workers=4)
    assert st.errors == [] and st.files == 48
    assert_same_tree(root, tmp_path / "out")
    assert len(answered) == len(set(answered)) == 1 + 12 + 12 * 3 + 1


def test_a_store_looks_up_a_batch_of_folders_read_ahead_at_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into an empty folder, the trees read ahead (sixteen siblings at a time) have their
    files' chunks and sub-folders' trees located in one catalog query per batch, not two
    per folder: forty folders cost a handful of lookups."""
    root = tmp_path / "many"
    for d in range(40):
        write(root / f"d{d:02}" / "f", os.urandom(400 + d), MTIME)
        os.utime(root / f"d{d:02}", ns=(MTIME, MTIME))
    tid, _ = scan_tree(store, root)
    reopened = Store(store.backend, store.catalog, store.keys)  # no location remembered yet
    lookups: list[int] = []
    locate = reopened.catalog.locate

    def counted(ids, *a, **kw):  # type: ignore[no-untyped-def]
        lookups.append(len(ids))
        return locate(ids, *a, **kw)

    monkeypatch.setattr(reopened.catalog, "locate", counted)
    st = restore_tree(reopened, tid, tmp_path / "out", workers=1)
    assert st.errors == [] and st.files == 40
    assert_same_tree(root, tmp_path / "out")
    assert len(lookups) <= 8, lookups


def test_without_stored_an_agent_reads_plaintext_and_still_hashes_it(
    store: Store, src: Path
) -> None:
    """From a server that does not say it speaks version 3 (a version-2 server refuses the
    field: 400 ``stored: Extra inputs are not permitted``) the agent never asks for
    ``stored``, and still hashes each blob to its id; asked of such a server, the
    refusal is an error, never taken for an answer."""
    scan_tree(store, src)
    ids = [row.id for row in store.catalog.iter_blobs() if row.kind == blob.BlobKind.DATA][:2]
    bodies: list[dict[str, object]] = []

    def version_2(path: str, body: dict[str, object]) -> bytes:
        bodies.append(body)
        if "stored" in body:
            raise UsageError("stored: Extra inputs are not permitted")
        wanted = [bytes.fromhex(str(i)) for i in body["ids"]]  # type: ignore[attr-defined]
        return msgpack.packb([store.get(i) for i in wanted], use_bin_type=True)

    blobs = http_blobs(version_2, store.keys.chunking.id_key)
    assert blobs.get(ids[0]) == store.get(ids[0])
    assert blobs.get(ids[1]) == store.get(ids[1])
    assert ["stored" in b for b in bodies] == [False, False]
    with pytest.raises(UsageError, match="stored"):
        http_blobs(version_2, store.keys.chunking.id_key, stored=True).get(ids[0])
    with pytest.raises(ValueError, match="id key"):
        http_blobs(version_2, stored=True)

    def forged(path: str, body: dict[str, object]) -> bytes:
        return msgpack.packb([b"not the blob"], use_bin_type=True)

    with pytest.raises(IntegrityError):
        http_blobs(forged, store.keys.chunking.id_key).get(ids[0])


def test_small_files_go_to_the_pool_a_folder_batch_at_a_time(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool job per file cost as much CPU as writing a small file: a folder's files
    are handed over ``JOB_FILES`` (or ``JOB_BYTES``) at a time, and the result is exact."""
    root = tmp_path / "src"
    n = 3 * restore_mod.JOB_FILES + 5
    for i in range(n):
        write(root / "many" / f"f{i:03}", b"x" * (i + 1), MTIME + i)
    for i in range(3):  # a big file fills a job by itself
        write(root / "big" / f"b{i}", os.urandom(restore_mod.JOB_BYTES), MTIME)
    tid, _ = scan_tree(store, root)
    jobs: list[int] = []
    real = Restorer.write_job

    def files(self: Restorer, queued, target) -> None:  # type: ignore[no-untyped-def]
        jobs.append(len(queued))
        real(self, queued, target)

    monkeypatch.setattr(Restorer, "write_job", files)
    out = tmp_path / "out"
    st = restore_tree(store, tid, out, workers=4)
    assert st.errors == [] and st.files == n + 3
    assert sorted(jobs) == sorted([restore_mod.JOB_FILES] * 3 + [5] + [1] * 3)
    assert_same_tree(root, out)


def test_a_hard_link_waits_for_its_first_name_without_stopping_the_walk(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk reaches a hard link while the job writing its first name still runs: it
    goes on handing out the files after it (here the job of ``c/after`` is what lets
    the first name's job finish), and makes the link once that job is done, before the
    link's folder gets its metadata."""
    root = tmp_path / "src"
    write(root / "a" / "first", os.urandom(5000), MTIME)
    (root / "b").mkdir()
    os.link(root / "a" / "first", root / "b" / "second")
    write(root / "c" / "after", os.urandom(3000), MTIME + 1)
    os.utime(root / "b", ns=(MTIME + 50, MTIME + 50))
    tid, _ = scan_tree(store, root)
    after_started = threading.Event()
    order: list[str] = []
    real = Restorer._write

    def _write(self: Restorer, e, target, existing) -> None:  # type: ignore[no-untyped-def]
        if e.name == b"first":
            # generous: only a walk that waits for this job (the fault) lets it run out
            after_started.wait(60)
            order.append("first" if after_started.is_set() else "first, nothing after")
        elif e.name == b"after":
            order.append("after")
            after_started.set()
        real(self, e, target, existing)

    monkeypatch.setattr(Restorer, "_write", _write)
    out = tmp_path / "out"
    st = restore_tree(store, tid, out, workers=2)
    assert st.errors == [] and st.files == 3
    assert order == ["after", "first"]
    assert os.stat(out / "a" / "first").st_ino == os.stat(out / "b" / "second").st_ino
    assert_same_tree(root, out)
