"""A scan's small files read in worker processes (``tree.scan_proc``): the same trees as
the reading threads store, and a worker that dies fails the backup, committing nothing."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from lamina.store import blob
from lamina.store import writer as writer_module
from lamina.store.blob import BlobKind
from lamina.store.chunking import ChunkingSecret
from lamina.store.repository import Store
from lamina.tree import scan_proc
from lamina.tree.backup import backup
from lamina.tree.model import Entry
from lamina.tree.restore import restore_tree
from lamina.tree.scan import SMALL_FILE, Scanner
from lamina.tree.scan_proc import (
    CompressedSink,
    Form,
    ProcessReaders,
    ReadProcess,
    WorkerDiedError,
)
from lamina.tree.scan_read import Job

from .treeutil import MTIME, set_mtime, write


def mixed_tree(root: Path, min_chunk: int) -> None:
    """Small files in several folders, an empty one, one above the smallest chunk (cut by
    the worker's chunker), one above ``SMALL_FILE`` (a reading thread's), a symlink, a
    hard link, an extended attribute where the file system keeps them."""
    for d in range(4):
        for f in range(30):
            write(root / f"d{d}" / f"f{f:02d}", f"folder {d} file {f}\n".encode() * (f + 1))
    write(root / "empty", b"")
    write(root / "medium", bytes(range(256)) * (min_chunk // 256 * 3))
    write(root / "large", os.urandom(SMALL_FILE + 4096))
    (root / "link").symlink_to("d0/f00")
    os.link(root / "d1" / "f01", root / "d1" / "hard")
    with contextlib.suppress(OSError):
        os.setxattr(root / "d2" / "f02", "user.lamina", b"kept")
    os.chmod(root / "d3" / "f03", 0o600)
    set_mtime(root / "d3" / "f04", MTIME)


@pytest.fixture
def src(store: Store, tmp_path: Path) -> Path:
    mixed_tree(tmp_path / "src", store.keys.chunking.min_size)
    return tmp_path / "src"


def spy(
    monkeypatch: pytest.MonkeyPatch, cls: type, method: str, before: Callable[..., None]
) -> Callable[..., Any]:
    """Call ``before(self, *args)`` ahead of each call of ``cls.method``; return the real one."""
    real: Callable[..., Any] = getattr(cls, method)

    def wrapped(self: object, *args: object) -> Any:
        before(self, *args)
        return real(self, *args)

    monkeypatch.setattr(cls, method, wrapped)
    return real


def test_a_scan_in_worker_processes_stores_what_the_reading_threads_store(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs: list[int] = []  # jobs read by a worker process (their files)
    spy(
        monkeypatch,
        ProcessReaders,
        "run_job",
        lambda _self, job, _name: jobs.append(len(job.files)),
    )
    # first into an empty store: the workers send every chunk compressed and sealed
    with store.writer() as w:
        procs = Scanner(w, workers=2, processes=1, process_after=0)
        tid = procs.scan(src)
    assert jobs and sum(jobs) == 4 * 30 + 3  # every small file and the hard link, not "large"
    assert procs.stats.files_read == 124 and not procs.stats.errors
    restore_tree(store, tid, tmp_path / "out")
    for rel in ("d2/f02", "medium", "large", "d1/hard", "empty"):
        assert (tmp_path / "out" / rel).read_bytes() == (src / rel).read_bytes()
    assert os.readlink(tmp_path / "out" / "link") == "d0/f00"
    assert (tmp_path / "out" / "d3" / "f03").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "out" / "d3" / "f04").stat().st_mtime_ns == MTIME
    # the threads store the same tree (same entries: owner, mode, times, xattrs, content)
    with store.writer() as w:
        threads = Scanner(w, workers=2)
        assert threads.scan(src) == tid
    # again through a worker, into a store holding every chunk: sent back as plaintext
    with store.writer() as w:
        assert Scanner(w, workers=2, processes=1, process_after=0).scan(src) == tid
        assert w.new_blobs == 0


def test_a_worker_killed_mid_scan_fails_the_backup_and_commits_nothing(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[ReadProcess] = []

    def kill_first(proc: ReadProcess, *_args: object) -> None:
        if not started:  # the first job: its worker is killed before it reads
            started.append(proc)
            os.kill(proc.proc.pid, signal.SIGKILL)
            proc.proc.wait()

    real_run = spy(monkeypatch, ReadProcess, "run", kill_first)
    with pytest.raises(WorkerDiedError, match="worker process"):
        backup(store, src, cache_path=tmp_path / "cache.db", processes=1, process_after=0)
    assert store.catalog.snapshots() == []
    assert started[0].proc.returncode == -signal.SIGKILL
    # the store and the files cache hold nothing half-written: the next backup runs whole
    monkeypatch.setattr(ReadProcess, "run", real_run)
    done = backup(store, src, cache_path=tmp_path / "cache.db", processes=1, process_after=0)
    assert done.stats.files_read == 124 and not done.stats.errors
    restore_tree(store, done.snapshot.root, tmp_path / "out")
    assert (tmp_path / "out" / "medium").read_bytes() == (src / "medium").read_bytes()


def test_a_tree_below_the_threshold_starts_no_process(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[int] = []
    spy(monkeypatch, ReadProcess, "__init__", lambda *_args: starts.append(1))
    backup(store, src, processes=1, process_after=1000)
    assert starts == []
    backup(store, src, source="again", processes=1, process_after=100)
    assert starts == [1]


def test_a_job_of_files_from_more_folders_than_a_message_carries_stays_in_its_thread(
    tmp_path: Path,
) -> None:
    job = Job()
    st = os.stat(tmp_path)
    folders = range(1000, 1000 + scan_proc.MAX_FDS + 1)  # one more than a message carries
    job.files = [(b"x", Entry(name=b"x", type="file"), st, fd) for fd in folders]
    assert not ProcessReaders.takes(job)
    job.files.pop()
    assert ProcessReaders.takes(job)


def test_a_worker_takes_the_next_request_before_its_answer_is_read(store: Store, src: Path) -> None:
    """Requests queue in the socket (the worker never waits for the parent between
    jobs); answers come back in order, each to its own request and in its form: sealed
    (the store opens it), plaintext, or compressed only (with its flag)."""
    proc = ReadProcess(store.keys.chunking, store.keys.data_key)
    dfd = os.open(src / "d0", os.O_RDONLY | os.O_DIRECTORY)
    names = (b"f01", b"f02", b"f29")  # the last, 480 bytes, compresses
    try:
        tickets = [
            proc.send(form, [(dfd, name, os.stat(src / "d0" / os.fsdecode(name)))])
            for form, name in zip((Form.SEALED, Form.PLAIN, Form.COMPRESSED), names, strict=True)
        ]
        sent = [(src / "d0" / os.fsdecode(name)).read_bytes() for name in names]
        got = []
        for ticket, content in zip(tickets, sent, strict=True):
            errors, fields, chunks = proc.answer(ticket)
            assert errors == [None] and fields[0] is not None and fields[0][0] == len(content)
            [(bid, data, raw, flag)] = chunks
            assert bid == fields[0][6][0] and raw == len(content)
            got.append((bid, data, flag))
        (bid, sealed, _), (_, plain, _), (_, packed, flag) = got
        keys = store.keys
        assert sealed != sent[0]
        opened = blob.open_sealed(
            keys.data_key, keys.chunking.id_key, BlobKind.DATA, bid, sealed, len(sent[0])
        )
        assert opened == sent[0]
        assert plain == sent[1]
        assert flag == blob.FLAG_ZSTD and blob.decompress(flag, packed, len(sent[2])) == sent[2]
    finally:
        os.close(dfd)
        proc.close()
    assert proc.proc.returncode == 0


class CompressingSink:
    """An agent's uploader as a scan sees it (``CompressedSink``), in memory: what the
    scan puts, by id, as it came (plaintext, or ``(flag, payload)``)."""

    def __init__(self, chunking: ChunkingSecret, ahead: bool) -> None:
        self._chunking = chunking
        self.ahead = ahead
        self.plain: dict[bytes, bytes] = {}
        self.packed: dict[bytes, tuple[int, bytes]] = {}

    @property
    def chunking(self) -> ChunkingSecret:
        return self._chunking

    @property
    def compress_ahead(self) -> bool:
        return self.ahead

    def need(self, ids: Collection[bytes]) -> set[bytes]:
        return {i for i in ids if i not in self.plain and i not in self.packed}

    def put_chunk(self, kind: BlobKind, bid: bytes, data: bytes | memoryview) -> None:
        self.plain[bid] = bytes(data)

    def put_chunks(self, kind: BlobKind, chunks: list[tuple[bytes, bytes | memoryview]]) -> None:
        for bid, data in chunks:
            self.put_chunk(kind, bid, data)

    def put_compressed(self, kind: BlobKind, blobs: list[tuple[bytes, int, bytes, int]]) -> None:
        for bid, flag, payload, raw in blobs:
            assert len(blob.decompress(flag, payload, raw)) == raw
            self.packed[bid] = (flag, payload)

    def put(self, kind: BlobKind, data: bytes) -> bytes:
        bid = blob.blob_id(self._chunking.id_key, data)
        self.plain[bid] = data
        return bid


@pytest.mark.parametrize("ahead", [True, False])
def test_an_agents_scan_gets_its_chunks_from_a_worker_compressed_or_as_plaintext(
    store: Store, src: Path, monkeypatch: pytest.MonkeyPatch, ahead: bool
) -> None:
    """An agent's uploader holds no data key: its worker compresses the chunks only, while
    the uploader says its server lacks most of what it asked about (``compress_ahead``),
    else sends them as plaintext (only what the server lacks is compressed, by the
    uploader). Either way the scan makes the tree the reading threads make, and every
    chunk is the content of its id."""
    forms: list[Form] = []
    spy(monkeypatch, ReadProcess, "send", lambda _self, form, _files: forms.append(form))
    chunking = store.keys.chunking
    sink = CompressingSink(chunking, ahead)
    assert isinstance(sink, CompressedSink) and not isinstance(sink, scan_proc.SealedSink)
    tid = Scanner(sink, workers=2, processes=1, process_after=0).scan(src)
    assert forms and set(forms) == {Form.COMPRESSED if ahead else Form.PLAIN}
    threads = CompressingSink(chunking, ahead)
    assert Scanner(threads, workers=2).scan(src) == tid
    assert sink.plain.keys() | sink.packed.keys() == threads.plain.keys() | threads.packed.keys()
    assert bool(sink.packed) == ahead  # the small files' chunks, compressed by the worker
    for bid, (flag, payload) in sink.packed.items():
        raw = blob.decompress(flag, payload, len(threads.plain[bid]))
        assert blob.blob_id(chunking.id_key, raw) == bid
    for bid, data in sink.plain.items():
        assert blob.blob_id(chunking.id_key, data) == bid


def backed_up_once_then_counted(
    store: Store, src: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[bytes, list[int]]:
    """``src`` backed up once through a worker; from then on the store's ids load at a
    writer's first ask (however few ids were asked), and the chunks each of a worker's
    answers carries are counted (the list returned)."""
    with store.writer() as w:
        tid = Scanner(w, workers=1, processes=1, process_after=0).scan(src)
    monkeypatch.setattr(writer_module, "_KNOWN_AFTER", 1)
    monkeypatch.setattr(writer_module, "_KNOWN_RATIO", 1000)
    sent: list[int] = []
    real = ReadProcess.answer

    def answer(self: ReadProcess, ticket: int) -> Any:
        got = real(self, ticket)
        sent.append(len(got[2]))
        return got

    monkeypatch.setattr(ReadProcess, "answer", answer)
    return tid, sent


def test_once_the_writer_loaded_the_stores_ids_a_worker_sends_none_of_them_back(
    store: Store, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid, sent = backed_up_once_then_counted(store, src, monkeypatch)
    with store.writer() as w:
        assert Scanner(w, workers=1, processes=1, process_after=0).scan(src) == tid
        assert w.known_data is not None and w.new_blobs == 0
    # the first answer came before the ids were loaded; every later one carried no chunk
    assert len(sent) > 1 and sent[0] > 0 and sent[1:] == [0] * (len(sent) - 1)


def test_ids_the_writer_loaded_before_the_first_job_reach_the_worker_before_it(
    store: Store, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's ids go to a worker ahead of its first request when the writer has them
    already (the reading threads asked first): not after its first answer, which then
    carried every chunk of its job back."""
    tid, sent = backed_up_once_then_counted(store, src, monkeypatch)
    with store.writer() as w:
        w.need([b"\0" * 32])  # loads the store's ids (a re-backup's first question)
        assert w.known_data
        assert Scanner(w, workers=1, processes=1, process_after=0).scan(src) == tid
        assert w.new_blobs == 0
    assert sent and sent == [0] * len(sent)


