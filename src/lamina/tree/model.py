"""Tree objects: one per directory, deterministic msgpack, entries sorted by name.

Tree object, format version 1 (msgpack map, keys in this order)::

    {"v": 1, "entries": [entry, ...]}          entries sorted by name (bytewise), names unique

    entry (keys in this order; keys marked ? only when they apply):
      "name"      bytes   one path component: not empty, not "." or "..", no "/" or NUL
      "type"      str     file | dir | symlink | chardev | blockdev | fifo | socket
      "mode"      int     permission bits with setuid/setgid/sticky (st_mode & 0o7777)
      "uid" "gid" int
      "user" "group" str  names at scan time ("" when unknown)
      "mtime"     int     nanoseconds since the epoch
      "size"      int     file: apparent size in bytes; others 0
      "xattrs"?   [[name bytes, value bytes], ...]  sorted by name (POSIX ACLs, capabilities)
      "target"?   bytes   symlink target, as stored on disk
      "rdev"?     int     device number of a chardev/blockdev
      "hardlink"? bytes   16-byte key shared by every entry of one hard-link group
      "content"?  [bytes(32) | int, ...]  file: chunk ids in order; an int is a hole of that size
      "subtree"?  bytes(32)  dir: the id of the directory's tree object

A tree's id is keyed BLAKE3-256 of its encoding, so identical directories share
one object and a diff can skip them by comparing ids.
"""

from __future__ import annotations

import functools
import itertools
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

from lamina.errors import IntegrityError, LaminaError
from lamina.tree.names import check_name

TREE_VERSION = 1
ID_SIZE = 32
TYPES = ("file", "dir", "symlink", "chardev", "blockdev", "fifo", "socket")
#: Bounds of what the OS calls a restore makes accept (uid_t, dev_t, off_t):
#: a larger number is damage, not a reason to crash with OverflowError.
MAX_ID = 2**32
MAX_DEV = 2**64
MAX_SIZE = 2**63


@dataclass(slots=True)
class Entry:
    name: bytes
    type: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime: int = 0
    size: int = 0
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    target: bytes | None = None
    rdev: int | None = None
    hardlink: bytes | None = None
    content: list[bytes | int] | None = None
    subtree: bytes | None = None

    def encode(self) -> dict[str, object]:
        d: dict[str, object] = {
            "name": self.name,
            "type": self.type,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "user": self.user,
            "group": self.group,
            "mtime": self.mtime,
            "size": self.size,
        }
        if self.xattrs:
            d["xattrs"] = [[k, v] for k, v in sorted(self.xattrs)]
        if self.target is not None:
            d["target"] = self.target
        if self.rdev is not None:
            d["rdev"] = self.rdev
        if self.hardlink is not None:
            d["hardlink"] = self.hardlink
        if self.content is not None:
            d["content"] = self.content
        if self.subtree is not None:
            d["subtree"] = self.subtree
        return d

    def same_content(self, other: Entry) -> bool:
        """The one definition of "same content": a file's size and chunk ids (holes
        included), a symlink's target, a device's number; folders, FIFOs and sockets
        of one type are the same (a folder's content is its entries, compared apart)."""
        if self.type != other.type:
            return False
        if self.type == "file":
            return self.size == other.size and self.content == other.content
        if self.type == "symlink":
            return self.target == other.target
        if self.type in ("chardev", "blockdev"):
            return self.rdev == other.rdev
        return True

    def same_metadata(self, other: Entry) -> bool:
        return (
            self.type == other.type
            and self.mode == other.mode
            and (self.uid, self.gid) == (other.uid, other.gid)
            and self.mtime == other.mtime
            and sorted(self.xattrs) == sorted(other.xattrs)
            and self.target == other.target
            and self.rdev == other.rdev
        )

    def chunk_ids(self) -> Iterator[bytes]:
        for c in self.content or ():
            if isinstance(c, bytes):
                yield c


