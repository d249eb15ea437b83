"""Freed large buffers leave the RSS of the agent and the server (``lamina.heap``)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina import heap
from lamina.agent import runner
from lamina.heap import map_large_blocks
from tests.server.conftest import Live, live  # noqa: F401  (the fixture)

#: Frees four 8 MiB blocks (a bundle's size), their pages written, and prints by how many
#: MiB the RSS grew: glibc's default (a threshold raised by the first free) keeps the
#: later blocks in its heap.
FREE_BLOCKS = """
import sys
from lamina.heap import map_large_blocks
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
if sys.argv[1] == "fixed":
    assert map_large_blocks()
before = rss()
for _ in range(4):
    block = b"x" * (8 << 20)
    del block
print((rss() - before) >> 20)
"""


def _printed(script: str, mode: str) -> int:
    """The number ``script`` prints, run by a new interpreter with ``mode`` as argument
    (malloc's settings are the process's, and a fresh one starts from glibc's defaults)."""
    out = subprocess.run(
        [sys.executable, "-c", script, mode], check=True, capture_output=True, text=True
    )
    return int(out.stdout)


def test_freed_large_blocks_leave_the_rss_once_the_threshold_is_fixed() -> None:
    if not map_large_blocks():
        pytest.skip("no glibc mallopt here: the agent leaves malloc as it is")
    # What the fix is for: glibc keeps (most of) a freed 8 MiB block in its heap; how much
    # of its top it trims back depends on the glibc and the environment (7 or 8 MiB).
    default, fixed = _printed(FREE_BLOCKS, "default"), _printed(FREE_BLOCKS, "fixed")
    assert default >= 4 and fixed < 2, (default, fixed)


#: Eight threads allocate at once, then glibc's heaps are counted (``malloc_info``).
ARENAS = """
import ctypes, sys, threading, re, tempfile
from lamina.heap import limit_arenas
if sys.argv[1] == "limited":
    assert limit_arenas(2)
start = threading.Barrier(8)
def work():
    start.wait()
    keep = [bytearray(2000) for _ in range(2000)]
    start.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    f = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    print(len(re.findall(r'<heap nr=', open(out.name).read())))
"""


def test_limited_arenas_are_all_the_heaps_threads_get() -> None:
    if not map_large_blocks():
        pytest.skip("no glibc mallopt here: malloc is left as it is")
    # glibc's default gives each new thread a heap of its own, up to 8 a core
    assert _printed(ARENAS, "default") > 2
    assert _printed(ARENAS, "limited") <= 2


#: Blocks below the mmap threshold, every tenth kept: the heap cannot shrink from its top,
#: and freeing the rest leaves their pages resident until a trim. Prints the MiB the RSS
#: fell by when the argument is "trim" (after ``lamina.heap.trim``), else after a pause.
FRAGMENTS = """
import sys, time
from lamina.heap import map_large_blocks, trim
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
map_large_blocks()
blocks = [bytearray(200_000) for _ in range(1000)]
kept = blocks[::10]
del blocks
before = rss()
if sys.argv[1] == "trim":
    assert trim()
print((before - rss()) >> 20)
"""


#: Rounds of eight 512 KiB blocks (below the mmap threshold: from the heap) written and
#: freed, under a fixed threshold; prints the page faults of the rounds. A free leaving
#: more than the trim threshold at the heap's top gives it back, and the next round
#: faults it in again.
CHURN = """
import resource, sys
from lamina.heap import keep_free_tops, map_large_blocks
assert map_large_blocks()
if sys.argv[1] == "kept":
    assert keep_free_tops()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    blocks = [b"x" * (512 << 10) for _ in range(8)]
    del blocks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def test_a_heaps_free_top_is_kept_between_trims_not_faulted_in_again() -> None:
    if not map_large_blocks():
        pytest.skip("no glibc mallopt here: malloc is left as it is")
    # 100 rounds of 4 MiB: ~100,000 faults when each round's top is given back, one
    # round's (~1,000) when it is kept
    churned, kept = _printed(CHURN, "default"), _printed(CHURN, "kept")
    assert churned > 50_000 and kept < 10_000, (churned, kept)


def test_a_trim_gives_back_the_pages_freed_between_blocks_in_use() -> None:
    if not map_large_blocks():
        pytest.skip("no glibc mallopt here: malloc is left as it is")
    # ~170 MiB freed between the blocks kept: resident until trimmed
    assert _printed(FRAGMENTS, "none") < 20
    assert _printed(FRAGMENTS, "trim") > 100


def test_trims_run_periodically_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    if not map_large_blocks():
        pytest.skip("no glibc mallopt here: malloc is left as it is")
    trims = threading.Semaphore(0)
    real = heap.trim

    def counted() -> bool:
        trims.release()
        return real()

    monkeypatch.setattr(heap, "trim", counted)
    stop = heap.trim_periodically(0.01)
    assert stop is not None
    try:
        for _ in range(3):  # the first, at the start, then from the thread
            assert trims.acquire(timeout=60)
    finally:
        stop.set()


def test_the_server_tunes_malloc_before_it_starts_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from lamina.cli import server as server_cli
    from lamina.config import ServerSettings

    calls: list[str] = []

    def called(name: str) -> Callable[..., bool]:
        def record(*args: object, **kwargs: object) -> bool:
            calls.append(name)
            return True

        return record

    monkeypatch.setattr(server_cli, "map_large_blocks", called("map"))
    monkeypatch.setattr(server_cli, "keep_free_tops", called("tops"))
    monkeypatch.setattr(server_cli, "limit_arenas", called("arenas"))
    monkeypatch.setattr(server_cli, "trim_periodically", called("trim"))
    # not this test process's collector (gc.freeze)
    monkeypatch.setattr(server_cli, "settle_collector", called("collector"))
    monkeypatch.setattr(uvicorn, "run", called("serve"))
    settings = ServerSettings(data=tmp_path / "data", admin_password="admin-password-123")
    server_cli._serve(settings, self_signed=False)
    assert calls == ["map", "tops", "arenas", "trim", "collector", "serve"]


def test_the_agent_fixes_the_threshold_once_at_its_start_not_at_each_sync(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(runner, "map_large_blocks", lambda: calls.append(1) or True)
    _, state = live.enrolled_agent(tmp_path, "heap-host")
    assert calls == []
    agent = runner.Agent(state)
    try:
        assert calls == [1]
        for _ in range(2):
            assert agent.sync(agent.report())["snapshot"]
    finally:
        agent.close()
    assert calls == [1]
