"""A folder of a snapshot as a ``.tar`` (POSIX pax) or ``.zip`` stream, written as it is read.

Memory stays at one chunk whatever the folder's size: tar headers are written by
hand around the file's chunks; zip uses data descriptors on a write-only sink.
Files, folders and symlinks are archived; devices, fifos and sockets are skipped.
"""

from __future__ import annotations

import datetime as dt
import io
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator

from lamina.tree.model import Entry

BLOCK = 512
Content = Callable[[Entry], Iterator[bytes]]


def tar_stream(entries: Iterable[tuple[str, Entry]], content: Content) -> Iterator[bytes]:
    for path, e in entries:
        info = tarfile.TarInfo(path)
        info.mode = e.mode & 0o7777
        info.uid, info.gid = e.uid, e.gid
        info.uname, info.gname = e.user, e.group
        info.mtime = e.mtime // 1_000_000_000
        if e.type == "dir":
            info.type = tarfile.DIRTYPE
        elif e.type == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = (e.target or b"").decode("utf-8", "surrogateescape")
        elif e.type == "file":
            info.type = tarfile.REGTYPE
            info.size = e.size
        else:
            continue
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if e.type == "file":
            written = 0
            for chunk in content(e):
                written += len(chunk)
                yield chunk
            if written % BLOCK:
                yield b"\0" * (BLOCK - written % BLOCK)
    yield b"\0" * (2 * BLOCK)


class _Sink(io.RawIOBase):
    """A write-only, unseekable file: zipfile then writes data descriptors."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.parts.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _date(ns: int) -> tuple[int, int, int, int, int, int]:
    t = dt.datetime.fromtimestamp(max(ns // 1_000_000_000, 315532800), dt.UTC)
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


def zip_stream(entries: Iterable[tuple[str, Entry]], content: Content) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, e in entries:
            if e.type == "dir":
                info = zipfile.ZipInfo(path + "/", _date(e.mtime))
                info.external_attr = ((stat.S_IFDIR | (e.mode & 0o7777)) << 16) | 0x10
                zf.writestr(info, b"")
            elif e.type == "symlink":
                info = zipfile.ZipInfo(path, _date(e.mtime))
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, e.target or b"")
            elif e.type == "file":
                info = zipfile.ZipInfo(path, _date(e.mtime))
                info.external_attr = (stat.S_IFREG | (e.mode & 0o7777)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                info.file_size = e.size
                with zf.open(info, "w", force_zip64=e.size > 0x7FFFFFFF) as w:
                    for chunk in content(e):
                        w.write(chunk)
                        if out := sink.take():
                            yield out
            if out := sink.take():
                yield out
    yield sink.take()
