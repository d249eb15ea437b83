"""A staged restore's end: what its staging folder holds moved into the target.

A whole restore into an empty folder (``lamina.tree.restore.Restorer``) fills a staging
folder inside the target and, at its end (after an error or an interrupt too), moves
each of its entries into place: one at a time, never over a name that appeared in the
target meanwhile (that entry is reported and stays in the staging folder).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator

from lamina.tree.restore_types import DIR_FLAGS


def publish(stage_fd: int, root_fd: int, stage: bytes, report: Callable[[str], None]) -> None:
    """Move what the staging folder ``stage`` (``stage_fd``, inside ``root_fd``) holds
    into ``root_fd``, entry by entry, then remove it. An entry that cannot be moved is
    reported (``report``) and left in the staging folder, which then stays."""
    try:
        names = [os.fsencode(n) for n in os.listdir(stage_fd)]
    except OSError as err:
        report(f"{os.fsdecode(stage)}: {err.strerror}")
        return
    left = 0
    for name in names:
        try:
            _move(name, stage_fd, root_fd)
        except OSError as err:
            left += 1
            report(f"{os.fsdecode(name)}: {err.strerror} (left in {os.fsdecode(stage)})")
    if not left:
        with contextlib.suppress(OSError):
            os.rmdir(stage, dir_fd=root_fd)


def _move(name: bytes, src_fd: int, dst_fd: int) -> None:
    """Move ``name`` from folder ``src_fd`` to folder ``dst_fd``, never over a name there."""
    try:
        os.stat(name, dir_fd=dst_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        raise FileExistsError(errno.EEXIST, "appeared in the target while it was restored")
    try:
        os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except PermissionError:
        # A folder we may not write to cannot move to another parent (its ``..``
        # changes): allowed to for the move, its mode set back after (not its times).
        fd = os.open(name, DIR_FLAGS, dir_fd=src_fd)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & stat.S_IWUSR:
                raise
            os.fchmod(fd, mode | stat.S_IWUSR)
            try:
                os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            finally:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)


@contextlib.contextmanager
def stops_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the block as Ctrl-C does (``KeyboardInterrupt``), where
    they would end the process outright (their default) and this is the main thread: a
    staged restore then moves what it wrote into place before it exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            saved[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
