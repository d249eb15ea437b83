"""Reading a scan's files in worker threads: open by name under the folder's
descriptor, check the inode, chunk, hash, hand the chunks to the sink.

The walk (``tree.scan``) queues files in jobs; a worker runs one job at a time
(``FileReader._run_job``). A file whose size, mtime or ctime moves while it is read
is read again (``READ_TRIES``), and otherwise reported and left out: never stored
torn. What was opened must be the inode the listing saw (``st_dev``, ``st_ino``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.chunker import Chunker
from lamina.store.chunking import ChunkingSecret
from lamina.tree.extents import FileChangedError, chunk_fd, small_content
from lamina.tree.model import Entry

#: Bytes of small files batched in one job.
JOB_BYTES = 16 * 1024 * 1024
#: Chunks (their plaintext) a reading thread holds before asking what the store lacks:
#: one question per read step of a large file, and a bound on each thread's memory.
PENDING_BYTES = 8 * 1024 * 1024
READ_TRIES = 3

# O_NONBLOCK: if the file was replaced by a FIFO since it was listed, open()
# must not wait for a writer (fstat then rejects it).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class FileReplacedError(Exception):
    """The name no longer leads to the inode the listing saw."""


def same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def xattrs_at(target: bytes | int) -> list[tuple[bytes, bytes]]:
    """The extended attributes of an open file (``target`` a descriptor) or of a path (its
    last component not followed), sorted as entries keep them; an attribute that cannot
    be read is left out, and there are none when the list cannot be read."""
    # os.*xattr take follow_symlinks with a path only.
    nofollow: dict[str, bool] = {} if isinstance(target, int) else {"follow_symlinks": False}
    try:
        names = os.listxattr(target, **nofollow)
    except OSError:
        return []
    if not names:  # most files: no list to build and sort
        return []
    out = []
    for n in names:
        with contextlib.suppress(OSError):
            out.append((os.fsencode(n), os.getxattr(target, n, **nofollow)))
    return sorted(out)


class BlobSink(Protocol):
    """Where a scan puts what it finds: the store's ``Writer``, or an agent's uploader.

    ``need``, ``put_chunk`` and ``put`` are called from several threads at once.
    """

    @property
    def chunking(self) -> ChunkingSecret: ...

    def need(self, ids: Collection[bytes]) -> set[bytes]:
        """The subset of ``ids`` the destination does not hold yet."""
        ...

    def put_chunk(self, kind: BlobKind, bid: bytes, data: bytes | memoryview) -> None:
        """Store a blob whose id the caller computed (it must match the content)."""
        ...

    def put(self, kind: BlobKind, data: bytes) -> bytes:
        """Store plaintext unless already held; return its id."""
        ...


@runtime_checkable
class ManySink(BlobSink, Protocol):
    """A sink that takes a reading thread's chunks in one call (the agent's uploader):
    one lock and one check for a job's small files, not one per file."""

    def put_chunks(self, kind: BlobKind, chunks: list[tuple[bytes, bytes | memoryview]]) -> None:
        """``need`` and ``put_chunk`` for each of ``chunks`` (id, content), in order."""
        ...


class Job:
    """Files to read in one worker call; holds chunks until it asks what the store lacks.

    Small files of several folders may share a job: the walk does not wait for a
    folder's files before it lists the next folder.
    """

    def __init__(self) -> None:
        #: (path for messages, entry, the listing's lstat, descriptor of its folder)
        self.files: list[tuple[bytes, Entry, os.stat_result, int]] = []
        self.size = 0
        self.future: Future[list[str | None]] | None = None


class FileReader:
    """The scanner's reading half: what runs in the worker threads."""

    writer: BlobSink
    _chunking: ChunkingSecret
    _local: threading.local

    def _own(self, e: Entry, st: os.stat_result) -> None:
        """Owner, mode and mtime of ``e`` from ``st``, the ``fstat`` of what was read
        (the owners' names are the walk's, which knows them)."""
        e.mode = stat.S_IMODE(st.st_mode)
        e.uid, e.gid = st.st_uid, st.st_gid
        e.mtime = st.st_mtime_ns

    def _chunker(self) -> Chunker:
        c: Chunker | None = getattr(self._local, "chunker", None)
        if c is None:
            c = self._local.chunker = Chunker(self._chunking)
        return c

    def _run_job(self, job: Job) -> list[str | None]:
        pending: list[tuple[bytes, memoryview | bytes]] = []
        pending_size = 0
        results: list[str | None] = []
        many = self.writer if isinstance(self.writer, ManySink) else None

        def settle() -> None:
            nonlocal pending_size
            if not pending:
                return
            try:
                if many is not None:
                    many.put_chunks(BlobKind.DATA, pending)
                    return
                need = self.writer.need({bid for bid, _ in pending})
                for bid, data in pending:
                    if bid in need:
                        need.discard(bid)
                        self.writer.put_chunk(BlobKind.DATA, bid, data)
            finally:  # even when the sink failed: the views go with the buffer's reuse
                pending.clear()
                pending_size = 0

        def add(data: memoryview | bytes) -> bytes:
            """``data`` may be a view of the reading buffer, valid until ``settle``."""
            nonlocal pending_size
            bid = blob.blob_id(self._chunking.id_key, data)
            pending.append((bid, data))
            pending_size += len(data)
            if pending_size >= PENDING_BYTES:
                settle()
            return bid

        for _path, e, st, dfd in job.files:
            try:
                e.content = self._read_file(dfd, e, st, add, settle)
                results.append(None)
            except FileChangedError:
                e.content = None
                results.append(f"changed while being read ({READ_TRIES} tries); not stored")
            except FileReplacedError:
                e.content = None
                results.append("replaced while being scanned; not stored")
            except OSError as err:
                e.content = None
                results.append(f"cannot read: {err.strerror}")
        settle()
        return results

    def _read_file(
        self,
        dfd: int,
        e: Entry,
        st0: os.stat_result,
        add: Callable[[memoryview | bytes], bytes],
        settle: Callable[[], None],
    ) -> list[bytes | int]:
        """Read file ``e.name`` of folder ``dfd``; it must be the inode ``st0`` listed."""
        for _ in range(READ_TRIES):
            fd = os.open(e.name, _FILE_FLAGS, dir_fd=dfd)
            try:
                st1 = os.fstat(fd)
                if not stat.S_ISREG(st1.st_mode) or not same_inode(st0, st1):
                    raise FileReplacedError
                content = self._chunk_fd(fd, st1, add, settle)
                st2 = os.fstat(fd)
                xattrs = xattrs_at(fd)
            finally:
                os.close(fd)
            sig1 = (st1.st_size, st1.st_mtime_ns, st1.st_ctime_ns)
            if sig1 == (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns):
                # Record the metadata of the version actually read, all from one fstat.
                # (The cache keeps the first lstat: if it differs, the next scan reads again.)
                e.size = st1.st_size
                self._own(e, st1)
                e.xattrs = xattrs
                return content
        raise FileChangedError

    def _chunk_fd(
        self,
        fd: int,
        st: os.stat_result,
        add: Callable[[memoryview | bytes], bytes],
        settle: Callable[[], None],
    ) -> list[bytes | int]:
        # A small file needs no chunker (nor this thread's, looked up per file). A large
        # one's chunks come as views of the reading buffer, settled before it is reused.
        small = small_content(fd, st, self._chunking.min_size, add)
        if small is not None:
            return small
        return chunk_fd(fd, st, self._chunker(), add, settle)
