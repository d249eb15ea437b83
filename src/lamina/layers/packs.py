"""Driver packs: a folder (sent as a tar) of loose files and ``.deb`` packages -> a tree.

The upload is hostile input. The outer archive is an uncompressed tar of the folder
(``lamina driver import`` makes it): regular files, folders and symlinks only, each
path relative, without ``..``. Loose files must sit under :data:`LOOSE_PREFIXES`
(firmware, kernel modules, modprobe/udev/initramfs configuration); a ``.deb`` at the
top of the folder is unpacked as dpkg would install it: its files, its
``/var/lib/dpkg/info/PKG.*`` files and its stanza in ``/var/lib/dpkg/status``
(``Status: install ok installed``), so the apply merges it into the endpoint's
package database per package, as an app layer's packages are. Maintainer scripts
are stored in ``info/`` as dpkg does, never run.

Bounds: :data:`MAX_ENTRIES` entries in all, :data:`MAX_FILE` per file and
:data:`MAX_UNPACKED` bytes unpacked in all (a compressed ``data.tar`` cannot
inflate past them). Anything else is refused with a ``UsageError`` naming it.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import io
import lzma
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import zstandard

from lamina.errors import TooLargeError, UsageError
from lamina.layers.merge import DPKG_STATUS
from lamina.store.blob import BlobKind
from lamina.tree.model import Entry
from lamina.tree.paths import Put, build_tree

#: Where a pack's loose files may go (paths from the root, without the leading slash).
LOOSE_PREFIXES = (
    "lib/firmware/",
    "usr/lib/firmware/",
    "lib/modules/",
    "usr/lib/modules/",
    "etc/modprobe.d/",
    "lib/modprobe.d/",
    "usr/lib/modprobe.d/",
    "etc/modules-load.d/",
    "usr/lib/modules-load.d/",
    "etc/depmod.d/",
    "etc/udev/rules.d/",
    "lib/udev/rules.d/",
    "usr/lib/udev/rules.d/",
    "etc/initramfs-tools/",
    "etc/dracut.conf.d/",
    "etc/X11/xorg.conf.d/",
)
MAX_ENTRIES = 200_000
MAX_FILE = 256 << 20
MAX_UNPACKED = 8 << 30
MAX_PATH = 4096
DPKG_INFO = "/var/lib/dpkg/info"
_PKG = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9.+~:-]{1,128}$")
_ARCH = re.compile(r"^[a-z0-9-]{1,32}$")
_CONTROL_MEMBERS = (
    "conffiles",
    "md5sums",
    "preinst",
    "postinst",
    "prerm",
    "postrm",
    "triggers",
    "shlibs",
    "symbols",
    "templates",
    "config",
)
#: chunk a buffer -> the chunks (the store's content-defined chunker)
Cut = Callable[[bytes], Iterator[memoryview]]


@dataclass
class BuiltPack:
    root: bytes
    files: int
    bytes: int
    packages: dict[str, str] = field(default_factory=dict)
    loose: list[str] = field(default_factory=list)

    @property
    def apps(self) -> dict[str, object]:
        return {
            "packages": self.packages,
            "debs": sorted(self.packages),
            "loose_files": len(self.loose),
        }


@dataclass(frozen=True)
class _Meta:
    """Owner and time of an entry (a deb's own; root and 0 for loose files)."""

    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime: int = 0

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_ROOT = _Meta()


class _Builder:
    def __init__(self, put: Put, cut: Cut) -> None:
        self.put, self.cut = put, cut
        self.files: dict[str, Entry] = {}
        self.dirs: dict[str, Entry] = {}
        self.owner: dict[str, str] = {}
        self.entries = 0
        self.unpacked = 0

    def count(self, size: int = 0) -> None:
        self.entries += 1
        self.unpacked += size
        if self.entries > MAX_ENTRIES:
            raise TooLargeError(f"the driver pack has more than {MAX_ENTRIES} entries")
        if size > MAX_FILE or self.unpacked > MAX_UNPACKED:
            raise TooLargeError(
                f"the driver pack unpacks to more than {MAX_UNPACKED} bytes "
                f"(or a file above {MAX_FILE})"
            )

    def add_file(
        self, path: str, data: bytes, who: str, mode: int = 0o644, meta: _Meta = _ROOT
    ) -> None:
        self.count(len(data))
        if path in self.files and self.owner[path] != who:
            raise UsageError(f"{path} is in both {self.owner[path]} and {who}")
        content: list[bytes | int] = [self.put(BlobKind.DATA, bytes(c)) for c in self.cut(data)]
        self.files[path] = Entry(
            name=b"",
            type="file",
            mode=mode,
            size=len(data),
            content=content,
            **meta.fields(),
        )
        self.owner[path] = who

    def add_symlink(self, path: str, target: str, who: str, meta: _Meta = _ROOT) -> None:
        self.count()
        if not target or len(target) > MAX_PATH or "\0" in target:
            raise UsageError(f"{path}: a symlink target must be 1 to {MAX_PATH} characters")
        if path in self.files and self.owner[path] != who:
            raise UsageError(f"{path} is in both {self.owner[path]} and {who}")
        self.files[path] = Entry(
            name=b"", type="symlink", mode=0o777, target=target.encode(), **meta.fields()
        )
        self.owner[path] = who

    def add_dir(self, path: str, mode: int = 0o755, meta: _Meta = _ROOT) -> None:
        self.count()
        if path in self.files:
            raise UsageError(f"{path} is both a folder and a file in the pack")
        self.dirs.setdefault(path, Entry(name=b"", type="dir", mode=mode, **meta.fields()))


def clean_path(name: str, where: str) -> str:
    """A tar member's name as an absolute path (``./lib/x`` -> ``/lib/x``), or refused."""
    if "\0" in name or len(name) > MAX_PATH:
        raise UsageError(f"{where}: a path is too long or holds a NUL byte")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or any(p == ".." for p in parts):
        raise UsageError(f"{where}: {name!r} leaves the pack (absolute or '..')")
    if any(len(p.encode(errors="surrogateescape")) > 255 for p in parts):
        raise UsageError(f"{where}: {name!r} has a name longer than 255 bytes")
    return "/" + "/".join(parts)


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    if m.size > MAX_FILE:
        raise TooLargeError(f"{m.name}: {m.size} bytes, a pack file may hold at most {MAX_FILE}")
    f = tar.extractfile(m)
    if f is None:
        raise UsageError(f"{m.name}: cannot be read")
    data = f.read(MAX_FILE + 1)
    if len(data) != m.size:
        raise UsageError(f"{m.name}: the archive is cut short")
    return data


def _read_folder(b: _Builder, tar: tarfile.TarFile, debs: list[tuple[str, bytes]]) -> None:
    for m in tar:
        path = clean_path(m.name, "the folder")
        if path == "/":
            continue
        rel = path[1:]
        if m.isfile() and "/" not in rel and rel.endswith(".deb"):
            debs.append((rel, _read_member(tar, m)))
            continue
        if m.isdir():
            if not any(p.startswith(rel + "/") or rel.startswith(p) for p in LOOSE_PREFIXES):
                raise UsageError(_outside(rel))
            b.add_dir(path)
            continue
        if not rel.startswith(LOOSE_PREFIXES):
            raise UsageError(_outside(rel))
        if m.isfile():
            b.add_file(path, _read_member(tar, m), "the folder", 0o755 if m.mode & 0o111 else 0o644)
        elif m.issym():
            b.add_symlink(path, m.linkname, "the folder")
        else:
            raise UsageError(f"{rel}: only files, folders and symlinks may be in a pack")


def build_pack(archive: IO[bytes], put: Put, cut: Cut) -> BuiltPack:
    """Unpack the upload (a tar of the folder) into a tree stored with ``put``."""
    b = _Builder(put, cut)
    debs: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=archive, mode="r|") as tar:
            _read_folder(b, tar, debs)
    except tarfile.TarError as e:
        raise UsageError(f"the upload is not a tar archive of the folder: {e}") from e
    packages: dict[str, str] = {}
    stanzas: list[str] = []
    for name, data in sorted(debs):
        pkg, version, stanza = _add_deb(b, name, data)
        if pkg in packages:
            raise UsageError(f"{name}: package {pkg} is in the pack twice")
        packages[pkg] = version
        stanzas.append(stanza)
    if stanzas:
        b.add_file(DPKG_STATUS, "".join(s + "\n\n" for s in stanzas).encode(), "dpkg")
    if not b.files:
        raise UsageError(
            "the folder holds no driver files: put them under lib/firmware, etc/modprobe.d, "
            "lib/modules, ... or add .deb files at its top"
        )
    files = {p: e for p, e in b.files.items()}
    size = sum(e.size for e in files.values())
    root = build_tree(put, files, b.dirs)
    loose = sorted(p for p, who in b.owner.items() if who == "the folder")
    return BuiltPack(root, len(files), size, packages, loose)


