"""One sync: scan the endpoint's protected area, upload what the server lacks, commit."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lamina.agent.facts import os_release
from lamina.agent.state import AgentState
from lamina.agent.throttle import Throttled
from lamina.agent.transport import AgentClient, retrying
from lamina.agent.uploader import RemoteSink
from lamina.errors import MissingDataError, UploadsPendingError
from lamina.layers.rules import Globs, RuleSet, for_os, globs, re2_bytes
from lamina.protocol.endpoint import AgentConfig, CommitResponse
from lamina.protocol.policies import PolicySettings
from lamina.tree.cache import FilesCache
from lamina.tree.collector import fewer_collections
from lamina.tree.scan import Scanner
from lamina.tree.scan_proc import scan_processes
from lamina.tree.scan_scope import ExcludeFn, FolderExcludeFn, PruneFn, estimate

log = logging.getLogger(__name__)


@dataclass
class SyncResult:
    response: CommitResponse
    files: int
    bytes: int
    files_read: int
    uploaded_bytes: int
    errors: list[str]


class ProtectedArea(NamedTuple):
    """A policy's protected area as the scanner's callbacks."""

    exclude: ExcludeFn
    prune: PruneFn
    #: the answers ``exclude`` gives a whole folder's files and sub-folders
    exclude_folder: FolderExcludeFn


def protected_area(
    policy: PolicySettings, rules: RuleSet, root: Path, state_dir: Path
) -> ProtectedArea:
    """What a policy protects, as the scanner's exclude and prune callbacks.

    Every pattern group (the rule set's classes, the policy's exceptions, exclude and
    include) is one RE2 matched on the path's bytes; a folder whose children all get
    the same answer (no pattern can match below it, or one matches all of it) is
    decided once for all of them, and the scanner asks ``exclude_folder`` for that
    answer once per folder instead of calling ``exclude`` for each entry."""
    wanted = set(policy.classes)
    skip_inside: set[bytes] = set()
    with_state = state_dir.resolve()
    with contextlib.suppress(ValueError):  # the state folder is outside the root
        skip_inside.add(os.fsencode(with_state.relative_to(root.resolve())))
    #: folders holding the state folder: their entries are asked about one by one
    skip_parents = {rel.rpartition(b"/")[0] for rel in skip_inside}
    exceptions, excluded, included = (
        globs(tuple(policy.exceptions)),
        globs(tuple(policy.exclude)),
        globs(tuple(policy.include)),
    )

    def decide(cls: str | None, test: Callable[[Globs], bool | None], is_dir: bool) -> bool | None:
        """Exclude? ``test`` tells whether a group matches (None: it depends on the path)."""
        if cls is None:
            return None
        if cls == "excluded":
            return not is_dir  # excluded folders stay, empty (see prune)
        for group, answer in ((exceptions, False), (excluded, True)):
            hit = test(group)
            if hit is None:
                return None
            if hit:
                return answer
        if is_dir:
            return False  # a folder may hold wanted paths of another class
        hit = test(included)
        if hit is None:
            return None
        return True if not hit else cls not in wanted

    #: parent folder -> (answer for its files, answer for its folders: None if per path,
    #: the class of every path below it: None if per path)
    folders: dict[bytes, tuple[bool | None, bool | None, str | None]] = {}

    def answers(parent: bytes) -> tuple[bool | None, bool | None, str | None]:
        """The answer for every file and for every folder in ``parent`` (None: per path)."""
        known = folders.get(parent)
        if known is None:
            above = folders.get(parent.rpartition(b"/")[0]) if parent else None
            if above is not None and above[0] is not None and above[1] is not None:
                # decided for every path below the folder above, so below this one too
                # (a scan lists a folder before its sub-folders: one lookup, no matching)
                known = above
            else:
                d = "/" + os.fsdecode(parent)
                cls = rules.classify_below(d)
                known = (
                    decide(cls, lambda g: g.below(d), False),
                    decide(cls, lambda g: g.below(d), True),
                    cls,
                )
            if len(folders) > 256:
                folders.clear()
            folders[parent] = known
        return known

    def exclude_folder(rel: bytes) -> tuple[bool | None, bool | None]:
        if rel in skip_parents:
            return None, None
        files, folders_, _ = answers(rel)
        return files, folders_

    def exclude(rel: bytes, is_dir: bool) -> bool:
        if rel in skip_inside:
            return True
        files, folders_, _ = answers(rel.rpartition(b"/")[0])
        answer = folders_ if is_dir else files
        if answer is not None:
            return answer
        text = b"/" + rel if rel.isascii() else re2_bytes("/" + os.fsdecode(rel))
        return bool(decide(rules.classify_bytes(text), lambda g: g.match_bytes(text), is_dir))

    def prune(rel: bytes) -> bool:
        known = folders.get(rel.rpartition(b"/")[0])
        if known is not None and known[2] not in (None, "excluded"):
            return False  # no path below the folder it is in is of the excluded class
        return rules.prunable("/" + os.fsdecode(rel))

    return ProtectedArea(exclude, prune, exclude_folder)


#: At most this many scan-error paths are recorded in a snapshot; a revert removes
#: nothing when a snapshot had more errors than recorded paths.
MAX_ERROR_PATHS = 1000
MAX_ERROR_PATH_CHARS = 32 * 1024  # keeps a snapshot's stats under the server's map limit


def error_paths(errors: list[str], root: Path) -> list[str]:
    """Endpoint paths (relative) of the scan's errors, ``"PATH: reason"``.

    A name holding ``": "`` yields one of its parents: a wider area left alone."""
    prefix = os.fsdecode(os.fsencode(root.resolve())).rstrip("/") + "/"
    out: list[str] = []
    chars = 0
    for err in errors[:MAX_ERROR_PATHS]:
        path = err.split(": ", 1)[0]
        if path.startswith(prefix):
            chars += len(path) - len(prefix)
            if chars > MAX_ERROR_PATH_CHARS:
                break  # fewer paths than errors: a revert then removes nothing
            out.append(path[len(prefix) :])
    return out


def run_sync(
    client: AgentClient,
    st: AgentState,
    state_dir: Path,
    cfg: AgentConfig,
    progress: Callable[[dict[str, Any]], None] | None = None,
    extra_stats: dict[str, Any] | None = None,
    expected_bytes: int | None = None,
) -> SyncResult:
    """Scan, upload and commit. ``expected_bytes`` (the last snapshot's size) is the
    estimate later syncs show progress against: only the first walks the tree first."""
    policy = cfg.policy or PolicySettings()
    root = Path(st.root)
    rules = for_os(os_release(root))
    area = protected_area(policy, rules, root, state_dir)
    exclude, prune = area.exclude, area.prune
    counters: dict[str, Any] = {"files": 0, "bytes": 0, "uploaded": 0}
    centralizing = cfg.last_sync is None

    def snapshot() -> dict[str, Any]:
        total = counters.get("total_bytes") or expected_bytes
        pct = min(99, int(100 * counters["bytes"] / total)) if total else None
        phase = "centralizing" if centralizing else "syncing"
        known = {"percent": pct, "expected_bytes": total} if pct is not None else {}
        return {"phase": phase, **known, **counters}

    # Each report writes the status file and posts to the server: at most one a second,
    # and one held back is made a moment later (an upload held up shows what came before);
    # the first a second in (the status says "syncing" already): a shorter sync makes none.
    report = Throttled(
        lambda: progress(snapshot()) if progress else None, PROGRESS_SECONDS, quiet_start=True
    )
    if centralizing and progress:
        progress({"phase": "centralizing", "percent": 0, **counters})

    def on_file(nfiles: int, nbytes: int) -> None:
        before = counters["files"]
        counters["files"] += nfiles
        counters["bytes"] += nbytes
        # a folder whose tree is reused counts all its files at once
        if counters["files"] // 500 != before // 500:
            report()

    def on_upload(nbytes: int) -> None:
        counters["uploaded"] += nbytes
        report()

    cache = FilesCache(state_dir / "cache" / "files.sqlite", st.device_id, cfg.gc_epoch)
    # After a garbage collection the scan asks which of its cached chunk ids are gone:
    # the sink then answers ``need`` from the server, not from what it queued (a first
    # sync trusts no cached id: its hits, if any, are read again).
    sink = RemoteSink(
        client,
        st.chunking,
        bandwidth_limit=policy.bandwidth_limit,
        on_upload=on_upload,
        exact_need=cache.stale and not centralizing,
    )
    counting: Count | None = None
    processes = min(scan_processes(), READERS_WITH_PROCESSES)
    try:
        if centralizing:  # worth a metadata walk to show a percentage, beside the scan
            counting = Count(counters, root, protected_area(policy, rules, root, state_dir), report)
        # A sync makes and drops a few objects a file: the collector's default passes
        # walked the agent's imported modules again and again for next to nothing.
        with fewer_collections():
            reuse_trees, rescans_left = True, MAX_RESCANS
            while True:
                scanner = Scanner(
                    sink,
                    cache,
                    exclude=exclude,
                    exclude_folder=area.exclude_folder,
                    prune=prune,
                    progress=on_file,
                    reuse_trees=reuse_trees,
                    workers=READERS_WITH_PROCESSES if processes else READERS,
                    processes=processes,
                    thread_readers=READERS,
                )
                root_id = scanner.scan(root)
                if counting is not None:
                    counting.wait()  # it has walked what the scan read: long done
                cache.settle()  # a files cache that cannot be written fails before the commit
                sink.flush()
                report.settle()  # no progress report after the commit
                try:
                    doc = commit(
                        client, _commit_body(root_id, scanner, sink, cfg, policy, root, extra_stats)
                    )
                    break
                except MissingDataError:
                    # A tree reused from the files cache may be one the server no longer
                    # holds: one scan more, building every tree (so it happens once). Else
                    # blobs another endpoint promised did not come (its claim ran out): one
                    # of MAX_RESCANS. The server now asks for what is missing.
                    if scanner.stats.trees_reused:
                        reuse_trees = False
                    elif rescans_left:
                        rescans_left -= 1
                    else:
                        raise
                    counters["files"] = counters["bytes"] = 0
            cache.commit(cfg.gc_epoch)
    finally:
        # Nothing reports once the sync ended: the count is stopped, the uploads too.
        if counting is not None:
            counting.stop()
        sink.close()
        report.settle()
        cache.close()
    stats = scanner.stats
    return SyncResult(
        CommitResponse(**doc),
        stats.files,
        stats.bytes,
        stats.files_read,
        sink.uploaded_bytes,
        stats.errors,
    )


class _CountStopped(Exception):
    """The sync ended before its count did."""


class Count:
    """The files and bytes a first sync will cover, counted into ``counters``
    (``total_files``, ``total_bytes``) on a thread of its own while the scan starts; then
    ``counted`` is called (the sync's progress report, which now has a percentage).

    The count walks the tree's metadata (a ``lstat`` per file, the protected area's
    answers, asked once a folder as the scanner asks them): ~0.2 s for 40,000 files, which
    the scan waited for when it came first.
    ``area`` is its own: the scan's folder answers are memoised per area. Until the
    count is done the progress has no percentage; a count that fails leaves none, and a
    stopped one (the sync ended first: at its next folder) neither writes nor reports
    anything."""

    def __init__(
        self,
        counters: dict[str, Any],
        root: Path,
        area: ProtectedArea,
        counted: Callable[[], None],
    ) -> None:
        self._counters, self._counted = counters, counted
        self._stopped = threading.Event()

        def folder(rel: bytes) -> tuple[bool | None, bool | None]:
            if self._stopped.is_set():
                raise _CountStopped
            return area.exclude_folder(rel)

        self._thread = threading.Thread(
            target=self._run,
            args=(root, area.exclude, area.prune, folder),
            name="lamina-count",
            daemon=True,
        )
        self._thread.start()

    def _run(self, root: Path, exclude: ExcludeFn, prune: PruneFn, folder: FolderExcludeFn) -> None:
        try:
            files, size = estimate(root, exclude, prune, folder)
        except _CountStopped:
            return
        except Exception:  # a percentage is not worth failing the sync for
            log.warning("cannot count what the first sync covers", exc_info=True)
            return
        if not self._stopped.is_set():
            self._counters.update(total_files=files, total_bytes=size)
            self._counted()

    def wait(self) -> None:
        """Until the count is done."""
        self._thread.join()

    def stop(self) -> None:
        """End the count where it is (at its next entry) and wait for it."""
        self._stopped.set()
        self._thread.join()


#: Threads reading a sync's files where no worker process may (one core). One: a sync's
#: Python work holds the interpreter's lock, and a second reader mostly added hand-offs
#: of it (a 1 GiB first sync made 45,000 voluntary context switches with two, 25,000-29,000
#: with one, for ~10% less of the agent's CPU; 100,000 small files 215,000 against
#: 98,000-115,000, ~20% less). The reader's own chunking and hashing let go of the lock,
#: as the sender's compression does ("The agent's side of a sync (session 19)" in
#: docs/design.md).
READERS = 1
#: Threads of a sync where worker processes may read its small files (a second core;
#: they start past ``PROCESS_AFTER`` small files), and at most how many workers: two.
#: Still only ``READERS`` of them reads files at once; the other hands its job of small
#: files to a worker meanwhile, so a worker never waits for the agent between jobs
#: ("Worker processes in an agent's sync (session 20)" in docs/design.md).
READERS_WITH_PROCESSES = 2
#: Least seconds between two progress reports of a sync (status file, server).
PROGRESS_SECONDS = 1.0
#: Scans a sync repeats when its commit names blobs another endpoint promised and did not
#: send (besides the one without reused trees when a reused tree may be what is missing).
MAX_RESCANS = 2
#: Seconds between commits while other endpoints upload blobs this one was told are coming.
PENDING_WAITS = (0.2, 0.5, 1.0, 2.0, 5.0)
#: How long a commit waits for them in all (the server's claims run out sooner, by default).
PENDING_LIMIT = 600.0


def commit(client: AgentClient, body: dict[str, Any]) -> Any:
    """``POST /agent/commit``, asking again while blobs other endpoints upload are in flight."""
    waited = 0.0
    for n in itertools.count():
        try:
            return retrying(lambda: client.json("POST", "/agent/commit", json=body))
        except UploadsPendingError:
            if waited >= PENDING_LIMIT:
                raise
            pause = PENDING_WAITS[min(n, len(PENDING_WAITS) - 1)]
            time.sleep(pause)
            waited += pause
    raise AssertionError("unreachable")


def _commit_body(
    root_id: bytes,
    scanner: Scanner,
    sink: RemoteSink,
    cfg: AgentConfig,
    policy: PolicySettings,
    root: Path,
    extra_stats: dict[str, Any] | None,
) -> dict[str, Any]:
    stats = scanner.stats
    return {
        "root": root_id.hex(),
        "files": stats.files,
        "bytes": stats.bytes,
        "stats": {
            "files_read": stats.files_read,
            "bytes_read": stats.bytes_read,
            "uploaded_bytes": sink.uploaded_bytes,
            "errors": len(stats.errors),
            "policy_version": cfg.policy_version,
            # What a revert to this snapshot may remove: the protected area as it
            # was then, minus the paths the scan could not read.
            "policy": policy.model_dump(),
            "error_paths": error_paths(stats.errors, root),
            **(extra_stats or {}),
        },
    }
