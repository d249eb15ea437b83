"""Where Lamina's time goes: its backup, re-backup and restore under cProfile, all threads.

``python -m bench.prof --corpus bench/work/corpus`` (or ``python -m bench.run --profile``);
``--second COPY`` also profiles a second endpoint's backup (every file read, as step 6).

Plain ``python -m cProfile`` sees only the main thread, which in a Lamina backup
mostly waits on the reader pool (chunking, hashing, compression and encryption
run in worker threads) and the pack-upload thread. Here every thread gets its
own profiler (``threading.setprofile``), and the profiles are merged. Times in
the merged profile are summed over threads, so they can exceed the wall clock.

Each step runs the real CLI in-process (``lamina.cli.main`` with ``sys.argv``).
Profiles go to WORK/*.prof (open them with ``python -m pstats`` or snakeviz).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_WORK, rmtree

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()
#: The profiles' clock: wall time by default; ``time.thread_time`` (``--cpu``) counts each
#: thread's CPU only, which on a busy machine is the figure that means something.
_timer: list[Any] = []


def _profile() -> cProfile.Profile:
    return cProfile.Profile(_timer[0]) if _timer else cProfile.Profile()


def _thread_hook(_frame: Any, _event: str, _arg: Any) -> None:
    """First profile event of a new thread: give the thread its own cProfile."""
    sys.setprofile(None)
    p = _profile()
    with _lock:
        _profiles.append(p)
    p.enable()


def profiled_cli(argv: list[str], out: Path) -> tuple[float, pstats.Stats]:
    from lamina.cli import main as lamina_main

    _profiles.clear()
    threading.setprofile(_thread_hook)
    main_prof = _profile()
    saved = sys.argv
    sys.argv = ["lamina", *argv]
    t0 = time.perf_counter()
    main_prof.enable()
    try:
        lamina_main()
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"lamina {' '.join(argv)} exited {e.code}") from e
    finally:
        main_prof.disable()
        wall = time.perf_counter() - t0
        threading.setprofile(None)  # type: ignore[arg-type]
        sys.argv = saved
    main_prof.dump_stats(out.with_suffix(".main.prof"))
    stats = pstats.Stats(main_prof)
    for p in list(_profiles):
        with contextlib.suppress(TypeError, ValueError):  # a thread that ran no Python
            stats.add(p)
    stats.dump_stats(out)
    return wall, stats


def report(title: str, wall: float, stats: pstats.Stats, top: int) -> None:
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        stats.stream = buf  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(top)
        text = buf.getvalue()
        start = text.find("   ncalls")
        print(f"\n=== {title}: wall {wall:.2f} s; top {top} by {order} (all threads) ===")
        print(text[start:] if start >= 0 else text)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.prof", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--corpus", type=Path, default=DEFAULT_WORK / "corpus", help="folder to back up"
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=DEFAULT_WORK / "profile",
        help="scratch folder, wiped first (default bench/work/profile)",
    )
    ap.add_argument(
        "--second",
        type=Path,
        help="also back up this folder as a second endpoint (another source: no files "
        "cache, every file read), e.g. a 95%%-similar copy made as bench.run's step 6 makes it",
    )
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument(
        "--cpu", action="store_true", help="count each thread's CPU time, not the wall clock"
    )
    args = ap.parse_args(argv)
    if args.cpu:
        _timer[:] = [time.thread_time]
    if not args.corpus.is_dir():
        raise SystemExit(f"{args.corpus}: not a folder (run `python -m bench.run --keep` first)")
    work = args.work.resolve()
    rmtree(work)
    work.mkdir(parents=True)
    data = work / "data"
    for var in (
        "LAMINA_DATA",
        "LAMINA_DB",
        "LAMINA_STORE",
        "LAMINA_KEYFILE",
        "LAMINA_STORE_PASSPHRASE",
    ):
        os.environ.pop(var, None)

    steps = [
        ("init", ["store", "init", "--data", os.fspath(data)]),
        ("backup", ["snapshot", "create", os.fspath(args.corpus), "--data", os.fspath(data)]),
        ("rebackup", ["snapshot", "create", os.fspath(args.corpus), "--data", os.fspath(data)]),
        *(
            [
                (
                    "endpoint2",
                    [
                        "snapshot",
                        "create",
                        os.fspath(args.second),
                        "--source",
                        f"endpoint-b:{args.second}",
                        "--data",
                        os.fspath(data),
                    ],
                )
            ]
            if args.second
            else []
        ),
        (
            "restore",
            [
                "snapshot",
                "restore",
                "latest",
                "-o",
                os.fspath(work / "out"),
                "--data",
                os.fspath(data),
            ],
        ),
    ]
    for name, argv_ in steps:
        os.sync()
        wall, stats = profiled_cli(argv_, work / f"{name}.prof")
        if name != "init":
            report(name, wall, stats, args.top)
    shutil.rmtree(work / "out", ignore_errors=True)
    print(f"\nprofiles in {work} (*.prof: all threads merged; *.main.prof: main thread only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
