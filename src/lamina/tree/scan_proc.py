"""Reading a scan's small files in worker processes: the scan's Python on a second core.

A scan's per-file Python (open, two ``fstat``, ``pread``, xattrs, BLAKE3, zstd, AES-GCM,
each a call at a time) shares one GIL with the walk. Past ``PROCESS_AFTER`` small
files, a scan into a store (``tree.backup``) or an agent's sync starts worker processes
(``python -m lamina.tree.scan_proc``), and its reading threads hand each job of small
files to one: the job's folder descriptors go over a private socket pair
(``SCM_RIGHTS``), so the worker opens each file under the very folder the walk listed,
with ``O_NOFOLLOW``, and checks the inode as a reading thread does (the same
``FileReader._run_job``). It answers each file's metadata and content (chunk ids), and
the chunks compressed and sealed (or, while most chunks turn out to be stored already,
as plaintext). The parent asks the store which chunks it lacks and adds those to its
packs: the catalog, the packs, the trees and the files cache stay the parent's alone.
Once the parent's writer has loaded the store's data ids (``Writer.known_data``), the
workers get them too, and neither compress, seal nor send back a chunk among them.

An agent's sync (its uploader, ``CompressedSink``: it holds the chunking secret, never
the data key) gets its chunks compressed only, while its server's answers say it lacks
most of what is asked about (a first sync), else as plaintext; the uploader asks the
server about them and bundles what it lacks, as it does a reading thread's.

Messages (both ends are this module, one process and its child)::

    request:  u32 LE length | pickle ("job", form, [(descriptor index, name, st_dev, st_ino), ...])
              (the folders' descriptors ride on the length, as SCM_RIGHTS)
              or u32 LE length | pickle ("known", the store's data ids joined): no answer
    answer:   u32 LE length | pickle ("ok", errors, [file fields], [(id, blob, raw length, flag)])
                                   or ("failed", traceback)

A worker that dies (killed, out of memory) fails the job it held, so the scan fails and
no snapshot is committed (packs already written are garbage for gc, as after any crash).
"""

from __future__ import annotations

import contextlib
import enum
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol, runtime_checkable

from lamina.errors import LaminaError
from lamina.store import blob
from lamina.store.blob import ID_SIZE, BlobKind
from lamina.store.chunking import ChunkingSecret
from lamina.tree.collector import fewer_collections
from lamina.tree.model import Entry
from lamina.tree.scan_read import BlobSink, FileReader, Job, ManySink

#: Small files a scan queues before it starts its workers: a smaller tree never pays
#: for an interpreter's start (about 0.1 s of CPU).
PROCESS_AFTER = 4096
#: Folder descriptors one request carries at most (the kernel's SCM_MAX_FD is 253); a
#: job of files from more folders is read by its thread.
MAX_FDS = 250
#: Below this share of a job's chunks the store lacked, the next job's chunks come back
#: as plaintext and only the lacking ones are sealed (by the parent): a 2nd endpoint's
#: backup would otherwise compress and seal mostly chunks the store holds.
SEAL_SHARE = 0.5
_LEN = struct.Struct("<I")
#: The fields of a file a worker read: size, mode, uid, gid, mtime (ns), xattrs, content.
FileFields = tuple[int, int, int, int, int, list[tuple[bytes, bytes]], list[bytes | int]]
#: A chunk a worker read: id, content in the job's ``Form``, raw length, and the
#: compression flag of a ``COMPRESSED`` chunk (0 otherwise).
Chunk = tuple[bytes, bytes, int, int]


class Form(enum.IntEnum):
    """How a job's chunks come back from a worker."""

    #: plaintext: the parent compresses (and seals) the few its destination lacks
    PLAIN = 0
    #: compressed and sealed with the store's data key (a backup into a store)
    SEALED = 1
    #: compressed only, with their flag (an agent's sync: it never holds the data key)
    COMPRESSED = 2


@runtime_checkable
class SealedSink(BlobSink, Protocol):
    """A sink that takes blobs sealed elsewhere: the store's ``Writer``."""

    @property
    def data_key(self) -> bytes: ...

    @property
    def known_data(self) -> set[bytes] | None:
        """The store's data ids, once loaded (None before, or if too many)."""
        ...

    def put_sealed_many(
        self, kind: BlobKind, blobs: Iterable[tuple[bytes, bytes, int]]
    ) -> None: ...