def encode_tree(entries: list[Entry]) -> bytes:
    entries = sorted(entries, key=lambda e: e.name)
    for a, b in itertools.pairwise(entries):
        if a.name == b.name:
            raise IntegrityError(f"duplicate name in tree: {a.name!r}")
    return msgpack.packb(
        {"v": TREE_VERSION, "entries": [e.encode() for e in entries]}, use_bin_type=True
    )


def _int(d: dict[str, object], key: str, default: int | None = None) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise IntegrityError(f"tree entry field {key!r} must be an integer, found {v!r:.40}")
    return v


def _id(v: object, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != ID_SIZE:
        raise IntegrityError(f"tree entry {what} must be a {ID_SIZE}-byte id")
    return v


def decode_entry(d: object) -> Entry:
    """One entry of a tree object, validated: hostile input raises IntegrityError.

    It runs once for every entry of every tree a server takes in, so the common case
    is tested first and cheaply: fields of exactly the types msgpack gives (``type(v)
    is int``); anything else goes through the general checks (``_int``, ``_id``),
    which refuse, or accept, exactly what they always did. Most entries are files of
    the ten keys every file has and no other (``_file_entry``)."""
    if type(d) is dict and len(d) == 10:
        e = _file_entry(d)
        if e is not None:
            return e
    if not isinstance(d, dict):
        raise IntegrityError("tree entry is not a map")
    get = d.get
    name = get("name")
    if not isinstance(name, bytes):
        raise IntegrityError("tree entry has no name")
    check_name(name)
    typ = get("type")
    if typ not in TYPES:
        raise IntegrityError(f"tree entry {name!r} has unknown type {typ!r}")
    if type(typ) is not str:
        typ = str(typ)
    mode, uid, gid, mtime, size = get("mode"), get("uid"), get("gid"), get("mtime"), get("size", 0)
    if not (
        type(mode) is int
        and type(uid) is int
        and type(gid) is int
        and type(mtime) is int
        and type(size) is int
    ):
        mode, uid, gid = _int(d, "mode"), _int(d, "uid"), _int(d, "gid")
        mtime, size = _int(d, "mtime"), _int(d, "size", 0)
    if not (0 <= size < MAX_SIZE and 0 <= uid < MAX_ID and 0 <= gid < MAX_ID):
        raise IntegrityError(f"tree entry {name!r} has a negative or out-of-range size or id")
    user, group = get("user") or "", get("group") or ""
    if type(user) is not str or type(group) is not str:
        user, group = str(user), str(group)
    xattrs: list[tuple[bytes, bytes]] = []
    raw_xattrs = get("xattrs")
    if raw_xattrs:
        if not isinstance(raw_xattrs, list):
            raise IntegrityError(f"tree entry {name!r}: xattrs must be a list")
        for pair in raw_xattrs:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(x, bytes) for x in pair)
            ):
                raise IntegrityError(f"tree entry {name!r}: malformed xattr")
            xattrs.append((pair[0], pair[1]))
    target = rdev = hardlink = content = subtree = None
    if typ == "file":
        content = _content(name, get("content", []))
    elif typ == "dir":
        subtree = _id(get("subtree"), "subtree")
    elif typ == "symlink":
        target = get("target")
        if not isinstance(target, bytes) or not target or b"\0" in target:
            raise IntegrityError(f"symlink {name!r} has no valid target")
    elif typ in ("chardev", "blockdev"):
        rdev = _int(d, "rdev")
        if not 0 <= rdev < MAX_DEV:
            raise IntegrityError(f"device {name!r} has an out-of-range device number")
    if "hardlink" in d:
        hardlink = d["hardlink"]
        if not isinstance(hardlink, bytes) or len(hardlink) != 16:
            raise IntegrityError(f"tree entry {name!r}: malformed hardlink key")
    return Entry(
        name,
        typ,
        mode & 0o7777,
        uid,
        gid,
        user,
        group,
        mtime,
        size,
        xattrs,
        target,
        rdev,
        hardlink,
        content,
        subtree,
    )


