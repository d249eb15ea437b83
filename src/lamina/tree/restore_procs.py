"""A restore's file jobs written by worker processes, so a restore uses every core.

A restore in one process runs its Python (tree decoding, the per-file calls, the
hand-offs between threads) under one GIL: about 0.7 of a core ("Restores (session 11)"
in docs/design.md). For a whole restore into an empty folder of a large tree, the walk
stays in the calling process (folders, symlinks, nodes, hard links, every folder's own
metadata, in the same order as with threads) and hands each job of regular files to
one of ``processes`` workers. A worker has its own blob source (``opener``: its own
store reader, or its own HTTP client) and writes its files exactly as the threads do
(``FileWriter.write_job``, staged: each file under its name in the restore's staging
folder, every blob verified, then its metadata).

A worker reaches a job's folder from the target by its path, one component at a time,
never following a symlink (``O_NOFOLLOW``), and writes there only when that folder is
the one the walk made (its device and inode, ``FolderFiles.ident``): a folder swapped in
meanwhile is refused, as a descriptor would have been kept. A worker ignores SIGINT
(the walk stops them: it cancels the jobs not started and waits for those running,
which finish or remove the file they write), and leaves when the restoring process is
gone (``_watch_parent``).

Workers start through a fork server (the calling process has threads, so it never
forks itself); each costs a fork and its blob source's opening, so small restores stay
on threads (``processes_for``).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import operator
import os
import select
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import forkserver
from typing import NamedTuple

from lamina.errors import IntegrityError
from lamina.processes import alive
from lamina.tree.collector import fewer_collections
from lamina.tree.model import Entry
from lamina.tree.restore_types import (
    DIR_FLAGS,
    Folder,
    Opener,
    RestoreStats,
    Target,
    open_below,
)
from lamina.tree.restore_writer import FileWriter
from lamina.tree.sources import HTTP_BATCH, in_batches

#: An entry's fields in ``Entry``'s order, as one tuple (``Entry(*fields)`` makes it again).
entry_fields = operator.attrgetter(*Entry.__dataclass_fields__)

#: Worker processes at most, whatever the cores.
MAX_PROCESSES = 4
#: A restore with fewer files and fewer bytes than these stays on threads: a worker
#: costs a fork and the opening of its own blob source (about 0.1 to 0.3 s of CPU).
MIN_FILES = 10_000
MIN_BYTES = 512 << 20

#: A worker's job holds files of several folders, up to this many files or bytes: each
#: job costs a message each way and one look-up of its blobs in the worker's source.
#: A worker reads only its current job's blobs: a job of small files (a blob each) is
#: one ``/blobs/read`` request of a server (about 1.6 ms of its CPU each).
PROC_JOB_FILES = HTTP_BATCH
PROC_JOB_BYTES = 8 << 20
#: A job's bytes when each request of the workers' source costs (``Opener.job_bytes``,
#: ``lamina cvd restore --output``): half as many ``/blobs/read`` requests as 8 MiB jobs
#: ("Restores (session 15)" in docs/design.md); a job is still one answer (32 MiB at most).
REMOTE_JOB_BYTES = 16 << 20

#: Python's safe import path (``-P``) as an environment variable
SAFE_PATH = "PYTHONSAFEPATH"
#: Folders a worker keeps open (a folder's jobs come one after the other).
_OPEN_FOLDERS = 16


def processes_for(files: int, size: int, cores: int | None = None) -> int:
    """Worker processes for a restore of ``files`` files and ``size`` bytes: 0 (threads
    in this process) for a small one or on one core, else the cores, at most
    ``MAX_PROCESSES``."""
    if cores is None:
        cores = len(os.sched_getaffinity(0))
    n = min(cores, MAX_PROCESSES)
    if n < 2 or (files < MIN_FILES and size < MIN_BYTES):
        return 0
    return n


class FolderFiles(NamedTuple):
    """Files of one folder, in a worker's job (a job is a list of these)."""

    #: the folder's path from the target (components)
    rel: tuple[bytes, ...]
    #: the folder's ``(st_dev, st_ino)`` as the walk made it
    ident: tuple[int, int]
    inherits_acl: bool
    plain_group: bool
    #: the files' entries as ``entry_fields`` gives them (a tuple pickles in C; an
    #: ``Entry``, a dataclass with slots, through Python code on both sides)
    files: list[tuple[object, ...]]


