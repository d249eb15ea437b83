"""Restore with worker processes: the same tree, verified blobs, one error, no orphans.

A whole restore into an empty folder of a large tree writes its files in worker
processes, each with its own blob source; the walk, the folders' metadata and hard
links stay in the restoring process."""

from __future__ import annotations

import functools
import gc
import os
import pickle
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from lamina.errors import IntegrityError
from lamina.store import blob
from lamina.store.repository import Store
from lamina.tree import restore_procs
from lamina.tree.collector import YOUNG_THRESHOLD
from lamina.tree.restore import restore_tree
from lamina.tree.restore_batches import ProcessJobs
from lamina.tree.restore_procs import MAX_PROCESSES, MIN_BYTES, MIN_FILES, processes_for
from lamina.tree.restore_types import Opener
from lamina.tree.restore_writer import FileWriter
from lamina.tree.sources import HTTP_BATCH

from .procsources import dict_blobs, hanging_blobs, opener, store_blobs
from .treeutil import MIB, MTIME, assert_same_tree, scan_tree, write


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """Six folders of 40 small files, a sub-folder and a symlink each, a big file, an
    empty folder, a read-only folder and a hard link across folders."""
    root = tmp_path / "src"
    files = [(f"d{d}/f{i}", 300 + 97 * i, MTIME + i) for d in range(6) for i in range(40)]
    files += [(f"d{d}/sub/deep", 5000, MTIME + 7) for d in range(6)] + [("big", 3 * MIB, MTIME)]
    for rel, size, mtime in files:
        write(root / rel, os.urandom(size), mtime)
    for d in (root / f"d{n}" for n in range(6)):
        os.symlink("../d0/f0", d / "link")
        os.chmod(d / "f1", 0o751)
        for folder, ns in ((d / "sub", MTIME + 40), (d, MTIME + 50)):
            os.utime(folder, ns=(ns, ns))
    (root / "empty").mkdir()
    os.chmod(root / "d4", 0o555)  # a folder's mode is set after its files are in
    os.link(root / "d0" / "f0", root / "d5" / "same-as-d0-f0")
    return root


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".lamina-restore-")]


def test_a_restore_over_worker_processes_is_exact(store: Store, src: Path, tmp_path: Path) -> None:
    """Contents, modes, times, symlinks and hard links as with threads, no temporary name,
    and every file's data read by the workers: the restoring process reads trees only."""
    tid, _ = scan_tree(store, src)
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key
    parent = dict_blobs(blobs, key)
    out = tmp_path / "out"
    done: list[tuple[int, int]] = []
    st = restore_tree(
        parent,
        tid,
        out,
        processes=2,
        opener=opener(blobs, key),
        progress=lambda files, size: done.append((files, size)),
    )
    try:
        assert st.errors == [] and st.files == 6 * 41 + 2
        assert_same_tree(src, out)
    finally:
        os.chmod(src / "d4", 0o755)
        os.chmod(out / "d4", 0o755)
    assert os.stat(out / "d5" / "same-as-d0-f0").st_ino == os.stat(out / "d0" / "f0").st_ino
    assert _leftovers(out) == []
    trees = sum(
        len(b) for i, b in blobs.items() if store.catalog.locate([i])[i].kind != blob.BlobKind.DATA
    )
    assert parent.fetched_bytes <= trees  # no file's data went through the walk's process
    assert sum(f for f, _ in done) == st.files - 1  # the hard link is counted, not written


def test_a_blob_failing_verification_in_a_worker_stops_the_restore(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """A worker gets a blob that does not hash to its id: the restore raises that
    IntegrityError, and no file from those bytes and no temporary name is left."""
    tid, _ = scan_tree(store, src)
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key
    bad = (src / "d3" / "f5").read_bytes()
    for bid, plain in blobs.items():
        if plain == bad:
            blobs[bid] = bytes([plain[0] ^ 1]) + plain[1:]
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match="does not match its id"):
        restore_tree(
            dict_blobs(store_blobs(store), key), tid, out, processes=2, opener=opener(blobs, key)
        )
    os.chmod(out / "d4", 0o755) if (out / "d4").exists() else None
    assert _leftovers(out) == []
    assert not (out / "d3" / "f5").exists()
    for p in out.rglob("*"):
        if p.is_file() and not p.is_symlink():  # whatever was written is whole
            assert p.read_bytes() == (src / p.relative_to(out)).read_bytes()


