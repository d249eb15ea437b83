"""Restores into a filesystem of their own, made fresh for each one.

A restore creates tens of thousands of files. On ext4 without a journal (the bench host's
root), allocating an inode skips every inode of its table block that was freed in the last
60 s, or the last 360 s once that block is dirty again (``recently_deleted`` in
fs/ext4/ialloc.c, a buffer look-up per skip). A restore dirties the blocks it allocates
in, so waiting 65 s after a deletion (``bench.common.settle_deletions``) is not enough:
measured on the bench host, a restore of the 1 GiB corpus took 4.7 s of system time
70 s after the previous restore's 40,000 files were deleted and 1.9-2.3 s without a
deletion before it (``perf``: 16% of its samples in ``recently_deleted`` and its buffer
look-ups). Every pass deletes the previous one's trees, so which tool restored when
decided its figure.

``fresh_target`` gives each restore an empty filesystem of the same type and journal
setting as the work folder's, on a loop device backed by a sparse file in the work folder,
unmounted and deleted afterwards (one inode freed): every tool restores onto a new disk,
as after a machine's replacement. It needs root, ``losetup`` and the ``mkfs`` of that
type; otherwise the restore goes to the work folder as before, and the results say which.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import TreeSize, rmtree, say, warn
from bench.host import mount_of


def _has_journal(device: str) -> bool | None:
    """Whether the ext4 on ``device`` has a journal: the kernel's view (its journal thread,
    ``<none>`` without one), else the superblock's features; None when neither can be read."""
    task = Path("/sys/fs/ext4") / Path(device).name / "journal_task"
    try:
        return task.read_text().strip() != "<none>"
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["dumpe2fs", "-h", device], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        if line.startswith("Filesystem features:"):
            return "has_journal" in line.split()
    return None


def plan(work: Path) -> tuple[list[str], list[str], str] | str:
    """The mkfs and mount argv prefixes for a fresh filesystem like ``work``'s, and a
    description; or, when one cannot be made here, why not."""
    if os.geteuid() != 0:
        return "not root"
    m = mount_of(work)
    if m is None:
        return f"no mount found for {work}"
    mkfs = shutil.which(f"mkfs.{m.fstype}")
    if mkfs is None or shutil.which("losetup") is None or shutil.which("mount") is None:
        return f"no mkfs.{m.fstype}, losetup or mount"
    make = [mkfs, "-q"]
    desc = m.fstype
    if m.fstype in ("ext2", "ext3", "ext4"):
        make.append("-F")
        journal = _has_journal(m.source)
        if journal is False:
            make += ["-O", "^has_journal"]
            desc += " without a journal"
        elif journal:
            desc += " with a journal"
    keep = sorted(o for o in m.options if o in ("discard", "nodiscard", "noatime", "relatime"))
    mount = ["mount", "-o", ",".join(["loop", *keep])]
    return make, mount, f"a fresh {desc} ({','.join(keep) or 'defaults'}) on a loop device"


def size_for(tree: TreeSize) -> int:
    """Bytes of a filesystem for a restore of ``tree``: room for it several times over,
    and (at mkfs's one inode per 16 KiB) inodes for each of its files twice."""
    return max(4 * tree.disk + (1 << 30), tree.files * 32 * 1024)


def restore_target(details: dict[str, Any]) -> str:
    """Where a pass's restores went, from each tool's ``restore_target`` detail ("" if
    none was recorded): one description, or each tool's when they differ."""
    seen = {
        t: d["restore_target"]
        for t, d in details.items()
        if isinstance(d, dict) and d.get("restore_target")
    }
    if len(set(seen.values())) == 1:
        return next(iter(seen.values()))
    return "; ".join(f"{t}: {w}" for t, w in sorted(seen.items()))


def describe(work: Path) -> str:
    p = plan(work)
    if isinstance(p, str):
        return f"the work folder ({p}: no filesystem of its own)"
    return p[2] + ", made for each restore"


@contextlib.contextmanager
def fresh_target(work: Path, name: str, size: int) -> Iterator[tuple[Path, str]]:
    """An empty folder for one restore, and where it is: in a new filesystem of ``size``
    bytes (sparse) when one can be made, else ``work/restore/name``. Removed afterwards."""
    out = work / "restore" / name
    out.mkdir(parents=True, exist_ok=False)
    p = plan(work)
    image = work / "restore" / f"{name}.img"
    if not isinstance(p, str):
        make, mount, where = p
        with open(image, "wb") as f:
            f.truncate(size)
        try:
            subprocess.run([*make, os.fspath(image)], check=True, capture_output=True, text=True)
            subprocess.run(
                [*mount, os.fspath(image), os.fspath(out)],
                check=True,
                capture_output=True,
                text=True,
            )
        except subprocess.CalledProcessError as e:
            image.unlink(missing_ok=True)
            p = f"{' '.join(e.cmd[:2])} failed: {(e.stderr or '').strip()}"
            warn(f"no filesystem of its own for {name}'s restore ({p})")
    if isinstance(p, str):
        try:
            yield out, f"the work folder ({p}: no filesystem of its own)"
        finally:
            rmtree(out)
        return
    try:
        target = out / "data"  # not the filesystem's root: that holds lost+found
        target.mkdir()
        yield target, where + ", made for each restore"
    finally:
        os.sync()
        r = subprocess.run(["umount", os.fspath(out)], capture_output=True, text=True)
        if r.returncode != 0:
            say(f"  umount {out} failed ({r.stderr.strip()}): unmounting lazily", "yellow")
            subprocess.run(["umount", "-l", os.fspath(out)], capture_output=True)
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out.rmdir()