def _file_entry(d: dict[str, object]) -> Entry | None:
    """The common entry, checked as ``decode_entry`` checks it: a file of exactly the ten
    keys (name, type, mode, uid, gid, user, group, mtime, size, content; with ten keys
    all present there is room for no xattrs, target, rdev, hardlink or subtree), each of
    the type msgpack gives, its content chunk ids of 32 bytes. None: any other entry,
    left to the general checks, which accept or refuse it."""
    try:
        name, mode, uid, gid = d["name"], d["mode"], d["uid"], d["gid"]
        user, group, mtime, size = d["user"], d["group"], d["mtime"], d["size"]
        content, typ = d["content"], d["type"]
    except KeyError:
        return None
    if not (
        typ == "file"
        and type(name) is bytes
        and type(mode) is int
        and type(uid) is int
        and type(gid) is int
        and type(user) is str
        and type(group) is str
        and type(mtime) is int
        and type(size) is int
        and type(content) is list
        and 0 <= size < MAX_SIZE
        and 0 <= uid < MAX_ID
        and 0 <= gid < MAX_ID
    ):
        return None
    check_name(name)
    for c in content:  # (the list msgpack made, kept when every item is a chunk id)
        if type(c) is not bytes or len(c) != ID_SIZE:
            content = _content(name, content)
            break
    return Entry(
        name, "file", mode & 0o7777, uid, gid, user, group, mtime, size, [],
        None, None, None, content, None,
    )  # fmt: skip


def _content(name: bytes, content: object) -> list[bytes | int]:
    """A file's chunk ids and holes, checked (``decode_entry``)."""
    if not isinstance(content, list):
        raise IntegrityError(f"file {name!r}: content must be a list")
    out: list[bytes | int] = []
    for c in content:
        if type(c) is bytes and len(c) == ID_SIZE:
            out.append(c)
        elif isinstance(c, int) and not isinstance(c, bool):
            if not 0 < c < MAX_SIZE:
                raise IntegrityError(f"file {name!r}: hole of size {c}")
            out.append(c)
        else:
            out.append(_id(c, "chunk id"))
    return out


def decode_tree(data: bytes) -> list[Entry]:
    """Parse and validate a tree object; hostile input raises IntegrityError.

    A tree is first decoded into typed structs, checked in C (``decode_typed``: msgspec,
    2-3 times faster), which takes only what the general checks accept and makes the
    same entries of it; anything else it leaves to them (``_decode_checked``), which
    accept or refuse it as they always did."""
    entries = decode_typed(data)
    if entries is None:
        entries = _decode_checked(data)
    for a, b in itertools.pairwise(entries):
        if a.name >= b.name:
            raise IntegrityError(f"tree entries not sorted or not unique at {b.name!r}")
    return entries


