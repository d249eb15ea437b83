"""What a restore works with: its blob source, its counts and options, the folders it
fills and where a file job writes (``lamina.tree.restore``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypedDict

from lamina.store.keys import ChunkingSecret
from lamina.store.progress import AdvanceFn
from lamina.tree.counts import TreeCounts
from lamina.tree.model import Entry

#: How a restore opens a folder: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_below(fd: int, names: Iterable[bytes]) -> int:
    """A new descriptor of the folder reached from folder ``fd`` through ``names``, one
    component at a time, never through a symlink (``O_NOFOLLOW``)."""
    at = os.dup(fd)
    try:
        for name in names:
            sub = os.open(name, DIR_FLAGS, dir_fd=at)
            os.close(at)
            at = sub
    except BaseException:
        os.close(at)
        raise
    return at


#: A file the walk queued for a job: its entry, its path in the tree, what is in place.
Queued = tuple[Entry, list[bytes], os.stat_result | None]


class BlobSource(Protocol):
    """Where a restore reads verified plaintext from: the store, or a server over HTTP."""

    def get(self, bid: bytes) -> bytes: ...

    def get_many(self, ids: Iterable[bytes]) -> Iterator[bytes]: ...

    def prefetch(self, ids: Collection[bytes]) -> None:
        """A hint: these blobs are read next (a source may look them up in one go)."""
        ...


class Opener(NamedTuple):
    """How a worker opens its own blob source: a picklable callable (a module-level
    function, or a ``functools.partial`` of one), and the modules the fork server
    imports once for every worker (the source's own, e.g. the catalog's)."""

    open: Callable[[], BlobSource]
    modules: tuple[str, ...] = ()
    #: bytes of files in one worker's job at most (None: ``PROC_JOB_BYTES``); a source
    #: whose every request costs (a server's) takes larger jobs, so fewer requests
    job_bytes: int | None = None


@dataclass
class RestoreStats(TreeCounts):
    skipped: int = 0
    removed: int = 0
    #: paths (relative to the target) kept aside as NAME<suffix> before being restored
    kept: list[str] = field(default_factory=list)
    #: device nodes and FIFOs left out (``special_files=False``)
    specials_skipped: int = 0


class Folder:
    """A folder being restored: its descriptor stays open until the walk left it and
    every file and sub-folder inside it is done; then its metadata is set and it is closed."""

    __slots__ = ("entry", "fd", "ident", "parent", "pending", "queued", "queued_bytes", "rel")

    def __init__(self, fd: int, rel: list[bytes], entry: Entry | None, parent: Folder | None):
        self.fd = fd
        self.rel = rel
        #: the folder's own entry, when its metadata is (re)applied at the end
        self.entry = entry
        self.parent = parent
        #: the walk itself (1) + file jobs in flight + open sub-folders
        self.pending = 1
        #: files the walk queued for the next job (``Restorer._flush``)
        self.queued: list[Queued] = []
        self.queued_bytes = 0
        #: ``(st_dev, st_ino)``, for the jobs handed to worker processes
        self.ident: tuple[int, int] | None = None


@dataclass(frozen=True)
class Target:
    """Where a file job writes, fixed by the walk when it hands the file over."""

    folder: Folder
    inherits_acl: bool
    plain_group: bool


class RestoreOptions(TypedDict, total=False):
    """``restore_tree``'s keyword arguments: ``Restorer``'s, which says what each does."""

    paths: Sequence[str | bytes]
    delete_extra: bool
    progress: AdvanceFn | None
    chunking: ChunkingSecret | None
    keep_aside: str | None
    special_files: bool
    same_owner: bool
    workers: int
    processes: int
    opener: Opener | None
