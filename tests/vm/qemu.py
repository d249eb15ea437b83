"""Boot a root folder under QEMU and read what it says on its serial console.

``make_image`` turns a folder into an ext4 disk image with ``mkfs.ext4 -d`` (owners,
modes, extended attributes and special files kept; the filesystem UUID chosen, as the
machine's ``/etc/fstab`` names it). ``install_probe`` bakes a small systemd unit into a
root: once ``multi-user.target`` is active and the boot's jobs are done it prints, between
two marker lines on ``/dev/console``, the hostname, the machine id, the state of
``multi-user.target``, the failed units (mounts included), the mounts named in fstab and
the network links, then powers the machine off. ``boot`` starts QEMU with the root's own
kernel and initramfs (``-kernel``/``-initrd``, ``root=UUID=...``, ``console=ttyS0``), with
KVM when it works and TCG otherwise, waits for the probe's end marker (or the guest's
power-off, or the deadline), stops QEMU and parses the report.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

QEMU = "qemu-system-x86_64"
BEGIN = "LAMINA-PROBE-BEGIN"
END = "LAMINA-PROBE-END"

PROBE_SCRIPT = f"""\
#!/bin/sh
# Baked in by tests/vm/qemu.py: report how the boot went on the console, then power off.
exec >/dev/console 2>&1
say() {{ echo "lamina-probe $1=$2"; }}
i=0
# Wait until the boot's jobs are done (only this unit's own is left), 120 s at most.
while [ "$(systemctl list-jobs --no-legend --plain | awk '$1 ~ /^[0-9]+$/ && $2 != "lamina-boot-probe.service"' | wc -l)" != 0 ] && [ $i -lt 120 ]; do
    sleep 1; i=$((i + 1))
done
echo {BEGIN}
say hostname "$(cat /proc/sys/kernel/hostname)"
say machine-id "$(cat /etc/machine-id)"
say multi-user "$(systemctl is-active multi-user.target)"
say waited "$i"
say failed "$(systemctl list-units --failed --plain --no-legend --no-pager | awk '{{print $1}}' | tr '\\n' ' ')"
for m in $(awk '$1 !~ /^#/ && $2 ~ /^\\// {{print $2}}' /etc/fstab); do
    say "mount $m" "$(findmnt -n -o SOURCE,UUID "$m" | tr -s ' ' ' ')"
done
ip -br link | while read -r name state mac rest; do say "link $name" "$state $mac"; done
echo {END}
systemctl start --no-block poweroff.target
"""

PROBE_UNIT = """\
[Unit]
Description=Lamina boot probe (tests/vm/qemu.py)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/lamina-boot-probe

[Install]
WantedBy=multi-user.target
"""


def qemu_missing() -> str | None:
    """Why the boot tests cannot run here (no QEMU), or None when they can."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt: qemu-system-x86; .ci/run installs it)"
    return None


def require_tools() -> None:
    """The other tools the boot tests use: missing ones fail the test, saying which."""
    missing = [
        b for b in ("mkfs.ext4", "debootstrap", "modprobe", "depmod") if shutil.which(b) is None
    ]
    if missing:
        raise AssertionError(
            f"the boot test needs {', '.join(missing)} (apt: e2fsprogs debootstrap kmod; "
            ".ci/run installs them)"
        )


_KVM_GET_API_VERSION = 0xAE00
_KVM_GET_SUPPORTED_CPUID = 0xC008AE05  # _IOWR(KVMIO, 0x05, struct kvm_cpuid2)
_CPUID_ENTRY = struct.Struct("7I12x")  # function, index, flags, eax, ebx, ecx, edx, padding[3]


