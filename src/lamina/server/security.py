"""Passwords (Argon2id), bearer tokens, roles and permissions.

Tokens are 32 random bytes (base64url) with a prefix naming their kind:
``lmu_`` a user's API token, ``lmd_`` a device credential, ``lme_`` an
enrollment token. Only their SHA-256 is stored: they carry 256 bits of entropy,
so a slow hash would add nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from lamina.errors import ForbiddenError, RateLimitedError

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
    "driver.write": "import and delete driver packs; create, change and delete driver profiles",
    "user.admin": "manage users and read the audit log",
    "store.admin": "check the store, collect its garbage and read its statistics (server tasks)",
    "metrics.read": "read the server's Prometheus metrics (/metrics) from another host",
    "flex.admin": "register flex images; create flex policies and entitlements",
    "flex.operate": "lock, unlock, revoke flex instances and override their policy",
    "flex.use": "list, download and check in the flex images one is entitled to",
}
ROLES: dict[str, frozenset[str]] = {
    "administrator": frozenset(PERMISSIONS),
    "helpdesk": frozenset({"read", "data.read", "cvd.operate", "device.write", "flex.operate"}),
    "readonly": frozenset({"read"}),
    #: People who only run flex images on their laptops.
    "flex-user": frozenset({"flex.use"}),
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
    role: str = ""  # a user's role; a device's status
    permissions: frozenset[str] = field(default_factory=frozenset)
    #: The user token (session or API token) this call was made with.
    token_id: str = ""

    def require(self, permission: str) -> None:
        if self.kind != "user" or permission not in self.permissions:
            raise ForbiddenError(f"{self.name} may not do this (needs permission {permission!r})")


def require_active(caller: Principal) -> Principal:
    """A device with an active CVD: a pending device reaches nothing but its enrollment status."""
    if caller.role != "active":
        raise ForbiddenError(f"{caller.name} is {caller.role}: it has no active CVD yet")
    return caller


class RateLimiter:
    """A token bucket per key (a device id): ``burst`` units at once, ``rate`` units a second.

    Per server process and in memory: it bounds how fast one device can ask, which is
    all it is for (what a device may learn at all is decided by ``services.access``).
    """

    def __init__(
        self, rate: float, burst: float, what: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.what, self.clock = rate, burst, what, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, units: int) -> None:
        """Spend ``units`` for ``key``, or raise RateLimitedError saying how long to wait."""
        with self._lock:
            t = self.clock()
            level, last = self._buckets.get(key, (self.burst, t))
            level = min(self.burst, level + (t - last) * self.rate)
            if units > level:
                self._buckets[key] = (level, t)
                wait = (units - level) / self.rate
                raise RateLimitedError(
                    f"too many {self.what}: {units} asked, {int(level)} allowed now;"
                    f" try again in {wait:.0f} seconds"
                )
            self._buckets[key] = (level - units, t)
            if len(self._buckets) > 100_000:  # forget full buckets of idle keys
                self._buckets = {
                    k: v
                    for k, v in self._buckets.items()
                    if v[0] + (t - v[1]) * self.rate < self.burst
                }
