"""What a snapshot records for a later revert: its policy's area and the paths the scan missed."""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from lamina.agent import runner, sync, uploader
from lamina.agent.blobs import agent_blobs
from lamina.agent.enrollment import enroll
from lamina.agent.runner import Agent
from lamina.agent.sync import MAX_ERROR_PATHS, error_paths, protected_area
from lamina.layers.rules import RuleSet, builtin, compile_glob
from lamina.protocol.schemas import PolicySettings
from lamina.store.repository import Store
from lamina.tree.collector import YOUNG_THRESHOLD
from lamina.tree.model import decode_tree
from lamina.tree.scan import SMALL_FILE, Scanner
from lamina.tree.scan_proc import Form, ReadProcess
from tests.server.conftest import Live, live  # noqa: F401  (the fixture)


def test_error_paths_are_relative_and_bounded(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    errs = [f"{root}/usr/lib/x.so: Permission denied", f"{root}/srv/a: b: Input/output error"]
    assert error_paths(errs, root) == ["usr/lib/x.so", "srv/a"]  # a wider area, never narrower
    assert len(error_paths(errs * MAX_ERROR_PATHS, root)) == MAX_ERROR_PATHS


def test_error_paths_are_bounded_in_size(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    long = [f"{root}/{'x' * 4000}/{i}: Permission denied" for i in range(100)]
    assert 0 < len(error_paths(long, root)) < 100


# --- the protected area decides as the per-pattern reference does, only faster ---------
def _reference_exclude(policy: PolicySettings, rules: RuleSet, rel: bytes, is_dir: bool) -> bool:
    """The a188115 decision: every path matched against every glob, one RE2 at a time."""

    def hit(patterns: list[str] | tuple[str, ...], path: str) -> bool:
        return any(compile_glob(p).match(path) for p in patterns)

    path = "/" + os.fsdecode(rel)
    cls = next((c for c in rules.order if hit(rules.classes.get(c, ()), path)), "system")
    if cls == "excluded":
        return not is_dir
    if hit(policy.exceptions, path):
        return False
    if hit(policy.exclude, path):
        return True
    if is_dir:
        return False
    return not hit(policy.include, path) or cls not in policy.classes


_NAMES = [b"etc", b"home", b"alice", b".cache", b"var", b"log", b"lib", b"docker", b"usr"]
_NAMES += [b"caf\xe9", b"x.conf", b"srv", b"opt", b"tmp", b"ssh_host_rsa_key", b"ssh", b"a"]


@pytest.mark.parametrize(
    "policy",
    [
        PolicySettings(),
        PolicySettings(classes=["system"]),
        PolicySettings(include=["/home/**", "/etc/*.conf"], classes=["user_data", "system"]),
        PolicySettings(exclude=["/home/*/a/**", "/usr"], exceptions=["/usr/lib/**", "/home/a*"]),
        PolicySettings(exclude=["/**"], exceptions=["/etc/ssh/**"]),
    ],
)
@pytest.mark.parametrize("ruleset", ["debian"])
def test_protected_area_agrees_with_the_per_pattern_reference(
    tmp_path: Path, policy: PolicySettings, ruleset: str
) -> None:
    """Folder-wide decisions and the one-RE2-per-group match give every path the answer
    the per-glob reference gives: paths in folder order (memo used) and shuffled."""
    rules = builtin(ruleset)
    exclude = protected_area(policy, rules, tmp_path, tmp_path / "state").exclude
    rng = random.Random(7)
    deep = [p for n in (3, 4) for p in itertools.product(_NAMES, repeat=n)]
    picked = [*itertools.product(_NAMES, repeat=1), *itertools.product(_NAMES, repeat=2)]
    rels = sorted(b"/".join(p) for p in picked + rng.sample(deep, 120))
    rels += [b"home/alice/.cache/x", b"etc/ssh/ssh_host_rsa_key", b"var/lib/docker/caf\xe9"]
    expected = {
        (r, d): _reference_exclude(policy, rules, r, d) for r in rels for d in (False, True)
    }
    for rel in rels + rng.sample(rels, len(rels)):
        for is_dir in (False, True):
            assert exclude(rel, is_dir) == expected[rel, is_dir], rel


@pytest.mark.parametrize(
    "policy",
    [
        PolicySettings(),
        PolicySettings(include=["/home/**", "/etc/*.conf"], classes=["user_data", "system"]),
        PolicySettings(exclude=["/home/*/a/**", "/usr"], exceptions=["/usr/lib/**", "/home/a*"]),
        PolicySettings(exclude=["/**"], exceptions=["/etc/ssh/**"]),
    ],
)
def test_a_folders_answer_is_the_answer_for_each_of_its_entries(
    tmp_path: Path, policy: PolicySettings
) -> None:
    """Where ``exclude_folder`` answers for a folder's files or sub-folders, ``exclude``
    (and the per-pattern reference) gives that answer for each of them; the folder
    holding the state folder is left to ``exclude`` (which leaves the state out)."""
    rules = builtin("debian")
    area = protected_area(policy, rules, tmp_path, tmp_path / "var" / "lamina")
    parents = [b"", *(b"/".join(p) for n in (1, 2) for p in itertools.product(_NAMES, repeat=n))]
    parents += [b"home/alice/.cache", b"var/lib/docker", b"usr/lib/x.conf", b"etc/ssh/ssh"]
    decided = 0
    for parent in parents:  # in a scan's order: a folder before its sub-folders
        files, folders = area.exclude_folder(parent)
        for name in _NAMES:
            rel = parent + b"/" + name if parent else name
            for is_dir, answer in ((False, files), (True, folders)):
                if answer is not None:
                    decided += 1
                    assert answer == _reference_exclude(policy, rules, rel, is_dir), rel
                    assert answer == area.exclude(rel, is_dir), rel
            # a sub-folder's prune: the rule set's, decided from the folder's class
            assert area.prune(rel) == rules.prunable("/" + os.fsdecode(rel)), rel
    assert decided > len(parents) * len(_NAMES)  # most folders are decided whole
    assert area.exclude_folder(b"var") == (None, None)
    assert area.exclude(b"var/lamina", True)


def test_a_scan_asks_about_a_folder_once_not_each_entry(store: Store, tmp_path: Path) -> None:
    """The scanner takes a folder's answer (``exclude_folder``): in the folders the
    default policy keeps whole, ``exclude`` is called for no entry; the folder holding
    the state folder still asks about each of its entries, and the state folder is left
    out."""
    root = tmp_path / "root"
    for d in ("etc", "usr/lib", "usr/share/doc", "var"):
        for i in range(5):
            (root / d).mkdir(parents=True, exist_ok=True)
            (root / d / f"f{i}").write_bytes(b"x" * i)
    (root / "var" / "lamina").mkdir()
    area = protected_area(PolicySettings(), builtin("debian"), root, root / "var" / "lamina")
    asked: list[bytes] = []

    def exclude(rel: bytes, is_dir: bool) -> bool:
        asked.append(rel)
        return area.exclude(rel, is_dir)

    with store.writer() as w:
        scanner = Scanner(w, exclude=exclude, exclude_folder=area.exclude_folder)
        root_id = scanner.scan(root)
    tree = decode_tree(store.get(root_id))
    # the root, etc and usr depend on the names (the rule set's classes); usr/lib and
    # usr/share/doc are decided whole; var holds the state folder
    files = [b"%s/f%d" % (d, i) for d in (b"etc", b"var") for i in range(5)]
    assert sorted(asked) == sorted(
        [b"etc", b"usr", b"var", b"usr/lib", b"usr/share", b"var/lamina", *files]
    )
    var = next(e for e in tree if e.name == b"var")
    names = [e.name for e in decode_tree(store.get(var.subtree))]
    assert names == [b"f0", b"f1", b"f2", b"f3", b"f4"]  # the state folder left out


def test_a_reused_tree_the_server_no_longer_holds_costs_one_scan_without_reuse(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server lost the agent's last snapshot and a folder's tree new in it (its store
    came back from older data): the files cache still names that tree, the commit is
    refused as missing data, and the agent scans again building every tree, uploads it
    and commits. That scan is not one of those meant for blobs other endpoints promised
    (here none are left: ``MAX_RESCANS`` is 0)."""
    monkeypatch.setattr(sync, "MAX_RESCANS", 0)
    admin = live.login()
    assert admin.post("/policies", json={"name": "std"}).status_code == 201
    token = admin.post("/tokens", json={"expires_in": 3600, "policy": "std"}).json()["token"]
    root, state = tmp_path / "root", tmp_path / "state"
    for folder in ("etc", "srv/a", "srv/b"):
        (root / folder).mkdir(parents=True)
    (root / "etc/hostname").write_text("rescan-host\n")
    (root / "srv/a/f").write_text("a, first\n")
    (root / "srv/b/f").write_text("b, first\n")
    enroll(live.url, token, root, state)
    agent = Agent(state)
    scans: list[bool] = []
    real = sync.Scanner

    def scanner(*args: Any, **kw: Any) -> Any:
        scans.append(kw["reuse_trees"])
        return real(*args, **kw)

    monkeypatch.setattr(sync, "Scanner", scanner)
    try:
        cvd = agent.report().cvd_id
        agent.sync(agent.report())
        (root / "srv/b/f").write_text("b, second\n")
        lost = agent.sync(agent.report())["snapshot"]
        snaps = admin.get(f"/cvds/{cvd}/snapshots").json()
        subtree = _subtree(agent, bytes.fromhex(snaps[-1]["root"]), b"srv", b"b")
        with contextlib.closing(sqlite3.connect(live.data / "lamina.db")) as db, db:
            db.execute("DELETE FROM snapshots WHERE id = ?", (lost,))
            db.execute("DELETE FROM cvd_blobs WHERE blob_id = ?", (subtree,))
        (root / "srv/a/f").write_text("a, second\n")  # b's tree comes from the files cache
        scans.clear()
        agent.sync(agent.report())
    finally:
        agent.close()
    assert scans == [True, False]
    assert len(admin.get(f"/cvds/{cvd}/snapshots").json()) == 2


def _subtree(agent: Agent, tree: bytes, *names: bytes) -> bytes:
    """The tree id of the folder ``names`` under ``tree``, read through the server."""
    blobs = agent_blobs(agent.client, agent.st.chunking.id_key)
    for name in names:
        [sub] = [e.subtree for e in decode_tree(blobs.get(tree)) if e.name == name]
        assert sub is not None
        tree = sub
    return tree


def test_after_a_garbage_collection_unchanged_files_are_checked_not_read_again(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A files cache from before the store's last garbage collection (another epoch) is
    checked against the server: its chunk ids the server still holds are trusted, so
    no unchanged file is read again. The sink answers the scan's question from the
    server then (``exact_need``), not from what it has queued, which would name every
    cached chunk as lacking and read every file again."""
    root, state = live.enrolled_agent(tmp_path, "gc-epoch-host")
    for i in range(30):
        (root / "etc" / f"f{i}").write_text(f"file {i}\n" * 50)
    agent = Agent(state)
    results = _sync_results(monkeypatch)
    try:
        agent.sync(agent.report())
        with contextlib.closing(sqlite3.connect(state / "cache" / "files.sqlite")) as db, db:
            db.execute("UPDATE meta SET value = '-1' WHERE key = 'epoch'")
        agent.sync(agent.report())
    finally:
        agent.close()
    assert results[0].files_read == 31
    assert results[1].files_read == 0 and results[1].files == 31


def test_a_sync_scans_with_the_agents_imports_left_out_of_the_collectors_passes(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The collector's default passes (every 700 allocations, full ones over every module
    the agent imported) took ~5% of a first sync's CPU for next to nothing: while a sync
    scans and uploads, what existed before is frozen and young passes are rarer; after
    it, the collector is as it was."""
    root, state = live.enrolled_agent(tmp_path, "collector-host")
    (root / "file.bin").write_bytes(b"x" * 100_000)
    before = gc.get_threshold()
    seen: list[tuple[int, int]] = []

    class Watched(Scanner):
        def scan(self, root: Path) -> bytes:
            seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))
            return super().scan(root)

    monkeypatch.setattr(sync, "Scanner", Watched)
    _sync_once(state)
    [(frozen, young)] = seen
    assert frozen > 10_000 and young >= YOUNG_THRESHOLD > before[0]
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_without_worker_processes_a_sync_reads_its_files_on_one_thread(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync's Python work holds the interpreter's lock; a second reading thread mostly
    passed it back and forth (twice the context switches, ~10-20% more of the agent's
    CPU): where no worker process may read (one core), the files of a sync are read by
    one thread (``sync.READERS``)."""
    monkeypatch.setattr(sync, "scan_processes", lambda: 0)
    root, state = live.enrolled_agent(tmp_path, "reader-host")
    for i in range(40):
        folder = root / f"d{i % 4}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}").write_bytes(bytes([i]) * (300_000 if i % 2 else 300))
    readers: set[int] = set()

    class Watched(Scanner):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            assert self._workers == sync.READERS == 1  # whatever the host's cores

        def _read_file(self, *args: Any, **kw: Any) -> Any:
            readers.add(threading.get_ident())
            return super()._read_file(*args, **kw)

    monkeypatch.setattr(sync, "Scanner", Watched)
    _sync_once(state)
    assert len(readers) == sync.READERS == 1


def test_with_a_second_core_a_sync_reads_files_on_one_thread_at_a_time(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where worker processes may run, a sync has a second thread to hand them jobs, but
    only one thread reads files at once (two mostly passed the interpreter's lock back
    and forth): below ``PROCESS_AFTER`` small files (a daily sync) no worker starts and
    the files are read one thread at a time. The first read waits for a second reader to
    start beside it (2 s at most): none does."""
    monkeypatch.setattr(sync, "scan_processes", lambda: 1)
    root, state = live.enrolled_agent(tmp_path, "gate-host")
    for i in range(40):
        folder = root / f"d{i % 4}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}").write_bytes(bytes([i]) * (SMALL_FILE + 1 if i % 2 else 300))
    starts: list[int] = []
    real_init = ReadProcess.__init__

    def init(self: ReadProcess, *args: Any) -> None:
        starts.append(1)
        real_init(self, *args)

    monkeypatch.setattr(ReadProcess, "__init__", init)
    lock = threading.Lock()
    second = threading.Event()
    now = [0, 0, 0]  # reading now, most at once, reads begun
    pools: list[int] = []

    class Watched(Scanner):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            pools.append(self._workers)

        def _read_file(self, *args: Any, **kw: Any) -> Any:
            with lock:
                now[0] += 1
                now[1] = max(now[1], now[0])
                now[2] += 1
                first = now[2] == 1
                if now[0] > 1:
                    second.set()
            try:
                if first:
                    second.wait(2.0)
                return super()._read_file(*args, **kw)
            finally:
                with lock:
                    now[0] -= 1

    monkeypatch.setattr(sync, "Scanner", Watched)
    _sync_once(state)
    assert pools == [sync.READERS_WITH_PROCESSES] == [2] and starts == []
    assert now[1] == sync.READERS == 1


def test_a_sync_reads_its_small_files_in_a_worker_process_as_its_threads_would(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a second core is (``scan_processes``), a sync past ``PROCESS_AFTER`` small
    files reads them in a worker process (their Python on that core), two threads feeding
    it; while the server lacks most of what it is asked about (a first sync) the worker
    compresses the chunks, and they go up as it sent them. The snapshot is the one the
    reading threads alone make: read again without the worker, the same root tree."""
    root, state = live.enrolled_agent(tmp_path, "worker-host")
    rng = random.Random(20)
    for d in range(3):
        (root / f"d{d}").mkdir()
        for f in range(40):
            (root / f"d{d}" / f"f{f}").write_bytes(f"{d}/{f} ".encode() * rng.randrange(1, 400))
    (root / "large.bin").write_bytes(rng.randbytes(SMALL_FILE + 5000))
    (root / "d0" / "link").symlink_to("f1")
    os.chmod(root / "d1" / "f2", 0o600)
    monkeypatch.setattr(sync, "scan_processes", lambda: 1)
    jobs: list[tuple[Form, int]] = []
    real_send = ReadProcess.send

    workers: set[ReadProcess] = set()

    def send(self: ReadProcess, form: Form, files: list[Any]) -> int:
        jobs.append((form, len(files)))
        workers.add(self)
        return real_send(self, form, files)

    monkeypatch.setattr(ReadProcess, "send", send)
    readers: list[int] = []

    class Early(Scanner):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **{**kw, "process_after": 0})  # (not past 4,096 files)
            readers.append(self._workers)

    class LackingSink(uploader.RemoteSink):
        """As after an answer that the server lacked most of what was asked about."""

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self._ahead = True

    monkeypatch.setattr(sync, "Scanner", Early)
    monkeypatch.setattr(sync, "RemoteSink", LackingSink)
    results = _sync_results(monkeypatch)
    _sync_once(state)
    assert readers == [sync.READERS_WITH_PROCESSES] == [2]
    assert {form for form, _ in jobs} == {Form.COMPRESSED}
    assert len(workers) == 1  # (one second core here)
    assert all(w.proc.returncode == 0 for w in workers)  # stopped and reaped with the scan
    assert _workers_alive() == []
    assert sum(n for _, n in jobs) == 121  # every small file (hostname too), not large.bin
    assert results[0].files_read == 122 and not results[0].errors
    # read again by the threads alone (no files cache: every file read, every tree made)
    for part in (state / "cache").glob("files.sqlite*"):
        part.unlink()
    monkeypatch.setattr(sync, "scan_processes", lambda: 0)
    monkeypatch.setattr(sync, "Scanner", Scanner)
    jobs.clear()
    _sync_once(state)
    assert jobs == [] and results[1].files_read == 122
    assert results[1].response.snapshot.root == results[0].response.snapshot.root
    assert results[1].uploaded_bytes == 0  # the server held every blob the threads made


def _sync_results(monkeypatch: pytest.MonkeyPatch) -> list[sync.SyncResult]:
    """What each sync the agent runs from now on returns (``runner.run_sync``), in order."""
    results: list[sync.SyncResult] = []
    real = runner.run_sync

    def spy(*args: Any, **kw: Any) -> sync.SyncResult:
        results.append(real(*args, **kw))
        return results[-1]

    monkeypatch.setattr(runner, "run_sync", spy)
    return results


def _workers_alive() -> list[int]:
    """This process's children that are scan workers (``python -m lamina.tree.scan_proc``)."""
    kids = []
    for task in Path("/proc/self/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    out = []
    for pid in kids:
        with contextlib.suppress(OSError):
            if b"lamina.tree.scan_proc" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def _sync_once(state: Path) -> None:
    """One cycle of the agent whose state is ``state``, its sync forced."""
    agent = Agent(state)
    try:
        assert agent.cycle(force_sync=True)["synced"]
    finally:
        agent.close()