@runtime_checkable
class CompressedSink(ManySink, Protocol):
    """A sink that takes blobs compressed elsewhere: the agent's uploader."""

    @property
    def compress_ahead(self) -> bool:
        """Whether chunks should come compressed: the destination lacks most of what it
        was asked about (else as plaintext, and only what it lacks is compressed)."""
        ...

    def put_compressed(self, kind: BlobKind, blobs: list[tuple[bytes, int, bytes, int]]) -> None:
        """``put_chunks`` for blobs compressed elsewhere: (id, flag, payload, raw length)."""
        ...


def scan_processes() -> int:
    """Worker processes a scan reads small files with (a backup, an agent's sync): one
    per core beside the walk's, at most three; none on one core."""
    return max(0, min(3, len(os.sched_getaffinity(0)) - 1))


class WorkerDiedError(LaminaError):
    """A scan's worker process stopped answering (killed, or failed)."""


# --- framing -------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, into: bytearray) -> bool:
    """Fill ``into``; False if the stream ends first. Straight into the buffer
    (``recv_into``): ``recv(n)`` allocated ``n`` bytes per call, and the pieces were then
    joined and copied once more (a job's answer is megabytes)."""
    view = memoryview(into)
    while view:
        got = sock.recv_into(view)
        if not got:
            return False
        view = view[got:]
    return True


def _send(sock: socket.socket, body: bytes, fds: list[int] | None = None) -> None:
    if fds:
        socket.send_fds(sock, [_LEN.pack(len(body))], fds)
    else:
        sock.sendall(_LEN.pack(len(body)))
    sock.sendall(body)


def _recv(sock: socket.socket, max_fds: int = 0) -> tuple[bytearray, list[int]] | None:
    """One message and the descriptors that came with it; None at the end of the stream."""
    head = bytearray()
    fds: list[int] = []
    if max_fds:
        data, fds, _flags, _addr = socket.recv_fds(sock, _LEN.size, max_fds)
        if not data:
            return None
        head += data
    try:
        while len(head) < _LEN.size:
            got = sock.recv(_LEN.size - len(head))
            if not got:
                raise EOFError
            head += got
        body = bytearray(_LEN.unpack(head)[0])
        if not _recv_exact(sock, body):
            raise EOFError
    except BaseException:
        for fd in fds:
            os.close(fd)
        if not head:
            return None
        raise
    return body, fds


# --- the parent's side ---------------------------------------------------------------


