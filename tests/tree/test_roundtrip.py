"""Scan -> store -> restore reproduces a tree exactly: bytes and metadata."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from lamina.store.repository import Store
from lamina.tree import restore as restore_mod
from lamina.tree import scan as scan_mod
from lamina.tree.model import Entry, decode_tree
from lamina.tree.restore import restore_tree

from .treeutil import (
    MIB,
    MTIME,
    assert_same_tree,
    build_rich_tree,
    describe,
    scan_tree,
    set_mtime,
    write,
)


def entry_at(store: Store, root: bytes, path: bytes) -> Entry:
    tid = root
    *dirs, last = path.split(b"/")
    for d in dirs:
        (e,) = [x for x in decode_tree(store.get(tid)) if x.name == d]
        assert e.subtree is not None
        tid = e.subtree
    (e,) = [x for x in decode_tree(store.get(tid)) if x.name == last]
    return e


@pytest.fixture
def rich(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    build_rich_tree(src)
    return src


def test_rich_tree_round_trip_is_identical(store: Store, rich: Path, tmp_path: Path) -> None:
    tid, stats = scan_tree(store, rich)
    assert stats.errors == []
    out = tmp_path / "out"
    rstats = restore_tree(store, tid, out)
    assert rstats.errors == []
    assert_same_tree(rich, out)

    # The comparison above covers everything; spell out the parts most likely to go wrong.
    o = os.fsencode(out)
    ino = {os.lstat(o + p).st_ino for p in (b"/hl-first", b"/a/hl-second", b"/a/b/hl-third")}
    assert len(ino) == 1 and os.lstat(o + b"/hl-first").st_nlink == 3
    assert os.lstat(o + b"/a/pair-x").st_ino == os.lstat(o + b"/a/pair-y").st_ino
    assert os.lstat(o + b"/a/same1").st_ino != os.lstat(o + b"/a/b/same2").st_ino
    suid = os.lstat(o + b"/suid-prog")
    assert stat.S_IMODE(suid.st_mode) == 0o4755 and (suid.st_uid, suid.st_gid) == (1234, 5678)
    assert stat.S_IMODE(os.lstat(o + b"/sticky-dir").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(o + b"/owned-dir").st_mode) == 0o2750
    dev = os.lstat(o + b"/null-dev")
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(o + b"/loop-dev").st_mode)
    assert stat.S_ISFIFO(os.lstat(o + b"/fifo").st_mode)
    assert os.readlink(o + b"/dangling") == b"no/such/target"
    assert os.lstat(o + b"/dangling").st_uid == 1234
    assert os.readlink(o + b"/abs-link") == b"/etc/hostname"
    assert os.readlink(o + b"/\xff\xfe-dir/\x80link") == b"caf\xe9.txt"
    assert os.lstat(o + b"/big.bin").st_mtime_ns == MTIME + 3
    assert os.getxattr(o + b"/small.txt", "user.binary") == b"\x00\x01\xff\x00"
    assert os.getxattr(o + b"/empty", b"user.not-utf8-\xff") == b"odd name"
    assert os.getxattr(o + b"/fifo", "trusted.on-fifo") == b"fifo xattr"
    assert os.getxattr(o + b"/dangling", "trusted.on-link", follow_symlinks=False) == b"link xattr"
    assert os.getxattr(o + b"/cap-prog", "security.capability") == os.getxattr(
        rich / "cap-prog", "security.capability"
    )


def test_big_file_is_stored_as_several_chunks(store: Store, rich: Path) -> None:
    tid, _ = scan_tree(store, rich)
    big = entry_at(store, tid, b"big.bin")
    ids = list(big.chunk_ids())
    assert big.size == 6 * MIB + 12345
    assert len(ids) >= 2 and all(isinstance(c, bytes) for c in big.content or [])
    assert sum(len(store.get(c)) for c in ids) == big.size
    # identical content is one chunk, not two
    assert entry_at(store, tid, b"a/same1").content == entry_at(store, tid, b"a/b/same2").content


def test_rescan_of_same_tree_gives_same_id_and_stores_nothing_new(store: Store, rich: Path) -> None:
    tid1, _ = scan_tree(store, rich)
    with store.writer() as w:
        tid2 = scan_mod.Scanner(w, workers=3).scan(rich)
    assert tid2 == tid1
    assert w.new_blobs == 0


@pytest.mark.skipif(shutil.which("getcap") is None, reason="getcap (libcap2-bin) not installed")
def test_capabilities_survive_the_round_trip(store: Store, rich: Path, tmp_path: Path) -> None:
    tid, _ = scan_tree(store, rich)
    restore_tree(store, tid, tmp_path / "out")
    caps = subprocess.run(
        ["getcap", str(tmp_path / "out" / "cap-prog")], check=True, capture_output=True, text=True
    ).stdout
    assert "cap_net_bind_service" in caps and "cap_net_raw" in caps
    # chown after setting capabilities would have cleared them; so would writing content
    assert os.stat(tmp_path / "out" / "cap-prog").st_uid == 1234


def test_posix_acls_round_trip(store: Store, tmp_path: Path) -> None:
    if shutil.which("setfacl") is None or shutil.which("getfacl") is None:
        pytest.skip("setfacl/getfacl (Debian package acl) not installed")
    src = tmp_path / "src"
    f = write(src / "d" / "f", b"acl'd\n")
    write(src / "d" / "plain", b"no ACL of its own\n", MTIME + 2)
    os.mkfifo(src / "d" / "fifo", 0o640)
    set_mtime(src / "d" / "fifo", MTIME + 3)
    (src / "d" / "sub").mkdir(0o755)
    set_mtime(src / "d" / "sub", MTIME + 4)
    subprocess.run(["setfacl", "-m", "u:1234:rwx,g:5678:r", str(f)], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rx", str(src / "d")], check=True)
    subprocess.run(["setfacl", "-m", "u:4321:rx", str(src / "d")], check=True)
    set_mtime(f, MTIME)
    set_mtime(src / "d", MTIME + 1)
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    restore_tree(store, tid, out)
    assert_same_tree(src, out)

    def facl(p: Path) -> str:
        return subprocess.run(
            ["getfacl", "-c", str(p)], check=True, capture_output=True, text=True
        ).stdout

    assert "user:1234:rwx" in facl(out / "d" / "f")
    assert facl(out / "d" / "f") == facl(f)
    assert facl(out / "d") == facl(src / "d")
    assert "default:user:1234:r-x" in facl(out / "d")

    # Restoring again after losing files: they are now created inside a directory with a
    # default ACL, and must not keep the ACL they inherit from it (the snapshot has none).
    os.unlink(out / "d" / "plain")
    os.unlink(out / "d" / "fifo")
    os.rmdir(out / "d" / "sub")
    restore_tree(store, tid, out)
    assert_same_tree(src, out)


def test_restore_into_a_directory_with_a_default_acl_is_still_exact(
    store: Store, tmp_path: Path
) -> None:
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl (Debian package acl) not installed")
    src = tmp_path / "src"
    write(src / "f", b"no acl here\n")
    write(src / "d" / "g", b"nor here\n")
    os.mkfifo(src / "d" / "p", 0o600)
    set_mtime(src / "d" / "p", MTIME)
    set_mtime(src / "d", MTIME)
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:4321:rwx,g::rwx,o::rwx", str(out)], check=True)
    restore_tree(store, tid, out)
    assert_same_tree(src, out)


def test_sparse_file_stays_sparse(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = 100 * MIB
    blocks = {10 * MIB: os.urandom(4096), 50 * MIB + 4096: os.urandom(8192), 90 * MIB: b"x" * 4096}
    with open(src / "sparse", "wb") as f:
        f.truncate(size)  # leading and trailing holes
        for off, data in blocks.items():
            f.seek(off)
            f.write(data)
    with open(src / "all-hole", "wb") as f:
        f.truncate(10 * MIB)
    set_mtime(src / "sparse", MTIME)
    set_mtime(src / "all-hole", MTIME)
    if os.stat(src / "sparse").st_blocks * 512 >= size:
        pytest.skip("this file system does not keep holes")

    read = []
    real_pread, real_preadv = scan_mod.os.pread, scan_mod.os.preadv

    def pread(fd: int, n: int, off: int) -> bytes:
        read.append(n)
        return real_pread(fd, n, off)

    def preadv(fd: int, buffers: list[memoryview], off: int) -> int:
        n = real_preadv(fd, buffers, off)
        read.append(n)
        return n

    monkeypatch.setattr(scan_mod.os, "pread", pread)
    monkeypatch.setattr(scan_mod.os, "preadv", preadv)
    tid, stats = scan_tree(store, src)
    monkeypatch.undo()
    assert stats.errors == []
    assert sum(read) < 1 * MIB  # only the data extents were read

    e = entry_at(store, tid, b"sparse")
    holes = [c for c in e.content or [] if isinstance(c, int)]
    assert e.size == size and sum(holes) > 95 * MIB
    assert isinstance((e.content or [])[0], int) and isinstance((e.content or [])[-1], int)
    assert entry_at(store, tid, b"all-hole").content == [10 * MIB]

    out = tmp_path / "out"
    restore_tree(store, tid, out)
    assert_same_tree(src, out)  # same size and content hash
    for name in ("sparse", "all-hole"):
        st = os.stat(out / name)
        assert st.st_blocks * 512 < 1 * MIB, f"{name} restored dense ({st.st_blocks} blocks)"
    with open(out / "sparse", "rb") as f:
        for off, data in blocks.items():
            f.seek(off)
            assert f.read(len(data)) == data


def test_sockets_are_recorded_but_not_restored(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    write(src / "f", b"x")
    monkeypatch.chdir(src)  # AF_UNIX paths are short
    s = socket.socket(socket.AF_UNIX)
    s.bind("sock")
    try:
        tid, stats = scan_tree(store, src)
    finally:
        s.close()
    assert stats.errors == []
    assert [(e.name, e.type) for e in decode_tree(store.get(tid))] == [
        (b"f", "file"),
        (b"sock", "socket"),
    ]
    rstats = restore_tree(store, tid, tmp_path / "out")
    assert rstats.errors == []
    assert sorted(os.listdir(tmp_path / "out")) == ["f"]


def test_restore_fallback_copy_counts_each_file_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a hard link cannot be made, the file is written as a copy, counted once."""
    src = tmp_path / "src"
    write(src / "a", b"linked")
    os.link(src / "a", src / "b")
    tid, _ = scan_tree(store, src)

    def no_link(*args: object, **kw: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(restore_mod.os, "link", no_link)
    st = restore_tree(store, tid, tmp_path / "out")
    assert st.files == 2
    assert (tmp_path / "out" / "b").read_bytes() == b"linked"


def test_compare_helper_notices_every_kind_of_difference(rich: Path, tmp_path: Path) -> None:
    """The comparison the other tests rely on must fail on each kind of damage."""
    base = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(rich), str(base)], check=True)
    assert_same_tree(rich, base)

    def damage_content(p: Path) -> None:
        data = bytearray((p / "small.txt").read_bytes())
        data[0] ^= 1
        st = os.stat(p / "small.txt")
        (p / "small.txt").write_bytes(bytes(data))
        set_mtime(p / "small.txt", st.st_mtime_ns)

    def break_hardlink(p: Path) -> None:
        data = (p / "a" / "hl-second").read_bytes()
        st = os.stat(p / "a" / "hl-second")
        os.unlink(p / "a" / "hl-second")
        (p / "a" / "hl-second").write_bytes(data)
        os.chmod(p / "a" / "hl-second", stat.S_IMODE(st.st_mode))
        set_mtime(p / "a" / "hl-second", st.st_mtime_ns)
        set_mtime(p / "a", os.stat(rich / "a").st_mtime_ns)

    damages = {  # what to do -> the difference the helper must report
        "mode": (lambda p: os.chmod(p / "suid-prog", 0o755), "mode"),
        "owner": (lambda p: os.chown(p / "owned-dir" / "mine", 1234, 1), "gid"),
        "symlink owner": (lambda p: os.lchown(p / "dangling", 0, 5678), "uid"),
        "mtime": (lambda p: set_mtime(p / "empty", MTIME + 999), "mtime"),
        "dir mtime": (lambda p: set_mtime(p / "a" / "b", MTIME), "mtime"),
        "symlink mtime": (lambda p: set_mtime(p / "abs-link", MTIME), "mtime"),
        "content": (damage_content, "sha256"),
        "xattr": (lambda p: os.removexattr(p / "small.txt", "user.comment"), "xattrs"),
        "capability": (lambda p: os.removexattr(p / "cap-prog", "security.capability"), "xattrs"),
        "hardlink": (break_hardlink, "hard-link groups"),
        "extra file": (lambda p: write(p / "a" / "b" / "c" / "new", b""), "extra in"),
        "rdev": (
            lambda p: (
                os.unlink(p / "null-dev"),
                os.mknod(p / "null-dev", stat.S_IFCHR | 0o666, os.makedev(1, 5)),
            ),
            "rdev",
        ),
        "target": (
            lambda p: (os.unlink(p / "dangling"), os.symlink("elsewhere", p / "dangling")),
            "target",
        ),
    }
    for what, (damage, expected) in damages.items():
        victim = tmp_path / f"v-{what.replace(' ', '-')}"
        subprocess.run(["cp", "-a", str(base), str(victim)], check=True)
        damage(victim)
        with pytest.raises(AssertionError, match=expected):
            assert_same_tree(rich, victim)
        shutil.rmtree(victim)
    nodes, groups = describe(rich)
    assert nodes[b"\xff\xfe-dir/caf\xe9.txt"].kind == "file"
    assert frozenset({b"hl-first", b"a/hl-second", b"a/b/hl-third"}) in groups
