"""A restored entry's metadata, and the special files a restore makes.

Order per entry: owner, (POSIX ACLs inherited from a default ACL but absent from
the entry are dropped), mode, extended attributes (capabilities survive because
they come after chown), times. Every call goes through a descriptor or a name
relative to a folder's descriptor, never following a symlink.

FIFOs and device nodes are made under a temporary name, and their metadata is set
through an ``O_PATH|O_NOFOLLOW`` descriptor checked with ``fstat`` (by
``/proc/self/fd/N``): a symlink swapped in after ``mknod`` is never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable

from lamina.tree.model import Entry

_SETID = stat.S_ISUID | stat.S_ISGID
ACLS = (b"system.posix_acl_access", b"system.posix_acl_default")
#: Extended attributes a restore removes from a file or folder it keeps or makes when
#: the tree's entry does not have them (besides ``ACLS``): another snapshot's user data,
#: or a file capability it must not keep. Other ``security.*`` names (SELinux, SMACK
#: labels) are the host's policy and stay.
_DROPPED = (b"user.", b"trusted.", b"security.capability")
_NODE_KINDS = {"fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK}


class Metadata:
    """Applies entries' metadata for one restore; reports what it could not set to ``report``.

    ``special_files``: keep setuid/setgid bits. ``same_owner``: chown to the tree's owners
    (a failure to is an error only for root)."""

    def __init__(
        self, *, special_files: bool, same_owner: bool, report: Callable[[str], None]
    ) -> None:
        self.special_files = special_files
        self.same_owner = same_owner
        self._report = report
        self._is_root = os.geteuid() == 0

    def mode(self, e: Entry) -> int:
        """The entry's mode, without setuid/setgid on a file unless special files are wanted."""
        return e.mode if self.special_files or e.type == "dir" else e.mode & ~_SETID

    def on_fd(
        self,
        fd: int,
        e: Entry,
        inherits_acl: bool = True,
        owned: bool = False,
        moded: bool = False,
    ) -> None:
        """Set ``e``'s metadata on the open file or folder ``fd``. ``inherits_acl``: it may
        carry ACLs from its folder's default ACL. ``owned``: it already has ``e``'s owner.
        ``moded``: it was created with ``e``'s mode (``FileWriter._create_mode``)."""
        if not owned and self.same_owner:
            self._chown(lambda: os.fchown(fd, e.uid, e.gid))
        if inherits_acl:
            self._drop_acls(e, lambda: os.listxattr(fd), lambda name: os.removexattr(fd, name))
        if not moded:
            os.fchmod(fd, self.mode(e))
        self._xattrs(e, lambda name, value: os.setxattr(fd, name, value))
        os.utime(fd, ns=(e.mtime, e.mtime))

    def on_symlink(self, fd: int, e: Entry) -> None:
        """Set a symlink's metadata: no descriptor to use, so a name relative to folder
        ``fd`` that is never followed. /proc/self/fd/N keeps the xattr calls from following
        a symlink (the *xattr calls take no dir_fd). A symlink has no ACL and no mode."""
        if self.same_owner:
            self._chown(lambda: os.chown(e.name, e.uid, e.gid, dir_fd=fd, follow_symlinks=False))
        where = f"/proc/self/fd/{fd}/".encode() + e.name
        if e.xattrs:
            self._xattrs(
                e, lambda name, value: os.setxattr(where, name, value, follow_symlinks=False)
            )
        os.utime(e.name, ns=(e.mtime, e.mtime), dir_fd=fd, follow_symlinks=False)

    def make_node(self, e: Entry, fd: int, tmp: bytes, replace_dir: Callable[[], None]) -> None:
        """A FIFO or device node: made as ``tmp`` in folder ``fd``, its metadata set through
        an ``O_PATH`` descriptor of the very node made (never a symlink swapped in), then
        renamed to ``e.name`` (``replace_dir`` first removes a folder standing there)."""
        kind = _NODE_KINDS[e.type]
        os.mknod(tmp, kind | 0o600, e.rdev or 0, dir_fd=fd)
        try:
            node = os.open(tmp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                if stat.S_IFMT(os.fstat(node).st_mode) != kind:
                    raise OSError(errno.EEXIST, "replaced while being restored")
                # /proc/self/fd/N leads to the node itself: chmod and chown on an O_PATH
                # descriptor fail with EBADF, through its proc link they reach the inode.
                where = f"/proc/self/fd/{node}"
                if self.same_owner:
                    self._chown(lambda: os.chown(where, e.uid, e.gid))
                self._drop_acls(
                    e, lambda: os.listxattr(where), lambda name: os.removexattr(where, name)
                )
                os.chmod(where, self.mode(e))
                self._xattrs(e, lambda name, value: os.setxattr(where, name, value))
                os.utime(where, ns=(e.mtime, e.mtime))
            finally:
                os.close(node)
            replace_dir()
            os.rename(tmp, e.name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise

    def _chown(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except PermissionError:
            if self._is_root:
                raise

    def _xattrs(self, e: Entry, setxattr: Callable[[bytes, bytes], None]) -> None:
        for name, value in e.xattrs:
            try:
                setxattr(name, value)
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
                self._report(f"{e.name!r}: xattr {name!r}: {err.strerror}")

    def _drop_acls(
        self, e: Entry, listxattr: Callable[[], list[str]], removexattr: Callable[[bytes], None]
    ) -> None:
        """Remove POSIX ACLs the entry does not have (a new inode inherits them from a
        directory's default ACL, which would leave the restored copy with rights the
        snapshot never gave), and the other attributes of ``_DROPPED`` it does not have (on
        a file or folder kept in place: another snapshot's)."""
        keep = {name for name, _ in e.xattrs}
        try:
            present = [os.fsencode(n) for n in listxattr()]
        except OSError:
            return
        for name in present:
            if name not in keep and (name in ACLS or name.startswith(_DROPPED)):
                try:
                    removexattr(name)
                except OSError as err:
                    if err.errno != errno.ENODATA:
                        self._report(f"{e.name!r}: xattr {name!r}: {err.strerror}")
