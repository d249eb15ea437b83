"""A long piece of work on the store holds its lock as long as it runs, and stops once it
lost it (``store/locks.py``; the crash audit's S1: a holder stalled past the lock's
expiry, its lock taken over, then woke up and changed the store alongside the new one)."""

from __future__ import annotations

import datetime as dt
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lamina.db.location import StoreLocation
from lamina.db.stores import init_store, open_store
from lamina.errors import StoreBusyError
from lamina.processes import lock_holder
from lamina.store import gc as gc_module
from lamina.store.check import check
from lamina.store.gc import collect
from lamina.store.locks import HeldLock
from lamina.store.repack import roll_small
from lamina.store.repository import Store
from lamina.store.roots import snapshot_roots
from lamina.tree.model import references
from tests.store.helpers import random_files, snapshot_of

_HOLD = """
import sys, datetime as dt
from pathlib import Path
from lamina.db.location import StoreLocation
from lamina.db.stores import open_store
from lamina.processes import lock_holder
s = open_store(StoreLocation(data=Path(sys.argv[1])))
assert s.catalog.try_lock("gc", lock_holder(), dt.timedelta(0))  # expired at once
print("held", flush=True)
sys.stdin.read()  # alive (as a gc stalled in its mark) until the parent closes it
"""


def test_the_lock_of_a_holder_that_still_runs_is_never_taken_over(tmp_path: Path) -> None:
    """Expired or not: a live holder may be slow or stopped, and would go on where it was."""
    data = tmp_path / "data"
    init_store(StoreLocation(data=data)).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    s = open_store(StoreLocation(data=data))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert not s.catalog.try_lock("gc", lock_holder(), dt.timedelta(minutes=1))
        # refused with who holds it (a holder that hangs looks like a slow one: a person
        # must find it), through the library and the CLI
        who = f"process {holder.pid} on {socket.gethostname()} holds the store's gc lock"
        with pytest.raises(StoreBusyError, match=re.escape(who)):
            collect(s, [snapshot_roots(s.catalog)], references)
        cli = subprocess.run(
            [sys.executable, "-m", "lamina.cli", "store", "gc", "--data", str(data)],
            capture_output=True,
            text=True,
        )
        said = " ".join(cli.stderr.split())
        assert cli.returncode != 0 and who in said, cli.stderr
        assert "expired at" in said and "but its process still runs" in said
        assert roll_small(s, force=True) is None
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
    try:  # ended: its lock is taken over at once
        assert s.catalog.try_lock("gc", lock_holder(), dt.timedelta(minutes=1))
    finally:
        s.close()


def test_a_held_lock_is_renewed_and_a_lost_one_stops_its_holder(any_store: Store) -> None:
    cat = any_store.catalog
    with HeldLock(cat, "gc", dt.timedelta(minutes=20), "busy") as lock:
        assert lock.renew()
        assert (cat.lock_info("gc") or ("",))[0] == lock.holder
        lock.check()
        with pytest.raises(StoreBusyError, match="busy"), HeldLock(cat, "gc", lock.ttl, "busy"):
            pass
        # taken over meanwhile (its expiry passed while it was frozen on another machine)
        lock._renewed -= lock.ttl.total_seconds()  # (frozen: its last renewal long ago)
        cat.unlock("gc", lock.holder)
        assert cat.try_lock("gc", "another-machine-gc", dt.timedelta(minutes=20))
        with pytest.raises(StoreBusyError, match="taken over"):
            lock.check()
    # it does not unlock what is no longer its own
    assert not cat.try_lock("gc", lock_holder(), dt.timedelta(minutes=20))


def test_a_gc_that_lost_its_lock_while_marking_changes_nothing(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its lock taken over during the mark, the gc stops before its condemn: every blob
    is where it was, readable, whatever the other holder then does."""
    keep = snapshot_of(any_store, random_files(5), "keep")
    drop = snapshot_of(any_store, random_files(5), "drop")
    any_store.catalog.forget_snapshots([drop.id])
    original = gc_module.plan_gc

    def stolen(*a: Any, **kw: Any) -> Any:
        plan = original(*a, **kw)
        any_store.catalog.unlock("gc", _holder(any_store))
        assert any_store.catalog.try_lock("gc", "another-machine-gc", dt.timedelta(minutes=20))
        return plan

    monkeypatch.setattr(gc_module, "plan_gc", stolen)
    # (a lock whose expiry is short enough to have passed while the gc marked: its
    # holder then asks the catalog before its condemn)
    monkeypatch.setattr(gc_module, "LOCK_TTL", dt.timedelta(milliseconds=1))
    before = {r.id: r.condemned for r in any_store.catalog.iter_blobs()}
    with pytest.raises(StoreBusyError, match="taken over"):
        collect(any_store, [snapshot_roots(any_store.catalog)], references)
    assert {r.id: r.condemned for r in any_store.catalog.iter_blobs()} == before
    assert not any(before.values())
    assert check(any_store, [snapshot_roots(any_store.catalog)], references, read_data=True).ok
    assert any_store.get(keep.root)


def _holder(store: Store) -> str:
    """The gc lock's holder now (each catalog keeps it its own way)."""
    cat: Any = store.catalog
    if hasattr(cat, "_locks"):
        return str(cat._locks["gc"][0])
    import json

    from sqlalchemy import select

    from lamina.db.models import store_state

    full = cat.full() if hasattr(cat, "full") else cat
    with full.engine.connect() as c:
        value = c.execute(
            select(store_state.c.value).where(store_state.c.key == "lock:gc")
        ).scalar()
    return str(json.loads(value)["holder"])


def test_a_leftover_lock_of_this_process_is_taken_over(any_store: Store) -> None:
    """A holder whose unlock failed (a database hiccup) left its row naming this very
    process, which still runs: the next gc or roll takes it over, not waits for it."""
    cat = any_store.catalog
    lock = HeldLock(cat, "gc", dt.timedelta(minutes=20), "busy")
    assert lock.take()
    original = type(cat).unlock
    type(cat).unlock = lambda *a: (_ for _ in ()).throw(RuntimeError("database gone"))  # type: ignore[method-assign]
    try:
        lock.__exit__(None, None, None)  # logged, not raised
    finally:
        type(cat).unlock = original  # type: ignore[method-assign]
    assert _holder(any_store) == lock.holder  # the row is left
    with HeldLock(cat, "gc", dt.timedelta(minutes=20), "busy") as again:
        assert _holder(any_store) == again.holder


def test_a_held_lock_renews_itself_while_its_holder_works(any_store: Store) -> None:
    """The renewal thread, not the holder, extends the lock: a holder busy past its
    expiry (its thread never calls ``check``) keeps it."""
    cat = any_store.catalog
    with HeldLock(cat, "gc", dt.timedelta(milliseconds=400), "busy") as lock:
        first = lock._renewed
        deadline = time.monotonic() + 60
        while lock._renewed == first:  # (the thread renews every 0.1 s: a bound, not a measure)
            assert time.monotonic() < deadline, "never renewed"
            time.sleep(0.01)
        assert not lock.lost
