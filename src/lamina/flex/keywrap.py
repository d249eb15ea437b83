"""The instance's disk key, wrapped by the password the user set at download and bound to
this computer.

``key.json`` (version 2, mode 0600)::

    {"v": 2, "kdf": "argon2id", "time_cost": 3, "memory_kib": 65536, "parallelism": 4,
     "salt": "<base64, 16 bytes>", "nonce": "<base64, 12 bytes>",
     "host": "<hex, 16 bytes: which computer's key it is bound to>",
     "wrapped": "<base64 AES-256-GCM(kek, nonce, disk key, aad)>"}

``kek = HKDF-SHA256(Argon2id(password, salt), salt=host key, info="lamina-flex-kek-v2")``
and the associated data is ``b"lamina-flex-key-v2:" + instance id``, so a key file copied
beside another instance does not open it. The *host key* (:class:`HostKey`) is
``HMAC-SHA256(client secret, "lamina-flex-host-v1:" + machine id)``: the client secret is
32 random bytes in a 0600 file beside the login session (outside the instance folder), the
machine id is ``/etc/machine-id``; ``host`` is ``HMAC-SHA256(host key, "lamina-flex-host-id")``'s
first 16 bytes. A folder copied to another computer finds another host id and is refused
as a copy (:class:`HostMismatchError`) before the password is tried; a wrong password fails
the GCM tag (``StoreKeyError``).

Version 1 (no ``host``, kek = Argon2id alone, aad ``"lamina-flex-key-v1:"``) is still read;
the client rewraps it as version 2 at its first unlock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Literal

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field

from lamina.errors import ForbiddenError, IntegrityError, StoreKeyError

KEY_BYTES = 32
AAD_PREFIX_V1 = b"lamina-flex-key-v1:"
AAD_PREFIX = b"lamina-flex-key-v2:"
MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


class HostMismatchError(ForbiddenError):
    """The key file was wrapped on another computer (or this one's identity changed)."""


class HostKey:
    """This computer's binding secret: the client secret file and the machine id, both
    injectable (tests play "another computer" with another machine id)."""

    def __init__(self, secret_file: Path, machine_id: str | None = None) -> None:
        self.secret_file = secret_file
        self._machine_id = machine_id

    def machine_id(self) -> str:
        if self._machine_id is not None:
            return self._machine_id
        for p in MACHINE_ID_PATHS:
            try:
                return p.read_text().strip()
            except OSError:
                continue
        return ""  # no machine id (a bare container): the client secret alone binds

    def secret(self) -> bytes:
        """The client secret, created (32 random bytes, 0600) on first use."""
        try:
            data = self.secret_file.read_bytes()
        except FileNotFoundError:
            self.secret_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.secret_file.with_name(f".{self.secret_file.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.secret_file)  # never replaces one made meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            data = self.secret_file.read_bytes()
        if len(data) != 32:
            raise IntegrityError(
                f"{self.secret_file} is damaged ({len(data)} bytes, expected 32): the instances "
                "bound to it no longer open here; ask your administrator to entitle you again"
            )
        return data

    def key(self) -> bytes:
        return hmac.new(
            self.secret(), b"lamina-flex-host-v1:" + self.machine_id().encode(), hashlib.sha256
        ).digest()


def host_id(host_key: bytes) -> str:
    return hmac.new(host_key, b"lamina-flex-host-id", hashlib.sha256).digest()[:16].hex()


class KdfParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    time_cost: int = Field(3, ge=1, le=64)
    memory_kib: int = Field(65536, ge=8, le=4 << 20)
    parallelism: int = Field(4, ge=1, le=64)


#: RFC 9106's second recommended setting, lighter on memory (a laptop runs a VM beside it).
DEFAULT_KDF = KdfParams()


class WrappedKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[1, 2] = 2
    kdf: Literal["argon2id"] = "argon2id"
    time_cost: int = Field(ge=1, le=64)
    memory_kib: int = Field(ge=8, le=4 << 20)
    parallelism: int = Field(ge=1, le=64)
    salt: str
    nonce: str
    host: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    wrapped: str


def new_disk_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _argon(password: str, salt: bytes, p: KdfParams) -> bytes:
    return hash_secret_raw(
        password.encode("utf-8"),
        salt,
        time_cost=p.time_cost,
        memory_cost=p.memory_kib,
        parallelism=p.parallelism,
        hash_len=32,
        type=Type.ID,
    )


def _kek(password: str, salt: bytes, p: KdfParams, host_key: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=host_key, info=b"lamina-flex-kek-v2")
    return hkdf.derive(_argon(password, salt, p))


def wrap(
    key: bytes, password: str, instance_id: str, host_key: bytes, kdf: KdfParams = DEFAULT_KDF
) -> WrappedKey:
    salt = os.urandom(16)
    nonce = os.urandom(12)
    kek = _kek(password, salt, kdf, host_key)
    ct = AESGCM(kek).encrypt(nonce, key, AAD_PREFIX + instance_id.encode())
    b64 = base64.b64encode
    return WrappedKey(
        time_cost=kdf.time_cost,
        memory_kib=kdf.memory_kib,
        parallelism=kdf.parallelism,
        salt=b64(salt).decode(),
        nonce=b64(nonce).decode(),
        host=host_id(host_key),
        wrapped=b64(ct).decode(),
    )


def unwrap(w: WrappedKey, password: str, instance_id: str, host_key: bytes) -> bytes:
    """The disk key; ``HostMismatchError`` for a key wrapped on another computer,
    ``StoreKeyError`` for a wrong password, ``IntegrityError`` for a damaged file."""
    try:
        salt = base64.b64decode(w.salt, validate=True)
        nonce = base64.b64decode(w.nonce, validate=True)
        ct = base64.b64decode(w.wrapped, validate=True)
    except ValueError as e:
        raise IntegrityError(f"the instance's key file is damaged: {e}") from e
    if len(salt) < 8 or len(nonce) != 12 or len(ct) != KEY_BYTES + 16:
        raise IntegrityError(
            f"the instance's key file is damaged: expected a 12-byte nonce and a "
            f"{KEY_BYTES + 16}-byte wrapped key, found {len(nonce)} and {len(ct)}"
        )
    kdf = KdfParams(time_cost=w.time_cost, memory_kib=w.memory_kib, parallelism=w.parallelism)
    if w.v == 1:
        kek, aad = _argon(password, salt, kdf), AAD_PREFIX_V1
    else:
        if w.host is None:
            raise IntegrityError("the instance's key file is damaged: version 2 without a host")
        if not hmac.compare_digest(w.host, host_id(host_key)):
            raise HostMismatchError(
                f"instance {instance_id} was copied from another computer (or this computer's "
                "identity changed): it does not open here; ask your administrator to entitle "
                "you again and download a new instance"
            )
        kek, aad = _kek(password, salt, kdf, host_key), AAD_PREFIX
    try:
        return AESGCM(kek).decrypt(nonce, ct, aad + instance_id.encode())
    except InvalidTag:
        raise StoreKeyError("wrong password for this instance") from None