def _outside(rel: str) -> str:
    return (
        f"{rel}: a pack's loose files go under {', '.join(p.rstrip('/') for p in LOOSE_PREFIXES[:6])}, ... "
        "(other software comes as .deb files at the top of the folder)"
    )


# --- .deb -----------------------------------------------------------------------------
def _ar_members(data: bytes, name: str) -> dict[str, bytes]:
    """The members of an ``ar`` archive (a .deb), by name."""
    if not data.startswith(b"!<arch>\n"):
        raise UsageError(f"{name} is not a Debian package (no ar header)")
    out: dict[str, bytes] = {}
    pos = 8
    while pos < len(data):
        head = data[pos : pos + 60]
        if len(head) < 60 or head[58:60] != b"`\n":
            raise UsageError(f"{name}: damaged ar header at byte {pos}")
        member = head[:16].decode("ascii", errors="replace").strip().rstrip("/")
        size_text = head[48:58].decode("ascii", errors="replace").strip()
        if not size_text.isdigit():
            raise UsageError(f"{name}: damaged ar member size at byte {pos}")
        size = int(size_text)
        body = data[pos + 60 : pos + 60 + size]
        if len(body) != size:
            raise UsageError(f"{name}: the package is cut short")
        out[member] = body
        pos += 60 + size + (size & 1)
        if len(out) > 16:
            raise UsageError(f"{name}: too many members for a Debian package")
    return out