def _decode_checked(data: bytes) -> list[Entry]:
    """A tree's entries by the general checks (their order is checked by the caller)."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:  # TypeError: a list as a map key
        raise IntegrityError(f"tree object is not valid msgpack: {e}") from e
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc.get("v") != TREE_VERSION:
        found = doc.get("v") if isinstance(doc, dict) else None
        raise IntegrityError(f"unsupported tree version {found!r} (expected {TREE_VERSION})")
    raw = doc.get("entries")
    if not isinstance(raw, list):
        raise IntegrityError("tree object has no entry list")
    return [decode_entry(d) for d in raw]


class _Irregular(Exception):
    """What ``decode_typed`` leaves to the general checks."""


@functools.cache
def _typed_decoder() -> Callable[[bytes], Any]:
    """msgspec's decoder of a tree into typed structs, made at its first use (importing
    msgspec costs ~35 ms, which commands that read no tree need not pay). Each type is
    as narrow as the general checks or narrower; an optional field is either absent or
    of its type (``UNSET``: a present ``None`` is left to the general checks); a key
    that is not a field is left to them too (they read it: its UTF-8 is checked)."""
    from typing import Annotated, Literal

    import msgspec
    from msgspec import UNSET, Meta, UnsetType

    uint32 = Annotated[int, Meta(ge=0, le=MAX_ID - 1)]
    chunk = Annotated[bytes, Meta(min_length=ID_SIZE, max_length=ID_SIZE)]
    hole = Annotated[int, Meta(gt=0, le=MAX_SIZE - 1)]

    # (``defstruct``: this module's annotations are strings, and these types are local)
    typed_entry = msgspec.defstruct(
        "TypedEntry",
        [
            ("name", bytes),
            ("type", Literal["file", "dir", "symlink", "chardev", "blockdev", "fifo", "socket"]),
            ("mode", int),
            ("uid", uint32),
            ("gid", uint32),
            ("mtime", int),
            ("user", str, ""),
            ("group", str, ""),
            ("size", Annotated[int, Meta(ge=0, le=MAX_SIZE - 1)], 0),
            ("xattrs", list[tuple[bytes, bytes]] | UnsetType, UNSET),
            ("target", bytes | UnsetType, UNSET),
            ("rdev", int | UnsetType, UNSET),
            ("hardlink", Annotated[bytes, Meta(min_length=16, max_length=16)] | UnsetType, UNSET),
            ("content", list[chunk | hole] | UnsetType, UNSET),
            ("subtree", chunk | UnsetType, UNSET),
        ],
        forbid_unknown_fields=True,  # skipped unread, a key's bytes would escape the checks
    )
    entry_list: Any = list[typed_entry]  # type: ignore[valid-type]  # (a type made at run time)
    typed_tree = msgspec.defstruct(
        "TypedTree", [("v", Literal[1]), ("entries", entry_list)], forbid_unknown_fields=True
    )

    assert TREE_VERSION == 1  # the struct above is version 1's
    decode: Callable[[bytes], Any] = msgspec.msgpack.Decoder(typed_tree).decode

    def entries(data: bytes) -> list[Entry]:
        out = []
        for t in decode(data).entries:
            name, typ = t.name, t.type
            check_name(name)
            content: list[bytes | int] | None = None
            target: bytes | None = None
            rdev: int | None = None
            subtree: bytes | None = None
            if typ == "file":
                content = t.content if isinstance(t.content, list) else []
            elif typ == "dir":
                if not isinstance(t.subtree, bytes):
                    raise _Irregular
                subtree = t.subtree
            elif typ == "symlink":
                if not isinstance(t.target, bytes) or not t.target or b"\0" in t.target:
                    raise _Irregular
                target = t.target
            elif typ in ("chardev", "blockdev"):
                if not isinstance(t.rdev, int) or not 0 <= t.rdev < MAX_DEV:
                    raise _Irregular
                rdev = t.rdev
            xattrs = t.xattrs if isinstance(t.xattrs, list) else []
            hardlink = t.hardlink if isinstance(t.hardlink, bytes) else None
            e = Entry(
                name, typ, t.mode & 0o7777, t.uid, t.gid, t.user, t.group, t.mtime, t.size,
                xattrs, target, rdev, hardlink, content, subtree,
            )  # fmt: skip
            out.append(e)
        return out

    def guarded(data: bytes) -> Any:
        try:
            return entries(data)
        except (msgspec.MsgspecError, _Irregular, LaminaError):
            return None  # the general checks decide, and word the refusal

    return guarded


def decode_typed(data: bytes) -> list[Entry] | None:
    """A tree's entries as ``_decode_checked`` makes them, decoded into typed structs;
    None: anything those structs do not take (left to the general checks)."""
    result: list[Entry] | None = _typed_decoder()(data)
    return result


def references(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """``(subtree ids, chunk ids)`` a tree object names: what the collector and check walk."""
    trees: list[bytes] = []
    chunks: list[bytes] = []
    for e in decode_tree(data):
        if e.subtree is not None:
            trees.append(e.subtree)
        chunks.extend(e.chunk_ids())
    return trees, chunks


#: ``stat.S_IFMT(st_mode)`` -> the entry type (``file_type``)
FILE_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def file_type(mode: int) -> str | None:
    """The entry type of a file of ``mode`` (``st_mode``), or None for none Lamina keeps."""
    return FILE_TYPES.get(stat.S_IFMT(mode))
