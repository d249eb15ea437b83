"""The store's secrets and the key file that holds them.

Two secrets with different audiences:

- ``ChunkingSecret`` (chunker seed, id key, chunk size limits): every writer
  needs it to cut and name chunks the way the store does, so enrolled agents
  receive it. With it one can recognise known content, but not read any.
- the data key (AES-256-GCM): encrypts every blob at rest. It never leaves the
  servers.

Key file, version 1 (JSON, mode 0600)::

    {"lamina_keyfile": 1, "store_id": "<uuid>",
     "chunker": {"min": 262144, "avg": 1048576, "max": 4194304},
     "sealed": false,
     "secret": {"chunker_seed": "<b64 8 bytes>", "id_key": "<b64 32>", "data_key": "<b64 32>"}}

Sealed with a passphrase, ``secret`` is replaced by::

     "sealed": true,
     "kdf": {"name": "argon2id", "salt": "<b64 16>", "time_cost": 3,
             "memory_cost": 65536, "parallelism": 2},
     "nonce": "<b64 12>",
     "ciphertext": "<b64 AES-256-GCM(argon2id(passphrase), JSON of secret, aad=store_id)>"
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lamina.errors import ConflictError, NotFoundError, StoreKeyError
from lamina.store.atomic import write_atomic

# Re-exported: the chunking secret lives in chunking.py (no ciphers), callers name it here too.
from lamina.store.chunking import DEFAULT_AVG as DEFAULT_AVG
from lamina.store.chunking import DEFAULT_MAX as DEFAULT_MAX
from lamina.store.chunking import DEFAULT_MIN as DEFAULT_MIN
from lamina.store.chunking import ChunkingSecret as ChunkingSecret

KEYFILE_VERSION = 1
KEYFILE_NAME = "keys.json"
PASSPHRASE_ENV = "LAMINA_STORE_PASSPHRASE"  # noqa: S105 - a variable name, not a secret

_KDF_DEFAULTS = {"time_cost": 3, "memory_cost": 64 * 1024, "parallelism": 2}


@dataclass(frozen=True)
class StoreKeys:
    store_id: str
    chunking: ChunkingSecret
    data_key: bytes

    def __post_init__(self) -> None:
        if len(self.data_key) != 32:
            raise StoreKeyError("the data key must be 32 bytes")

    @classmethod
    def generate(
        cls,
        min_size: int = DEFAULT_MIN,
        avg_size: int = DEFAULT_AVG,
        max_size: int = DEFAULT_MAX,
    ) -> StoreKeys:
        # The seed is XORed into FastCDC's gear table; keep it non-zero (0 means "default table").
        seed = int.from_bytes(secrets.token_bytes(8), "little") >> 1 or 1
        return cls(
            store_id=str(uuid.uuid4()),
            chunking=ChunkingSecret(seed, secrets.token_bytes(32), min_size, avg_size, max_size),
            data_key=secrets.token_bytes(32),
        )


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(s), validate=True)
    except ValueError as e:
        raise StoreKeyError(f"key file: {what} is not valid base64") from e


def _derive(passphrase: str, salt: bytes, kdf: dict[str, Any]) -> bytes:
    """argon2id of ``passphrase``; a parameter argon2 refuses is a ``ValueError``. (argon2
    is imported here: only a sealed key file needs it, and most commands open none.)"""
    from argon2.exceptions import HashingError
    from argon2.low_level import Type, hash_secret_raw

    try:
        return hash_secret_raw(
            passphrase.encode(),
            salt,
            time_cost=int(kdf["time_cost"]),
            memory_cost=int(kdf["memory_cost"]),
            parallelism=int(kdf["parallelism"]),
            hash_len=32,
            type=Type.ID,
        )
    except HashingError as e:
        raise ValueError(str(e)) from e


def dump_keys(keys: StoreKeys, passphrase: str | None = None) -> bytes:
    secret = {
        "chunker_seed": _b64(keys.chunking.chunker_seed.to_bytes(8, "little")),
        "id_key": _b64(keys.chunking.id_key),
        "data_key": _b64(keys.data_key),
    }
    doc: dict[str, Any] = {
        "lamina_keyfile": KEYFILE_VERSION,
        "store_id": keys.store_id,
        "chunker": {
            "min": keys.chunking.min_size,
            "avg": keys.chunking.avg_size,
            "max": keys.chunking.max_size,
        },
    }
    if passphrase:
        salt = secrets.token_bytes(16)
        nonce = secrets.token_bytes(12)
        kdf = {"name": "argon2id", "salt": _b64(salt), **_KDF_DEFAULTS}
        key = _derive(passphrase, salt, kdf)
        ct = AESGCM(key).encrypt(nonce, json.dumps(secret).encode(), keys.store_id.encode())
        doc.update(sealed=True, kdf=kdf, nonce=_b64(nonce), ciphertext=_b64(ct))
    else:
        doc.update(sealed=False, secret=secret)
    return json.dumps(doc, indent=2).encode() + b"\n"


def parse_keys(raw: bytes, passphrase: str | None = None) -> StoreKeys:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise StoreKeyError("key file is not valid JSON (damaged or not a Lamina key file)") from e
    if not isinstance(doc, dict) or doc.get("lamina_keyfile") != KEYFILE_VERSION:
        found = doc.get("lamina_keyfile") if isinstance(doc, dict) else None
        raise StoreKeyError(f"unsupported key file version {found!r} (expected {KEYFILE_VERSION})")
    try:
        store_id = str(doc["store_id"])
        chunker = doc["chunker"]
        if doc.get("sealed"):
            if not passphrase:
                raise StoreKeyError(
                    f"the key file is sealed with a passphrase: set {PASSPHRASE_ENV}"
                )
            kdf = doc["kdf"]
            key = _derive(passphrase, _unb64(kdf["salt"], "salt"), kdf)
            try:
                plain = AESGCM(key).decrypt(
                    _unb64(doc["nonce"], "nonce"),
                    _unb64(doc["ciphertext"], "ciphertext"),
                    store_id.encode(),
                )
            except InvalidTag as e:
                raise StoreKeyError("wrong passphrase for the store key file") from e
            secret = json.loads(plain)
        else:
            secret = doc["secret"]
        return StoreKeys(
            store_id=store_id,
            chunking=ChunkingSecret(
                chunker_seed=int.from_bytes(
                    _unb64(secret["chunker_seed"], "chunker_seed"), "little"
                ),
                id_key=_unb64(secret["id_key"], "id_key"),
                min_size=int(chunker["min"]),
                avg_size=int(chunker["avg"]),
                max_size=int(chunker["max"]),
            ),
            data_key=_unb64(secret["data_key"], "data_key"),
        )
    except (KeyError, TypeError) as e:
        raise StoreKeyError(f"key file is missing a field: {e}") from e
    except (ValueError, OverflowError) as e:  # "abc" or Infinity as a size
        raise StoreKeyError(f"key file has a malformed field: {e}") from e


def write_keyfile(path: Path, keys: StoreKeys, passphrase: str | None = None) -> None:
    """Create the key file (mode 0600), atomically; never overwrite an existing one."""
    if path.exists():
        raise ConflictError(f"{path} exists already: a store is initialised there")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, dump_keys(keys, passphrase), 0o600, exclusive=True)
    except FileExistsError as e:  # a concurrent init won the race
        raise ConflictError(f"{path} exists already: a store is initialised there") from e


def read_keyfile(path: Path, passphrase: str | None = None) -> StoreKeys:
    """The store's keys; ``passphrase`` opens a sealed key file (the programs read it
    from ``LAMINA_STORE_PASSPHRASE`` at their edge, never this function)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise NotFoundError(
            f"no key file at {path}: run `lamina store init` first, or copy the store's key file there"
        ) from e
    return parse_keys(raw, passphrase)
