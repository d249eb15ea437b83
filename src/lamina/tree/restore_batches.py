"""The jobs a restore hands to its worker processes (``lamina.tree.restore_procs``).

The walk adds each folder's files as it leaves them; a job goes to a worker when it
holds ``PROC_JOB_FILES`` files or ``job_bytes`` bytes (``PROC_JOB_BYTES`` unless the
workers' source asks for other, ``Opener.job_bytes``), or when the walk forces it
(a hard link that follows is made once its first name's job is done). At most ``slots`` jobs are in
flight. When a job is done (or failed, or cancelled) ``landed`` is told what it did
and ``release`` is called once for each folder it held: the restorer counts, and sets
a folder's own metadata when its last job is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Generic, TypeVar

from lamina.tree.restore_procs import (
    PROC_JOB_BYTES,
    PROC_JOB_FILES,
    FolderFiles,
    JobDone,
    write_files,
)

F = TypeVar("F")


class ProcessJobs(Generic[F]):
    """Folders' files batched into jobs for ``procs`` (see the module)."""

    def __init__(
        self,
        procs: ProcessPoolExecutor,
        slots: int,
        landed: Callable[[JobDone | None, BaseException | None], None],
        release: Callable[[F], None],
        job_bytes: int = PROC_JOB_BYTES,
        forget: Callable[[F, FolderFiles], None] | None = None,
    ) -> None:
        """``forget``: called for each folder's files of a job that failed (or whose
        worker died), once every worker is gone and before that folder is released:
        they may be partly written."""
        self.procs = procs
        self._forget = forget
        #: the folders' files of jobs that failed: forgotten and released once every
        #: worker is gone (a worker told to stop may still be writing until then)
        self._failed: list[tuple[F, FolderFiles]] = []
        #: a job is sent when it holds this many bytes (or ``PROC_JOB_FILES`` files)
        self._job_bytes = job_bytes
        self._slots = threading.BoundedSemaphore(slots)
        self._landed = landed
        self._release = release
        self._batch: list[tuple[F, FolderFiles]] = []
        self._count = 0
        self._bytes = 0

    def add(self, folder: F, files: FolderFiles, size: int, force: bool) -> Future[None] | None:
        """Add a folder's files (``size`` bytes) to the next job; sent when it is full or
        ``force`` (the job's future then, else None)."""
        self._batch.append((folder, files))
        self._count += len(files.files)
        self._bytes += size
        if force or self._count >= PROC_JOB_FILES or self._bytes >= self._job_bytes:
            return self.send()
        return None

    def close(self, cancel: bool) -> None:
        """Wait for the jobs sent; with ``cancel`` (the walk stopped, or a job failed)
        those not started are cancelled and the files batched and not sent are not
        written."""
        self.procs.shutdown(wait=True, cancel_futures=cancel)
        failed, self._failed = self._failed, []
        for folder, files in failed:
            try:
                if self._forget is not None:
                    self._forget(folder, files)
            finally:
                self._release(folder)
        if cancel:
            batch, self._batch = self._batch, []
            for folder, _ in batch:
                self._release(folder)

    def send(self) -> Future[None] | None:
        """Send the batch to a worker process (None: nothing batched)."""
        batch, self._batch = self._batch, []
        self._count = self._bytes = 0
        if not batch:
            return None
        self._slots.acquire()
        try:
            fut: Future[JobDone] = self.procs.submit(write_files, [g for _, g in batch])
        except BaseException:
            self._slots.release()
            for folder, _ in batch:
                self._release(folder)
            raise
        done: Future[None] = Future()

        def landed(f: Future[JobDone]) -> None:
            failed = False
            try:
                if f.cancelled():
                    self._landed(None, None)
                elif (err := f.exception()) is not None:
                    failed = True
                    self._landed(None, err)
                else:
                    self._landed(f.result(), None)
            finally:
                self._slots.release()
                if failed:  # its files may be partly written: ``close`` forgets them
                    self._failed.extend(batch)
                else:
                    for folder, _ in batch:
                        self._release(folder)
                done.set_result(None)

        fut.add_done_callback(landed)
        return done
