"""A tiny bootable test guest for the flex client's real boots, built once and cached.

The disk is a raw image of one ext2 file system (no partition table) with extlinux in
its boot sector, Debian's kernel (``linux-image-amd64``, fetched with ``apt-get download``
into the cache and unpacked with ``dpkg-deb``, never installed on the host), and an
initramfs of busybox-static plus the few kernel modules the report needs. Its ``/init``
mounts /proc and /sys, loads the modules, writes what the guest sees to ttyS0 as
``LAMINA-GUEST <kind> <value>`` lines between ``LAMINA-GUEST begin`` and ``... end``,
and powers off (or, given the fw_cfg entry ``opt/org.lamina/test-hold``, says
``LAMINA-GUEST holding`` and stays up until stopped). The disk also carries a file of seeded random bytes, so the test that
scans the client's folder for plaintext sectors has distinctive sectors to look for.

The cache (``$LAMINA_TEST_CACHE`` or ``~/.cache/lamina-tests``) is keyed on this file's
text and the kernel package's version, so an edit here rebuilds the guest. Building needs
root (a loop mount for extlinux); with a cached guest, nothing does.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

DISK_MIB = 48
RANDOM_FILE_BYTES = 2 << 20  # the distinctive sectors
RANDOM_SEED = 20261130
SYSLINUX_BIOS = Path("/usr/lib/syslinux/modules/bios")
MODULES = [
    "virtio_pci",
    "virtio_net",
    "virtio_console",
    "qemu_fw_cfg",
    "xhci_pci",
    "ehci_pci",
    "9pnet_virtio",
    "9p",
]

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
sleep 1
out=/dev/ttyS0
r() { echo "LAMINA-GUEST $*" > $out; }
r begin
for n in /sys/class/net/*; do n=${n##*/}; [ "$n" = lo ] || r net $n; done
for b in /sys/bus/usb/devices/usb*; do [ -e "$b" ] && r usb-bus ${b##*/}; done
for d in /sys/bus/usb/devices/*; do
  [ -e "$d/idVendor" ] && r usb-dev ${d##*/} $(cat $d/idVendor):$(cat $d/idProduct) class=$(cat $d/bDeviceClass)
done
for p in /sys/class/virtio-ports/*; do [ -e "$p/name" ] && r vport $(cat $p/name); done
if [ -d /sys/firmware/qemu_fw_cfg/by_name ]; then
  cd /sys/firmware/qemu_fw_cfg/by_name
  for f in $(find -L opt -name raw 2>/dev/null); do r fwcfg ${f%/raw}; done
  e=opt/org.lamina/enroll/raw
  [ -e $e ] && r enroll $(base64 -w0 < $e)
  cd /
fi
for t in /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag; do
  [ -e "$t" ] || continue
  tag=$(cat $t | tr -d '\000')
  r mount-tag $tag
  mkdir -p /mnt/$tag
  if mount -t 9p -o trans=virtio,version=9p2000.L $tag /mnt/$tag; then
    if (echo x > /mnt/$tag/.lamina-guest-write) 2>/dev/null; then r share-write $tag ok; rm -f /mnt/$tag/.lamina-guest-write; else r share-write $tag refused; fi
    umount /mnt/$tag
  fi
done
r end
sync
# A test that must stop a running VM asks it to stay up (fw_cfg opt/org.lamina/test-hold).
if [ -e /sys/firmware/qemu_fw_cfg/by_name/opt/org.lamina/test-hold ]; then
  r holding
  while :; do sleep 3600; done
fi
poweroff -f
"""


def cache_root() -> Path:
    base = os.environ.get("LAMINA_TEST_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "lamina-tests"


def kernel_package() -> tuple[str, str]:
    """(package, version) that ``linux-image-amd64`` depends on, from the local apt lists."""
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"], check=True, capture_output=True, text=True
    ).stdout
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*)", out)
    if not m:
        raise RuntimeError(f"apt-cache does not know linux-image-amd64's kernel:\n{out}")
    pkg = m.group(1)
    pol = subprocess.run(
        ["apt-cache", "policy", pkg], check=True, capture_output=True, text=True
    ).stdout
    v = re.search(r"Candidate: (\S+)", pol)
    return pkg, v.group(1) if v else "unknown"


@dataclass(frozen=True)
class Guest:
    disk: Path  # raw image
    random_blocks: tuple[int, ...]  # offsets of the disk's 4 KiB blocks of seeded random bytes


def missing_tools() -> list[str]:
    need = ["qemu-system-x86_64", "qemu-img", "qemu-nbd", "extlinux", "busybox", "mkfs.ext2"]
    return [t for t in need if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def build_guest() -> Guest:
    """The cached guest, building it on first use."""
    pkg, version = kernel_package()
    key = hashlib.sha256(Path(__file__).read_bytes() + f"{pkg}={version}".encode()).hexdigest()[:16]
    folder = cache_root() / f"flex-guest-{key}"
    disk = folder / "disk.raw"
    meta = folder / "random.txt"
    if not disk.exists():
        # xdist workers start the module's tests at once: one builds, the others wait for it
        # (each building too raced on the cache's renames, and the losers skipped their tests).
        cache_root().mkdir(parents=True, exist_ok=True)
        with open(cache_root() / "flex-guest.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not disk.exists():
                _build(folder, pkg)
    return Guest(disk, tuple(int(x) for x in meta.read_text().split()))


def _kernel_tree(pkg: str) -> Path:
    debs = cache_root() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if not found:
        with tempfile.TemporaryDirectory(dir=debs) as tmp:
            os.chmod(tmp, 0o755)  # apt's sandbox user must be able to write there
            subprocess.run(
                ["apt-get", "download", "-q", pkg], cwd=tmp, check=True, capture_output=True
            )
            for f in Path(tmp).glob("*.deb"):
                os.replace(f, debs / f.name)
        found = sorted(debs.glob(f"{pkg}_*.deb"))
    tree = debs / (found[-1].stem + ".x")
    if not tree.exists():
        tmp_tree = Path(tempfile.mkdtemp(dir=debs))
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(tmp_tree)], check=True)
        try:
            os.replace(tmp_tree, tree)
        except OSError:
            shutil.rmtree(tmp_tree, ignore_errors=True)
            if not tree.is_dir():  # another process unpacked it meanwhile: fine
                raise
    return tree