class JobDone(NamedTuple):
    """What a job did (the parent adds it to the restore's counts and progress)."""

    files: int
    bytes: int
    errors: list[str]


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs: how to open its blob source, where the target is, and the
    options of the restore that matter to a file."""

    opener: Opener
    target: bytes
    #: the target's ``(st_dev, st_ino)``
    ident: tuple[int, int]
    special_files: bool
    same_owner: bool
    #: the restoring process's id (a worker leaves when it is gone)
    parent: int
    #: ``target`` is the restore's staging folder (``FileWriter``'s ``staged``)
    staged: bool


def start(setup: WorkerSetup, processes: int) -> ProcessPoolExecutor:
    """A pool of ``processes`` workers set up with ``setup`` (forked from a fork server
    that imported the restore's modules once)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["lamina.tree.restore", *setup.opener.modules])
    start_fork_server()
    pool = ProcessPoolExecutor(
        processes, mp_context=ctx, initializer=_init_worker, initargs=(setup,)
    )
    # The fork server's start and imports take a while: the workers are started in the
    # background meanwhile, and the walk makes the first folders.
    threading.Thread(
        target=_start_workers, args=(pool, processes), name="lamina-restore-start", daemon=True
    ).start()
    return pool


def start_fork_server() -> None:
    """Start the fork server (once per process) with Python's safe import path: it runs
    as ``python -c``, which puts the current folder first on ``sys.path``, so a restore
    run as root from a folder others can write to would import their ``socket.py``
    before the fork server sets the parent's path. ``PYTHONSAFEPATH`` (``-P``) is set
    for that start only."""
    saved = os.environ.get(SAFE_PATH)
    os.environ[SAFE_PATH] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ[SAFE_PATH]
        else:
            os.environ[SAFE_PATH] = saved
    global _STOP_AT_EXIT
    if _STOP_AT_EXIT:
        atexit.register(stop_fork_server)
        _STOP_AT_EXIT = False


_STOP_AT_EXIT = True


def stop_fork_server() -> None:
    """Stop the fork server and wait for it (at the exit of a process that started one):
    it would outlive a command by a moment, an orphan, its workers' CPU never counted
    as the command's (``getrusage``'s children: the workers are the fork server's)."""
    with contextlib.suppress(OSError, AttributeError, ChildProcessError):
        # (no public way: the method CPython's own tests stop it with)
        forkserver._forkserver._stop()  # type: ignore[attr-defined]


def _start_workers(pool: ProcessPoolExecutor, processes: int) -> None:
    with contextlib.suppress(RuntimeError):  # the restore ended first: the pool is shut
        for _ in range(processes):
            pool.submit(_ready)


def _ready() -> None:
    """A job that does nothing: it starts a worker."""


class _Worker:
    def __init__(self, setup: WorkerSetup) -> None:
        self.root = os.open(setup.target, DIR_FLAGS)
        _check_same(self.root, setup.ident, b"")
        # A store's reads are local: a worker reads each batch when it needs it (no
        # threads reading ahead: as fast with both cores busy, and less CPU; "Restores
        # (session 12)" in docs/design.md). A server's answers travel: read ahead.
        self.source = in_batches(setup.opener.open(), store_ahead=False)
        self.writer = FileWriter(
            self.source,
            special_files=setup.special_files,
            same_owner=setup.same_owner,
            staged=setup.staged,
        )
        self.folders: OrderedDict[tuple[bytes, ...], int] = OrderedDict()

    def folder(self, rel: tuple[bytes, ...], ident: tuple[int, int]) -> int:
        fd = self.folders.get(rel)
        if fd is not None:
            self.folders.move_to_end(rel)
            return fd
        fd = open_below(self.root, rel)
        try:
            _check_same(fd, ident, b"/".join(rel))
        except BaseException:
            os.close(fd)
            raise
        self.folders[rel] = fd
        if len(self.folders) > _OPEN_FOLDERS:
            os.close(self.folders.popitem(last=False)[1])
        return fd

    def run(self, job: list[FolderFiles]) -> JobDone:
        # The worker's imports are left out of the collector's passes, as in the walk.
        with fewer_collections():
            groups = [(g, [Entry(*f) for f in g.files]) for g in job]  # type: ignore[arg-type]
            self.source.prefetch(
                [c for _, entries in groups for e in entries for c in e.chunk_ids()]
            )
            r = self.writer
            r.stats = RestoreStats()
            for g, entries in groups:
                fd = self.folder(g.rel, g.ident)
                target = Target(Folder(fd, list(g.rel), None, None), g.inherits_acl, g.plain_group)
                r.write_job([(e, [*g.rel, e.name], None) for e in entries], target)
            return JobDone(r.stats.files, r.stats.bytes, r.stats.errors)


def _check_same(fd: int, ident: tuple[int, int], rel: bytes) -> None:
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != ident:
        raise IntegrityError(
            f"the folder {os.fsdecode(rel) or '.'} changed while it was restored "
            "(another folder was moved in its place)"
        )


_worker: _Worker | None = None
#: Why this worker could not set up (raised by its jobs, so the restore fails with it:
#: an error in a pool's initializer reaches the parent only as a broken pool)
_setup_error: BaseException | None = None


def _init_worker(setup: WorkerSetup) -> None:
    global _worker, _setup_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the restoring process stops the workers
    signal.signal(signal.SIGTERM, _stopped)
    threading.Thread(target=_watch_parent, args=(setup.parent,), daemon=True).start()
    try:
        _worker = _Worker(setup)
    except Exception as e:  # e.g. the target swapped, the store or the server refusing
        _setup_error = e


#: set by ``_stopped``: a job the pool still hands this worker writes nothing
_stopping = False


def _stopped(signum: int, frame: object) -> None:
    """SIGTERM in a worker: the job running stops (the file it writes is removed), and
    no job after it starts."""
    global _stopping
    _stopping = True
    raise KeyboardInterrupt("the restore was stopped")


def _watch_parent(parent: int) -> None:
    """Leave when the restoring process is gone: interrupt the job running (the file it
    writes is removed), then exit. (Not the fork server, this worker's parent:
    it stays while a worker holds the descriptor it watches, which every worker gets.)"""
    try:
        fd = os.pidfd_open(parent)
    except ProcessLookupError:
        fd = None  # gone already
    except OSError:  # no pidfd here (an old kernel, a seccomp filter): ask every second
        fd = None
        while alive(parent):
            time.sleep(1)
    if fd is not None:
        select.select([fd], [], [])  # readable once the process has exited
    main = threading.main_thread().ident
    assert main is not None
    signal.pthread_kill(main, signal.SIGTERM)  # ``_stopped``, even inside a blocking call
    time.sleep(2)
    os._exit(1)


def write_files(job: list[FolderFiles]) -> JobDone:
    """A worker's job (``ProcessPoolExecutor.submit``)."""
    if _setup_error is not None:
        raise _setup_error
    if _stopping:  # the pool's next job, already in this worker's queue
        raise KeyboardInterrupt("the restore was stopped")
    assert _worker is not None, "not a restore worker"
    return _worker.run(job)


def parent_setup(opener: Opener, target: bytes, root_fd: int, restorer: FileWriter) -> WorkerSetup:
    st = os.fstat(root_fd)
    return WorkerSetup(
        opener,
        target,
        (st.st_dev, st.st_ino),
        restorer.special_files,
        restorer.same_owner,
        os.getpid(),
        restorer.staged,
    )
