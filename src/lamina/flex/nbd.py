"""A minimal NBD client (fixed newstyle handshake, simple replies) over a unix socket.

Just what the download needs to write plaintext pieces into an encrypted disk that
``qemu-nbd`` exports: the plaintext crosses a unix socket to qemu-nbd, which encrypts
it before it reaches a file. See the NBD protocol document (doc/proto.md of the NBD
project) for the layouts::

    server greeting   "NBDMAGIC" "IHAVEOPT" u16 handshake-flags
    client flags      u32
    option            u64 "IHAVEOPT" u32 option u32 length, data
    EXPORT_NAME reply u64 export-size u16 transmission-flags [124 zero bytes]
    request           u32 0x25609513 u16 flags u16 type u64 cookie u64 offset u32 length [data]
    simple reply      u32 0x67446698 u32 error u64 cookie [data for a read]
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from lamina.errors import BackendError

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_EXPORT_NAME = 1
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
REQUEST_MAGIC = 0x25609513
REPLY_MAGIC = 0x67446698
TX_FLAG_READ_ONLY = 1 << 1

_REQ = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")
#: The most one request moves; qemu-nbd takes up to 32 MiB.
MAX_REQUEST = 16 << 20


class NbdClient:
    """One connection to an export. Not thread-safe; unusable after an error."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.cookie = 0
        try:
            self.sock.connect(str(path))
            self.size, self.flags = self._handshake()
        except OSError as e:
            self.sock.close()
            raise BackendError(f"cannot open the disk's NBD export at {path}: {e}") from e
        except BackendError:
            self.sock.close()
            raise

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise BackendError("the NBD server closed the connection")
            buf += chunk
        return bytes(buf)

    def _handshake(self) -> tuple[int, int]:
        head = self._recv(18)
        if head[:8] != NBDMAGIC or head[8:16] != IHAVEOPT:
            raise BackendError(f"not a newstyle NBD server (greeting {head[:16]!r})")
        (hflags,) = struct.unpack(">H", head[16:18])
        if not hflags & FLAG_FIXED_NEWSTYLE:
            raise BackendError("the NBD server does not speak fixed newstyle")
        cflags = FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)
        self.sock.sendall(struct.pack(">I", cflags))
        self.sock.sendall(IHAVEOPT + struct.pack(">II", OPT_EXPORT_NAME, 0))
        size, tflags = struct.unpack(">QH", self._recv(10))
        if not cflags & FLAG_NO_ZEROES:
            self._recv(124)
        return size, tflags

    def _request(self, kind: int, offset: int, length: int, data: bytes = b"") -> bytes:
        self.cookie += 1
        self.sock.sendall(_REQ.pack(REQUEST_MAGIC, 0, kind, self.cookie, offset, length) + data)
        magic, error, cookie = _REPLY.unpack(self._recv(_REPLY.size))
        if magic != REPLY_MAGIC or cookie != self.cookie:
            raise BackendError(
                f"unexpected NBD reply (magic {magic:#x}, cookie {cookie}, expected {self.cookie})"
            )
        if error:
            raise BackendError(f"the NBD server failed a request at offset {offset}: errno {error}")
        return self._recv(length) if kind == CMD_READ else b""

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise BackendError(
                f"a write of {len(data)} bytes at {offset} is outside the disk ({self.size} bytes)"
            )
        view = memoryview(data)
        for at in range(0, len(view), MAX_REQUEST):
            part = bytes(view[at : at + MAX_REQUEST])
            self._request(CMD_WRITE, offset + at, len(part), part)

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        for at in range(0, length, MAX_REQUEST):
            n = min(MAX_REQUEST, length - at)
            out += self._request(CMD_READ, offset + at, n)
        return bytes(out)

    def flush(self) -> None:
        self._request(CMD_FLUSH, 0, 0)

    def close(self) -> None:
        try:
            self.cookie += 1
            self.sock.sendall(_REQ.pack(REQUEST_MAGIC, 0, CMD_DISC, self.cookie, 0, 0))
        except OSError:
            pass
        finally:
            self.sock.close()