def _open_tar(member: str, body: bytes, deb: str) -> tarfile.TarFile:
    # The decompressors read from memory and live as long as the tar reading them.
    raw: Any
    if member.endswith(".tar"):
        raw = io.BytesIO(body)
    elif member.endswith(".tar.gz"):
        raw = gzip.GzipFile(fileobj=io.BytesIO(body))
    elif member.endswith(".tar.xz"):
        raw = lzma.LZMAFile(io.BytesIO(body))  # noqa: SIM115
    elif member.endswith(".tar.bz2"):
        raw = bz2.BZ2File(io.BytesIO(body))
    elif member.endswith(".tar.zst"):
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
    else:
        raise UsageError(f"{deb}: unknown compression of {member}")
    try:
        return tarfile.open(fileobj=raw, mode="r|")
    except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as e:
        raise UsageError(f"{deb}: {member} is not a readable tar: {e}") from e


def _one(members: dict[str, bytes], stem: str, deb: str) -> tuple[str, bytes]:
    found = [(k, v) for k, v in members.items() if k == stem or k.startswith(stem + ".")]
    if len(found) != 1:
        raise UsageError(f"{deb}: expected one {stem}.* member, found {len(found)}")
    return found[0]


def _control_fields(text: str, deb: str) -> list[tuple[str, str]]:
    """``control`` as (field, value with continuation lines) in file order."""
    fields: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t":
            if not fields:
                raise UsageError(f"{deb}: control file starts with a continuation line")
            k, v = fields[-1]
            fields[-1] = (k, v + "\n" + line)
            continue
        k, sep, v = line.partition(":")
        if not sep or not re.match(r"^[A-Za-z][A-Za-z0-9-]{0,63}$", k):
            raise UsageError(f"{deb}: bad control line {line[:60]!r}")
        fields.append((k, v.strip()))
    return fields


