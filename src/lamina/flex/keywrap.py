"""The instance's disk key, wrapped by the password the user set at download.

``key.json`` (version 1, mode 0600)::

    {"v": 1, "kdf": "argon2id", "time_cost": 3, "memory_kib": 65536, "parallelism": 4,
     "salt": "<base64, 16 bytes>", "nonce": "<base64, 12 bytes>",
     "wrapped": "<base64 AES-256-GCM(kek, nonce, disk key, aad)>"}

``kek = Argon2id(password, salt)`` (32 bytes); the associated data is
``b"lamina-flex-key-v1:" + instance id``, so a key file copied beside another
instance does not open it. A wrong password fails the GCM tag: ``StoreKeyError``.
"""

from __future__ import annotations

import base64
import os
import secrets
from typing import Literal

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field

from lamina.errors import IntegrityError, StoreKeyError

KEY_BYTES = 32
AAD_PREFIX = b"lamina-flex-key-v1:"


class KdfParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    time_cost: int = Field(3, ge=1, le=64)
    memory_kib: int = Field(65536, ge=8, le=4 << 20)
    parallelism: int = Field(4, ge=1, le=64)


#: RFC 9106's second recommended setting, lighter on memory (a laptop runs a VM beside it).
DEFAULT_KDF = KdfParams()


class WrappedKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    kdf: Literal["argon2id"] = "argon2id"
    time_cost: int = Field(ge=1, le=64)
    memory_kib: int = Field(ge=8, le=4 << 20)
    parallelism: int = Field(ge=1, le=64)
    salt: str
    nonce: str
    wrapped: str


def new_disk_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _kek(password: str, salt: bytes, p: KdfParams) -> bytes:
    return hash_secret_raw(
        password.encode("utf-8"),
        salt,
        time_cost=p.time_cost,
        memory_cost=p.memory_kib,
        parallelism=p.parallelism,
        hash_len=32,
        type=Type.ID,
    )


def wrap(key: bytes, password: str, instance_id: str, kdf: KdfParams = DEFAULT_KDF) -> WrappedKey:
    salt = os.urandom(16)
    nonce = os.urandom(12)
    ct = AESGCM(_kek(password, salt, kdf)).encrypt(nonce, key, AAD_PREFIX + instance_id.encode())
    b64 = base64.b64encode
    return WrappedKey(
        time_cost=kdf.time_cost,
        memory_kib=kdf.memory_kib,
        parallelism=kdf.parallelism,
        salt=b64(salt).decode(),
        nonce=b64(nonce).decode(),
        wrapped=b64(ct).decode(),
    )


def unwrap(w: WrappedKey, password: str, instance_id: str) -> bytes:
    """The disk key; ``StoreKeyError`` for a wrong password, ``IntegrityError`` for a damaged file."""
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
    try:
        return AESGCM(_kek(password, salt, kdf)).decrypt(
            nonce, ct, AAD_PREFIX + instance_id.encode()
        )
    except InvalidTag:
        raise StoreKeyError("wrong password for this instance") from None
