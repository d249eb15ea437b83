"""Passwords (Argon2id), bearer tokens, roles and permissions.

Tokens are 32 random bytes (base64url) with a prefix naming their kind:
``lmu_`` a user's API token, ``lmd_`` a device credential, ``lme_`` an
enrollment token. Only their SHA-256 is stored: they carry 256 bits of entropy,
so a slow hash would add nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from lamina.errors import ForbiddenError

# Token prefixes, not secrets.
USER_TOKEN = "lmu_"  # noqa: S105
DEVICE_TOKEN = "lmd_"  # noqa: S105
ENROLL_TOKEN = "lme_"  # noqa: S105

_hasher = PasswordHasher()

#: A role is a set of permissions.
PERMISSIONS = {
    "read": "see devices, CVDs, policies, snapshots, tasks",
    "data.read": "read file contents of CVDs: download, restore as download (audited)",
    "cvd.operate": "sync, restore, revert CVDs",
    "device.write": "centralize, reject, archive devices; create enrollment tokens",
    "policy.write": "create and change policies",
    "layer.write": "capture, record, assign and enforce layers",
    "user.admin": "manage users and read the audit log",
    "store.admin": "check and collect garbage in the store",
}
ROLES: dict[str, frozenset[str]] = {
    "administrator": frozenset(PERMISSIONS),
    "helpdesk": frozenset({"read", "data.read", "cvd.operate", "device.write"}),
    "readonly": frozenset({"read"}),
}


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (with a role) or a device (with its id)."""

    kind: str  # "user" | "device"
    id: str
    name: str
    role: str = ""
    permissions: frozenset[str] = field(default_factory=frozenset)

    def require(self, permission: str) -> None:
        if self.kind != "user" or permission not in self.permissions:
            raise ForbiddenError(f"{self.name} may not do this (needs permission {permission!r})")
