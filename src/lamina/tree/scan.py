"""Scan a directory into tree objects, storing new file content on the way.

Post-order walk: a directory's tree is written after its children, so memory
holds one directory listing per level of depth, never the whole tree. File
content is read, chunked, hashed, compressed and sealed in a thread pool (the
native chunker, BLAKE3, zstd and AES-GCM release the GIL), small files batched
so a directory costs one "which of these are missing?" query, not one per file.

A file whose size, mtime or ctime moves while it is read is read again (three
tries), and otherwise reported and left out: never stored torn.

The scan never reads outside its tree: every folder is opened from its
parent's descriptor with ``O_DIRECTORY|O_NOFOLLOW`` and listed through that
descriptor, every file is opened by name relative to its folder's descriptor
with ``O_NOFOLLOW``, and what was opened must be the inode the listing saw
(``st_dev``, ``st_ino``), or it is reported and left out. Owner, mode, size and
mtime of a file or folder come from the ``fstat`` of the descriptor actually
read. A folder swapped for a symlink after it was listed changes nothing: its
files are still read through the descriptor of the folder that was listed.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from lamina.errors import UsageError
from lamina.store.blob import BlobKind
from lamina.store.progress import AdvanceFn
from lamina.tree.cache import (
    CachedDir,
    CachedFile,
    FilesCache,
    pack_entries,
    rows_signature,
    signature_rows,
)
from lamina.tree.counts import TreeCounts
from lamina.tree.model import FILE_TYPES, Entry, encode_tree
from lamina.tree.scan_entries import (
    NameCache,
    Reused,
    cached_entries,
    encode_folder,
    recheck_hits,
)
from lamina.tree.scan_proc import PROCESS_AFTER, CompressedSink, ProcessReaders, SealedSink
from lamina.tree.scan_read import (
    JOB_BYTES,
    BlobSink,
    FileReader,
    FileReplacedError,
    Job,
    same_inode,
    xattrs_at,
)
from lamina.tree.scan_scope import ExcludeFn, FolderExcludeFn, PruneFn

#: Files up to this size are read whole and batched with their neighbours.
SMALL_FILE = 1024 * 1024
MAX_DEPTH = 900
#: Listed folders whose descriptors stay open until their files are read.
HELD_DIRS = 512

#: ``stat.S_IFMT``'s mask: ``model.file_type`` without two calls per entry
_IFMT = 0o170000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: ``os.fsencode``'s codec: a listing's names are encoded with no Python call per name
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


@dataclass
class ScanStats(TreeCounts):
    files_read: int = 0
    bytes_read: int = 0
    files_unchanged: int = 0
    #: folders whose tree id came from the files cache (nothing built for them)
    trees_reused: int = 0


@dataclass
class _Dir:
    """A listed folder whose tree is written once its files are read (post-order).

    ``files`` are (path, entry, lstat, job, index in the job). ``parent`` is the
    entry in the parent folder that receives the tree id (None for the root).
    ``fd`` is the folder's descriptor, kept open while its files wait to be read
    (or, for a folder whose tree may be reused, until its sub-folders' are known).
    """

    rel: bytes
    path: bytes
    parent: Entry | None
    entries: list[Entry] = field(default_factory=list)
    hits: list[tuple[bytes, Entry, os.stat_result, CachedFile]] = field(default_factory=list)
    files: list[tuple[bytes, Entry, os.stat_result, Job, int]] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)  # the distinct jobs of ``files``
    #: names of the folder's files the files cache holds rows for
    cached: frozenset[bytes] = frozenset()
    fd: int | None = None
    #: the sub-folders' entries in name order (their subtree ids come from below)
    subdirs: list[Entry] = field(default_factory=list)
    #: with a files cache: the listing's signature and the folder's row
    signature: bytes | None = None
    row: CachedDir | None = None
    #: no entry of the folder itself was left out by an error
    clean: bool = True
    #: the listing matched the row: its entries other than folders, built only if a
    #: sub-folder's tree turns out to have changed (``_finish``)
    deferred: list[tuple[bytes, os.stat_result, str]] | None = None
    #: with a files cache: the listing's signature rows, those of the entries other than
    #: folders (a folder built), and the entries taken from the folder's row (``scan_entries``)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    sigs: list[tuple[Any, ...]] = field(default_factory=list)
    reused: Reused = field(default_factory=Reused)


class Scanner(FileReader):
    def __init__(
        self,
        writer: BlobSink,
        cache: FilesCache | None = None,
        *,
        workers: int | None = None,
        exclude: ExcludeFn | None = None,
        exclude_folder: FolderExcludeFn | None = None,
        prune: PruneFn | None = None,
        progress: AdvanceFn | None = None,
        one_file_system: bool = False,
        reuse_trees: bool = True,
        processes: int = 0,
        process_after: int = PROCESS_AFTER,
        thread_readers: int = 0,
    ) -> None:
        self.writer = writer
        self.cache = cache
        self.exclude = exclude
        #: ``exclude``'s answers for a whole folder's files and sub-folders, if it knows them
        self.exclude_folder = exclude_folder
        self.prune = prune
        self.progress = progress
        self.one_file_system = one_file_system
        #: reuse a folder's tree id from the files cache when its listing and its
        #: sub-folders' trees are what the cache's row holds
        self.reuse_trees = reuse_trees
        self.stats = ScanStats()
        self._chunking = writer.chunking
        self._pool = ThreadPoolExecutor(max_workers=workers or min(4, (os.cpu_count() or 2)))
        self._local = threading.local()
        self._user = NameCache(lambda uid: pwd.getpwuid(uid).pw_name)
        self._group = NameCache(lambda gid: grp.getgrgid(gid).gr_name)
        self._root_dev = 0
        self._workers = self._pool._max_workers
        #: at most ``thread_readers`` of the threads read files at once (0: all of them);
        #: the others only hand jobs to worker processes (an agent's sync: ``agent.sync``)
        self._reading: contextlib.AbstractContextManager[Any] = (
            threading.BoundedSemaphore(thread_readers)
            if 0 < thread_readers < self._workers
            else contextlib.nullcontext()
        )
        #: Listed folders waiting for their files, in post-order (children first).
        self._order: deque[_Dir] = deque()
        #: The job small files are being added to (not yet submitted).
        self._small = Job()
        #: Submitted jobs whose future may still be running.
        self._running: deque[Job] = deque()
        self._root_tree: bytes | None = None
        #: Folders in ``_order`` holding an open descriptor.
        self._held = 0
        #: worker processes for small files (``scan_proc``), started past ``process_after``
        #: of them queued, with a sink taking sealed or compressed blobs (writer, uploader)
        self._processes = processes if isinstance(writer, (SealedSink, CompressedSink)) else 0
        self._process_after = process_after
        self._small_files = 0
        self._procs: ProcessReaders | None = None

    # --- public --------------------------------------------------------------
    def scan(self, root: Path) -> bytes:
        """Store the tree of ``root``'s contents; return the root tree id."""
        broot = os.fsencode(root)
        try:
            fd = os.open(broot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError as e:
            raise UsageError(f"cannot scan {root}: not a directory") from e
        except OSError as e:
            raise UsageError(f"cannot scan {root}: {e.strerror}") from e
        done = False
        try:
            self._root_dev = os.fstat(fd).st_dev
            root_fd, fd = fd, -1  # ``_dir`` owns it now
            self._dir(root_fd, broot, b"", 0, None)
            self._drain(block=True)
            done = True
        finally:
            if fd >= 0:
                os.close(fd)
            if self._procs is not None and not done:
                self._procs.kill()  # a job it holds stops now, not after its folders
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._procs is not None:
                self._procs.close()
            for d in self._order:  # left by an error: the walk stops here
                if d.fd is not None:
                    os.close(d.fd)
                    d.fd = None
        assert self._root_tree is not None
        return self._root_tree

    # --- helpers -------------------------------------------------------------

    @staticmethod
    def _xattrs(dir_fd: int, name: bytes) -> list[tuple[bytes, bytes]]:
        # The *xattr calls take no dir_fd: /proc/self/fd/N names the folder already
        # opened, and follow_symlinks=False keeps the last component from being followed.
        return xattrs_at(f"/proc/self/fd/{dir_fd}/".encode() + name)

    def _own(self, e: Entry, st: os.stat_result) -> None:
        """Owner, mode and mtime of ``e`` from ``st`` (the fstat of what was opened), and
        the owners' names."""
        super()._own(e, st)
        self._name(e)

    def _name(self, e: Entry) -> None:
        """Owner and group names of ``e`` from its uid and gid (a worker process read it)."""
        e.user, e.group = self._user[e.uid], self._group[e.gid]

    def _run_job(self, job: Job) -> list[str | None]:
        procs = self._procs
        # a job of small files (a large file's job holds it alone: threads chunk it
        # without the GIL) goes to a worker process once they run
        if procs is not None and job.files[0][2].st_size <= SMALL_FILE and procs.takes(job):
            return procs.run_job(job, self._name)
        with self._reading:
            return super()._run_job(job)

    def _entry(
        self, name: bytes, st: os.stat_result, typ: str, xattrs: list[tuple[bytes, bytes]]
    ) -> Entry:
        e = Entry(
            name=name,
            type=typ,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            user=self._user[st.st_uid],
            group=self._group[st.st_gid],
            mtime=st.st_mtime_ns,
            size=st.st_size if typ == "file" else 0,
            xattrs=xattrs,
        )
        if typ != "dir" and st.st_nlink > 1:
            e.hardlink = blake3.blake3(
                st.st_dev.to_bytes(8, "little") + st.st_ino.to_bytes(8, "little"),
                key=self._chunking.id_key,
            ).digest(length=16)
        return e

    # --- the walk ------------------------------------------------------------
    def _open_dir(self, dfd: int, name: bytes, st: os.stat_result) -> tuple[int, os.stat_result]:
        """Open sub-folder ``name`` of ``dfd``; it must be the inode the listing saw."""
        sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        try:
            st1 = os.fstat(sub)
            if not same_inode(st, st1):
                raise FileReplacedError
        except BaseException:
            os.close(sub)
            raise
        return sub, st1

    def _dir(self, dfd: int, path: bytes, rel: bytes, depth: int, parent: Entry | None) -> None:
        """List a folder (and, first, its sub-folders); its tree is written by ``_drain``.

        Takes ownership of ``dfd``: it is closed here, or by ``_finish`` once the
        folder's files are read.
        """
        try:
            self._list(dfd, path, rel, depth, parent)  # its last step hands ``dfd`` over
        except BaseException:
            os.close(dfd)
            raise
        self._drain(block=False)

    def _list(self, dfd: int, path: bytes, rel: bytes, depth: int, parent: Entry | None) -> None:
        if depth > MAX_DEPTH:
            raise UsageError(f"directory tree deeper than {MAX_DEPTH} levels at {path!r}")
        self.stats.dirs += 1
        d = _Dir(rel, path, parent)
        try:
            names = sorted([n.encode(_FS_ENCODING, _FS_ERRORS) for n in os.listdir(dfd)])
        except OSError as err:
            self.stats.errors.append(f"{os.fsdecode(path)}: cannot list: {err.strerror}")
            names = []
            d.clean = False
        listing = self._lstat_all(dfd, d, names)
        if self.cache is not None:
            d.row = self.cache.folder(rel)
            d.rows = signature_rows(listing, self._user, self._group)
            d.signature = rows_signature(d.rows)
        reuse = (
            self.reuse_trees
            and d.row is not None
            and d.clean
            and d.row.listing == d.signature
            and not (self.cache is not None and self.cache.stale)
        )
        rest: list[tuple[bytes, os.stat_result, str]] = []
        for name, st, typ in listing:
            if typ == "dir":
                self._subdir(dfd, d, name, st, depth)
            else:
                rest.append((name, st, typ))
        if reuse:
            d.deferred = rest
        else:
            self._build(dfd, d, rest)
        if d.files or d.deferred is not None:
            d.fd = dfd
            self._held += 1
        else:
            os.close(dfd)
        self._order.append(d)

    def _lstat_all(
        self, dfd: int, d: _Dir, names: list[bytes]
    ) -> list[tuple[bytes, os.stat_result, str]]:
        """``(name, lstat, type)`` of the entries of a folder the scan keeps."""
        out = []
        exclude = self.exclude
        # per folder, the answer for all its files and sub-folders (None: ask per entry)
        files_out = dirs_out = None
        if exclude is not None and self.exclude_folder is not None:
            files_out, dirs_out = self.exclude_folder(d.rel)
        for name in names:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError as err:
                self.stats.errors.append(f"{os.fsdecode(d.path + b'/' + name)}: {err.strerror}")
                d.clean = False
                continue
            typ = FILE_TYPES.get(st.st_mode & _IFMT)
            if typ is None:
                continue
            if exclude is not None:
                excluded = dirs_out if typ == "dir" else files_out
                if excluded is None:
                    excluded = exclude(d.rel + b"/" + name if d.rel else name, typ == "dir")
                if excluded:
                    continue
            out.append((name, st, typ))
        return out

    def _subdir(self, dfd: int, d: _Dir, name: bytes, st: os.stat_result, depth: int) -> None:
        """A sub-folder's entry; its tree is listed now (written before this folder's)."""
        child = d.path + b"/" + name
        child_rel = d.rel + b"/" + name if d.rel else name
        if (self.one_file_system and st.st_dev != self._root_dev) or (
            self.prune is not None and self.prune(child_rel)
        ):
            e = self._entry(name, st, "dir", self._xattrs(dfd, name))
            e.subtree = self.writer.put(BlobKind.TREE, encode_tree([]))
        else:
            try:
                sub, st1 = self._open_dir(dfd, name, st)
            except FileReplacedError:
                self.stats.errors.append(
                    f"{os.fsdecode(child)}: replaced while being scanned; not stored"
                )
                d.clean = False
                return
            except OSError as err:
                self.stats.errors.append(f"{os.fsdecode(child)}: {err.strerror}")
                d.clean = False
                return
            e = self._entry(name, st1, "dir", xattrs_at(sub))
            self._dir(sub, child, child_rel, depth + 1, e)
        d.entries.append(e)
        d.subdirs.append(e)

    def _build(self, dfd: int, d: _Dir, rest: list[tuple[bytes, os.stat_result, str]]) -> None:
        """The entries of a folder's files, symlinks and others; files the cache does not
        vouch for are queued for reading."""
        cached: dict[bytes, CachedFile] = {}
        if self.cache is not None:
            d.sigs = [r for r in d.rows if r[1] & _IFMT != stat.S_IFDIR]
            trust = d.row is not None and self.reuse_trees and not self.cache.stale
            rest, d.reused, cached, d.cached = cached_entries(self.cache, d, rest, trust)
        to_read: list[tuple[bytes, Entry, os.stat_result, int]] = []
        for name, st, typ in rest:
            child = d.path + b"/" + name
            if typ == "file":
                # A file's xattrs come from the cache entry (a hit: its ctime did not
                # move, so neither did they) or from the fd it is read through.
                e = self._entry(name, st, typ, [])
            else:
                e = self._entry(name, st, typ, self._xattrs(dfd, name))
            if typ == "symlink":
                try:
                    e.target = os.readlink(name, dir_fd=dfd)
                except OSError as err:
                    self.stats.errors.append(f"{os.fsdecode(child)}: {err.strerror}")
                    d.clean = False
                    continue
                self.stats.others += 1
            elif typ == "file":
                c = cached.get(name)
                if c is not None and (c.inode, c.size, c.mtime, c.ctime) == (
                    st.st_ino,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                ):
                    e.content = list(c.content)
                    e.xattrs = list(c.xattrs)
                    d.hits.append((child, e, st, c))
                else:
                    to_read.append((child, e, st, dfd))
            else:
                if typ in ("chardev", "blockdev"):
                    e.rdev = st.st_rdev
                self.stats.others += 1
            d.entries.append(e)
        if d.hits and self.cache is not None and self.cache.stale:
            to_read.extend((*h, dfd) for h in recheck_hits(self.writer, d.hits))
        d.files = self._read_all(to_read)
        d.jobs = list({id(f[3]): f[3] for f in d.files}.values())

    def _reuse(self, d: _Dir, tree: bytes) -> None:
        """Count a folder whose tree is the one its cache row names (nothing is built)."""
        assert d.deferred is not None
        sizes = [st.st_size for _, st, typ in d.deferred if typ == "file"]
        self.stats.files += len(sizes)
        self.stats.files_unchanged += len(sizes)
        self.stats.bytes += sum(sizes)
        self.stats.others += len(d.deferred) - len(sizes)
        if self.progress and sizes:
            self.progress(len(sizes), sum(sizes))
        self.stats.trees_reused += 1
        self._close(d)
        self._set_tree(d, tree)

    def _close(self, d: _Dir) -> None:
        if d.fd is not None:
            os.close(d.fd)
            d.fd = None
            self._held -= 1

    def _set_tree(self, d: _Dir, tid: bytes) -> None:
        if d.parent is None:
            self._root_tree = tid
        else:
            d.parent.subtree = tid

    def _finish(self, d: _Dir) -> None:
        """Write a folder's tree once its files are read (its sub-folders' trees already are)."""
        subtrees = b"".join(e.subtree or b"" for e in d.subdirs)
        if d.deferred is not None:
            assert d.row is not None and d.fd is not None
            if d.clean and subtrees == d.row.subtrees:
                self._reuse(d, d.row.tree)
                return
            # A sub-folder's tree changed: this one is built after all. Files the cache
            # has no row for (a damaged cache) are read now, and waited for below.
            self._build(d.fd, d, d.deferred)
            d.deferred = None
            if d.files:
                self._submit_small()
        r = d.reused
        if d.hits or r.encoded:
            hit_bytes = sum(e.size for _, e, _, _ in d.hits) + r.bytes
            hit_files = len(d.hits) + len(r.files)
            self.stats.others += r.others
            self.stats.files += hit_files
            self.stats.files_unchanged += hit_files
            self.stats.bytes += hit_bytes
            if self.progress:
                self.progress(hit_files, hit_bytes)
        failed: set[int] = set()
        if d.files:
            # One ``result`` per job and one progress call per folder, not per file.
            results: dict[int, list[str | None]] = {}
            read = read_bytes = 0
            for path, e, _, job, i in d.files:
                got = results.get(id(job))
                if got is None:
                    assert job.future is not None
                    got = results[id(job)] = job.future.result()
                err = got[i]
                if err is not None:
                    self.stats.errors.append(f"{os.fsdecode(path)}: {err}")
                    failed.add(id(e))
                    continue
                read += 1
                read_bytes += e.size
            self.stats.files += read
            self.stats.files_read += read
            self.stats.bytes += read_bytes
            self.stats.bytes_read += read_bytes
            if self.progress and read:
                self.progress(read, read_bytes)
        self._close(d)  # every file of the folder is read (``result`` waited)
        entries = [e for e in d.entries if id(e) not in failed] if failed else d.entries
        kept = {e.name for _, e, _, _ in d.hits} | r.files
        if self.cache is not None and (d.files or len(kept) != len(d.cached)):
            # A hit's row is what it would be written as: only new rows are written,
            # and the rows of names no longer held as they were are dropped.
            for _path, e, st, *_ in d.files:
                if e.content is not None and id(e) not in failed:
                    self.cache.put(d.rel, e.name, st, e.content, e.xattrs)
                    kept.add(e.name)
            self.cache.drop(d.rel, d.cached - kept)
        if self.cache is None or d.signature is None:
            self._set_tree(d, self.writer.put(BlobKind.TREE, encode_tree(entries)))
            return
        tree, encoded = encode_folder(entries, r.encoded)
        tid = self.writer.put(BlobKind.TREE, tree)
        row = CachedDir(d.signature, subtrees, tid) if d.clean and not failed else None
        if row != d.row:
            blob = pack_entries(d.sigs, [encoded[s[0]] for s in d.sigs]) if row else None
            self.cache.put_folder(d.rel, row, blob)
        self._set_tree(d, tid)

    def _drain(self, block: bool) -> None:
        """Write the trees of listed folders whose files are read, oldest first.

        Without ``block``, stop at the first folder still waiting, unless too much
        is in flight (then wait for it: memory and open descriptors stay bounded).
        """
        while self._running and self._running[0].future.done():  # type: ignore[union-attr]
            self._running.popleft()
        if len(self._running) < self._workers and self._small.files:
            self._submit_small()
        while self._order:
            d = self._order[0]
            waiting = [j for j in d.jobs if j.future is None or not j.future.done()]
            d.jobs = waiting  # finished jobs stay finished: look at the rest next time
            if waiting:
                if (
                    not block
                    and len(self._running) < 4 * self._workers
                    and len(self._order) < 4096
                    and self._held < HELD_DIRS
                ):
                    return
                if any(j.future is None for j in waiting):
                    self._submit_small()
            self._order.popleft()
            self._finish(d)

    def _submit(self, job: Job) -> None:
        job.future = self._pool.submit(self._run_job, job)
        self._running.append(job)

    def _submit_small(self) -> None:
        if self._small.files:
            self._submit(self._small)
            self._small = Job()

    def _read_all(
        self, files: list[tuple[bytes, Entry, os.stat_result, int]]
    ) -> list[tuple[bytes, Entry, os.stat_result, Job, int]]:
        """Queue files for the pool (small ones batched across folders); no waiting."""
        out: list[tuple[bytes, Entry, os.stat_result, Job, int]] = []
        if self._processes and self._procs is None:
            self._small_files += sum(f[2].st_size <= SMALL_FILE for f in files)
            if self._small_files >= self._process_after:
                try:
                    self._procs = ProcessReaders(self.writer, self._processes)  # type: ignore[arg-type]
                except OSError:  # no process to start (a limit, no interpreter): threads read
                    self._processes = 0
        for f in files:
            if f[2].st_size <= SMALL_FILE:
                small = self._small
                out.append((f[0], f[1], f[2], small, len(small.files)))
                small.files.append(f)
                small.size += f[2].st_size
                if small.size >= JOB_BYTES or len(small.files) >= 256:
                    self._submit_small()
            else:
                big = Job()
                big.files.append(f)
                out.append((f[0], f[1], f[2], big, 0))
                self._submit(big)
        return out