def kvm_usable() -> bool:
    """Can QEMU boot with KVM here? ``LAMINA_TEST_QEMU_ACCEL=kvm|tcg`` decides if set.

    Opening ``/dev/kvm`` is not enough: a nested KVM may offer a CPU without SSE3 (CPUID
    leaf 1, ECX bit 0), which every x86-64 processor since 2004 has; QEMU then starts a
    guest that never prints a line. Such a KVM counts as unusable, and the boot uses TCG.
    """
    forced = os.environ.get("LAMINA_TEST_QEMU_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced == "kvm"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, _KVM_GET_API_VERSION) != 12:
            return False
        count = 256
        buf = bytearray(struct.pack("II", count, 0) + bytes(_CPUID_ENTRY.size * count))
        fcntl.ioctl(fd, _KVM_GET_SUPPORTED_CPUID, buf, True)
        (nent,) = struct.unpack_from("I", buf)
        for i in range(nent):
            function, _, _, _, _, ecx, _ = _CPUID_ENTRY.unpack_from(buf, 8 + i * _CPUID_ENTRY.size)
            if function == 1:
                return bool(ecx & 1)
        return False
    except OSError:
        return False
    finally:
        os.close(fd)


def install_probe(root: Path) -> None:
    """Bake the probe unit into ``root`` and enable it (a symlink, as systemctl enable makes)."""
    script = root / "usr/local/sbin/lamina-boot-probe"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(PROBE_SCRIPT)
    script.chmod(0o755)
    unit = root / "etc/systemd/system/lamina-boot-probe.service"
    unit.write_text(PROBE_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "lamina-boot-probe.service"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/systemd/system/lamina-boot-probe.service")
    # No login prompt on the serial console to interleave with the report.
    getty = root / "etc/systemd/system/serial-getty@ttyS0.service"
    getty.unlink(missing_ok=True)
    getty.symlink_to("/dev/null")


def make_image(
    root: Path, image: Path, uuid: str, *, label: str = "root", slack_mb: int = 96
) -> Path:
    """An ext4 image of ``root`` with filesystem UUID ``uuid``, sized to its content plus slack."""
    used = int(
        subprocess.run(
            ["du", "-sxk", str(root)], check=True, capture_output=True, text=True
        ).stdout.split()[0]
    )
    size_mb = used * 13 // 10 // 1024 + slack_mb  # inodes and journal take their share too
    image.unlink(missing_ok=True)
    cmd = [
        "mkfs.ext4",
        "-q",
        "-F",
        "-U",
        uuid,
        "-L",
        label,
        "-d",
        str(root),
        str(image),
        f"{size_mb}M",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return image


@dataclass
class BootReport:
    """What the probe printed, and the whole console for the failure message."""

    console: str
    accel: str
    seconds: float
    fields: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    mounts: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    @property
    def reported(self) -> bool:
        return bool(self.fields)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def parse_report(console: str, accel: str, seconds: float) -> BootReport:
    report = BootReport(console, accel, seconds)
    if BEGIN not in console or END not in console:
        return report
    body = console.split(BEGIN, 1)[1].split(END, 1)[0]
    for raw in body.splitlines():
        _, marker, line = raw.partition("lamina-probe ")
        key, sep, value = line.partition("=")
        if not (marker and sep):
            continue
        if key.startswith("mount "):
            report.mounts[key.removeprefix("mount ")] = value.strip()
        elif key.startswith("link "):
            report.links[key.removeprefix("link ")] = value.strip()
        elif key == "failed":
            report.failed = value.split()
        else:
            report.fields[key] = value.strip()
    return report


def boot(
    kernel: Path,
    initrd: Path,
    root_uuid: str,
    disks: list[Path],
    workdir: Path,
    *,
    mac: str | None = None,
    timeout: float = 480.0,
    memory_mb: int = 512,
) -> BootReport:
    """Boot the first of ``disks`` as root (``root=UUID=root_uuid``), the others beside it,
    with one virtio NIC (``mac``); return the probe's report once the guest powered off."""
    kvm = kvm_usable()
    accel = ["-accel", "kvm"] if kvm else ["-accel", "tcg"]
    console = workdir / "console.log"
    append = f"root=UUID={root_uuid} rw console=ttyS0 panic=-1 systemd.show_status=1"
    args = [
        QEMU, *accel, "-m", str(memory_mb), "-smp", "1", "-nodefaults", "-no-reboot",
        "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
    ]  # fmt: skip
    for disk in disks:
        args += ["-drive", f"file={disk},format=raw,if=virtio"]
    nic = "user,model=virtio-net-pci" + (f",mac={mac}" if mac else "")
    args += ["-nic", nic]
    start = time.monotonic()
    log = workdir / "qemu.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            # The report is complete once its end marker is on the console: stop there
            # rather than wait for the guest's shutdown (half a minute more under TCG).
            while proc.poll() is None and time.monotonic() - start < timeout:
                if console.exists() and END in console.read_text(errors="replace"):
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    seconds = time.monotonic() - start
    text = console.read_text(errors="replace") if console.exists() else ""
    if proc.returncode not in (0, -signal.SIGKILL):
        text += f"\n[qemu exited {proc.returncode}: {log.read_text(errors='replace')}]"
    return parse_report(text, "kvm" if kvm else "tcg", seconds)
