"""Blob sources a restore's worker processes can open (picklable, module level): the
store's blobs in plaintext behind ``BatchedBlobs``, which hashes each one against its id
as it does for a server's answers."""

from __future__ import annotations

import functools
import os
import pickle
import threading
from pathlib import Path

from lamina.store.repository import Store
from lamina.tree.restore import restore_tree
from lamina.tree.restore_types import Opener
from lamina.tree.sources import BatchedBlobs


def _fetch(blobs: dict[bytes, bytes], ids: list[bytes]) -> list[bytes]:
    return [blobs[i] for i in ids]


def dict_blobs(blobs: dict[bytes, bytes], id_key: bytes) -> BatchedBlobs:
    return BatchedBlobs(functools.partial(_fetch, blobs), id_key)


def store_blobs(store: Store) -> dict[bytes, bytes]:
    """Every blob of ``store`` in plaintext, by id."""
    return {row.id: store.get(row.id) for row in store.catalog.iter_blobs()}


def opener(blobs: dict[bytes, bytes], id_key: bytes) -> Opener:
    return Opener(functools.partial(dict_blobs, blobs, id_key), ("tests.tree.procsources",))


def _fetch_or_hang(blobs: dict[bytes, bytes], marker: str, ids: list[bytes]) -> list[bytes]:
    """Answer, except in a worker process's first request: there write this process's id
    to ``marker`` and never answer (a file job is then inside a file it writes)."""
    try:  # one process only takes "the first request", even when two ask at once
        os.close(os.open(marker + ".taken", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return [blobs[i] for i in ids]
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    threading.Event().wait()
    return [blobs[i] for i in ids]


def hanging_blobs(blobs: dict[bytes, bytes], id_key: bytes, marker: str) -> BatchedBlobs:
    return BatchedBlobs(functools.partial(_fetch_or_hang, blobs, marker), id_key)


def restore_then_hang(args_file: str) -> None:
    """In a process of its own: a restore over two workers whose first request never
    returns (``test_workers_leave_when_the_restoring_process_is_killed``)."""
    with open(args_file, "rb") as f:
        blobs, key, tree, out, marker = pickle.load(f)
    hang = Opener(functools.partial(hanging_blobs, blobs, key, marker), ("tests.tree.procsources",))
    restore_tree(dict_blobs(blobs, key), tree, Path(out), processes=2, opener=hang)


def restore_then_exit(args_file: str) -> None:
    """In a process of its own: a restore over two workers, then a normal exit, the fork
    server's pid printed first (``test_a_restoring_process_waits_for_its_fork_server``)."""
    from multiprocessing import forkserver

    with open(args_file, "rb") as f:
        blobs, key, tree, out = pickle.load(f)
    restore_tree(dict_blobs(blobs, key), tree, Path(out), processes=2, opener=opener(blobs, key))
    print(forkserver._forkserver._forkserver_pid, flush=True)  # type: ignore[attr-defined]


def reap_as_subreaper(args_file: str) -> None:
    """Run ``restore_then_exit`` in a child as a subreaper (PR_SET_CHILD_SUBREAPER): a
    process the child leaves running when it exits (its fork server) becomes this one's
    child. Prints "orphan" if the fork server did, "reaped" if the child waited for it."""
    import ctypes
    import subprocess
    import sys

    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    code = "import sys; from tests.tree.procsources import restore_then_exit as r; r(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", code, args_file], capture_output=True, text=True, check=True
    )
    pid = int(done.stdout.split()[-1])
    try:
        os.waitpid(pid, 0)  # our child now only if it was left running
    except ChildProcessError:
        print("reaped")
    else:
        print("orphan")