def test_the_worker_count_follows_the_size_and_the_cores() -> None:
    assert processes_for(MIN_FILES - 1, MIN_BYTES - 1, cores=2) == 0  # threads
    assert processes_for(MIN_FILES, 0, cores=2) == 2
    assert processes_for(0, MIN_BYTES, cores=2) == 2
    assert processes_for(10**6, 10**12, cores=64) == MAX_PROCESSES
    assert processes_for(10**6, 10**12, cores=1) == 0


def test_a_partial_restore_or_one_onto_files_stays_on_threads(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes are asked for (the callers decide by size alone): a restore of some
    paths, or into a folder that holds files, starts none and is exact."""
    tid, _ = scan_tree(store, src)
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key
    started: list[int] = []
    monkeypatch.setattr("lamina.tree.restore.start", lambda setup, n: started.append(n))
    part = tmp_path / "part"
    restore_tree(
        dict_blobs(blobs, key), tid, part, paths=["d2"], processes=2, opener=opener(blobs, key)
    )
    assert_same_tree(src / "d2", part / "d2")
    onto = tmp_path / "onto"
    write(onto / "d3" / "f5", b"old", MTIME)
    restore_tree(dict_blobs(blobs, key), tid, onto, processes=2, opener=opener(blobs, key))
    assert (onto / "d3" / "f5").read_bytes() == (src / "d3" / "f5").read_bytes()
    assert started == []


def test_workers_stop_when_the_restore_is_interrupted(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the walk: the jobs not started are cancelled, the workers exit before
    ``restore_tree`` returns, and no temporary name is left."""
    tid, _ = scan_tree(store, src)
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key
    pools: list[ProcessPoolExecutor] = []
    start = restore_procs.start

    def capture(setup: restore_procs.WorkerSetup, n: int) -> ProcessPoolExecutor:
        pools.append(start(setup, n))
        return pools[-1]

    monkeypatch.setattr("lamina.tree.restore.start", capture)
    d4 = [e for e in __import__("lamina.tree.model", fromlist=["x"]).decode_tree(blobs[tid])]
    stop_at = next(e.subtree for e in d4 if e.name == b"d3")
    parent = dict_blobs(blobs, key)
    get = parent.get

    pids: list[int] = []

    def interrupted(bid: bytes) -> bytes:
        if bid == stop_at:
            pids.extend(pools[0]._processes or {})  # the workers, while the pool runs
            raise KeyboardInterrupt
        return get(bid)

    parent.get = interrupted  # type: ignore[method-assign]
    monkeypatch.setattr("lamina.tree.restore.ReadAhead.take", lambda self, tid: None)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        restore_tree(parent, tid, out, processes=2, opener=opener(blobs, key))
    assert pids
    assert all(_exited(pid) for pid in pids)
    assert _leftovers(out) == []
    assert not (out / "d3" / "f0").exists()
    for p in out.rglob("*"):
        if stat.S_ISREG(p.lstat().st_mode):  # whatever was written is whole
            assert p.read_bytes() == (src / p.relative_to(out)).read_bytes()


def _partial(out: Path, src: Path) -> list[Path]:
    """Files under ``out`` (inside a staging folder too) shorter or longer than the tree's."""
    partial = []
    for p in out.rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        rel = p.relative_to(out).parts
        if rel[0].startswith(".lamina-restore-") and len(rel) > 1:
            rel = rel[1:]  # inside the staging folder
        source = src.joinpath(*rel)
        if not source.is_file() or source.stat().st_size != p.stat().st_size:
            partial.append(p)
    return partial


def test_workers_leave_when_the_restoring_process_is_killed(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """The restoring process is killed while a worker is inside a file it writes: the
    worker removes that file and exits (no orphan, nothing half-written); the target shows
    nothing under the tree's names (all of it was in the staging folder), and the next
    restore there resumes into the staging folder: it keeps the files the killed one
    finished and writes the rest."""
    tid, _ = scan_tree(store, src)
    out, marker = tmp_path / "out", tmp_path / "worker-pid"
    args = tmp_path / "args.pickle"
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key
    args.write_bytes(pickle.dumps((blobs, key, tid, str(out), str(marker))))
    code = "import sys; from tests.tree.procsources import restore_then_hang; restore_then_hang(sys.argv[1])"
    root = Path(__file__).resolve().parents[2]
    restoring = subprocess.Popen([sys.executable, "-c", code, str(args)], cwd=root)
    try:
        for _ in range(1200):  # until a worker hangs inside a file (bounded, not timed)
            # (its request may start ahead of the file, on a reading-ahead thread)
            # (and until another file is whole: the next restore has something to keep)
            if (marker.exists() and _partial(out, src) and _whole(out, src)) or (
                restoring.poll() is not None
            ):
                break
            time.sleep(0.1)
        assert marker.exists(), "no worker started"
        assert _partial(out, src), "the worker is inside a file it writes"
        worker = int(marker.read_text())
    finally:
        restoring.kill()
        restoring.wait()
    try:
        fd = os.pidfd_open(worker)
    except ProcessLookupError:
        fd = None
    if fd is not None:
        ready, _, _ = select.select([fd], [], [], 120)
        os.close(fd)
        assert ready, "the worker outlived the restoring process"
    assert _partial(out, src) == []
    (stage,) = os.listdir(out)
    assert stage.startswith(".lamina-restore-")
    done = {
        p.relative_to(out / stage): p.stat().st_ino
        for p in (out / stage).rglob("*")
        if p.is_file() and not p.is_symlink() and p.name != "same-as-d0-f0"
    }
    assert done  # the killed restore finished files before the worker hung

    st = restore_tree(
        dict_blobs(blobs, key),
        tid,
        out,
        processes=2,
        opener=opener(blobs, key),
        chunking=store.keys.chunking,
    )
    assert st.errors == [] and st.files == 6 * 41 + 2
    assert_same_tree(src, out)
    assert _leftovers(out) == []
    # resumed into the staging folder: what the killed restore finished is kept
    assert st.skipped == len(done)
    assert all((out / p).stat().st_ino == ino for p, ino in done.items())


def _whole(out: Path, src: Path) -> bool:
    """Whether a file in the staging folder has its whole size already."""
    for p in out.glob(".lamina-restore-*/**/*"):
        if p.is_file() and not p.is_symlink():
            source = src.joinpath(*p.relative_to(out).parts[1:])
            if source.is_file() and source.stat().st_size == p.stat().st_size:
                return True
    return False


def _exited(pid: int) -> bool:
    """``pid`` has exited (reaped, or a zombie): its pidfd is readable at once."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], 0)[0])
    finally:
        os.close(fd)


def test_a_fork_server_that_cannot_start_leaves_no_descriptor_open(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers' pool fails to start (no memory, no processes left): the error comes
    out and the target's descriptor, opened before, is closed as after any error."""
    tid, _ = scan_tree(store, src)
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key

    def no_server(setup: restore_procs.WorkerSetup, n: int) -> ProcessPoolExecutor:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr("lamina.tree.restore.start", no_server)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="Resource temporarily"):
        restore_tree(
            dict_blobs(blobs, key), tid, tmp_path / "out", processes=2, opener=opener(blobs, key)
        )
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_workers_job_runs_with_its_imports_left_out_of_the_collector(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's job runs as the walk does (``fewer_collections``): the objects the worker
    held before it frozen, fewer young passes; the collector as it was afterwards."""
    scan_tree(store, src)
    blobs = store_blobs(store)
    out = tmp_path / "out"
    out.mkdir()
    st = os.stat(out)
    setup = restore_procs.WorkerSetup(
        opener(blobs, store.keys.chunking.id_key),
        os.fsencode(out),
        (st.st_dev, st.st_ino),
        True,
        False,
        os.getpid(),
        False,
    )
    worker = restore_procs._Worker(setup)
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(
        FileWriter,
        "write_job",
        lambda self, files, target: seen.append((gc.get_freeze_count(), gc.get_threshold()[0])),
    )
    before = gc.get_threshold()
    job = [restore_procs.FolderFiles((), (st.st_dev, st.st_ino), False, True, [])]
    worker.run(job)
    assert seen and all(frozen > 0 and young >= YOUNG_THRESHOLD for frozen, young in seen)
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_a_workers_job_of_small_files_is_one_server_request() -> None:
    """A worker reads only its current job's blobs, so a job of small files (one blob
    each) took ``PROC_JOB_FILES`` / 512 ids per ``/blobs/read`` request: each request
    costs the server about 1.6 ms of CPU besides its blobs. Jobs now hold as many files
    as one request carries ids (``HTTP_BATCH``, the route's 1,024): 2,048 files in
    folders of 64 make two jobs, four before."""
    jobs = _jobs_of(32, 64, 64 * 100, None)
    assert jobs == [HTTP_BATCH, HTTP_BATCH]
    assert restore_procs.PROC_JOB_FILES == HTTP_BATCH


def _jobs_of(folders: int, files: int, size: int, job_bytes: int | None) -> list[int]:
    """Files per job of ``folders`` folders of ``files`` files (``size`` bytes a folder)
    batched for workers (``job_bytes``: ``ProcessJobs``' own, None: its default)."""
    jobs: list[int] = []

    class Pool:
        def submit(self, fn: object, job: list[restore_procs.FolderFiles]) -> Future[object]:
            jobs.append(sum(len(g.files) for g in job))
            done: Future[object] = Future()
            done.set_result(restore_procs.JobDone(0, 0, []))
            return done

    extra = {} if job_bytes is None else {"job_bytes": job_bytes}
    batches: ProcessJobs[int] = ProcessJobs(
        Pool(),  # type: ignore[arg-type]
        slots=2,
        landed=lambda done, err: None,
        release=lambda folder: None,
        **extra,
    )
    for k in range(folders):
        names = [(b"f%d" % n,) for n in range(files)]
        folder = restore_procs.FolderFiles((b"d%d" % k,), (0, k), False, False, names)
        batches.add(k, folder, size, False)
    batches.send()
    return jobs


def test_a_source_whose_requests_cost_gets_larger_jobs(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ``/blobs/read`` request costs the server about 1.6 ms of CPU besides its
    blobs: a restore through a server (``Opener.job_bytes`` = ``REMOTE_JOB_BYTES``) gives
    its workers jobs of 16 MiB, half as many requests as the 8 MiB jobs a store's
    workers get. The restore hands the opener's figure to its jobs."""
    assert _jobs_of(16, 4, 4 * MIB, None) == [8] * 8
    assert _jobs_of(16, 4, 4 * MIB, restore_procs.REMOTE_JOB_BYTES) == [16] * 4
    seen: list[int] = []

    class Seen(ProcessJobs[object]):
        def __init__(self, *args: object, **kwargs: object) -> None:
            seen.append(args[-1])  # type: ignore[arg-type]
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("lamina.tree.restore.ProcessJobs", Seen)
    tid, _ = scan_tree(store, src)
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key
    remote = opener(blobs, key)._replace(job_bytes=restore_procs.REMOTE_JOB_BYTES)
    restore_tree(dict_blobs(blobs, key), tid, tmp_path / "a", processes=2, opener=remote)
    restore_tree(
        dict_blobs(blobs, key), tid, tmp_path / "b", processes=2, opener=opener(blobs, key)
    )
    assert seen == [restore_procs.REMOTE_JOB_BYTES, restore_procs.PROC_JOB_BYTES]
    assert_same_tree(src, tmp_path / "a")


def test_a_worker_killed_inside_a_file_leaves_no_partial_file(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """A worker process dies (the OOM killer, ``kill -9``) inside a file it writes, under
    its name in the staging folder: the restore fails with the broken pool, and what it
    moves into place holds no partial file (the dead worker's job's files are removed)."""
    tid, _ = scan_tree(store, src)
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key
    out, marker = tmp_path / "out", tmp_path / "worker-pid"
    hang = Opener(
        functools.partial(hanging_blobs, blobs, key, str(marker)), ("tests.tree.procsources",)
    )
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["stats"] = restore_tree(
                dict_blobs(blobs, key), tid, out, processes=2, opener=hang
            )
        except BaseException as e:
            result["error"] = e

    restoring = threading.Thread(target=run)
    restoring.start()
    for _ in range(1200):  # until a worker hangs inside a file (bounded, not timed)
        # (its request may start ahead of the file, on a reading-ahead thread)
        if (marker.exists() and _partial(out, src)) or not restoring.is_alive():
            break
        time.sleep(0.1)
    assert marker.exists(), "no worker started"
    assert _partial(out, src), "the worker is inside a file it writes"
    os.kill(int(marker.read_text()), signal.SIGKILL)
    restoring.join(120)
    assert not restoring.is_alive()
    assert isinstance(result.get("error"), BrokenProcessPool)
    assert _partial(out, src) == []
    assert _leftovers(out) == []


def test_a_restoring_process_waits_for_its_fork_server(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """A command that restored with worker processes stops its fork server and waits for
    it as it exits: nothing of it runs on after the command (and the workers' CPU counts
    as the command's: they are the fork server's children)."""
    tid, _ = scan_tree(store, src)
    args = tmp_path / "args.pickle"
    blobs = store_blobs(store)
    args.write_bytes(pickle.dumps((blobs, store.keys.chunking.id_key, tid, str(tmp_path / "o"))))
    code = "import sys; from tests.tree.procsources import reap_as_subreaper as r; r(sys.argv[1])"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code, str(args)], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["reaped"]
    assert_same_tree(src, tmp_path / "o")
