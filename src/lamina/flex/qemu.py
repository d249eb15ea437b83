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
from typing import IO, Any, Literal, Protocol

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
NETDEV_ID = "lamina-net"
NIC_ID = "lamina-nic"
USB_REDIR_ID = "lamina-usbredir-dev"
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
    # Network (named, so a policy change can take the link down live).
    if r.network == "none":
        argv += ["-nic", "none"]
    else:
        argv += [
            "-netdev",
            f"user,id={NETDEV_ID}",
            "-device",
            f"virtio-net-pci,netdev={NETDEV_ID},id={NIC_ID}",
        ]
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
            argv += [
                "-device",
                f"usb-redir,id={USB_REDIR_ID}{n},chardev={chardev},bus=lamina-usb.0,filter={flt}",
            ]
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

    def command(self, name: str, /, **arguments: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
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


StopReason = Literal["deadline", "locked", "revoked", "policy"]


@dataclass(frozen=True)
class Stop:
    """Why the client stopped a running VM; ``hard``: ``quit`` at once (no guest shutdown)."""

    reason: StopReason
    message: str
    hard: bool = False


@dataclass
class RunResult:
    returncode: int
    stopped: Stop | None = None

    @property
    def stopped_for_deadline(self) -> bool:
        return self.stopped is not None and self.stopped.reason == "deadline"


class Watch(Protocol):
    """The client's eye on a running VM: checked every ``interval`` seconds."""

    interval: float

    def deadline(self) -> dt.datetime | None:
        """When the VM must stop (it may move: a check-in renews the lease)."""

    def check(self, qmp: Qmp) -> Stop | None:
        """Check in; apply what can be applied live through ``qmp``; a reason to stop, or None."""


def run(
    argv: list[str],
    pass_fds: Sequence[int],
    qmp_socket: Path,
    deadline: dt.datetime | None,
    now: Callable[[], dt.datetime],
    grace: float = 60.0,
    stdout: IO[bytes] | int | None = None,
    on_started: Callable[[Qmp], None] | None = None,
    watch: Watch | None = None,
) -> RunResult:
    """Start QEMU, wait for it to end; at the deadline (``watch.deadline()`` when watched)
    power the guest down through QMP (``system_powerdown``), and ``quit`` it if it has not
    stopped after ``grace`` seconds. Every ``watch.interval`` seconds ``watch.check`` may
    ask for a stop: a soft one as at the deadline, a hard one by ``quit`` at once."""
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
    stopped: Stop | None = None
    qmp: Qmp | None = None
    try:
        qmp = connect_qmp(qmp_socket, proc)
        if on_started is not None:
            on_started(qmp)
        next_check = time.monotonic() + watch.interval if watch is not None else None
        while proc.poll() is None:
            end = watch.deadline() if watch is not None else deadline
            left = None if end is None else (end - now()).total_seconds()
            if left is not None and left <= 0:
                stopped = Stop("deadline", "the lease ended")
                _stop(proc, qmp, grace)
                break
            if watch is not None and next_check is not None and time.monotonic() >= next_check:
                stopped = watch.check(qmp)
                next_check = time.monotonic() + watch.interval
                if stopped is not None:
                    _quit(proc, qmp) if stopped.hard else _stop(proc, qmp, grace)
                    break
                continue
            wait = 1.0 if left is None else min(max(left, 0.05), 1.0)
            if next_check is not None:
                wait = min(wait, max(next_check - time.monotonic(), 0.0))
            try:
                proc.wait(timeout=wait)
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
    if proc.returncode != 0 and stopped is None:
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
    _quit(proc, qmp)


def _quit(proc: subprocess.Popen[bytes], qmp: Qmp) -> None:
    with contextlib.suppress(OSError, BackendError):
        qmp.command("quit")
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def apply_live(qmp: Qmp, old: FlexRestrictions, new: FlexRestrictions) -> tuple[list[str], str]:
    """Apply a policy change to a running VM as far as QEMU can: ``(applied, refused)``.

    Applied live: network ``nat`` → ``none`` takes the NIC's link down (``set_link``), USB
    → ``none`` unplugs the redirections (``device_del``). A tightening QEMU cannot apply
    while running (fewer USB classes, clipboard, drag and drop, the shared folder) is
    named in ``refused``: the caller stops the VM. A loosening waits for the next launch.
    """
    applied: list[str] = []
    refused: list[str] = []
    if old.network != "none" and new.network == "none":
        qmp.command("set_link", name=NIC_ID, up=False)
        applied.append("the network is cut")
    if old.usb != "none" and new.usb == "none":
        for n in range(USB_REDIR_PORTS):
            qmp.command("device_del", id=f"{USB_REDIR_ID}{n}")
        applied.append("USB redirection is removed")
    elif _usb_narrowed(old.usb, new.usb):
        refused.append("fewer USB device classes")
    if old.clipboard and not new.clipboard:
        refused.append("no clipboard")
    if old.drag_drop and not new.drag_drop:
        refused.append("no drag and drop")
    share_rank = {"off": 0, "ro": 1, "rw": 2}
    if share_rank[new.shared_folder] < share_rank[old.shared_folder]:
        refused.append(f"shared folder {new.shared_folder}")
    return applied, ", ".join(refused)


def _usb_narrowed(
    old: Literal["none", "all"] | Sequence[str], new: Literal["none", "all"] | Sequence[str]
) -> bool:
    """Whether ``new`` allows USB devices that ``old`` allowed (``none`` is handled apart)."""
    if old == "none" or new == "all":
        return False
    if old == "all":
        return True
    return new != "none" and bool(set(old) - set(new))


def spice_uri(qmp: Qmp) -> str:
    """Where QEMU's SPICE server listens, as QEMU itself says (``query-spice``): a unix
    socket in the launch's private run folder (0700), so only the user can open it."""
    info = qmp.command("query-spice").get("return", {})
    if not info.get("enabled") or not isinstance(info.get("host"), str):
        raise BackendError(f"QEMU's SPICE server is not listening: {info}")
    return f"spice+unix://{info['host']}"
