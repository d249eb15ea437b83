"""The server's flex signing key: Ed25519, in the data folder, 0600, made on first use.

The file holds the private key as unencrypted PKCS#8 PEM. It is written to a temporary
file opened 0600 with ``O_EXCL`` and renamed into place, so a crash leaves either no key
or a whole one, and two processes starting at once keep the one that won the rename
race (each then reads the file back). Its key id is ``protocol.flex.key_id``.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from lamina.errors import IntegrityError
from lamina.protocol.flex import FlexKeyPublic, public_key_doc

KEY_FILE = "flex-signing-key.pem"

_lock = threading.Lock()
_cache: dict[Path, Ed25519PrivateKey] = {}


def signing_key(data: Path) -> Ed25519PrivateKey:
    """The server's signing key under ``data``, created (0600) if there is none."""
    path = (data / KEY_FILE).resolve()
    with _lock:
        key = _cache.get(path)
        if key is None:
            key = _cache[path] = _load_or_create(path)
        return key


def _load_or_create(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            if not path.exists():
                os.link(tmp, path)  # fails if another process linked its key first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as e:
        raise IntegrityError(f"the flex signing key {path} is damaged: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityError(f"the flex signing key {path} is not an Ed25519 key")
    return key


def public_key(data: Path) -> FlexKeyPublic:
    return public_key_doc(signing_key(data).public_key())
