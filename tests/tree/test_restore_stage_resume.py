"""A whole restore killed outright (``kill -9``, power loss) resumes into the staging
folder it left: what it finished is kept (proved by its content), what it was writing or
had not reached is written, what is there for another snapshot is not published."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from lamina.errors import UsageError
from lamina.store.repository import Store
from lamina.tree import restore_meta, restore_writer
from lamina.tree.restore import Restorer, restore_tree
from lamina.tree.restore_stage import check_new, open_dir
from lamina.tree.restore_writer import FileWriter

from .procsources import store_blobs
from .test_restore_resume import (
    NOBODY,
    read_only_tree,
    restore_as_nobody,
    small_tree,
    temp_files,
)
from .treeutil import MIB, MTIME, assert_same_tree, scan_tree, write

STAGE = ".lamina-restore-0123abcd00000001"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return small_tree(tmp_path / "src")


def killed_restore(store: Store, tid: bytes, tmp_path: Path, out: Path) -> Path:
    """``out`` as a whole restore killed outright leaves it: only its staging folder
    (0700), holding the tree's entries but ``b/f2`` (not reached), ``big`` cut short under
    its name (being written) and ``stale`` (written for another snapshot)."""
    done = tmp_path / "done"
    restore_tree(store, tid, done, chunking=store.keys.chunking)
    stage = out / STAGE
    stage.mkdir(parents=True, mode=0o700)
    for name in os.listdir(done):
        os.rename(done / name, stage / name)
    os.unlink(stage / "b" / "f2")
    os.truncate(stage / "big", 2 * MIB)
    write(stage / "stale", b"another snapshot's file")
    return stage


def assert_restored_without_stale(src: Path, out: Path) -> None:
    """``out`` is exactly ``src``: no temporary name, nothing of another snapshot."""
    assert_same_tree(src, out)
    assert temp_files(out) == [] and not (out / "stale").exists()


def inodes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.lstat().st_ino
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def test_a_restore_killed_outright_resumes_into_its_staging_folder(
    store: Store, src: Path, tmp_path: Path
) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = killed_restore(store, tid, tmp_path, out)
    before = inodes(stage)
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert st.errors == [] and st.removed == 0
    assert_restored_without_stale(src, out)
    # the eleven files it finished are kept as they were (the hard link is made again)
    assert st.skipped == 11
    assert st.bytes == (src / "big").stat().st_size + (src / "b" / "f2").stat().st_size
    after = inodes(out)
    kept = [p for p in before if p not in ("big", "stale", "b/c/link-to-a-f0")]
    assert len(kept) == 11 and all(after[p] == before[p] for p in kept)


def test_without_the_chunking_secret_a_resumed_restore_writes_every_file_again(
    store: Store, src: Path, tmp_path: Path
) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    killed_restore(store, tid, tmp_path, out)
    st = restore_tree(store, tid, out)
    assert st.errors == [] and st.skipped == 0
    assert_restored_without_stale(src, out)


def test_a_staging_folder_not_made_by_a_restore_of_ours_is_removed_not_resumed(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """A leftover that is not a folder of this user's of mode 0700 (as a restore makes
    it) may be anyone's: removed, and the restore starts afresh."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = killed_restore(store, tid, tmp_path, out)
    os.chmod(stage, 0o755)
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert st.errors == [] and st.skipped == 0
    assert_restored_without_stale(src, out)


def test_a_staging_folder_another_restore_holds_is_left_alone(
    store: Store, src: Path, tmp_path: Path
) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = killed_restore(store, tid, tmp_path, out)
    before = inodes(stage)
    held = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the restore writing there holds it
        with pytest.raises(UsageError, match="another restore is writing into"):
            restore_tree(store, tid, out, chunking=store.keys.chunking)
        assert os.listdir(out) == [STAGE] and inodes(stage) == before
    finally:
        os.close(held)
    assert restore_tree(store, tid, out, chunking=store.keys.chunking).skipped == 11
    assert_same_tree(src, out)


