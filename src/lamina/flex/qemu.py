"""QEMU for a flex instance: its argv from the policy's restrictions, launch, and the QMP stop.

:func:`build_argv` is pure: the same plan gives the same argv, and the mapping is the
table in docs/design.md ("Flex (client)"). Secrets (the disk key, the enrollment
token) reach QEMU through ``/dev/fd/N`` of pipes passed to it, never on its argv.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from lamina.errors import BackendError
from lamina.flex.disk import SECRET_ID, qemu_escape
from lamina.protocol.flex import FlexRestrictions

#: USB interface classes per policy name (usb.org class codes).
USB_CLASS_CODES: dict[str, tuple[int, ...]] = {
    "audio": (0x01,),
    "comm": (0x02, 0x0A),  # CDC control and CDC data
    "hid": (0x03,),
    "printer": (0x07,),
    "storage": (0x08,),
    "smartcard": (0x0B,),
    "video": (0x0E,),
}
#: usb-redir devices (one redirected USB device each) when USB is allowed.
USB_REDIR_PORTS = 2
SHARE_TAG = "lamina-share"
ENROLL_FW_CFG = "opt/org.lamina/enroll"
OVMF_CANDIDATES = ("/usr/share/ovmf/OVMF.fd", "/usr/share/OVMF/OVMF.fd", "/usr/share/qemu/OVMF.fd")

Accel = Literal["auto", "kvm", "tcg"]


@dataclass(frozen=True)
class LaunchPlan:
    """Everything QEMU's argv depends on."""

    name: str
    disk: Path
    key_fd: int
    memory_mib: int
    cpus: int
    firmware: Literal["bios", "uefi"]
    restrictions: FlexRestrictions
    headless: bool
    qmp_socket: Path
    run_dir: Path  # the instance folder: SPICE and usb-redir sockets go there
    shared_folder: Path | None = None
    enroll_fd: int | None = None
    accel: Accel = "auto"
    ovmf: Path | None = None


def usb_filter(usb: Literal["none", "all"] | Sequence[str]) -> str:
    """A usb-redir filter: allow the policy's classes, refuse everything else."""
    rules = []
    if usb == "all":
        rules.append("-1:-1:-1:-1:1")
    elif usb != "none":
        for name in sorted(set(usb)):
            rules += [f"{code:#04x}:-1:-1:-1:1" for code in USB_CLASS_CODES[name]]
    rules.append("-1:-1:-1:-1:0")
    return "|".join(rules)


def build_argv(plan: LaunchPlan, qemu: str = "qemu-system-x86_64") -> list[str]:
    r = plan.restrictions
    argv = [qemu, "-name", plan.name, "-nodefaults", "-no-user-config"]
    if plan.accel == "auto":
        argv += ["-accel", "kvm", "-accel", "tcg"]
    else:
        argv += ["-accel", plan.accel]
    argv += ["-machine", "q35", "-m", str(plan.memory_mib), "-smp", str(plan.cpus)]
    if plan.firmware == "uefi":
        argv += ["-bios", str(plan.ovmf or OVMF_CANDIDATES[0])]
    # The disk, opened with the key from the pipe.
    argv += [
        "-object",
        f"secret,id={SECRET_ID},file=/dev/fd/{plan.key_fd}",
        "-blockdev",
        f"driver=file,node-name=lamina-file,filename={qemu_escape(str(plan.disk))}",
        "-blockdev",
        f"driver=qcow2,node-name=lamina-disk,file=lamina-file,encrypt.format=luks,encrypt.key-secret={SECRET_ID}",
        "-device",
        "virtio-blk-pci,drive=lamina-disk,bootindex=1",
    ]
    # Network.
    argv += ["-nic", "none"] if r.network == "none" else ["-nic", "user,model=virtio-net-pci"]
    # USB: no controller at all, or a controller whose only devices are filtered redirections.
    if r.usb != "none":
        argv += ["-device", "qemu-xhci,id=lamina-usb"]
        flt = usb_filter(r.usb)
        for n in range(USB_REDIR_PORTS):
            chardev = f"lamina-usbredir{n}"
            if plan.headless:
                sock = qemu_escape(str(plan.run_dir / f"usbredir{n}.sock"))
                argv += ["-chardev", f"socket,id={chardev},path={sock},server=on,wait=off"]
            else:
                argv += ["-chardev", f"spicevmc,id={chardev},name=usbredir"]
            argv += ["-device", f"usb-redir,chardev={chardev},bus=lamina-usb.0,filter={flt}"]
    # Display, clipboard and file transfer.
    if plan.headless:
        argv += ["-display", "none", "-vga", "none", "-serial", "stdio"]
    else:
        spice = qemu_escape(str(plan.run_dir / "spice.sock"))
        opts = [
            "unix=on",
            f"addr={spice}",
            "disable-ticketing=on",
            f"disable-copy-paste={'off' if r.clipboard else 'on'}",
            f"disable-agent-file-xfer={'off' if r.drag_drop else 'on'}",
        ]
        argv += ["-spice", ",".join(opts), "-vga", "qxl", "-display", "none", "-serial", "none"]
        if r.clipboard or r.drag_drop:
            argv += [
                "-device",
                "virtio-serial-pci",
                "-chardev",
                "spicevmc,id=lamina-vdagent,name=vdagent",
                "-device",
                "virtserialport,chardev=lamina-vdagent,name=com.redhat.spice.0",
            ]
    # Shared folder.
    if r.shared_folder != "off" and plan.shared_folder is not None:
        share = [
            "local",
            f"path={qemu_escape(str(plan.shared_folder))}",
            f"mount_tag={SHARE_TAG}",
            "security_model=mapped-xattr",
        ]
        if r.shared_folder == "ro":
            share.append("readonly=on")
        argv += ["-virtfs", ",".join(share)]
    # Management: the enrollment document through fw_cfg.
    if plan.enroll_fd is not None:
        argv += ["-fw_cfg", f"name={ENROLL_FW_CFG},file=/dev/fd/{plan.enroll_fd}"]
    argv += [
        "-qmp",
        f"unix:{qemu_escape(str(plan.qmp_socket))},server=on,wait=off",
        "-monitor",
        "none",
    ]
    return argv


