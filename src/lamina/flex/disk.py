"""The instance's disk: a LUKS-encrypted qcow2, written only through ``qemu-nbd``.

The plaintext never reaches a file: the download hands each verified piece to
``qemu-nbd`` over a unix socket in the instance folder, and qemu-nbd encrypts it
into the qcow2. The key reaches ``qemu-img``, ``qemu-nbd`` and QEMU as a
``secret`` object read from ``/dev/fd/N``, a pipe this process filled and closed:
it is on no command line and in no file.

The disk key is 32 random bytes; the LUKS passphrase is their hex. Since that is a
full-entropy key, LUKS's PBKDF2 is run at its minimum (``iter-time`` 10 ms): stretching
protects guessable passwords, and the password the user types is stretched by Argon2id
before it unwraps this key (see :mod:`.keywrap`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from lamina.errors import BackendError, UsageError
from lamina.flex.nbd import NbdClient

SECRET_ID = "lamina-disk-key"  # noqa: S105 (the secret object's name, not a secret)
LUKS_ITER_TIME_MS = 10
#: qemu-img times PBKDF2 by its thread's CPU clock before it writes the LUKS header; where
#: that clock is coarse (a VM's tick-based accounting) its first reading can show no
#: progress, and qemu-img gives up at once with this message, having written nothing of
#: use. A failed measurement, not a bad disk: on the 2-core CI machine 14 of 30 attempts
#: failed so, each within 10 ms, so it is tried again many times, a moment apart.
PBKDF_MEASURE_FAILED = "Unable to get accurate CPU usage"
CREATE_ATTEMPTS = 40
CREATE_PAUSE_SECONDS = 0.05


def passphrase(key: bytes) -> bytes:
    return key.hex().encode()


def secret_pipe(data: bytes) -> int:
    """A pipe's read end holding ``data`` (the write end closed): for ``file=/dev/fd/N``."""
    if len(data) > 65536:
        raise ValueError("a secret larger than a pipe's buffer")
    r, w = os.pipe()
    try:
        os.write(w, data)
    finally:
        os.close(w)
    return r


def qemu_escape(value: str) -> str:
    """A value inside a QEMU ``-o``/``--image-opts`` option list (commas doubled)."""
    return value.replace(",", ",,")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise UsageError(
            f"{tool} is not installed: install QEMU (Debian: apt-get install qemu-utils qemu-system-x86)"
        )
    return path


def create(path: Path, size: int, key: bytes) -> None:
    """A new empty LUKS-encrypted qcow2 of ``size`` bytes at ``path`` (mode 0600).

    ``path`` is a new file in a staging folder: an attempt that failed on qemu-img's
    PBKDF2 measurement (:data:`PBKDF_MEASURE_FAILED`) is removed and made again, at most
    :data:`CREATE_ATTEMPTS` times, a moment apart; any other failure is raised at once.
    A failed attempt leaves no file.
    """
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        r = _qemu_img_create(path, size, key)
        if r.returncode == 0:
            return
        path.unlink(missing_ok=True)
        error = r.stderr.strip()
        if PBKDF_MEASURE_FAILED not in error or attempt == CREATE_ATTEMPTS:
            raise BackendError(f"qemu-img could not create the encrypted disk: {error}")
        time.sleep(CREATE_PAUSE_SECONDS)


def _qemu_img_create(path: Path, size: int, key: bytes) -> subprocess.CompletedProcess[str]:
    fd = secret_pipe(passphrase(key))
    try:
        opts = f"encrypt.format=luks,encrypt.key-secret={SECRET_ID},encrypt.iter-time={LUKS_ITER_TIME_MS}"
        old = os.umask(0o077)
        try:
            return subprocess.run(
                [
                    require("qemu-img"),
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "--object",
                    f"secret,id={SECRET_ID},file=/dev/fd/{fd}",
                    "-o",
                    opts,
                    str(path),
                    str(size),
                ],
                pass_fds=(fd,),
                capture_output=True,
                text=True,
            )
        finally:
            os.umask(old)
    finally:
        os.close(fd)


def image_opts(path: Path) -> str:
    return (
        f"driver=qcow2,file.driver=file,file.filename={qemu_escape(str(path))},"
        f"encrypt.key-secret={SECRET_ID}"
    )


@contextlib.contextmanager
def export(path: Path, key: bytes, socket_path: Path, timeout: float = 30.0) -> Iterator[NbdClient]:
    """``qemu-nbd`` serving the decrypted view of ``path`` on ``socket_path``, and a client to it.

    qemu-nbd serves one client and exits when it disconnects; leaving the block flushes,
    disconnects and waits for it (it is killed if it hangs).
    """
    socket_path.unlink(missing_ok=True)
    fd = secret_pipe(passphrase(key))
    try:
        proc = subprocess.Popen(
            [
                require("qemu-nbd"),
                "--object",
                f"secret,id={SECRET_ID},file=/dev/fd/{fd}",
                "--image-opts",
                image_opts(path),
                "--socket",
                str(socket_path),
                "--cache=writeback",
            ],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(fd)
    client: NbdClient | None = None
    try:
        end = time.monotonic() + timeout
        while client is None:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise BackendError(f"qemu-nbd could not open the encrypted disk: {err}")
            if socket_path.exists():
                # The socket file appears at bind(), before qemu-nbd listens: a refused
                # connection then means "not yet", until the deadline.
                try:
                    client = NbdClient(socket_path)
                    break
                except BackendError as e:
                    if not isinstance(e.__cause__, ConnectionRefusedError):
                        raise
            if time.monotonic() > end:
                raise BackendError("qemu-nbd did not start in time")
            time.sleep(0.02)
        yield client
        client.flush()
    finally:
        if client is not None:
            client.close()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        socket_path.unlink(missing_ok=True)
