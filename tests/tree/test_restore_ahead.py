"""Reading a restore's trees ahead, and the requests a restore through a server makes.

Through a server every read is a request (about 1.6 ms of the server's CPU each, besides
its blobs): a restore over worker processes reads only trees in the restoring process,
and must not ask again for a folder it has already read (every empty folder is the same
tree); a worker's job asks for its blobs in few requests."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack

from lamina.protocol.layers import BlobsRequest
from lamina.store import blob
from lamina.store.repository import Store
from lamina.tree.model import decode_tree
from lamina.tree.restore import restore_tree
from lamina.tree.restore_ahead import ReadAhead
from lamina.tree.sources import HTTP_BATCH, BatchedBlobs, http_blobs

from .procsources import opener, store_blobs
from .treeutil import MTIME, assert_same_tree, scan_tree, write


def test_a_restore_over_processes_reads_each_tree_once_however_often_it_recurs(
    store: Store, tmp_path: Path
) -> None:
    """Three hundred folders, each with a file of its own and an empty sub-folder (one
    tree for all three hundred), over worker processes: the walk's process asks only for
    trees, each once, the empty one too, in a few requests; the tree is exact."""
    root = tmp_path / "src"
    for d in range(300):
        write(root / f"d{d:03}" / "f", os.urandom(100 + d), MTIME)
        (root / f"d{d:03}" / "empty").mkdir()
        os.utime(root / f"d{d:03}" / "empty", ns=(MTIME, MTIME))
        os.utime(root / f"d{d:03}", ns=(MTIME, MTIME))
    tid, _ = scan_tree(store, root)
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key
    requests: list[list[bytes]] = []

    def fetch(ids: list[bytes]) -> list[bytes]:
        requests.append(ids)
        return [blobs[i] for i in ids]

    out = tmp_path / "out"
    st = restore_tree(BatchedBlobs(fetch, key), tid, out, processes=2, opener=opener(blobs, key))
    assert st.errors == [] and st.files == 300
    assert_same_tree(root, out)
    asked = [i for r in requests for i in r]
    trees = {i for i, b in blobs.items() if store.catalog.locate([i])[i].kind == blob.BlobKind.TREE}
    assert set(asked) <= trees  # the files' data is the workers'
    assert len(asked) == len(set(asked)) == 1 + 300 + 1  # the root, each folder, the empty one
    assert len(requests) <= 6, [len(r) for r in requests]


def test_a_server_is_asked_for_many_blobs_per_request(store: Store) -> None:
    """Queued blobs through ``/blobs/read`` (``http_blobs``) go in requests of
    ``HTTP_BATCH`` ids, as many as the route takes (1,024: 512 before session 14's
    second wave, 128 before session 13); each blob still hashed against its id."""
    key = store.keys.chunking.id_key
    n = HTTP_BATCH + HTTP_BATCH // 2
    plain = {blob.blob_id(key, d): d for d in (b"blob %d" % k for k in range(n))}
    ids = list(plain)
    sizes: list[int] = []

    def post(path: str, body: dict[str, list[str]]) -> bytes:
        assert path == "/blobs/read"
        BlobsRequest(ids=body["ids"])  # the route's own limit
        sizes.append(len(body["ids"]))
        return msgpack.packb([plain[bytes.fromhex(i)] for i in body["ids"]], use_bin_type=True)

    source = http_blobs(post, key)
    source.prefetch(ids)
    assert list(source.get_many(ids)) == [plain[i] for i in ids]
    assert HTTP_BATCH == BlobsRequest.model_fields["ids"].metadata[0].max_length == 1024
    assert sorted(sizes) == [n - HTTP_BATCH, HTTP_BATCH]


def test_the_walk_takes_every_folder_from_the_read_ahead_however_often_it_recurs(
    store: Store, tmp_path: Path
) -> None:
    """Trees only (worker processes read the files): each folder the walk meets, in its
    order, is there to take, also the same empty folder for the three hundredth time; a
    folder the walk had to read itself would be a request of its own through a server."""
    root = tmp_path / "src"
    for d in range(300):
        write(root / f"d{d:03}" / "f", os.urandom(100 + d), MTIME)
        (root / f"d{d:03}" / "empty").mkdir()
    tid, _ = scan_tree(store, root)
    source = BatchedBlobs(lambda ids: list(store.open_many(ids, 1 << 30)))
    ahead = ReadAhead(source, tid, chunks=False)
    missed = 0

    def walk(tree: bytes) -> None:
        nonlocal missed
        entries = ahead.take(tree)
        if entries is None:
            missed += 1
            entries = decode_tree(source.get(tree))
        for e in entries:
            if e.subtree is not None:
                walk(e.subtree)

    walk(tid)
    assert missed == 0
