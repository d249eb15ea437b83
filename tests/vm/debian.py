"""A small bootable Debian root for the boot tests, built once and cached as a tarball.

``debootstrap --variant=minbase`` of the host's Debian release (bookworm elsewhere) from
the mirror apt on this machine uses, with a kernel, systemd as init, udev, ifupdown and
dpkg; documentation, manual pages and locales are dropped so the tarball stays small.
The tarball lives under ``$LAMINA_TEST_CACHE`` (or ``~/.cache/lamina-tests``) in a file
named by a digest of every input, so a change of release, mirror, package list or of this
builder builds a new one; an ``fcntl`` lock keeps two pytest-xdist workers from building
it twice, and the tarball is renamed into place only once complete, so a crash mid-build
leaves nothing a later run would take for a finished root. Each test extracts a fresh
copy (``extract``), which it may change at will.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# Bump when the build steps below change what ends up in the root.
BUILDER_VERSION = 3
ARCH = "amd64"
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "ifupdown",
    "iproute2",
    "dpkg",
)
# Left out of the tarball: nothing the boot needs, most of its size.
DROP = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
)
# The kernel modules kept (with what they depend on): what a QEMU machine with virtio disks
# and network needs; the other ~390 MB of drivers go, and the initramfs is made again from
# what is left (about 8 MB instead of 35).
MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "ext4",
    "crc32c_generic",
    "af_packet",  # built in: listed so a kernel that makes it a module keeps it
)
# What dpkg inside the root must also leave out later (same paths, for packages installed after).
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
"""


def cache_dir() -> Path:
    base = os.environ.get("LAMINA_TEST_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "lamina-tests"
    root.mkdir(parents=True, exist_ok=True)
    return root


def host_suite() -> str:
    """The host's Debian codename, or bookworm on any other system."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return DEFAULT_SUITE
    fields = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', text, re.M))
    if fields.get("ID") == "debian" and fields.get("VERSION_CODENAME"):
        return fields["VERSION_CODENAME"]
    return DEFAULT_SUITE


def host_mirror() -> str:
    """The first Debian archive URI apt on this machine uses (not its security mirror)."""
    sources = Path("/etc/apt/sources.list.d")
    files = [
        Path("/etc/apt/sources.list"),
        *sorted(sources.glob("*.sources")),
        *sorted(sources.glob("*.list")),
    ]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for uri in re.findall(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def inputs(suite: str | None = None, mirror: str | None = None) -> dict[str, object]:
    return {
        "builder": BUILDER_VERSION,
        "arch": ARCH,
        "suite": suite or host_suite(),
        "mirror": mirror or host_mirror(),
        "packages": sorted(PACKAGES),
        "drop": sorted(DROP),
        "modules": sorted(MODULES),
    }


def tarball(suite: str | None = None, mirror: str | None = None) -> Path:
    """The cached root tarball for these inputs, built first if it is not there yet."""
    spec = inputs(suite, mirror)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    cache = cache_dir()
    out = cache / f"debian-{spec['suite']}-{key}.tar"
    if out.exists():
        return out
    with open(cache / f"debian-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker builds; this one waits for it
        if not out.exists():
            _build(spec, out)
    return out


def _build(spec: dict[str, object], out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=out.parent))
    try:
        root = work / "root"
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--arch={spec['arch']}",
            "--include=" + ",".join(PACKAGES),
            str(spec["suite"]),
            str(root),
            str(spec["mirror"]),
        ]
        # INITRD=No: the kernel's postinst makes no initramfs yet; one is made once, below,
        # from the trimmed module tree (each run of mkinitramfs takes a minute or more).
        env = {**os.environ, "INITRD": "No"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            log = root / "debootstrap/debootstrap.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else done.stderr[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{tail}")
        _prune_modules(root)
        for rel in DROP:
            target = root / rel
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        (root / "etc/dpkg/dpkg.cfg.d/01-lamina-nodoc").write_text(DPKG_EXCLUDES)
        (root / "etc/apt/apt.conf.d/99-lamina-noclean").write_text("")
        # One tarball with numeric owners, extended attributes and capabilities kept.
        partial = out.with_suffix(".partial")
        subprocess.run(
            [
                "tar",
                "--xattrs",
                "--xattrs-include=*",
                "--acls",
                "--numeric-owner",
                "-C",
                str(root),
                "-cf",
                str(partial),
                ".",
            ],
            check=True,
        )
        os.replace(partial, out)
    finally:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def _unmount_below(work: Path) -> None:
    """Unmount what debootstrap or the initramfs step left mounted (never delete through it)."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(work) + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], check=False)


def _prune_modules(root: Path) -> None:
    """Keep ``MODULES`` and their dependencies only; rebuild modules.dep and the initramfs."""
    for tree in sorted((root / "usr/lib/modules").iterdir()):
        version = tree.name
        deps = subprocess.run(
            ["modprobe", "-a", "-d", str(root), "-S", version, "--show-depends", *MODULES],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        marker = f"/modules/{version}/"
        keep = {
            line.split()[1].split(marker, 1)[1]
            for line in deps.splitlines()
            if line.startswith("insmod ") and marker in line
        }
        for ko in (tree / "kernel").rglob("*.ko*"):
            if str(ko.relative_to(tree)) not in keep:
                ko.unlink()
        subprocess.run(["depmod", "-b", str(root), version], check=True)
    proc = root / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        for tree in sorted((root / "usr/lib/modules").iterdir()):
            for old in (root / "boot").glob(f"initrd.img-{tree.name}*"):
                old.unlink()
            (root / "var/lib/initramfs-tools" / tree.name).unlink(missing_ok=True)
            subprocess.run(
                ["chroot", str(root), "update-initramfs", "-c", "-k", tree.name],
                check=True,
                capture_output=True,
            )
    finally:
        subprocess.run(["umount", str(proc)], check=True)


def extract(tar: Path, dest: Path) -> Path:
    """A fresh copy of the root at ``dest`` (created), as root with owners kept."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--numeric-owner",
            "-C",
            str(dest),
            "-xf",
            str(tar),
        ],
        check=True,
    )
    return dest


def kernel_and_initrd(root: Path) -> tuple[Path, Path]:
    """The root's own kernel and initramfs (``/boot/vmlinuz-*``, ``/boot/initrd.img-*``)."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise FileNotFoundError(f"no kernel under {root / 'boot'}")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    return kernels[-1], root / "boot" / f"initrd.img-{version}"


if __name__ == "__main__":  # build (or find) the tarball and say where it is
    print(tarball())
