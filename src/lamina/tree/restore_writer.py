"""Writing a restore's regular files: each under a temporary name, then its metadata,
then renamed to its name; or kept in place when it is proved to hold the tree's content.
A restore that fills a staging folder of its own (``staged``: a whole restore into an empty
folder, published whole at its end by ``Restorer``) writes each file under its name at once.

The restorer (``lamina.tree.restore.Restorer``, a ``FileWriter``) walks the tree and hands
files to its threads; a restore's worker processes (``lamina.tree.restore_procs``) write
theirs with a ``FileWriter`` of their own. Every operation goes through the descriptor of
the folder being filled and never follows a symlink (see ``lamina.tree.restore``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import threading

from lamina.store.keys import ChunkingSecret
from lamina.store.progress import AdvanceFn
from lamina.tree.model import Entry
from lamina.tree.restore_file import ContentProof, write_content
from lamina.tree.restore_meta import Metadata
from lamina.tree.restore_types import BlobSource, Queued, RestoreStats, Target


class FileWriter:
    """Writes regular files into folders the caller holds open (thread-safe)."""

    def __init__(
        self,
        store: BlobSource,
        *,
        progress: AdvanceFn | None = None,
        chunking: ChunkingSecret | None = None,
        special_files: bool = True,
        same_owner: bool = True,
        staged: bool = False,
    ) -> None:
        """``chunking``: proves a file already in place holds the tree's content (without
        it, every file is rewritten). ``special_files``, ``same_owner``: as ``Restorer``.
        ``staged``: every folder written into is inside a staging folder nobody sees until
        the restore publishes it: a file is created under its name (``O_EXCL``), without
        a temporary name and a rename."""
        self.store = store
        self.staged = staged
        self.progress = progress
        self.chunking = chunking
        self.special_files = special_files
        self.same_owner = same_owner
        self.stats = RestoreStats()
        self.meta = Metadata(
            special_files=special_files, same_owner=same_owner, report=self._report
        )
        self._ids = (os.geteuid(), os.getegid())
        #: this process's umask (None: unknown), for ``_create_mode``
        self._umask = process_umask()
        #: Descriptors of folders this restore created (empty when made).
        self._fresh: set[int] = set()
        #: Temporary names: a random prefix per restore and a counter (O_EXCL still guards).
        self._tmp_prefix = secrets.token_hex(4).encode()
        self._tmp_count = 0
        self._proof = ContentProof(chunking) if chunking is not None else None
        self._lock = threading.Lock()
        #: the first fatal error of a file job; no new file starts after it
        self._fatal: BaseException | None = None
        #: Resuming into a staging folder a killed restore left (``restore_resume``).
        self._resuming = False
        #: hard-linked inodes kept in place -> the tree's hard-link key they were kept for
        self._kept_links: dict[tuple[int, int], bytes] = {}

    def write_job(self, files: list[Queued], target: Target) -> None:
        """One job: the files of one folder, one after the other."""
        for e, rel, existing in files:
            if self._fatal is not None:
                return
            try:
                self._file(e, target, existing)
            except OSError as err:
                self._error(rel, err)
                self._drop_failed(target.folder.fd, e.name)

    def _drop_failed(self, fd: int, name: bytes) -> None:
        """An entry failed (``restore_resume``: resuming, what the killed restore left
        under its name goes)."""

    def _file(self, e: Entry, target: Target, existing: os.stat_result | None) -> None:
        fd = target.folder.fd
        if (
            existing is not None
            and stat.S_ISREG(existing.st_mode)
            and existing.st_size == e.size
            and self._may_keep(e, existing)
            and self._keep_verified(e, fd, existing)
        ):
            with self._lock:
                self.stats.skipped += 1
                self.stats.files += 1
                if self.progress:
                    self.progress(1, e.size)
            return
        self._write(e, target, existing)

    def _may_keep(self, e: Entry, existing: os.stat_result) -> bool:
        """Whether a file in place may be kept. Another name of the same inode would take
        its metadata (and content): with more than one link it is kept only for one of the
        tree's hard-link groups, and once. Resuming without keeping owners, only a file of
        this user's (the killed restore may have kept them)."""
        if self._resuming and not self.same_owner and existing.st_uid != self._ids[0]:
            return False
        if existing.st_nlink == 1:
            return True
        if e.hardlink is None:
            return False
        with self._lock:
            key = self._kept_links.setdefault((existing.st_dev, existing.st_ino), e.hardlink)
        return key == e.hardlink

    def _keep_verified(self, e: Entry, fd: int, existing: os.stat_result) -> bool:
        """Keep the file in place only if it re-chunks to the tree's chunk ids; then
        reapply its metadata. Without the chunking secret nothing is proved."""
        if self._proof is None:
            return False
        f = self._proof.open_if_same(fd, e, existing)
        if f is None:
            return False
        try:
            self.meta.on_fd(f, e)
        finally:
            os.close(f)
        return True

    def _write(self, e: Entry, target: Target, existing: os.stat_result | None) -> None:
        """Write a file's content under a temporary name, then rename it (staged: under
        its name: the staging folder is the temporary name of the whole restore)."""
        fd = target.folder.fd
        name = e.name if self.staged else self._tmp_name()
        # A new file in a folder that is not setgid and has our egid is owned by our
        # euid/egid: a chown to that same owner would change nothing.
        owned = target.plain_group and (e.uid, e.gid) == self._ids
        mode = self._create_mode(e, owned, target.inherits_acl)
        out = -1
        try:
            out = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600 if mode is None else mode,
                dir_fd=fd,
            )
            write_content(out, e, self.store.get_many)
            self.meta.on_fd(
                out, e, inherits_acl=target.inherits_acl, owned=owned, moded=mode is not None
            )
        except BaseException as err:
            # An interrupt (a worker's SIGTERM) raised as ``os.open`` returns leaves the
            # file made but ``out`` unset: removed too. An error of ``os.open`` itself
            # made nothing (EEXIST: a name that is not this restore's).
            if out >= 0 or not isinstance(err, OSError):
                with contextlib.suppress(OSError):
                    _unlink_own(name, fd, out)
            if out >= 0:
                os.close(out)
            raise
        os.close(out)
        if not self.staged:
            try:
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    self._remove(fd, e.name)
                os.rename(name, e.name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)  # (the temporary name: nobody else's)
                raise
        with self._lock:
            self.stats.files += 1
            self.stats.bytes += e.size
            if self.progress:
                self.progress(1, e.size)

    def _create_mode(self, e: Entry, owned: bool, inherits_acl: bool) -> int | None:
        """The mode to create ``e``'s file with when that is its final mode (no ``fchmod``
        after): it has its owner already (a chown would clear setuid/setgid), no default ACL
        shapes its rights, it has only permission bits, and the umask clears none of them.
        Never more rights than the file ends with, at any moment. None: create it 0600
        and set its mode after its content."""
        if not owned or inherits_acl or self._umask is None:
            return None
        mode = self.meta.mode(e)
        if mode & ~0o777 or mode & self._umask:
            return None
        return mode

    def _tmp_name(self) -> bytes:
        with self._lock:
            self._tmp_count += 1
            count = self._tmp_count
        return b".lamina-restore-%s%08x" % (self._tmp_prefix, count)

    def _existing(self, fd: int, name: bytes) -> os.stat_result | None:
        if fd in self._fresh:  # a folder this restore created: it held nothing
            return None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _remove(self, fd: int, name: bytes) -> None:
        st = self._existing(fd, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(os.fsdecode(name), dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)

    def _error(self, rel: list[bytes], err: OSError) -> None:
        self._report(f"{os.fsdecode(b'/'.join(rel))}: {err.strerror}")

    def _report(self, message: str) -> None:
        with self._lock:
            self.stats.errors.append(message)


def _unlink_own(name: bytes, fd: int, out: int) -> None:
    """Remove ``name`` from folder ``fd`` if it is still the file open as ``out`` (-1:
    not known): a worker of a killed restore, removing the file it was writing, must not
    remove the one a resumed restore has put under that name since."""
    if out >= 0:
        mine = os.fstat(out)
        there = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino):
            return
    os.unlink(name, dir_fd=fd)


def process_umask() -> int | None:
    """This process's umask, read without changing it (``os.umask`` sets it, racing with
    other threads' file creation): the ``Umask:`` line of /proc/self/status (Linux 4.7+);
    None when it cannot be read."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None