class Qmp:
    """A QMP connection: capabilities negotiated, commands one at a time."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise BackendError("QEMU closed its QMP socket")
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    def command(self, name: str) -> dict[str, Any]:
        self.file.write(json.dumps({"execute": name}).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise BackendError(f"QMP {name} failed: {reply['error'].get('desc')}")
        return reply

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()


def connect_qmp(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> Qmp:
    end = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BackendError(f"QEMU exited at start (code {proc.returncode})")
        try:
            return Qmp(path)
        except OSError:
            if time.monotonic() > end:
                raise BackendError("QEMU's QMP socket did not open in time") from None
            time.sleep(0.05)


@dataclass
class RunResult:
    returncode: int
    stopped_for_deadline: bool


def run(
    argv: list[str],
    pass_fds: Sequence[int],
    qmp_socket: Path,
    deadline: dt.datetime | None,
    now: Callable[[], dt.datetime],
    grace: float = 60.0,
    stdout: IO[bytes] | int | None = None,
    on_started: Callable[[], None] | None = None,
) -> RunResult:
    """Start QEMU, wait for it to end; at ``deadline`` power the guest down through QMP
    (``system_powerdown``), and ``quit`` it if it has not stopped after ``grace`` seconds."""
    qmp_socket.unlink(missing_ok=True)
    proc = subprocess.Popen(
        argv,
        pass_fds=tuple(pass_fds),
        stdin=subprocess.DEVNULL if stdout is not None else None,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    for fd in pass_fds:  # QEMU holds its copies; ours must not outlive the start
        os.close(fd)
    stopped = False
    qmp: Qmp | None = None
    try:
        qmp = connect_qmp(qmp_socket, proc)
        if on_started is not None:
            on_started()
        while proc.poll() is None:
            left = None if deadline is None else (deadline - now()).total_seconds()
            if left is not None and left <= 0:
                stopped = True
                _stop(proc, qmp, grace)
                break
            try:
                proc.wait(timeout=1.0 if left is None else min(max(left, 0.05), 1.0))
            except subprocess.TimeoutExpired:
                continue
    except BaseException as e:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if isinstance(e, BackendError) and proc.stderr:
            err = proc.stderr.read().decode(errors="replace").strip()
            raise BackendError(f"{e.message}: {err[-500:]}") from None
        raise
    finally:
        if qmp is not None:
            qmp.close()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        qmp_socket.unlink(missing_ok=True)
    if proc.returncode != 0 and not stopped:
        raise BackendError(f"QEMU failed (exit {proc.returncode}): {err[-500:]}")
    return RunResult(proc.returncode, stopped)


def _stop(proc: subprocess.Popen[bytes], qmp: Qmp, grace: float) -> None:
    with contextlib.suppress(OSError, BackendError):
        qmp.command("system_powerdown")
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(OSError, BackendError):
        qmp.command("quit")
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