class ReadProcess:
    """One worker process and the socket to it. Several threads may ``run`` at once: their
    requests queue in the socket and the worker answers them in order, so it never waits
    for the parent between jobs (one job at a time, sent and answered, left it idle for
    a scheduler's turn per job: slower than the threads on a busy host)."""

    def __init__(self, chunking: ChunkingSecret, data_key: bytes) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                # -P: not the current folder first on sys.path (``-m`` puts it there: a
                # backup run as root from a folder others write to would import theirs)
                [sys.executable, "-P", "-m", "lamina.tree.scan_proc", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        #: requests sent and answers taken, in order; jobs sent and not yet answered
        self._sent = self._taken = 0
        self.in_flight = 0
        self._send_lock = threading.Lock()
        self._turn = threading.Condition()
        self._failed: WorkerDiedError | None = None
        c = chunking
        secret = (c.chunker_seed, c.id_key, c.min_size, c.avg_size, c.max_size, data_key)
        _send(ours, pickle.dumps(secret))

    def run(
        self, form: Form, files: list[tuple[int, bytes, os.stat_result]]
    ) -> tuple[list[str | None], list[FileFields | None], list[Chunk]]:
        """Read ``files`` (folder descriptor, name, the listing's lstat) in the worker."""
        return self.answer(self.send(form, files))

    def send(self, form: Form, files: list[tuple[int, bytes, os.stat_result]]) -> int:
        """Queue a request for the worker; return its ticket for ``answer``."""
        index: dict[int, int] = {}
        # the inode the listing saw, not its whole lstat (8 us a file to pickle)
        req = [
            (index.setdefault(dfd, len(index)), name, st.st_dev, st.st_ino)
            for dfd, name, st in files
        ]
        return self._send(pickle.dumps(("job", int(form), req)), list(index))

    def send_known(self, ids: bytes) -> None:
        """Tell the worker the store's data ids (joined): it sends none of them back."""
        self._send(pickle.dumps(("known", ids)), [], answered=False)

    def _send(self, body: bytes, fds: list[int], answered: bool = True) -> int:
        try:
            with self._send_lock:
                _send(self._sock, body, fds)
                ticket = self._sent
                self._sent += answered
        except OSError as e:
            failed = WorkerDiedError(f"the scan's worker process failed: {e}")
            with contextlib.suppress(OSError):  # a thread waiting in ``recv`` returns
                self._sock.shutdown(socket.SHUT_RDWR)
            with self._turn:
                self._failed = failed
                self._turn.notify_all()
            raise failed from e
        return ticket

    def answer(self, ticket: int) -> tuple[list[str | None], list[FileFields | None], list[Chunk]]:
        """The worker's answer to request ``ticket``: each file's error or fields, and the
        chunks (``Chunk``)."""
        got = self._answer(ticket)
        answer: tuple[Any, ...] = pickle.loads(got)  # noqa: S301 - our own child, a private socket
        if answer[0] != "ok":
            raise WorkerDiedError(f"the scan's worker process failed:\n{answer[1]}")
        return answer[1], answer[2], answer[3]

    def _answer(self, ticket: int) -> bytearray:
        """The answer to request ``ticket``, taken when the ones before it were."""
        with self._turn:
            while self._taken != ticket and self._failed is None:
                self._turn.wait()
            try:
                if self._failed is not None:
                    raise self._failed
                try:
                    got = _recv(self._sock)
                except (OSError, EOFError) as e:
                    raise WorkerDiedError(f"the scan's worker process failed: {e}") from e
                if got is None:
                    raise WorkerDiedError(
                        f"the scan's worker process stopped (exit status {self.proc.poll()})"
                    )
            except WorkerDiedError as e:
                self._failed = e
                raise
            finally:
                self._taken += 1
                self._turn.notify_all()
        return got[0]

    def close(self) -> None:
        """Stop the worker (it exits at the end of its stream; killed if it does not)."""
        self._sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ProcessReaders:
    """The workers of one scan; a reading thread borrows one per job (``run_job``)."""

    def __init__(self, sink: SealedSink | CompressedSink, count: int) -> None:
        self.sink = sink
        data_key = sink.data_key if isinstance(sink, SealedSink) else b""
        self.procs: list[ReadProcess] = []
        try:
            for _ in range(count):
                self.procs.append(ReadProcess(sink.chunking, data_key))
        except BaseException:
            self.close()
            raise
        #: a store's writer: chunks sealed while the store lacked most of the last job's
        self._seal = True
        self._known_sent = False
        self._lock = threading.Lock()

    @staticmethod
    def takes(job: Job) -> bool:
        return len({dfd for *_, dfd in job.files}) <= MAX_FDS

    def run_job(self, job: Job, name: Callable[[Entry], None]) -> list[str | None]:
        """Read ``job`` in a worker; add the chunks the store lacks (an agent's uploader:
        every chunk, which it asks its server about); ``name`` fills an entry's owner
        names from its uid and gid."""
        sink = self.sink
        self._send_known()  # before the request: the worker skips them in this job already
        with self._lock:
            if isinstance(sink, SealedSink):
                form = Form.SEALED if self._seal else Form.PLAIN
            else:
                form = Form.COMPRESSED if sink.compress_ahead else Form.PLAIN
            proc = min(self.procs, key=lambda p: p.in_flight)
            proc.in_flight += 1
        try:
            errors, fields, chunks = proc.run(
                form, [(dfd, e.name, st) for _, e, st, dfd in job.files]
            )
        finally:
            with self._lock:
                proc.in_flight -= 1
        for (_, e, _, _), f in zip(job.files, fields, strict=True):
            if f is None:
                e.content = None
                continue
            e.size, e.mode, e.uid, e.gid, e.mtime, e.xattrs, e.content = f
            name(e)
        if not chunks:
            return errors
        if not isinstance(sink, SealedSink):  # it asks its server, many jobs' ids at once
            if form == Form.COMPRESSED:
                sink.put_compressed(BlobKind.DATA, [(b, f, d, n) for b, d, n, f in chunks])
            else:
                sink.put_chunks(BlobKind.DATA, [(b, d) for b, d, _, _ in chunks])
            return errors
        need = sink.need({c[0] for c in chunks})
        self._send_known()
        lacking = len(need)
        if form == Form.SEALED:  # one call (and one lock) for the job's sealed blobs
            sink.put_sealed_many(BlobKind.DATA, ((b, d, n) for b, d, n, _ in chunks if b in need))
        else:
            for bid, data, _, _ in chunks:
                if bid in need:
                    need.discard(bid)
                    sink.put_chunk(BlobKind.DATA, bid, data)
        with self._lock:
            self._seal = lacking >= SEAL_SHARE * len(chunks)
        return errors

    def _send_known(self) -> None:
        """The store's data ids to every worker, once the writer has loaded them."""
        if self._known_sent or not isinstance(self.sink, SealedSink):
            return
        known = self.sink.known_data
        if known is None:
            return
        with self._lock:
            if self._known_sent:
                return
            self._known_sent = True
        ids = b"".join(known)
        for p in self.procs:
            p.send_known(ids)

    def close(self) -> None:
        for p in self.procs:
            p.close()

    def kill(self) -> None:
        """Stop the workers now (a job they hold too); ``close`` then reaps them."""
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.proc.kill()


# --- the worker's side ---------------------------------------------------------------


class _WorkerSink:
    """Every chunk but the store's known data ids (``known``, once the parent sent them)
    is "lacking" here (the parent asks its destination): each is kept to be sent back in
    the job's ``form``."""

    def __init__(self, chunking: ChunkingSecret, data_key: bytes) -> None:
        self._chunking = chunking
        self._data_key = data_key
        self.form = Form.SEALED
        self.known: set[bytes] = set()
        self.out: list[Chunk] = []

    @property
    def chunking(self) -> ChunkingSecret:
        return self._chunking

    def need(self, ids: Collection[bytes]) -> set[bytes]:
        known = self.known
        return {i for i in ids if i not in known}

    def put_chunk(self, kind: BlobKind, bid: bytes, data: bytes | memoryview) -> None:
        if self.form == Form.PLAIN:
            self.out.append((bid, bytes(data), len(data), 0))
            return
        flag, payload = blob.compress(data)
        if self.form == Form.SEALED:
            sealed = blob.seal(self._data_key, kind, bid, flag, payload)
            self.out.append((bid, sealed, len(data), 0))
        else:
            self.out.append((bid, payload, len(data), flag))

    def put(self, kind: BlobKind, data: bytes) -> bytes:
        raise AssertionError("a scan's worker stores no trees")


class _WorkerReader(FileReader):
    def __init__(self, sink: _WorkerSink) -> None:
        self.writer = sink
        self._chunking = sink.chunking
        self._local = threading.local()


def _answer(
    reader: _WorkerReader,
    sink: _WorkerSink,
    form: int,
    files: list[tuple[int, bytes, int, int]],
    fds: list[int],
) -> tuple[Any, ...]:
    sink.form = Form(form)
    sink.out = []
    job = Job()
    for i, name, dev, ino in files:
        # what ``_read_file`` compares the opened file with: the listing's inode
        listed = os.stat_result((0, ino, dev, 0, 0, 0, 0, 0, 0, 0))
        job.files.append((name, Entry(name=name, type="file"), listed, fds[i]))
    errors = reader._run_job(job)
    fields = [
        None if e.content is None else (e.size, e.mode, e.uid, e.gid, e.mtime, e.xattrs, e.content)
        for _, e, _, _ in job.files
    ]
    return ("ok", errors, fields, sink.out)


def main(sock_fd: int) -> None:
    sock = socket.socket(fileno=sock_fd)
    got = _recv(sock)
    if got is None:
        return
    seed, id_key, lo, avg, hi, data_key = pickle.loads(got[0])  # noqa: S301 - see below
    sink = _WorkerSink(ChunkingSecret(seed, id_key, lo, avg, hi), data_key)
    reader = _WorkerReader(sink)
    with fewer_collections():  # the worker's imports left out of the collector's passes
        _serve(sock, sink, reader)


def _serve(sock: socket.socket, sink: _WorkerSink, reader: _WorkerReader) -> None:
    while (msg := _recv(sock, MAX_FDS)) is not None:
        body, fds = msg
        request = pickle.loads(body)  # noqa: S301 - our parent, a private socket
        if request[0] == "known":  # no answer (a failure here ends the worker)
            ids = request[1]
            sink.known = {ids[i : i + ID_SIZE] for i in range(0, len(ids), ID_SIZE)}
            continue
        try:
            answer = _answer(reader, sink, request[1], request[2], fds)
        except Exception:
            answer = ("failed", traceback.format_exc())
        finally:
            for fd in fds:
                os.close(fd)
        _send(sock, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError, ConnectionResetError):
        main(int(sys.argv[1]))
