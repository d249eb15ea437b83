"""Write a tree back to a folder: exact, resumable, and never outside the target.

Every operation goes through a descriptor of the folder being filled (``dir_fd``) and
never follows a symlink: a symlink in the tree, or one planted in the target, is made or
replaced, never traversed. Names are checked when the tree is decoded. A file appears
under its name only once complete: written to a temporary name and renamed, or, in a
whole restore into an empty folder, into a staging folder (held, and resumed after a
kill: ``restore_stage``, ``restore_resume``) whose entries move into place at the end.

A file in place is kept only when its content is proved to be the tree's (re-chunked
with the chunking secret: the same chunk ids; size and mtime prove nothing); without
the secret every file is rewritten. Metadata is always reapplied.

Files are written by a pool of threads (``workers``), a folder's files a few per job
(``JOB_FILES``, ``JOB_BYTES``); the walk, folders, symlinks, nodes and hard links stay
on the calling thread. A folder's metadata is set, and its descriptor closed, once the
last thing inside it is done. A fatal error (a blob failing verification, a missing
pack) stops new writes, lets those in flight finish or remove their file, and is raised
once the pool is idle. A whole restore of a large tree into an empty folder can write
in worker processes instead (``processes``, ``opener``: ``restore_procs``).

Restores outside the endpoint (``--output``) pass ``special_files=False`` (no device
nodes or FIFOs, no setuid/setgid) and ``same_owner=False`` (no chown), as tar does for
a non-root extract.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Unpack

from lamina.errors import UsageError
from lamina.store.keys import ChunkingSecret
from lamina.store.progress import AdvanceFn
from lamina.tree.collector import fewer_collections
from lamina.tree.model import Entry, decode_tree
from lamina.tree.names import split_path
from lamina.tree.paths import missing_paths, selects
from lamina.tree.restore_ahead import ReadAhead
from lamina.tree.restore_batches import ProcessJobs
from lamina.tree.restore_meta import ACLS
from lamina.tree.restore_procs import (
    PROC_JOB_BYTES,
    FolderFiles,
    JobDone,
    entry_fields,
    parent_setup,
    start,
)
from lamina.tree.restore_resume import ResumingWriter
from lamina.tree.restore_stage import (
    PREFIX,
    check_new,
    force_remove,
    hold,
    is_held,
    leftovers,
    open_dir,
    publish,
    refuse_if_held,
    stops_as_interrupts,
)
from lamina.tree.restore_types import (
    DIR_FLAGS,
    BlobSource,
    Folder,
    Opener,
    Queued,
    RestoreOptions,
    RestoreStats,
    Target,
    open_below,
)
from lamina.tree.sources import in_batches, stop_reading_ahead

#: Threads writing files. File creation waits on the file system and the blob work
#: releases the GIL, so a few more threads than cores keep both busy.
WORKERS = 4
#: A folder's files are handed to the pool in jobs of up to this many files or bytes:
#: a job costs a future, a queue hand-over and a semaphore round, about as much CPU as
#: writing a small file, so a job per file doubled the Python work of small files.
JOB_FILES = 32
JOB_BYTES = 1 << 20
#: Hard links that wait for their first name's job while the walk goes on. Each holds
#: its folder, and so its parents, open: past this many, or with this many folders open
#: (``DEFERRED_FOLDERS``), a link waits for its first name's job on the walk, as before.
DEFERRED_LINKS = 128
DEFERRED_FOLDERS = 256


class Restorer(ResumingWriter):
    def __init__(
        self,
        store: BlobSource,
        *,
        paths: Sequence[str | bytes] = (),
        delete_extra: bool = False,
        progress: AdvanceFn | None = None,
        chunking: ChunkingSecret | None = None,
        keep_aside: str | None = None,
        special_files: bool = True,
        same_owner: bool = True,
        workers: int = WORKERS,
        processes: int = 0,
        opener: Opener | None = None,
    ) -> None:
        """``chunking``: proves a file in place holds the tree's content (without it,
        every file is rewritten). ``keep_aside``: a requested path found in place is first
        renamed to NAME + this suffix. ``special_files``: make nodes and FIFOs, keep
        setuid/setgid. ``same_owner``: chown to the tree's owners. ``workers``: threads
        writing files. ``processes`` (2+) with ``opener`` (how a worker opens a blob
        source): a whole restore into an empty folder writes in that many worker
        processes instead (``restore_procs``; the caller decides: ``processes_for``)."""
        self.selected = [split_path(p) for p in paths]
        self.delete_extra = delete_extra
        self.keep_aside = os.fsencode(keep_aside) if keep_aside else None
        super().__init__(
            store,
            progress=progress,
            chunking=chunking,
            special_files=special_files,
            same_owner=same_owner,
        )
        #: hard-link key -> the first path restored with it (relative to the root)
        self._links: dict[bytes, bytes] = {}
        #: Descriptors of folders without a default ACL (new files there inherit none).
        self._no_default_acl: set[int] = set()
        #: Of those, the ones not setgid and of our egid (new files there are ours).
        self._plain_group: set[int] = set()
        self.workers = max(1, workers)
        #: file jobs in flight (bounded: each may hold a file's chunks)
        self._slots = threading.BoundedSemaphore(2 * self.workers + 2)
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: set[Future[None]] = set()
        #: the trees read ahead of the walk (a restore into an empty folder)
        self._ahead: ReadAhead | None = None
        #: folders whose descriptor is still open
        self._open: set[Folder] = set()
        #: hard-link key -> the job writing its first name (a link waits for it)
        self._link_jobs: dict[bytes, Future[None]] = {}
        #: links whose first name's job is still running, in the walk's order: made once
        #: it is done, their folder held open (pending) until then
        self._deferred: deque[tuple[Entry, Folder, list[bytes], Future[None]]] = deque()
        self.processes = processes if opener is not None and processes > 1 else 0
        self._opener = opener
        #: the jobs of the worker processes writing files, in a restore that uses them
        self._procs: ProcessJobs[Folder] | None = None

    # --- public --------------------------------------------------------------
    def restore(self, tree_id: bytes, target: Path) -> RestoreStats:
        # Refuse, before writing anything, requested paths the snapshot does not hold.
        missing = missing_paths(
            functools.lru_cache(maxsize=256)(self.store.get), tree_id, self.selected
        )
        if missing:
            raise UsageError(f"not in the snapshot: {', '.join(missing)}")
        target.mkdir(parents=True, exist_ok=True)
        try:
            root_fd = os.open(target, DIR_FLAGS)
        except OSError as e:
            raise UsageError(f"cannot restore into {target}: {e.strerror}") from e
        try:
            self._into(tree_id, target, root_fd)
        finally:
            os.close(root_fd)
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def _into(self, tree_id: bytes, target: Path, root_fd: int) -> None:
        stage: bytes | None = None
        walk_fd = root_fd
        walked = False
        try:
            found = False if self.selected else leftovers(root_fd, target, self._remove)
            if found is False:
                self.processes = 0  # worker processes only for a whole restore into an empty folder
                refuse_if_held(root_fd, target)  # before anything changes there
            elif found is not True:
                # A staging folder a killed restore left: resumed onto its files.
                self._walked_into(found[1])  # (closed if that fails: left as it is)
                stage, walk_fd = found
                self.processes = 0
                self._resuming = True
            else:
                # Into an empty folder: a staging folder, moved into place at the end
                # (files need no temporary names; the target shows nothing meanwhile).
                stage = self._tmp_name()
                try:
                    os.mkdir(stage, 0o700, dir_fd=root_fd)
                    fd = os.open(stage, DIR_FLAGS, dir_fd=root_fd)
                except OSError as e:
                    raise UsageError(f"cannot restore into {target}: {e.strerror}") from e
                try:
                    check_new(fd, root_fd, target)  # not one put under its name meanwhile
                    hold(fd, target)
                except BaseException:
                    os.close(fd)  # not ours, or another restore took it: left alone
                    stage = None
                    raise
                walk_fd = fd
                self.staged = True
                self._made(walk_fd)
                # Into an empty folder nothing is in place to keep: every chunk queued
                # ahead is one a file job will ask for, so a store reads them in batches.
                # With worker processes the files' chunks are theirs to read: only trees.
                self.store = in_batches(self.store)
                self._ahead = ReadAhead(self.store, tree_id, chunks=not self.processes)
            with stops_as_interrupts() if stage is not None else contextlib.nullcontext():
                self._walk(tree_id, target, stage, walk_fd)
            walked = True
        finally:
            self._deferred.clear()  # after an error: those links are not made
            if self._ahead is not None:
                stop_reading_ahead(self.store)
            if stage is not None and walk_fd != root_fd:
                # After an error or an interrupt too: a failed file job removes its file
                # (``_forget``: a worker process's); a resume publishes only a done walk.
                self._fresh.discard(walk_fd)
                self._plain_group.discard(walk_fd)
                if not self._resuming or (walked and self._fatal is None and not self._unsafe):
                    publish(walk_fd, root_fd, stage, self._report)
                else:  # a resume stopped early: what the killed restore left may be cut short
                    self._report(f"stopped: {os.fsdecode(stage)} is left as it is, to resume")
                os.close(walk_fd)
            elif stage is not None:
                with contextlib.suppress(OSError):
                    os.rmdir(stage, dir_fd=root_fd)

    def _walk(self, tree_id: bytes, target: Path, stage: bytes | None, walk_fd: int) -> None:
        root = Folder(walk_fd, [], None, None)
        self._open.add(root)
        self._root_fd = walk_fd
        pool = ThreadPoolExecutor(self.workers) if self.workers > 1 and not self.processes else None
        self._pool = pool
        try:
            if self.processes:  # a fork server that fails to start: cleaned up below too
                assert self._opener is not None and stage is not None
                where = os.path.join(os.fsencode(target.absolute()), stage)
                setup = parent_setup(self._opener, where, walk_fd, self)
                self._procs = ProcessJobs(
                    start(setup, self.processes),
                    3 * self.processes,
                    self._landed,
                    self._release,
                    self._opener.job_bytes or PROC_JOB_BYTES,
                    forget=self._forget,
                )
            with fewer_collections():
                stopped = True
                try:
                    self._dir(tree_id, root, [], everything=not self.selected)
                    if self._procs is not None:
                        self._procs.send()
                    self._make_deferred_links(wait=True)
                    stopped = False
                finally:
                    # An error or an interrupt (or a job's): jobs not started are
                    # cancelled, those running finish (or remove the file they write).
                    if self._procs is not None:
                        self._procs.close(cancel=stopped or self._fatal is not None)
                    self._release(root)
                    if pool is not None:
                        pool.shutdown(wait=True)
        finally:
            self._pool = None
            self._procs = None
            for folder in self._open - {root}:  # left open by an error of the walk
                os.close(folder.fd)
            self._open.clear()

    def _forget(self, folder: Folder, files: FolderFiles) -> None:
        """A worker process's job failed (or the worker died): its files may be partly
        written, under their names in the staging folder: removed."""
        for fields in files.files:
            with contextlib.suppress(OSError):
                os.unlink(fields[0], dir_fd=folder.fd)  # type: ignore[arg-type]

    def _made(self, fd: int) -> None:
        """Folder ``fd`` was made by this restore (empty, mode 0700)."""
        self._fresh.add(fd)
        st = os.fstat(fd)  # setgid is inherited from the parent by mkdir
        if not st.st_mode & stat.S_ISGID and st.st_gid == self._ids[1]:
            self._plain_group.add(fd)

    # --- the walk ------------------------------------------------------------
    def _dir(self, tree_id: bytes, folder: Folder, rel: list[bytes], everything: bool) -> None:
        self._make_deferred_links(wait=False)
        fd = folder.fd
        entries = self._ahead.take(tree_id) if self._ahead is not None else None
        if entries is None:
            entries = decode_tree(self.store.get(tree_id))
            # One lookup for the folder's chunks and sub-folders' trees (as read-ahead).
            chunks = [] if self._procs is not None else [c for e in entries for c in e.chunk_ids()]
            self.store.prefetch(chunks + [e.subtree for e in entries if e.subtree is not None])
        # A new file inherits ACLs only from its folder's default ACL: without one,
        # there is nothing for ``_drop_acls`` to remove from the files written here.
        try:
            acl_default = ACLS[1] in (os.fsencode(n) for n in os.listxattr(fd))
        except OSError:
            acl_default = True
        if not acl_default:
            self._no_default_acl.add(fd)
        try:
            self._fill(entries, folder, rel, everything)
        finally:
            self._no_default_acl.discard(fd)

    def _fill(
        self, entries: list[Entry], folder: Folder, rel: list[bytes], everything: bool
    ) -> None:
        fd = folder.fd
        names = {e.name for e in entries}
        for existing in () if fd in self._fresh else os.listdir(fd):
            name = os.fsencode(existing)
            if name in names:
                continue
            if name.startswith(PREFIX):  # left by an interrupted restore, unless running
                if not is_held(fd, name, anyone=True):  # (nobody kept out: only skipped)
                    force_remove(fd, name)
            elif self._resuming:  # in the staging folder: another snapshot's
                self._remove(fd, name)
            elif self.delete_extra and everything:
                self._remove(fd, name)
                self.stats.removed += 1
        for e in entries:
            if self._fatal is not None:
                break
            child_rel = [*rel, e.name]
            want, all_below = (
                (True, True) if everything else selects(self.selected, child_rel, e.type == "dir")
            )
            if not want:
                continue
            try:
                if self.keep_aside is not None and child_rel in self.selected:
                    self._keep_aside(fd, e.name, child_rel)
                self._entry(e, folder, child_rel, all_below)
            except OSError as err:
                self._error(child_rel, err)
                self._drop_failed(fd, e.name)
        self._flush(folder)

    # --- folders and file jobs -----------------------------------------------
    def _release(self, folder: Folder) -> None:
        """One thing inside ``folder`` (or the walk of it) is done; the last one sets the
        folder's metadata, closes it, and releases its parent in turn."""
        while folder is not None:
            with self._lock:
                folder.pending -= 1
                if folder.pending:
                    return
                self._open.discard(folder)
            try:
                if folder.entry is not None and self._fatal is None:
                    self.meta.on_fd(folder.fd, folder.entry)
            except OSError as err:
                self._error(folder.rel, err)
            finally:
                if folder.parent is not None:  # the root is closed by ``restore``
                    os.close(folder.fd)
            parent = folder.parent
            if parent is None:
                return
            folder = parent

    def _flush(self, folder: Folder, force: bool = False) -> Future[None] | None:
        """Hand the files queued in ``folder`` to the pool as one job (None: none queued).
        With worker processes they join the next batch, sent when it is full or ``force``
        (a later hard link waits for it); None until then."""
        files = folder.queued
        if not files:
            return None
        size = folder.queued_bytes
        folder.queued = []
        folder.queued_bytes = 0
        target = Target(
            folder,
            inherits_acl=folder.fd not in self._no_default_acl,
            plain_group=folder.fd in self._plain_group,
        )
        if self._procs is not None:
            return self._batch_files(files, size, target, force)
        return self._submit(folder, functools.partial(self.write_job, files, target))

    def _batch_files(
        self, files: list[Queued], size: int, target: Target, force: bool
    ) -> Future[None] | None:
        """Add a folder's files to the next worker process's job (``ProcessJobs.add``)."""
        assert self._procs is not None
        folder = target.folder
        if folder.ident is None:
            st = os.fstat(folder.fd)
            folder.ident = (st.st_dev, st.st_ino)
        with self._lock:
            folder.pending += 1
        job = FolderFiles(
            tuple(folder.rel),
            folder.ident,
            target.inherits_acl,
            target.plain_group,
            [entry_fields(e) for e, _, _ in files],
        )
        return self._procs.add(folder, job, size, force)

    def _landed(self, got: JobDone | None, err: BaseException | None) -> None:
        """A worker process's job is done (``got``), failed (``err``) or was cancelled."""
        with self._lock:
            if err is not None:
                if self._fatal is None:
                    self._fatal = err
            elif got is not None:
                self.stats.files += got.files
                self.stats.bytes += got.bytes
                self.stats.errors.extend(got.errors)
                if self.progress:
                    self.progress(got.files, got.bytes)

    def _submit(self, folder: Folder, job: Callable[[], None]) -> Future[None]:
        """Run ``job`` (files of ``folder``; it reports their ``OSError``) on the pool, or
        now without one."""
        fut: Future[None] = Future()
        if self._pool is None:
            job()
            fut.set_result(None)
            return fut
        self._slots.acquire()
        with self._lock:
            folder.pending += 1

        def run() -> None:
            try:
                if self._fatal is None:
                    job()
            except BaseException as err:
                with self._lock:
                    if self._fatal is None:
                        self._fatal = err
            finally:
                self._slots.release()
                try:
                    self._release(folder)
                except BaseException as err:  # (a Future would keep it from everyone)
                    with self._lock:
                        if self._fatal is None:
                            self._fatal = err

        try:
            return self._pool.submit(run)
        except BaseException:
            self._slots.release()
            self._release(folder)
            raise

    def _entry(self, e: Entry, folder: Folder, rel: list[bytes], everything: bool) -> None:
        fd = folder.fd
        existing = self._existing(fd, e.name)
        if e.type == "dir":
            self._flush(folder)  # its files before the sub-folder's, in the read-ahead's order
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                self._remove(fd, e.name)
                existing = None
            if existing is None:
                os.mkdir(e.name, 0o700, dir_fd=fd)  # EEXIST if one appeared meanwhile
            sub = open_dir(fd, e.name) if self._resuming else os.open(e.name, DIR_FLAGS, dir_fd=fd)
            if self._resuming:
                self._walked_into(sub)
            child = Folder(sub, rel, e if everything or existing is None else None, folder)
            with self._lock:
                folder.pending += 1
                self._open.add(child)
            if existing is None:
                # Empty when made (0700, ours): its entries need no stat or listing. What
                # is planted later makes mkdir, symlink or mknod fail; files are renamed
                # over (or made ``O_EXCL``), never written through.
                self._made(sub)
            try:
                assert e.subtree is not None
                self._dir(e.subtree, child, rel, everything)
            finally:
                self._fresh.discard(sub)
                self._plain_group.discard(sub)
                self._release(child)  # metadata and close once its files are done
            self.stats.dirs += 1
            return
        if e.hardlink is not None and e.hardlink in self._links:
            self._flush(folder)  # the files before it first, as the tree orders them
            job = self._link_jobs.get(e.hardlink)
            if (
                job is not None
                and not job.done()
                and len(self._deferred) < DEFERRED_LINKS
                and len(self._open) < DEFERRED_FOLDERS
            ):
                with self._lock:
                    folder.pending += 1  # the folder's metadata waits for the link
                self._deferred.append((e, folder, rel, job))
                return
            self._link(e, fd, rel)
            return
        if e.type == "file":
            folder.queued.append((e, rel, existing))
            folder.queued_bytes += e.size
            if (
                e.hardlink is not None  # a later link waits for this job: it must start
                or len(folder.queued) >= JOB_FILES
                or folder.queued_bytes >= JOB_BYTES
            ):
                fut = self._flush(folder, force=e.hardlink is not None)
                if e.hardlink is not None and fut is not None:
                    self._link_jobs[e.hardlink] = fut
        elif e.type == "symlink":
            assert e.target is not None
            if existing is not None:
                self._remove(fd, e.name)
            os.symlink(e.target, e.name, dir_fd=fd)
            self.meta.on_symlink(fd, e)
            self.stats.others += 1
        elif e.type in ("fifo", "chardev", "blockdev"):
            if not self.special_files:
                if existing is not None and self._resuming:
                    self._remove(fd, e.name)  # made by a killed restore that made them
                self.stats.specials_skipped += 1
                return
            self._node(e, fd, existing)
            self.stats.others += 1
        else:  # sockets belong to a running program; they are not restored
            if existing is not None and self._resuming:
                self._remove(fd, e.name)  # another snapshot's file there
            return
        if e.hardlink is not None:
            self._links[e.hardlink] = b"/".join(rel)

    def _make_deferred_links(self, wait: bool) -> None:
        """Make the deferred links whose first name's job is done (``wait``: all of them,
        each once its job is), in the walk's order."""
        while self._deferred and (wait or self._deferred[0][3].done()):
            e, folder, rel, _ = self._deferred.popleft()
            try:
                if self._fatal is None:
                    self._link(e, folder.fd, rel)
            except OSError as err:
                self._error(rel, err)
                self._drop_failed(folder.fd, e.name)
            finally:
                self._release(folder)

    def _link(self, e: Entry, fd: int, rel: list[bytes]) -> None:
        assert e.hardlink is not None
        first = self._links[e.hardlink]
        job = self._link_jobs.get(e.hardlink)
        if job is not None:
            job.result()  # the first name is in place (or failed: then a copy is written)
        existing = self._existing(fd, e.name)
        if existing is not None:
            self._remove(fd, e.name)
        try:
            self._link_to(first, e.name, fd)
        except OSError:
            # The link could not be made (the first name is gone, a folder on its way
            # is a symlink now, or links are refused): write a copy. ``_file`` counts it.
            self._file(e, Target(Folder(fd, [], None, None), True, False), None)
            return
        with self._lock:
            self.stats.files += 1

    def _link_to(self, first: bytes, name: bytes, fd: int) -> None:
        """Link ``name`` in folder ``fd`` to ``first`` (a path from the root), reaching the
        first name's folder one component at a time, never through a symlink."""
        *folders, last = first.split(b"/")
        at = open_below(self._root_fd, folders)
        try:
            os.link(last, name, src_dir_fd=at, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(at)

    def _node(self, e: Entry, fd: int, existing: os.stat_result | None) -> None:
        def replace_dir() -> None:
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                self._remove(fd, e.name)

        self.meta.make_node(e, fd, self._tmp_name(), replace_dir)


def restore_tree(
    store: BlobSource, tree_id: bytes, target: Path, **options: Unpack[RestoreOptions]
) -> RestoreStats:
    """Restore ``tree_id`` (or only ``paths`` inside it) into ``target`` (see ``Restorer``)."""
    return Restorer(store, **options).restore(tree_id, target)
