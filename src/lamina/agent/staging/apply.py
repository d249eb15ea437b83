"""Applying staged transactions at boot, confirming the boot, rolling back.

Apply writes ``applying`` before the first rename and bumps ``done`` after each
op (fsync each time). Every op is reversible from what is on disk alone, so
``boot`` after a crash first rolls back whatever an interrupted apply did
(undoing ops in reverse order, checking where each file is), then applies again
from the start. An op that fails (EXDEV, EROFS, ENOSPC, a symlinked parent) rolls
back at once and the transaction is ``failed``, never retried. The endpoint is
therefore wholly old or wholly new after boot. Renames go through folder
descriptors walked with ``O_NOFOLLOW``. For tests, ``LAMINA_BOOT_FAIL_AFTER=N``
makes apply stop dead after N ops.

A transaction fully applied is ``applied``, not yet ``committed``: ``old/``
keeps what it replaced until the agent confirms a healthy boot (``confirm``).
Each later ``boot`` counts one unconfirmed boot; at ``MAX_UNCONFIRMED_BOOTS``
it rolls the transaction back and reports it failed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any

from lamina.agent import depmod
from lamina.agent.staging.journal import (
    APPLIED,
    APPLYING,
    COMMITTED,
    FAILED,
    STAGED,
    InjectedCrash,
    Transaction,
    pending,
)
from lamina.errors import ConflictError, LaminaError, UnsafePathError

#: Boots an applied transaction may see without a confirmed healthy boot; this many roll it back.
MAX_UNCONFIRMED_BOOTS = 2

# Every rename goes through descriptors of the folders involved, walked from the
# root (or the transaction's new/ and old/) with O_NOFOLLOW: a symlink planted
# in a parent after staging is refused, never followed.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_parent(base: Path, rel: str, create: bool) -> tuple[int, str]:
    """A descriptor of ``rel``'s folder under ``base`` and ``rel``'s last name.

    ``create`` makes missing folders (only in the transaction's own folders)."""
    parts = rel.split("/")
    fd = os.open(base, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(
                f"{base}/{rel}: a parent folder is a symlink or not a folder; refused"
            ) from e
        raise
    return fd, parts[-1]


def _exists(base: Path, rel: str) -> bool:
    try:
        fd, name = _open_parent(base, rel, False)
    except FileNotFoundError:
        return False
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _move(src: Path, dst: Path, rel: str, create: bool) -> None:
    sfd, name = _open_parent(src, rel, False)
    try:
        dfd, _ = _open_parent(dst, rel, create)
        try:
            os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _set_dir_meta(root: Path, rel: str, meta: list[Any]) -> None:
    """Give the folder ``rel`` owner, mode and xattrs, through descriptors only."""
    mode, uid, gid, xattrs = meta
    pfd, name = _open_parent(root, rel, False)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
    finally:
        os.close(pfd)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)  # after chown, which clears setgid
        want = {bytes.fromhex(k): bytes.fromhex(v) for k, v in xattrs}
        for n in os.listxattr(fd):
            if os.fsencode(n) not in want:
                with contextlib.suppress(OSError):  # e.g. a security label the kernel keeps
                    os.removexattr(fd, n)
        for k, v in want.items():
            os.setxattr(fd, k, v)
    finally:
        os.close(fd)


def _do(tx: Transaction, root: Path, op: str, rel: str) -> None:
    if op == "meta":
        _set_dir_meta(root, rel, tx.journal["meta"][rel]["new"])
        return
    if _exists(root, rel) and not _exists(tx.old, rel):
        _move(root, tx.old, rel, create=True)
    if op == "swap" and _exists(tx.new, rel):
        _move(tx.new, root, rel, create=False)


def _undo(tx: Transaction, root: Path, op: str, rel: str) -> None:
    if op == "meta":
        _set_dir_meta(root, rel, tx.journal["meta"][rel]["old"])
        return
    if op == "swap" and _exists(root, rel) and not _exists(tx.new, rel):
        _move(root, tx.new, rel, create=True)
    if _exists(tx.old, rel) and not _exists(root, rel):
        _move(tx.old, root, rel, create=False)


def rollback(tx: Transaction, root: Path) -> list[str]:
    """Undo the ops an apply did, last first; returns the ops that could not be undone."""
    ops = tx.journal["ops"]
    upto = min(tx.journal["done"] + 1, len(ops))  # the op in flight may be half done
    stuck = []
    for op, rel in reversed(ops[:upto]):
        try:
            _undo(tx, root, op, rel)
        except (OSError, LaminaError) as e:
            stuck.append(f"/{rel}: {e}")
    tx.journal["state"] = STAGED
    tx.journal["done"] = 0
    tx.save()
    return stuck


def apply(tx: Transaction, root: Path, fail_after: int = -1) -> None:
    tx.journal["state"] = APPLYING
    tx.save()
    tx.old.mkdir(exist_ok=True)
    for i, (op, rel) in enumerate(tx.journal["ops"]):
        if i == fail_after:
            raise InjectedCrash(f"injected crash after {i} operations")
        _do(tx, root, op, rel)
        tx.journal["done"] = i + 1
        tx.save()
    if fail_after == len(tx.journal["ops"]):
        raise InjectedCrash("injected crash before commit")
    tx.journal["state"] = APPLIED
    tx.journal["boots"] = 0
    tx.save()


def _fail(tx: Transaction, root: Path, err: BaseException) -> str:
    """An op failed: put every op back, and mark the transaction failed for good."""
    stuck = rollback(tx, root)
    message = f"apply failed, rolled back: {err}"
    if stuck:
        message = f"apply failed ({err}) and {len(stuck)} ops could not be undone: {stuck[:3]}"
    tx.journal["state"] = FAILED
    tx.journal["error"] = message
    tx.journal["rolled_back"] = not stuck
    tx.save()
    _depmod(tx, root)  # the modules it placed are gone again
    if not stuck:  # nothing of the endpoint is left in old/: free the staged copy
        shutil.rmtree(tx.new, ignore_errors=True)
        shutil.rmtree(tx.old, ignore_errors=True)
    return message


def _depmod(tx: Transaction, root: Path) -> dict[str, str] | None:
    """Index the modules of the kernels the ops touched; recorded so a crash re-runs it."""
    kernels = tx.journal.get("depmod") or []
    if not kernels:
        return None
    done = depmod.run(root, kernels)
    tx.journal["depmod_done"] = done
    tx.save()
    return done


def _entry(tx: Transaction) -> dict[str, Any]:
    return {
        "transaction": tx.journal["id"],
        "operations": len(tx.journal["ops"]),
        **tx.journal["summary"],
    }


def _unconfirmed_boot(tx: Transaction, root: Path) -> dict[str, Any] | None:
    """One more boot of an applied transaction nobody confirmed; the last one allowed rolls back."""
    tx.journal["boots"] = int(tx.journal.get("boots", 0)) + 1
    if tx.journal["boots"] < MAX_UNCONFIRMED_BOOTS:
        tx.save()
        return None
    entry = _entry(tx)
    entry["error"] = _fail(
        tx,
        root,
        ConflictError(
            f"the system booted {tx.journal['boots']} times after the apply "
            "without confirming a healthy boot"
        ),
    )
    entry["unconfirmed"] = True
    return entry


def boot(state_dir: Path, root: Path, fail_after: int = -1) -> list[dict[str, Any]]:
    """Finish every staged transaction: roll back a half-applied one, then apply it whole.

    An op that fails (EXDEV, EROFS, ENOSPC, a symlinked parent) rolls back every
    op already applied; the transaction is then ``failed`` and never retried;
    its entry carries ``error`` so the agent reports the task failed. An
    ``applied`` transaction not yet confirmed counts this boot; the
    ``MAX_UNCONFIRMED_BOOTS``-th rolls it back (its entry has ``unconfirmed``)."""
    out = []
    for tx in pending(state_dir, root):
        state = tx.journal["state"]
        if state == COMMITTED:
            shutil.rmtree(tx.path)
            continue
        if state == FAILED:
            continue
        if state == APPLIED:
            if tx.journal.get("depmod") and "depmod_done" not in tx.journal:
                _depmod(tx, root)  # the machine stopped between the apply and depmod
            rolled = _unconfirmed_boot(tx, root)
            if rolled is not None:
                out.append(rolled)
            continue
        entry = _entry(tx)
        try:
            if state == APPLYING:
                stuck = rollback(tx, root)
                if stuck:
                    raise ConflictError(f"an interrupted apply could not be undone: {stuck[:3]}")
            apply(tx, root, fail_after)
        except (OSError, LaminaError) as e:
            entry["error"] = _fail(tx, root, e)
        else:
            indexed = _depmod(tx, root)
            if indexed is not None:
                entry["depmod"] = indexed
        out.append(entry)
    return out


def awaiting_confirmation(state_dir: Path, root: Path) -> list[Transaction]:
    return [t for t in pending(state_dir, root) if t.journal["state"] == APPLIED]


def confirm(state_dir: Path, root: Path) -> list[str]:
    """The system came up healthy: commit every applied transaction and free what it kept.

    ``committed`` is written before ``old/`` goes, so a crash in between leaves a
    transaction the next ``boot`` simply removes."""
    done = []
    for tx in awaiting_confirmation(state_dir, root):
        tx.journal["state"] = COMMITTED
        tx.save()
        shutil.rmtree(tx.path)
        done.append(str(tx.journal["id"]))
    return done
