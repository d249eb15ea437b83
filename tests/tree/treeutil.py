"""Helpers for the tree tests: build file-system trees, scan them, compare them."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lamina.store.repository import Store
from lamina.tree.cache import FilesCache
from lamina.tree.scan import Scanner, ScanStats

MTIME = 1_600_000_000_123_456_789  # ns, not a multiple of a microsecond
MIB = 1024 * 1024


def scan_tree(
    store: Store, root: Path, cache: FilesCache | None = None, workers: int = 2
) -> tuple[bytes, ScanStats]:
    """Scan ``root`` into ``store`` (everything flushed); return (root tree id, stats)."""
    with store.writer() as w:
        scanner = Scanner(w, cache, workers=workers)
        tid = scanner.scan(root)
    return tid, scanner.stats


def set_mtime(path: Path | bytes, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def fix_dir_times(root: Path, base: int = MTIME) -> None:
    """Give every directory below ``root`` a distinct mtime, deepest first (children change parents)."""
    dirs = [Path(d) for d, _, _ in os.walk(root)]
    for i, d in enumerate(sorted(dirs, key=lambda p: -len(p.parts))):
        if d != root:
            set_mtime(d, base + 1_000_003 * (i + 1))


# --- describing and comparing trees ---------------------------------------------------


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int | None
    size: int | None
    sha256: str | None
    target: bytes | None
    rdev: int | None
    xattrs: tuple[tuple[str, bytes], ...]


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def _xattrs(path: bytes) -> tuple[tuple[str, bytes], ...]:
    names = os.listxattr(path, follow_symlinks=False)
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def _sha256(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def describe(root: Path) -> tuple[dict[bytes, Node], set[frozenset[bytes]]]:
    """Everything a restore must reproduce below ``root`` (root itself excluded).

    Returns per relative path (bytes) its Node, and the hard-link groups as sets
    of relative paths that share one inode.
    """
    nodes: dict[bytes, Node] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    broot = os.fsencode(root)

    def walk(path: bytes, rel: bytes) -> None:
        for name in sorted(os.listdir(path)):
            child = path + b"/" + name
            crel = rel + b"/" + name if rel else name
            st = os.lstat(child)
            kind = _KINDS[stat.S_IFMT(st.st_mode)]
            nodes[crel] = Node(
                kind=kind,
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                mtime=st.st_mtime_ns,
                size=st.st_size if kind in ("file", "symlink") else None,
                sha256=_sha256(child) if kind == "file" else None,
                target=os.readlink(child) if kind == "symlink" else None,
                rdev=st.st_rdev if kind in ("chardev", "blockdev") else None,
                xattrs=_xattrs(child),
            )
            if kind == "dir":
                walk(child, crel)
            elif st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(crel)

    walk(broot, b"")
    groups = {frozenset(paths) for paths in inodes.values() if len(paths) > 1}
    return nodes, groups


def assert_same_tree(expected: Path, actual: Path, *, ignore: set[bytes] = frozenset()) -> None:
    """Fail with a readable list of every difference between two trees."""
    a_nodes, a_groups = describe(expected)
    b_nodes, b_groups = describe(actual)
    problems: list[str] = []
    for path in sorted(set(a_nodes) | set(b_nodes)):
        if path in ignore:
            continue
        a, b = a_nodes.get(path), b_nodes.get(path)
        if a is None:
            problems.append(f"{path!r}: extra in {actual}")
        elif b is None:
            problems.append(f"{path!r}: missing from {actual}")
        elif a != b:
            fields = [f for f in Node.__dataclass_fields__ if getattr(a, f) != getattr(b, f)]
            for f in fields:
                problems.append(f"{path!r}: {f} {getattr(a, f)!r} != {getattr(b, f)!r}")
    a_groups = {g - ignore for g in a_groups}
    b_groups = {g - ignore for g in b_groups}
    if a_groups != b_groups:
        problems.append(
            f"hard-link groups differ: {sorted(map(sorted, a_groups))} != {sorted(map(sorted, b_groups))}"
        )
    assert not problems, "trees differ:\n" + "\n".join(problems)


# --- building trees --------------------------------------------------------------------


def write(path: Path, data: bytes, mtime: int = MTIME) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    set_mtime(path, mtime)
    return path


def setcap(path: Path, caps: str = "cap_net_raw,cap_net_bind_service+ep") -> None:
    """Give ``path`` file capabilities (setcap if installed, else the raw xattr)."""
    if shutil.which("setcap"):
        subprocess.run(["setcap", caps, str(path)], check=True, capture_output=True)
    else:
        # VFS_CAP_REVISION_2, effective; permitted = CAP_NET_BIND_SERVICE(10) | CAP_NET_RAW(13)
        raw = (0x02000001).to_bytes(4, "little") + ((1 << 10) | (1 << 13)).to_bytes(4, "little")
        raw += bytes(4) + bytes(8)
        os.setxattr(path, "security.capability", raw)


def build_rich_tree(root: Path) -> None:
    """A tree with every kind of thing a restore must reproduce (no sparse or huge files)."""
    root.mkdir(parents=True, exist_ok=True)
    write(root / "empty", b"", MTIME + 1)
    write(root / "small.txt", b"hello lamina\n", MTIME + 2)
    write(root / "big.bin", os.urandom(6 * MIB + 12345), MTIME + 3)
    write(root / "a" / "b" / "c" / "deep.txt", b"deep\n" * 100, MTIME + 4)
    write(root / "a" / "same1", b"same content", MTIME + 5)
    write(root / "a" / "b" / "same2", b"same content", MTIME + 6)  # dedups with same1, not a link
    (root / "empty-dir").mkdir()

    # symlinks: relative, absolute, dangling, to a directory
    os.symlink("b/c/deep.txt", root / "a" / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("no/such/target", root / "dangling")
    os.symlink("a/b", root / "dir-link")
    for i, name in enumerate(["a/rel-link", "abs-link", "dangling", "dir-link"]):
        set_mtime(root / name, MTIME + 10 + i)
    os.lchown(root / "dangling", 1234, 5678)

    # hard links: three names for one inode across directories, and a pair in one directory
    hl = write(root / "hl-first", b"linked content\n", MTIME + 20)
    os.link(hl, root / "a" / "hl-second")
    os.link(hl, root / "a" / "b" / "hl-third")
    pair = write(root / "a" / "pair-x", b"pair\n", MTIME + 21)
    os.link(pair, root / "a" / "pair-y")

    # special files
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "null-dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "loop-dev", stat.S_IFBLK | 0o660, os.makedev(7, 200))
    for i, name in enumerate(["fifo", "null-dev", "loop-dev"]):
        os.chown(root / name, 1234 + i, 5678 + i)
        set_mtime(root / name, MTIME + 30 + i)

    # owners, modes (setuid, setgid, sticky), xattrs, capabilities
    suid = write(root / "suid-prog", b"#!/bin/sh\necho hi\n")
    os.chown(suid, 1234, 5678)
    os.chmod(suid, 0o4755)
    set_mtime(suid, MTIME + 40)
    sgid = write(root / "sgid-prog", b"#!/bin/sh\n")
    os.chown(sgid, 0, 5678)
    os.chmod(sgid, 0o2711)
    set_mtime(sgid, MTIME + 41)
    cap = write(root / "cap-prog", b"\x7fELF pretend\n")
    os.chown(cap, 1234, 5678)
    os.chmod(cap, 0o750)
    setcap(cap)
    set_mtime(cap, MTIME + 42)
    sticky = root / "sticky-dir"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    write(sticky / "inside", b"x", MTIME + 43)
    owned = root / "owned-dir"
    owned.mkdir()
    write(owned / "mine", b"mine", MTIME + 44)
    os.chown(owned / "mine", 1234, 5678)
    os.chmod(owned / "mine", 0o600)
    os.chown(owned, 1234, 5678)
    os.chmod(owned, 0o2750)
    readonly = write(root / "readonly", b"ro", MTIME + 45)
    os.chmod(readonly, 0o444)
    os.setxattr(root / "small.txt", "user.comment", b"a comment")
    os.setxattr(root / "small.txt", "user.binary", b"\x00\x01\xff\x00")
    os.setxattr(root / "a", "user.on-a-dir", b"dir value")
    os.setxattr(root / "empty", "user.empty-value", b"")
    os.setxattr(root / "empty", b"user.not-utf8-\xff", b"odd name")
    # user.* is refused on special files and symlinks; trusted.* (root) is not
    os.setxattr(root / "fifo", "trusted.on-fifo", b"fifo xattr")
    os.setxattr(root / "null-dev", "trusted.on-dev", b"dev xattr")
    os.setxattr(root / "dangling", "trusted.on-link", b"link xattr", follow_symlinks=False)

    # names that are not UTF-8
    odd = os.fsencode(root) + b"/\xff\xfe-dir"
    os.mkdir(odd)
    with open(odd + b"/caf\xe9.txt", "wb") as f:
        f.write(b"latin-1 name\n")
    set_mtime(odd + b"/caf\xe9.txt", MTIME + 50)
    os.symlink(b"caf\xe9.txt", odd + b"/\x80link")
    set_mtime(odd + b"/\x80link", MTIME + 51)

    fix_dir_times(root)
