"""``tree.scan_read.FileReader``: what a reading thread hands its sink."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.keys import ChunkingSecret, StoreKeys
from lamina.tree.model import Entry
from lamina.tree.scan_read import FileReader, Job


class _FlakySink:
    """Fails its first two ``put_chunk`` with an error that does not stick (unlike the store's writer and the
    agent's sink), and keeps a copy of every blob put after them."""

    def __init__(self) -> None:
        self.failures = 2
        self.put: list[tuple[bytes, bytes]] = []

    def need(self, ids: set[bytes]) -> set[bytes]:
        return set(ids)

    def put_chunk(self, kind: BlobKind, bid: bytes, data: bytes | memoryview) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(5, "Input/output error")
        self.put.append((bid, bytes(data)))


class _Reader(FileReader):
    def __init__(self, sink: _FlakySink, keys: StoreKeys) -> None:
        self.writer = sink  # type: ignore[assignment]
        self._chunking = keys.chunking
        self._local = threading.local()


def test_a_sink_that_failed_once_never_gets_a_blob_under_another_ones_id(tmp_path: Path) -> None:
    """A large file's chunks are views of the thread's reading buffer until they are
    settled; a sink failing while they are settled must not leave them queued for the
    next file, whose bytes then fill the same buffer (its blobs would be stored under
    the first file's ids)."""
    keys = StoreKeys.generate(min_size=1024, avg_size=4096, max_size=16384)
    rng = random.Random(7)
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(rng.randbytes(400_000))
    sink = _FlakySink()
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        job = Job()
        for name in ("a", "b", "c"):
            st = os.lstat(tmp_path / name)
            job.files.append((name.encode(), Entry(name.encode(), "file"), st, dfd))
        results = _Reader(sink, keys)._run_job(job)
    finally:
        os.close(dfd)
    assert results[0] is not None and "cannot read" in results[0]  # the failed settles
    assert results[2] is None and sink.put  # the last file's blobs went on
    for bid, data in sink.put:
        assert blob.blob_id(keys.chunking.id_key, data) == bid


class _ManySink:
    """Takes a reading thread's chunks in one ``put_chunks`` call; never one at a time."""

    def __init__(self, chunking: ChunkingSecret) -> None:
        self.chunking = chunking
        self.calls: list[list[tuple[bytes, bytes]]] = []

    def need(self, ids: set[bytes]) -> set[bytes]:
        raise AssertionError("put_chunks answers for need")

    def put_chunk(self, kind: BlobKind, bid: bytes, data: bytes | memoryview) -> None:
        raise AssertionError("a chunk put alone")

    def put(self, kind: BlobKind, data: bytes) -> bytes:
        raise AssertionError("no trees here")

    def put_chunks(self, kind: BlobKind, chunks: list[tuple[bytes, bytes | memoryview]]) -> None:
        self.calls.append([(bid, bytes(data)) for bid, data in chunks])


def test_a_job_of_small_files_goes_to_a_many_sink_in_one_call(tmp_path: Path) -> None:
    """The agent's sink takes a job's chunks at once (``put_chunks``): one call, one lock
    for 50 small files, not a ``need`` and a ``put_chunk`` per file; each id names its
    content, in the files' order."""
    keys = StoreKeys.generate(min_size=1024, avg_size=4096, max_size=16384)
    rng = random.Random(3)
    contents = [rng.randbytes(rng.randrange(1, 1024)) for _ in range(50)]
    for i, data in enumerate(contents):
        (tmp_path / f"f{i:02d}").write_bytes(data)
    sink = _ManySink(keys.chunking)
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        job = Job()
        for i in range(50):
            name = f"f{i:02d}".encode()
            job.files.append((name, Entry(name, "file"), os.lstat(tmp_path / f"f{i:02d}"), dfd))
        results = _Reader(sink, keys)._run_job(job)  # type: ignore[arg-type]
    finally:
        os.close(dfd)
    assert results == [None] * 50
    assert len(sink.calls) == 1
    assert [data for _, data in sink.calls[0]] == contents
    for (bid, data), (_, e, _, _) in zip(sink.calls[0], job.files, strict=True):
        assert blob.blob_id(keys.chunking.id_key, data) == bid and e.content == [bid]