def _modinfo_depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    m = re.search(rb"\x00depends=([^\x00]*)\x00", data)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _module_order(modroot: Path) -> list[Path]:
    by_name = {p.stem.replace("-", "_"): p for p in modroot.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        p = by_name.get(name.replace("-", "_"))
        if p is None or p in order:
            return
        for dep in _modinfo_depends(p):
            visit(dep)
        order.append(p)

    for name in MODULES:
        visit(name)
    return order


def _build(folder: Path, pkg: str) -> None:
    tree = _kernel_tree(pkg)
    (vmlinuz,) = tree.glob("boot/vmlinuz-*")
    (modroot,) = tree.glob("lib/modules/*")
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=parent, prefix=".build-"))
    try:
        # initramfs
        rd = work / "initrd"
        for d in ("bin", "proc", "sys", "dev", "mnt", "lib/modules"):
            (rd / d).mkdir(parents=True)
        shutil.copy(shutil.which("busybox") or "/bin/busybox", rd / "bin/busybox")
        names = []
        for ko in _module_order(modroot):
            shutil.copy(ko, rd / "lib/modules" / ko.name)
            names.append(ko.name)
        (rd / "modules.order").write_text("\n".join(names) + "\n")
        (rd / "init").write_text(INIT)
        (rd / "init").chmod(0o755)
        files = subprocess.run(
            "find . | sort", shell=True, cwd=rd, check=True, capture_output=True
        ).stdout
        cpio = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
            cwd=rd,
            input=files,
            check=True,
            capture_output=True,
        ).stdout
        # file-system contents
        root = work / "root"
        (root / "boot/extlinux").mkdir(parents=True)
        shutil.copy(vmlinuz, root / "boot/vmlinuz")
        shutil.copy(SYSLINUX_BIOS / "ldlinux.c32", root / "boot/extlinux/ldlinux.c32")
        (root / "boot/initrd").write_bytes(cpio)
        (root / "boot/extlinux/extlinux.conf").write_text(
            "DEFAULT lamina\nTIMEOUT 1\nPROMPT 0\nLABEL lamina\n  LINUX /boot/vmlinuz\n"
            "  INITRD /boot/initrd\n  APPEND console=ttyS0 quiet loglevel=0 panic=-1\n"
        )
        rng = random.Random(RANDOM_SEED)
        (root / "random.bin").write_bytes(rng.randbytes(RANDOM_FILE_BYTES))
        disk = work / "disk.raw"
        subprocess.run(["truncate", "-s", f"{DISK_MIB}M", str(disk)], check=True)
        subprocess.run(
            ["mkfs.ext2", "-q", "-F", "-b", "4096", "-d", str(root), str(disk)],
            check=True,
            capture_output=True,
        )
        mnt = work / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-o", "loop", str(disk), str(mnt)], check=True)
        try:
            subprocess.run(
                ["extlinux", "--install", str(mnt / "boot/extlinux")],
                check=True,
                capture_output=True,
            )
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        image = disk.read_bytes()
        sample = (root / "random.bin").read_bytes()
        blocks = {sample[i : i + 4096] for i in range(0, len(sample), 4096)}
        offsets = [i for i in range(0, len(image), 4096) if image[i : i + 4096] in blocks]
        if len(offsets) != len(blocks):
            raise RuntimeError("the random file's blocks are not all in the guest's disk")
        out = work / "out"
        out.mkdir()
        os.replace(disk, out / "disk.raw")
        (out / "random.txt").write_text(" ".join(map(str, offsets)) + "\n")
        try:
            os.replace(out, folder)
        except OSError:
            if not (folder / "disk.raw").exists():  # another worker built it meanwhile: fine
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


GUEST_LINE = re.compile(r"LAMINA-GUEST (\S+)(?: (.*))?$")


@dataclass
class Report:
    """What the guest said about itself."""

    lines: list[tuple[str, str]]
    complete: bool

    def values(self, kind: str) -> list[str]:
        return [v for k, v in self.lines if k == kind]


def parse_report(text: str) -> Report:
    lines: list[tuple[str, str]] = []
    begun = complete = False
    for raw in text.splitlines():
        m = GUEST_LINE.search(raw.strip("\r"))
        if not m:
            continue
        kind, value = m.group(1), (m.group(2) or "").strip()
        if kind == "begin":
            begun, lines = True, []
        elif kind == "end" and begun:
            complete = True
        elif begun:
            lines.append((kind, value))
    return Report(lines, complete)


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True