def test_a_new_staging_folder_is_held_while_the_restore_writes(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    out.mkdir()
    tried: list[bool] = []
    real = FileWriter._write

    def _write(self: FileWriter, e, target, existing) -> None:  # type: ignore[no-untyped-def]
        if not tried:  # while the restore writes: its staging folder cannot be taken
            (stage,) = temp_files(out)
            fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                tried.append(True)
            except BlockingIOError:
                tried.append(False)
            finally:
                os.close(fd)
        real(self, e, target, existing)

    monkeypatch.setattr(FileWriter, "_write", _write)
    restore_tree(store, tid, out, chunking=store.keys.chunking, workers=1)
    assert tried == [False]
    assert_same_tree(src, out)


def test_a_read_only_folder_the_killed_restore_finished_takes_the_rest_of_its_files(
    store: Store, tmp_path: Path
) -> None:
    """Not as root, a folder the killed restore finished (its mode set: read-only) must
    still take the files it had not written. (As root: as nobody, in a child process.)"""
    src = read_only_tree(tmp_path / "src")
    os.chmod(src / "ro", 0o755)
    write(src / "ro" / "second", b"z" * 1000, MTIME)
    os.chmod(src / "ro", 0o555)
    os.utime(src / "ro", ns=(MTIME + 7, MTIME + 7))
    write(src / "wo" / "one", b"1" * 100, MTIME)
    write(src / "wo" / "two", b"2" * 100, MTIME)
    os.chmod(src / "wo", 0o300)  # a folder its owner may not list
    tid, _ = scan_tree(store, src)
    blobs = store_blobs(store)
    key = store.keys.chunking.id_key
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    out = base / "out"
    stage = out / STAGE
    try:
        stage.mkdir(parents=True, mode=0o700)
        write(stage / "ro" / "inside", b"x" * 1000, MTIME)
        os.chmod(stage / "ro", 0o555)
        # another snapshot's read-only folder: removed, read-only as it is
        write(stage / "old" / "ro2" / "f", b"old", MTIME)
        os.chmod(stage / "old" / "ro2", 0o555)
        write(stage / "wo" / "one", b"1" * 100, MTIME)  # finished: unlistable
        os.chmod(stage / "wo", 0o300)
        if os.geteuid() == 0:
            for p in (base, out, stage, *stage.rglob("*")):
                os.chown(p, NOBODY, NOBODY, follow_symlinks=False)
        restore_as_nobody(blobs, key, tid, out)
        assert sorted(os.listdir(out)) == ["ro", "top", "wo"]
        assert stat.S_IMODE(os.stat(out / "wo").st_mode) == 0o300
        assert (out / "wo" / "two").read_bytes() == b"2" * 100
        ro = os.stat(out / "ro")
        assert stat.S_IMODE(ro.st_mode) == 0o555 and ro.st_mtime_ns == MTIME + 7
        assert (out / "ro" / "second").read_bytes() == b"z" * 1000
    finally:
        for p in (out / "ro", out / "wo", stage / "ro", stage / "wo", stage / "old" / "ro2"):
            if os.geteuid() != 0 and p.exists():
                os.chmod(p, 0o755)
        shutil.rmtree(base)


class Interrupted(Exception):
    """A Ctrl-C, or a fatal error, in the middle of the resumed restore."""


def test_a_resume_stopped_early_leaves_the_staging_folder_as_it_is(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resumed restore stops at its first file (Ctrl-C, a store out of reach):
    nothing is moved into place (the file the kill cut short must not be), nothing the
    killed restore finished is lost; the next restore resumes it all."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = killed_restore(store, tid, tmp_path, out)
    write(stage / "b" / "c" / "stale", b"another snapshot's, deeper")
    before = inodes(stage)

    def _file(self, e, target, existing) -> None:  # type: ignore[no-untyped-def]
        raise Interrupted

    with monkeypatch.context() as m:
        m.setattr(Restorer, "_file", _file)
        with pytest.raises(Interrupted):
            restore_tree(store, tid, out, chunking=store.keys.chunking, workers=1)
    assert os.listdir(out) == [STAGE]
    kept = {p: i for p, i in inodes(stage).items() if p in before}
    assert kept == {p: i for p, i in before.items() if p not in ("stale",)}
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert st.errors == [] and st.skipped == 11
    assert_same_tree(src, out)
    assert temp_files(out) == [] and not (out / "b" / "c" / "stale").exists()


def test_a_file_that_fails_in_a_resume_leaves_nothing_of_the_killed_restores(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that cannot be written during the resume (a full disk, say) is reported;
    what the killed restore left under its name (here cut short) is not moved into place."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    killed_restore(store, tid, tmp_path, out)
    real = restore_writer.write_content

    def write_content(out_fd, e, get_many) -> None:  # type: ignore[no-untyped-def]
        if e.name == b"big":
            raise OSError(28, "No space left on device")
        return real(out_fd, e, get_many)

    monkeypatch.setattr(restore_writer, "write_content", write_content)
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert [e for e in st.errors if e.startswith("big: ")]
    assert not (out / "big").exists() and temp_files(out) == []
    assert_same_tree(src, out, ignore={b"big"})


def test_a_staging_folder_in_a_setgid_folder_is_resumed(
    store: Store, src: Path, tmp_path: Path
) -> None:
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o2755)  # a shared group folder: folders made in it are setgid
    stage = killed_restore(store, tid, tmp_path, out)
    os.chmod(stage, 0o2700)  # as mkdir(0700) makes it there
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert st.errors == [] and st.skipped == 11
    assert_restored_without_stale(src, out)


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder is made as root")
def test_another_users_folder_held_under_a_staging_name_keeps_no_restore_out(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """Another user's folder under a staging name (owned neither by this user nor as the
    target is) is removed without being asked whether it is held: whoever holds it
    cannot keep the restore out."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    planted = out / ".lamina-restore-mallory"
    planted.mkdir(parents=True, mode=0o755)
    os.chown(planted, 1234, 1234)
    held = os.open(planted, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert restore_tree(store, tid, out, chunking=store.keys.chunking).errors == []
    finally:
        os.close(held)
    assert_same_tree(src, out)
    assert temp_files(out) == []


def test_a_restore_onto_files_leaves_a_held_staging_folder_alone(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore onto what the target holds (not a whole restore into an empty folder)
    refuses, rather than removing the staging folder a running restore holds there."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = killed_restore(store, tid, tmp_path, out)
    write(out / "users-file", b"mine")
    write(out / ".lamina-restore-0000000000000009", b"a temporary file left behind")
    before = inodes(out)
    held = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
    walked: list[bool] = []
    monkeypatch.setattr(Restorer, "_walk", lambda *a: walked.append(True))
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UsageError, match="another restore is writing into"):
            restore_tree(store, tid, out, chunking=store.keys.chunking, delete_extra=True)
        assert inodes(out) == before and walked == []  # refused before touching anything
    finally:
        os.close(held)


def test_a_resume_without_special_files_publishes_none_the_killed_restore_made(
    store: Store, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "file", b"data" * 100, MTIME)
    os.mkfifo(src / "pipe")
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = out / STAGE
    stage.mkdir(parents=True, mode=0o700)
    os.mkfifo(stage / "pipe")  # made by a killed restore that made special files
    st = restore_tree(store, tid, out, chunking=store.keys.chunking, special_files=False)
    assert st.errors == [] and st.specials_skipped == 1
    assert sorted(os.listdir(out)) == ["file"]


def test_a_failed_file_never_removes_a_file_put_under_its_name_since(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose writing fails is removed only if its name is still that file: a
    worker of a killed restore, failing late, must not remove the file a resumed restore
    has put there meanwhile (here: a file renamed over it before the failure)."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    real = restore_writer.write_content

    def write_content(out_fd, e, get_many) -> None:  # type: ignore[no-untyped-def]
        if e.name != b"big":
            return real(out_fd, e, get_many)
        (stage,) = temp_files(out)
        write(stage / "theirs", b"the resumed restore's big")
        os.rename(stage / "theirs", stage / "big")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(restore_writer, "write_content", write_content)
    st = restore_tree(store, tid, out, chunking=store.keys.chunking, workers=1)
    assert [e for e in st.errors if e.startswith("big")]
    assert (out / "big").read_bytes() == b"the resumed restore's big"


def test_a_new_staging_folder_that_is_not_the_restores_own_is_refused(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something put under the staging folder's name between its ``mkdir`` and its
    ``open`` (here: a file planted in it) is refused, and left alone."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    out.mkdir()
    real = os.mkdir

    def mkdir(path, mode=0o777, *, dir_fd=None) -> None:  # type: ignore[no-untyped-def]
        real(path, mode, dir_fd=dir_fd)
        if os.fsencode(path).startswith(b".lamina-restore-"):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
            try:
                os.close(os.open("planted", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
            finally:
                os.close(fd)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(UsageError, match="staging folder was replaced"):
        restore_tree(store, tid, out, chunking=store.keys.chunking)
    (left,) = temp_files(out)
    assert os.listdir(left) == ["planted"]


@pytest.mark.parametrize("groups", [False, True])
def test_names_the_tree_has_apart_are_not_kept_as_one_inode_in_place(
    store: Store, tmp_path: Path, groups: bool
) -> None:
    """In place, one inode under two names the tree has apart (same content, other
    modes: two files, or two hard-link groups) is not kept for both: the metadata of one
    would be the other's."""
    src = tmp_path / "src"
    for name, mode in (("a", 0o600), ("x", 0o644)):
        write(src / name, b"same" * 100, MTIME)
        if groups:
            os.link(src / name, src / f"{name}2")
        os.chmod(src / name, mode)
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    write(out / "a", b"same" * 100, MTIME)
    os.link(out / "a", out / "x")
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert st.errors == []
    assert os.stat(out / "a").st_ino != os.stat(out / "x").st_ino
    if groups:
        assert os.stat(out / "a").st_ino == os.stat(out / "a2").st_ino
        assert os.stat(out / "x").st_ino == os.stat(out / "x2").st_ino
    assert_same_tree(src, out)


def test_a_file_at_a_sockets_name_in_a_resumed_staging_folder_is_removed(
    store: Store, tmp_path: Path
) -> None:
    import socket

    src = tmp_path / "src"
    write(src / "file", b"data", MTIME)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(src / "sock"))
        tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = out / STAGE
    stage.mkdir(parents=True, mode=0o700)
    write(stage / "sock", b"another snapshot's private file")
    assert restore_tree(store, tid, out, chunking=store.keys.chunking).errors == []
    assert sorted(os.listdir(out)) == ["file"]


@pytest.mark.skipif(os.geteuid() != 0, reason="files of another owner are made as root")
def test_a_resume_that_keeps_no_owners_keeps_only_this_users_files(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """``--output`` (no owners kept) resuming what a restore that kept owners left: a file
    of another owner is written again, a folder becomes this user's (its group stays)."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = killed_restore(store, tid, tmp_path, out)
    os.chown(stage / "a" / "f1", 1234, 5678)
    st = restore_tree(store, tid, out, chunking=store.keys.chunking, same_owner=False)
    assert st.errors == [] and st.skipped == 10
    assert os.stat(out / "a" / "f1").st_uid == 0
    folder = os.stat(out / "b" / "c")
    assert folder.st_uid == 0 and folder.st_gid == 5678


@pytest.mark.skipif(os.geteuid() != 0, reason="folders of another owner are made as root")
def test_a_new_staging_folder_of_another_owner_is_refused_unless_the_target_is_theirs(
    tmp_path: Path,
) -> None:
    """Mode aside (vfat or CIFS show every folder with the mount's mode), the staging
    folder must be this user's, or owned as the target is (the mount's owner, NFS's
    squashed root)."""
    made = tmp_path / ".lamina-restore-x"
    made.mkdir(mode=0o755)
    os.chown(made, 1234, 1234)
    fd, root = os.open(made, os.O_RDONLY | os.O_DIRECTORY), os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(UsageError, match="staging folder was replaced"):
            check_new(fd, root, tmp_path)
        os.chown(tmp_path, 1234, 1234)
        check_new(fd, root, tmp_path)
    finally:
        os.close(fd)
        os.close(root)


def test_another_snapshots_attributes_do_not_survive_on_what_a_resume_keeps(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """A file or folder kept in place loses the user attributes and file capability the
    tree's entry does not have (another snapshot's)."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = killed_restore(store, tid, tmp_path, out)
    for p in (stage / "a" / "f0", stage / "a"):
        os.setxattr(p, "user.stale", b"another snapshot's")
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert st.errors == [] and st.skipped == 11
    for p in (out / "a" / "f0", out / "a"):
        assert "user.stale" not in os.listxattr(p)
    assert_same_tree(src, out)


def test_a_failed_rename_leaves_no_temporary_file(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming, a file written under a temporary name that cannot be renamed into place
    (a quota) leaves neither that name nor the killed restore's file to be published."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    killed_restore(store, tid, tmp_path, out)
    real = os.rename

    def rename(a, b, **kw) -> None:  # type: ignore[no-untyped-def]
        if b == b"big":
            raise OSError(122, "Disk quota exceeded")
        real(a, b, **kw)

    monkeypatch.setattr(os, "rename", rename)
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert [e for e in st.errors if e.startswith("big: ")]
    assert temp_files(out) == [] and not (out / "big").exists()


def test_a_staging_folder_of_another_mode_held_by_a_running_restore_is_not_removed(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """On vfat or CIFS a staging folder shows the mount's mode (0755, say): one a running
    restore holds is still never removed by another restore."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = killed_restore(store, tid, tmp_path, out)
    os.chmod(stage, 0o755)
    before = inodes(stage)
    held = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UsageError, match="another restore is writing into"):
            restore_tree(store, tid, out, chunking=store.keys.chunking)
        assert inodes(stage) == before
    finally:
        os.close(held)


def test_a_held_staging_folder_deeper_in_the_target_is_left_alone(
    store: Store, src: Path, tmp_path: Path
) -> None:
    """Restoring onto a folder that holds, deeper down, the staging folder of a restore
    running into a sub-folder: that staging folder is not removed under it."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    restore_tree(store, tid, out, chunking=store.keys.chunking)
    running = out / "a" / STAGE
    running.mkdir(mode=0o700)
    write(running / "being-written", b"x")
    if os.geteuid() == 0:  # another user's restore, into a folder of root's they may write
        os.chown(running, 1234, 1234)
    held = os.open(running, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert restore_tree(store, tid, out, chunking=store.keys.chunking).errors == []
        assert (running / "being-written").exists()
    finally:
        os.close(held)


def test_a_resumed_folder_whose_metadata_fails_is_published_as_a_new_one_is(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder the killed restore left with another snapshot's mode (0777), whose own
    metadata then cannot be set: moved into place 0700, as a folder made anew would be."""
    tid, _ = scan_tree(store, src)
    out = tmp_path / "out"
    stage = killed_restore(store, tid, tmp_path, out)
    os.chmod(stage / "a", 0o777)
    real = restore_meta.Metadata.on_fd

    def on_fd(self, fd, e, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if e.type == "dir":
            raise OSError(5, "Input/output error")
        real(self, fd, e, *args, **kwargs)

    monkeypatch.setattr(restore_meta.Metadata, "on_fd", on_fd)
    st = restore_tree(store, tid, out, chunking=store.keys.chunking)
    assert [e for e in st.errors if e.startswith("a: ")]
    assert stat.S_IMODE(os.stat(out / "a").st_mode) == 0o700


def test_an_error_setting_a_folders_metadata_in_a_file_job_is_not_lost(
    store: Store, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error setting a folder's metadata once its last file job is done
    (on a worker thread) fails the restore, rather than vanish with that thread."""
    tid, _ = scan_tree(store, src)
    real = restore_meta.Metadata.on_fd

    def on_fd(self, fd, e, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if e.type == "dir" and threading.current_thread() is not threading.main_thread():
            raise ValueError("a folder's metadata")
        real(self, fd, e, *args, **kwargs)

    monkeypatch.setattr(restore_meta.Metadata, "on_fd", on_fd)
    with pytest.raises(ValueError, match="a folder's metadata"):
        restore_tree(store, tid, tmp_path / "out", chunking=store.keys.chunking, workers=4)


def test_a_folder_made_listable_is_never_reached_through_a_symlink_swapped_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``open_dir`` on a folder it may not list: if someone swaps a symlink in for it
    once it is refused (at the next call on its name), the chmod that would make it
    listable never reaches the symlink's target (a file of this user's elsewhere)."""
    victim = tmp_path / "key"
    victim.write_bytes(b"secret")
    os.chmod(victim, 0o600)
    folder = tmp_path / "shared"
    (folder / ".lamina-restore-x").mkdir(parents=True)
    real_open, real_stat = os.open, os.stat

    def swap() -> None:
        if not (folder / ".lamina-restore-x").is_symlink():
            os.rmdir(folder / ".lamina-restore-x")
            os.symlink(victim, folder / ".lamina-restore-x")

    def opened(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if path == b".lamina-restore-x" and flags & os.O_PATH:
            swap()
        elif path == b".lamina-restore-x":
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def stated(*args, **kwargs):  # type: ignore[no-untyped-def]
        got = real_stat(*args, **kwargs)
        if args and args[0] == b".lamina-restore-x":
            swap()
        return got

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        monkeypatch.setattr(os, "open", opened)
        monkeypatch.setattr(os, "stat", stated)
        with pytest.raises(OSError):
            open_dir(fd, b".lamina-restore-x")
    finally:
        monkeypatch.undo()
        os.close(fd)
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600
