"""Folder downloads: the streamed .tar and .zip read back with the standard library."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator

from lamina.server.console.archive import tar_stream, zip_stream
from lamina.tree.model import Entry

LONG = "d" * 120  # past ustar's 100-byte names: pax headers carry it
DATA = {b"f": [b"x" * 1000, b"y" * 3], b"big": [bytes(range(256)) * 4096] * 3}
NS = 1_700_000_000 * 10**9


def entries() -> list[tuple[str, Entry]]:
    return [
        ("top", Entry(b"top", "dir", mode=0o755, mtime=NS)),
        (
            "top/f",
            Entry(b"f", "file", mode=0o640, uid=1000, gid=1000, user="alice", size=1003, mtime=NS),
        ),
        ("top/big", Entry(b"big", "file", size=3 * 256 * 4096, mtime=NS)),
        ("top/link", Entry(b"link", "symlink", target=b"f", mtime=NS)),
        (f"top/{LONG}", Entry(LONG.encode(), "file", size=0, mtime=NS)),
        ("top/fifo", Entry(b"fifo", "fifo", mtime=NS)),
    ]


def content(e: Entry) -> Iterator[bytes]:
    yield from DATA.get(e.name, [])


def test_tar_stream_is_a_pax_archive_with_owners_links_and_long_names() -> None:
    raw = b"".join(tar_stream(entries(), content))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = tar.getnames()
        assert names == ["top", "top/f", "top/big", "top/link", f"top/{LONG}"]  # no fifo
        f = tar.getmember("top/f")
        assert (f.mode, f.uid, f.uname, f.mtime) == (0o640, 1000, "alice", 1_700_000_000)
        assert tar.extractfile("top/f").read() == b"x" * 1000 + b"yyy"  # type: ignore[union-attr]
        assert tar.extractfile("top/big").read() == b"".join(DATA[b"big"])  # type: ignore[union-attr]
        assert tar.getmember("top/link").issym() and tar.getmember("top/link").linkname == "f"
        assert tar.getmember("top").isdir()


def test_zip_stream_reads_back_file_by_file_with_folders_and_symlinks() -> None:
    chunks = list(zip_stream(entries(), content))
    assert len(chunks) > 3  # written as it goes, not in one piece at the end
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as z:
        assert z.testzip() is None
        assert z.namelist() == ["top/", "top/f", "top/big", "top/link", f"top/{LONG}"]
        assert z.read("top/f") == b"x" * 1000 + b"yyy"
        assert z.read("top/big") == b"".join(DATA[b"big"])
        assert z.read("top/link") == b"f"
        assert (z.getinfo("top/link").external_attr >> 16) & 0o170000 == 0o120000
