"""Driver packs from a folder and .deb files: what dpkg would install, hostile uploads refused,
and paths resolved through an endpoint's merged-/usr links in the plan."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.errors import TooLargeError, UsageError
from lamina.layers import packs
from lamina.layers.merge import Stanza, parse_dpkg_status
from lamina.layers.packs import build_pack
from lamina.layers.plan import DRIVER, LayerRef, make_plan
from lamina.layers.rules import builtin
from lamina.store.blob import BlobKind
from lamina.tree.model import Entry
from lamina.tree.paths import build_tree, index, read_file
from tests.e2e.debs import build_deb, dpkg_install, init_dpkg

needs_dpkg = pytest.mark.skipif(
    not shutil.which("dpkg-deb"), reason="dpkg-deb is not installed (apt package dpkg)"
)


class Mem:
    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}

    def put(self, kind: BlobKind, data: bytes) -> bytes:
        bid = hashlib.sha256(str(kind).encode() + data).digest()
        self.blobs[bid] = data
        return bid

    def load(self, bid: bytes) -> bytes:
        return self.blobs[bid]

    def put_data(self, data: bytes) -> bytes:
        return self.put(BlobKind.DATA, data)


def cut(data: bytes) -> Iterator[memoryview]:
    view = memoryview(data)
    for i in range(0, len(data), 4096):
        yield view[i : i + 4096]


def tar_of(folder: Path) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(folder, arcname=".")
    buf.seek(0)
    return buf


def read(mem: Mem, tree: dict[str, Entry], path: str) -> bytes:
    return read_file(mem.load, tree[path])


FW = b"\x7fFIRMWARE" * 1000
#: An ar archive with only ``debian-binary``: a package without control or data.
AR_ONLY_VERSION = (
    b"!<arch>\n"
    + b"debian-binary/".ljust(16)
    + b"0".ljust(12)
    + b"0".ljust(6)
    + b"0".ljust(6)
    + b"100644".ljust(8)
    + b"4".ljust(10)
    + b"`\n2.0\n"
)


def make_folder(tmp: Path) -> Path:
    folder = tmp / "pack"
    (folder / "lib/firmware/rtl_nic").mkdir(parents=True)
    (folder / "lib/firmware/rtl_nic/rtl8168h-2.fw").write_bytes(FW)
    (folder / "etc/modprobe.d").mkdir(parents=True)
    (folder / "etc/modprobe.d/r8169.conf").write_text("options r8169 aspm=0\n")
    deb = build_deb(
        tmp,
        "vendor-firmware",
        "1.2-3",
        {"/lib/firmware/vendor/blob.bin": b"\x00\x01blob", "/etc/vendor/fw.conf": "speed=1\n"},
    )
    shutil.copy(deb, folder / deb.name)
    return folder


@needs_dpkg
def test_a_pack_holds_loose_files_and_debs_as_dpkg_installs_them(tmp_path: Path) -> None:
    mem = Mem()
    built = build_pack(tar_of(make_folder(tmp_path)), mem.put, cut)
    tree = index(mem.load, built.root)
    assert read(mem, tree, "/lib/firmware/rtl_nic/rtl8168h-2.fw") == FW
    assert read(mem, tree, "/etc/modprobe.d/r8169.conf") == b"options r8169 aspm=0\n"
    assert read(mem, tree, "/lib/firmware/vendor/blob.bin") == b"\x00\x01blob"
    assert built.packages == {"vendor-firmware": "1.2-3"}
    assert built.loose == ["/etc/modprobe.d/r8169.conf", "/lib/firmware/rtl_nic/rtl8168h-2.fw"]

    # The same .deb installed by the real dpkg: the same status fields, list and md5sums.
    real = tmp_path / "real"
    init_dpkg(real)
    dpkg_install(real, next(tmp_path.glob("vendor-firmware_*.deb")))
    theirs = parse_dpkg_status((real / "var/lib/dpkg/status").read_bytes())["vendor-firmware"]
    ours = parse_dpkg_status(read(mem, tree, "/var/lib/dpkg/status"))["vendor-firmware"]

    def fields(stanza: Stanza) -> dict[str, str]:
        out: dict[str, str] = {}
        key = ""
        for line in stanza.text.splitlines():
            if line.startswith(" "):
                out[key] += "\n" + line
            else:
                key, _, v = line.partition(":")
                out[key] = v.strip()
        return out

    assert fields(ours) == fields(theirs)
    info = "/var/lib/dpkg/info/vendor-firmware"
    assert sorted(read(mem, tree, f"{info}.list").decode().split()) == sorted(
        (real / "var/lib/dpkg/info/vendor-firmware.list").read_text().split()
    )
    assert read(mem, tree, f"{info}.conffiles") == b"/etc/vendor/fw.conf\n"


@pytest.mark.parametrize(
    ("layout", "why"),
    [
        ({"home/user/x": b"x"}, "loose files go under"),
        ({"etc/shadow": b"x"}, "loose files go under"),
        ({"sub/broken.deb": b"x"}, "loose files go under"),
        ({"broken.deb": b"not an ar archive"}, "not a Debian package"),
        ({"short.deb": AR_ONLY_VERSION}, "control.tar"),
        ({}, "no driver files"),
    ],
)
def test_bad_folders_are_refused(tmp_path: Path, layout: dict[str, bytes], why: str) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    for rel, data in layout.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    with pytest.raises(UsageError, match=why):
        build_pack(tar_of(folder), Mem().put, cut)


def _tar_with(info: tarfile.TarInfo, data: bytes = b"") -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.addfile(info, io.BytesIO(data) if data else None)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("name", ["../etc/passwd", "/lib/firmware/x", "lib/firmware/../../etc/x"])
def test_paths_leaving_the_pack_are_refused(name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 1
    with pytest.raises(UsageError, match="leaves the pack"):
        build_pack(_tar_with(info, b"x"), Mem().put, cut)


def test_devices_and_garbage_are_refused() -> None:
    dev = tarfile.TarInfo("lib/firmware/sda")
    dev.type = tarfile.CHRTYPE
    with pytest.raises(UsageError, match="only files, folders and symlinks"):
        build_pack(_tar_with(dev), Mem().put, cut)
    with pytest.raises(UsageError, match="not a tar"):
        build_pack(io.BytesIO(b"\x00garbage" * 100), Mem().put, cut)


def test_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packs, "MAX_UNPACKED", 1000)
    info = tarfile.TarInfo("lib/firmware/big")
    info.size = 2000
    with pytest.raises(TooLargeError):
        build_pack(_tar_with(info, b"x" * 2000), Mem().put, cut)


@needs_dpkg
def test_plan_puts_pack_files_through_merged_usr_links(tmp_path: Path) -> None:
    mem = Mem()
    built = build_pack(tar_of(make_folder(tmp_path)), mem.put, cut)
    pack = LayerRef("rtl:1", DRIVER, built.root, (), tuple(built.packages))
    status = (
        b"Package: base-files\nStatus: install ok installed\nVersion: 12\nArchitecture: all\n\n"
    )
    sid = mem.put(BlobKind.DATA, status)
    dirs = {"/usr": Entry(name=b"usr", type="dir", mode=0o755)}

    def endpoint(merged: bool) -> bytes:
        files = {
            "/var/lib/dpkg/status": Entry(name=b"", type="file", size=len(status), content=[sid]),
            "/usr/lib/os-release": Entry(name=b"", type="file", size=0, content=[]),
        }
        if merged:
            files["/lib"] = Entry(name=b"", type="symlink", mode=0o777, target=b"usr/lib")
        else:
            files["/lib/modules/readme"] = Entry(name=b"", type="file", size=0, content=[])
        return build_tree(mem.put, files, dirs)

    rules = builtin("debian")
    merged = make_plan(mem.load, mem.put_data, endpoint(True), [], [pack], rules)
    assert "/usr/lib/firmware/rtl_nic/rtl8168h-2.fw" in merged.writes
    assert "/usr/lib/firmware/vendor/blob.bin" in merged.writes
    assert not [p for p in merged.writes if p.startswith("/lib/")]
    assert "/etc/modprobe.d/r8169.conf" in merged.writes  # not under a merged folder
    # The package database is merged per package: the endpoint's and the pack's.
    db = parse_dpkg_status(read_file(mem.load, merged.writes["/var/lib/dpkg/status"]))
    assert set(db) == {"base-files", "vendor-firmware"}

    split = make_plan(mem.load, mem.put_data, endpoint(False), [], [pack], rules)
    assert "/lib/firmware/rtl_nic/rtl8168h-2.fw" in split.writes
    assert not [p for p in split.writes if p.startswith("/usr/lib/firmware")]
