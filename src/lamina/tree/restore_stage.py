"""A staged restore's staging folder: found again after a kill, held, and published.

A whole restore into an empty folder (``lamina.tree.restore.Restorer``) fills a staging
folder inside the target and, at its end (after an error or an interrupt too), moves
each of its entries into place: one at a time, never over a name that appeared in the
target meanwhile (that entry is reported and stays in the staging folder). The restore
holds its staging folder (``flock``) while it writes there: a second restore into the
same target is refused. A restore killed outright (``kill -9``, power loss) leaves its
staging folder behind; the next whole restore into that target resumes into it
(``leftovers``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator

from lamina.errors import UsageError
from lamina.tree.restore_types import DIR_FLAGS

#: How a restore names its temporary files and its staging folder.
PREFIX = b".lamina-restore-"


def hold(fd: int, where: object) -> bool:
    """Hold the staging folder ``fd`` for this restore until the descriptor is closed: a
    second restore into the same target finds it held and is refused, rather than
    writing into it or removing it. False: this file system has no such locks (ENOLCK;
    on NFS, EBADF for a folder), so nothing is held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(where) from None
    except OSError:
        return False
    return True


def _busy(where: object) -> UsageError:
    return UsageError(f"another restore is writing into {where}")


def is_ours(st: os.stat_result) -> bool:
    """A folder as a restore of this user's makes its staging folder: its owner, mode 0700
    (a setgid bit inherited from the target aside). Only such a folder is resumed."""
    return st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o700


def _may_be_held(st: os.stat_result, root: os.stat_result) -> bool:
    """A folder a running restore of this user's may hold: this user's, or owned as the
    target is (vfat, CIFS, NFS show the mount's owner and mode), whatever its mode.
    Another user's is never asked (holding one must keep no restore out)."""
    return st.st_uid in (os.geteuid(), root.st_uid)


def is_held(dir_fd: int, name: bytes, anyone: bool = False) -> bool:
    """Whether ``name`` in folder ``dir_fd`` is a staging folder a running restore holds
    (of this user's, or owned as ``dir_fd`` is; ``anyone``: whoever owns it)."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not anyone and not _may_be_held(os.fstat(fd), os.fstat(dir_fd)):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def refuse_if_held(root_fd: int, where: object) -> None:
    """Refuse (``UsageError``) a restore onto what folder ``root_fd`` holds while a running
    restore holds a staging folder there: it must not be touched."""
    for child in os.listdir(root_fd):
        name = os.fsencode(child)
        if name.startswith(PREFIX) and is_held(root_fd, name):
            raise _busy(where)


def leftovers(
    root_fd: int, where: object, remove: Callable[[int, bytes], None]
) -> tuple[bytes, int] | bool:
    """What folder ``root_fd`` holds before a whole restore. False: something besides
    what interrupted restores left. Otherwise those leftovers are removed (``remove``)
    but the staging folder a restore killed outright left, returned opened and held
    (its name, its descriptor) to resume into; True when there is none. Only a staging
    folder as a restore of this user's makes it (``is_ours``) is resumed, the newest if
    several; it is held first, and a restore holding one refuses this one
    (``UsageError``). Any other folder is removed, never held (nobody can keep a restore
    out by holding a folder of their own there). On a file system without locks no
    staging folder can be known to be abandoned: all are removed, as before resuming."""
    names = [os.fsencode(n) for n in os.listdir(root_fd)]
    if not all(n.startswith(PREFIX) for n in names):
        return False
    stages: list[tuple[int, bytes, int]] = []  # (mtime, name, descriptor)
    try:
        locks = True
        root = os.fstat(root_fd)
        for name in names:
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=root_fd)
            except OSError:
                continue  # a file (a temporary name), a symlink, or gone
            st = os.fstat(fd)
            if not is_ours(st):
                try:
                    if _may_be_held(st, root):
                        hold(fd, where)  # refused while held; let go at the close
                finally:
                    os.close(fd)
                continue
            stages.append((st.st_mtime_ns, name, fd))
            locks = hold(fd, where) and locks
        stages.sort()
        resume = stages.pop() if stages and locks else None
    except BaseException:
        for _, _, fd in stages:
            os.close(fd)
        raise
    for _, _, fd in stages:
        os.close(fd)
    try:
        for name in names:
            if resume is None or name != resume[1]:
                try:
                    remove(root_fd, name)
                except OSError as e:
                    raise UsageError(
                        f"cannot restore into {where}: {os.fsdecode(name)}, left by an "
                        f"interrupted restore, cannot be removed: {e.strerror}"
                    ) from e
    except BaseException:
        if resume is not None:
            os.close(resume[2])
        raise
    return True if resume is None else (resume[1], resume[2])


def check_new(fd: int, root_fd: int, where: object) -> None:
    """The staging folder just made and opened (``fd``) is the restore's own: empty, and
    this user's or owned as the target is (a file system that shows every file with the
    mount's owner: vfat, CIFS; NFS squashing root). Anything else is a folder put under
    its name in between."""
    owner = os.fstat(fd).st_uid
    if owner not in (os.geteuid(), os.fstat(root_fd).st_uid) or os.listdir(fd):
        raise UsageError(f"cannot restore into {where}: its staging folder was replaced")


def own_folder(fd: int, uid: int | None) -> None:
    """Folder ``fd`` of a staging folder being resumed as a restore makes a folder: mode
    0700 (its setgid bit kept; the killed restore may have finished it read-only, or with
    another snapshot's mode: its own is set once its files are in), and given to ``uid``
    when not None (a restore that keeps no owners resuming what one that did left; its
    group stays, a setgid folder's as made)."""
    st = os.fstat(fd)
    if uid is not None and st.st_uid != uid:
        os.fchown(fd, uid, -1)
    os.fchmod(fd, (st.st_mode & stat.S_ISGID) | 0o700)


def open_dir(dir_fd: int, name: bytes) -> int:
    """Open folder ``name`` of a staging folder (``DIR_FLAGS``), making it readable first
    if this user owns it and may not read it (a killed restore finished it 0o300)."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        # The very folder, never a symlink swapped in: an O_PATH descriptor of it, its
        # mode changed through its /proc link, then opened from it.
        at = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(at)
            if st.st_uid != os.geteuid():
                raise
            os.chmod(f"/proc/self/fd/{at}", stat.S_IMODE(st.st_mode) | 0o700)
            return os.open(".", DIR_FLAGS, dir_fd=at)
        finally:
            os.close(at)


def force_remove(fd: int, name: bytes) -> None:
    """Remove ``name`` from folder ``fd``, whatever it is: a folder is removed with all it
    holds, each folder of this user's inside made writable first (one a killed restore
    finished read-only). Symlinks are removed, never followed."""
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=fd)
        return
    sub = open_dir(fd, name)
    try:
        if st.st_uid == os.geteuid():
            os.fchmod(sub, 0o700)
        for child in os.listdir(sub):
            force_remove(sub, os.fsencode(child))
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=fd)


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