def _add_deb(b: _Builder, deb: str, data: bytes) -> tuple[str, str, str]:
    """Unpack one .deb into the builder; returns (package, version, status stanza)."""
    members = _ar_members(data, deb)
    if members.get("debian-binary", b"").strip() != b"2.0":
        raise UsageError(f"{deb}: not a format 2.0 Debian package")
    control_name, control_body = _one(members, "control.tar", deb)
    data_name, data_body = _one(members, "data.tar", deb)
    control: dict[str, bytes] = {}
    try:
        with _open_tar(control_name, control_body, deb) as t:
            for m in t:
                p = clean_path(m.name, deb)[1:]
                if m.isfile() and (p == "control" or p in _CONTROL_MEMBERS):
                    if m.size > 16 << 20:
                        raise TooLargeError(f"{deb}: control member {p} is above 16 MiB")
                    control[p] = _read_member(t, m)
    except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as e:
        raise UsageError(f"{deb}: damaged {control_name}: {e}") from e
    if "control" not in control:
        raise UsageError(f"{deb}: no control file")
    fields = _control_fields(control["control"].decode("utf-8", errors="replace"), deb)
    f = dict(fields)
    pkg, version, arch = f.get("Package", ""), f.get("Version", ""), f.get("Architecture", "")
    if not _PKG.match(pkg) or not _VERSION.match(version) or not _ARCH.match(arch):
        raise UsageError(
            f"{deb}: Package, Version and Architecture must be valid (got {pkg!r} {version!r} {arch!r})"
        )
    who = f"{pkg} ({deb})"
    listed: list[str] = ["/."]
    digests: dict[str, str] = {}
    try:
        with _open_tar(data_name, data_body, deb) as t:
            for m in t:
                path = clean_path(m.name, deb)
                if path == "/":
                    continue
                listed.append(path)
                meta = _Meta(m.uid, m.gid, m.uname[:64], m.gname[:64], int(m.mtime))
                if m.isdir():
                    b.add_dir(path, m.mode & 0o7777, meta)
                elif m.isfile():
                    body = _read_member(t, m)
                    digests[path] = hashlib.md5(body, usedforsecurity=False).hexdigest()
                    b.add_file(path, body, who, m.mode & 0o7777, meta)
                elif m.issym():
                    b.add_symlink(path, m.linkname, who, meta)
                elif m.islnk():
                    src = clean_path(m.linkname, deb)
                    target = b.files.get(src)
                    if target is None or target.type != "file":
                        raise UsageError(f"{deb}: hard link {path} to {src}, not a file before it")
                    b.count(target.size)
                    b.files[path] = target
                    b.owner[path] = who
                    digests[path] = digests[src]
                else:
                    raise UsageError(f"{deb}: {path} is a device or FIFO: not in a driver pack")
    except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as e:
        raise UsageError(f"{deb}: damaged {data_name}: {e}") from e
    multi_same = f.get("Multi-Arch", "") == "same"
    stem = f"{pkg}:{arch}" if multi_same else pkg
    info = DPKG_INFO
    b.add_file(f"{info}/{stem}.list", "".join(p + "\n" for p in listed).encode(), "dpkg")
    conffiles = [
        c.strip()
        for c in control.get("conffiles", b"").decode(errors="replace").splitlines()
        if c.strip()
    ]
    for member, body in sorted(control.items()):
        if member != "control":
            b.add_file(
                f"{info}/{stem}.{member}",
                body,
                "dpkg",
                0o755 if member.endswith(("inst", "rm", "config")) else 0o644,
            )
    lines = [f"Package: {pkg}", "Status: install ok installed"]
    description = None
    for k, v in fields:
        if k in ("Package", "Status", "Conffiles"):
            continue
        if k == "Description":
            description = v
            continue
        lines.append(f"{k}: {v}")
    known = [c for c in conffiles if posixpath.normpath(c) in digests]
    if known:
        lines.append("Conffiles:")
        lines.extend(f" {c} {digests[posixpath.normpath(c)]}" for c in known)
    if description is not None:
        lines.append(f"Description: {description}")
    return pkg, version, "\n".join(lines)