def test_a_worker_that_cannot_start_leaves_the_reading_to_the_threads(
    store: Store, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[int] = []

    def no_process(*_args: object, **_kw: object) -> None:
        tried.append(1)
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(scan_proc.subprocess, "Popen", no_process)
    done = backup(store, src, processes=1, process_after=0)
    assert tried  # a worker was tried, and could not start
    assert done.stats.files_read == 124 and not done.stats.errors


def test_a_message_is_received_into_one_buffer_of_its_size() -> None:
    """A worker's answer (megabytes of sealed blobs) is read with ``recv_into`` into one
    buffer of the message's size: never ``recv(n)`` of the whole rest (an ``n``-byte
    allocation per call) and pieces joined and copied again."""
    body = os.urandom(3 * 1024 * 1024)

    class Socket:
        """Gives at most 64 KiB per call, as a socket's buffer does."""

        def __init__(self, data: bytes) -> None:
            self.data = memoryview(data)
            self.asked: list[int] = []

        def recv(self, n: int) -> bytes:
            self.asked.append(n)
            got, self.data = self.data[: min(n, 65536)], self.data[min(n, 65536) :]
            return bytes(got)

        def recv_into(self, view: memoryview) -> int:
            n = min(len(view), len(self.data), 65536)
            view[:n] = self.data[:n]
            self.data = self.data[n:]
            return n

    sock = Socket(scan_proc._LEN.pack(len(body)) + body)
    got = scan_proc._recv(sock)  # type: ignore[arg-type]
    assert got is not None and got[0] == body and got[1] == []
    assert sock.asked == [scan_proc._LEN.size]  # only the length was read by ``recv``
    assert scan_proc._recv(Socket(b"")) is None  # type: ignore[arg-type]
